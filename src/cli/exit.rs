//! Exit codes, in the sg3_utils convention so scripts written for sg_persist
//! keep working.

use csi_fencer::device::DeviceError;
use csi_fencer::scsi::SenseKey;
use csi_fencer::transport::ScsiError;

/// Success.
pub const OK: i32 = 0;
/// Bad command line or bad input.
pub const USAGE: i32 = 1;
/// NOT READY.
pub const NOT_READY: i32 = 2;
/// MEDIUM or HARDWARE ERROR.
pub const MEDIUM_HARD: i32 = 3;
/// ILLEGAL REQUEST (other than invalid opcode).
pub const ILLEGAL_REQUEST: i32 = 5;
/// UNIT ATTENTION (after the retries).
pub const UNIT_ATTENTION: i32 = 6;
/// Invalid opcode: persistent reservations not supported.
pub const UNSUPPORTED: i32 = 9;
/// ABORTED COMMAND.
pub const ABORTED: i32 = 11;
/// The device could not be opened (missing, not SCSI, no permission).
pub const FILE_ERROR: i32 = 15;
/// RESERVATION CONFLICT.
pub const CONFLICT: i32 = 24;
/// Timeout.
pub const TIMEOUT: i32 = 33;
/// Transport (path) failure.
pub const TRANSPORT: i32 = 35;
/// Malformed response.
pub const MALFORMED: i32 = 97;
/// Anything else.
pub const OTHER: i32 = 99;

/// The exit code for a SCSI error.
pub fn for_scsi(e: &ScsiError) -> i32 {
    match e {
        ScsiError::NotFound { .. }
        | ScsiError::PermissionDenied { .. }
        | ScsiError::NotScsi { .. } => FILE_ERROR,
        ScsiError::Timeout { .. } => TIMEOUT,
        ScsiError::Transport { .. } => TRANSPORT,
        ScsiError::ReservationConflict { .. } => CONFLICT,
        ScsiError::Unsupported { .. } => UNSUPPORTED,
        ScsiError::CheckCondition { sense, .. } => match sense.key {
            SenseKey::NotReady => NOT_READY,
            SenseKey::MediumError | SenseKey::HardwareError => MEDIUM_HARD,
            SenseKey::IllegalRequest => ILLEGAL_REQUEST,
            SenseKey::UnitAttention => UNIT_ATTENTION,
            SenseKey::AbortedCommand => ABORTED,
            _ => OTHER,
        },
        ScsiError::BadSense { .. } | ScsiError::Parse { .. } => MALFORMED,
        ScsiError::Io { .. } | ScsiError::Status { .. } => OTHER,
    }
}

/// The exit code for a device-resolution error.
pub fn for_device(_e: &DeviceError) -> i32 {
    FILE_ERROR
}

/// An error at the command line's edge that knows its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }

    /// A bad-input failure (exit 1).
    pub fn usage(msg: impl std::fmt::Display) -> Self {
        Failure::new(USAGE, anyhow::anyhow!("{msg}"))
    }
}

impl From<ScsiError> for Failure {
    fn from(e: ScsiError) -> Self {
        Failure::new(for_scsi(&e), e)
    }
}

impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Self {
        Failure::new(for_device(&e), e)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use csi_fencer::scsi::{BasicParams, PrOut, ReservationKey};
    use csi_fencer::transport::windows::{DiskIoctl, IoctlTransport, Win32Error};
    use csi_fencer::transport::ScsiPath;
    use windows_sys::Win32::Foundation as w;

    /// A disk whose every IOCTL fails with one Win32 error.
    struct Failing(u32);

    impl DiskIoctl for Failing {
        fn reserve_in(
            &self,
            _: &Path,
            _: &[u8],
            _: usize,
            _: Duration,
        ) -> Result<Vec<u8>, Win32Error> {
            Err(Win32Error(self.0))
        }
        fn reserve_out(&self, _: &Path, _: &[u8], _: Duration) -> Result<(), Win32Error> {
            Err(Win32Error(self.0))
        }
        fn query_property(&self, _: &Path, _: &[u8]) -> Result<Vec<u8>, Win32Error> {
            Err(Win32Error(self.0))
        }
        fn disks(&self) -> Vec<PathBuf> {
            Vec::new()
        }
    }

    fn exit_for(code: u32) -> i32 {
        let t = IoctlTransport::new(Arc::new(Failing(code)));
        let e = ScsiPath::new(&t, r"\\.\PhysicalDrive0", Duration::from_secs(1))
            .prout(&PrOut::Register(BasicParams {
                sa_key: ReservationKey(1),
                ..Default::default()
            }))
            .expect_err("the IOCTL fails");
        super::for_scsi(&e)
    }

    /// Windows' answers exit with the codes of the same conditions on Linux.
    #[test]
    fn windows_results_exit_like_their_linux_twins() {
        assert_eq!(exit_for(w::ERROR_BUSY), super::CONFLICT);
        assert_eq!(exit_for(w::ERROR_INVALID_FUNCTION), super::UNSUPPORTED);
        assert_eq!(exit_for(w::ERROR_IO_DEVICE), super::UNSUPPORTED);
        assert_eq!(exit_for(w::ERROR_ACCESS_DENIED), super::FILE_ERROR);
        assert_eq!(exit_for(w::ERROR_FILE_NOT_FOUND), super::FILE_ERROR);
        assert_eq!(exit_for(w::ERROR_SEM_TIMEOUT), super::TIMEOUT);
        assert_eq!(exit_for(w::ERROR_INVALID_PARAMETER), super::OTHER);
    }
}
