//! The devices that reach a LUN, as the operating system shows them.
//!
//! [`Locate`] is the engine's one question to the platform: which device
//! nodes reach this LUN, and what the system (not the device) says about a
//! path. Linux answers from sysfs and dm-multipath ([`Resolver`]); Windows
//! from its disk enumeration (`transport::windows`).

#[cfg(unix)]
pub mod multipath;
#[cfg(unix)]
mod resolve;
#[cfg(unix)]
mod sysfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::scsi::{TransportId, Wwid};

#[cfg(unix)]
pub use resolve::Resolver;
#[cfg(unix)]
pub use sysfs::{NodeKind, Sysfs};

/// Finds the devices that reach a LUN.
pub trait Locate: Send + Sync {
    /// The paths behind a device node an operator named.
    fn for_device(&self, node: &Path) -> Result<LunDevices, DeviceError>;

    /// Looks until the LUN appears or `timeout` passes, every `poll`.
    fn wait(&self, wwid: &Wwid, timeout: Duration, poll: Duration) -> Result<LunDevices, NotFound>;

    /// What the system read of the path's identity when it found the
    /// device (the kernel's `device/wwid`), without asking the device now:
    /// a change means the name stands for another LUN.
    fn system_wwid(&self, path: &PathInfo) -> Option<String>;

    /// The initiator port of the path's I_T nexus, where the system can
    /// name it.
    fn initiator_port(&self, path: &PathInfo) -> Option<InitiatorPort>;
}

/// Where a LUN was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LunDevices {
    /// The dm map's kernel name (`dm-3`), or `None` for a single-path disk.
    pub map: Option<String>,
    /// The node to send LU-wide commands to (the map, or the disk).
    pub device: PathBuf,
    /// The path devices (I_T nexuses).
    pub paths: Vec<PathInfo>,
}

/// What a device node an operator named is, and the LUN's devices behind it.
#[derive(Debug, Clone)]
pub struct Described {
    /// The system's name for it (`dm-0`, `sdc`, `sg2`, `PhysicalDrive3`).
    pub kernel_name: String,
    /// The dm map, when it is a device-mapper device.
    pub map: Option<MapNames>,
    /// The paths behind it.
    pub lun: LunDevices,
}

/// A device-mapper map's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapNames {
    /// dm name (`/dev/mapper/<name>`).
    pub name: Option<String>,
    /// dm uuid (`mpath-<wwid>` for multipath-tools maps).
    pub uuid: Option<String>,
}

/// The LUN did not appear in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "no device for WWID {wwid} after {}: {detail}",
    crate::text::duration(waited)
)]
pub struct NotFound {
    /// The WWID looked for.
    pub wwid: String,
    /// How long it waited.
    pub waited: Duration,
    /// What was looked for and what was found instead, in words.
    pub detail: String,
}

/// Why a device could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device node does not exist.
    #[error("{path}: no such device")]
    NotFound {
        /// The path given.
        path: PathBuf,
        /// What stat(2) said.
        source: std::io::Error,
    },
    /// The path is not a block or character device.
    #[error("{path}: not a block or character device")]
    NotADevice {
        /// The path given.
        path: PathBuf,
    },
    /// The system's disk enumeration does not know the device, or it is
    /// not a disk that takes SCSI commands.
    #[error("{path}: {why}")]
    NotADisk {
        /// The path given.
        path: PathBuf,
        /// Why, in words.
        why: String,
    },
    /// sysfs does not know the device number.
    #[error("{path}: device {major}:{minor} is not in sysfs under {sysfs}")]
    NotInSysfs {
        /// The path given.
        path: PathBuf,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// The sysfs root searched.
        sysfs: PathBuf,
    },
}

/// One path device of a LUN, with what the system says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathInfo {
    /// Kernel name, e.g. `sdc` (`PhysicalDrive3` on Windows).
    pub name: String,
    /// Device node, e.g. `/dev/sdc` (`\\\\.\\PhysicalDrive3`).
    pub dev: PathBuf,
    /// SCSI address `H:C:T:L`, when the path is a SCSI device.
    pub hctl: Option<String>,
    /// `device/state`: running, offline, blocked, transport-offline …
    pub state: Option<String>,
}

/// The initiator side of a path's I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorPort {
    /// As a TransportID.
    pub id: TransportId,
    /// The iSCSI ISID is not in sysfs and was derived from the session number.
    pub isid_guessed: bool,
}
