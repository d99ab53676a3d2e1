//! The daemon's main loop: the source watcher, the monitor and resync
//! tickers, the HTTP endpoints, and a clean stop that releases nothing (I4).

use crate::daemon::reconcile::Op;
use crate::fence::engine::Volume;
use crate::fence::policy::AccessMode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::config::Config;
use super::grpc::{Api, World};
use super::metrics::{Metered, Metrics};
use super::reconcile::{plan, Fencer, Reconciler};
use crate::device::{Resolver, Sysfs};
use crate::fence::engine::{Engine, EngineConfig};
use crate::fence::policy::Policy;
use crate::fence::state::StateStore;
use crate::k8s;
use crate::k8s::authority::ApiAuthority;
use crate::k8s::cluster::Cluster;
use crate::k8s::daemon::{KubeSpec, StartError};
use crate::k8s::source::Tick;
use crate::source::{file, Attachments, SourceError};
use crate::transport::hang::Hanging;
use crate::transport::sgio::SgIo;

/// Where attachments come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A YAML file, re-read when it changes.
    File(PathBuf),
    /// VolumeAttachments from the API server.
    Kubernetes(KubeSpec),
}

/// Everything `csi-fencer run` needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node.
    pub node: String,
    /// The validated configuration.
    pub config: Config,
    /// The attachment source.
    pub source: SourceSpec,
    /// The engine's fenced-state directory.
    pub state_dir: PathBuf,
    /// Where to serve /metrics, /healthz, /readyz.
    pub http: Option<SocketAddr>,
    /// Send no PR OUT.
    pub dry_run: bool,
    /// Where to serve the gRPC node API (a unix socket, 0600).
    pub grpc_socket: Option<PathBuf>,
    /// Test hook: device nodes whose commands never return.
    pub hang_devices: Vec<PathBuf>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] crate::fence::state::StateError),
    /// The gRPC socket could not be served.
    #[error(transparent)]
    Grpc(#[from] super::grpc::SocketError),
    /// multipathd owns registrations of these maps too (docs/design.md §7).
    #[error("one owner of registrations: multipathd is configured to register its own keys ({}); it would re-register a fenced node's paths behind csi-fencer's back. Remove reservation_key for the maps csi-fencer fences (and do not use mpathpersist or fence_mpath on them), or set multipathConfig: \"\" to skip this check", .0.iter().map(|o| o.to_string()).collect::<Vec<_>>().join("; "))]
    OneOwner(Vec<crate::device::multipath::Owner>),
    /// multipath.conf could not be read.
    #[error("multipathConfig {path}: cannot read")]
    MultipathConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Kubernetes source could not start.
    #[error(transparent)]
    Kubernetes(#[from] StartError),
    /// The HTTP endpoint could not be bound.
    #[error("cannot listen on {addr} for --http-endpoint")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How often the file source is looked at for changes.
const SOURCE_POLL: Duration = Duration::from_millis(250);

/// Refuses to run beside a multipathd that registers keys itself.
fn check_one_owner(c: &Config) -> Result<(), DaemonError> {
    let Some(path) = &c.multipath_config else {
        return Ok(());
    };
    let owners =
        crate::device::multipath::owners(path).map_err(|source| DaemonError::MultipathConfig {
            path: path.clone(),
            source,
        })?;
    if owners.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::OneOwner(owners))
    }
}

/// Runs until SIGTERM or SIGINT; never releases anything on the way out (I4).
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    check_one_owner(&opts.config)?;
    let metrics = Arc::new(Metrics::new());
    // /readyz: the attachment source is readable and valid right now.
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = opts.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        tokio::spawn(serve(listener, metrics.clone(), ready.clone()));
    }
    let world = World {
        node: opts.node.clone(),
        policy: policy(&opts.config),
        snapshot: Arc::new(Mutex::new((Attachments::default(), SystemTime::now()))),
    };
    tokio::select! {
        r = run_source(&opts, metrics, ready, world) => r?,
        _ = stop_signal() => tracing::info!("stopping: no reservation is released on the way out"),
    }
    Ok(())
}

/// The source, the reconciler and the gRPC API, until one of them ends.
async fn run_source(
    opts: &Options,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: World,
) -> Result<(), DaemonError> {
    let (c, conc, op_timeout) = (
        &opts.config,
        opts.config.max_concurrent_volumes,
        opts.config.operation_timeout,
    );
    match &opts.source {
        SourceSpec::File(_) => {
            let engine = Arc::new(build_engine(opts, metrics.clone(), &[])?);
            let rec = Reconciler::new(engine, metrics.clone(), conc, op_timeout);
            rec.set_max_retry_delay(c.resync_interval);
            follow_kernel_log(c, &rec, &metrics);
            tokio::select! {
                _ = drive(opts, Arc::clone(&rec), metrics, ready, world.clone()) => {}
                r = serve_grpc(opts, &rec, &world) => r?,
            }
        }
        SourceSpec::Kubernetes(spec) => {
            let client = k8s::daemon::client(spec, metrics.clone()).await?;
            let rules = k8s::daemon::driver_rules(spec, c.drivers.clone()).await?;
            let cluster = Arc::new(Cluster::new(client, opts.node.clone(), spec.timeout, rules));
            let engine = Arc::new(build_engine(opts, metrics.clone(), &[])?);
            let authority = Box::new(ApiAuthority(Arc::clone(&cluster), c.tag));
            let rec = Reconciler::with_authority(
                Arc::clone(&engine),
                metrics.clone(),
                conc,
                op_timeout,
                authority,
            );
            rec.set_max_retry_delay(c.resync_interval);
            follow_kernel_log(c, &rec, &metrics);
            let tick = Tick {
                monitor: c.monitor_interval,
                resync: c.resync_interval,
                policy: policy(c),
            };
            let start = k8s::daemon::Start {
                held: || held_volumes(&opts.state_dir, &policy(c)),
                learn: |nodes| engine.learn_nodes(nodes),
                tick,
                tag: c.tag,
            };
            let run = k8s::daemon::start(
                cluster,
                Arc::clone(&rec),
                metrics,
                ready,
                world.clone(),
                start,
            );
            tokio::select! {
                r = run => r?,
                r = serve_grpc(opts, &rec, &world) => r?,
            }
        }
    }
    Ok(())
}

/// Checks a LUN as soon as the kernel logs a RESERVATION CONFLICT on one of
/// its paths (see [`super::kernel_log`]); without the log, fences are
/// noticed at the monitor interval, as before.
fn follow_kernel_log<F: Fencer + 'static>(
    c: &Config,
    rec: &Arc<Reconciler<F>>,
    metrics: &Arc<Metrics>,
) {
    let Some(path) = &c.kernel_log else {
        return;
    };
    let (rec, metrics) = (Arc::clone(rec), Arc::clone(metrics));
    let on = move |lun: Option<String>, at| {
        metrics.kernel_conflicts.inc();
        tracing::info!(
            lun = lun.as_deref().unwrap_or("unknown"),
            "the kernel logged a reservation conflict: checking now"
        );
        rec.notices().notice(lun, at);
    };
    match super::kernel_log::follow(path, Sysfs::default(), on) {
        Ok(_) => {
            tracing::info!(path = %path.display(), "following the kernel log for reservation conflicts")
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

/// A check of every LUN the state store has a record of (held, being
/// registered or fenced), for when the source cannot say which volumes this
/// node has. The access mode is not recorded: the checks take the volumes as
/// multi-node, which only forgoes one sign of a fence (a single-node
/// reservation that moved), never adds a false one.
pub fn held_volumes(state_dir: &std::path::Path, policy: &Policy) -> Vec<Op> {
    let records = match StateStore::open(state_dir).and_then(|s| s.all()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "state store unreadable: nothing to monitor");
            return Vec::new();
        }
    };
    records
        .into_iter()
        .filter_map(|(wwid, rec)| {
            let vol = Volume {
                name: rec.volume,
                wwid: wwid.parse().ok()?,
                device: None,
                access: AccessMode::MultiNode,
                policy: policy.clone(),
            };
            Some(Op::Check {
                vol,
                live: Default::default(),
            })
        })
        .collect()
}

/// The gRPC API, or a future that never ends when no socket is configured.
async fn serve_grpc<F: Fencer>(
    opts: &Options,
    rec: &Arc<Reconciler<F>>,
    world: &World,
) -> Result<(), DaemonError> {
    let Some(path) = &opts.grpc_socket else {
        return std::future::pending().await;
    };
    tracing::info!(socket = %path.display(), "serving the gRPC node API");
    let api = Api::new(
        Arc::clone(rec),
        world.clone(),
        opts.config.operation_timeout,
    );
    super::grpc::serve(path, api).await?;
    Ok(())
}

fn build_engine(
    opts: &Options,
    metrics: Arc<Metrics>,
    nodes: &[String],
) -> Result<Engine<Metered<Hanging<SgIo>>>, DaemonError> {
    let c = &opts.config;
    let mut cfg = EngineConfig::new(opts.node.clone(), c.tag);
    cfg.command_timeout = c.command_timeout;
    // The reconciler stops waiting then; the engine stops granting then.
    cfg.operation_deadline = c.operation_timeout;
    cfg.device_wait = c.device_wait;
    cfg.known_nodes = c.known_nodes.clone();
    // Names the stale keys of nodes in reports; liveness comes from the source.
    cfg.known_nodes.extend(nodes.iter().cloned());
    cfg.dry_run = opts.dry_run;
    let state = StateStore::open(&opts.state_dir)?;
    let resolver = Resolver::new(Sysfs::default(), c.map_uuid_prefix.clone());
    Ok(Engine::new(
        cfg,
        Metered::new(Hanging::new(SgIo, opts.hang_devices.clone()), metrics),
        resolver,
        state,
    ))
}

fn policy(c: &Config) -> Policy {
    Policy {
        reservation_type: None,
        preempt: c.preempt,
        all_tg_pt: c.all_tg_pt,
        aptpl: c.aptpl,
        remove_foreign_keys: c.remove_foreign_keys,
    }
}

/// The source watcher and the tickers.
async fn drive<F: Fencer>(
    opts: &Options,
    rec: Arc<Reconciler<F>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: World,
) {
    let SourceSpec::File(path) = &opts.source else {
        return;
    };
    let mut watcher = FileWatcher::new(path.clone());
    let mut snapshot = Attachments::default();
    let mut read_at = SystemTime::now();
    let mut monitor = tokio::time::interval(opts.config.monitor_interval);
    let mut resync = tokio::time::interval(opts.config.resync_interval);
    let mut poll = tokio::time::interval(SOURCE_POLL);
    let pol = policy(&opts.config);
    let mut loaded = false;
    loop {
        let mut noticed = None;
        let check = tokio::select! {
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
                false
            }
            _ = monitor.tick() => true,
            _ = resync.tick() => false,
            _ = rec.retry_due() => false,
            n = rec.notices().next() => {
                noticed = Some(n);
                true
            }
        };
        // Until the source was read once there is nothing to reconcile; after
        // that the monitor goes on even while the source is broken (I7).
        if !loaded {
            continue;
        }
        if let Ok(mut w) = world.snapshot.lock() {
            *w = (snapshot.clone(), read_at);
        }
        // The file was last confirmed unchanged at read_at: that is its freshness.
        let mut ops = plan(&opts.node, &snapshot, &rec.statuses(), &pol, check, read_at);
        if let Some(n) = &noticed {
            ops.retain(|op| n.keep(op));
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

async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "attachment source not loaded yet, or the API server is unreachable\n",
                    )
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP endpoint stopped");
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
