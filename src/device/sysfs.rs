//! sysfs lookups: device node -> kernel name, dm maps -> path devices, path state.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{DeviceError, InitiatorPort, PathInfo};
use crate::scsi::transport_id::decode_hex;
use crate::scsi::TransportId;

/// Block or character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A block device (sd, dm).
    Block,
    /// A character device (sg).
    Char,
}

/// A sysfs tree, `/sys` in production, a fixture directory in tests.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
    dev: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new("/sys", "/dev")
    }
}

impl Sysfs {
    /// sysfs mounted at `root`, device nodes under `dev`.
    pub fn new(root: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> Self {
        Sysfs {
            root: root.into(),
            dev: dev.into(),
        }
    }

    /// The kernel name (`sdc`, `dm-0`, `sg2`) of a device node, found by its
    /// device number, so /dev/mapper and /dev/disk/by-id links resolve too.
    pub fn kernel_name(&self, node: &Path) -> Result<(NodeKind, String), DeviceError> {
        let meta = fs::metadata(node).map_err(|source| DeviceError::NotFound {
            path: node.to_path_buf(),
            source,
        })?;
        let kind = if meta.file_type().is_block_device() {
            NodeKind::Block
        } else if meta.file_type().is_char_device() {
            NodeKind::Char
        } else {
            return Err(DeviceError::NotADevice {
                path: node.to_path_buf(),
            });
        };
        let (major, minor) = (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        );
        self.name_of_devnum(kind, major as u32, minor as u32)
            .map(|n| (kind, n))
            .ok_or_else(|| DeviceError::NotInSysfs {
                path: node.to_path_buf(),
                major: major as u32,
                minor: minor as u32,
                sysfs: self.root.clone(),
            })
    }

    /// The kernel name for a device number, via `/sys/dev/{block,char}/M:m`.
    pub fn name_of_devnum(&self, kind: NodeKind, major: u32, minor: u32) -> Option<String> {
        let dir = match kind {
            NodeKind::Block => "block",
            NodeKind::Char => "char",
        };
        let link = self
            .root
            .join("dev")
            .join(dir)
            .join(format!("{major}:{minor}"));
        let target = fs::read_link(&link).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    fn block(&self, name: &str) -> PathBuf {
        self.root.join("class/block").join(name)
    }

    /// True when the block device is a device-mapper device.
    pub fn is_dm(&self, name: &str) -> bool {
        self.block(name).join("dm").is_dir()
    }

    /// The dm map's name (`/sys/block/dm-N/dm/name`).
    pub fn dm_name(&self, name: &str) -> Option<String> {
        read_trimmed(&self.block(name).join("dm/name"))
    }

    /// The dm map's uuid (`mpath-<wwid>` for multipath-tools maps).
    pub fn dm_uuid(&self, name: &str) -> Option<String> {
        read_trimmed(&self.block(name).join("dm/uuid"))
    }

    /// The devices under a dm map (`slaves/`), sorted by name.
    pub fn slaves(&self, name: &str) -> Vec<String> {
        sorted_names(&self.block(name).join("slaves"))
    }

    /// What sysfs says about a path device.
    pub fn path_info(&self, name: &str) -> PathInfo {
        let dev_dir = self.block(name).join("device");
        // The link's own target ends in the SCSI device's name: one
        // readlink, where resolving the whole path costs one per component.
        let hctl = fs::read_link(&dev_dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.split(':').count() == 4);
        PathInfo {
            name: name.to_string(),
            dev: self.dev.join(name),
            hctl,
            state: read_trimmed(&dev_dir.join("state")),
        }
    }

    /// The block device behind an sg character device (`sg2` -> `sdc`).
    pub fn block_of_sg(&self, sg: &str) -> Option<String> {
        let dir = self
            .root
            .join("class/scsi_generic")
            .join(sg)
            .join("device/block");
        sorted_names(&dir).into_iter().next()
    }

    /// Every block device name (`/sys/class/block`), sorted.
    pub fn block_devices(&self) -> Vec<String> {
        sorted_names(&self.root.join("class/block"))
    }

    /// The disk (`sdc`) of the SCSI device at `H:C:T:L`.
    pub fn disk_of_scsi(&self, hctl: &str) -> Option<String> {
        if hctl.contains('/') || hctl.contains("..") {
            return None;
        }
        let dir = self.root.join("bus/scsi/devices").join(hctl).join("block");
        sorted_names(&dir).into_iter().next()
    }

    /// The kernel's own reading of a SCSI device's VPD 83h identity
    /// (`device/wwid`, e.g. `naa.6001405…`), when it has one.
    pub fn scsi_wwid(&self, name: &str) -> Option<String> {
        read_trimmed(&self.block(name).join("device/wwid"))
    }

    /// The initiator port of the I_T nexus a path device sits on, from the
    /// transport classes in sysfs: an iSCSI session's initiator name and ISID,
    /// or an FC host's WWPN. `None` for transports it cannot name (SAS, …).
    pub fn initiator_port(&self, name: &str) -> Option<InitiatorPort> {
        let dev = fs::canonicalize(self.block(name).join("device")).ok()?;
        let parts: Vec<String> = dev
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if let Some(session) = parts.iter().find(|p| p.starts_with("session")) {
            let dir = self.root.join("class/iscsi_session").join(session);
            let name = read_trimmed(&dir.join("initiatorname"))?;
            let read = read_trimmed(&dir.join("isid"))
                .map(|i| i.trim_start_matches("0x").to_ascii_lowercase())
                .filter(|i| !i.is_empty());
            let isid_guessed = read.is_none();
            let isid = read.or_else(|| open_iscsi_isid(session));
            return Some(InitiatorPort {
                id: TransportId::Iscsi { name, isid },
                isid_guessed,
            });
        }
        if parts.iter().any(|p| p.starts_with("rport-")) {
            let host = parts.iter().find(|p| p.starts_with("host"))?;
            let wwpn = read_trimmed(&self.root.join("class/fc_host").join(host).join("port_name"))?;
            let b = decode_hex(wwpn.trim_start_matches("0x"))?;
            return Some(InitiatorPort {
                id: TransportId::FibreChannel {
                    n_port_name: b.try_into().ok()?,
                },
                isid_guessed: false,
            });
        }
        None
    }

    /// The device node of a kernel name.
    pub fn node(&self, name: &str) -> PathBuf {
        self.dev.join(name)
    }
}

/// The ISID open-iscsi's iscsid gives a software-iSCSI session, which the
/// kernel does not show in sysfs: its OUI-format prefix 00:02:3d and the
/// 24-bit session number (`session7` -> `00023d000007`; seen on every LIO
/// READ FULL STATUS in the rig). It is a guess: when no registration matches
/// it, the path's registration is unknown, not absent (so a release still
/// unregisters it and a check registers it again).
fn open_iscsi_isid(session: &str) -> Option<String> {
    let n: u32 = session.strip_prefix("session")?.parse().ok()?;
    (n < 1 << 24).then(|| format!("00023d{n:06x}"))
}

/// The entries of a directory, sorted; none when it cannot be read.
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::fs::symlink;

    /// A fixture tree: dm-0 over sdc and sdd, like the rig's node A map.
    fn fixture() -> (TempDir, Sysfs) {
        let d = TempDir::new("sysfs");
        let r = d.path();
        let dev = r.join("devices/platform/host2/session1/target2:0:0/2:0:0:1");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("state"), "running\n").unwrap();
        let dev2 = r.join("devices/platform/host3/session2/target3:0:0/3:0:0:1");
        fs::create_dir_all(&dev2).unwrap();
        fs::write(dev2.join("state"), "offline\n").unwrap();
        fs::create_dir_all(r.join("class/block/sdc")).unwrap();
        fs::create_dir_all(r.join("class/block/sdd")).unwrap();
        symlink(&dev, r.join("class/block/sdc/device")).unwrap();
        symlink(&dev2, r.join("class/block/sdd/device")).unwrap();
        fs::create_dir_all(r.join("class/block/dm-0/dm")).unwrap();
        fs::create_dir_all(r.join("class/block/dm-0/slaves/sdd")).unwrap();
        fs::create_dir_all(r.join("class/block/dm-0/slaves/sdc")).unwrap();
        fs::write(r.join("class/block/dm-0/dm/uuid"), "mpath-36001405abc\n").unwrap();
        fs::write(r.join("class/block/dm-0/dm/name"), "a-vol0\n").unwrap();
        fs::create_dir_all(r.join("dev/block")).unwrap();
        symlink(
            "../../devices/virtual/block/dm-0",
            r.join("dev/block/254:0"),
        )
        .unwrap();
        fs::write(dev.join("wwid"), "naa.6001405abc\n").unwrap();
        let sess = r.join("class/iscsi_session/session1");
        fs::create_dir_all(&sess).unwrap();
        fs::write(sess.join("initiatorname"), "iqn.2025-01.test.rig:nodea\n").unwrap();
        fs::write(sess.join("isid"), "0x00023D000001\n").unwrap();
        let s = Sysfs::new(r, "/dev");
        (d, s)
    }

    #[test]
    fn dm_map_and_its_paths() {
        let (_d, s) = fixture();
        assert!(s.is_dm("dm-0"));
        assert!(!s.is_dm("sdc"));
        assert_eq!(s.slaves("dm-0"), vec!["sdc", "sdd"]);
        assert_eq!(s.dm_uuid("dm-0").as_deref(), Some("mpath-36001405abc"));
        assert_eq!(s.dm_name("dm-0").as_deref(), Some("a-vol0"));
        assert_eq!(
            s.name_of_devnum(NodeKind::Block, 254, 0).as_deref(),
            Some("dm-0")
        );
        assert_eq!(s.name_of_devnum(NodeKind::Block, 8, 0), None);
        let p = s.path_info("sdd");
        assert_eq!(p.hctl.as_deref(), Some("3:0:0:1"));
        assert_eq!(p.state.as_deref(), Some("offline"));
        assert_eq!(p.dev, PathBuf::from("/dev/sdd"));
        assert_eq!(s.path_info("sdx").state, None);
    }

    #[test]
    fn iscsi_nexus_identity_and_kernel_wwid() {
        let (_d, s) = fixture();
        assert_eq!(
            s.initiator_port("sdc"),
            Some(InitiatorPort {
                id: TransportId::Iscsi {
                    name: "iqn.2025-01.test.rig:nodea".into(),
                    isid: Some("00023d000001".into())
                },
                isid_guessed: false,
            })
        );
        assert_eq!(
            s.initiator_port("sdd"),
            None,
            "no session directory for session2"
        );
        assert_eq!(s.scsi_wwid("sdc").as_deref(), Some("naa.6001405abc"));
        // No isid attribute (open-iscsi's software sessions): derived, and said so.
        let d = crate::testutil::iscsi_fixture("iqn.x:y");
        let p = Sysfs::new(d.path(), "/dev").initiator_port("sdd").unwrap();
        assert_eq!(
            (p.id.to_string(), p.isid_guessed),
            ("iscsi iqn.x:y,i,0x00023d000002".to_string(), true)
        );
        assert_eq!(s.block_devices(), vec!["dm-0", "sdc", "sdd"]);
    }

    #[test]
    fn non_devices_are_refused() {
        let (d, s) = fixture();
        let f = d.path().join("plain");
        fs::write(&f, "x").unwrap();
        assert!(matches!(
            s.kernel_name(&f),
            Err(DeviceError::NotADevice { .. })
        ));
        assert!(matches!(
            s.kernel_name(&d.path().join("missing")),
            Err(DeviceError::NotFound { .. })
        ));
    }
}
