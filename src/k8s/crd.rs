//! The `VolumeReservation` custom resource: one per PersistentVolume, named
//! after it, cluster-scoped. Its status says what the LUN's reservation looks
//! like; each node server-side-applies only its own entry of `nodes`, and the
//! holder the volume-wide fields.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the object is about: the PersistentVolume it is named after.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "csi-fencer.io",
    version = "v1alpha1",
    kind = "VolumeReservation",
    plural = "volumereservations",
    singular = "volumereservation",
    shortname = "vres",
    status = "VolumeReservationStatus",
    doc = "The SCSI-3 persistent reservation of one PersistentVolume's LUN, as the nodes of the cluster see it.",
    printcolumn = r#"{"name":"WWID","type":"string","jsonPath":".status.wwid"}"#,
    printcolumn = r#"{"name":"Holder","type":"string","jsonPath":".status.holder.node"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".status.reservationType"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReservationSpec {
    /// The PersistentVolume whose LUN this is.
    pub persistent_volume_name: String,
}

/// The reservation as last reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReservationStatus {
    /// The LUN's identity (`naa.…`), from VPD page 0x83.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwid: Option<String>,
    /// The reservation type, e.g. `write-exclusive-registrants-only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_type: Option<String>,
    /// Reserved (held with every path registered), Degraded (held, some paths
    /// not registered); written by the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Who holds the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<KeyOwner>,
    /// Every key registered on the LUN, with its node where known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registered_keys: Vec<KeyOwner>,
    /// One entry per node that has reported on this LUN; each node applies its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeEntry>,
    /// Conditions, written by the holder: Reserved, AllPathsRegistered, ForeignKeys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A reservation key and the node it belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyOwner {
    /// The key, `0x` and 16 hex digits.
    pub key: String,
    /// Its node, when it is one of this cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What one node reports about the LUN.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    /// The node's name (the list-map key).
    pub node: String,
    /// The node's reservation key.
    pub key: String,
    /// Holder, Registered, Fenced, Released, Pending or Error.
    pub state: NodeState,
    /// Paths of the LUN carrying this node's key.
    pub registered_paths: u32,
    /// All paths of the LUN on this node.
    pub total_paths: u32,
    /// The VolumeAttachment UID this node holds the LUN under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<String>,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `state` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// A node's relation to the LUN.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NodeState {
    /// Not reconciled yet, or waiting for a confirmation.
    #[default]
    Pending,
    /// Holds the reservation.
    Holder,
    /// Registered; another node holds the reservation (multi-node volumes).
    Registered,
    /// Its key was preempted while it still had the volume attached.
    Fenced,
    /// Gave the LUN up after a detach.
    Released,
    /// The last operation failed or was refused.
    Error,
}

/// A standard condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// Details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CRD as YAML, as `csi-fencer crd` prints it and the chart ships it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(VolumeReservation::crd())
        .map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    drop_unknown_formats(&mut crd);
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `csi-fencer crd`; do not edit (a test keeps the chart's copy equal).\n{body}"
    ))
}

/// Removes the integer formats schemars writes for unsigned types
/// (`uint32`, …): the API server does not know them and warns about the
/// schema on every request that touches the resource.
fn drop_unknown_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"))
            {
                m.remove("format");
            }
            m.values_mut().for_each(drop_unknown_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_unknown_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_status_list_maps_and_columns() {
        let y = crd_yaml().unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["spec"]["scope"], "Cluster");
        assert_eq!(v["spec"]["group"], "csi-fencer.io");
        let ver = &v["spec"]["versions"][0];
        assert_eq!(ver["name"], "v1alpha1");
        assert!(ver["subresources"]["status"].is_object());
        let nodes =
            &ver["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["nodes"];
        assert_eq!(nodes["x-kubernetes-list-type"], "map");
        assert_eq!(nodes["x-kubernetes-list-map-keys"][0], "node");
        let cols: Vec<&str> = ver["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["WWID", "Holder", "Type", "State", "Age"]);
        assert!(
            !y.contains("format: uint"),
            "formats the API server warns about:\n{y}"
        );
    }
}
