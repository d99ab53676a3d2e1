//! The Kubernetes attachment source: a cluster-wide VolumeAttachment watch
//! into the compact cache, and on every change that concerns this node (or a
//! PV it has) a snapshot of this node's attachments for the reconciler. A
//! relist after 410 Gone replaces the cache and reports what vanished, so a
//! delete missed during the gap still ends in a (confirmed) release.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;

use super::api::{Call, KubeError};
use super::cluster::{Cluster, VolumeError};
use super::store::{SlimVa, Touched};
use crate::daemon::grpc::SourceView;
use crate::daemon::metrics::Metrics;
use crate::daemon::reconcile::{plan, Reconciler, VolumeOps};
use crate::daemon::wake::{Wake, Waker};
use crate::fence::policy::Policy;
use crate::fence::state::AttachmentId;
use crate::source::{Attachment, Attachments};

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct Tick {
    /// How often held volumes are checked.
    pub monitor: Duration,
    /// Full reconcile period.
    pub resync: Duration,
    /// The base policy.
    pub policy: Policy,
}

/// Follows VolumeAttachments until the stream ends (never, normally).
pub async fn drive<F: VolumeOps>(
    cluster: Arc<Cluster>,
    rec: Arc<Reconciler<F>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: SourceView,
    tick: Tick,
) {
    let mut stream = Watch::new(Api::all(cluster.client.clone()), &cluster.node);
    let mut waker = Waker::new(tick.monitor, tick.resync);
    let mut loaded = false;
    let mut mine: BTreeSet<String> = BTreeSet::new();
    loop {
        let wake = tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                let change = match ev {
                    Ok(ev) => on_event(&cluster, &metrics, &mut loaded, ev),
                    Err(e) => {
                        on_error(&cluster, &metrics, e);
                        Change::Touched(Vec::new())
                    }
                };
                let relevant = match change {
                    // Everything of this node is worth a look after a relist.
                    Change::Relisted => true,
                    Change::Touched(t) => t
                        .iter()
                        .any(|t| *t.node == cluster.node || mine.contains(&t.pv)),
                };
                if !relevant || !loaded {
                    publish_health(&cluster, &metrics, &ready, loaded && stream.live);
                    continue;
                }
                None
            }
            w = waker.next(&rec) => Some(w),
        };
        let check = wake.as_ref().is_some_and(Wake::checks);
        let noticed = wake.and_then(Wake::noticed);
        publish_health(&cluster, &metrics, &ready, loaded && stream.live);
        if !loaded {
            continue;
        }
        let snap = snapshot(&cluster, &rec).await;
        let attached: BTreeSet<String> = match cluster.store.lock() {
            Ok(s) => s
                .of_node(&cluster.node)
                .map(|(_, c)| c.pv.to_string())
                .collect(),
            Err(_) => snap
                .for_node(&cluster.node)
                .map(|a| a.volume.clone())
                .collect(),
        };
        rec.forget_detached(&attached);
        mine = snap
            .for_node(&cluster.node)
            .map(|a| a.volume.clone())
            .collect();
        if let Ok(mut w) = world.snapshot.lock() {
            *w = (snap.clone(), SystemTime::now());
        }
        let now = SystemTime::now();
        let mut ops = plan(
            &cluster.node,
            &snap,
            &rec.statuses(),
            &tick.policy,
            check,
            now,
        );
        if let Some(n) = &noticed {
            ops.retain(|op| op.wanted_by(n));
        }
        rec.dispatch(ops);
        publish_health(&cluster, &metrics, &ready, loaded && stream.live);
    }
}

/// The VolumeAttachment watch. After any failure it starts again from a
/// fresh list, after a short back-off (0.5 s doubling to 4 s, plus a spread
/// of up to 1 s by node name, so a whole cluster does not relist at the
/// same instant): the API server back means the watch back within seconds,
/// and `live` (ready) only once that list has completed.
struct Watch {
    api: Api<SlimVa>,
    stream:
        futures_util::stream::BoxStream<'static, Result<watcher::Event<SlimVa>, watcher::Error>>,
    retry_at: Option<tokio::time::Instant>,
    failures: u32,
    spread: Duration,
    /// A list completed since the last failure: events flow.
    live: bool,
}

impl Watch {
    fn new(api: Api<SlimVa>, node: &str) -> Watch {
        let spread = node
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Watch {
            stream: Self::start(&api),
            api,
            retry_at: None,
            failures: 0,
            spread: Duration::from_millis(spread % 1000),
            live: false,
        }
    }

    fn start(
        api: &Api<SlimVa>,
    ) -> futures_util::stream::BoxStream<'static, Result<watcher::Event<SlimVa>, watcher::Error>>
    {
        watcher(api.clone(), watcher::Config::default().page_size(500)).boxed()
    }

    /// The next event or error; `None` never (the watch is restarted).
    /// Cancel-safe: a pending back-off is kept across calls.
    async fn next(&mut self) -> Option<Result<watcher::Event<SlimVa>, watcher::Error>> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
            self.stream = Self::start(&self.api);
        }
        let ev = self.stream.next().await;
        match &ev {
            Some(Ok(watcher::Event::InitDone)) => {
                self.live = true;
                self.failures = 0;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                self.live = false;
                self.failures += 1;
                let exp = 500u64 << self.failures.min(4).saturating_sub(1);
                let wait = Duration::from_millis(exp.min(4000)) + self.spread;
                self.retry_at = Some(tokio::time::Instant::now() + wait);
                self.stream = futures_util::stream::pending().boxed();
            }
        }
        ev.or_else(|| Some(Err(watcher::Error::NoResourceVersion)))
    }
}

fn publish_health(cluster: &Cluster, metrics: &Metrics, ready: &AtomicBool, loaded: bool) {
    let up = !cluster.health.is_down();
    metrics.kube_api_up.set(i64::from(up));
    ready.store(loaded && up, Ordering::Relaxed);
}

/// What a watch event changed in the cache.
enum Change {
    /// These attachments (none for a no-op).
    Touched(Vec<Touched>),
    /// A (re)list completed: the cache is new.
    Relisted,
}

/// Applies one watch event to the cache.
fn on_event(
    cluster: &Cluster,
    metrics: &Metrics,
    loaded: &mut bool,
    ev: watcher::Event<SlimVa>,
) -> Change {
    use watcher::Event as E;
    let label = match &ev {
        E::Apply(_) => "apply",
        E::Delete(_) => "delete",
        E::Init => "init",
        E::InitApply(_) => "init-apply",
        E::InitDone => "init-done",
    };
    metrics.kube_watch_events.with_label_values(&[label]).inc();
    cluster.health.observe(Ok(()));
    let Ok(mut store) = cluster.store.lock() else {
        return Change::Touched(Vec::new());
    };
    let change = match ev {
        E::Apply(va) => Change::Touched(store.apply(&va).into_iter().collect()),
        E::Delete(va) => Change::Touched(store.remove(&va).into_iter().collect()),
        E::Init => {
            store.begin_relist();
            Change::Touched(Vec::new())
        }
        E::InitApply(va) => {
            store.apply(&va);
            Change::Touched(Vec::new())
        }
        E::InitDone => {
            let gone = store.finish_relist();
            if *loaded {
                tracing::info!(
                    gone = gone.len(),
                    cached = store.len(),
                    "VolumeAttachments relisted"
                );
            } else {
                tracing::info!(cached = store.len(), "VolumeAttachments listed");
            }
            *loaded = true;
            Change::Relisted
        }
    };
    metrics.volumeattachments.set(store.len() as i64);
    change
}

fn on_error(cluster: &Cluster, metrics: &Metrics, e: watcher::Error) {
    let (kube, call) = match e {
        watcher::Error::InitialListFailed(k) => (k, Call::ListVolumeAttachments),
        watcher::Error::WatchStartFailed(k) | watcher::Error::WatchFailed(k) => {
            (k, Call::WatchVolumeAttachments)
        }
        watcher::Error::WatchError(s) if s.code == 410 => {
            tracing::info!("watch expired (410 Gone): relisting VolumeAttachments");
            return;
        }
        watcher::Error::WatchError(s) => (kube::Error::Api(s), Call::WatchVolumeAttachments),
        watcher::Error::NoResourceVersion => {
            metrics.source_errors.inc();
            tracing::error!("VolumeAttachment list without a resourceVersion: cannot watch");
            return;
        }
    };
    // A watch that expires (410) is the API server's normal way to end it,
    // not an error of the source: only the others count.
    metrics.source_errors.inc();
    let e = KubeError::from_kube(call, kube);
    cluster.health.observe(Err(&e));
    tracing::error!(error = %e, kind = e.kind(), "VolumeAttachment watch failed; retrying with backoff");
}

/// This node's attachments (attached, not being deleted) with their volumes
/// resolved, and the other nodes' attachments of the same PVs (cached).
async fn snapshot<F: VolumeOps>(cluster: &Cluster, rec: &Reconciler<F>) -> Attachments {
    let (mine, others) = {
        let Ok(store) = cluster.store.lock() else {
            return Attachments::default();
        };
        let mine: Vec<(String, String)> = store
            .of_node(&cluster.node)
            .filter(|(_, c)| c.attached && c.live())
            .map(|(_, c)| (c.pv.to_string(), c.uid.to_string()))
            .collect();
        let others: Vec<(String, BTreeSet<String>)> = mine
            .iter()
            .map(|(pv, _)| (pv.clone(), store.nodes_of(pv)))
            .collect();
        (mine, others)
    };
    let mut all = Vec::new();
    for ((pv, uid), (_, nodes)) in mine.into_iter().zip(others) {
        let info = match cluster.volume(&pv).await {
            Ok(i) => i,
            Err(e) => {
                let kind = match &e {
                    VolumeError::Api(k) => k.kind(),
                    VolumeError::Invalid(_) => "volume_unresolved",
                };
                let known = rec
                    .statuses()
                    .get(&pv)
                    .map(|s| s.wwid.clone())
                    .unwrap_or_default();
                rec.report(&pv, &known, kind, format!("{e}: not fenced"));
                continue;
            }
        };
        let mut nodes = nodes;
        nodes.insert(cluster.node.clone());
        for node in nodes {
            let id = if node == cluster.node {
                uid.clone()
            } else {
                String::new()
            };
            all.push(Attachment {
                volume: pv.clone(),
                wwid: info.wwid.clone(),
                node,
                access: info.access,
                id: AttachmentId(id),
                overrides: info.overrides.clone(),
            });
        }
    }
    Attachments::new(all)
}
