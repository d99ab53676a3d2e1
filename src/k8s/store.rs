//! The compact VolumeAttachment cache. VolumeAttachments have no node field
//! selector, so every node watches all of them; this keeps only what fencing
//! needs, and never parses the rest (managedFields, inline volume specs).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

use super::packed::Packed;

/// A VolumeAttachment as read from the API server: only the fields used.
/// Deserializing skips everything else without building it.
#[derive(Debug, Clone, Deserialize)]
pub struct SlimVa {
    /// Name, UID, resourceVersion and deletionTimestamp only.
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: SlimSpec,
    /// The status.
    #[serde(default)]
    pub status: Option<SlimStatus>,
}

/// `spec` of a VolumeAttachment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimSpec {
    /// The CSI driver.
    #[serde(default)]
    pub attacher: String,
    /// The node.
    #[serde(default)]
    pub node_name: String,
    /// The volume.
    #[serde(default)]
    pub source: SlimSource,
}

/// `spec.source`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimSource {
    /// The PV (absent for inline volumes, which are not fenced).
    #[serde(default)]
    pub persistent_volume_name: Option<String>,
}

/// `status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimStatus {
    /// ControllerPublish finished.
    #[serde(default)]
    pub attached: bool,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        deletion_timestamp: Option<Time>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl k8s_openapi::Resource for SlimVa {
    const API_VERSION: &'static str = "storage.k8s.io/v1";
    const GROUP: &'static str = "storage.k8s.io";
    const KIND: &'static str = "VolumeAttachment";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "volumeattachments";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for SlimVa {
    const LIST_KIND: &'static str = "VolumeAttachmentList";
}

impl k8s_openapi::Metadata for SlimVa {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One cached VolumeAttachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactVa {
    /// Its UID: the attachment's identity (I1).
    pub uid: Packed,
    /// The PV.
    pub pv: Packed,
    /// The node (interned).
    pub node: Arc<str>,
    /// The driver (interned).
    pub attacher: Arc<str>,
    /// `status.attached`.
    pub attached: bool,
    /// `metadata.deletionTimestamp` is set: being detached.
    pub deleting: bool,
    /// Its resourceVersion (for logs only: never compared, I1).
    pub resource_version: Packed,
    /// Seen by the relist in progress (mark and sweep, so a relist needs no
    /// second copy of the cache).
    pub listed: bool,
}

impl CompactVa {
    /// A live attachment: not being deleted.
    pub fn live(&self) -> bool {
        !self.deleting
    }
}

/// Why an object was not cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Another CSI driver's.
    OtherDriver,
    /// An inline volume (no PV).
    Inline,
    /// Missing name, UID or node: malformed.
    Malformed(String),
}

/// The cache: name → attachment, with interned node and driver names.
#[derive(Debug, Default)]
pub struct VaStore {
    by_name: HashMap<Packed, CompactVa>,
    names: HashSet<Arc<str>>,
    drivers: BTreeSet<String>,
}

/// What an update changed, for deciding whether to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    /// The PV.
    pub pv: String,
    /// The node.
    pub node: Arc<str>,
}

impl VaStore {
    /// An empty cache keeping only VolumeAttachments of `drivers`.
    pub fn new(drivers: impl IntoIterator<Item = String>) -> Self {
        VaStore {
            drivers: drivers.into_iter().collect(),
            ..Default::default()
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(Arc::clone(&a));
        a
    }

    /// Strips `va` down to what is kept, or says why it is not kept.
    pub fn compact(&mut self, va: &SlimVa) -> Result<(Packed, CompactVa), Skip> {
        if !self.drivers.contains(&va.spec.attacher) {
            return Err(Skip::OtherDriver);
        }
        let m = &va.metadata;
        let name = m.name.as_deref().filter(|n| !n.is_empty());
        let (Some(name), Some(uid)) = (name, m.uid.as_deref()) else {
            return Err(Skip::Malformed("no metadata.name or metadata.uid".into()));
        };
        if va.spec.node_name.is_empty() {
            return Err(Skip::Malformed(format!("{name}: no spec.nodeName")));
        }
        let Some(pv) = va.spec.source.persistent_volume_name.as_deref() else {
            return Err(Skip::Inline);
        };
        let c = CompactVa {
            uid: Packed::new(uid),
            pv: Packed::new(pv),
            node: self.intern(&va.spec.node_name),
            attacher: self.intern(&va.spec.attacher),
            attached: va.status.as_ref().is_some_and(|s| s.attached),
            deleting: m.deletion_timestamp.is_some(),
            resource_version: Packed::new(m.resource_version.as_deref().unwrap_or("")),
            listed: true,
        };
        Ok((Packed::new(name), c))
    }

    /// Adds or replaces `va`; what changed, if anything that matters did.
    pub fn apply(&mut self, va: &SlimVa) -> Option<Touched> {
        let (name, c) = match self.compact(va) {
            Ok(x) => x,
            Err(Skip::Malformed(why)) => {
                tracing::warn!("VolumeAttachment ignored: {why}");
                return None;
            }
            Err(_) => return None,
        };
        let touched = Touched {
            pv: c.pv.to_string(),
            node: Arc::clone(&c.node),
        };
        let same = |o: &CompactVa| {
            o.uid == c.uid
                && o.attached == c.attached
                && o.deleting == c.deleting
                && o.node == c.node
                && o.pv == c.pv
        };
        let changed = !self.by_name.get(&name).is_some_and(same);
        self.by_name.insert(name, c);
        changed.then_some(touched)
    }

    /// Removes the attachment named by `va`.
    pub fn remove(&mut self, va: &SlimVa) -> Option<Touched> {
        let name = va.metadata.name.as_deref()?;
        self.by_name.remove(&Packed::new(name)).map(|c| Touched {
            pv: c.pv.to_string(),
            node: c.node,
        })
    }

    /// A relist starts: every entry is unconfirmed until the list shows it again.
    pub fn begin_relist(&mut self) {
        self.by_name.values_mut().for_each(|c| c.listed = false);
    }

    /// The relist is complete: drops what it did not show (deleted while the
    /// watch was down) and says what they were.
    pub fn finish_relist(&mut self) -> Vec<Touched> {
        let mut gone = Vec::new();
        self.by_name.retain(|_, c| {
            if !c.listed {
                gone.push(Touched {
                    pv: c.pv.to_string(),
                    node: Arc::clone(&c.node),
                });
            }
            c.listed
        });
        gone
    }

    /// How many are cached.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The attachments of `node`, with their names.
    pub fn of_node<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a Packed, &'a CompactVa)> {
        self.by_name.iter().filter(move |(_, c)| &*c.node == node)
    }

    /// Nodes with a live attachment of `pv`, as cached (not fresh: I2 reads fresh).
    pub fn nodes_of(&self, pv: &str) -> BTreeSet<String> {
        let pv = Packed::new(pv);
        self.by_name
            .values()
            .filter(|c| c.pv == pv && c.live())
            .map(|c| c.node.to_string())
            .collect()
    }

    /// The name of the attachment with `uid`.
    pub fn name_of_uid(&self, uid: &str) -> Option<String> {
        let uid = Packed::new(uid);
        self.by_name
            .iter()
            .find(|(_, c)| c.uid == uid)
            .map(|(n, _)| n.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn va(name: &str, node: &str, pv: &str, attacher: &str, attached: bool) -> SlimVa {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
                "managedFields": [{"manager": "csi-attacher", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:attached": {}}}}]
            },
            "spec": {"attacher": attacher, "nodeName": node,
                     "source": {"persistentVolumeName": pv}},
            "status": {"attached": attached}
        }))
        .unwrap()
    }

    #[test]
    fn keeps_only_its_drivers_and_interns_names() {
        let mut s = VaStore::new(["block.csi".to_string()]);
        assert!(s.apply(&va("a", "n1", "pv1", "block.csi", true)).is_some());
        assert!(s.apply(&va("b", "n1", "pv2", "block.csi", false)).is_some());
        assert!(s.apply(&va("c", "n1", "pv3", "nfs.csi", true)).is_none());
        assert_eq!(s.len(), 2);
        let nodes: Vec<_> = s.of_node("n1").map(|(_, c)| Arc::clone(&c.node)).collect();
        assert!(Arc::ptr_eq(&nodes[0], &nodes[1]), "node names are interned");
        // The same object again changes nothing; an attach does.
        assert!(s.apply(&va("a", "n1", "pv1", "block.csi", true)).is_none());
        assert!(s.apply(&va("b", "n1", "pv2", "block.csi", true)).is_some());
        assert_eq!(s.name_of_uid("uid-b").as_deref(), Some("b"));
    }

    #[test]
    fn relist_in_place_reports_what_vanished_appeared_or_changed() {
        let mut s = VaStore::new(["d".to_string()]);
        s.apply(&va("a", "n1", "pv1", "d", true));
        s.apply(&va("b", "n2", "pv2", "d", true));
        s.begin_relist();
        let mut t: Vec<String> = Vec::new();
        for v in [
            va("b", "n2", "pv2", "d", true),
            va("c", "n1", "pv3", "d", true),
        ] {
            t.extend(s.apply(&v).map(|t| format!("{}@{}", t.pv, t.node)));
        }
        t.extend(
            s.finish_relist()
                .into_iter()
                .map(|t| format!("{}@{}", t.pv, t.node)),
        );
        t.sort();
        assert_eq!(t, ["pv1@n1", "pv3@n1"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.nodes_of("pv2"), BTreeSet::from(["n2".to_string()]));
    }

    #[test]
    fn malformed_and_inline_are_skipped_with_a_reason() {
        let mut s = VaStore::new(["d".to_string()]);
        let mut v = va("a", "", "pv1", "d", true);
        assert!(matches!(s.compact(&v), Err(Skip::Malformed(w)) if w.contains("spec.nodeName")));
        v.spec.node_name = "n1".into();
        v.spec.source.persistent_volume_name = None;
        assert_eq!(s.compact(&v).unwrap_err(), Skip::Inline);
    }
}
