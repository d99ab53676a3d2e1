//! Windows nodes: persistent reservations through the class driver's
//! `IOCTL_STORAGE_PERSISTENT_RESERVE_IN/OUT`, and a disk's identity through
//! `IOCTL_STORAGE_QUERY_PROPERTY(StorageDeviceIdProperty)`.
//!
//! The engine speaks SCSI commands; [`IoctlTransport`] translates each into
//! the IOCTL that carries it ([`contract`]) and the IOCTL's result back into
//! the completion a SCSI device would have given. What Windows cannot carry
//! (REPORT CAPABILITIES, READ FULL STATUS, REGISTER AND MOVE, ALL_TG_PT)
//! comes back as "not supported", so the engine runs with the capability
//! profile of a target that lacks them. With MPIO, one `\\.\PhysicalDriveN`
//! stands for every path and the DSM carries registrations to each: a LUN
//! is one device of one path here ([`Disks`]).
//!
//! Everything but the system calls ([`DiskIoctl`]) is platform-neutral, so
//! the simulation drives the engine through this translation on any host.

pub mod contract;
#[cfg(windows)]
mod win32;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation as w;

use super::error::{CommandId, Refusal};
use super::{Completion, ScsiError, Transport};
use crate::device::{DeviceError, InitiatorPort, Locate, LunDevices, NotFound, PathInfo};
use crate::scsi::{inquiry, Command, DataTransfer, ScsiStatus, Wwid};
use contract::Request;
#[cfg(windows)]
pub use win32::Win32;

/// A Win32 error code, as `GetLastError` gives it after `DeviceIoControl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Win32Error(pub u32);

impl Win32Error {
    /// The constant's name, for the codes this backend tells apart.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            w::ERROR_INVALID_FUNCTION => "ERROR_INVALID_FUNCTION",
            w::ERROR_FILE_NOT_FOUND => "ERROR_FILE_NOT_FOUND",
            w::ERROR_PATH_NOT_FOUND => "ERROR_PATH_NOT_FOUND",
            w::ERROR_ACCESS_DENIED => "ERROR_ACCESS_DENIED",
            w::ERROR_BAD_LENGTH => "ERROR_BAD_LENGTH",
            w::ERROR_NOT_READY => "ERROR_NOT_READY",
            w::ERROR_INVALID_PARAMETER => "ERROR_INVALID_PARAMETER",
            w::ERROR_SEM_TIMEOUT => "ERROR_SEM_TIMEOUT",
            w::ERROR_BUSY => "ERROR_BUSY",
            w::WAIT_TIMEOUT => "WAIT_TIMEOUT",
            w::ERROR_OPERATION_ABORTED => "ERROR_OPERATION_ABORTED",
            w::ERROR_IO_DEVICE => "ERROR_IO_DEVICE",
            w::ERROR_DEVICE_NOT_CONNECTED => "ERROR_DEVICE_NOT_CONNECTED",
            w::ERROR_INVALID_USER_BUFFER => "ERROR_INVALID_USER_BUFFER",
            _ => return None,
        })
    }
}

impl fmt::Display for Win32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "Win32 error {}", self.0),
        }
    }
}

/// The three IOCTLs a disk handle answers, with their Windows semantics.
/// The real one is `Win32` (on Windows); the simulation's double answers
/// from its strict SAN model.
pub trait DiskIoctl: Send + Sync {
    /// `IOCTL_STORAGE_PERSISTENT_RESERVE_IN`: `input` is a
    /// `PERSISTENT_RESERVE_COMMAND`, the output buffer `out_len` bytes.
    /// Returns what the driver wrote (`IoStatus.Information` bytes).
    fn reserve_in(
        &self,
        disk: &Path,
        input: &[u8],
        out_len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, Win32Error>;

    /// `IOCTL_STORAGE_PERSISTENT_RESERVE_OUT`: `input` is the command with
    /// its `PRO_PARAMETER_LIST` after it. A handle with read and write access.
    fn reserve_out(&self, disk: &Path, input: &[u8], timeout: Duration) -> Result<(), Win32Error>;

    /// `IOCTL_STORAGE_QUERY_PROPERTY` with `query` (a `STORAGE_PROPERTY_QUERY`).
    fn query_property(&self, disk: &Path, query: &[u8]) -> Result<Vec<u8>, Win32Error>;

    /// The disks present now (`\\.\PhysicalDriveN`).
    fn disks(&self) -> Vec<PathBuf>;
}

/// The engine's [`Transport`] over the IOCTLs.
pub struct IoctlTransport<I> {
    io: Arc<I>,
}

impl<I: DiskIoctl> IoctlTransport<I> {
    /// Commands through `io`.
    pub fn new(io: Arc<I>) -> Self {
        IoctlTransport { io }
    }

    /// The disk's identity as Windows holds it, as a VPD 83h page.
    fn device_id_page(&self, disk: &Path) -> Result<Result<Vec<u8>, String>, Win32Error> {
        let d = self.io.query_property(disk, &contract::device_id_query())?;
        Ok(contract::vpd83_from_device_id(&d).map_err(|e| e.to_string()))
    }
}

/// A 64-bit FNV-1a digest: what stands for a device number on Windows.
fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<I: DiskIoctl> Transport for IoctlTransport<I> {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        let out = match &cmd.data {
            DataTransfer::ToDevice(d) => Some(d.as_slice()),
            _ => None,
        };
        let req =
            contract::request(cmd.cdb.as_bytes(), out).map_err(|why| ScsiError::Unsupported {
                device: path.to_path_buf(),
                command: cmd.into(),
                by: Refusal::Platform(why.0),
            })?;
        let started = Instant::now();
        let data = match req {
            Request::PrIn(r) => self.io.reserve_in(
                path,
                &contract::encode_pr_in(&r),
                usize::from(r.allocation),
                timeout,
            ),
            Request::PrOut(r) => self
                .io
                .reserve_out(path, &contract::encode_pr_out(&r), timeout)
                .map(|()| Vec::new()),
            Request::DeviceId(alloc) => match self.device_id_page(path) {
                Ok(Ok(mut page)) => {
                    page.truncate(alloc);
                    Ok(page)
                }
                Ok(Err(reason)) => {
                    return Err(ScsiError::NotScsi {
                        device: path.to_path_buf(),
                        reason,
                    })
                }
                Err(e) => Err(e),
            },
        };
        match data {
            Ok(data) => Ok(Completion {
                duration: started.elapsed(),
                ..Completion::good(data)
            }),
            Err(e) => answer(e, path, cmd.into(), timeout),
        }
    }

    /// A digest of the logical unit's identity as Windows holds it for the
    /// disk behind the name (the designators of its
    /// `STORAGE_DEVICE_ID_DESCRIPTOR` that name the LU, no SCSI command):
    /// Windows has no device number that changes when a name comes to
    /// stand for another disk, and this does. Port designators are left
    /// out: MPIO may answer from whichever path it uses now.
    fn device_number(&self, path: &Path) -> Option<u64> {
        let d = self
            .io
            .query_property(path, &contract::device_id_query())
            .ok()?;
        let page = contract::vpd83_from_device_id(&d).ok()?;
        Some(digest(&contract::logical_unit_designators(&page)))
    }

    /// MPIO's DSM keeps the key it registered and registers it on every
    /// path that appears.
    fn replays_registrations(&self) -> bool {
        true
    }
}

/// What a Win32 error from a PR IOCTL means, in the words the Linux backend
/// uses for the same condition.
pub fn answer(
    e: Win32Error,
    device: &Path,
    command: CommandId,
    timeout: Duration,
) -> Result<Completion, ScsiError> {
    let device = device.to_path_buf();
    Err(match e.0 {
        // STATUS_DEVICE_BUSY: the device answered RESERVATION CONFLICT.
        w::ERROR_BUSY => return Ok(Completion::with_status(ScsiStatus::ReservationConflict)),
        w::ERROR_INVALID_FUNCTION | w::ERROR_IO_DEVICE => ScsiError::Unsupported {
            device,
            command,
            by: Refusal::Windows(e),
        },
        w::ERROR_ACCESS_DENIED => ScsiError::PermissionDenied {
            device,
            command: Some(command),
            need: WINDOWS_PRIVILEGE,
        },
        w::ERROR_FILE_NOT_FOUND | w::ERROR_PATH_NOT_FOUND | w::ERROR_DEVICE_NOT_CONNECTED => {
            ScsiError::NotFound {
                device,
                source: std::io::Error::other(e.to_string()),
            }
        }
        w::ERROR_SEM_TIMEOUT | w::WAIT_TIMEOUT | w::ERROR_OPERATION_ABORTED => ScsiError::Timeout {
            device,
            command,
            after: timeout,
        },
        _ => ScsiError::Io {
            device,
            command,
            source: std::io::Error::other(match e.0 {
                w::ERROR_INVALID_PARAMETER | w::ERROR_BAD_LENGTH | w::ERROR_INVALID_USER_BUFFER => {
                    format!("{e}: the driver refused the IOCTL's buffer as malformed (a csi-fencer bug: please report it)")
                }
                _ => e.to_string(),
            }),
        },
    })
}

/// What a refused open or IOCTL needs on Windows.
pub const WINDOWS_PRIVILEGE: &str = "run as an Administrator (in Kubernetes: a HostProcess container as NT AUTHORITY\\SYSTEM); PR OUT needs a handle to the disk opened for read and write";

/// The words for the two "not supported" answers, naming which it was.
pub fn unsupported_words(e: Win32Error) -> &'static str {
    match e.0 {
        w::ERROR_INVALID_FUNCTION => {
            "the storage drivers do not support the persistent-reservation IOCTL (STATUS_INVALID_DEVICE_REQUEST)"
        }
        w::ERROR_IO_DEVICE => {
            "the device does not support persistent reservations (STATUS_IO_DEVICE_ERROR)"
        }
        _ => "not supported",
    }
}

/// Finds a LUN among the disks Windows shows: the one disk whose identity
/// (VPD 83h, as `StorageDeviceIdProperty` gives it) names the WWID.
pub struct Disks<I> {
    io: Arc<I>,
}

impl<I: DiskIoctl> Disks<I> {
    /// Disks through `io`.
    pub fn new(io: Arc<I>) -> Self {
        Disks { io }
    }

    /// The disks whose identity is `wwid`, and how many disks were asked.
    fn matching(&self, wwid: &Wwid) -> (Vec<PathBuf>, usize) {
        let t = IoctlTransport::new(Arc::clone(&self.io));
        let disks = self.io.disks();
        let found = disks
            .iter()
            .filter(|d| {
                matches!(t.device_id_page(d), Ok(Ok(page))
                    if inquiry::parse_device_id(&page).ok().and_then(|ds| Wwid::from_designations(&ds)).as_ref() == Some(wwid))
            })
            .cloned()
            .collect();
        (found, disks.len())
    }
}

/// `PhysicalDrive3` of `\\.\PhysicalDrive3`.
fn disk_name(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.rsplit(['\\', '/']).next().unwrap_or(&s).to_string()
}

fn one_disk(dev: &Path) -> LunDevices {
    LunDevices {
        map: None,
        device: dev.to_path_buf(),
        paths: vec![PathInfo {
            name: disk_name(dev),
            dev: dev.to_path_buf(),
            hctl: None,
            state: None,
        }],
    }
}

impl<I: DiskIoctl> Locate for Disks<I> {
    fn for_device(&self, node: &Path) -> Result<LunDevices, DeviceError> {
        match self.io.query_property(node, &contract::device_id_query()) {
            Ok(_) => Ok(one_disk(node)),
            Err(e)
                if matches!(
                    e.0,
                    w::ERROR_FILE_NOT_FOUND
                        | w::ERROR_PATH_NOT_FOUND
                        | w::ERROR_DEVICE_NOT_CONNECTED
                ) =>
            {
                Err(DeviceError::NotFound {
                    path: node.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            }
            Err(e) => Err(DeviceError::NotADisk {
                path: node.to_path_buf(),
                why: format!(
                    "its identity cannot be read ({e}): name a disk as \\\\.\\PhysicalDriveN"
                ),
            }),
        }
    }

    fn wait(&self, wwid: &Wwid, timeout: Duration, poll: Duration) -> Result<LunDevices, NotFound> {
        let start = Instant::now();
        loop {
            let (found, asked) = self.matching(wwid);
            if let [one] = found.as_slice() {
                return Ok(one_disk(one));
            }
            if start.elapsed() >= timeout {
                return Err(NotFound {
                    wwid: wwid.to_string(),
                    waited: timeout,
                    detail: why_missing(&found, asked),
                });
            }
            std::thread::sleep(poll.min(timeout.saturating_sub(start.elapsed())));
        }
    }

    /// Windows' own reading of the identity is what `device_number` digests.
    fn system_wwid(&self, _path: &PathInfo) -> Option<String> {
        None
    }

    /// MPIO hides the I_T nexuses behind the disk.
    fn initiator_port(&self, _path: &PathInfo) -> Option<InitiatorPort> {
        None
    }
}

fn why_missing(found: &[PathBuf], asked: usize) -> String {
    if found.is_empty() {
        let disks = if asked == 1 { "disk" } else { "disks" };
        format!("no disk with that identity among the {asked} {disks} Windows shows (is the LUN presented to this node and the disk online?)")
    } else {
        let names: Vec<String> = found.iter().map(|d| disk_name(d)).collect();
        format!(
            "{} disks with that identity ({}): each path is a disk of its own, so MPIO does not claim the LUN; add it to MPIO (mpclaim) so that one disk stands for every path",
            found.len(),
            names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests;
