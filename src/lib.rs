//! csi-fencer: fencing of shared SAN block storage for Kubernetes with SCSI-3
//! Persistent Reservations.
//!
//! Layers, each testable alone (see docs/design.md §2):
//! - [`scsi`]: the pure codec (CDBs, parameter lists, responses, sense);
//! - [`transport`]: the [`transport::Transport`] trait, its SG_IO
//!   implementation, and typed commands on one path;
//! - [`device`]: block devices, dm-multipath maps and their paths in sysfs;
//! - [`fence`]: keys, policy, decisions, the fenced-state store and the engine;
//! - [`source`]: where attachments come from (a YAML file, or Kubernetes: [`k8s`]);
//! - [`daemon`]: the node daemon, generic over its source: reconciler,
//!   metrics, gRPC API, kernel notices;
//! - [`platform`]: the one seam to the operating system (Linux: SG_IO,
//!   sysfs, dm-multipath; Windows: the class driver's PR IOCTLs);
//! - [`runtime`]: the composition root of `csi-fencer run`, which alone
//!   knows both the daemon and Kubernetes.
#![warn(missing_docs)]

// Lets code shared with integration tests (the mock API server) name this
// crate the same way from inside and outside.
extern crate self as csi_fencer;

pub mod daemon;
pub mod device;
pub mod failover;
pub mod fence;
pub mod k8s;
pub mod platform;
pub mod runtime;
pub mod scsi;
#[cfg(unix)]
pub mod sim;
pub mod source;
pub mod text;
pub mod transport;

#[cfg(test)]
pub(crate) mod testutil;
