//! csi-fencer: fencing of shared SAN block storage for Kubernetes with SCSI-3
//! Persistent Reservations.
//!
//! Layers, each testable alone (see DESIGN.md §2):
//! - [`scsi`]: the pure codec (CDBs, parameter lists, responses, sense);
//! - [`transport`]: the [`transport::Transport`] trait, its SG_IO
//!   implementation, and typed commands on one path;
//! - [`device`]: block devices, dm-multipath maps and their paths in sysfs;
//! - [`fence`]: keys, policy, decisions, the fenced-state store and the engine;
//! - [`source`]: where attachments come from (a YAML file; Kubernetes later).
#![warn(missing_docs)]

pub mod daemon;
pub mod device;
pub mod fence;
pub mod k8s;
pub mod scsi;
pub mod source;
pub mod transport;

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    /// A self-cleaning temporary directory (no extra dependency).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "csi-fencer-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
