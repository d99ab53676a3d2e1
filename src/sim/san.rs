//! The simulated SAN: one strict [`Lun`] shared by several nodes, each node's
//! device paths mapped to its own I_T nexuses, and a deterministic scheduler
//! that decides, command by command, whose SCSI command runs next and what
//! fault (if any) it meets.
//!
//! Every engine operation runs on a thread of its own ("actor"). An actor
//! that sends a command blocks until the scheduler picks it; the scheduler
//! only picks once every actor is blocked or finished, so the order of
//! commands is a pure function of the seed: a failing schedule replays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::lun::{Lun, Nexus};
use crate::fence::clock::Clock;
use crate::scsi::{Command, ScsiStatus};
use crate::transport::{Completion, HostStatus, ScsiError, Transport};

/// Virtual time: advanced by the scheduler, never by the machine.
#[derive(Debug, Default)]
pub struct SimClock {
    nanos: AtomicU64,
}

/// Where virtual wall time starts (any fixed instant does).
const EPOCH_SECS: u64 = 1_800_000_000;

impl SimClock {
    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS) + self.mono()
    }

    fn mono(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// One node's path: the nexus it reaches and whether it is up.
#[derive(Debug, Clone)]
pub struct PathSlot {
    /// The I_T nexus.
    pub nexus: Nexus,
    /// The device number the node sees for it.
    pub devnum: u64,
    /// False: commands fail with DID_NO_CONNECT and never reach the LUN.
    pub up: bool,
}

/// A command waiting for its turn.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Ticket that the actor waits on.
    pub ticket: u64,
    /// The node that sent it.
    pub node: String,
    /// The device path.
    pub path: PathBuf,
    /// The command.
    pub cmd: Command,
}

/// What the scheduler does with the command it picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Executed, answered.
    Deliver,
    /// The caller sees a timeout; the command lands later (before the
    /// node's next command: a SCSI abort completes before SG_IO returns).
    LateLanding,
    /// The caller sees a timeout; the command never lands.
    Lost,
    /// The path is down for this command (DID_NO_CONNECT), nothing sent.
    PathDown,
    /// BUSY status, nothing executed.
    Busy,
    /// The node's daemon crashes right before this command: nothing more of
    /// this operation reaches the LUN, and its state-store writes after this
    /// point are undone by the harness.
    Crash,
}

#[derive(Default)]
struct Inner {
    luns: Option<Lun>,
    paths: BTreeMap<(String, PathBuf), PathSlot>,
    pending: Vec<Pending>,
    running: usize,
    answers: HashMap<u64, Result<Completion, ScsiError>>,
    next_ticket: u64,
    crashed: BTreeSet<String>,
    /// Commands whose answer is lost: they land at a moment the scheduler
    /// picks, and only then does the sender learn of a timeout.
    late: Vec<(u64, String, Nexus, Command)>,
    log: Vec<String>,
    /// Nodes whose PREEMPT succeeded since the harness last asked.
    preempts: Vec<String>,
    resets: u32,
    /// Nodes for which a reset's unit attention (29/xx) went with an answer
    /// that never came back: the ground truth that excuses a node which
    /// could not tell that reset from a preemption.
    swallowed: BTreeSet<String>,
    /// Whether each node held the reservation right after its last command
    /// was answered: an acquire that returns Held must have held it then
    /// (what happens afterwards, a reset or a preemption, is the next
    /// operation's to find).
    held_after: HashMap<String, bool>,
}

/// The SAN shared by every node of a simulation.
pub struct San {
    inner: Mutex<Inner>,
    cv: Condvar,
    /// The virtual clock every node's engine reads.
    pub clock: Arc<SimClock>,
}

/// Virtual time one command takes.
pub const STEP: Duration = Duration::from_millis(5);

impl San {
    /// A SAN holding `lun`.
    pub fn new(lun: Lun) -> Arc<San> {
        Arc::new(San {
            inner: Mutex::new(Inner {
                luns: Some(lun),
                ..Default::default()
            }),
            cv: Condvar::new(),
            clock: Arc::new(SimClock::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking actor must not hide the trace: take the state anyway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps a node's device path to a nexus.
    pub fn add_path(&self, node: &str, dev: &Path, nexus: Nexus, devnum: u64) {
        self.lock().paths.insert(
            (node.to_string(), dev.to_path_buf()),
            PathSlot {
                nexus,
                devnum,
                up: true,
            },
        );
    }

    /// Every nexus of a node.
    pub fn nexuses_of(&self, node: &str) -> Vec<Nexus> {
        self.lock()
            .paths
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, s)| s.nexus.clone())
            .collect()
    }

    /// Runs `f` on the LUN (for invariant checks and setup).
    pub fn with_lun<R>(&self, f: impl FnOnce(&mut Lun) -> R) -> R {
        let mut g = self.lock();
        let lun = g.luns.as_mut().expect("the SAN always holds its LUN");
        f(lun)
    }

    /// May this node write through any of its paths now?
    pub fn node_may_write(&self, node: &str) -> bool {
        let nexuses = self.nexuses_of(node);
        self.with_lun(|l| nexuses.iter().any(|n| l.may_write(n)))
    }

    /// Sets a path up or down.
    pub fn set_path_up(&self, node: &str, dev: &Path, up: bool) {
        if let Some(s) = self
            .lock()
            .paths
            .get_mut(&(node.to_string(), dev.to_path_buf()))
        {
            s.up = up;
        }
    }

    /// Gives a node's device path a new device number (a name reused by
    /// another device, as far as the number tells).
    pub fn renumber(&self, node: &str, dev: &Path, devnum: u64) {
        if let Some(s) = self
            .lock()
            .paths
            .get_mut(&(node.to_string(), dev.to_path_buf()))
        {
            s.devnum = devnum;
        }
    }

    /// Ends a crash: the node's next operation talks to the LUN again.
    pub fn restart(&self, node: &str) {
        self.lock().crashed.remove(node);
    }

    /// The log of executed commands and faults.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// How many lines the log has.
    pub fn log_len(&self) -> usize {
        self.lock().log.len()
    }

    /// A reset's unit attention to `node` came back on an answer that was
    /// lost (since [`San::forget_swallowed`]).
    pub fn swallowed_reset(&self, node: &str) -> bool {
        self.lock().swallowed.contains(node)
    }

    /// Notes that a reset's unit attention to `node` was consumed where its
    /// engine cannot see it (Windows' class driver retries it away).
    pub fn note_swallowed_reset(&self, node: &str) {
        self.lock().swallowed.insert(node.to_string());
    }

    /// Forgets [`San::swallowed_reset`] for `node` (it has held since).
    pub fn forget_swallowed(&self, node: &str) {
        self.lock().swallowed.remove(node);
    }

    /// The nodes whose PREEMPT (AND ABORT) succeeded since the last call.
    pub fn take_preempts(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().preempts)
    }

    /// A target reset / power loss, now.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.resets += 1;
        g.log.push("target reset / power loss".into());
        if let Some(l) = g.luns.as_mut() {
            l.reset();
        }
    }

    /// How many resets there were.
    pub fn resets(&self) -> u32 {
        self.lock().resets
    }

    /// Appends a line to the log.
    pub fn note(&self, line: String) {
        self.lock().log.push(line);
    }

    /// An actor is about to start (call before spawning its thread).
    pub fn actor_started(&self) {
        self.lock().running += 1;
    }

    /// An actor hands its place to `n` jobs that run at once.
    pub fn forked(&self, n: usize) {
        let mut g = self.lock();
        g.running += n - 1;
    }

    /// An actor finished.
    pub fn actor_finished(&self) {
        let mut g = self.lock();
        g.running -= 1;
        self.cv.notify_all();
    }

    /// Waits until every actor is blocked on a command or finished, and
    /// returns the commands waiting, by node: the order in which threads
    /// reached the SAN is the machine's, never part of the schedule.
    pub fn quiesce(&self) -> Vec<Pending> {
        let mut g = self.lock();
        while g.running > 0 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        let mut v = g.pending.clone();
        v.sort_by(|a, b| (&a.node, &a.path).cmp(&(&b.node, &b.path)));
        v
    }

    /// Runs the waiting command `ticket` with `fate`; the actor resumes.
    pub fn run(&self, ticket: u64, fate: Fate) {
        let mut g = self.lock();
        let Some(i) = g.pending.iter().position(|p| p.ticket == ticket) else {
            return;
        };
        let p = g.pending.remove(i);
        self.clock.advance(STEP);
        let answer = Self::apply(&mut g, &p, fate);
        Self::note_held(&mut g, &p.node);
        let Some(answer) = answer else {
            return;
        };
        g.answers.insert(ticket, answer);
        // Counted as running again now, so the next quiesce waits for it.
        g.running += 1;
        self.cv.notify_all();
    }

    /// Lands one command whose answer was lost, and lets its sender see the
    /// timeout: SG_IO returns only after the abort, so the command lands
    /// (or not) before its sender goes on, while other nodes may go on.
    pub fn land_one_late(&self, pick: usize) -> bool {
        let mut g = self.lock();
        if g.late.is_empty() {
            return false;
        }
        let i = pick % g.late.len();
        let (ticket, node, nexus, cmd) = g.late.remove(i);
        self.clock.advance(STEP);
        let done = Self::land(&mut g, &node, &nexus, &cmd, "late");
        Self::note_held(&mut g, &node);
        let sense = crate::scsi::Sense::parse(&done.sense).ok();
        if !done.sense.is_empty() && sense.is_some_and(|s| s.is_unit_attention() && s.asc == 0x29) {
            g.swallowed.insert(node);
        }
        g.answers.insert(ticket, Ok(host(HostStatus::TimeOut)));
        g.running += 1;
        self.cv.notify_all();
        true
    }

    /// Commands waiting to land late.
    pub fn late_count(&self) -> usize {
        self.lock().late.len()
    }

    fn note_held(g: &mut Inner, node: &str) {
        let held = g.luns.as_ref().is_some_and(|l| {
            g.paths
                .iter()
                .filter(|((n, _), _)| n == node)
                .any(|(_, slot)| l.is_holder(&slot.nexus))
        });
        g.held_after.insert(node.to_string(), held);
    }

    /// Whether `node` held the reservation right after its last command.
    pub fn held_after_last(&self, node: &str) -> bool {
        self.lock().held_after.get(node).copied().unwrap_or(false)
    }

    fn land(g: &mut Inner, node: &str, nexus: &Nexus, cmd: &Command, how: &str) -> Completion {
        let lun = g.luns.as_mut().expect("the SAN always holds its LUN");
        let done = lun.execute(nexus, cmd);
        let preempt = cmd.cdb.opcode() == crate::scsi::prout::OPCODE
            && matches!(cmd.cdb.as_bytes()[1] & 0x1f, 4 | 5)
            && done.status == ScsiStatus::Good;
        if preempt {
            g.preempts.push(node.to_string());
        }
        let line = format!(
            "{node} {} {how}: {}{} -> {:?}{} gen={}",
            port_name(nexus),
            cmd.name,
            prout_keys(cmd),
            done.status,
            sense_words(&done),
            lun.generation()
        );
        g.log.push(line);
        done
    }

    /// The answer, or `None` while the command waits to land late.
    fn apply(g: &mut Inner, p: &Pending, fate: Fate) -> Option<Result<Completion, ScsiError>> {
        let Some(slot) = g.paths.get(&(p.node.clone(), p.path.clone())).cloned() else {
            return Some(Err(no_device(&p.path)));
        };
        let fate = if slot.up { fate } else { Fate::PathDown };
        Some(match fate {
            Fate::Deliver => Ok(Self::land(g, &p.node, &slot.nexus, &p.cmd, "ran")),
            Fate::LateLanding => {
                fault(g, p, &slot, "answer lost (lands later, then times out)");
                g.late
                    .push((p.ticket, p.node.clone(), slot.nexus, p.cmd.clone()));
                return None;
            }
            Fate::Lost => {
                fault(g, p, &slot, "timeout (lost)");
                Ok(host(HostStatus::TimeOut))
            }
            Fate::PathDown => {
                fault(g, p, &slot, "path down");
                Ok(host(HostStatus::NoConnect))
            }
            Fate::Busy => {
                fault(g, p, &slot, "BUSY");
                Ok(Completion::with_status(ScsiStatus::Busy))
            }
            Fate::Crash => {
                g.log
                    .push(format!("{} CRASH before {}", p.node, p.cmd.name));
                g.crashed.insert(p.node.clone());
                Err(crashed(&p.path))
            }
        })
    }

    fn submit(&self, node: &str, path: &Path, cmd: &Command) -> Result<Completion, ScsiError> {
        let mut g = self.lock();
        if g.crashed.contains(node) {
            return Err(crashed(path));
        }
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.pending.push(Pending {
            ticket,
            node: node.to_string(),
            path: path.to_path_buf(),
            cmd: cmd.clone(),
        });
        g.running -= 1;
        self.cv.notify_all();
        loop {
            if let Some(a) = g.answers.remove(&ticket) {
                return a;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn devnum(&self, node: &str, path: &Path) -> Option<u64> {
        self.lock()
            .paths
            .get(&(node.to_string(), path.to_path_buf()))
            .map(|s| s.devnum)
    }
}

/// Logs a fault met by a command that never reached the LUN (or whose answer did not come back).
fn fault(g: &mut Inner, p: &Pending, slot: &PathSlot, what: &str) {
    g.log.push(format!(
        "{} {} {what}: {}",
        p.node,
        port_name(&slot.nexus),
        p.cmd.name
    ));
}

fn host(h: HostStatus) -> Completion {
    Completion {
        host_status: h,
        ..Completion::good(Vec::new())
    }
}

fn no_device(path: &Path) -> ScsiError {
    ScsiError::NotFound {
        device: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

fn crashed(path: &Path) -> ScsiError {
    ScsiError::NotFound {
        device: path.to_path_buf(),
        source: std::io::Error::other("the daemon crashed (simulation)"),
    }
}

fn port_name(n: &Nexus) -> String {
    match &n.initiator {
        crate::scsi::TransportId::Iscsi { isid, .. } => {
            format!("i{}>t{}", isid.as_deref().unwrap_or("?"), n.target_port)
        }
        other => format!("{other}>t{}", n.target_port),
    }
}

/// A PR OUT's keys, so an unregister (SARK 0) reads as one.
fn prout_keys(cmd: &Command) -> String {
    let crate::scsi::DataTransfer::ToDevice(list) = &cmd.data else {
        return String::new();
    };
    match crate::scsi::prout::parse(cmd.cdb.as_bytes(), list) {
        Ok(p) => {
            let b = list;
            let key = |o: usize| {
                b.get(o..o + 8)
                    .map(|k| u64::from_be_bytes(k.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0)
            };
            format!(" [{:?} key {:x} sark {:x}]", p.action(), key(0), key(8))
        }
        Err(_) => String::new(),
    }
}

fn sense_words(c: &Completion) -> String {
    match crate::scsi::Sense::parse(&c.sense) {
        Ok(s) if !c.sense.is_empty() => format!(" {:02X}/{:02X}", s.asc, s.ascq),
        _ => String::new(),
    }
}

/// One node's view of the SAN: a [`Transport`] whose commands wait for the
/// scheduler.
#[derive(Clone)]
pub struct NodeTransport {
    /// The node.
    pub node: String,
    /// The SAN.
    pub san: Arc<San>,
}

impl Transport for NodeTransport {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        _timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        self.san.submit(&self.node, path, cmd)
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        self.san.devnum(&self.node, path)
    }

    fn replays_registrations(&self) -> bool {
        false
    }

    /// Each job on a thread of its own, counted by the scheduler like an
    /// actor: the scheduler picks only once every one of them is blocked on
    /// a command or finished, and the actor that waits for them counts
    /// again only once the last has finished, so the order of commands
    /// stays a function of the seed.
    fn at_once<'a, R: Send + 'a>(&self, jobs: Vec<crate::transport::Job<'a, R>>) -> Vec<R> {
        if jobs.len() < 2 {
            return jobs.into_iter().map(|j| j()).collect();
        }
        let left = AtomicU64::new(jobs.len() as u64);
        // The jobs run from now on, the actor waiting for them does not.
        self.san.forked(jobs.len());
        std::thread::scope(|s| {
            let running: Vec<_> = jobs
                .into_iter()
                .map(|j| {
                    let left = &left;
                    s.spawn(move || {
                        let r = j();
                        // The last job's count goes back to the actor.
                        if left.fetch_sub(1, Ordering::SeqCst) > 1 {
                            self.san.actor_finished();
                        }
                        r
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }
}
