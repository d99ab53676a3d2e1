//! The fencing engine: acquire, release and check one volume's reservation,
//! deciding every step from what the LUN answers now (docs/design.md).
//!
//! Order of every operation: find the LUN and prove each path's identity (I3);
//! read the PR state; weigh it against the fenced-state store (I1, I7);
//! decide (pure, in [`super::decide`]); send, each access-granting PR OUT
//! behind a fresh look at the deadline, the authorization and the device
//! number; read back and, when the LUN moved under us, plan again (bounded).
//! Blocking: callers run it on a blocking thread; every SCSI command is
//! bounded by its timeout (I6).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::clock::{Clock, SystemClock};
use super::decide::{self, Context, Evidence, KeyClasses, Observed, OtherKey, Refusal, Step};
use super::keys::ClusterTag;
use super::policy::{AccessMode, Policy};
use super::state::{AttachmentId, Record, Stage, StateError, StateStore};
use crate::device::{DeviceError, Locate, NotFound, PathInfo};
use crate::scsi::{Capabilities, ReservationKey, Wwid};
use crate::transport::{RetryPolicy, ScsiError, ScsiPath, Transport};

/// A volume as the engine sees it: no Kubernetes types.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// The volume's name (a PV name), for reports.
    pub name: String,
    /// The LUN's identity.
    pub wwid: Wwid,
    /// An explicit device (map or path) instead of a lookup by WWID.
    pub device: Option<PathBuf>,
    /// Single- or multi-node.
    pub access: AccessMode,
    /// How to reserve it.
    pub policy: Policy,
}

/// Which of the keys an acquire found on the LUN belong to nodes with a
/// live attachment of it (I2), asked after the keys were read: a node that
/// attached and registered a moment before counts, which a list read
/// before the LUN could miss. Cost: one question per key, not per cluster.
pub trait Liveness: std::marker::Send + Sync {
    /// `keys`: this cluster's keys on the LUN besides ours, with the node
    /// each belongs to where the engine knows it. Returns the live ones
    /// with their node, and notes for the report; an error means nothing
    /// could be confirmed, and nothing is preempted.
    fn confirm(
        &self,
        vol: &Volume,
        keys: &[(ReservationKey, Option<String>)],
    ) -> Result<Confirmed, String>;
}

/// What a [`Liveness`] found.
#[derive(Debug, Clone, Default)]
pub struct Confirmed {
    /// Live keys and their nodes.
    pub live: BTreeMap<ReservationKey, String>,
    /// Worth reporting (e.g. another PV attaches the same LUN).
    pub notes: Vec<String>,
}

/// A [`Liveness`] carried by an [`Authorization`].
#[derive(Clone)]
pub struct Confirm(pub std::sync::Arc<dyn Liveness>);

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirm(..)")
    }
}

/// The attachment that allows this node to hold the volume, and when it
/// was read fresh from its source (I1).
#[derive(Debug, Clone, Serialize)]
pub struct Authorization {
    /// VolumeAttachment UID, or the file source's generation.
    pub attachment: AttachmentId,
    /// When the source confirmed it.
    pub read_at: SystemTime,
    /// What the source found worth saying about it (reported with the
    /// outcome), e.g. another PV on the same LUN.
    pub notes: Vec<String>,
    /// Asked, after each reading of the LUN, which other keys are live;
    /// without it the `live` set given to the acquire is the whole answer.
    #[serde(skip)]
    pub confirm: Option<Confirm>,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name.
    pub node: String,
    /// This cluster's tag.
    pub tag: ClusterTag,
    /// Timeout of each SCSI command.
    pub command_timeout: Duration,
    /// Retries of UNIT ATTENTION / NOT READY per command.
    pub retry: RetryPolicy,
    /// How long to wait for a LUN that has not appeared yet.
    pub device_wait: Duration,
    /// An authorization older than this is not fresh; checked before every
    /// access-granting PR OUT, not only at the start.
    pub max_authorization_age: Duration,
    /// Past this, counted from its start, an operation sends no command that
    /// grants access (REGISTER, RESERVE, PREEMPT): whoever waited for it has
    /// given up, and a late PR OUT would act without them (I1, I6).
    pub operation_deadline: Duration,
    /// Every node name of the cluster, so stale keys can be named in reports.
    pub known_nodes: BTreeSet<String>,
    /// Send no PR OUT; report what would be sent.
    pub dry_run: bool,
    /// Test hook: stop right after the registrations of an acquire, as a
    /// crash there would (no reservation step, no state update).
    pub interrupt_after_register: bool,
    /// Time (virtual in the simulation).
    pub clock: Arc<dyn Clock>,
}

impl EngineConfig {
    /// Defaults for `node` in the cluster of `tag`.
    pub fn new(node: impl Into<String>, tag: ClusterTag) -> Self {
        EngineConfig {
            node: node.into(),
            tag,
            command_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            device_wait: Duration::from_secs(0),
            max_authorization_age: Duration::from_secs(60),
            operation_deadline: Duration::from_secs(60),
            known_nodes: BTreeSet::new(),
            dry_run: false,
            interrupt_after_register: false,
            clock: Arc::new(SystemClock::default()),
        }
    }
}

/// Where the volume stands for this node after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    /// Registered on the usable paths and holding the reservation
    /// (for all-registrants types: registered, so holding).
    Held,
    /// Registered, but the reservation is someone else's.
    Registered,
    /// This node's key was preempted (I7).
    Fenced,
    /// Not registered, by this node's choice (released or never acquired).
    NotRegistered,
    /// This node's registrations vanished without a preemption (a target
    /// reset or power loss without APTPL): re-acquired under the same
    /// attachment once the source confirms it again.
    Lost,
    /// The engine refused to act; see the refusal.
    Refused,
}

/// One path as the operation found it.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    /// sysfs facts.
    #[serde(flatten)]
    pub info: PathInfo,
    /// False when the path is not used: offline, or another LUN (I3).
    pub usable: bool,
    /// The path leads to another LUN (VPD 83h differs): never ours to register.
    pub wrong_lun: bool,
    /// Carries this node's key after the operation (from READ FULL STATUS,
    /// or from this node's own record where the target lacks it).
    pub registered: bool,
    /// What is known of the path's registration: registered, not-registered,
    /// or unknown (its I_T nexus cannot be named).
    pub registration: Option<super::decide::PathRegistration>,
    /// The WWID the path reports, when it is another LUN's.
    pub reports_wwid: Option<String>,
    /// Why the path is unusable or failed.
    pub problem: Option<String>,
}

/// What an operation did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The volume.
    pub volume: String,
    /// Its WWID.
    pub wwid: String,
    /// The device node used for the LUN.
    pub device: PathBuf,
    /// This node's key.
    pub key: ReservationKey,
    /// The result.
    pub state: VolumeState,
    /// Why nothing was done, when refused.
    pub refusal: Option<Refusal>,
    /// The PR OUT commands sent (or, in a dry run, that would be sent).
    pub steps: Vec<Step>,
    /// True in a dry run: `steps` were not sent.
    pub dry_run: bool,
    /// Keys removed, with their nodes.
    pub preempted: Vec<OtherKey>,
    /// Keys of live nodes (left alone) and foreign keys (reported).
    pub keys: KeyClasses,
    /// Every path.
    pub paths: Vec<PathReport>,
    /// PRGENERATION before and after.
    pub generation: (u32, u32),
    /// Unit attentions seen (e.g. "2A/05 registrations preempted" when fenced).
    pub unit_attentions: Vec<String>,
    /// The PR generation moved by more than this operation's own commands:
    /// another node changed the LUN at the same time.
    pub raced: bool,
    /// What the operator should know besides the state: a capability the
    /// target lacks and what was done instead, a re-plan after a conflict,
    /// registrations lost to a reset, a rollback.
    pub notes: Vec<String>,
    /// Registrations of this node that had to go could not all be removed
    /// (a path failed): the next operation must come soon.
    pub leftover: bool,
}

/// Why an operation failed (not a refusal: something went wrong).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The LUN did not appear.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// The explicit device could not be resolved.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The device is another LUN (I3).
    #[error("{device}: identity mismatch: VPD 83h says {found}, the volume is {expected}; no PR OUT sent")]
    IdentityMismatch {
        /// The device.
        device: PathBuf,
        /// The volume's WWID.
        expected: String,
        /// What the device reports.
        found: String,
    },
    /// A SCSI command failed.
    #[error(transparent)]
    Scsi(#[from] ScsiError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No path could be registered.
    #[error("volume {volume}: registration failed on every path: {errors}")]
    NoPathRegistered {
        /// The volume.
        volume: String,
        /// The per-path errors.
        errors: String,
    },
    /// Stopped by the test hook after registering.
    #[error("interrupted after REGISTER (test hook)")]
    Interrupted,
    /// A step failed after others were sent: what was sent is listed.
    #[error("volume {volume}: {failed} failed after {} step(s) were sent{}: {source}", done.len(), rollback_note(*.rolled_back))]
    Step {
        /// The volume.
        volume: String,
        /// The steps sent before the failure.
        done: Vec<Step>,
        /// The step that failed.
        failed: Box<Step>,
        /// This node's registrations were taken back afterwards.
        rolled_back: bool,
        /// Why.
        source: Box<ScsiError>,
    },
    /// The target lacks a service action that the policy requires.
    #[error("volume {volume}: the target does not support {capability} and the policy requires it ({why}); this node's registrations were taken back")]
    Unsupported {
        /// The volume.
        volume: String,
        /// The missing capability, e.g. "PREEMPT AND ABORT".
        capability: &'static str,
        /// What to change.
        why: String,
    },
    /// What this node's platform cannot fence safely; nothing was sent.
    #[error("volume {volume}: {what} cannot be fenced from this node: {why}; nothing was sent")]
    Platform {
        /// The volume.
        volume: String,
        /// What, e.g. "a multi-node volume".
        what: &'static str,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// The operation ran out of time or authority before its next
    /// access-granting command; nothing more was sent (I1).
    #[error("volume {volume}: stopped before {next}: {why}; nothing more was sent{}", rollback_note(*.rolled_back))]
    Stopped {
        /// The volume.
        volume: String,
        /// The command that was not sent.
        next: String,
        /// Deadline passed or authorization expired.
        why: String,
        /// This node's registrations were taken back.
        rolled_back: bool,
    },
    /// The LUN kept changing under the operation (another node acquiring or
    /// releasing at the same moment) for every round allowed.
    #[error("volume {volume}: the reservation kept changing for {rounds} rounds ({last}){}; the next attempt starts afresh", rollback_note(*.rolled_back))]
    NotConverged {
        /// The volume.
        volume: String,
        /// Rounds tried.
        rounds: u32,
        /// The last thing that got in the way.
        last: String,
        /// Whether this node's registrations were taken back (not when it
        /// holds the reservation: its attachment still stands).
        rolled_back: bool,
    },
    /// This node's registrations are fewer than it left them, a lost answer
    /// may have taken the unit attention that would tell a target reset from
    /// a preemption, and a path that could still tell did not answer.
    #[error("volume {volume}: this node's registrations are gone and it cannot tell yet whether a target reset or another node's PREEMPT removed them ({why}); nothing is acquired again until a path answers")]
    Undecided {
        /// The volume.
        volume: String,
        /// The path that did not answer, and how.
        why: String,
    },
    /// No path of the LUN can be used; nothing is sent through the map
    /// (SG_IO there can block without a timeout when dm queues I/O).
    #[error("volume {volume}: no usable path ({reasons})")]
    NoUsablePath {
        /// The volume.
        volume: String,
        /// Each path's problem.
        reasons: String,
    },
    /// The PR IN reads kept disagreeing on the PR generation: the LUN was
    /// changing while it was read.
    #[error(
        "{device}: the PR state kept changing while it was read (generations {})",
        crate::text::list(generations)
    )]
    Unstable {
        /// The path read.
        device: PathBuf,
        /// The generations seen in the last attempt.
        generations: Vec<u32>,
    },
}

fn rollback_note(yes: bool) -> &'static str {
    if yes {
        "; this node's registrations were taken back"
    } else {
        ""
    }
}

impl FenceError {
    /// A small label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FenceError::NotFound(_) | FenceError::Device(_) => "device_not_found",
            FenceError::IdentityMismatch { .. } => "identity_mismatch",
            FenceError::Scsi(e) => e.kind(),
            FenceError::State(_) => "state_store",
            FenceError::NoPathRegistered { .. } => "no_path_registered",
            FenceError::Interrupted => "interrupted",
            FenceError::Step { source, .. } => source.kind(),
            FenceError::Unsupported { .. } | FenceError::Platform { .. } => "unsupported",
            FenceError::Stopped { .. } => "deadline",
            FenceError::NotConverged { .. } => "not_converged",
            FenceError::Undecided { .. } => "undecided",
            FenceError::NoUsablePath { .. } => "no_usable_path",
            FenceError::Unstable { .. } => "unstable",
        }
    }
}

/// A usable path: identity proven, nexus named where sysfs can.
#[derive(Debug, Clone)]
struct UsablePath {
    dev: PathBuf,
    /// `H:C:T:L` (or the kernel name): what the record remembers.
    id: String,
    /// The device number when its identity was proven.
    devnum: Option<u64>,
    rtpi: Option<u16>,
    initiator: Option<crate::device::InitiatorPort>,
}

/// The LUN as located for one operation.
struct Located {
    device: PathBuf,
    usable: Vec<UsablePath>,
    reports: Vec<PathReport>,
}

/// What the engine learned of a LUN's optional features (kept per WWID for
/// the daemon's life: each is asked once, not on every operation).
#[derive(Debug, Clone, Default)]
pub struct LunCaps {
    /// REPORT CAPABILITIES' answer; `None` when unsupported.
    pub report: Option<Capabilities>,
    /// REPORT CAPABILITIES was asked.
    pub asked: bool,
    /// READ FULL STATUS answered ILLEGAL REQUEST: per-path registration
    /// comes from this node's record instead.
    pub no_full_status: bool,
    /// PREEMPT AND ABORT answered ILLEGAL REQUEST.
    pub no_preempt_and_abort: bool,
}

/// One operation in progress: the engine's view of the LUN and its report.
struct Run<'a> {
    vol: &'a Volume,
    auth: Option<&'a Authorization>,
    loc: Located,
    out: Outcome,
    /// Monotonic time past which nothing access-granting is sent.
    deadline: Duration,
    /// Paths this operation sent a REGISTER to (landed or possibly landed).
    touched: Vec<PathBuf>,
    /// The first observation found this node holding the reservation: its
    /// registrations are its own to keep whatever fails later.
    held_before: bool,
    /// The path to read through first.
    prefer: Option<PathBuf>,
    /// A path that carries our key, for a RELEASE whose holder path the LUN
    /// did not name.
    release_via: Option<PathBuf>,
    /// What the unit attentions met by this operation's commands told.
    att: Attentions,
    /// PR OUTs of this operation that did not come back GOOD.
    failed_sends: u32,
}

/// The unit attentions of one operation, by age. A path's pending
/// attentions are consumed by the first command the operation sends there,
/// so only what comes back on a path used before is known to be news (later
/// than this operation's first look at the LUN); the first answer on a path
/// may be older than everything the operation read.
#[derive(Default)]
struct Attentions {
    /// Paths where a command of this operation has been answered.
    /// (Shared by the concurrent REGISTERs of one operation, hence atomics.)
    used: Mutex<Vec<PathBuf>>,
    /// A reset (29/xx) known to be news.
    fresh_reset: Flag,
    /// A reset of unknown age (the first answer on its path).
    aged_reset: Flag,
    /// A preemption of our registration (2A/05) known to be news.
    fresh_preempt: Flag,
    /// Resets met so far, of any age: a reading taken before one of them
    /// no longer describes the LUN.
    resets: Count,
}

/// A flag several threads of one operation may raise.
#[derive(Default)]
struct Flag(std::sync::atomic::AtomicBool);

impl Flag {
    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn set(&self, v: bool) {
        self.0.store(v, std::sync::atomic::Ordering::SeqCst)
    }
}

/// A count several threads of one operation may raise.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicU32);

impl Count {
    fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn bump(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Attentions {
    /// About to send commands on `dev`: is what they meet news?
    fn open(&self, dev: &std::path::Path) -> bool {
        self.used.lock().is_ok_and(|u| u.iter().any(|p| p == dev))
    }

    /// A command on `dev` came back with a status (not a timeout or a
    /// transport failure): its pending attentions have been reported.
    fn answered<T>(&self, dev: &std::path::Path, r: &Result<T, ScsiError>) {
        if r.as_ref().err().is_none_or(|e| e.answered()) {
            if let Ok(mut u) = self.used.lock() {
                if !u.iter().any(|p| p == dev) {
                    u.push(dev.to_path_buf());
                }
            }
        }
    }

    /// An attention met on a path that [`Attentions::open`] judged.
    fn met(&self, s: &crate::scsi::Sense, fresh: bool) {
        if s.asc == 0x29 {
            self.resets.bump();
        }
        match (s.asc, s.ascq) {
            (0x29, _) if fresh => self.fresh_reset.set(true),
            (0x29, _) => self.aged_reset.set(true),
            (0x2a, 0x05) if fresh => self.fresh_preempt.set(true),
            _ => {}
        }
    }
}

/// What would make an acquire's read-back necessary, counted before its
/// steps: a PR OUT that did not come back GOOD, a unit attention, a reset.
struct Clean {
    failed: u32,
    attentions: usize,
    resets: u32,
}

impl Clean {
    fn of(run: &Run<'_>) -> Clean {
        Clean {
            failed: run.failed_sends,
            attentions: run.out.unit_attentions.len(),
            resets: run.att.resets.get(),
        }
    }

    /// Nothing of the kind happened since [`Clean::of`].
    fn still(&self, run: &Run<'_>) -> bool {
        run.failed_sends == self.failed
            && run.out.unit_attentions.len() == self.attentions
            && run.att.resets.get() == self.resets
            && !run.att.fresh_preempt.get()
    }
}

/// The engine for one node.
pub struct Engine<T: Transport> {
    cfg: EngineConfig,
    key: ReservationKey,
    transport: T,
    resolver: Box<dyn Locate>,
    state: StateStore,
    caps: Mutex<HashMap<String, LunCaps>>,
    /// Each path's identity as last proven (see [`identity`]).
    ids: identity::Identities,
    /// One read-change-write of the record at a time for what the commands
    /// of concurrent REGISTERs note (a reset must not overwrite a fence).
    noting: Mutex<()>,
    /// Node names learned after start (the Kubernetes Node list), to name
    /// their keys in reports.
    learned_nodes: Mutex<BTreeSet<String>>,
}

/// How many times an acquire re-observes and re-plans after the LUN moved.
const ROUNDS: u32 = 4;

impl<T: Transport> Engine<T> {
    /// An engine sending through `transport`, finding LUNs with `resolver`.
    pub fn new(
        cfg: EngineConfig,
        transport: T,
        resolver: impl Locate + 'static,
        state: StateStore,
    ) -> Self {
        let key = cfg.tag.key_for(&cfg.node);
        Engine {
            cfg,
            key,
            transport,
            resolver: Box::new(resolver),
            state,
            caps: Mutex::new(HashMap::new()),
            ids: identity::Identities::default(),
            noting: Mutex::new(()),
            learned_nodes: Mutex::new(BTreeSet::new()),
        }
    }

    /// Names the keys of `names` in later reports (learned after start).
    pub fn learn_nodes(&self, names: impl IntoIterator<Item = String>) {
        if let Ok(mut known) = self.learned_nodes.lock() {
            known.extend(names);
        }
    }

    /// This node's reservation key.
    pub fn key(&self) -> ReservationKey {
        self.key
    }

    /// The transport (benchmarks read their stopwatch from it).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn path(&self, dev: &std::path::Path) -> ScsiPath<'_> {
        ScsiPath::new(&self.transport, dev, self.cfg.command_timeout).with_retry(self.cfg.retry)
    }

    fn start<'a>(
        &self,
        vol: &'a Volume,
        auth: Option<&'a Authorization>,
    ) -> Result<Run<'a>, FenceError> {
        let deadline = self.cfg.clock.mono() + self.cfg.operation_deadline;
        let loc = self.locate(vol)?;
        let out = self.outcome(vol, &loc);
        Ok(Run {
            vol,
            auth,
            loc,
            out,
            deadline,
            touched: Vec::new(),
            held_before: false,
            release_via: None,
            prefer: None,
            att: Attentions::default(),
            failed_sends: 0,
        })
    }

    /// Takes the volume for this node: registers every path, then RESERVE or
    /// PREEMPT the stale holder, PREEMPT other stale keys; re-plans when the
    /// LUN moved meanwhile; never leaves this node registered beside another
    /// node's single-node reservation.
    pub fn acquire(
        &self,
        vol: &Volume,
        auth: &Authorization,
        live: &BTreeSet<String>,
    ) -> Result<Outcome, FenceError> {
        if vol.access == AccessMode::MultiNode && self.transport.replays_registrations() {
            return Err(FenceError::Platform {
                volume: vol.name.clone(),
                what: "a multi-node volume",
                why: "the Windows class driver refuses the all-registrants reservation types, and MPIO registers this node's key again by itself on a returning path, which a count of registrations cannot tell from a fence undone; use the volume from Linux nodes, or single-node access",
            });
        }
        let mut run = self.start(vol, Some(auth))?;
        if let Some(r) = self.unfresh_authorization(auth) {
            return Ok(run.out.refused(r));
        }
        let (lives, known) = self.key_maps(live);
        run.out.notes.extend(auth.notes.iter().cloned());
        let r = self.acquire_rounds(&mut run, auth, &lives, &known);
        // (Not after the test hook, which stands for a crash: nothing runs.)
        let crashed = matches!(r, Err(FenceError::Interrupted));
        let wwid = vol.wwid.to_string();
        if crashed {
            self.state.discard(&wwid);
            return r;
        }
        if r.is_err() && !run.touched.is_empty() && !run.held_before {
            // Whatever failed (a read, a path, the state store), this node
            // must not stay registered beside another node's reservation.
            self.abandon(&mut run);
        }
        // What the REGISTERs' answers told, if nothing wrote since.
        let flushed = self.state.flush(&wwid);
        match (r, flushed) {
            (Ok(_), Err(e)) => Err(e.into()),
            (r, _) => r,
        }
    }

    fn acquire_rounds(
        &self,
        run: &mut Run<'_>,
        auth: &Authorization,
        lives: &BTreeMap<ReservationKey, String>,
        known: &BTreeMap<ReservationKey, String>,
    ) -> Result<Outcome, FenceError> {
        let vol = run.vol;
        let mut last = String::new();
        let mut lives = lives.clone();
        for round in 0..ROUNDS {
            // Only PR IN until the fence checks below have passed (I1). The
            // record is read after the LUN: reading may have noted a reset.
            let obs = self.observe_into(run, round == 0)?;
            let rec = self.record_for(vol, Some(&auth.attachment))?;
            if round == 0 {
                run.held_before = io::state_of(&obs, self.key) == VolumeState::Held;
            }
            self.confirm_live(run, auth, &obs, &mut lives, known)?;
            let ctx = &self.context(vol, &lives, known);
            run.out.keys = decide::classify(&obs.keys, ctx);
            match self.judge(run, rec.as_ref(), &obs)? {
                Evidence::Preempted => return self.fenced_refusal(run, &obs, auth),
                Evidence::Lost => run.out.notes.push(LOST_NOTE.into()),
                Evidence::None => {}
            }
            let steps = match decide::plan_acquire(&obs, ctx) {
                Ok(s) => s,
                Err(r) => return self.refuse_acquire(run, &obs, rec.as_ref(), r),
            };
            if self.cfg.dry_run {
                run.out.steps = steps;
                run.out.state = io::state_of(&obs, self.key);
                return Ok(run.out.clone());
            }
            if steps.is_empty() {
                return self.settle(run, &obs, auth);
            }
            let registers = steps.iter().any(|s| matches!(s, Step::Register { .. }));
            if registers {
                // The intent goes to disk before the first REGISTER, with the
                // PR generation and our registrations it starts from: a crash
                // anywhere after it is recoverable.
                self.note_registering(run, &auth.attachment, &obs, rec.as_ref(), &steps)?;
            }
            let before = Clean::of(run);
            match self.execute_acquire(run, &obs, &steps)? {
                Executed::Done => {
                    // Every step GOOD and nothing else heard: the statuses
                    // prove the result, and reading it back would add a
                    // command that decides nothing.
                    let after = decide::after_steps(&obs, &steps, self.key)
                        .filter(|_| before.still(run))
                        .filter(|a| decide::plan_acquire(a, ctx).is_ok_and(|s| s.is_empty()));
                    if let Some(after) = after {
                        run.out.generation.1 = after.generation;
                        io::set_registrations(&mut run.out, &after);
                        return self.settle(run, &after, auth);
                    }
                }
                Executed::Replan(why) => {
                    run.out
                        .notes
                        .push(format!("round {}: {why}; re-planned", round + 1));
                    last = why;
                }
            }
        }
        // The final read-back decides; a last plan with nothing to do is held.
        let obs = self.observe_into(run, false)?;
        self.confirm_live(run, auth, &obs, &mut lives, known)?;
        let ctx = &self.context(vol, &lives, known);
        if decide::plan_acquire(&obs, ctx).is_ok_and(|s| s.is_empty()) {
            return self.settle(run, &obs, auth);
        }
        // A holder keeps its reservation: the attachment still names it, and
        // giving it up would stop the writes of a pod that may run here.
        let rolled_back = self.roll_back_unless_holding(run, &obs)?;
        Err(FenceError::NotConverged {
            volume: vol.name.clone(),
            rounds: ROUNDS,
            last,
            rolled_back,
        })
    }

    /// Gives the volume up: RELEASE if this node holds it, then unregister
    /// its paths. Never touches another key. A "fenced under X" record is
    /// kept (I1); any other record goes once the key is gone.
    pub fn release(&self, vol: &Volume) -> Result<Outcome, FenceError> {
        let mut run = self.start(vol, None)?;
        let obs = self.observe_into(&mut run, true)?;
        let rec = self.record_for(vol, None)?;
        let empty = BTreeMap::new();
        let ctx = self.context(vol, &empty, &empty);
        run.out.keys = decide::classify(&obs.keys, &ctx);
        let steps = decide::plan_release(&obs, &ctx);
        run.release_via = obs
            .paths
            .iter()
            .find(|(_, r)| r.is_registered())
            .map(|(p, _)| p.clone());
        if self.cfg.dry_run {
            run.out.steps = steps;
            run.out.state = io::state_of(&obs, self.key);
            return Ok(run.out);
        }
        if steps.iter().any(|s| matches!(s, Step::Unregister { .. })) {
            // Said before it is done (as for a rollback).
            self.recount(&run, None)?;
        }
        for step in &steps {
            self.send_releasing(&mut run, step)?;
        }
        let after = self.observe_into(&mut run, false)?;
        self.finish(&mut run, &obs, &after);
        let gone = run.out.state == VolumeState::NotRegistered;
        if gone {
            // An unregister that met RESERVATION CONFLICT (a reset took the
            // key first) left the key with whatever replays it.
            self.forget_replayed_key(&mut run, &after)?;
        }
        if gone && rec.is_some_and(|r| r.stage != Stage::Fenced) {
            self.state.set(&vol.wwid.to_string(), None)?;
        } else if !gone {
            // Partly released: what is left is still ours, and counted.
            self.recount(&run, Some(&after))?;
        }
        Ok(run.out)
    }

    /// The monitor: is our key still there (I7), are new paths registered
    /// (I5, only while the key is ours), is anything of ours left where it
    /// must not be (a late registration after a fence)?
    pub fn check(&self, vol: &Volume, live: &BTreeSet<String>) -> Result<Outcome, FenceError> {
        let mut run = self.start(vol, None)?;
        let obs = self.observe_into(&mut run, true)?;
        let rec = self.record_for(vol, None)?;
        let (lives, known) = self.key_maps(live);
        let ctx = self.context(vol, &lives, &known);
        run.out.keys = decide::classify(&obs.keys, &ctx);
        run.out.state = io::state_of(&obs, self.key);
        match self.judge(&mut run, rec.as_ref(), &obs)? {
            Evidence::Preempted => return self.fenced_check(&mut run, &obs, rec.as_ref()),
            Evidence::Lost => return self.lost_check(&mut run, &obs, rec.as_ref()),
            Evidence::None => {}
        }
        if obs.ours_count == 0 {
            self.forget_replayed_key(&mut run, &obs)?;
            return Ok(run.out);
        }
        if decide::second_writer(&obs, self.key) {
            // Registered under another node's single-node reservation with no
            // record of holding it: a leftover that lets this node write.
            run.out
                .notes
                .push("registered beside another node's reservation: unregistered".into());
            self.roll_back(&mut run, &obs)?;
            return Ok(run.out);
        }
        let steps = decide::plan_check(&obs, &ctx);
        if self.cfg.dry_run || steps.is_empty() {
            run.out.steps = if self.cfg.dry_run { steps } else { Vec::new() };
            return Ok(run.out);
        }
        self.repair_paths(&mut run, &obs, rec.as_ref(), &steps)
    }

    /// Our registrations went with a target reset: reported, and recorded
    /// with none left, so that the acquire that follows takes the volume
    /// again under the same attachment.
    fn lost_check(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        rec: Option<&Record>,
    ) -> Result<Outcome, FenceError> {
        run.out.notes.push(LOST_NOTE.into());
        // The unit attention that told it is consumed now: the record must
        // carry the knowledge, or the next check, finding other nodes
        // registered since, would take the loss for a fence.
        if let Some(r) = rec {
            let mut lost = Record::now(&run.vol.name, Stage::Registering, &r.attachment)
                .at_generation(obs.generation);
            lost.key_count = Some(obs.ours_count);
            // The record as it is now: this operation may have named new
            // paths before registering them, and one of those REGISTERs may
            // have landed after the reset. It must never name fewer paths
            // than carry the key.
            let now = self.record_for(run.vol, None)?.unwrap_or_else(|| r.clone());
            lost.paths = now.paths.iter().chain(&r.paths).cloned().collect();
            lost.paths.sort();
            lost.paths.dedup();
            lost.all_tg_pt = r.all_tg_pt || now.all_tg_pt;
            self.write(run.vol, lost)?;
        }
        if obs.ours_count > 0 && !self.cfg.dry_run {
            // A REGISTER that landed after the reset: which paths carry the
            // key is not known without READ FULL STATUS, so the acquire that
            // follows starts from none.
            self.roll_back(run, obs)?;
        } else {
            // The reset took the key; what replays it must not put it back
            // after a detach. The acquire that follows registers it anew.
            self.forget_replayed_key(run, obs)?;
        }
        run.out.state = VolumeState::Lost;
        Ok(run.out.clone())
    }

    /// Registers new paths of a held volume, then proves on the read-back
    /// that none of the earlier registrations vanished meanwhile; if one did,
    /// another node preempted us in between: fenced, and every registration
    /// taken back (recorded first, so a crash in the undo cannot lose it).
    fn repair_paths(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        rec: Option<&Record>,
        steps: &[Step],
    ) -> Result<Outcome, FenceError> {
        if let Some(r) = rec.filter(|r| r.stage != Stage::Fenced) {
            self.note_registering(run, &r.attachment, obs, Some(r), steps)?;
        }
        let unregistered: Vec<PathBuf> = obs
            .paths
            .iter()
            .filter(|(_, r)| *r == decide::PathRegistration::NotRegistered)
            .map(|(p, _)| p.clone())
            .collect();
        let mut landed = 0;
        let (mut missed, mut unanswered) = (Vec::new(), Vec::new());
        for step in steps {
            let Step::Register {
                path, all_tg_pt, ..
            } = step
            else {
                continue;
            };
            match self.send_granting(run, step, path) {
                // Only a path known unregistered adds one for sure; an
                // unknown one may have carried the key already.
                Ok(()) => landed += u32::from(unregistered.contains(path)),
                // A lost answer may have landed: asked below.
                Err(Send::Path(e)) if unregistered.contains(path) && self.may_have_landed(&e) => {
                    unanswered.push((path.clone(), *all_tg_pt))
                }
                // Not delivered at all: the record must not name it.
                Err(Send::Path(_)) if unregistered.contains(path) => missed.push(path.clone()),
                Err(Send::Path(_)) => {}
                Err(Send::Stop(why)) => return Err(self.stopped(run, obs, step, why)?),
            }
        }
        let aptpl = run.vol.policy.use_aptpl(obs.caps.as_ref());
        for (path, all_tg_pt) in unanswered {
            landed += u32::from(self.carries_key(run, &path, all_tg_pt, aptpl)?);
        }
        self.forget_paths(run, &missed)?;
        run.prefer = obs
            .paths
            .iter()
            .find(|(_, r)| r.is_registered())
            .map(|(p, _)| p.clone());
        let after = self.observe_into(run, false)?;
        self.finish(run, obs, &after);
        // Only a reset known to come after the first read explains a drop
        // since then; one of unknown age is weighed with the blind case.
        let reset = run.att.fresh_reset.get() && !run.att.fresh_preempt.get();
        // Fewer registrations than we had plus the new ones, or a path this
        // operation had already used told us (2A/05) its registration was
        // preempted since (it covers a REGISTER whose answer was lost). A
        // 2A/05 on a path answering for the first time (the read-back fell
        // back to it) may be older than this operation, and proves nothing.
        let vanished = after.ours_count < obs.ours_count + landed
            || run.att.fresh_preempt.get()
            || decide::evidence(rec, &after, self.key, run.vol.access) == Evidence::Preempted;
        let blind = self.record_for(run.vol, None)?.is_some_and(|r| r.blind);
        if vanished && !reset && !run.att.fresh_preempt.get() {
            let doubt = blind || run.att.aged_reset.get();
            if self.weigh_testimony(run, doubt)? == Evidence::Lost {
                return self.lost_check(run, &after, rec);
            }
        }
        if vanished && !reset {
            run.out.raced = true;
            run.out.notes.push(
                "a registration vanished while new paths were registered: another node preempted this one".into(),
            );
            return self.fenced_check(run, &after, rec);
        }
        if vanished && reset {
            // Gone with a reset after the first read: what landed after it
            // (a new path's REGISTER) is taken back, and the acquire that
            // follows starts afresh, as for a reset met at the start.
            return self.lost_check(run, &after, rec);
        }
        if let Some(r) = rec.filter(|r| r.stage != Stage::Fenced) {
            self.remember(run.vol, &r.attachment, Stage::Held, &after, run, r)?;
        }
        Ok(run.out.clone())
    }

    /// The record of this LUN, if it belongs to `attachment` (or any, with `None`).
    fn record_for(
        &self,
        vol: &Volume,
        attachment: Option<&AttachmentId>,
    ) -> Result<Option<Record>, FenceError> {
        let rec = self.state.get(&vol.wwid.to_string())?;
        Ok(rec.filter(|r| attachment.is_none_or(|a| &r.attachment == a)))
    }

    fn write(&self, vol: &Volume, rec: Record) -> Result<(), FenceError> {
        if !self.cfg.dry_run {
            self.state.set(&vol.wwid.to_string(), Some(rec))?;
        }
        Ok(())
    }

    fn note_registering(
        &self,
        run: &Run<'_>,
        a: &AttachmentId,
        obs: &Observed,
        prev: Option<&Record>,
        steps: &[Step],
    ) -> Result<(), FenceError> {
        let vol = run.vol;
        let mut rec = Record::now(&vol.name, Stage::Registering, a).at_generation(obs.generation);
        rec.key_count = Some(obs.ours_count);
        // Every path about to be registered is named before the REGISTER
        // goes out: after a crash in between, a target without READ FULL
        // STATUS must not see it registered a second time by reflex.
        let known = self.state.get(&vol.wwid.to_string())?;
        rec.paths = io::remembered(&run.loc, obs, known.as_ref());
        // Only a path known to carry none of our keys can hide a fence by
        // landing late (see `doubt`).
        let fresh: Vec<PathBuf> = registering(steps)
            .into_iter()
            .filter(|p| io::known_unregistered(obs, p))
            .collect();
        rec.unsure = io::ids_of(&run.loc, &fresh);
        rec.paths.extend(io::ids_of(&run.loc, &registering(steps)));
        rec.paths.sort();
        rec.paths.dedup();
        rec.all_tg_pt =
            prev.is_some_and(|p| p.all_tg_pt) || decide::uses_all_tg_pt(obs, &vol.policy);
        if let Some(p) = prev.filter(|p| p.stage == Stage::Held) {
            // Still held while a new path is added: keep the stage.
            rec.stage = p.stage;
        }
        self.write(vol, rec)
    }

    /// After the REGISTERs: the record names every path that now carries
    /// the key, so a target without READ FULL STATUS does not see them
    /// registered again, and counts the registrations known to have landed
    /// (REGISTERs to paths known unregistered), so a later preemption shows.
    /// Kept in memory until the acquire ends (one durable write fewer).
    fn note_registered(
        &self,
        run: &Run<'_>,
        obs: &Observed,
        registered: &[PathBuf],
    ) -> Result<(), FenceError> {
        let Some(a) = run.auth.map(|a| &a.attachment) else {
            return Ok(());
        };
        let Some(mut rec) = self.record_for(run.vol, Some(a))? else {
            return Ok(());
        };
        let sure = registered
            .iter()
            .filter(|p| {
                obs.paths
                    .iter()
                    .any(|(q, r)| q == *p && *r == decide::PathRegistration::NotRegistered)
            })
            .count() as u32;
        // A reset met on the way, of whatever age, may have come between
        // two of the REGISTERs: none is counted as sure.
        rec.key_count = Some(if run.att.resets.get() > 0 {
            0
        } else {
            obs.ours_count + sure
        });
        // A REGISTER that timed out may have landed: still named, and
        // asked before the count is trusted again.
        let unanswered: Vec<PathBuf> = run
            .touched
            .iter()
            .filter(|p| !registered.contains(p) && io::known_unregistered(obs, p))
            .cloned()
            .collect();
        rec.unsure = io::ids_of(&run.loc, &unanswered);
        let mut maybe = registered.to_vec();
        maybe.extend(run.touched.iter().cloned());
        // A path that carried the key, or may have (its nexus unnamed),
        // before these REGISTERs still does, whether or not one reached it.
        maybe.extend(
            obs.paths
                .iter()
                .filter(|(_, r)| *r != decide::PathRegistration::NotRegistered)
                .map(|(p, _)| p.clone()),
        );
        // Paths this operation could not use keep what the record said.
        let unused = rec
            .paths
            .iter()
            .filter(|id| !run.loc.usable.iter().any(|u| &u.id == *id))
            .cloned();
        let mut paths: Vec<String> = unused.chain(io::ids_of(&run.loc, &maybe)).collect();
        paths.sort();
        paths.dedup();
        rec.paths = paths;
        // Not written yet: the intent on disk names every one of these paths
        // (unsure), which is all a restart needs; the record that ends the
        // acquire replaces this one, and `acquire` writes it if none does.
        if !self.cfg.dry_run {
            self.state.defer(&run.vol.wwid.to_string(), rec);
        }
        Ok(())
    }

    /// A power-on or reset unit attention was just consumed: the
    /// registrations it dropped are not a preemption. Written at once, since
    /// the attention is gone once read and a crash must not forget it.
    pub(super) fn note_reset(&self, wwid: &str) -> Result<(), FenceError> {
        let _one = self.noting.lock();
        let Some(mut rec) = self.state.get(wwid)? else {
            return Ok(());
        };
        if rec.stage == Stage::Fenced || rec.key_count == Some(0) {
            return Ok(());
        }
        rec.stage = Stage::Registering;
        rec.key_count = Some(0);
        if !self.cfg.dry_run {
            self.state.set(wwid, Some(rec))?;
        }
        Ok(())
    }

    /// A 2A/05 came back on a path this operation had already read: another
    /// node preempted us since (see [`Attentions`]). That is the verdict, and
    /// it is written at once: the attention is gone once read, and a crash
    /// before the operation records its outcome must not forget the fence.
    pub(super) fn note_preempted(&self, wwid: &str) -> Result<(), FenceError> {
        let _one = self.noting.lock();
        let Some(rec) = self.state.get(wwid)? else {
            return Ok(());
        };
        if rec.stage == Stage::Fenced || self.cfg.dry_run {
            return Ok(());
        }
        let mut fenced = Record::now(&rec.volume, Stage::Fenced, &rec.attachment);
        fenced.generation = rec.generation;
        Ok(self.state.set(wwid, Some(fenced))?)
    }

    /// Takes paths whose REGISTER was never delivered out of the record.
    fn forget_paths(&self, run: &Run<'_>, missed: &[PathBuf]) -> Result<(), FenceError> {
        if missed.is_empty() {
            return Ok(());
        }
        let Some(mut rec) = self.record_for(run.vol, None)? else {
            return Ok(());
        };
        let gone = io::ids_of(&run.loc, missed);
        rec.paths.retain(|id| !gone.contains(id));
        self.write(run.vol, rec)
    }

    /// After this node's own unregisters: the record keeps its stage and
    /// attachment, with the registrations the LUN shows now.
    /// `None`: about to unregister everything (the count drops to 0 first).
    fn recount(&self, run: &Run<'_>, after: Option<&Observed>) -> Result<(), FenceError> {
        let Some(mut rec) = self.record_for(run.vol, None)? else {
            return Ok(());
        };
        if rec.stage == Stage::Fenced {
            return Ok(());
        }
        rec.key_count = Some(after.map_or(0, |a| a.ours_count));
        // Before the unregisters the paths stay named: a crash half-way
        // leaves some registered, and the record must never name fewer
        // paths than carry the key.
        if let Some(a) = after {
            rec.paths = io::remembered(&run.loc, a, Some(&rec));
            rec.unsure.clear();
        }
        self.write(run.vol, rec)
    }

    /// Writes what this node holds now, as the LUN just said it.
    fn remember(
        &self,
        vol: &Volume,
        a: &AttachmentId,
        stage: Stage,
        obs: &Observed,
        run: &Run<'_>,
        prev: &Record,
    ) -> Result<(), FenceError> {
        let mut rec = Record::now(&vol.name, stage, a).at_generation(obs.generation);
        rec.since = if prev.stage == stage {
            prev.since
        } else {
            rec.since
        };
        rec.key_count = Some(obs.ours_count);
        let known = self.state.get(&vol.wwid.to_string())?;
        rec.paths = io::remembered(&run.loc, obs, known.as_ref());
        // `prev` may predate this operation's own REGISTERs: a new path
        // registered with ALL_TG_PT must be unregistered with it too.
        rec.all_tg_pt = prev.all_tg_pt || known.as_ref().is_some_and(|k| k.all_tg_pt);
        if Some(&rec) != Some(prev) {
            self.write(vol, rec)?;
        }
        Ok(())
    }

    /// The acquire reached its goal: record Held with what the LUN shows.
    fn settle(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        auth: &Authorization,
    ) -> Result<Outcome, FenceError> {
        run.out.state = io::state_of(obs, self.key);
        run.out.generation.1 = obs.generation;
        let prev = self
            .record_for(run.vol, Some(&auth.attachment))?
            .unwrap_or_else(|| Record::now(&run.vol.name, Stage::Registering, &auth.attachment));
        let mut held = prev.clone();
        held.all_tg_pt = prev.all_tg_pt || decide::uses_all_tg_pt(obs, &run.vol.policy);
        self.remember(run.vol, &auth.attachment, Stage::Held, obs, run, &held)?;
        Ok(run.out.clone())
    }

    /// Fenced under this attachment: refuse, and take back anything of ours
    /// that a late REGISTER left on the LUN (it would let this node write).
    fn fenced_refusal(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        auth: &Authorization,
    ) -> Result<Outcome, FenceError> {
        self.record_fenced(run.vol, &auth.attachment, obs, doubt::guessed(run))?;
        if obs.ours_count > 0 {
            self.roll_back(run, obs)?;
        } else {
            self.forget_replayed_key(run, obs)?;
        }
        Ok(run.out.clone().refused(fenced(auth)))
    }

    fn fenced_check(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        rec: Option<&Record>,
    ) -> Result<Outcome, FenceError> {
        if let Some(r) = rec {
            self.record_fenced(run.vol, &r.attachment, obs, doubt::guessed(run))?;
        }
        if obs.ours_count > 0 {
            self.roll_back(run, obs)?;
        } else {
            self.forget_replayed_key(run, obs)?;
        }
        run.out.state = VolumeState::Fenced;
        Ok(run.out.clone())
    }

    /// Makes what registers our key again by itself forget it (Windows'
    /// MPIO DSM: see [`Transport::replays_registrations`]) whenever an
    /// operation finds none of our key on the LUN and does not register it
    /// (fenced, lost to a reset, released, not registered): an unregister
    /// (REGISTER AND IGNORE EXISTING KEY, key 0), which changes nothing on
    /// the LUN, where our key is gone already, and clears the key the DSM
    /// would register on a path that comes back. Sent every time, so that
    /// one that failed is sent again.
    fn forget_replayed_key(&self, run: &mut Run<'_>, obs: &Observed) -> Result<(), FenceError> {
        if self.cfg.dry_run || !self.transport.replays_registrations() {
            return Ok(());
        }
        for (path, _) in &obs.paths {
            let forget = Step::Unregister {
                path: path.clone(),
                all_tg_pt: false,
                ignore_existing: true,
            };
            let sent = run.out.steps.len();
            self.send_releasing(run, &forget)?;
            if run.out.steps.len() == sent {
                // Not sent, or failed: the reconciler comes back soon.
                run.out.leftover = true;
            }
        }
        Ok(())
    }

    fn record_fenced(
        &self,
        vol: &Volume,
        a: &AttachmentId,
        obs: &Observed,
        guessed: bool,
    ) -> Result<(), FenceError> {
        let prev = self.record_for(vol, Some(a))?;
        if prev.as_ref().is_some_and(|r| r.stage == Stage::Fenced) {
            return Ok(());
        }
        let mut rec = Record::now(&vol.name, Stage::Fenced, a).at_generation(obs.generation);
        rec.guessed = guessed;
        self.write(vol, rec)
    }

    /// The plan was refused. Registered beside another node's single-node
    /// reservation means a second writer: take our registrations back first.
    fn refuse_acquire(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        rec: Option<&Record>,
        r: Refusal,
    ) -> Result<Outcome, FenceError> {
        if !self.cfg.dry_run && decide::second_writer(obs, self.key) {
            self.roll_back(run, obs)?;
            if let Some(prev) = rec {
                self.remember(run.vol, &prev.attachment, prev.stage, obs, run, prev)?;
            }
        }
        Ok(run.out.clone().refused(r))
    }

    fn unfresh_authorization(&self, auth: &Authorization) -> Option<Refusal> {
        let now = self.cfg.clock.wall();
        if let Ok(ahead) = auth.read_at.duration_since(now) {
            // A read "from the future" is a clock problem, not freshness.
            if ahead > CLOCK_SKEW {
                return Some(Refusal::ClockSkew {
                    attachment: auth.attachment.to_string(),
                    ahead_secs: ahead.as_secs(),
                });
            }
        }
        let age = now.duration_since(auth.read_at).unwrap_or(Duration::ZERO);
        (age > self.cfg.max_authorization_age).then(|| Refusal::StaleAuthorization {
            attachment: auth.attachment.to_string(),
            age_secs: age.as_secs(),
            max_secs: self.cfg.max_authorization_age.as_secs(),
        })
    }

    /// Asks the authorization's [`Liveness`] about this cluster's keys on
    /// the LUN that are not known live yet; adds the live ones to `lives`.
    fn confirm_live(
        &self,
        run: &mut Run<'_>,
        auth: &Authorization,
        obs: &Observed,
        lives: &mut BTreeMap<ReservationKey, String>,
        known: &BTreeMap<ReservationKey, String>,
    ) -> Result<(), FenceError> {
        let Some(Confirm(liveness)) = &auth.confirm else {
            return Ok(());
        };
        let mut ask: Vec<(ReservationKey, Option<String>)> = Vec::new();
        for &k in &obs.keys {
            let new = k != self.key && !lives.contains_key(&k) && !ask.iter().any(|(a, _)| *a == k);
            if new && self.cfg.tag.owns(k) {
                ask.push((k, known.get(&k).cloned()));
            }
        }
        if ask.is_empty() {
            return Ok(());
        }
        let found = liveness
            .confirm(run.vol, &ask)
            .map_err(|why| FenceError::Undecided {
                volume: run.vol.name.clone(),
                why: format!("which nodes are live could not be confirmed: {why}"),
            })?;
        for n in found.notes {
            if !run.out.notes.contains(&n) {
                run.out.notes.push(n);
            }
        }
        lives.extend(found.live);
        Ok(())
    }

    fn key_maps(
        &self,
        live: &BTreeSet<String>,
    ) -> (
        BTreeMap<ReservationKey, String>,
        BTreeMap<ReservationKey, String>,
    ) {
        let names = |set: &BTreeSet<String>| -> BTreeMap<ReservationKey, String> {
            set.iter()
                .map(|n| (self.cfg.tag.key_for(n), n.clone()))
                .collect()
        };
        let mut lives = names(live);
        lives.insert(self.key, self.cfg.node.clone());
        let mut known = names(&self.cfg.known_nodes);
        if let Ok(learned) = self.learned_nodes.lock() {
            known.extend(names(&learned));
        }
        known.extend(lives.clone());
        (lives, known)
    }

    fn context<'a>(
        &self,
        vol: &'a Volume,
        live: &'a BTreeMap<ReservationKey, String>,
        known: &'a BTreeMap<ReservationKey, String>,
    ) -> Context<'a> {
        Context {
            ours: self.key,
            tag: self.cfg.tag,
            live,
            known,
            access: vol.access,
            policy: &vol.policy,
        }
    }

    fn outcome(&self, vol: &Volume, loc: &Located) -> Outcome {
        Outcome {
            volume: vol.name.clone(),
            wwid: vol.wwid.to_string(),
            device: loc.device.clone(),
            key: self.key,
            state: VolumeState::NotRegistered,
            refusal: None,
            steps: Vec::new(),
            dry_run: self.cfg.dry_run,
            preempted: Vec::new(),
            keys: KeyClasses::default(),
            paths: loc.reports.clone(),
            generation: (0, 0),
            unit_attentions: Vec::new(),
            raced: false,
            notes: Vec::new(),
            leftover: false,
        }
    }
}

/// The paths a plan registers.
fn registering(steps: &[Step]) -> Vec<PathBuf> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Register { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

const LOST_NOTE: &str = "this node's registrations are gone with no sign of a preemption (target reset or power loss without APTPL): registrations lost, acquired again under the same attachment";

/// What one round of an acquire's steps came to.
enum Executed {
    /// Every step was sent.
    Done,
    /// The LUN moved (a conflict, an unsupported action learned): observe
    /// and plan again.
    Replan(String),
}

/// Why one PR OUT was not done.
enum Send {
    /// The path failed it (reported on the path; other paths go on).
    Path(ScsiError),
    /// Not sent: deadline passed, authorization expired, device changed.
    Stop(String),
}

fn fenced(auth: &Authorization) -> Refusal {
    Refusal::Fenced {
        attachment: auth.attachment.to_string(),
    }
}

/// How far ahead of this node's clock an authorization may be read.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

impl Outcome {
    fn refused(mut self, r: Refusal) -> Outcome {
        self.state = match r {
            Refusal::Fenced { .. } => VolumeState::Fenced,
            _ => VolumeState::Refused,
        };
        self.refusal = Some(r);
        self
    }
}

mod doubt;
mod exec;
mod identity;
mod io;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_refusal_names_the_attachment() {
        let a = Authorization {
            attachment: AttachmentId("uid-7".into()),
            read_at: SystemTime::now(),
            notes: Vec::new(),
            confirm: None,
        };
        let r = fenced(&a);
        assert!(r.to_string().contains("uid-7"), "{r}");
    }
}
