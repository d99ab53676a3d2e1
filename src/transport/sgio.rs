//! The Linux SG_IO ioctl (sg_io_hdr v3) on sd, sg and dm-multipath devices.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use nix::libc::{c_int, c_uchar, c_uint, c_ushort, c_void};

use super::error::{CommandId, HostStatus, LINUX_PRIVILEGE};
use super::{Completion, ScsiError, Transport};
use crate::scsi::{Command, DataTransfer, ScsiStatus};

/// `struct sg_io_hdr` from <scsi/sg.h>.
#[repr(C)]
struct SgIoHdr {
    interface_id: c_int,
    dxfer_direction: c_int,
    cmd_len: c_uchar,
    mx_sb_len: c_uchar,
    iovec_count: c_ushort,
    dxfer_len: c_uint,
    dxferp: *mut c_void,
    cmdp: *const c_uchar,
    sbp: *mut c_uchar,
    timeout: c_uint,
    flags: c_uint,
    pack_id: c_int,
    usr_ptr: *mut c_void,
    status: c_uchar,
    masked_status: c_uchar,
    msg_status: c_uchar,
    sb_len_wr: c_uchar,
    host_status: c_ushort,
    driver_status: c_ushort,
    resid: c_int,
    duration: c_uint,
    info: c_uint,
}

const SG_IO: u32 = 0x2285;
const SG_DXFER_NONE: c_int = -1;
const SG_DXFER_TO_DEV: c_int = -2;
const SG_DXFER_FROM_DEV: c_int = -3;
/// Room for descriptor-format sense, which can exceed the classic 32 bytes.
const SENSE_BUF: usize = 252;
const DRIVER_TIMEOUT: u16 = 0x06;

nix::ioctl_readwrite_bad!(
    /// SG_IO: execute one SCSI command synchronously.
    sg_io_ioctl,
    SG_IO,
    SgIoHdr
);

/// Sends commands with SG_IO, opening the device for each command.
///
/// Paths are opened `O_RDONLY | O_NONBLOCK`: PR OUT still works with
/// CAP_SYS_RAWIO, and a read-write open would make udev emit change events
/// (and re-probe) on every close, which disturbs mounted file systems.
#[derive(Debug, Default, Clone, Copy)]
pub struct SgIo;

impl Transport for SgIo {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        let file = open_path(path)?;
        let mut data = match &cmd.data {
            DataTransfer::None => Vec::new(),
            DataTransfer::FromDevice(n) => vec![0u8; *n],
            DataTransfer::ToDevice(v) => v.clone(),
        };
        let mut sense = [0u8; SENSE_BUF];
        let cdb = cmd.cdb.as_bytes();
        let mut hdr = SgIoHdr {
            interface_id: b'S' as c_int,
            dxfer_direction: match cmd.data {
                DataTransfer::None => SG_DXFER_NONE,
                DataTransfer::FromDevice(_) => SG_DXFER_FROM_DEV,
                DataTransfer::ToDevice(_) => SG_DXFER_TO_DEV,
            },
            cmd_len: cdb.len() as c_uchar,
            mx_sb_len: SENSE_BUF as c_uchar,
            iovec_count: 0,
            dxfer_len: data.len() as c_uint,
            dxferp: if data.is_empty() {
                std::ptr::null_mut()
            } else {
                data.as_mut_ptr().cast()
            },
            cmdp: cdb.as_ptr(),
            sbp: sense.as_mut_ptr(),
            timeout: timeout.as_millis().clamp(1, u32::MAX as u128) as c_uint,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: every pointer in `hdr` points into a live buffer of the
        // length given beside it (`data`, `sense`, `cdb`), all of which
        // outlive the call; the kernel writes only within those lengths.
        let rc = unsafe { sg_io_ioctl(file.as_raw_fd(), &mut hdr) };
        if let Err(errno) = rc {
            return Err(ioctl_error(path, cmd, errno));
        }
        if hdr.driver_status & 0x0f == DRIVER_TIMEOUT {
            return Err(ScsiError::Timeout {
                device: path.to_path_buf(),
                command: cmd.into(),
                after: timeout,
            });
        }
        if matches!(cmd.data, DataTransfer::FromDevice(_)) {
            let got = data.len().saturating_sub(hdr.resid.max(0) as usize);
            data.truncate(got);
        } else {
            data.clear();
        }
        let sense_len = (hdr.sb_len_wr as usize).min(SENSE_BUF);
        Ok(Completion {
            status: ScsiStatus::from_byte(hdr.status),
            host_status: HostStatus::from_raw(hdr.host_status),
            driver_status: hdr.driver_status,
            sense: sense[..sense_len].to_vec(),
            data,
            duration: Duration::from_millis(hdr.duration as u64),
        })
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| m.rdev())
    }

    fn replays_registrations(&self) -> bool {
        false
    }
}

fn open_path(path: &Path) -> Result<std::fs::File, ScsiError> {
    let meta = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
    let ft = meta.file_type();
    if !ft.is_block_device() && !ft.is_char_device() {
        return Err(ScsiError::NotScsi {
            device: path.to_path_buf(),
            reason: "not a block or character device".into(),
        });
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, e))
}

fn open_error(path: &Path, e: io::Error) -> ScsiError {
    match e.raw_os_error() {
        Some(nix::libc::EACCES) | Some(nix::libc::EPERM) => ScsiError::PermissionDenied {
            device: path.to_path_buf(),
            command: None,
            need: LINUX_PRIVILEGE,
        },
        _ => ScsiError::NotFound {
            device: path.to_path_buf(),
            source: e,
        },
    }
}

fn ioctl_error(path: &Path, cmd: &Command, errno: nix::errno::Errno) -> ScsiError {
    use nix::errno::Errno;
    let device = path.to_path_buf();
    match errno {
        Errno::EPERM | Errno::EACCES => ScsiError::PermissionDenied {
            device,
            command: Some(CommandId::from(cmd)),
            need: LINUX_PRIVILEGE,
        },
        Errno::ENOTTY | Errno::EINVAL => ScsiError::NotScsi {
            device,
            reason: format!("the SG_IO ioctl is not supported here ({})", errno.desc()),
        },
        Errno::ENXIO | Errno::ENODEV => ScsiError::NotFound {
            device,
            source: io::Error::from_raw_os_error(errno as i32),
        },
        e => ScsiError::Io {
            device,
            command: cmd.into(),
            source: io::Error::from_raw_os_error(e as i32),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::test_unit_ready;

    #[test]
    fn header_matches_the_kernel_abi() {
        // x86_64 / aarch64 sizeof(struct sg_io_hdr) is 88.
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
    }

    #[test]
    fn missing_device_is_not_found() {
        let e = SgIo
            .execute(
                Path::new("/dev/does-not-exist-csi-fencer"),
                &test_unit_ready(),
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.kind(), "not_found");
        assert!(e.to_string().contains("/dev/does-not-exist-csi-fencer"));
    }

    #[test]
    fn regular_file_and_tty_are_not_scsi() {
        let d = crate::testutil::TempDir::new("sgio");
        let f = d.path().join("plain-file");
        std::fs::write(&f, b"not a disk").unwrap();
        let e = SgIo
            .execute(&f, &test_unit_ready(), Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.kind(), "not_scsi", "{e}");
        let e = SgIo
            .execute(
                Path::new("/dev/null"),
                &test_unit_ready(),
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.kind(), "not_scsi", "{e}");
        assert!(e.to_string().contains("not a SCSI device"), "{e}");
    }
}
