//! The file source's loop (`csi-fencer run --source file:PATH`): re-reads
//! the attachments file when it changes, ticks the monitor and the resync,
//! and dispatches the plan to the reconciler.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::grpc::SourceView;
use super::metrics::Metrics;
use super::reconcile::{plan, Reconciler, VolumeOps};
use super::wake::{Wake, Waker};
use crate::fence::policy::Policy;
use crate::source::{file, Attachments, SourceError};

/// How often the file is looked at for changes.
const SOURCE_POLL: Duration = Duration::from_millis(250);

/// What the loop follows, and how often it checks.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The attachments file.
    pub path: PathBuf,
    /// This node.
    pub node: String,
    /// The monitor interval (a check of every held volume).
    pub monitor: Duration,
    /// The resync interval (the whole plan again).
    pub resync: Duration,
    /// The policy volumes get.
    pub policy: Policy,
}

/// Follows the file and ticks the monitor and resync, until the task is
/// dropped: every change, tick, due retry and kernel notice becomes a plan
/// dispatched to the reconciler.
pub async fn follow<F: VolumeOps>(
    f: FileSource,
    rec: Arc<Reconciler<F>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: SourceView,
) {
    let path = &f.path;
    let mut watcher = FileWatcher::new(path.clone());
    let mut snapshot = Attachments::default();
    let mut read_at = SystemTime::now();
    let mut waker = Waker::new(f.monitor, f.resync);
    let mut poll = tokio::time::interval(SOURCE_POLL);
    let mut loaded = false;
    loop {
        let wake = tokio::select! {
            _ = poll.tick() => {
                match watcher.poll() {
                    Poll::Unchanged => {
                        // Unchanged as of now: what it says is fresh (I1).
                        read_at = SystemTime::now();
                        if let Ok(mut w) = world.snapshot.lock() {
                            w.1 = read_at;
                        }
                        continue;
                    }
                    Poll::Unavailable => continue,
                    Poll::Changed(Ok(s)) => {
                        tracing::info!(source = %path.display(), attachments = s.all().len(), "attachments changed");
                        (snapshot, read_at) = (s, SystemTime::now());
                        loaded = true;
                        ready.store(true, Ordering::Relaxed);
                    }
                    Poll::Changed(Err(e)) => {
                        metrics.source_errors.inc();
                        ready.store(false, Ordering::Relaxed);
                        tracing::error!(error = %e, "attachment source unusable; keeping the last good snapshot");
                        continue;
                    }
                }
                None
            }
            w = waker.next(&rec) => Some(w),
        };
        let check = wake.as_ref().is_some_and(Wake::checks);
        let noticed = wake.and_then(Wake::noticed);
        // Until the source was read once there is nothing to reconcile; after
        // that the monitor goes on even while the source is broken (I7).
        if !loaded {
            continue;
        }
        if let Ok(mut w) = world.snapshot.lock() {
            *w = (snapshot.clone(), read_at);
        }
        // The file was last confirmed unchanged at read_at: that is its freshness.
        let mut ops = plan(
            &f.node,
            &snapshot,
            &rec.statuses(),
            &f.policy,
            check,
            read_at,
        );
        if let Some(n) = &noticed {
            ops.retain(|op| op.wanted_by(n));
        }
        rec.dispatch(ops);
    }
}

/// What a look at the file found.
enum Poll {
    /// Same length and modification time as last time.
    Unchanged,
    /// Re-read: the new snapshot, or why it is unusable (reported once).
    Changed(Result<Attachments, SourceError>),
    /// Still unreadable or invalid since the last report: not fresh.
    Unavailable,
}

/// Re-reads a file when its length or modification time changes.
struct FileWatcher {
    path: PathBuf,
    seen: Option<(u64, SystemTime)>,
    good: bool,
}

impl FileWatcher {
    fn new(path: PathBuf) -> Self {
        FileWatcher {
            path,
            seen: None,
            good: false,
        }
    }

    fn poll(&mut self) -> Poll {
        let origin = self.path.display().to_string();
        let stamp = std::fs::metadata(&self.path).and_then(|m| Ok((m.len(), m.modified()?)));
        let stamp = match stamp {
            Ok(s) => s,
            Err(source) => {
                let first = self.seen != Some((u64::MAX, SystemTime::UNIX_EPOCH));
                self.seen = Some((u64::MAX, SystemTime::UNIX_EPOCH));
                self.good = false;
                return if first {
                    Poll::Changed(Err(SourceError::Unreadable { origin, source }))
                } else {
                    Poll::Unavailable
                };
            }
        };
        if self.seen == Some(stamp) {
            return if self.good {
                Poll::Unchanged
            } else {
                Poll::Unavailable
            };
        }
        self.seen = Some(stamp);
        let r = match std::fs::read_to_string(&self.path) {
            Ok(text) => file::parse(&origin, &text),
            Err(source) => Err(SourceError::Unreadable { origin, source }),
        };
        self.good = r.is_ok();
        Poll::Changed(r)
    }
}
