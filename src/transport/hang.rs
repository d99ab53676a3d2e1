//! A test hook: a transport whose commands to chosen devices never return,
//! like SG_IO stuck on a path whose target stopped answering. Used by the
//! in-guest test that proves a hung device does not stall other volumes (I6);
//! with no devices chosen it passes everything through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Completion, ScsiError, Transport};
use crate::scsi::Command;

/// Passes commands to `inner`, except to `devices`, where it blocks for an
/// hour and then fails with a timeout without sending anything.
pub struct Hanging<T> {
    inner: T,
    devices: Vec<PathBuf>,
    hang: Duration,
}

impl<T> Hanging<T> {
    /// Blocks forever on `devices` (empty: never).
    pub fn new(inner: T, devices: Vec<PathBuf>) -> Self {
        Hanging {
            inner,
            devices,
            hang: Duration::from_secs(3600),
        }
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
            // The command is never sent: a PR OUT landing an hour late would
            // act without fresh authority (I1).
            std::thread::sleep(self.hang);
            return Err(ScsiError::Timeout {
                device: path.to_path_buf(),
                command: cmd.into(),
                after: self.hang,
            });
        }
        self.inner.execute(path, cmd, timeout)
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        self.inner.device_number(path)
    }

    fn replays_registrations(&self) -> bool {
        self.inner.replays_registrations()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::scripted::Scripted;

    #[test]
    fn a_hung_device_never_gets_the_command_and_others_do() {
        let inner = Scripted::new(vec![Completion::good(Vec::new())]);
        let mut h = Hanging::new(&inner, vec![PathBuf::from("/dev/sdc")]);
        h.hang = Duration::from_millis(10);
        let tur = crate::scsi::cdb::test_unit_ready();
        let e = h.execute(Path::new("/dev/sdc"), &tur, Duration::from_secs(1));
        assert!(matches!(e, Err(ScsiError::Timeout { .. })), "{e:?}");
        assert!(inner.sent().is_empty(), "nothing reached the device");
        h.execute(Path::new("/dev/sdd"), &tur, Duration::from_secs(1))
            .unwrap();
        assert_eq!(inner.sent().len(), 1);
    }
}
