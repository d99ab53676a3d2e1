//! Block devices, dm-multipath maps and their SCSI paths, as sysfs shows them.
//!
//! All reading goes through [`Sysfs`] with a configurable root, so unit tests
//! run on fixture trees.

pub mod multipath;
mod resolve;
mod sysfs;

pub use resolve::{LunDevices, NotFound, Resolver};
pub use sysfs::{DeviceError, InitiatorPort, NodeKind, PathInfo, Sysfs};
