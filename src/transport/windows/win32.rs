//! The system calls: `CreateFileW` on `\\.\PhysicalDriveN` and an
//! overlapped `DeviceIoControl` bounded by the command's timeout.

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Ioctl::{
    IOCTL_STORAGE_PERSISTENT_RESERVE_IN, IOCTL_STORAGE_PERSISTENT_RESERVE_OUT,
    IOCTL_STORAGE_QUERY_PROPERTY,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, DeviceIoControl, GetOverlappedResult, GetOverlappedResultEx, OVERLAPPED,
};

use super::{DiskIoctl, Win32Error};

/// Disk numbers probed when listing disks: `\\.\PhysicalDrive0` to `…255`
/// (numbers can have gaps, so no early stop).
const MAX_DISKS: u32 = 256;

/// How long a property query may take (the port driver answers it from
/// what it read when the disk arrived).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Output buffer for the device identifiers.
const DESCRIPTOR_BUFFER: usize = 4096;

/// The real IOCTLs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Win32;

/// An open handle, closed on drop.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateFileW and is closed once.
        unsafe { CloseHandle(self.0) };
    }
}

fn last_error() -> Win32Error {
    // SAFETY: reads the calling thread's last-error value.
    Win32Error(unsafe { GetLastError() })
}

fn open(disk: &Path, access: u32) -> Result<Handle, Win32Error> {
    let wide: Vec<u16> = OsStr::new(disk)
        .encode_wide()
        .chain(std::iter::once(0))
        .collect();
    // SAFETY: `wide` is NUL-terminated and outlives the call.
    let h = unsafe {
        CreateFileW(
            wide.as_ptr(),
            access,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(last_error());
    }
    Ok(Handle(h))
}

/// One IOCTL, waited for at most `timeout`, then cancelled. The buffers
/// and the OVERLAPPED are released only once the driver has given the
/// request back, whatever the wait said: a PR IOCTL the driver does not let
/// go of early holds this thread until the disk's own timeout (the daemon's
/// per-operation timeout bounds the operation regardless).
fn control(
    h: &Handle,
    code: u32,
    input: &[u8],
    out: &mut [u8],
    timeout: Duration,
) -> Result<usize, Win32Error> {
    // SAFETY: an all-zero OVERLAPPED is its documented initial state.
    let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
    let ov_ptr: *mut OVERLAPPED = &mut ov;
    let mut n: u32 = 0;
    let len = |b: usize| u32::try_from(b).map_err(|_| Win32Error(87));
    let (in_len, out_len) = (len(input.len())?, len(out.len())?);
    // SAFETY: the buffers and `ov` live until the request has completed:
    // every path below waits for it (or for its cancellation) first.
    let ok = unsafe {
        DeviceIoControl(
            h.0,
            code,
            input.as_ptr().cast(),
            in_len,
            out.as_mut_ptr().cast(),
            out_len,
            &mut n,
            ov_ptr,
        )
    };
    if ok != 0 {
        return Ok(n as usize);
    }
    let e = last_error();
    if e.0 != ERROR_IO_PENDING {
        return Err(e);
    }
    // At least 1 ms: 0 would poll, and a pending request is not an answer.
    let ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX - 1)
        .max(1);
    // SAFETY: `ov_ptr` points at the OVERLAPPED of the request pending on `h`.
    if unsafe { GetOverlappedResultEx(h.0, ov_ptr, &mut n, ms, 0) } != 0 {
        return Ok(n as usize);
    }
    let waited = last_error();
    // Whatever the wait said, the request may still be pending: cancel it
    // (harmless once it has completed) and wait until the driver gives it
    // back, so that nothing writes into `ov` or `out` after they are gone.
    // SAFETY: as above; the last call blocks until the request is done.
    let done = unsafe {
        CancelIoEx(h.0, ov_ptr);
        GetOverlappedResult(h.0, ov_ptr, &mut n, 1)
    };
    if done != 0 {
        // It completed after all, between the wait and the cancel.
        return Ok(n as usize);
    }
    let e = last_error();
    if waited.0 == WAIT_TIMEOUT {
        Err(waited)
    } else {
        Err(e)
    }
}

impl DiskIoctl for Win32 {
    fn reserve_in(
        &self,
        disk: &Path,
        input: &[u8],
        out_len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, Win32Error> {
        let h = open(disk, GENERIC_READ)?;
        let mut out = vec![0u8; out_len];
        control(
            &h,
            IOCTL_STORAGE_PERSISTENT_RESERVE_IN,
            input,
            &mut out,
            timeout,
        )?;
        // The whole buffer: the class driver leaves the byte count to the
        // port driver, and the data's ADDITIONAL LENGTH says what is valid.
        Ok(out)
    }

    fn reserve_out(&self, disk: &Path, input: &[u8], timeout: Duration) -> Result<(), Win32Error> {
        let h = open(disk, GENERIC_READ | GENERIC_WRITE)?;
        control(
            &h,
            IOCTL_STORAGE_PERSISTENT_RESERVE_OUT,
            input,
            &mut [],
            timeout,
        )
        .map(|_| ())
    }

    fn query_property(&self, disk: &Path, query: &[u8]) -> Result<Vec<u8>, Win32Error> {
        // No access rights: a property query needs none.
        let h = open(disk, 0)?;
        let mut out = vec![0u8; DESCRIPTOR_BUFFER];
        let n = control(
            &h,
            IOCTL_STORAGE_QUERY_PROPERTY,
            query,
            &mut out,
            QUERY_TIMEOUT,
        )?;
        out.truncate(n);
        Ok(out)
    }

    fn disks(&self) -> Vec<PathBuf> {
        (0..MAX_DISKS)
            .map(|n| PathBuf::from(format!(r"\\.\PhysicalDrive{n}")))
            .filter(|d| open(d, 0).is_ok())
            .collect()
    }
}
