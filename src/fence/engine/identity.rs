//! Each path's proven identity, kept between operations so that a steady
//! check costs one PR IN and no INQUIRY.
//!
//! A cached identity is used only while everything that would change if the
//! device name came to stand for another logical unit is unchanged: the
//! device number, the SCSI address (`H:C:T:L`) and the kernel's own reading
//! of VPD 83h (`device/wwid`, re-read by the kernel when it rescans). A
//! unit attention that tells of a change behind the name (a reset, changed
//! capacity, changed inquiry or LUN inventory data) drops every identity of
//! the LUN it came from; the next operation proves them again (I3).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::device::InitiatorPort;
use crate::scsi::{Designation, Sense, Wwid};

/// What the system says about a device name now, without asking the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    /// The device number of the node.
    pub devnum: Option<u64>,
    /// `H:C:T:L` from sysfs.
    pub hctl: Option<String>,
    /// The kernel's `device/wwid`.
    pub kernel_wwid: Option<String>,
}

#[derive(Debug, Clone)]
struct Proven {
    seen: Seen,
    /// The LUN the designations name (to forget them with it).
    lun: Option<String>,
    designations: Vec<Designation>,
    /// The nexus's initiator port, read from sysfs with the proof: it is
    /// the session's (or the HBA's), and a new session is a new SCSI host,
    /// so it changes only with `H:C:T:L`.
    initiator: Option<InitiatorPort>,
}

/// What a path was proven to be.
pub(super) type Proof = (Vec<Designation>, Option<InitiatorPort>);

/// Identities proven by INQUIRY, by device path.
#[derive(Debug, Default)]
pub(super) struct Identities {
    by_dev: Mutex<HashMap<PathBuf, Proven>>,
}

impl Identities {
    /// The designations last proven for `dev`, if nothing seen has changed.
    /// A device without a number is never taken from the cache.
    pub fn get(&self, dev: &Path, seen: &Seen) -> Option<Proof> {
        seen.devnum?;
        let all = self.by_dev.lock().ok()?;
        all.get(dev)
            .filter(|p| &p.seen == seen)
            .map(|p| (p.designations.clone(), p.initiator.clone()))
    }

    /// Remembers what INQUIRY just proved for `dev`.
    pub fn put(
        &self,
        dev: &Path,
        seen: Seen,
        designations: &[Designation],
        initiator: Option<InitiatorPort>,
    ) {
        let lun = Wwid::from_designations(designations).map(|w| w.to_string());
        if let Ok(mut all) = self.by_dev.lock() {
            all.insert(
                dev.to_path_buf(),
                Proven {
                    seen,
                    lun,
                    designations: designations.to_vec(),
                    initiator,
                },
            );
        }
    }

    /// Forgets `dev` (its INQUIRY failed).
    pub fn forget(&self, dev: &Path) {
        if let Ok(mut all) = self.by_dev.lock() {
            all.remove(dev);
        }
    }

    /// Forgets every path of the LUN `wwid`.
    pub fn forget_lun(&self, wwid: &str) {
        if let Ok(mut all) = self.by_dev.lock() {
            all.retain(|_, p| p.lun.as_deref() != Some(wwid));
        }
    }
}

/// A unit attention after which the device behind a path may not be the one
/// proven: power on or reset (29/xx), capacity data changed (2A/09), and
/// the 3F/xx family (microcode, inquiry data or reported LUNs changed).
pub(super) fn unsettles_identity(s: &Sense) -> bool {
    matches!((s.asc, s.ascq), (0x29, _) | (0x2a, 0x09) | (0x3f, _))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::inquiry::{Association, CodeSet};
    use crate::scsi::Designator;

    fn naa(v: u64) -> Vec<Designation> {
        vec![Designation {
            association: Association::LogicalUnit,
            code_set: CodeSet::Binary,
            designator: Designator::Naa {
                id: format!("{v:016x}"),
            },
            protocol: None,
        }]
    }

    fn seen(devnum: u64, hctl: &str) -> Seen {
        Seen {
            devnum: Some(devnum),
            hctl: Some(hctl.into()),
            kernel_wwid: Some("naa.6001405000000001".into()),
        }
    }

    #[test]
    fn an_identity_is_reused_only_while_nothing_seen_changed() {
        let ids = Identities::default();
        let dev = Path::new("/dev/sdc");
        ids.put(dev, seen(0x820, "1:0:0:0"), &naa(0x6001405000000001), None);
        assert!(ids.get(dev, &seen(0x820, "1:0:0:0")).is_some());
        assert!(ids.get(dev, &seen(0x821, "1:0:0:0")).is_none(), "new dev_t");
        assert!(
            ids.get(dev, &seen(0x820, "1:0:0:1")).is_none(),
            "new H:C:T:L"
        );
        let mut other = seen(0x820, "1:0:0:0");
        other.kernel_wwid = Some("naa.6001405000000002".into());
        assert!(
            ids.get(dev, &other).is_none(),
            "the kernel rescanned another LU"
        );
        assert!(ids
            .get(Path::new("/dev/sdd"), &seen(0x820, "1:0:0:0"))
            .is_none());
    }

    #[test]
    fn a_device_without_a_number_is_always_asked() {
        let ids = Identities::default();
        let dev = Path::new("/dev/sdc");
        let none = Seen {
            devnum: None,
            hctl: None,
            kernel_wwid: None,
        };
        ids.put(dev, none.clone(), &naa(0x6001405000000001), None);
        assert!(ids.get(dev, &none).is_none());
    }

    #[test]
    fn a_lun_is_forgotten_with_all_its_paths_and_only_them() {
        let ids = Identities::default();
        ids.put(
            Path::new("/dev/sdc"),
            seen(1, "1:0:0:0"),
            &naa(0x6001405000000001),
            None,
        );
        ids.put(
            Path::new("/dev/sdd"),
            seen(2, "2:0:0:0"),
            &naa(0x6001405000000001),
            None,
        );
        ids.put(
            Path::new("/dev/sde"),
            seen(3, "1:0:0:1"),
            &naa(0x6001405000000002),
            None,
        );
        let w = Wwid::from_designations(&naa(0x6001405000000001))
            .expect("an NAA designator names the LU")
            .to_string();
        ids.forget_lun(&w);
        assert!(ids
            .get(Path::new("/dev/sdc"), &seen(1, "1:0:0:0"))
            .is_none());
        assert!(ids
            .get(Path::new("/dev/sdd"), &seen(2, "2:0:0:0"))
            .is_none());
        assert!(ids
            .get(Path::new("/dev/sde"), &seen(3, "1:0:0:1"))
            .is_some());
    }

    #[test]
    fn which_attentions_unsettle_an_identity() {
        let s = |asc, ascq| Sense {
            format: crate::scsi::sense::SenseFormat::Fixed,
            current: true,
            key: crate::scsi::SenseKey::UnitAttention,
            asc,
            ascq,
            description: None,
        };
        assert!(unsettles_identity(&s(0x29, 0x00)));
        assert!(unsettles_identity(&s(0x2a, 0x09)));
        assert!(unsettles_identity(&s(0x3f, 0x0e)));
        assert!(
            !unsettles_identity(&s(0x2a, 0x05)),
            "a preemption changes no identity"
        );
        assert!(!unsettles_identity(&s(0x2a, 0x03)));
    }
}
