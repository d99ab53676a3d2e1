//! Errors of sending a command to a device path, in words an operator can act on.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::scsi::{Cdb, ParseError, ScsiStatus, Sense};

/// The Linux host byte (`DID_*` in include/scsi/scsi_status.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostStatus {
    /// DID_OK
    Ok,
    /// DID_NO_CONNECT: the path is gone.
    NoConnect,
    /// DID_BUS_BUSY
    BusBusy,
    /// DID_TIME_OUT: the command timed out.
    TimeOut,
    /// DID_BAD_TARGET
    BadTarget,
    /// DID_ABORT
    Abort,
    /// DID_ERROR: internal error of the adapter.
    Error,
    /// DID_RESET
    Reset,
    /// DID_SOFT_ERROR
    SoftError,
    /// DID_IMM_RETRY
    ImmRetry,
    /// DID_REQUEUE
    Requeue,
    /// DID_TRANSPORT_DISRUPTED: the link is flapping; retry later.
    TransportDisrupted,
    /// DID_TRANSPORT_FAILFAST: the path's transport gave up (dev_loss / replacement timeout).
    TransportFailfast,
    /// DID_TRANSPORT_MARGINAL
    TransportMarginal,
    /// Anything else, raw.
    Other(u16),
}

impl HostStatus {
    /// Decodes the host byte.
    pub fn from_raw(v: u16) -> HostStatus {
        use HostStatus::*;
        match v {
            0x00 => Ok,
            0x01 => NoConnect,
            0x02 => BusBusy,
            0x03 => TimeOut,
            0x04 => BadTarget,
            0x05 => Abort,
            0x07 => Error,
            0x08 => Reset,
            0x0b => SoftError,
            0x0c => ImmRetry,
            0x0d => Requeue,
            0x0e => TransportDisrupted,
            0x0f => TransportFailfast,
            0x14 => TransportMarginal,
            x => Other(x),
        }
    }

    /// The kernel's name for it.
    pub fn name(self) -> String {
        use HostStatus::*;
        match self {
            Ok => "DID_OK".into(),
            NoConnect => "DID_NO_CONNECT (path unreachable)".into(),
            BusBusy => "DID_BUS_BUSY".into(),
            TimeOut => "DID_TIME_OUT (command timed out)".into(),
            BadTarget => "DID_BAD_TARGET".into(),
            Abort => "DID_ABORT (command aborted)".into(),
            Error => "DID_ERROR (adapter internal error)".into(),
            Reset => "DID_RESET (bus or device reset)".into(),
            SoftError => "DID_SOFT_ERROR".into(),
            ImmRetry => "DID_IMM_RETRY".into(),
            Requeue => "DID_REQUEUE".into(),
            TransportDisrupted => "DID_TRANSPORT_DISRUPTED (link disrupted)".into(),
            TransportFailfast => "DID_TRANSPORT_FAILFAST (path failed)".into(),
            TransportMarginal => "DID_TRANSPORT_MARGINAL".into(),
            Other(x) => format!("host status {x:#04x}"),
        }
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for HostStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Names the command in an error: its SPC name and CDB bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandId {
    /// SPC name, e.g. "PERSISTENT RESERVE OUT / REGISTER".
    pub name: &'static str,
    /// The CDB that was sent.
    pub cdb: Cdb,
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [cdb {}]", self.name, self.cdb)
    }
}

impl From<&crate::scsi::Command> for CommandId {
    fn from(c: &crate::scsi::Command) -> Self {
        CommandId {
            name: c.name,
            cdb: c.cdb,
        }
    }
}

/// A command that could not be sent, did not finish, or failed on the device.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// No such device node.
    #[error("{device}: no such device")]
    NotFound {
        /// The device path.
        device: PathBuf,
        /// What open(2) said.
        source: std::io::Error,
    },
    /// The system refused: SG_IO of PR OUT needs CAP_SYS_RAWIO on Linux,
    /// an administrator's read-write handle on Windows.
    #[error("{device}: permission denied{}: {need}", .command.as_ref().map(|c| format!(" for {c}")).unwrap_or_default())]
    PermissionDenied {
        /// The device path.
        device: PathBuf,
        /// The command, when the ioctl (not the open) was refused.
        command: Option<CommandId>,
        /// What it takes, in words.
        need: &'static str,
    },
    /// The device does not take SCSI commands.
    #[error("{device}: not a SCSI device: {reason}")]
    NotScsi {
        /// The device path.
        device: PathBuf,
        /// Why.
        reason: String,
    },
    /// The ioctl failed for another reason.
    #[error("{device}: {command} failed")]
    Io {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// What the ioctl said.
        source: std::io::Error,
    },
    /// The command did not complete in time.
    #[error("{device}: {command} timed out after {}", crate::text::duration(.after))]
    Timeout {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// The timeout that expired.
        after: Duration,
    },
    /// The host adapter reported a transport failure.
    #[error("{device}: {command} failed on the path: {host}")]
    Transport {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// The host status.
        host: HostStatus,
    },
    /// RESERVATION CONFLICT: another nexus's reservation forbids this, or the key was wrong.
    #[error("{device}: {command}: RESERVATION CONFLICT (this path is not registered with that key, or another node's reservation forbids the command)")]
    ReservationConflict {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
    },
    /// The device does not implement persistent reservations (20/00), or
    /// not this service action (24/00, e.g. READ FULL STATUS or PREEMPT AND
    /// ABORT on targets that lack them); or the platform cannot carry it.
    #[error("{device}: {}", unsupported(command, by))]
    Unsupported {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// Who said so.
        by: Refusal,
    },
    /// CHECK CONDITION with decoded sense.
    #[error("{device}: {command}: CHECK CONDITION, {sense}")]
    CheckCondition {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// The decoded sense.
        sense: Sense,
    },
    /// CHECK CONDITION whose sense could not be decoded.
    #[error("{device}: {command}: CHECK CONDITION with undecodable sense [{raw}]: {why}")]
    BadSense {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// Raw sense, hex.
        raw: String,
        /// Why it did not decode.
        why: Box<ParseError>,
    },
    /// Another non-GOOD status (BUSY, TASK SET FULL, TASK ABORTED …).
    #[error("{device}: {command}: status {status}")]
    Status {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// The status.
        status: ScsiStatus,
    },
    /// The device answered GOOD with data that does not decode.
    #[error("{device}: {command}: malformed response: {source}")]
    Parse {
        /// The device path.
        device: PathBuf,
        /// The command.
        command: CommandId,
        /// What was wrong.
        source: Box<ParseError>,
    },
}

/// The kernel's words for a refused SG_IO of PR OUT.
pub const LINUX_PRIVILEGE: &str = "run as root or grant CAP_SYS_RAWIO (PR OUT over SG_IO needs it; the DaemonSet runs privileged for this reason)";

/// Who said a command is not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The device, with this sense.
    Sense(Sense),
    /// The platform cannot carry the command to a device at all (Windows'
    /// IOCTLs have no REPORT CAPABILITIES, for instance): why.
    Platform(&'static str),
    /// Windows' storage stack answered ERROR_INVALID_FUNCTION (the drivers)
    /// or ERROR_IO_DEVICE (the device).
    Windows(super::windows::Win32Error),
}

/// 20/00 means the whole command set is missing; 24/00 one service action.
fn unsupported(command: &CommandId, by: &Refusal) -> String {
    match by {
        Refusal::Sense(sense) if sense.is_invalid_opcode() => {
            format!("persistent reservations not supported: {command} was rejected with {sense}")
        }
        Refusal::Sense(sense) => format!(
            "this service action is not supported by the target: {command} was rejected with {sense}"
        ),
        Refusal::Platform(why) => format!("{command} cannot be sent on this platform: {why}"),
        Refusal::Windows(e) => format!(
            "not supported: {command} failed with {e}: {}",
            super::windows::unsupported_words(*e)
        ),
    }
}

impl ScsiError {
    /// The device server answered (a status came back), so any unit
    /// attention pending on the nexus was reported before this.
    pub fn answered(&self) -> bool {
        matches!(
            self,
            ScsiError::ReservationConflict { .. }
                | ScsiError::Unsupported { .. }
                | ScsiError::CheckCondition { .. }
                | ScsiError::BadSense { .. }
                | ScsiError::Status { .. }
                | ScsiError::Parse { .. }
        )
    }

    /// A small, fixed label for metrics and machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            ScsiError::NotFound { .. } => "not_found",
            ScsiError::PermissionDenied { .. } => "permission_denied",
            ScsiError::NotScsi { .. } => "not_scsi",
            ScsiError::Io { .. } => "io_error",
            ScsiError::Timeout { .. } => "timeout",
            ScsiError::Transport { .. } => "transport",
            ScsiError::ReservationConflict { .. } => "reservation_conflict",
            ScsiError::Unsupported { .. } => "unsupported",
            ScsiError::CheckCondition { .. } => "check_condition",
            ScsiError::BadSense { .. } => "bad_sense",
            ScsiError::Status { .. } => "status",
            ScsiError::Parse { .. } => "malformed_response",
        }
    }

    /// The decoded sense, when the device sent some.
    pub fn sense(&self) -> Option<&Sense> {
        match self {
            ScsiError::CheckCondition { sense, .. }
            | ScsiError::Unsupported {
                by: Refusal::Sense(sense),
                ..
            } => Some(sense),
            _ => None,
        }
    }
}
