//! The engine's decisions, as pure functions of what the LUN says now
//! (docs/design.md §5). No I/O here: every rule is table-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::keys::ClusterTag;
use super::policy::{AccessMode, Policy, PreemptMode};
use super::state::{Record, Stage};
use crate::scsi::{
    Capabilities, FullStatus, Reservation, ReservationKey, ReservationType, Scope, Sense,
};

/// Whether one of this node's paths carries its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathRegistration {
    /// READ FULL STATUS lists this nexus with our key.
    Registered {
        /// Registered with ALL_TG_PT (unregistering needs the bit again).
        all_tg_pt: bool,
        /// This nexus holds the reservation.
        holder: bool,
    },
    /// READ FULL STATUS does not list this nexus with our key.
    NotRegistered,
    /// The nexus cannot be named from sysfs (e.g. SAS): treated as not registered.
    Unknown,
}

impl PathRegistration {
    /// True when the path is known to carry the key.
    pub fn is_registered(self) -> bool {
        matches!(self, PathRegistration::Registered { .. })
    }
}

/// What the LUN says now, through this node's usable paths.
#[derive(Debug, Clone)]
pub struct Observed {
    /// PRGENERATION.
    pub generation: u32,
    /// READ KEYS.
    pub keys: Vec<ReservationKey>,
    /// READ RESERVATION.
    pub reservation: Option<Reservation>,
    /// REPORT CAPABILITIES, if the target answered it.
    pub caps: Option<Capabilities>,
    /// This node's usable paths and their registration.
    pub paths: Vec<(PathBuf, PathRegistration)>,
    /// How many registrations carry our key (READ KEYS lists one per I_T nexus).
    pub ours_count: u32,
    /// READ FULL STATUS answered (per-path registration known from the LUN).
    pub full_status: bool,
    /// The target refused PREEMPT AND ABORT before.
    pub no_preempt_and_abort: bool,
    /// What the unit attentions consumed by the reads told.
    pub signs: Signs,
}

impl Observed {
    /// Sets `ours_count` from the keys (for observations built by hand).
    pub fn counting(mut self, ours: ReservationKey) -> Observed {
        self.ours_count = self.keys.iter().filter(|k| **k == ours).count() as u32;
        self
    }
}

/// What unit attentions on this node's own nexus said about its registrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signs {
    /// 29/xx: power on, reset, I_T nexus loss: registrations without APTPL are gone.
    pub reset: bool,
    /// 2A/05: registrations preempted (our key removed from that nexus).
    pub preempted: bool,
    /// 3F/xx: new microcode, changed inquiry data or LUN inventory: what
    /// was learned of the target's features may no longer hold.
    pub features_changed: bool,
}

impl Signs {
    /// Reads the signs from the unit attentions a path consumed.
    pub fn from_unit_attentions(uas: &[Sense]) -> Signs {
        Signs {
            reset: uas.iter().any(|s| s.asc == 0x29),
            // 2A/05 REGISTRATIONS PREEMPTED only: 2A/03 and 2A/04 also come
            // when another node takes or releases a reservation we merely
            // shared, which removes nothing of ours.
            preempted: uas.iter().any(|s| s.asc == 0x2a && s.ascq == 0x05),
            features_changed: uas.iter().any(|s| s.asc == 0x3f),
        }
    }
}

/// What the LUN says about this node's earlier registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Nothing unexpected.
    None,
    /// Another node removed our key: fenced (I7), whatever else happened.
    Preempted,
    /// Our registrations are gone with no preemption in sight: a target
    /// reset or power loss (or a CLEAR), not a fence.
    Lost,
}

/// The keys (one per registration, as READ KEYS lists them) and the
/// reservation (as READ RESERVATION reports it: key 0 for the
/// all-registrants types) that one READ FULL STATUS carries.
pub fn from_full_status(fs: &FullStatus) -> (Vec<ReservationKey>, Option<Reservation>) {
    let keys = fs.registrations.iter().map(|r| r.key).collect();
    let reservation = fs
        .registrations
        .iter()
        .find_map(|r| r.rtype.filter(|_| r.holder).map(|t| held_by(r.key, t)));
    (keys, reservation)
}

/// The LUN after an acquire's `steps` all came back GOOD, as their statuses
/// prove it without a read-back, or `None` where only a read can tell:
/// - a REGISTER adds exactly one registration only on a nexus known to
///   carry none of ours, and without ALL_TG_PT (which registers every
///   target port, however many the target has);
/// - RESERVE takes a LUN found unreserved; PREEMPT of a registrant removes
///   every registration of its key. PREEMPT of the holder proves nothing of
///   the reservation: one the holder released meanwhile is not created;
/// - the reservation ends ours (or all registrants'), and a status proves
///   it still exists: our own RESERVE came back GOOD, or it is an
///   all-registrants reservation under which we were already registered.
///   A reservation seen in the observation alone proves nothing: the last
///   registrant of an all-registrants reservation may leave (taking it
///   with it) before our REGISTER lands, and another node may preempt a
///   reservation of ours with the attention going to a path we do not use.
///
/// Another node's REGISTER that landed after the observation is not in the
/// result. A read-back would not make that safe either (one may land right
/// after it): every node takes back its own registrations that its own
/// read-back finds beside another node's reservation, and a crashed one
/// does so at its restart check.
pub fn after_steps(obs: &Observed, steps: &[Step], ours: ReservationKey) -> Option<Observed> {
    let mut after = obs.clone();
    after.signs = Signs::default();
    let mut reserved = false;
    for step in steps {
        match step {
            Step::Register {
                path,
                all_tg_pt: false,
                ..
            } => {
                let (_, reg) = after.paths.iter_mut().find(|(p, _)| p == path)?;
                if *reg != PathRegistration::NotRegistered {
                    return None;
                }
                *reg = PathRegistration::Registered {
                    all_tg_pt: false,
                    holder: false,
                };
                after.keys.push(ours);
                after.ours_count += 1;
                after.generation = after.generation.wrapping_add(1);
            }
            Step::Reserve { rtype } if after.reservation.is_none() => {
                after.reservation = Some(held_by(ours, *rtype));
                reserved = true;
            }
            Step::Preempt { victim, holder, .. } => {
                // PREEMPT of the holder: GOOD does not prove the reservation
                // moved to us. Had the holder released it meanwhile, the
                // PREEMPT only removes its registrations and creates no
                // reservation (SPC-4 5.12.11.4.3): only a read can tell.
                if *holder || victim.key == ours {
                    return None;
                }
                after.keys.retain(|k| *k != victim.key);
                after.generation = after.generation.wrapping_add(1);
            }
            _ => return None,
        }
    }
    let held = after
        .reservation
        .as_ref()
        .is_some_and(|r| reserved || (r.rtype.all_registrants() && obs.ours_count > 0));
    held.then_some(after)
}

/// A reservation of `rtype` held by `key`, as READ RESERVATION reports it
/// (key 0 for the all-registrants types).
fn held_by(key: ReservationKey, rtype: ReservationType) -> Reservation {
    Reservation {
        key: if rtype.all_registrants() {
            ReservationKey::NONE
        } else {
            key
        },
        scope: Scope::LogicalUnit,
        rtype,
    }
}

/// Weighs the record of what this node registered against what the LUN says.
///
/// Registrations go away only by PREEMPT, CLEAR, a reset or this node's own
/// unregister (which rewrites the record), so fewer of ours than recorded is
/// a preemption, unless a reset unit attention or an empty LUN (a preempting
/// node stays registered) says they were lost. A single-node holder whose
/// reservation moved to another key was preempted too, even if a late
/// REGISTER of ours landed afterwards.
pub fn evidence(
    rec: Option<&Record>,
    obs: &Observed,
    ours: ReservationKey,
    access: AccessMode,
) -> Evidence {
    let Some(r) = rec else {
        return Evidence::None;
    };
    if r.stage == Stage::Fenced {
        return Evidence::Preempted;
    }
    // The reset attention was just read (and already noted in the record,
    // whose count it set to 0): gone by the reset, not by another node.
    if obs.signs.reset && !obs.signs.preempted && obs.ours_count == 0 {
        return Evidence::Lost;
    }
    let had = r.key_count.unwrap_or(match r.stage {
        Stage::Held => 1,
        _ => 0,
    });
    let empty = obs.keys.is_empty() && obs.reservation.is_none();
    if obs.ours_count < had {
        return if (obs.signs.reset && !obs.signs.preempted) || empty {
            Evidence::Lost
        } else {
            Evidence::Preempted
        };
    }
    if r.stage == Stage::Held && access == AccessMode::SingleNode && holder_moved(obs, ours) {
        return Evidence::Preempted;
    }
    Evidence::None
}

/// A single-holder reservation held by another key.
fn holder_moved(obs: &Observed, ours: ReservationKey) -> bool {
    obs.reservation
        .as_ref()
        .is_some_and(|r| !r.rtype.all_registrants() && r.key != ours)
}

/// Registered under another node's single-node reservation: this node can
/// write while the holder believes it alone can. Never a state to keep.
pub fn second_writer(obs: &Observed, ours: ReservationKey) -> bool {
    obs.ours_count > 0 && holder_moved(obs, ours)
}

/// ALL_TG_PT for this LUN under this policy.
pub fn uses_all_tg_pt(obs: &Observed, policy: &Policy) -> bool {
    policy.use_all_tg_pt(obs.caps.as_ref())
}

/// Everything the decisions need besides the observation.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// This node's key.
    pub ours: ReservationKey,
    /// This cluster's tag.
    pub tag: ClusterTag,
    /// Keys of the nodes that hold live attachments of the LUN (read fresh), by key.
    pub live: &'a BTreeMap<ReservationKey, String>,
    /// Every node name the caller knows, by key, for naming stale keys.
    pub known: &'a BTreeMap<ReservationKey, String>,
    /// Access mode.
    pub access: AccessMode,
    /// Policy.
    pub policy: &'a Policy,
}

/// A key that is not ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtherKey {
    /// The key.
    pub key: ReservationKey,
    /// The node it belongs to, when known.
    pub node: Option<String>,
    /// True for keys outside this cluster's key space.
    pub foreign: bool,
}

/// The keys on the LUN, sorted by what may be done with them (I2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyClasses {
    /// Our key is registered on at least one nexus.
    pub ours_present: bool,
    /// Keys of nodes with live attachments: never touched.
    pub live: Vec<OtherKey>,
    /// Keys to remove: this cluster's keys without a live attachment, and
    /// foreign keys when the policy allows removing them.
    pub stale: Vec<OtherKey>,
    /// Foreign keys that stay (reported).
    pub foreign: Vec<OtherKey>,
}

/// Sorts the distinct keys of `keys` (I2).
pub fn classify(keys: &[ReservationKey], ctx: &Context) -> KeyClasses {
    let mut out = KeyClasses::default();
    let mut seen = Vec::new();
    for &k in keys {
        if seen.contains(&k) {
            continue;
        }
        seen.push(k);
        if k == ctx.ours {
            out.ours_present = true;
            continue;
        }
        let foreign = !ctx.tag.owns(k);
        let node = ctx.live.get(&k).or_else(|| ctx.known.get(&k)).cloned();
        let other = OtherKey {
            key: k,
            node,
            foreign,
        };
        if ctx.live.contains_key(&k) {
            out.live.push(other);
        } else if foreign && !ctx.policy.remove_foreign_keys {
            out.foreign.push(other);
        } else {
            out.stale.push(other);
        }
    }
    out
}

/// One PR OUT the engine will send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// REGISTER AND IGNORE EXISTING KEY with our key on one path.
    Register {
        /// The path.
        path: PathBuf,
        /// ALL_TG_PT.
        all_tg_pt: bool,
        /// APTPL.
        aptpl: bool,
    },
    /// RESERVE.
    Reserve {
        /// Type.
        rtype: ReservationType,
    },
    /// PREEMPT (AND ABORT) of one key.
    Preempt {
        /// The key removed.
        victim: OtherKey,
        /// The victim holds the reservation (it moves to us).
        holder: bool,
        /// PREEMPT AND ABORT.
        abort: bool,
        /// Type of the reservation afterwards.
        rtype: ReservationType,
    },
    /// RELEASE.
    Release {
        /// The path that holds it, when known.
        path: Option<PathBuf>,
        /// Type (must match the held one).
        rtype: ReservationType,
    },
    /// REGISTER (AND IGNORE EXISTING KEY) with SARK 0 on one path.
    Unregister {
        /// The path.
        path: PathBuf,
        /// Repeat ALL_TG_PT (LIO requires it for such registrations).
        all_tg_pt: bool,
        /// Use REGISTER AND IGNORE EXISTING KEY: for a nexus not known to be
        /// registered, where it is a no-op (GOOD) instead of a conflict.
        ignore_existing: bool,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = |k: &OtherKey| match &k.node {
            Some(n) => format!("{} ({n})", k.key),
            None if k.foreign => format!("{} (foreign)", k.key),
            None => format!("{}", k.key),
        };
        match self {
            Step::Register { path, .. } => write!(f, "REGISTER on {}", path.display()),
            Step::Reserve { rtype } => write!(f, "RESERVE {rtype}"),
            Step::Preempt { victim, abort, .. } => write!(
                f,
                "{} of {}",
                if *abort {
                    "PREEMPT AND ABORT"
                } else {
                    "PREEMPT"
                },
                who(victim)
            ),
            Step::Release { rtype, .. } => write!(f, "RELEASE {rtype}"),
            Step::Unregister { path, .. } => write!(f, "unregister on {}", path.display()),
        }
    }
}

/// Why the engine will not act (a safe decision, not a failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Refusal {
    /// This node's key was preempted while it held the volume under this
    /// attachment; only a new attachment allows registering again (I1).
    #[error("fenced: this node's key was preempted while it held the volume under attachment {attachment}; a new attachment is needed to register again")]
    Fenced {
        /// The attachment it was fenced under.
        attachment: String,
    },
    /// The authorization was read too long ago to count as fresh (I1).
    #[error("the authorization (attachment {attachment}) was read {age_secs} s ago, more than the {max_secs} s allowed: read it again from its source")]
    StaleAuthorization {
        /// The attachment.
        attachment: String,
        /// Its age.
        age_secs: u64,
        /// The limit.
        max_secs: u64,
    },
    /// A single-node volume is reserved by another node that still has a live attachment.
    #[error("reserved by {key} ({}), which still has a live attachment: not preempting a live node", node.as_deref().unwrap_or("unknown node"))]
    HeldByLiveNode {
        /// The holder's key.
        key: ReservationKey,
        /// Its node.
        node: Option<String>,
    },
    /// Reserved by a key of another cluster, which the policy does not remove.
    #[error("reserved by foreign key {key} (not this cluster's tag); set removeForeignKeys to allow preempting it")]
    ForeignHolder {
        /// The key.
        key: ReservationKey,
    },
    /// This node holds the reservation with another type than the policy wants.
    #[error(
        "this node holds a {held} reservation but the policy wants {wanted}; release it first"
    )]
    TypeMismatch {
        /// The held type.
        held: ReservationType,
        /// The wanted type.
        wanted: ReservationType,
    },
    /// No path of this node is usable.
    #[error("no usable path: every path is offline, failed, or leads to another LUN")]
    NoUsablePath,
    /// The authorization's read time is ahead of this node's clock.
    #[error("the authorization (attachment {attachment}) was read {ahead_secs} s in the future: fix the clocks")]
    ClockSkew {
        /// The attachment.
        attachment: String,
        /// How far ahead.
        ahead_secs: u64,
    },
}

fn registrations(obs: &Observed, ctx: &Context) -> Vec<Step> {
    let all_tg_pt = ctx.policy.use_all_tg_pt(obs.caps.as_ref());
    let aptpl = ctx.policy.use_aptpl(obs.caps.as_ref());
    obs.paths
        .iter()
        .filter(|(_, r)| !r.is_registered())
        .map(|(p, _)| Step::Register {
            path: p.clone(),
            all_tg_pt,
            aptpl,
        })
        .collect()
}

/// The PR OUT sequence that makes the LUN say "held by us" (acquire).
pub fn plan_acquire(obs: &Observed, ctx: &Context) -> Result<Vec<Step>, Refusal> {
    if obs.paths.is_empty() {
        return Err(Refusal::NoUsablePath);
    }
    let rtype = ctx.policy.reservation_type(ctx.access);
    // PREEMPT AND ABORT unless the policy says PREEMPT, or the target refused
    // it before and the policy allows falling back (preempt-and-abort-only
    // sends it and fails clearly).
    let abort = match ctx.policy.preempt {
        PreemptMode::PreemptAndAbort => !obs.no_preempt_and_abort,
        PreemptMode::PreemptAndAbortOnly => true,
        PreemptMode::Preempt => false,
    };
    let keys = classify(&obs.keys, ctx);
    let mut steps = registrations(obs, ctx);
    let mut holder_key = None;
    match &obs.reservation {
        None => steps.push(Step::Reserve { rtype }),
        Some(r) if r.rtype.all_registrants() => {
            // Every registrant holds it; registering is joining.
            if r.rtype != rtype {
                return Err(Refusal::TypeMismatch {
                    held: r.rtype,
                    wanted: rtype,
                });
            }
        }
        Some(r) if r.key == ctx.ours => {
            if r.rtype != rtype {
                return Err(Refusal::TypeMismatch {
                    held: r.rtype,
                    wanted: rtype,
                });
            }
        }
        Some(r) => {
            let victim = keys.stale.iter().find(|k| k.key == r.key).cloned();
            match victim {
                Some(v) => {
                    holder_key = Some(v.key);
                    steps.push(Step::Preempt {
                        victim: v,
                        holder: true,
                        abort,
                        rtype,
                    });
                }
                None if keys.foreign.iter().any(|k| k.key == r.key) => {
                    return Err(Refusal::ForeignHolder { key: r.key })
                }
                None => {
                    let node = keys
                        .live
                        .iter()
                        .find(|k| k.key == r.key)
                        .and_then(|k| k.node.clone());
                    return Err(Refusal::HeldByLiveNode { key: r.key, node });
                }
            }
        }
    }
    for v in keys.stale.into_iter().filter(|k| Some(k.key) != holder_key) {
        steps.push(Step::Preempt {
            victim: v,
            holder: false,
            abort,
            rtype,
        });
    }
    Ok(steps)
}

/// The PR OUT sequence that gives the volume up (release): RELEASE if we
/// hold a single-holder reservation, then unregister every registered path.
/// Never touches another key.
pub fn plan_release(obs: &Observed, ctx: &Context) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(r) = &obs.reservation {
        // An all-registrants reservation ends when its last registrant leaves;
        // RELEASE would end it for every other node too.
        if r.key == ctx.ours && !r.rtype.all_registrants() {
            let holder = obs.paths.iter().find_map(|(p, reg)| match reg {
                PathRegistration::Registered { holder: true, .. } => Some(p.clone()),
                _ => None,
            });
            steps.push(Step::Release {
                path: holder,
                rtype: r.rtype,
            });
        }
    }
    let all_tg_pt = ctx.policy.use_all_tg_pt(obs.caps.as_ref());
    for (p, reg) in &obs.paths {
        let (all_tg_pt, ignore_existing) = match reg {
            PathRegistration::Registered { all_tg_pt, .. } => (*all_tg_pt, false),
            // Cannot prove it is not registered: unregister in the form that
            // is harmless on an unregistered nexus.
            PathRegistration::Unknown => (all_tg_pt, true),
            PathRegistration::NotRegistered => continue,
        };
        steps.push(Step::Unregister {
            path: p.clone(),
            all_tg_pt,
            ignore_existing,
        });
    }
    steps
}

/// The monitor's repair: register the paths that lack the key, but only
/// while the key is still on the LUN (I5). Empty when the key is gone.
///
/// A new path is registered on its own nexus, never with ALL_TG_PT: that
/// would re-register the initiator's other target ports too, and one that
/// lands after another node's PREEMPT would put back the very registration
/// the PREEMPT took, so the read-back's count could not show the fence.
pub fn plan_check(obs: &Observed, ctx: &Context) -> Vec<Step> {
    if !classify(&obs.keys, ctx).ours_present {
        return Vec::new();
    }
    registrations(obs, ctx)
        .into_iter()
        .map(|s| match s {
            Step::Register { path, aptpl, .. } => Step::Register {
                path,
                all_tg_pt: false,
                aptpl,
            },
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Scope;
    use PathRegistration::*;

    const TAG: u16 = 0x7e57;

    fn tag() -> ClusterTag {
        ClusterTag::new(TAG).unwrap()
    }
    fn key(node: &str) -> ReservationKey {
        tag().key_for(node)
    }
    fn foreign(node: &str) -> ReservationKey {
        ClusterTag::new(0x0bad).unwrap().key_for(node)
    }
    fn reserved(k: ReservationKey, t: u8) -> Option<Reservation> {
        Some(Reservation {
            key: k,
            scope: Scope::LogicalUnit,
            rtype: ReservationType::from_code(t).unwrap(),
        })
    }
    fn obs(
        keys: Vec<ReservationKey>,
        res: Option<Reservation>,
        paths: Vec<PathRegistration>,
    ) -> Observed {
        Observed {
            generation: 1,
            keys,
            reservation: res,
            caps: Some(Capabilities {
                all_target_ports: true,
                persist_through_power_loss: true,
                ..Default::default()
            }),
            paths: paths
                .into_iter()
                .enumerate()
                .map(|(i, r)| (PathBuf::from(format!("/dev/sd{i}")), r))
                .collect(),
            ours_count: 0,
            full_status: true,
            no_preempt_and_abort: false,
            signs: Signs::default(),
        }
        .counting(key("b"))
    }
    fn live(nodes: &[&str]) -> BTreeMap<ReservationKey, String> {
        nodes.iter().map(|n| (key(n), n.to_string())).collect()
    }
    const REG: PathRegistration = Registered {
        all_tg_pt: false,
        holder: false,
    };

    fn plan(
        o: &Observed,
        live_nodes: &[&str],
        access: AccessMode,
        policy: &Policy,
    ) -> Result<Vec<Step>, Refusal> {
        let l = live(live_nodes);
        let known = live(&["a", "b", "c"]);
        plan_acquire(
            o,
            &Context {
                ours: key("b"),
                tag: tag(),
                live: &l,
                known: &known,
                access,
                policy,
            },
        )
    }

    /// Each row: what the LUN says, who is live, and the steps B's acquire sends.
    #[test]
    fn acquire_table() {
        let p = Policy::default();
        let single = AccessMode::SingleNode;
        let short = |steps: Result<Vec<Step>, Refusal>| -> String {
            match steps {
                Err(r) => format!(
                    "refused:{}",
                    serde_json::to_value(&r).unwrap()["reason"]
                        .as_str()
                        .unwrap()
                ),
                Ok(s) => s
                    .iter()
                    .map(|s| match s {
                        Step::Register { .. } => "register".to_string(),
                        Step::Reserve { rtype } => format!("reserve{}", rtype.code()),
                        Step::Preempt {
                            victim,
                            holder,
                            abort,
                            ..
                        } => format!(
                            "{}{}({})",
                            if *abort { "preempt-abort" } else { "preempt" },
                            if *holder { "-holder" } else { "" },
                            victim.node.clone().unwrap_or_else(|| "?".into())
                        ),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        };
        let rows: Vec<(&str, Observed, Vec<&str>, &str)> = vec![
            (
                "empty LUN",
                obs(vec![], None, vec![NotRegistered, NotRegistered]),
                vec!["b"],
                "register register reserve5",
            ),
            (
                "already held, both paths",
                obs(
                    vec![key("b"), key("b")],
                    reserved(key("b"), 5),
                    vec![REG, REG],
                ),
                vec!["b"],
                "",
            ),
            (
                "held, a new path",
                obs(
                    vec![key("b")],
                    reserved(key("b"), 5),
                    vec![REG, NotRegistered],
                ),
                vec!["b"],
                "register",
            ),
            (
                "failover from stale a",
                obs(
                    vec![key("a"), key("a")],
                    reserved(key("a"), 5),
                    vec![NotRegistered, NotRegistered],
                ),
                vec!["b"],
                "register register preempt-abort-holder(a)",
            ),
            (
                "a still live: never preempt it",
                obs(vec![key("a")], reserved(key("a"), 5), vec![NotRegistered]),
                vec!["a", "b"],
                "refused:held-by-live-node",
            ),
            (
                "stale c registered, a holds stale",
                obs(
                    vec![key("a"), key("c")],
                    reserved(key("a"), 5),
                    vec![NotRegistered],
                ),
                vec!["b"],
                "register preempt-abort-holder(a) preempt-abort(c)",
            ),
            (
                "foreign registrant stays",
                obs(
                    vec![foreign("x"), key("a")],
                    reserved(key("a"), 5),
                    vec![NotRegistered],
                ),
                vec!["b"],
                "register preempt-abort-holder(a)",
            ),
            (
                "foreign holder refused",
                obs(
                    vec![foreign("x")],
                    reserved(foreign("x"), 5),
                    vec![NotRegistered],
                ),
                vec!["b"],
                "refused:foreign-holder",
            ),
            (
                "we hold another type",
                obs(vec![key("b")], reserved(key("b"), 1), vec![REG]),
                vec!["b"],
                "refused:type-mismatch",
            ),
            (
                "no usable path",
                obs(vec![], None, vec![]),
                vec!["b"],
                "refused:no-usable-path",
            ),
            (
                "unknown nexus is registered again",
                obs(vec![key("b")], reserved(key("b"), 5), vec![Unknown]),
                vec!["b"],
                "register",
            ),
        ];
        for (name, o, l, want) in rows {
            assert_eq!(short(plan(&o, &l, single, &p)), want, "{name}");
        }
        // Multi-node, type 7: a and b both live stay registered; nothing preempted.
        let o = obs(
            vec![key("a"), key("a")],
            reserved(ReservationKey(0), 7),
            vec![NotRegistered, NotRegistered],
        );
        assert_eq!(
            short(plan(&o, &["a", "b"], AccessMode::MultiNode, &p)),
            "register register"
        );
        // Multi-node, stale c is removed but the type-7 reservation stays.
        let o = obs(
            vec![key("a"), key("c")],
            reserved(ReservationKey(0), 7),
            vec![NotRegistered],
        );
        assert_eq!(
            short(plan(&o, &["a", "b"], AccessMode::MultiNode, &p)),
            "register preempt-abort(c)"
        );
        // Policy: plain PREEMPT, and removing foreign keys.
        let p2 = Policy {
            preempt: PreemptMode::Preempt,
            remove_foreign_keys: true,
            ..Policy::default()
        };
        let o = obs(vec![foreign("x")], reserved(foreign("x"), 5), vec![REG]);
        assert_eq!(short(plan(&o, &["b"], single, &p2)), "preempt-holder(?)");
    }

    #[test]
    fn options_follow_capabilities() {
        let p = Policy {
            all_tg_pt: true,
            aptpl: true,
            ..Policy::default()
        };
        let mut o = obs(vec![], None, vec![NotRegistered]);
        let steps = plan(&o, &["b"], AccessMode::SingleNode, &p).unwrap();
        assert!(matches!(
            steps[0],
            Step::Register {
                all_tg_pt: true,
                aptpl: true,
                ..
            }
        ));
        o.caps = None;
        let steps = plan(&o, &["b"], AccessMode::SingleNode, &p).unwrap();
        assert!(matches!(
            steps[0],
            Step::Register {
                all_tg_pt: false,
                aptpl: false,
                ..
            }
        ));
    }

    #[test]
    fn release_touches_only_our_registrations() {
        let l = live(&["a"]);
        let ctx = Context {
            ours: key("b"),
            tag: tag(),
            live: &l,
            known: &l,
            access: AccessMode::SingleNode,
            policy: &Policy::default(),
        };
        let held = Registered {
            all_tg_pt: false,
            holder: true,
        };
        let atp = Registered {
            all_tg_pt: true,
            holder: false,
        };
        let o = obs(
            vec![key("b"), key("b"), key("a")],
            reserved(key("b"), 5),
            vec![held, atp],
        );
        let steps = plan_release(&o, &ctx);
        assert_eq!(steps.len(), 3);
        assert!(matches!(&steps[0], Step::Release { path: Some(p), .. } if p.ends_with("sd0")));
        assert!(matches!(
            &steps[2],
            Step::Unregister {
                all_tg_pt: true,
                ..
            }
        ));
        // Someone else's reservation: no RELEASE; type 7: no RELEASE; nothing registered: no-op.
        let o = obs(vec![key("b"), key("a")], reserved(key("a"), 5), vec![REG]);
        assert!(matches!(
            plan_release(&o, &ctx).as_slice(),
            [Step::Unregister { .. }]
        ));
        let o = obs(
            vec![key("b"), key("a")],
            reserved(ReservationKey(0), 7),
            vec![REG],
        );
        assert!(matches!(
            plan_release(&o, &ctx).as_slice(),
            [Step::Unregister { .. }]
        ));
        let o = obs(vec![key("a")], reserved(key("a"), 5), vec![NotRegistered]);
        assert!(plan_release(&o, &ctx).is_empty());
    }

    #[test]
    fn check_registers_new_paths_only_while_our_key_is_on_the_lun() {
        let l = live(&["b"]);
        let ctx = Context {
            ours: key("b"),
            tag: tag(),
            live: &l,
            known: &l,
            access: AccessMode::SingleNode,
            policy: &Policy::default(),
        };
        let o = obs(
            vec![key("b")],
            reserved(key("b"), 5),
            vec![REG, NotRegistered],
        );
        assert_eq!(plan_check(&o, &ctx).len(), 1);
        let fenced = obs(
            vec![key("a")],
            reserved(key("a"), 5),
            vec![NotRegistered, NotRegistered],
        );
        assert!(plan_check(&fenced, &ctx).is_empty());
    }

    #[test]
    fn classify_names_keys_and_separates_foreign() {
        let l = live(&["a"]);
        let known = live(&["a", "c"]);
        let ctx = Context {
            ours: key("b"),
            tag: tag(),
            live: &l,
            known: &known,
            access: AccessMode::SingleNode,
            policy: &Policy::default(),
        };
        let k = classify(
            &[
                key("a"),
                key("b"),
                key("c"),
                key("c"),
                foreign("z"),
                key("d"),
            ],
            &ctx,
        );
        assert!(k.ours_present);
        assert_eq!(
            k.live.iter().map(|x| x.node.as_deref()).collect::<Vec<_>>(),
            vec![Some("a")]
        );
        assert_eq!(
            k.stale
                .iter()
                .map(|x| x.node.as_deref())
                .collect::<Vec<_>>(),
            vec![Some("c"), None]
        );
        assert_eq!(k.foreign.len(), 1);
        assert!(k.foreign[0].foreign);
    }

    /// What the statuses of an acquire's steps prove, and where only a
    /// read-back can tell.
    #[test]
    fn after_steps_proves_only_what_the_statuses_prove() {
        let p = Policy::default();
        let single = AccessMode::SingleNode;
        let after = |o: &Observed, steps: &[Step]| after_steps(o, steps, key("b"));
        // From empty: two REGISTERs and a RESERVE.
        let empty = obs(vec![], None, vec![NotRegistered, NotRegistered]);
        let steps = plan(&empty, &["b"], single, &p).unwrap();
        let a = after(&empty, &steps).expect("proven");
        assert_eq!(a.ours_count, 2);
        assert_eq!(a.generation, 3, "two REGISTERs bump it, RESERVE does not");
        assert!(a.paths.iter().all(|(_, r)| r.is_registered()));
        assert_eq!(a.reservation.as_ref().map(|r| r.key), Some(key("b")));
        assert_eq!(
            plan(&a, &["b"], single, &p),
            Ok(vec![]),
            "nothing left to do"
        );
        // Failover: A holds, B registers and preempts A. Had A released in
        // between, the PREEMPT would create no reservation: read back.
        let held = obs(
            vec![key("a"), key("a")],
            reserved(key("a"), 5),
            vec![NotRegistered, NotRegistered],
        );
        let steps = plan(&held, &["b"], single, &p).unwrap();
        assert!(after(&held, &steps).is_none());
        // A nexus whose registration is not known: the REGISTER may add none.
        let unknown = obs(vec![], None, vec![NotRegistered, Unknown]);
        let steps = plan(&unknown, &["b"], single, &p).unwrap();
        assert!(after(&unknown, &steps).is_none());
        // ALL_TG_PT registers every target port: how many is not known.
        let atp = [Step::Register {
            path: "/dev/sd0".into(),
            all_tg_pt: true,
            aptpl: false,
        }];
        assert!(after(&empty, &atp).is_none());
        // Under an all-registrants type the reservation reads as key 0.
        let ar = [Step::Reserve {
            rtype: ReservationType::from_code(7).unwrap(),
        }];
        let registered = obs(vec![key("b")], None, vec![REG]);
        let a = after(&registered, &ar).expect("proven");
        assert_eq!(
            a.reservation.as_ref().map(|r| r.key),
            Some(ReservationKey::NONE)
        );
        // RESERVE of a LUN another node reserved meanwhile would have conflicted;
        // one the observation found reserved is not proven.
        let theirs = obs(vec![key("a"), key("b")], reserved(key("a"), 5), vec![REG]);
        assert!(after(&theirs, &ar).is_none());
        // A PREEMPT whose plan thought the victim held, on a LUN that says
        // otherwise, or a RELEASE: read back.
        let wrong = [Step::Preempt {
            victim: OtherKey {
                key: key("c"),
                node: Some("c".into()),
                foreign: false,
            },
            holder: true,
            abort: true,
            rtype: ReservationType::from_code(5).unwrap(),
        }];
        assert!(after(&held, &wrong).is_none());
        let release = [Step::Release {
            path: None,
            rtype: ReservationType::from_code(5).unwrap(),
        }];
        assert!(after(&held, &release).is_none());
        // Joining a multi-node volume: another node's all-registrants
        // reservation, none of ours. Had its last registrant left before our
        // REGISTERs landed, no reservation would be left (simulation seed
        // 70069230): read back.
        let multi = AccessMode::MultiNode;
        let all_reg = |keys: Vec<ReservationKey>, paths| {
            let mut o = obs(keys, None, paths);
            o.reservation = Some(Reservation {
                key: ReservationKey::NONE,
                scope: Scope::LogicalUnit,
                rtype: ReservationType::from_code(7).unwrap(),
            });
            o
        };
        let theirs = all_reg(vec![key("a")], vec![NotRegistered, NotRegistered]);
        let steps = plan(&theirs, &["a", "b"], multi, &p).unwrap();
        assert!(!steps.is_empty());
        assert!(after(&theirs, &steps).is_none());
        // Already registered under it (a path added): it lives while we do.
        let ours = all_reg(vec![key("a"), key("b")], vec![REG, NotRegistered]);
        let steps = plan(&ours, &["a", "b"], multi, &p).unwrap();
        assert!(!steps.is_empty());
        assert!(after(&ours, &steps).is_some());
        // Holding a single-node reservation and adding a path: another
        // node's PREEMPT in between would tell only the path we hold
        // through, which the REGISTER does not use: read back.
        let mine = obs(
            vec![key("b")],
            reserved(key("b"), 5),
            vec![REG, NotRegistered],
        );
        let steps = plan(&mine, &["b"], single, &p).unwrap();
        assert!(!steps.is_empty());
        assert!(after(&mine, &steps).is_none());
    }
}
