//! From a WWID to the device nodes that reach the LUN: its dm-multipath map
//! (`dm/uuid` = `<prefix><wwid>`) and the map's path devices, or a lone SCSI
//! disk whose kernel-read identity matches when there is no map.

use std::path::Path;
use std::time::{Duration, Instant};

use super::sysfs::{NodeKind, Sysfs};
use super::{DeviceError, Locate, LunDevices, NotFound, PathInfo};
use crate::device::InitiatorPort;
use crate::scsi::Wwid;

/// Finds LUNs in sysfs.
#[derive(Debug)]
pub struct Resolver {
    sysfs: Sysfs,
    map_uuid_prefix: String,
    /// Which dm device each map uuid was last found at: checked (one sysfs
    /// read) before the full scan of every block device, which a daemon
    /// reconciling the same volumes would otherwise repeat each time.
    hints: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

fn why(unmapped: &[String]) -> String {
    if unmapped.is_empty() {
        "no SCSI disk with that identity (is the volume attached and multipathd running?)".into()
    } else {
        format!(
            "{} SCSI disks with that identity ({}) but no map joining them: is multipathd running, and is mapUuidPrefix the prefix of its maps' dm uuids?",
            unmapped.len(),
            unmapped.join(", ")
        )
    }
}

/// What one look found.
enum Look {
    Found(LunDevices),
    /// Nothing, or several unmapped disks (named).
    Missing(Vec<String>),
}

impl Resolver {
    /// A resolver over `sysfs` matching maps whose uuid is `prefix` + the
    /// multipath form of the WWID (multipath-tools: `mpath-`).
    pub fn new(sysfs: Sysfs, map_uuid_prefix: impl Into<String>) -> Self {
        Resolver {
            sysfs,
            map_uuid_prefix: map_uuid_prefix.into(),
            hints: Default::default(),
        }
    }

    /// The sysfs view.
    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// The dm uuid a map of `wwid` carries.
    fn map_uuid(&self, wwid: &Wwid) -> String {
        format!("{}{}", self.map_uuid_prefix, wwid.multipath_form())
    }

    fn map_devices(&self, dm: &str) -> LunDevices {
        let slaves = self.sysfs.slaves(dm);
        LunDevices {
            map: Some(dm.to_string()),
            device: self.sysfs.node(dm),
            paths: slaves.iter().map(|s| self.sysfs.path_info(s)).collect(),
        }
    }

    /// The dm device the map was last found at, if it still carries the uuid.
    fn hint(&self, uuid: &str) -> Option<String> {
        let hint = self.hints.lock().ok()?.get(uuid).cloned()?;
        (self.sysfs.dm_uuid(&hint).as_deref() == Some(uuid)).then_some(hint)
    }

    /// The paths behind a device node an operator named: a dm map's
    /// slaves, or the node itself (an sd, or an sg standing for its disk).
    pub fn for_device(&self, node: &Path) -> Result<LunDevices, DeviceError> {
        let (kind, name) = self.sysfs.kernel_name(node)?;
        if kind == NodeKind::Block && self.sysfs.is_dm(&name) {
            let mut d = self.map_devices(&name);
            d.device = node.to_path_buf();
            return Ok(d);
        }
        let block = match kind {
            NodeKind::Char => self.sysfs.block_of_sg(&name),
            NodeKind::Block => Some(name.clone()),
        };
        let mut info = block.map(|b| self.sysfs.path_info(&b)).unwrap_or(PathInfo {
            name,
            dev: node.to_path_buf(),
            hctl: None,
            state: None,
        });
        // Commands go to the node the operator named (an sg node stays an sg node).
        info.dev = node.to_path_buf();
        Ok(LunDevices {
            map: None,
            device: node.to_path_buf(),
            paths: vec![info],
        })
    }

    /// Looks once.
    pub fn find(&self, wwid: &Wwid) -> Option<LunDevices> {
        match self.look(wwid) {
            Look::Found(d) => Some(d),
            Look::Missing(_) => None,
        }
    }

    fn look(&self, wwid: &Wwid) -> Look {
        let uuid = self.map_uuid(wwid);
        if let Some(dm) = self.hint(&uuid) {
            return Look::Found(self.map_devices(&dm));
        }
        let names = self.sysfs.block_devices();
        if let Some(dm) = names
            .iter()
            .find(|n| n.starts_with("dm-") && self.sysfs.dm_uuid(n).as_deref() == Some(&uuid))
        {
            if let Ok(mut h) = self.hints.lock() {
                h.insert(uuid, dm.clone());
            }
            return Look::Found(self.map_devices(dm));
        }
        // No map: a single disk whose kernel-read identity is this WWID. More
        // than one such disk means several paths without a map: refuse to guess.
        // Compare parsed identities: the kernel writes T10 ids with spaces.
        let disks: Vec<&String> = names
            .iter()
            .filter(|n| {
                !n.starts_with("dm-")
                    && self
                        .sysfs
                        .scsi_wwid(n)
                        .and_then(|w| w.parse::<Wwid>().ok())
                        .as_ref()
                        == Some(wwid)
            })
            .collect();
        match disks.as_slice() {
            [one] => Look::Found(LunDevices {
                map: None,
                device: self.sysfs.node(one),
                paths: vec![self.sysfs.path_info(one)],
            }),
            several => Look::Missing(several.iter().map(|d| d.to_string()).collect()),
        }
    }

    /// Looks until the LUN appears or `timeout` passes, every `poll`.
    pub fn wait(
        &self,
        wwid: &Wwid,
        timeout: Duration,
        poll: Duration,
    ) -> Result<LunDevices, NotFound> {
        let start = Instant::now();
        loop {
            let unmapped = match self.look(wwid) {
                Look::Found(d) => return Ok(d),
                Look::Missing(unmapped) => unmapped,
            };
            if start.elapsed() >= timeout {
                // The wait asked for, not the nanoseconds it took: the
                // message must read the same on every retry, or each one
                // is a new status to write to the API server.
                return Err(NotFound {
                    wwid: wwid.to_string(),
                    waited: timeout,
                    detail: format!(
                        "no dm map with uuid {} and {}",
                        self.map_uuid(wwid),
                        why(&unmapped)
                    ),
                });
            }
            std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
        }
    }
}

impl Locate for Resolver {
    fn for_device(&self, node: &Path) -> Result<LunDevices, DeviceError> {
        Resolver::for_device(self, node)
    }

    fn wait(&self, wwid: &Wwid, timeout: Duration, poll: Duration) -> Result<LunDevices, NotFound> {
        Resolver::wait(self, wwid, timeout, poll)
    }

    fn system_wwid(&self, path: &PathInfo) -> Option<String> {
        self.sysfs.scsi_wwid(&path.name)
    }

    fn initiator_port(&self, path: &PathInfo) -> Option<InitiatorPort> {
        self.sysfs.initiator_port(&path.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::fs;
    use std::path::PathBuf;

    const A: &str = "naa.6001405000000001";
    const LONE: &str = "naa.6001405000000099";

    fn w(s: &str) -> Wwid {
        s.parse().expect("test WWID")
    }

    fn tree() -> (TempDir, Resolver) {
        let d = TempDir::new("resolve");
        let r = d.path().to_path_buf();
        let maps = [
            ("dm-0", "mpath-36001405000000001", ["sdc", "sdd"]),
            ("dm-1", "mpathb-36001405000000001", ["sde", "sdf"]),
        ];
        for (dm, uuid, slaves) in maps {
            fs::create_dir_all(r.join(format!("class/block/{dm}/dm"))).unwrap();
            fs::write(r.join(format!("class/block/{dm}/dm/uuid")), uuid).unwrap();
            for s in slaves {
                fs::create_dir_all(r.join(format!("class/block/{dm}/slaves/{s}"))).unwrap();
                fs::create_dir_all(r.join(format!("class/block/{s}/device"))).unwrap();
                fs::write(r.join(format!("class/block/{s}/device/wwid")), A).unwrap();
            }
        }
        fs::create_dir_all(r.join("class/block/sdg/device")).unwrap();
        fs::write(r.join("class/block/sdg/device/wwid"), LONE).unwrap();
        (d, Resolver::new(Sysfs::new(r, "/dev"), "mpath-"))
    }

    #[test]
    fn finds_the_map_by_uuid_and_lists_its_paths() {
        let (_d, r) = tree();
        let found = r.find(&w(A)).unwrap();
        assert_eq!(found.map.as_deref(), Some("dm-0"));
        assert_eq!(found.device, PathBuf::from("/dev/dm-0"));
        let names: Vec<_> = found.paths.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["sdc", "sdd"]);
        // The other node's map (another prefix) is found with that prefix.
        let rb = Resolver::new(r.sysfs().clone(), "mpathb-");
        assert_eq!(rb.find(&w(A)).unwrap().map.as_deref(), Some("dm-1"));
    }

    #[test]
    fn a_stale_hint_falls_back_to_the_scan() {
        let (d, r) = tree();
        assert_eq!(r.find(&w(A)).unwrap().map.as_deref(), Some("dm-0"));
        // The map is re-created as dm-7; dm-0 now belongs to something else.
        let root = d.path();
        fs::write(root.join("class/block/dm-0/dm/uuid"), "CRYPT-other").unwrap();
        fs::create_dir_all(root.join("class/block/dm-7/dm")).unwrap();
        fs::write(
            root.join("class/block/dm-7/dm/uuid"),
            "mpath-36001405000000001",
        )
        .unwrap();
        assert_eq!(r.find(&w(A)).unwrap().map.as_deref(), Some("dm-7"));
    }

    #[test]
    fn single_disk_fallback_and_ambiguity() {
        let (_d, r) = tree();
        let lone = r.find(&w(LONE)).unwrap();
        assert_eq!(lone.map, None);
        assert_eq!(lone.device, PathBuf::from("/dev/sdg"));
        // With a prefix that matches no map, four unmapped disks carry WWID A:
        // the resolver refuses to pick one of them.
        let none = Resolver::new(r.sysfs().clone(), "other-");
        assert_eq!(none.find(&w(A)), None);
        let e = none
            .wait(&w(A), Duration::from_millis(30), Duration::from_millis(10))
            .unwrap_err();
        assert!(e.to_string().contains("other-36001405000000001"), "{e}");
        assert!(
            e.to_string().contains("4 SCSI disks with that identity"),
            "{e}"
        );
        // Every retry says the same (a status that changes on each retry is
        // written to the API server each time).
        let again = none
            .wait(&w(A), Duration::from_millis(30), Duration::from_millis(10))
            .unwrap_err();
        assert_eq!(e.to_string(), again.to_string());
        assert!(e.to_string().contains("after 30 ms"), "{e}");
        let missing = r
            .wait(&w("naa.6001405000000fff"), Duration::ZERO, Duration::ZERO)
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("no SCSI disk with that identity"),
            "{missing}"
        );
    }
}
