//! What a PersistentVolume says about its LUN: the WWID (driver rule, or the
//! `csi-fencer.io/wwid` annotation), single- or multi-node from its access
//! modes (docs/design.md §5), and policy overrides from the driver rule, then the
//! StorageClass parameters, then the PV's annotations (the last one wins).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolume;

use crate::fence::policy::{AccessMode, PreemptMode};
use crate::scsi::{ReservationType, Wwid};
use crate::source::rules::DriverRule;
use crate::source::Overrides;

/// Annotation (on the PV) naming the LUN explicitly.
pub const WWID_ANNOTATION: &str = "csi-fencer.io/wwid";
/// Annotation or StorageClass parameter overriding the reservation type.
pub const TYPE_KEY: &str = "csi-fencer.io/reservation-type";
/// Annotation or StorageClass parameter overriding PREEMPT / PREEMPT AND ABORT.
pub const PREEMPT_KEY: &str = "csi-fencer.io/preempt";

/// A PV as the fencer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The LUN.
    pub wwid: Wwid,
    /// From the access modes.
    pub access: AccessMode,
    /// Policy overrides.
    pub overrides: Overrides,
    /// The PV's UID (owner reference and Event target).
    pub uid: String,
    /// The StorageClass, if any.
    pub storage_class: Option<String>,
    /// The CSI driver and volume handle: with a node's name they give the
    /// name of its VolumeAttachment of this LUN (the attach-detach
    /// controller hashes the three), whichever PV it came through.
    pub csi: (String, String),
}

/// The StorageClass a PV names, to be read for [`volume_info`].
pub fn storage_class(pv: &PersistentVolume) -> Option<String> {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .filter(|s| !s.is_empty())
}

/// Reads `pv` with the driver `rules` and its StorageClass parameters.
pub fn volume_info(
    pv: &PersistentVolume,
    sc_params: Option<&BTreeMap<String, String>>,
    rules: &[DriverRule],
) -> Result<VolumeInfo, String> {
    let spec = pv.spec.as_ref().ok_or("the PV has no spec")?;
    let csi = spec
        .csi
        .as_ref()
        .ok_or("not a CSI volume (no spec.csi): csi-fencer fences CSI volumes only")?;
    let rule = rules.iter().find(|r| r.name == csi.driver).ok_or_else(|| {
        format!(
            "driver {:?} has no entry in the config's drivers: add one",
            csi.driver
        )
    })?;
    let annotations = pv.metadata.annotations.clone().unwrap_or_default();
    let wwid = match annotations.get(WWID_ANNOTATION) {
        Some(w) => w
            .parse()
            .map_err(|e| format!("annotation {WWID_ANNOTATION}: {e}"))?,
        None => {
            let attrs = csi.volume_attributes.clone().unwrap_or_default();
            rule.wwid(&csi.volume_handle, &attrs)
                .map_err(|e| format!("driver {}: {e}", rule.name))?
        }
    };
    let modes = spec.access_modes.clone().unwrap_or_default();
    let multi = modes
        .iter()
        .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany");
    let mut overrides = Overrides {
        reservation_type: rule.reservation_type,
        preempt: rule.preempt,
    };
    if let Some(p) = sc_params {
        apply_overrides(&mut overrides, p, "StorageClass parameter")?;
    }
    apply_overrides(&mut overrides, &annotations, "annotation")?;
    Ok(VolumeInfo {
        wwid,
        access: if multi {
            AccessMode::MultiNode
        } else {
            AccessMode::SingleNode
        },
        overrides,
        uid: pv.metadata.uid.clone().unwrap_or_default(),
        storage_class: storage_class(pv),
        csi: (csi.driver.clone(), csi.volume_handle.clone()),
    })
}

fn apply_overrides(
    o: &mut Overrides,
    kv: &BTreeMap<String, String>,
    origin: &str,
) -> Result<(), String> {
    if let Some(t) = kv.get(TYPE_KEY) {
        let t: ReservationType = t.parse().map_err(|e| format!("{origin} {TYPE_KEY}: {e}"))?;
        o.reservation_type = Some(t);
    }
    if let Some(p) = kv.get(PREEMPT_KEY) {
        let mode: PreemptMode = p
            .parse()
            .map_err(|e| format!("{origin} {PREEMPT_KEY}: {e}"))?;
        o.preempt = Some(mode);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::rules::{compile, WwidFrom};

    fn rules() -> Vec<DriverRule> {
        vec![DriverRule {
            name: "block.csi".into(),
            wwid: WwidFrom::VolumeHandle(compile("^(?P<wwid>3[0-9a-f]{16})$").unwrap()),
            reservation_type: None,
            preempt: None,
        }]
    }

    fn pv(driver: &str, handle: &str, modes: &[&str], ann: &[(&str, &str)]) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-1", "uid": "u-1",
                "annotations": ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "spec": {"accessModes": modes, "storageClassName": "fast",
                "csi": {"driver": driver, "volumeHandle": handle}}
        }))
        .unwrap()
    }

    #[test]
    fn access_modes_decide_single_or_multi_node() {
        let v = volume_info(
            &pv("block.csi", "36001405000000001", &["ReadWriteOnce"], &[]),
            None,
            &rules(),
        )
        .unwrap();
        assert_eq!(v.access, AccessMode::SingleNode);
        assert_eq!(v.wwid.to_string(), "naa.6001405000000001");
        assert_eq!(v.storage_class.as_deref(), Some("fast"));
        let m = volume_info(
            &pv("block.csi", "36001405000000001", &["ReadWriteMany"], &[]),
            None,
            &rules(),
        )
        .unwrap();
        assert_eq!(m.access, AccessMode::MultiNode);
    }

    #[test]
    fn annotations_override_the_storage_class_which_overrides_the_driver() {
        let sc: BTreeMap<String, String> = [
            (PREEMPT_KEY.to_string(), "preempt".to_string()),
            (
                TYPE_KEY.to_string(),
                "exclusive-access-registrants-only".to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let p = pv(
            "block.csi",
            "x",
            &["ReadWriteOnce"],
            &[
                (WWID_ANNOTATION, "naa.6001405000000002"),
                (PREEMPT_KEY, "preempt-and-abort"),
            ],
        );
        let v = volume_info(&p, Some(&sc), &rules()).unwrap();
        assert_eq!(v.wwid.to_string(), "naa.6001405000000002");
        assert_eq!(v.overrides.preempt, Some(PreemptMode::PreemptAndAbort));
        assert_eq!(
            v.overrides.reservation_type,
            Some(ReservationType::ExclusiveAccessRegistrantsOnly)
        );
    }

    #[test]
    fn errors_say_what_is_missing() {
        let e = volume_info(&pv("nfs.csi", "x", &[], &[]), None, &rules()).unwrap_err();
        assert!(e.contains("\"nfs.csi\" has no entry"), "{e}");
        let e = volume_info(&pv("block.csi", "nope", &[], &[]), None, &rules()).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = volume_info(
            &pv("block.csi", "36001405000000001", &[], &[(PREEMPT_KEY, "x")]),
            None,
            &rules(),
        )
        .unwrap_err();
        assert!(e.contains("annotation csi-fencer.io/preempt"), "{e}");
    }
}
