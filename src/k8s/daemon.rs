//! `csi-fencer run --source kubernetes`: the client, the start-up checks
//! (driver name over CSI, Node key collisions), then the watch loop and the
//! status publisher beside the reconciler.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use super::api::KubeError;
use super::cluster::{key_collision, Cluster};
use super::csi::{probe, CsiError};
use super::gate::{GateLayer, Limits};
use super::report::Publisher;
use super::source::{drive, Tick};
use crate::daemon::grpc::SourceView;
use crate::daemon::metrics::Metrics;
use crate::daemon::reconcile::{Op, Reconciler, VolumeOps};
use crate::fence::keys::ClusterTag;
use crate::source::rules::DriverRule;

/// How to reach the API server and the driver.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSpec {
    /// `--kubeconfig` (out of cluster); in-cluster config otherwise.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-api-qps` and `--kube-api-burst`.
    pub limits: (f64, u32),
    /// `--timeout`: one API or CSI call.
    pub timeout: Duration,
    /// `--csi-address`: the driver's socket, to learn its name.
    pub csi_address: Option<PathBuf>,
}

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable client configuration.
    #[error("Kubernetes client: {0}")]
    Client(String),
    /// An API call at start failed.
    #[error(transparent)]
    Api(#[from] KubeError),
    /// Two nodes would share a reservation key.
    #[error("nodes {0:?} and {1:?} map to the same reservation key under this cluster tag: fencing one would fence the other; rename a node or change clusterName/clusterTag")]
    KeyCollision(String, String),
    /// Nothing to fence.
    #[error("the config lists no drivers: add the CSI drivers whose volumes csi-fencer fences (drivers: [{{name: ..., volumeHandleRegex: ...}}])")]
    NoDrivers,
    /// The driver beside us has no rule.
    #[error("driver {0:?} (from --csi-address) has no entry in the config's drivers: add one saying where its volumes keep the WWID")]
    UnknownDriver(String),
    /// The CSI driver could not be asked.
    #[error(transparent)]
    Csi(#[from] CsiError),
}

/// A client for `spec`, behind the rate limit and request counter.
pub async fn client(spec: &KubeSpec, metrics: Arc<Metrics>) -> Result<Client, StartError> {
    let config = config(spec.kubeconfig.as_deref()).await?;
    let limits = Limits {
        qps: spec.limits.0,
        burst: spec.limits.1,
    };
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| StartError::Client(e.to_string()))?;
    Ok(builder.with_layer(&GateLayer::new(limits, metrics)).build())
}

/// The client configuration: `kubeconfig` when given, else inferred
/// (`$KUBECONFIG`, `~/.kube/config`, or the pod's in-cluster credentials).
pub async fn config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, StartError> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| StartError::Client(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| StartError::Client(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            StartError::Client(format!(
                "no in-cluster configuration and no --kubeconfig: {e}"
            ))
        })?,
    })
}

/// Narrows `rules` to the driver beside us, when `--csi-address` is given.
/// Retries until the driver answers and is ready (it may start after us).
pub async fn driver_rules(
    spec: &KubeSpec,
    rules: Vec<DriverRule>,
) -> Result<Vec<DriverRule>, StartError> {
    if rules.is_empty() {
        return Err(StartError::NoDrivers);
    }
    let Some(addr) = &spec.csi_address else {
        return Ok(rules);
    };
    let mut wait = Duration::from_secs(1);
    let info = loop {
        match probe(addr, spec.timeout).await {
            Ok(i) if i.ready => break i,
            Ok(i) => tracing::info!(driver = %i.name, "CSI driver not ready yet"),
            Err(e) => tracing::warn!(error = %e, "CSI driver not answering yet"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    };
    tracing::info!(driver = %info.name, version = %info.vendor_version, "CSI driver found");
    let mine: Vec<DriverRule> = rules.into_iter().filter(|r| r.name == info.name).collect();
    if mine.is_empty() {
        return Err(StartError::UnknownDriver(info.name));
    }
    Ok(mine)
}

/// Lists Nodes and refuses to run on a key collision; returns their names.
pub async fn check_nodes(cluster: &Cluster, tag: ClusterTag) -> Result<Vec<String>, StartError> {
    let names = cluster.node_names().await?;
    if let Some((a, b)) = key_collision(tag, &names) {
        return Err(StartError::KeyCollision(a, b));
    }
    tracing::info!(
        nodes = names.len(),
        "no reservation key collisions between nodes"
    );
    Ok(names)
}

/// [`check_nodes`], retried with back-off while the API server cannot be
/// reached or refuses: a DaemonSet must not crash-loop exactly while the
/// cluster is in trouble (a restarted API server answers 403 until its RBAC
/// caches are filled). Meanwhile the volumes `held()` names (from the state
/// store) are checked every `monitor` (I7: a fenced node learns it without
/// the API), the daemon reports not ready and counts the error. A key
/// collision ends the start.
pub async fn nodes_or_monitor<F: VolumeOps>(
    cluster: &Cluster,
    tag: ClusterTag,
    rec: &Arc<Reconciler<F>>,
    held: impl Fn() -> Vec<Op>,
    monitor: Duration,
    metrics: &Metrics,
) -> Result<Vec<String>, StartError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match check_nodes(cluster, tag).await {
            Err(StartError::Api(e)) => {
                metrics.kube_api_up.set(i64::from(!e.unreachable()));
                metrics
                    .reconcile_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                let ops = held();
                tracing::warn!(error = %e, kind = e.kind(), volumes = ops.len(), retry_in = %crate::text::duration(&wait),
                    "the Node list failed at start: monitoring the volumes of the state store meanwhile");
                let until = tokio::time::Instant::now() + wait;
                rec.dispatch(ops);
                while tokio::time::Instant::now() + monitor < until {
                    tokio::time::sleep(monitor).await;
                    rec.dispatch(held());
                }
                tokio::time::sleep_until(until).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            r => return r,
        }
    }
}

/// What the daemon needs besides the cluster to start: see [`start`].
pub struct Start<H, L> {
    /// The checks of the volumes the state store names (see [`nodes_or_monitor`]).
    pub held: H,
    /// Told the Node names once they are known (to name keys in reports).
    pub learn: L,
    /// The loop's settings.
    pub tick: Tick,
    /// This cluster's tag.
    pub tag: ClusterTag,
}

/// The Kubernetes source from start to end: the Node list (monitoring the
/// state store's volumes while the API server cannot be reached), then the
/// watch loop and the status publisher. Ends only on a start error.
pub async fn start<F: VolumeOps, H: Fn() -> Vec<Op>, L: FnOnce(Vec<String>)>(
    cluster: Arc<Cluster>,
    rec: Arc<Reconciler<F>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: SourceView,
    s: Start<H, L>,
) -> Result<(), StartError> {
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let monitor = s.tick.monitor;
    let nodes = nodes_or_monitor(&cluster, s.tag, &rec, s.held, monitor, &metrics).await?;
    (s.learn)(nodes);
    run(cluster, rec, metrics, ready, world, s.tick, s.tag).await;
    Ok(())
}

/// Runs the watch loop and the status publisher until the loop ends.
pub async fn run<F: VolumeOps>(
    cluster: Arc<Cluster>,
    rec: Arc<Reconciler<F>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: SourceView,
    tick: Tick,
    tag: ClusterTag,
) {
    let publisher = Publisher::new(
        Arc::clone(&cluster),
        tag.key_for(&cluster.node),
        metrics.clone(),
    );
    let reports = tokio::spawn(publisher.run(rec.subscribe()));
    drive(cluster, rec, metrics, ready, world, tick).await;
    reports.abort();
}
