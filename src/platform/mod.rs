//! The one seam between csi-fencer and the operating system. Everything
//! above it (the engine, the daemon, the CLI) names `platform::` and never
//! asks which system it runs on; what only one system has stays behind it:
//!
//! | | Linux | Windows |
//! |---|---|---|
//! | commands | SG_IO on each path device | `IOCTL_STORAGE_PERSISTENT_RESERVE_IN/OUT` on the disk |
//! | finding a LUN | sysfs and dm-multipath maps | the disks' `StorageDeviceIdProperty` |
//! | paths | one device per I_T nexus | one disk for all paths (MPIO) |
//! | kernel notice of a fence | `/dev/kmsg` | none (the monitor interval) |
//! | gRPC node API | a unix socket | not served |
//! | stop signal | SIGTERM, Ctrl-C | Ctrl-C, Ctrl-Break, shutdown |

#[cfg(unix)]
pub mod linux;
#[cfg(windows)]
pub mod windows;

#[cfg(unix)]
pub use linux::*;
#[cfg(windows)]
pub use windows::*;
