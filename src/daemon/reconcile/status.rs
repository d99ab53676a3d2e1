//! What the daemon says about each volume: its phase (the one vocabulary
//! of states; the CRD, the gRPC API and the metrics convert from it at
//! their edge), its status, and the update each operation broadcasts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Op;
use crate::daemon::metrics::VolumeGauge;
use crate::fence::engine::{Outcome, VolumeState};

/// What the daemon reports about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not reconciled yet.
    Pending,
    /// This node holds the reservation.
    Held,
    /// Registered, someone else holds the reservation.
    Registered,
    /// This node's key was preempted (I7).
    Fenced,
    /// Given up after a detach.
    Released,
    /// The last operation failed or was refused; see the message.
    Error,
}

impl Phase {
    /// The `state` label of `csi_fencer_volumes`.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Held => "held",
            Phase::Registered => "registered",
            Phase::Fenced => "fenced",
            Phase::Released => "released",
            Phase::Error => "error",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::Held => "held",
            Phase::Registered => "registered (another node holds the reservation)",
            Phase::Fenced => "fenced",
            Phase::Released => "released",
            Phase::Error => "error",
        })
    }
}

/// The status of one volume on this node.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    /// Volume name.
    pub volume: String,
    /// WWID.
    pub wwid: String,
    /// Phase.
    pub phase: Phase,
    /// Why, in words.
    pub message: String,
    /// Paths carrying this node's key.
    pub paths_registered: usize,
    /// All paths of the LUN.
    pub paths_total: usize,
    /// Seconds since the epoch of the last phase change.
    pub last_transition: u64,
    /// The attachment it holds under, if any.
    pub attachment: Option<String>,
    /// The engine last found this node with a stake in the LUN (held,
    /// registered or fenced). Set only from engine outcomes: a later error or
    /// refusal of the source does not clear it, so the volume is still
    /// monitored (I7) and still released on a detach.
    pub on_lun: bool,
}

impl VolumeStatus {
    /// What the metrics show of it.
    pub fn gauge(&self) -> VolumeGauge<'_> {
        VolumeGauge {
            volume: &self.volume,
            state: self.phase.label(),
            paths_registered: self.paths_registered,
            paths_total: self.paths_total,
        }
    }
}

/// One volume's status after an operation.
#[derive(Debug, Clone)]
pub struct Update {
    /// The new status.
    pub status: VolumeStatus,
    /// True when the phase (or an error's message) changed.
    pub changed: bool,
    /// What the engine found and did, when it ran.
    pub outcome: Option<Arc<Outcome>>,
    /// The reservation type the operation asked for (acquire).
    pub reservation_type: Option<crate::scsi::ReservationType>,
    /// The error's label, when it failed (`identity_mismatch`, `unsupported`, ...).
    pub error_kind: Option<&'static str>,
    /// The operation it answers (`acquire`, `release`, `check`; `report`
    /// for a problem found before any operation).
    pub op: &'static str,
    /// For an acquire: the attachment it was asked under.
    pub asked: Option<String>,
}

/// Seconds since the epoch, now.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The phase an operation's outcome puts the volume in.
pub(super) fn phase_of(op: &Op, o: &Outcome) -> Phase {
    match (op, o.state) {
        (_, VolumeState::Held) => Phase::Held,
        (_, VolumeState::Registered) => Phase::Registered,
        (_, VolumeState::Fenced) => Phase::Fenced,
        (Op::Release { .. }, VolumeState::NotRegistered) => Phase::Released,
        (_, VolumeState::NotRegistered) => Phase::Error,
        // Not on the LUN any more: the next plan acquires again, under the
        // same attachment and with fresh authority.
        (_, VolumeState::Lost) => Phase::Error,
        (_, VolumeState::Refused) => Phase::Error,
    }
}

/// An outcome in one line for a person: the state, the paths, who was
/// preempted, the notes; or the refusal.
pub(super) fn summary(o: &Outcome) -> String {
    if let Some(r) = &o.refusal {
        let mut s = r.to_string();
        for n in &o.notes {
            s.push_str("; ");
            s.push_str(n);
        }
        return s;
    }
    let reg = o.paths.iter().filter(|p| p.registered).count();
    let state = serde_json::to_value(o.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut s = format!("{state}: {reg}/{} paths registered", o.paths.len());
    if !o.preempted.is_empty() {
        let who: Vec<String> = o
            .preempted
            .iter()
            .map(|k| k.node.clone().unwrap_or_else(|| k.key.to_string()))
            .collect();
        s.push_str(&format!(", preempted {}", who.join(", ")));
    }
    for n in &o.notes {
        s.push_str("; ");
        s.push_str(n);
    }
    s
}
