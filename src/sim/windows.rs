//! The Windows storage stack as a double, for the engine over
//! [`IoctlTransport`](crate::transport::windows::IoctlTransport): the class
//! driver's PR IOCTLs on one disk that MPIO's DSM spreads over the node's
//! paths, on the strict LUN and through the seeded scheduler.
//!
//! It takes IOCTL buffers, not CDBs, and checks them as classpnp does
//! ([`contract::decode_pr_in`], [`contract::decode_pr_out`]). What it does
//! with them is what Microsoft's published class driver and DSM do:
//! - the class driver retries UNIT ATTENTION and BUSY itself, so the engine
//!   never sees a unit attention (a reset is invisible: the SAN notes it as
//!   swallowed); RESERVATION CONFLICT becomes ERROR_BUSY, as does BUSY once
//!   its retries run out; ILLEGAL REQUEST becomes ERROR_INVALID_FUNCTION,
//!   other sense ERROR_IO_DEVICE; a timeout ERROR_SEM_TIMEOUT;
//! - the DSM sends REGISTER and REGISTER AND IGNORE EXISTING KEY down every
//!   path in turn and fails if any path failed, keeping the key if any path
//!   took it; RESERVE, RELEASE, CLEAR and PREEMPT go down one path and are
//!   sent again down the next when the path failed; PREEMPT AND ABORT goes
//!   down one path only;
//! - PR IN output is the whole buffer: the data's ADDITIONAL LENGTH, not
//!   the byte count, says what is valid.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windows_sys::Win32::Foundation as w;

use super::san::{NodeTransport, San};
use crate::scsi::{inquiry, prin, prout, Command, PrOutAction, ScsiStatus, Sense, SenseKey};
use crate::transport::windows::contract::{self, Malformed, PrOutRequest};
use crate::transport::windows::{DiskIoctl, Win32Error};
use crate::transport::{HostStatus, ScsiError, Transport};

/// The disk every Windows node sees the LUN as.
pub const DISK: &str = r"\\.\PhysicalDrive1";

/// How often the class driver retries a unit attention or BUSY.
const CLASS_RETRIES: usize = 4;

/// One node's disk: the class driver over the DSM over the node's paths.
pub struct SimMpio {
    node: String,
    san: Arc<San>,
    paths: Vec<PathBuf>,
    /// The key the DSM keeps (and would register on a path that appears).
    saved: Mutex<Option<[u8; 8]>>,
}

/// What one path gave the DSM.
enum OnPath {
    /// The device's answer, as the class driver reports it.
    Answer(Result<Vec<u8>, Win32Error>),
    /// The path failed (no connection): the DSM may try another.
    Failed,
}

fn malformed(m: Malformed) -> Win32Error {
    Win32Error(match m {
        Malformed::Length => w::ERROR_BAD_LENGTH,
        Malformed::Parameter => w::ERROR_INVALID_PARAMETER,
    })
}

/// The CDB the class driver builds (parameter list length 24), read back
/// through the codec into the command the LUN executes.
fn pr_out_command(r: &PrOutRequest) -> Result<Command, Win32Error> {
    let len = contract::PARAMETER_LIST_LEN as u8;
    let cdb = [
        0x5f,
        r.action as u8,
        (r.scope << 4) | r.rtype,
        0,
        0,
        0,
        0,
        0,
        len,
        0,
    ];
    prout::parse(&cdb, &r.list)
        .map(|p| p.command())
        .map_err(|_| Win32Error(w::ERROR_INVALID_PARAMETER))
}

impl SimMpio {
    /// `node`'s disk over `paths` (its path devices in the SAN).
    pub fn new(node: &str, san: &Arc<San>, paths: Vec<PathBuf>) -> SimMpio {
        SimMpio {
            node: node.to_string(),
            san: Arc::clone(san),
            paths,
            saved: Mutex::new(None),
        }
    }

    fn transport(&self) -> NodeTransport {
        NodeTransport {
            node: self.node.clone(),
            san: Arc::clone(&self.san),
        }
    }

    fn check_disk(&self, disk: &Path) -> Result<(), Win32Error> {
        if disk == Path::new(DISK) {
            Ok(())
        } else {
            Err(Win32Error(w::ERROR_FILE_NOT_FOUND))
        }
    }

    /// The class driver on one path: retries what it retries, maps the rest.
    fn class(&self, path: &Path, cmd: &Command) -> OnPath {
        let t = self.transport();
        for _ in 0..=CLASS_RETRIES {
            let done = match t.execute(path, cmd, Duration::from_secs(30)) {
                Ok(c) => c,
                Err(ScsiError::NotFound { .. }) => {
                    return OnPath::Answer(Err(Win32Error(w::ERROR_FILE_NOT_FOUND)))
                }
                Err(_) => return OnPath::Answer(Err(Win32Error(w::ERROR_IO_DEVICE))),
            };
            match done.host_status {
                HostStatus::Ok => {}
                HostStatus::TimeOut => {
                    return OnPath::Answer(Err(Win32Error(w::ERROR_SEM_TIMEOUT)))
                }
                _ => return OnPath::Failed,
            }
            match done.status {
                ScsiStatus::Good => return OnPath::Answer(Ok(done.data)),
                ScsiStatus::ReservationConflict => {
                    return OnPath::Answer(Err(Win32Error(w::ERROR_BUSY)))
                }
                ScsiStatus::Busy | ScsiStatus::TaskSetFull => continue,
                ScsiStatus::CheckCondition => match Sense::parse(&done.sense) {
                    Ok(s) if s.is_unit_attention() => {
                        if s.asc == 0x29 {
                            self.san.note_swallowed_reset(&self.node);
                        }
                        continue;
                    }
                    Ok(s) if s.key == SenseKey::IllegalRequest => {
                        return OnPath::Answer(Err(Win32Error(w::ERROR_INVALID_FUNCTION)))
                    }
                    _ => return OnPath::Answer(Err(Win32Error(w::ERROR_IO_DEVICE))),
                },
                _ => return OnPath::Answer(Err(Win32Error(w::ERROR_IO_DEVICE))),
            }
        }
        // BUSY to the last retry: STATUS_DEVICE_BUSY, like a conflict.
        OnPath::Answer(Err(Win32Error(w::ERROR_BUSY)))
    }

    /// Down one path, and down the next while paths fail (`failover`).
    fn one_path(&self, cmd: &Command, failover: bool) -> Result<Vec<u8>, Win32Error> {
        for p in &self.paths {
            match self.class(p, cmd) {
                OnPath::Answer(a) => return a,
                OnPath::Failed if failover => continue,
                OnPath::Failed => break,
            }
        }
        Err(Win32Error(w::ERROR_DEVICE_NOT_CONNECTED))
    }

    /// Down every path; the first failure is the answer, the key is kept
    /// if any path took it.
    fn every_path(&self, cmd: &Command, sa_key: [u8; 8]) -> Result<(), Win32Error> {
        let mut first_err = None;
        let mut took = false;
        for p in &self.paths {
            match self.class(p, cmd) {
                OnPath::Answer(Ok(_)) => took = true,
                OnPath::Answer(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                OnPath::Failed => {
                    first_err.get_or_insert(Win32Error(w::ERROR_DEVICE_NOT_CONNECTED));
                }
            }
        }
        if took {
            if let Ok(mut s) = self.saved.lock() {
                *s = (sa_key != [0; 8]).then_some(sa_key);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The key the DSM keeps for its paths.
    pub fn saved_key(&self) -> Option<[u8; 8]> {
        self.saved.lock().ok().and_then(|s| *s)
    }

    /// A path of this disk comes back (a link, a session): the DSM registers
    /// the key it keeps on it with REGISTER AND IGNORE EXISTING KEY, at once
    /// and outside any operation of the daemon. True if it registered.
    pub fn path_returns(&self, path: usize) -> bool {
        let Some(key) = self.saved_key() else {
            return false;
        };
        let mut list = [0u8; contract::PARAMETER_LIST_LEN];
        list[8..16].copy_from_slice(&key);
        let Ok(cmd) = pr_out_command(&PrOutRequest {
            action: PrOutAction::RegisterAndIgnoreExistingKey,
            rtype: 0,
            scope: 0,
            list,
        }) else {
            return false;
        };
        let Some(nexus) = self.san.nexuses_of(&self.node).into_iter().nth(path) else {
            return false;
        };
        // The class driver retries the unit attentions it meets first.
        let mut done = self.san.with_lun(|l| l.execute(&nexus, &cmd));
        for _ in 0..CLASS_RETRIES {
            match Sense::parse(&done.sense) {
                Ok(s) if done.status == ScsiStatus::CheckCondition && s.is_unit_attention() => {
                    if s.asc == 0x29 {
                        self.san.note_swallowed_reset(&self.node);
                    }
                    done = self.san.with_lun(|l| l.execute(&nexus, &cmd));
                }
                _ => break,
            }
        }
        self.san.note(format!(
            "{} MPIO: path {path} back, the DSM registers its saved key again -> {:?}",
            self.node, done.status
        ));
        done.status == ScsiStatus::Good
    }
}

impl DiskIoctl for SimMpio {
    fn reserve_in(
        &self,
        disk: &Path,
        input: &[u8],
        out_len: usize,
        _timeout: Duration,
    ) -> Result<Vec<u8>, Win32Error> {
        self.check_disk(disk)?;
        let r = contract::decode_pr_in(input, out_len).map_err(malformed)?;
        let mut data = self.one_path(&prin::command(r.action, r.allocation), true)?;
        data.resize(out_len, 0);
        Ok(data)
    }

    fn reserve_out(&self, disk: &Path, input: &[u8], _timeout: Duration) -> Result<(), Win32Error> {
        self.check_disk(disk)?;
        let r = contract::decode_pr_out(input).map_err(malformed)?;
        let cmd = pr_out_command(&r)?;
        match r.action {
            PrOutAction::Register | PrOutAction::RegisterAndIgnoreExistingKey => {
                let mut sa = [0u8; 8];
                sa.copy_from_slice(&r.list[8..16]);
                self.every_path(&cmd, sa)
            }
            PrOutAction::PreemptAndAbort => self.one_path(&cmd, false).map(|_| ()),
            _ => self.one_path(&cmd, true).map(|_| ()),
        }
    }

    /// The port driver answers from what it read when the disk arrived.
    fn query_property(&self, disk: &Path, query: &[u8]) -> Result<Vec<u8>, Win32Error> {
        self.check_disk(disk)?;
        if query != contract::device_id_query() {
            return Err(Win32Error(w::ERROR_INVALID_PARAMETER));
        }
        let nexus = self
            .san
            .nexuses_of(&self.node)
            .into_iter()
            .next()
            .ok_or(Win32Error(w::ERROR_DEVICE_NOT_CONNECTED))?;
        let cmd = inquiry::vpd_command(inquiry::page::DEVICE_ID, inquiry::DEFAULT_ALLOCATION);
        let page = self.san.with_lun(|l| l.execute(&nexus, &cmd)).data;
        Ok(contract::device_id_from_vpd83(&page))
    }

    fn disks(&self) -> Vec<PathBuf> {
        vec![PathBuf::from(DISK)]
    }
}
