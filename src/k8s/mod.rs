//! The Kubernetes side: the VolumeAttachment source, the `VolumeReservation`
//! status and Events, the CSI Identity probe. The only module that knows
//! Kubernetes types; the engine never sees them.

pub mod api;
pub mod authority;
pub mod cluster;
pub mod crd;
pub mod csi;
pub mod daemon;
pub mod failover;
pub mod gate;
pub mod leader;
pub mod packed;
pub mod report;
pub mod source;
pub mod store;
pub mod volume;

// They start the real kube-apiserver (Linux binaries) and build nodes over
// sysfs fixtures.
#[cfg(all(test, unix))]
mod tests;
