//! A test hook: a transport whose commands to chosen devices never return,
//! like SG_IO stuck on a path whose target stopped answering. Used by the
//! in-guest test that proves a hung device does not stall other volumes (I6);
//! with no devices chosen it passes everything through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Completion, ScsiError, Transport};
use crate::scsi::Command;

/// Passes commands to `inner`, except to `devices`, where it blocks.
pub struct Hanging<T> {
    inner: T,
    devices: Vec<PathBuf>,
}

impl<T> Hanging<T> {
    /// Blocks forever on `devices` (empty: never).
    pub fn new(inner: T, devices: Vec<PathBuf>) -> Self {
        Hanging { inner, devices }
    }
}

impl<T: Transport> Transport for Hanging<T> {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        if self.devices.iter().any(|d| d == path) {
            // An uninterruptible SG_IO ignores its own timeout; so does this.
            std::thread::sleep(Duration::from_secs(3600));
        }
        self.inner.execute(path, cmd, timeout)
    }
}
