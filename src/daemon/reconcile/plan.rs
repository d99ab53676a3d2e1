//! What to do: a pure function of the source's snapshot and what this node
//! holds. One operation per volume, planned level-triggered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::{Phase, VolumeStatus};
use crate::fence::engine::{Authorization, Volume};
use crate::fence::policy::{AccessMode, Policy};
use crate::source::Attachments;

/// One thing to do for one volume.
#[derive(Debug, Clone)]
pub enum Op {
    /// The source says this node has it.
    Acquire {
        /// The volume.
        vol: Volume,
        /// The attachment, read now.
        auth: Authorization,
        /// Nodes with live attachments (I2).
        live: BTreeSet<String>,
    },
    /// The source no longer lists it for this node (a confirmed detach).
    Release {
        /// The volume.
        vol: Volume,
        /// Asked for (gRPC Release), not inferred from the source: I4 allows
        /// it without a confirmed detach.
        explicit: bool,
    },
    /// Monitor a held volume.
    Check {
        /// The volume.
        vol: Volume,
        /// Nodes with live attachments.
        live: BTreeSet<String>,
    },
}

impl Op {
    /// The volume's name.
    pub fn volume(&self) -> &str {
        match self {
            Op::Acquire { vol, .. } | Op::Release { vol, .. } | Op::Check { vol, .. } => &vol.name,
        }
    }

    /// The volume's WWID.
    pub fn wwid(&self) -> &crate::scsi::Wwid {
        match self {
            Op::Acquire { vol, .. } | Op::Release { vol, .. } | Op::Check { vol, .. } => &vol.wwid,
        }
    }

    /// Whether the loop runs this operation on a kernel notice: the checks
    /// of the noticed LUNs; other operations (acquires, releases the plan
    /// has anyway) pass.
    pub fn wanted_by(&self, n: &crate::daemon::notice::Noticed) -> bool {
        match self {
            Op::Check { vol, .. } => n.covers(&vol.wwid.to_string()),
            _ => true,
        }
    }

    /// The attachment an acquire was asked under.
    pub fn asked(&self) -> Option<String> {
        match self {
            Op::Acquire { auth, .. } => Some(auth.attachment.0.clone()),
            _ => None,
        }
    }

    /// `acquire`, `release` or `check`.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Acquire { .. } => "acquire",
            Op::Release { .. } => "release",
            Op::Check { .. } => "check",
        }
    }
}

/// What to do now: acquire what the source gives this node (already held
/// ones get a check instead when `monitor` is due), release what it held but
/// the source no longer lists. Restart is not release (I4): only volumes this
/// daemon saw held and the source then dropped are released.
pub fn plan(
    node: &str,
    snapshot: &Attachments,
    statuses: &BTreeMap<String, VolumeStatus>,
    policy: &Policy,
    monitor: bool,
    read_at: SystemTime,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut mine = BTreeSet::new();
    for a in snapshot.for_node(node) {
        mine.insert(a.volume.clone());
        let vol = Volume {
            name: a.volume.clone(),
            wwid: a.wwid.clone(),
            device: None,
            access: a.access,
            policy: a.overrides.apply(policy),
        };
        let live = snapshot.nodes_of(&a.volume);
        let st = statuses.get(&a.volume);
        let same = st.is_some_and(|s| s.attachment.as_deref() == Some(a.id.0.as_str()));
        // An error after the engine found us on the LUN is settled too: the
        // monitor's check (which needs no fresh authority) keeps watching it.
        let settled = same
            && st.is_some_and(|s| {
                s.on_lun
                    || matches!(
                        s.phase,
                        Phase::Held | Phase::Registered | Phase::Fenced | Phase::Released
                    )
            });
        if !settled {
            let auth = Authorization {
                attachment: a.id.clone(),
                read_at,
                notes: Vec::new(),
                confirm: None,
            };
            ops.push(Op::Acquire { vol, auth, live });
        } else if monitor && st.is_some_and(|s| s.phase != Phase::Released) {
            ops.push(Op::Check { vol, live });
        }
    }
    for (name, st) in statuses {
        // A fenced volume the source detached ends as released too (a no-op on
        // the LUN; the fenced record stays).
        if st.on_lun && !mine.contains(name) {
            if let Ok(wwid) = st.wwid.parse() {
                let vol = Volume {
                    name: name.clone(),
                    wwid,
                    device: None,
                    access: AccessMode::SingleNode,
                    policy: policy.clone(),
                };
                ops.push(Op::Release {
                    vol,
                    explicit: false,
                });
            }
        }
    }
    ops
}
