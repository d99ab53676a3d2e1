//! Windows: the class driver's PR IOCTLs on `\\.\PhysicalDriveN`, disks
//! found by their identity, one disk for all paths (MPIO).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::device::{Described, DeviceError, Locate};
use crate::transport::windows::{Disks, IoctlTransport, Win32};

/// This system's name in messages and `--version`.
pub const NAME: &str = "windows";

/// Where the fenced-state records live.
pub const DEFAULT_STATE_DIR: &str = r"C:\ProgramData\csi-fencer";

/// No kernel log is followed on Windows.
pub const DEFAULT_KERNEL_LOG: Option<&str> = None;

/// No multipath.conf on Windows: MPIO's DSM owns the paths.
pub const DEFAULT_MULTIPATH_CONFIG: Option<&str> = None;

/// multipath.conf is Linux's: naming one on Windows is a mistake.
pub fn multipath_owners(path: &Path) -> std::io::Result<Vec<String>> {
    Err(std::io::Error::other(format!(
        "{}: multipathConfig is a Linux setting (dm-multipath); set it to \"\" on Windows",
        path.display()
    )))
}

/// The transport that reaches real disks.
pub type Native = IoctlTransport<Win32>;

/// The transport that reaches real disks.
pub fn native() -> Native {
    IoctlTransport::new(Arc::new(Win32))
}

/// How LUNs are found.
pub type Locator = Disks<Win32>;

/// Finds LUNs among the disks by identity; there are no dm maps, so the
/// prefix is not used.
pub fn locator(_map_uuid_prefix: &str) -> Locator {
    Disks::new(Arc::new(Win32))
}

/// What a disk an operator named is: one disk standing for every path.
pub fn describe(device: &Path) -> Result<Described, DeviceError> {
    let lun = locator("").for_device(device)?;
    let kernel_name = lun
        .paths
        .first()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    Ok(Described {
        kernel_name,
        map: None,
        lun,
    })
}

/// Renames `from` over `to` and returns once the rename is on disk
/// (MOVEFILE_WRITE_THROUGH): Windows cannot open a directory to flush it.
pub fn replace_file(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::{
        MoveFileExW, MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH,
    };
    let wide = |p: &Path| -> Vec<u16> {
        p.as_os_str()
            .encode_wide()
            .chain(std::iter::once(0))
            .collect()
    };
    let (f, t) = (wide(from), wide(to));
    // SAFETY: both names are NUL-terminated and outlive the call.
    let ok = unsafe {
        MoveFileExW(
            f.as_ptr(),
            t.as_ptr(),
            MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
        )
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Nothing to do: [`replace_file`] writes through, and NTFS logs the
/// directory's changes itself.
pub fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Time since the process started: there is no kernel log to compare with.
pub fn monotonic() -> Option<Duration> {
    static START: OnceLock<Instant> = OnceLock::new();
    Some(START.get_or_init(Instant::now).elapsed())
}

/// Resolves when the process is asked to stop (Ctrl-C, Ctrl-Break, or the
/// system shutting down or the service being stopped).
pub async fn stop_signal() {
    use tokio::signal::windows::{ctrl_break, ctrl_shutdown};
    let (mut brk, mut shut) = match (ctrl_break(), ctrl_shutdown()) {
        (Ok(b), Ok(s)) => (b, s),
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = brk.recv() => {}
        _ = shut.recv() => {}
    }
}

/// Why there is no unix socket here.
const NO_UNIX_SOCKETS: &str = "the Windows build neither serves nor dials unix sockets (the gRPC node API, `ctl`, the CSI driver probe): tokio has no AF_UNIX on Windows; use the metrics and the VolumeReservation status instead";

/// No unix socket to serve the gRPC node API on.
pub fn listen(
    _path: &Path,
) -> Result<tokio_stream::Empty<std::io::Result<tokio::net::TcpStream>>, String> {
    Err(NO_UNIX_SOCKETS.into())
}

/// No unix socket to connect to.
pub async fn dial(_path: &Path) -> std::io::Result<tokio::net::TcpStream> {
    Err(std::io::Error::other(NO_UNIX_SOCKETS))
}

/// There is no kernel log to follow on Windows: fences are noticed at the
/// monitor interval.
pub fn follow_kernel_log<F>(path: &Path, _on: F) -> Result<(), String>
where
    F: Fn(Option<String>, Option<Duration>) + Send + 'static,
{
    Err(format!(
        "{}: there is no kernel log to follow on Windows; fences are noticed at the monitor interval",
        path.display()
    ))
}

/// Run under Wine by `make test` (no disks there, and no SAN): the real
/// system calls, and what an operator sees when nothing matches.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{BasicParams, PrOut, ReservationKey, Wwid};
    use crate::transport::{ScsiPath, Transport};

    const NO_DISK: &str = r"\\.\PhysicalDrive255";

    #[test]
    fn discovery_without_a_matching_disk_fails_with_what_it_looked_at() {
        let wwid: Wwid = "naa.60014050000000510102030405060708".parse().unwrap();
        let e = locator("")
            .wait(&wwid, Duration::ZERO, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("no device for WWID naa.60014050000000510102030405060708 after 0 ms:")
                && e.contains("no disk with that identity among the")
                && e.contains("is the LUN presented to this node"),
            "{e}"
        );
    }

    #[test]
    fn a_disk_that_is_not_there_is_not_found_and_gets_no_command() {
        let t = native();
        assert_eq!(t.device_number(Path::new(NO_DISK)), None);
        let e = ScsiPath::new(&t, NO_DISK, Duration::from_secs(1))
            .prout(&PrOut::Register(BasicParams {
                sa_key: ReservationKey(1),
                ..Default::default()
            }))
            .unwrap_err();
        assert_eq!(e.kind(), "not_found", "{e}");
        let d = describe(Path::new(NO_DISK)).unwrap_err();
        assert!(matches!(d, DeviceError::NotFound { .. }), "{d}");
    }

    #[test]
    fn a_replaced_file_holds_the_new_content() {
        let dir = std::env::temp_dir().join(format!("csi-fencer-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tmp, dest) = (dir.join("new.tmp"), dir.join("rec.json"));
        std::fs::write(&dest, "old").unwrap();
        std::fs::write(&tmp, "new").unwrap();
        replace_file(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert!(!tmp.exists());
        assert!(replace_file(&tmp, &dest).is_err(), "a missing source fails");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
