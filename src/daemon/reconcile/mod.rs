//! The reconciler: level-triggered, one operation per volume at a time, many
//! volumes at once (bounded), every engine call on the blocking pool with a
//! timeout so a hung device never stalls other volumes (I6).
//!
//! What to do is a pure function of the source's snapshot and what this node
//! holds ([`plan`]); the driver only schedules it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::daemon::metrics::Metrics;
use crate::fence::engine::{Authorization, FenceError, Outcome, Volume, VolumeState};
use crate::fence::policy::AccessMode;
mod plan;
mod status;

pub use plan::{plan, Op};
use status::{now_secs, phase_of, summary};
pub use status::{Phase, Update, VolumeStatus};

/// The engine as the reconciler uses it (a fake in tests).
pub trait VolumeOps: Send + Sync + 'static {
    /// Takes the volume.
    fn acquire(
        &self,
        vol: &Volume,
        auth: &Authorization,
        live: &BTreeSet<String>,
    ) -> Result<Outcome, FenceError>;
    /// Gives it up.
    fn release(&self, vol: &Volume) -> Result<Outcome, FenceError>;
    /// Checks it.
    fn check(&self, vol: &Volume, live: &BTreeSet<String>) -> Result<Outcome, FenceError>;
}

impl<T: crate::transport::Transport + 'static> VolumeOps for crate::fence::engine::Engine<T> {
    fn acquire(
        &self,
        vol: &Volume,
        auth: &Authorization,
        live: &BTreeSet<String>,
    ) -> Result<Outcome, FenceError> {
        crate::fence::engine::Engine::acquire(self, vol, auth, live)
    }
    fn release(&self, vol: &Volume) -> Result<Outcome, FenceError> {
        crate::fence::engine::Engine::release(self, vol)
    }
    fn check(&self, vol: &Volume, live: &BTreeSet<String>) -> Result<Outcome, FenceError> {
        crate::fence::engine::Engine::check(self, vol, live)
    }
}

/// Why [`Authority::confirm`] stopped an operation.
#[derive(Debug, Clone)]
pub struct Denied {
    /// A short label for metrics and logs (`api_unreachable`, `not_attached`, ...).
    pub kind: &'static str,
    /// What was found, in words.
    pub message: String,
    /// The phase to report, or `None` to leave the volume's status alone.
    pub phase: Option<Phase>,
}

/// A boxed future, so [`Authority`] can be a trait object.
pub type Confirming<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Op, Denied>> + Send + 'a>>;

/// The attachment source's last word before an operation runs: a fresh read
/// authorises an acquire (I1) and names the live nodes (I2), and a release
/// goes ahead only on a confirmed detach (I4).
pub trait Authority: Send + Sync + 'static {
    /// The operation to run (its authorization and live set refreshed), or why not.
    fn confirm(&self, op: Op) -> Confirming<'_>;
    /// The `source` label of `csi_fencer_attachment_to_held_seconds`.
    fn source(&self) -> &'static str;
}

/// For sources whose snapshot is itself the fresh read (the file source).
pub struct Snapshot;

impl Authority for Snapshot {
    fn confirm(&self, op: Op) -> Confirming<'_> {
        Box::pin(std::future::ready(Ok(op)))
    }
    fn source(&self) -> &'static str {
        "file"
    }
}

/// Shared state of the reconciler.
pub struct Reconciler<F: VolumeOps> {
    fencer: Arc<F>,
    authority: Box<dyn Authority>,
    metrics: Arc<Metrics>,
    statuses: Mutex<BTreeMap<String, VolumeStatus>>,
    /// Volumes with an operation running, and the requested one to run next.
    busy: Mutex<BTreeMap<String, Option<Op>>>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    changes: tokio::sync::broadcast::Sender<Update>,
    retry: Retry,
    notices: crate::daemon::notice::Notices,
}

/// Failed operations come back soon, not at the next resync: the most
/// ordinary failover (the old node releasing while the new one acquires)
/// can fail once and succeed 200 ms later.
struct Retry {
    /// Each volume's next delay.
    delays: Mutex<BTreeMap<String, Duration>>,
    /// Wakes the daemon's loop to plan again.
    due: tokio::sync::Notify,
    /// The longest delay (the resync interval).
    max: Mutex<Duration>,
}

/// The first retry's delay; it doubles up to the resync interval.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The operation an update answers: its kind, and an acquire's attachment.
type Answers = (&'static str, Option<String>);

impl<F: VolumeOps> Reconciler<F> {
    /// A reconciler running at most `concurrency` operations at once, each bounded by `timeout`.
    pub fn new(
        fencer: Arc<F>,
        metrics: Arc<Metrics>,
        concurrency: usize,
        timeout: Duration,
    ) -> Arc<Self> {
        Self::with_authority(fencer, metrics, concurrency, timeout, Box::new(Snapshot))
    }

    /// Like [`Reconciler::new`], with every operation confirmed by `authority` first.
    pub fn with_authority(
        fencer: Arc<F>,
        metrics: Arc<Metrics>,
        concurrency: usize,
        timeout: Duration,
        authority: Box<dyn Authority>,
    ) -> Arc<Self> {
        Arc::new(Reconciler {
            fencer,
            authority,
            metrics,
            statuses: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(BTreeMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            timeout,
            changes: tokio::sync::broadcast::channel(256).0,
            retry: Retry {
                delays: Mutex::new(BTreeMap::new()),
                due: tokio::sync::Notify::new(),
                max: Mutex::new(Duration::from_secs(60)),
            },
            notices: crate::daemon::notice::Notices::default(),
        })
    }

    /// The longest delay between retries of a failing volume (the resync interval).
    pub fn set_max_retry_delay(&self, max: Duration) {
        if let Ok(mut m) = self.retry.max.lock() {
            *m = max.max(FIRST_RETRY);
        }
    }

    /// Resolves when a failed operation's retry is due: the daemon's loop
    /// then plans again (with a fresh read of its source).
    pub async fn retry_due(&self) {
        self.retry.due.notified().await
    }

    /// Schedules a retry of the volume's failed operation (200 ms, then
    /// doubling), or forgets its delay after a success.
    fn schedule_retry(self: &Arc<Self>, volume: &str, failed: bool) {
        let Ok(mut delays) = self.retry.delays.lock() else {
            return;
        };
        if !failed {
            delays.remove(volume);
            return;
        }
        let max = self.retry.max.lock().map(|m| *m).unwrap_or(FIRST_RETRY);
        let delay = delays.get(volume).copied().unwrap_or(FIRST_RETRY);
        delays.insert(volume.to_string(), (delay * 2).min(max));
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.retry.due.notify_one();
        });
    }

    /// The kernel's notices of conflicts on this node's paths.
    pub fn notices(&self) -> &crate::daemon::notice::Notices {
        &self.notices
    }

    /// Every volume's status.
    pub fn statuses(&self) -> BTreeMap<String, VolumeStatus> {
        self.statuses.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every status update from now on (`changed` marks phase changes).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Update> {
        self.changes.subscribe()
    }

    /// Starts every op whose volume is not busy; returns how many started.
    pub fn dispatch(self: &Arc<Self>, ops: Vec<Op>) -> usize {
        let mut started = 0;
        for op in ops {
            let claimed = self.busy.lock().is_ok_and(|mut b| {
                let free = !b.contains_key(op.volume());
                if free {
                    b.insert(op.volume().to_string(), None);
                }
                free
            });
            if claimed {
                started += 1;
                let me = Arc::clone(self);
                tokio::spawn(async move { me.run(op).await });
            }
        }
        started
    }

    /// Runs `op` now, or right after the operation running on its volume
    /// (replacing any request queued before it): for requests (gRPC) that
    /// must not be dropped because a monitor check happens to be running.
    pub fn submit(self: &Arc<Self>, op: Op) {
        let start = self
            .busy
            .lock()
            .is_ok_and(|mut b| match b.get_mut(op.volume()) {
                Some(queued) => {
                    *queued = Some(op.clone());
                    false
                }
                None => {
                    b.insert(op.volume().to_string(), None);
                    true
                }
            });
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run(op).await });
        }
    }

    /// The volume's operation ended: start the queued request, if any.
    fn finished(self: &Arc<Self>, name: &str) {
        let next = self.busy.lock().ok().and_then(|mut b| {
            let next = b.get_mut(name).and_then(Option::take);
            if next.is_none() {
                b.remove(name);
            }
            next
        });
        if let Some(op) = next {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run(op).await });
        }
    }

    async fn run(self: Arc<Self>, op: Op) {
        let name = op.volume().to_string();
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return;
        };
        let started = Instant::now();
        let op = match self.authority.confirm(op.clone()).await {
            Ok(op) => op,
            Err(d) => {
                self.denied(&op, d);
                self.finished(&name);
                self.schedule_retry(&name, matches!(op, Op::Acquire { .. }));
                return;
            }
        };
        let fencer = Arc::clone(&self.fencer);
        let job = op.clone();
        let mut handle = tokio::task::spawn_blocking(move || match &job {
            Op::Acquire { vol, auth, live } => fencer.acquire(vol, auth, live),
            Op::Release { vol, .. } => fencer.release(vol),
            Op::Check { vol, live } => fencer.check(vol, live),
        });
        let failed = if let Ok(done) = tokio::time::timeout(self.timeout, &mut handle).await {
            let done = flatten(done);
            let failed = needs_retry(&op, &done);
            self.update(&op, done, started, true);
            failed
        } else {
            // The call is stuck in the kernel (SG_IO sleeps uninterruptibly):
            // report it, free the permit for other volumes, and keep this one
            // busy until the call returns (I6).
            // An acquire also waits on the API server for the liveness of
            // the other keys' nodes: the message names both suspects.
            let why = format!(
                "{} did not finish in {}: a SCSI command stuck in the kernel (device hung?), or the API server slow to say whether the nodes of the other keys on the LUN are live",
                op.kind(),
                crate::text::duration(&self.timeout)
            );
            self.update(&op, Err(("timeout", why)), started, true);
            drop(_permit);
            // Its real result is recorded, but the operation was counted once.
            let late = flatten(handle.await);
            let failed = needs_retry(&op, &late);
            self.update(&op, late, started, false);
            failed
        };
        self.finished(&name);
        self.schedule_retry(&name, failed);
    }

    /// Reports an operation its source did not confirm; nothing was sent.
    fn denied(&self, op: &Op, d: Denied) {
        tracing::warn!(
            volume = op.volume(),
            operation = op.kind(),
            kind = d.kind,
            "not confirmed: {}",
            d.message
        );
        self.set_error(
            op.volume(),
            &op.wwid().to_string(),
            d,
            (op.kind(), op.asked()),
        );
    }

    /// Forgets the volumes this node never got onto the LUN (pending or
    /// failed, `on_lun` false) that the source no longer attaches here and
    /// that nothing runs on: without it every attachment that ever failed
    /// stays in the statuses, `ctl list` and the `volumes` gauge. Each one
    /// forgotten is announced (an [`Update`] with op `forget`) so its
    /// reported entry goes too. Returns how many.
    pub fn forget_detached(&self, attached: &BTreeSet<String>) -> usize {
        let busy: BTreeSet<String> = self
            .busy
            .lock()
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default();
        let Ok(mut all) = self.statuses.lock() else {
            return 0;
        };
        let gone: Vec<VolumeStatus> = all
            .values()
            .filter(|s| !s.on_lun && matches!(s.phase, Phase::Pending | Phase::Error))
            .filter(|s| !attached.contains(&s.volume) && !busy.contains(&s.volume))
            .cloned()
            .collect();
        for s in &gone {
            all.remove(&s.volume);
        }
        self.metrics
            .set_volumes(all.values().map(VolumeStatus::gauge));
        drop(all);
        for status in gone.iter().cloned() {
            let _ = self.changes.send(Update {
                status,
                changed: true,
                outcome: None,
                reservation_type: None,
                error_kind: None,
                op: "forget",
                asked: None,
            });
        }
        gone.len()
    }

    /// Reports a problem found before any operation could be planned (an
    /// attachment whose volume cannot be resolved); nothing is sent.
    pub fn report(&self, volume: &str, wwid: &str, kind: &'static str, message: String) {
        tracing::warn!(volume, kind, "{message}");
        let d = Denied {
            kind,
            message,
            phase: Some(Phase::Error),
        };
        self.set_error(volume, wwid, d, ("report", None));
    }

    fn set_error(&self, volume: &str, wwid: &str, d: Denied, answers: Answers) {
        self.metrics
            .reconcile_errors
            .with_label_values(&[d.kind])
            .inc();
        let Ok(mut all) = self.statuses.lock() else {
            return;
        };
        let prev = all.get(volume).cloned();
        let Some(phase) = d.phase else {
            // Nothing changes, but whoever waits on this volume (a gRPC call)
            // learns why now instead of at its deadline.
            let phase = prev.as_ref().map_or(Phase::Pending, |p| p.phase.clone());
            let st = self.status_after(volume, wwid, prev, phase, d.message);
            drop(all);
            self.send(st, false, d.kind, answers);
            return;
        };
        let changed = prev.as_ref().map(|s| &s.phase) != Some(&phase)
            || prev.as_ref().map(|s| &s.message) != Some(&d.message);
        let st = self.status_after(volume, wwid, prev, phase, d.message);
        all.insert(st.volume.clone(), st.clone());
        self.metrics
            .set_volumes(all.values().map(VolumeStatus::gauge));
        drop(all);
        self.send(st, changed, d.kind, answers);
    }

    fn status_after(
        &self,
        volume: &str,
        wwid: &str,
        prev: Option<VolumeStatus>,
        phase: Phase,
        message: String,
    ) -> VolumeStatus {
        VolumeStatus {
            volume: volume.to_string(),
            wwid: wwid.to_string(),
            last_transition: match &prev {
                Some(p) if p.phase == phase => p.last_transition,
                _ => now_secs(),
            },
            phase,
            message,
            paths_registered: prev.as_ref().map_or(0, |p| p.paths_registered),
            paths_total: prev.as_ref().map_or(0, |p| p.paths_total),
            on_lun: prev.as_ref().is_some_and(|p| p.on_lun),
            attachment: prev.and_then(|p| p.attachment),
        }
    }

    fn send(&self, status: VolumeStatus, changed: bool, kind: &'static str, answers: Answers) {
        let _ = self.changes.send(Update {
            status,
            changed,
            outcome: None,
            reservation_type: None,
            error_kind: Some(kind),
            op: answers.0,
            asked: answers.1,
        });
    }

    fn status_of(&self, volume: &str) -> Option<VolumeStatus> {
        self.statuses
            .lock()
            .ok()
            .and_then(|s| s.get(volume).cloned())
    }

    /// Records an operation's end: its metrics, the volume's new status,
    /// a log line, and the update broadcast to the reporters.
    fn update(&self, op: &Op, r: Done, started: Instant, count: bool) {
        self.measure(op, &r, started, count);
        let update = self.record(op, &r);
        log(op, &r, update.as_ref());
        if let Some(u) = update {
            self.measure_notice(&u, started);
            let _ = self.changes.send(u);
        }
    }

    /// The operation's metrics (`count`: its count and duration), the
    /// preemptions it made, and for an acquire that newly holds, the time
    /// from the source read that authorised it to the LUN saying so.
    fn measure(&self, op: &Op, r: &Done, started: Instant, count: bool) {
        if count {
            self.metrics.operation(
                op.kind(),
                r.as_ref().map(|o| o.state).map_err(|e| e.0),
                started.elapsed(),
            );
        }
        let Ok(o) = r else { return };
        self.metrics.preemptions.inc_by(o.preempted.len() as u64);
        if let Op::Acquire { auth, .. } = op {
            let newly = self.status_of(op.volume()).map(|s| s.phase) != Some(Phase::Held);
            if newly && o.state == VolumeState::Held {
                let took = SystemTime::now()
                    .duration_since(auth.read_at)
                    .unwrap_or_default();
                self.metrics
                    .attach_to_held_seconds
                    .with_label_values(&[self.authority.source()])
                    .observe(took.as_secs_f64());
            }
        }
    }

    /// Merges the operation's result into the volume's status (keeping the
    /// time of the last transition, the attachment an explicit release was
    /// under, and "on the LUN" across errors) and sets the volume gauges.
    fn record(&self, op: &Op, r: &Done) -> Option<Update> {
        let (phase, message, reg, total) = match r {
            Ok(o) => (
                phase_of(op, o),
                summary(o),
                o.paths.iter().filter(|p| p.registered).count(),
                o.paths.len(),
            ),
            Err((_, msg)) => (Phase::Error, msg.clone(), 0, 0),
        };
        let attachment = match op {
            Op::Acquire { auth, .. } => Some(auth.attachment.0.clone()),
            // Kept: an explicit release under an attachment is not undone
            // by the next resync; only a new attachment acquires again.
            Op::Release { .. } | Op::Check { .. } => {
                self.status_of(op.volume()).and_then(|s| s.attachment)
            }
        };
        let mut all = self.statuses.lock().ok()?;
        let prev = all.get(op.volume()).cloned();
        let on_lun = match r {
            Ok(_) => matches!(phase, Phase::Held | Phase::Registered | Phase::Fenced),
            Err(_) => prev.as_ref().is_some_and(|s| s.on_lun),
        };
        let last_transition = match &prev {
            Some(p) if p.phase == phase => p.last_transition,
            _ => now_secs(),
        };
        let st = VolumeStatus {
            on_lun,
            volume: op.volume().to_string(),
            wwid: op.wwid().to_string(),
            last_transition,
            phase,
            message,
            paths_registered: reg,
            paths_total: total,
            attachment,
        };
        let update = Update {
            outcome: r.as_ref().ok().map(|o| Arc::new(o.clone())),
            reservation_type: match op {
                Op::Acquire { vol, .. } => Some(vol.policy.reservation_type(vol.access)),
                _ => None,
            },
            error_kind: r.as_ref().err().map(|e| e.0),
            op: op.kind(),
            asked: op.asked(),
            changed: prev.map(|p| p.phase) != Some(st.phase.clone()),
            status: st.clone(),
        };
        all.insert(st.volume.clone(), st);
        self.metrics
            .set_volumes(all.values().map(VolumeStatus::gauge));
        Some(update)
    }

    /// The time from the kernel's first conflict to this fence.
    fn measure_notice(&self, u: &Update, started: Instant) {
        let Some(now) = crate::platform::monotonic() else {
            return;
        };
        let lun = &u.status.wwid;
        if u.status.phase == Phase::Fenced && u.changed {
            if let Some(d) = self.notices.fenced(lun, now) {
                self.metrics
                    .kernel_notice_to_fenced_seconds
                    .with_label_values(&[] as &[&str])
                    .observe(d.as_secs_f64());
            }
        } else if u.status.phase != Phase::Fenced && u.error_kind.is_none() {
            self.notices
                .not_fenced(lun, now.saturating_sub(started.elapsed()));
        }
    }
}

/// One line per operation: a warning for an error, info for a change of
/// phase, debug otherwise.
fn log(op: &Op, r: &Done, update: Option<&Update>) {
    match (r, update) {
        (Err((kind, msg)), _) => {
            tracing::warn!(volume = op.volume(), operation = op.kind(), kind, "{msg}")
        }
        (Ok(_), Some(u)) if u.changed => {
            let st = &u.status;
            tracing::info!(
                volume = op.volume(),
                operation = op.kind(),
                phase = st.phase.label(),
                "{}",
                st.message
            )
        }
        (Ok(_), _) => {
            tracing::debug!(volume = op.volume(), operation = op.kind(), "no change")
        }
    }
}

type Done = Result<Outcome, (&'static str, String)>;

/// Whether an operation's end calls for another attempt soon: an error, a
/// refusal other than a fence (a live holder may be releasing right now),
/// an acquire that did not end held, or registrations lost to a reset.
fn needs_retry(op: &Op, r: &Done) -> bool {
    let Ok(o) = r else { return true };
    if o.leftover {
        return true;
    }
    match o.state {
        VolumeState::Fenced => false,
        VolumeState::Refused | VolumeState::Lost => true,
        VolumeState::Held => false,
        VolumeState::Registered => {
            matches!(op, Op::Acquire { vol, .. } if vol.access == AccessMode::SingleNode)
        }
        VolumeState::NotRegistered => matches!(op, Op::Acquire { .. }),
    }
}

fn flatten(r: Result<Result<Outcome, FenceError>, tokio::task::JoinError>) -> Done {
    match r {
        Ok(r) => r.map_err(|e| (e.kind(), e.to_string())),
        Err(join) => Err(("panic", format!("engine task failed: {join}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::engine::{Outcome, PathReport};
    use crate::fence::policy::Policy;
    use crate::fence::state::AttachmentId;
    use crate::source::{Attachment, Attachments};

    fn att(volume: &str, node: &str, id: &str) -> Attachment {
        Attachment {
            volume: volume.into(),
            wwid: "naa.6001405000000001".parse().unwrap(),
            node: node.into(),
            access: AccessMode::SingleNode,
            id: AttachmentId(id.into()),
            overrides: Default::default(),
        }
    }

    fn status(volume: &str, phase: Phase, att: Option<&str>) -> VolumeStatus {
        VolumeStatus {
            volume: volume.into(),
            wwid: "naa.6001405000000001".into(),
            on_lun: matches!(phase, Phase::Held | Phase::Registered | Phase::Fenced),
            phase,
            message: String::new(),
            paths_registered: 2,
            paths_total: 2,
            last_transition: 0,
            attachment: att.map(str::to_string),
        }
    }

    fn kinds(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| format!("{} {}", o.kind(), o.volume()))
            .collect()
    }

    fn plan_for(snap: Vec<Attachment>, st: Vec<VolumeStatus>, monitor: bool) -> Vec<String> {
        let statuses = st.into_iter().map(|s| (s.volume.clone(), s)).collect();
        kinds(&plan(
            "node-a",
            &Attachments::new(snap),
            &statuses,
            &Policy::default(),
            monitor,
            SystemTime::now(),
        ))
    }

    /// Which ends bring the volume back soon (200 ms doubling), and which wait.
    #[test]
    fn retry_table() {
        let vol = |access| Volume {
            name: "pv".into(),
            wwid: "naa.6001405000000001".parse().unwrap(),
            device: None,
            access,
            policy: Policy::default(),
        };
        let acquire = |access| Op::Acquire {
            vol: vol(access),
            auth: Authorization {
                attachment: AttachmentId("u".into()),
                read_at: SystemTime::now(),
                notes: Vec::new(),
                confirm: None,
            },
            live: BTreeSet::new(),
        };
        let check = Op::Check {
            vol: vol(AccessMode::SingleNode),
            live: BTreeSet::new(),
        };
        let ended = |state, leftover| -> Done {
            let mut o = held_outcome(&vol(AccessMode::SingleNode));
            o.state = state;
            o.leftover = leftover;
            Ok(o)
        };
        let single = acquire(AccessMode::SingleNode);
        let multi = acquire(AccessMode::MultiNode);
        #[rustfmt::skip]
        let rows: Vec<(&Op, Done, bool, &str)> = vec![
            (&single, Err(("reservation_conflict", "x".into())), true, "an error"),
            (&single, ended(VolumeState::Refused, false), true, "refused: a live holder may be releasing"),
            (&single, ended(VolumeState::Registered, false), true, "single-node not held"),
            (&multi, ended(VolumeState::Registered, false), false, "multi-node registered"),
            (&single, ended(VolumeState::Held, false), false, "held"),
            (&single, ended(VolumeState::Fenced, false), false, "fenced: only a new attachment"),
            (&single, ended(VolumeState::Fenced, true), true, "fenced with a leftover registration"),
            (&check, ended(VolumeState::Lost, false), true, "registrations lost: acquire again"),
            (&check, ended(VolumeState::NotRegistered, false), false, "a check that finds nothing"),
        ];
        for (op, done, want, why) in rows {
            assert_eq!(needs_retry(op, &done), want, "{why}");
        }
    }

    #[test]
    fn plan_table() {
        use Phase::*;
        // New attachment: acquire. Other nodes' attachments: nothing.
        assert_eq!(
            plan_for(
                vec![att("v1", "node-a", "g1"), att("v2", "node-b", "g1")],
                vec![],
                false
            ),
            vec!["acquire v1"]
        );
        // Held under the same attachment: nothing, or a check when the monitor is due.
        let held = || vec![status("v1", Held, Some("g1"))];
        assert!(plan_for(vec![att("v1", "node-a", "g1")], held(), false).is_empty());
        assert_eq!(
            plan_for(vec![att("v1", "node-a", "g1")], held(), true),
            vec!["check v1"]
        );
        // A new attachment identity: acquire again.
        assert_eq!(
            plan_for(vec![att("v1", "node-a", "g2")], held(), false),
            vec!["acquire v1"]
        );
        // Fenced under the same attachment: only monitored, never re-acquired (I1).
        assert!(plan_for(
            vec![att("v1", "node-a", "g1")],
            vec![status("v1", Fenced, Some("g1"))],
            false
        )
        .is_empty());
        // Gone from the source while held: release (a confirmed detach).
        assert_eq!(plan_for(vec![], held(), false), vec!["release v1"]);
        // Errors retry; a fenced volume no longer listed is released (a no-op on the LUN).
        assert_eq!(
            plan_for(
                vec![att("v1", "node-a", "g1")],
                vec![status("v1", Error, Some("g1"))],
                false
            ),
            vec!["acquire v1"]
        );
        assert_eq!(
            plan_for(
                vec![],
                vec![
                    status("v1", Fenced, Some("g1")),
                    status("v2", Released, None)
                ],
                true
            ),
            vec!["release v1"]
        );
    }

    #[test]
    fn an_error_after_the_engine_found_us_on_the_lun_keeps_monitor_and_release() {
        // A held volume whose last check timed out (or whose source refused):
        // still checked when due (I7), no fresh authority needed; released on detach.
        let errored = || {
            let mut s = status("v1", Phase::Error, Some("g1"));
            s.on_lun = true;
            vec![s]
        };
        assert!(plan_for(vec![att("v1", "node-a", "g1")], errored(), false).is_empty());
        assert_eq!(
            plan_for(vec![att("v1", "node-a", "g1")], errored(), true),
            vec!["check v1"]
        );
        assert_eq!(plan_for(vec![], errored(), false), vec!["release v1"]);
        // A new attachment acquires, as always.
        assert_eq!(
            plan_for(vec![att("v1", "node-a", "g2")], errored(), false),
            vec!["acquire v1"]
        );
    }

    #[test]
    fn an_explicit_release_is_not_undone_by_the_next_resync() {
        let released = vec![status("v1", Phase::Released, Some("g1"))];
        assert!(plan_for(vec![att("v1", "node-a", "g1")], released.clone(), true).is_empty());
        assert_eq!(
            plan_for(vec![att("v1", "node-a", "g2")], released, false),
            vec!["acquire v1"]
        );
    }

    #[test]
    fn restart_is_not_release() {
        // A fresh daemon knows no statuses: the source's attachments are acquired
        // (idempotent on the LUN), nothing is released.
        assert_eq!(
            plan_for(vec![att("v1", "node-a", "g1")], vec![], true),
            vec!["acquire v1"]
        );
        assert!(plan_for(vec![], vec![], true).is_empty());
    }

    /// Holds volumes named "hung*" forever (like SG_IO stuck in the kernel).
    struct Fake;

    fn held_outcome(vol: &Volume) -> Outcome {
        Outcome {
            volume: vol.name.clone(),
            wwid: vol.wwid.to_string(),
            device: "/dev/dm-0".into(),
            key: crate::scsi::ReservationKey(1),
            state: VolumeState::Held,
            refusal: None,
            steps: vec![],
            dry_run: false,
            preempted: vec![],
            keys: Default::default(),
            paths: Vec::<PathReport>::new(),
            generation: (1, 1),
            unit_attentions: vec![],
            raced: false,
            notes: vec![],
            leftover: false,
        }
    }

    impl VolumeOps for Fake {
        fn acquire(
            &self,
            vol: &Volume,
            _: &Authorization,
            _: &BTreeSet<String>,
        ) -> Result<Outcome, FenceError> {
            if vol.name.starts_with("hung") {
                std::thread::sleep(Duration::from_secs(2));
            }
            Ok(held_outcome(vol))
        }
        fn release(&self, vol: &Volume) -> Result<Outcome, FenceError> {
            Ok(Outcome {
                state: VolumeState::NotRegistered,
                ..held_outcome(vol)
            })
        }
        fn check(&self, vol: &Volume, _: &BTreeSet<String>) -> Result<Outcome, FenceError> {
            Ok(held_outcome(vol))
        }
    }

    /// Waits (10 ms steps, 10 s at most) until `f` holds.
    async fn until(f: impl Fn() -> bool) {
        let held =
            crate::testutil::poll_async(Duration::from_secs(10), Duration::from_millis(10), f)
                .await;
        assert!(held, "condition never held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_volume_does_not_delay_another_and_times_out() {
        let metrics = Arc::new(Metrics::new());
        let r = Reconciler::new(
            Arc::new(Fake),
            metrics.clone(),
            4,
            Duration::from_millis(300),
        );
        let snap = Attachments::new(vec![
            att("hung-1", "node-a", "g1"),
            att("fast-1", "node-a", "g1"),
        ]);
        let ops = plan(
            "node-a",
            &snap,
            &r.statuses(),
            &Policy::default(),
            false,
            SystemTime::now(),
        );
        assert_eq!(r.dispatch(ops.clone()), 2);
        // While hung-1 is in flight, it is not started twice. (Only its op:
        // fast-1 may have finished already, and would rightly start again.)
        let hung: Vec<Op> = ops.into_iter().filter(|o| o.volume() == "hung-1").collect();
        assert_eq!(r.dispatch(hung), 0);
        let t0 = std::time::Instant::now();
        let phase = |v: &str| r.statuses().get(v).map(|s| s.phase.clone());
        // Polled, not slept: a loaded machine must not turn this into a race.
        until(|| phase("fast-1") == Some(Phase::Held)).await;
        if t0.elapsed() < Duration::from_millis(250) {
            assert!(phase("hung-1").is_none(), "reported before its timeout");
        }
        until(|| phase("hung-1").is_some()).await;
        let hung = r.statuses().get("hung-1").cloned().expect("reported");
        assert_eq!(hung.phase, Phase::Error);
        assert!(hung.message.contains("did not finish"), "{}", hung.message);
        // When the stuck call finally returns, its real result is recorded.
        until(|| phase("hung-1") == Some(Phase::Held)).await;
        // Two acquires ran: counted twice, not three times.
        let counted: f64 = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("csi_fencer_operations_total{operation=\"acquire\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(counted, 2.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_on_a_busy_volume_runs_after_the_running_operation() {
        let r = Reconciler::new(
            Arc::new(Fake),
            Arc::new(Metrics::new()),
            4,
            Duration::from_secs(10),
        );
        let snap = Attachments::new(vec![att("hung-1", "node-a", "g1")]);
        let ops = plan(
            "node-a",
            &snap,
            &r.statuses(),
            &Policy::default(),
            false,
            SystemTime::now(),
        );
        let mut rx = r.subscribe();
        assert_eq!(r.dispatch(ops), 1);
        // A gRPC Release arrives while the (slow) acquire runs: queued, not dropped.
        let Some(Op::Acquire { vol, .. }) = plan(
            "node-a",
            &snap,
            &BTreeMap::new(),
            &Policy::default(),
            false,
            SystemTime::now(),
        )
        .pop() else {
            panic!("an acquire");
        };
        r.submit(Op::Release {
            vol,
            explicit: true,
        });
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!((first.op, second.op), ("acquire", "release"));
        assert_eq!(second.status.phase, Phase::Released);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            r.busy.lock().unwrap().is_empty(),
            "nothing left running or queued"
        );
    }
}
