//! The deterministic multi-node simulation: several nodes, each the real
//! [`Engine`] over its own sysfs fixture and state store, sharing one strict
//! LUN through the [`San`]; a control-plane model that moves attachments;
//! and the safety properties checked after every SCSI command.
//!
//! - **S1** no two writers: for a single-node volume, never two settled
//!   nodes that believe they hold it and can both write; when an acquire
//!   returns Held, no settled node without a live attachment can write.
//! - **S2** (I1): a node fenced under attachment X never regains write
//!   access under X once its operation has ended.
//! - **S3** no false fence: a node with a live attachment is never
//!   preempted and never reports Fenced without having been preempted.
//! - **S4** (I2): foreign keys are never removed (live keys: S3).
//! - **S5** convergence: with faults off and attachments stable, a few
//!   rounds of the reconciler's operations bring the LUN to the attached
//!   node(s), and fenced nodes know it.
//!
//! "Settled" means the node has no operation in flight: inside one, a
//! REGISTER for a new path that raced with a preemption can land before the
//! read-back that undoes it (SPC has no conditional registration of a new
//! I_T nexus); the properties hold at every point a node's operation is not
//! running, and a crashed operation is followed by the restart check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::lun::{Lun, Nexus, Profile};
use super::san::{Fate, NodeTransport, Pending, San};
use super::windows::SimMpio;
use crate::device::{Resolver, Sysfs};
use crate::fence::engine::{
    Authorization, Engine, EngineConfig, FenceError, Outcome, Volume, VolumeState,
};
use crate::fence::keys::ClusterTag;
use crate::fence::policy::{AccessMode, Policy};
use crate::fence::state::{AttachmentId, StateStore};
use crate::scsi::{BasicParams, PrOut, ReservationKey, Wwid};
use crate::transport::windows::{Disks, IoctlTransport};
use crate::transport::RetryPolicy;

/// The LUN's NAA designator.
pub const NAA: [u8; 8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0x51];
/// This cluster's tag.
pub const TAG: u16 = 0x5157;
/// The engines' operation deadline (the daemon's default operation timeout).
const DEADLINE: Duration = Duration::from_secs(60);
/// The initiator name of a node.
pub fn initiator(node: &str) -> String {
    format!("iqn.2026-12.sim:{node}")
}

/// A small deterministic generator (splitmix64): no dependency, same
/// sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u32) -> bool {
        self.next_u64() % 100 < u64::from(p)
    }
}

/// Which system the nodes run: how their engines reach the LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// SG_IO on each path device, found through sysfs and a dm map.
    Linux,
    /// The class driver's PR IOCTLs on one disk over MPIO ([`SimMpio`]).
    Windows,
}

/// A node's engine, over either system's way to the LUN.
pub enum NodeEngine {
    /// Per-path SCSI commands.
    Linux(Engine<NodeTransport>),
    /// IOCTLs on the one disk.
    Windows(Engine<IoctlTransport<SimMpio>>),
}

impl NodeEngine {
    fn acquire(
        &self,
        vol: &Volume,
        auth: &Authorization,
        live: &BTreeSet<String>,
    ) -> Result<Outcome, FenceError> {
        match self {
            NodeEngine::Linux(e) => e.acquire(vol, auth, live),
            NodeEngine::Windows(e) => e.acquire(vol, auth, live),
        }
    }

    fn release(&self, vol: &Volume) -> Result<Outcome, FenceError> {
        match self {
            NodeEngine::Linux(e) => e.release(vol),
            NodeEngine::Windows(e) => e.release(vol),
        }
    }

    fn check(&self, vol: &Volume, live: &BTreeSet<String>) -> Result<Outcome, FenceError> {
        match self {
            NodeEngine::Linux(e) => e.check(vol, live),
            NodeEngine::Windows(e) => e.check(vol, live),
        }
    }
}

/// An engine operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Acquire under the node's live attachment (read at the start).
    Acquire,
    /// Release.
    Release,
    /// Check (the monitor).
    Check,
}

/// What one node believes (what its pods act on).
#[derive(Debug, Clone, Default)]
pub struct Belief {
    /// Its last word was Held: its pods write.
    pub holds: bool,
    /// Under which attachment.
    pub under: Option<AttachmentId>,
}

/// One simulated node.
pub struct SimNode {
    /// Its name.
    pub name: String,
    /// Its key.
    pub key: ReservationKey,
    dir: PathBuf,
    /// A Windows node's disk: the DSM lives in the kernel and outlives
    /// daemon restarts.
    mpio: Option<Arc<SimMpio>>,
    engine: Arc<NodeEngine>,
    /// What it believes.
    pub belief: Belief,
    /// Model view: another node removed its registrations while it was
    /// attached (or believed it held) under this attachment.
    pub fenced_under: Option<AttachmentId>,
    in_flight: bool,
    /// Its last operation ended saying it holds nothing (Fenced or
    /// NotRegistered), and none has started since.
    settled_without_key: bool,
    /// Its engine's operation deadline.
    deadline: Duration,
    /// Crashed, its restart check not run yet.
    down: bool,
    /// Its last operation could not remove all it had to (a path failed).
    cleanup: bool,
    /// Fenced under this attachment for want of evidence that the SAN
    /// confirms was lost (see `collect`).
    excused_under: Option<AttachmentId>,
    was_registered: bool,
}

/// Faults the scheduler may inject, in percent per command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Timeout to the caller, the command lands later.
    pub late: u32,
    /// Timeout, the command never lands.
    pub lost: u32,
    /// Path down for this command.
    pub path_down: u32,
    /// BUSY.
    pub busy: u32,
    /// The daemon crashes before this command.
    pub crash: u32,
    /// A target reset before this command.
    pub reset: u32,
    /// Virtual time jumps past every deadline and authorization.
    pub stall: u32,
    /// A path of a Windows node comes back and its MPIO DSM registers the
    /// key it keeps, on a node whose daemon has settled on holding nothing
    /// (its last operation said Fenced or NotRegistered).
    pub path_back: u32,
}

impl Faults {
    /// Every fault, at rates that still let operations finish.
    pub const ALL: Faults = Faults {
        late: 3,
        lost: 2,
        path_down: 3,
        busy: 2,
        crash: 2,
        reset: 1,
        stall: 1,
        path_back: 10,
    };
}

/// Picks the next command to run among the waiting ones, and its fate.
pub type Chooser<'a> = dyn FnMut(&mut Sim, &[Pending]) -> (usize, Fate) + 'a;

/// The result of one finished operation.
#[derive(Debug)]
pub struct Finished {
    /// Node index.
    pub node: usize,
    /// Which operation.
    pub kind: OpKind,
    /// What the engine returned (errors in words).
    pub result: Result<Outcome, String>,
    /// Its daemon crashed during it.
    pub crashed: bool,
}

/// A whole simulated cluster around one LUN.
pub struct Sim {
    /// The SAN.
    pub san: Arc<San>,
    /// The nodes.
    pub nodes: Vec<SimNode>,
    /// The volume (as every node sees it).
    pub volume: Volume,
    /// Live attachments: node -> attachment.
    pub live: BTreeMap<String, AttachmentId>,
    next_uid: u64,
    /// Violations found, with the step they were found at.
    pub violations: Vec<String>,
    /// Faults injected by [`Sim::run`]'s scheduler.
    pub faults: Faults,
    /// The schedule's generator.
    pub rng: Rng,
    /// Trace the nodes' state records too (for replaying one seed).
    pub verbose: bool,
    done: Arc<Mutex<Vec<Finished>>>,
    foreign: Nexus,
    steps: u64,
    root: PathBuf,
}

impl Sim {
    /// `n` Linux nodes on a LUN of `profile`, one foreign registration on it.
    pub fn new(seed: u64, n: usize, profile: Profile, access: AccessMode) -> Sim {
        Sim::on(Os::Linux, seed, n, profile, access)
    }

    /// `n` nodes of `os` on a LUN of `profile`, one foreign registration on it.
    pub fn on(os: Os, seed: u64, n: usize, profile: Profile, access: AccessMode) -> Sim {
        let lun = Lun::new(NAA.to_vec(), &[1, 2], profile);
        let san = San::new(lun);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let root = scratch().join(format!(
            "sim-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let wwid = Wwid::Naa(NAA.to_vec());
        let nodes = (0..n)
            .map(|i| {
                SimNode::new(
                    &root,
                    &format!("node-{}", (b'a' + i as u8) as char),
                    &san,
                    i,
                    os,
                )
            })
            .collect();
        let foreign = Nexus::iscsi("iqn.2026-12.other:cluster", "00023d000009", 1);
        let mut sim = Sim {
            san,
            nodes,
            volume: Volume {
                name: "pv-sim".into(),
                wwid,
                device: None,
                access,
                policy: Policy::default(),
            },
            live: BTreeMap::new(),
            next_uid: 1,
            violations: Vec::new(),
            faults: Faults::default(),
            rng: Rng::new(seed),
            verbose: false,
            done: Arc::new(Mutex::new(Vec::new())),
            foreign,
            steps: 0,
            root,
        };
        sim.register_foreign();
        sim
    }

    fn register_foreign(&mut self) {
        let key = ClusterTag::new(0x0f0f)
            .map(|t| t.key_for("elsewhere"))
            .unwrap_or(ReservationKey(0x0f0f_0000_0000_0001));
        let cmd = PrOut::RegisterAndIgnore(BasicParams {
            sa_key: key,
            ..Default::default()
        })
        .command();
        let f = self.foreign.clone();
        self.san.with_lun(|l| l.execute(&f, &cmd));
    }

    /// Node index by name.
    pub fn idx(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or(usize::MAX)
    }

    /// Creates a new attachment of the volume to `node`.
    pub fn attach(&mut self, node: usize) -> AttachmentId {
        let id = AttachmentId(format!("va-{}", self.next_uid));
        self.next_uid += 1;
        let name = self.nodes[node].name.clone();
        self.san.note(format!("plane: attach {name} as {id}"));
        self.live.insert(name, id.clone());
        id
    }

    /// Deletes the node's attachment (a detach, or a force-detach).
    pub fn detach(&mut self, node: usize) {
        let name = self.nodes[node].name.clone();
        self.san.note(format!("plane: detach {name}"));
        self.live.remove(&name);
    }

    /// Runs the operations concurrently, the seeded scheduler choosing each
    /// command and its fate; returns what they returned.
    pub fn run(&mut self, ops: &[(usize, OpKind)]) -> Vec<Finished> {
        let faults = self.faults;
        self.run_with(ops, &mut |sim: &mut Sim, pending: &[Pending]| {
            let i = sim.rng.below(pending.len());
            (i, sim.fate(faults))
        })
    }

    fn fate(&mut self, f: Faults) -> Fate {
        let roll = self.rng.below(100) as u32;
        let table = [
            (f.late, Fate::LateLanding),
            (f.lost, Fate::Lost),
            (f.path_down, Fate::PathDown),
            (f.busy, Fate::Busy),
            (f.crash, Fate::Crash),
        ];
        let mut acc = 0;
        for (p, fate) in table {
            acc += p;
            if roll < acc {
                return fate;
            }
        }
        Fate::Deliver
    }

    /// Like [`Sim::run`], with the caller choosing each command's turn and fate.
    pub fn run_with(&mut self, ops: &[(usize, OpKind)], choose: &mut Chooser<'_>) -> Vec<Finished> {
        let mut snapshots: BTreeMap<usize, Option<Vec<u8>>> = BTreeMap::new();
        for &(i, kind) in ops {
            self.spawn(i, kind);
        }
        let mut finished = Vec::new();
        loop {
            let pending = self.san.quiesce();
            finished.extend(self.collect());
            self.check("step");
            if pending.is_empty() {
                // Only commands waiting to land late: one lands now.
                let pick = self.rng.below(8);
                if self.san.land_one_late(pick) {
                    continue;
                }
                break;
            }
            self.events();
            let (pick, fate) = choose(self, &pending);
            let p = &pending[pick.min(pending.len() - 1)];
            if fate == Fate::Crash {
                let i = self.idx(&p.node);
                snapshots.insert(i, self.nodes[i].state_bytes());
                // Down until its restart check has run: a daemon that is not
                // running is judged by what it does when it comes back.
                self.nodes[i].down = true;
            }
            self.steps += 1;
            self.san.run(p.ticket, fate);
        }
        let restarts: Vec<usize> = snapshots.keys().copied().collect();
        for (i, snap) in snapshots {
            self.nodes[i].restart(snap, &self.san);
            for f in finished.iter_mut().filter(|f| f.node == i) {
                f.crashed = true;
            }
        }
        for i in restarts {
            // The daemon comes back and checks what it held first.
            let again = self.run_with(&[(i, OpKind::Check)], choose);
            finished.extend(again);
        }
        finished
    }

    fn events(&mut self) {
        let f = self.faults;
        if f.reset > 0 && self.rng.percent(f.reset) {
            self.reset();
        }
        if f.stall > 0 && self.rng.percent(f.stall) {
            self.san.note("stall: virtual time +120 s".into());
            self.san.clock.advance(Duration::from_secs(120));
        }
        if f.late > 0 && self.rng.percent(20) {
            let pick = self.rng.below(8);
            self.san.land_one_late(pick);
        }
        // Drawn only with Windows nodes: Linux schedules keep their seeds.
        let windows = self.nodes.iter().any(|n| n.mpio.is_some());
        if windows && f.path_back > 0 && self.rng.percent(f.path_back) {
            let i = self.rng.below(self.nodes.len());
            let path = self.rng.below(2);
            let n = &self.nodes[i];
            if n.settled_without_key && !n.in_flight && !n.down {
                let name = n.name.clone();
                let entitled = self.live.contains_key(&name) && n.fenced_under.is_none();
                if self.dsm_path_returns(i, path) && !entitled {
                    self.violation(format!(
                        "W1: {name}'s MPIO registered its key again on a returning path after {name} settled holding nothing, detached or fenced"
                    ));
                }
            }
        }
    }

    fn spawn(&mut self, i: usize, kind: OpKind) {
        let node = &mut self.nodes[i];
        node.in_flight = true;
        node.settled_without_key = false;
        let engine = Arc::clone(&node.engine);
        let vol = self.volume.clone();
        let live: BTreeSet<String> = self.live.keys().cloned().collect();
        let auth = self.live.get(&node.name).map(|a| Authorization {
            attachment: a.clone(),
            read_at: crate::fence::clock::Clock::wall(&*self.san.clock),
            notes: Vec::new(),
            confirm: None,
        });
        if kind == OpKind::Release {
            // A release runs on a confirmed detach: the node's pods are gone.
            node.belief.holds = false;
        }
        if let (OpKind::Acquire, Some(a)) = (kind, &auth) {
            // Registering under a new attachment is what I1 allows.
            if node.fenced_under.as_ref() != Some(&a.attachment) {
                node.fenced_under = None;
            }
            // Authorised again: what its pods do from here on is this
            // attachment's business, and the node believes it holds only
            // once this acquire says Held.
            if node.belief.under.as_ref() != Some(&a.attachment) {
                node.belief.holds = false;
            }
        }
        let done = Arc::clone(&self.done);
        let san = Arc::clone(&self.san);
        san.actor_started();
        self.san.note(format!("start {} {kind:?}", node.name));
        std::thread::spawn(move || {
            let r: Result<Outcome, FenceError> = match (kind, auth) {
                (OpKind::Acquire, Some(a)) => engine.acquire(&vol, &a, &live),
                (OpKind::Acquire, None) => Err(FenceError::Interrupted),
                (OpKind::Release, _) => engine.release(&vol),
                (OpKind::Check, _) => engine.check(&vol, &live),
            };
            if let Ok(mut d) = done.lock() {
                d.push(Finished {
                    node: i,
                    kind,
                    result: r.map_err(|e| e.to_string()),
                    crashed: false,
                });
            }
            san.actor_finished();
        });
    }

    /// Takes the finished operations and updates what their nodes believe.
    fn collect(&mut self) -> Vec<Finished> {
        let mut done: Vec<Finished> = self
            .done
            .lock()
            .map(|mut d| d.drain(..).collect())
            .unwrap_or_default();
        done.sort_by_key(|f| f.node);
        for f in &done {
            let under = self.live.get(&self.nodes[f.node].name).cloned();
            let n = &mut self.nodes[f.node];
            n.in_flight = n.down;
            let rec = if self.verbose {
                let r = std::fs::read_to_string(n.state_file()).unwrap_or_default();
                format!(" | {}", r.split_whitespace().collect::<Vec<_>>().join(" "))
            } else {
                String::new()
            };
            let line = match &f.result {
                Ok(o) => format!(
                    "end {} {:?}: {:?} {}{rec}",
                    n.name,
                    f.kind,
                    o.state,
                    o.notes.join("; ")
                ),
                Err(e) => format!("end {} {:?}: error {e}", n.name, f.kind),
            };
            self.san.note(line);
            let Ok(o) = &f.result else {
                // The reconciler retries a failed operation soon; until one
                // completes, what the failure left (a REGISTER that landed
                // after a PREEMPT, its read-back lost) is unresolved, like
                // an operation in flight. S5 still demands it resolved.
                n.cleanup = true;
                continue;
            };
            // It knows, and its next operation (soon) finishes the job.
            n.cleanup = o.leftover;
            n.settled_without_key =
                !o.leftover && matches!(o.state, VolumeState::Fenced | VolumeState::NotRegistered);
            match (f.kind, o.state) {
                (OpKind::Acquire, VolumeState::Held) => {
                    n.belief = Belief {
                        holds: true,
                        under: under.clone(),
                    }
                }
                (_, VolumeState::Held) => {}
                (_, VolumeState::Registered) if self.volume.access == AccessMode::MultiNode => {}
                _ => n.belief.holds = false,
            }
            if o.state == VolumeState::Held {
                self.san.forget_swallowed(&n.name);
            }
            if o.state == VolumeState::Fenced {
                // A reset whose every unit attention to this node went with
                // a lost answer looks exactly like a preemption; the engine
                // takes the safe side and says so. Excused only where the SAN
                // confirms the attention really was swallowed.
                let silent = o.notes.iter().any(|x| x.contains("no path could tell"));
                if silent && self.san.swallowed_reset(&n.name) {
                    n.excused_under = under.clone();
                }
                // Fenced under the attachment that is live now, which no
                // other node ever preempted.
                let recorded = n.record_attachment(&self.volume);
                let live_same = under.is_some()
                    && recorded == under
                    && n.fenced_under.as_ref() != under.as_ref()
                    && n.excused_under.as_ref() != under.as_ref();
                if live_same {
                    let line = format!(
                        "S3: {} reported Fenced under a live attachment that nobody preempted",
                        n.name
                    );
                    self.violations.push(line);
                }
            }
            if f.kind == OpKind::Acquire && o.state == VolumeState::Held {
                self.check_held_by(f.node);
            }
        }
        done
    }

    /// S1b: when an acquire returns Held, no settled node without a live
    /// attachment can write.
    fn check_held_by(&mut self, holder: usize) {
        // Held must be true when the acquire's last command was answered: a
        // PREEMPT of a holder that released at the same moment returns GOOD
        // and creates no reservation (SPC-4), and the last registrant of an
        // all-registrants reservation leaving before our REGISTER lands
        // takes the reservation with it.
        let name = self.nodes[holder].name.clone();
        if !self.san.held_after_last(&name) {
            let state = self.lun_state();
            self.violations.push(format!(
                "S1: {name} returned Held, but did not hold the reservation when its last command was answered; LUN: {state}"
            ));
        }
        // As for S1: a power loss right after the acquire's last command
        // leaves no reservation at all, and SCSI fences nobody until it is
        // taken again.
        if self.san.with_lun(|l| l.reservation().is_none()) {
            return;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if i == holder || n.in_flight || self.live.contains_key(&n.name) {
                continue;
            }
            if self.san.node_may_write(&n.name) {
                let line = format!(
                    "S1: {} returned Held while {} (no live attachment) can write",
                    self.nodes[holder].name, n.name
                );
                self.violations.push(line);
            }
        }
    }

    /// The properties that must hold between any two commands.
    fn check(&mut self, at: &str) {
        self.track_preemptions();
        let single = self.volume.access == AccessMode::SingleNode;
        let writers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.in_flight && !n.cleanup && n.belief.holds)
            .filter(|n| self.san.node_may_write(&n.name))
            .map(|n| n.name.clone())
            .collect();
        // With no reservation at all (before the first acquire, after the
        // holder released, or after a power loss without APTPL) SCSI PR
        // fences nobody; the engine's part is to re-acquire (S5).
        let reserved = self.san.with_lun(|l| l.reservation().is_some());
        if single && reserved && writers.len() > 1 {
            let (line, state) = (self.san.log_len(), self.lun_state());
            self.violation(format!(
                "S1 at {at} (trace line {line}): {writers:?} all believe they hold and can write; LUN: {state}"
            ));
        }
        for n in &self.nodes {
            if n.in_flight || n.cleanup {
                continue;
            }
            if let (Some(f), Some(u)) = (&n.fenced_under, &n.belief.under) {
                // Registered again, not merely able to write: with no
                // reservation at all (everyone released) any node can write.
                let registered = !self
                    .san
                    .with_lun(|l| l.keys_of(&initiator(&n.name)))
                    .is_empty();
                if f == u && self.live.get(&n.name) != Some(u) && registered {
                    let line = format!(
                        "S2 at {at} (trace line {}): {} was fenced under {f} and is registered again under it",
                        self.san.log_len(),
                        n.name
                    );
                    self.violations.push(line);
                }
            }
        }
        let foreign = self.foreign.clone();
        if self.san.with_lun(|l| l.key_of(&foreign).is_none()) && !self.foreign_may_be_gone() {
            self.violation(format!("S4 at {at}: the foreign key was removed"));
        }
    }

    /// The LUN's registrations and reservation, in words.
    pub fn lun_state(&self) -> String {
        let (res, regs) = self.san.with_lun(|l| (l.reservation(), l.registrations()));
        let regs: Vec<String> = regs
            .iter()
            .map(|(n, k)| format!("{}>t{}={k}", who(n), n.target_port))
            .collect();
        let res = res
            .map(|(_, k, t)| format!("{k} type {}", t.code()))
            .unwrap_or_else(|| "none".into());
        format!("registrations [{}], reservation {res}", regs.join(", "))
    }

    fn foreign_may_be_gone(&self) -> bool {
        self.san.resets() > 0
    }

    fn violation(&mut self, v: String) {
        if !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }

    /// Marks nodes whose registrations another node's PREEMPT removed.
    fn track_preemptions(&mut self) {
        let preemptors = self.san.take_preempts();
        for i in 0..self.nodes.len() {
            let name = self.nodes[i].name.clone();
            let registered = self.registrations_of(i) > 0;
            let by_other = preemptors.iter().any(|p| p != &name);
            let n = &mut self.nodes[i];
            if by_other && n.was_registered && !registered {
                let under = self.live.get(&name).cloned().or(n.belief.under.clone());
                if let Some(u) = self.live.get(&name) {
                    let line = format!(
                        "S3 (trace line {}): {name} was preempted while its attachment {u} is live",
                        self.san.log_len()
                    );
                    self.violations.push(line);
                }
                n.fenced_under = under;
            }
            n.was_registered = registered;
        }
    }

    /// S5: with faults off, the reconciler's operations for the current
    /// attachments converge within a few rounds.
    pub fn converge(&mut self) {
        self.faults = Faults::default();
        for _ in 0..3 {
            let ops: Vec<(usize, OpKind)> = (0..self.nodes.len())
                .map(|i| {
                    let n = &self.nodes[i];
                    let kind = match (self.live.contains_key(&n.name), n.belief.holds) {
                        (true, true) => OpKind::Check,
                        (true, false) => OpKind::Acquire,
                        (false, _) => OpKind::Release,
                    };
                    (i, kind)
                })
                .collect();
            self.run(&ops);
        }
        let holder_ok = self.converged();
        if let Err(why) = holder_ok {
            self.violation(format!("S5: not converged: {why}"));
        }
    }

    fn converged(&self) -> Result<(), String> {
        let (res, regs) = self.san.with_lun(|l| (l.reservation(), l.registrations()));
        for n in &self.nodes {
            let registered = regs.iter().any(|(x, _)| nexus_of(x, &n.name));
            let attached = self.live.contains_key(&n.name);
            let excused =
                n.excused_under.is_some() && n.excused_under.as_ref() == self.live.get(&n.name);
            if attached && !registered && !excused {
                return Err(format!("{} is attached but not registered", n.name));
            }
            if !attached && registered {
                return Err(format!("{} is not attached but still registered", n.name));
            }
        }
        if self.volume.access == AccessMode::SingleNode {
            let excused = |h: &String| {
                let n = &self.nodes[self.idx(h)];
                n.excused_under.is_some() && n.excused_under.as_ref() == self.live.get(h)
            };
            if let Some(holder) = self.live.keys().next().filter(|h| !excused(h)) {
                let key = self.nodes[self.idx(holder)].key;
                if res.as_ref().map(|r| r.1) != Some(key) {
                    return Err(format!(
                        "{holder} is attached but the reservation is {res:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every node's engine with another operation deadline (a new engine,
    /// as after a restart with another setting).
    pub fn set_operation_deadline(&mut self, d: Duration) {
        for n in &mut self.nodes {
            n.deadline = d;
            n.engine = Arc::new(make_engine(&n.name, &n.dir, &self.san, d, n.mpio.clone()));
        }
    }

    /// A target reset / power loss now.
    pub fn reset(&self) {
        self.san.reset();
    }

    /// How many registrations carry node `i`'s key.
    pub fn registrations_of(&self, i: usize) -> usize {
        let name = initiator(&self.nodes[i].name);
        self.san.with_lun(|l| l.keys_of(&name).len())
    }

    /// The key Windows node `i`'s MPIO DSM keeps (and would register on a
    /// path that comes back); `None` for a Linux node.
    pub fn dsm_saved_key(&self, i: usize) -> Option<ReservationKey> {
        let k = self.nodes[i].mpio.as_ref()?.saved_key()?;
        Some(ReservationKey(u64::from_be_bytes(k)))
    }

    /// A path of Windows node `i` comes back and its DSM registers the key
    /// it keeps, between commands. True if it registered.
    pub fn dsm_path_returns(&mut self, i: usize, path: usize) -> bool {
        self.nodes[i]
            .mpio
            .as_ref()
            .is_some_and(|m| m.path_returns(path))
    }

    /// May node `i` write through any of its paths now?
    pub fn may_write(&self, i: usize) -> bool {
        self.san.node_may_write(&self.nodes[i].name)
    }

    /// The key holding the reservation, if any.
    pub fn holder(&self) -> Option<ReservationKey> {
        self.san.with_lun(|l| l.reservation().map(|r| r.1))
    }

    /// The trace of the schedule so far.
    pub fn trace(&self) -> String {
        self.san.log().join("\n")
    }
}

fn who(n: &Nexus) -> String {
    match &n.initiator {
        crate::scsi::TransportId::Iscsi { name, isid } => format!(
            "{}/{}",
            name.rsplit(':').next().unwrap_or(name),
            isid.as_deref().unwrap_or("?")
        ),
        other => other.to_string(),
    }
}

fn nexus_of(n: &Nexus, node: &str) -> bool {
    matches!(&n.initiator, crate::scsi::TransportId::Iscsi { name, .. } if name == &initiator(node))
}

impl SimNode {
    fn new(root: &Path, name: &str, san: &Arc<San>, i: usize, os: Os) -> SimNode {
        let dir = root.join(name);
        for (k, dev) in ["sdc", "sdd"].iter().enumerate() {
            let session = k + 1;
            let nexus = Nexus::iscsi(
                &initiator(name),
                &format!("00023d{session:06x}"),
                session as u16,
            );
            let devnum = ((i as u64) << 16) | (k as u64 + 1);
            san.add_path(name, &Path::new("/dev").join(dev), nexus, devnum);
        }
        let mpio = (os == Os::Windows).then(|| {
            let paths = ["sdc", "sdd"].map(|d| Path::new("/dev").join(d)).to_vec();
            Arc::new(SimMpio::new(name, san, paths))
        });
        let tag = ClusterTag::new(TAG).expect("nonzero tag");
        SimNode {
            name: name.to_string(),
            key: tag.key_for(name),
            engine: Arc::new(make_engine(name, &dir, san, DEADLINE, mpio.clone())),
            mpio,
            deadline: DEADLINE,
            dir,
            belief: Belief::default(),
            fenced_under: None,
            in_flight: false,
            settled_without_key: false,
            down: false,
            cleanup: false,
            excused_under: None,
            was_registered: false,
        }
    }

    /// The attachment of the node's state record for the volume.
    fn record_attachment(&self, vol: &Volume) -> Option<AttachmentId> {
        StateStore::open(&self.dir.join("state"))
            .ok()?
            .get(&vol.wwid.to_string())
            .ok()
            .flatten()
            .map(|r| r.attachment)
    }

    /// The file of the LUN's record (the simulation has one LUN).
    fn state_file(&self) -> PathBuf {
        match StateStore::open(&self.dir.join("state")) {
            Ok(s) => s.file_of(&Wwid::Naa(NAA.to_vec()).to_string()),
            Err(_) => self.dir.join("state/unreadable"),
        }
    }

    fn state_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.state_file()).ok()
    }

    /// The daemon restarts: its state file as it was at the crash, a new
    /// engine (nothing cached), commands reach the LUN again.
    fn restart(&mut self, snap: Option<Vec<u8>>, san: &Arc<San>) {
        let _ = match snap {
            Some(b) => std::fs::write(self.state_file(), b),
            None => std::fs::remove_file(self.state_file()),
        };
        san.restart(&self.name);
        self.down = false;
        let rec = std::fs::read_to_string(self.state_file()).unwrap_or_default();
        san.note(format!(
            "restart {} with {}",
            self.name,
            rec.replace('\n', " ")
        ));
        self.engine = Arc::new(make_engine(
            &self.name,
            &self.dir,
            san,
            self.deadline,
            self.mpio.clone(),
        ));
    }
}

/// A node's engine, as its daemon would build it, on virtual time.
fn make_engine(
    name: &str,
    dir: &Path,
    san: &Arc<San>,
    deadline: Duration,
    mpio: Option<Arc<SimMpio>>,
) -> NodeEngine {
    let tag = ClusterTag::new(TAG).expect("nonzero tag");
    let mut cfg = EngineConfig::new(name, tag);
    cfg.operation_deadline = deadline;
    cfg.clock = san.clock.clone();
    cfg.retry = RetryPolicy {
        not_ready_delay: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let store = StateStore::open(&dir.join("state")).expect("state dir in the sim's scratch dir");
    let wwid = Wwid::Naa(NAA.to_vec());
    match mpio {
        None => NodeEngine::Linux(Engine::new(
            cfg,
            NodeTransport {
                node: name.to_string(),
                san: Arc::clone(san),
            },
            Resolver::new(Sysfs::new(sysfs_of(name, &wwid), "/dev"), "mpath-"),
            store,
        )),
        Some(disk) => NodeEngine::Windows(Engine::new(
            cfg,
            IoctlTransport::new(Arc::clone(&disk)),
            Disks::new(disk),
            store,
        )),
    }
}

/// Where the simulation keeps its files: tmpfs when there is one (the state
/// store syncs every write), one directory per process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("csi-fencer-sim-{}", std::process::id()))
    })
}

/// A node's sysfs fixture, built once per process and shared read-only by
/// every schedule.
fn sysfs_of(node: &str, wwid: &Wwid) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    let dir = scratch().join("sysfs").join(node);
    let built = BUILT.get_or_init(|| Mutex::new(BTreeSet::new()));
    if let Ok(mut b) = built.lock() {
        if b.insert(node.to_string()) {
            fixture(&dir, node, wwid);
        }
    }
    dir
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A node's sysfs: dm-0 (the LUN's map) over sdc (session1) and sdd (session2).
fn fixture(root: &Path, node: &str, wwid: &Wwid) {
    use std::fs;
    use std::os::unix::fs::symlink;
    let w = |p: PathBuf, s: &str| {
        if let Some(d) = p.parent() {
            let _ = fs::create_dir_all(d);
        }
        let _ = fs::write(p, s);
    };
    w(
        root.join("class/block/dm-0/dm/uuid"),
        &format!("mpath-{}", wwid.multipath_form()),
    );
    for (sd, n) in [("sdc", 1), ("sdd", 2)] {
        let dev = root.join(format!(
            "devices/platform/host{n}/session{n}/target{n}:0:0/{n}:0:0:0"
        ));
        w(dev.join("state"), "running\n");
        let _ = fs::create_dir_all(root.join(format!("class/block/dm-0/slaves/{sd}")));
        let _ = fs::create_dir_all(root.join(format!("class/block/{sd}")));
        let _ = symlink(&dev, root.join(format!("class/block/{sd}/device")));
        w(
            root.join(format!("class/iscsi_session/session{n}/initiatorname")),
            &initiator(node),
        );
    }
}
