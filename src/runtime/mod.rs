//! The composition root of `csi-fencer run`: assembles the attachment
//! source, the engine, the reconciler, the status reporters and the servers,
//! and runs them until SIGTERM, releasing nothing on the way out (I4). The
//! only module that knows both the daemon and Kubernetes: `daemon` is generic
//! over its source and knows nothing of the API server.

pub mod controller;
mod kubernetes;

pub use kubernetes::{kubernetes_node, KubeNode};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::daemon::config::Config;
use crate::daemon::file_loop::{self, FileSource};
use crate::daemon::grpc::{NodeService, SourceView};
use crate::daemon::metrics::{Metered, Metrics};
use crate::daemon::reconcile::{Op, Reconciler, VolumeOps};
use crate::device::Locate;
use crate::fence::engine::{Engine, EngineConfig, Volume};
use crate::fence::policy::{AccessMode, Policy};
use crate::fence::state::{StateError, StateStore};
use crate::k8s::cluster::Cluster;
use crate::k8s::daemon::{KubeSpec, StartError};
use crate::platform;
use crate::source::Attachments;
use crate::transport::hang::Hanging;
use crate::transport::Transport;

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
    Grpc(#[from] crate::daemon::grpc::SocketError),
    /// multipathd owns registrations of these maps too (docs/design.md §7).
    #[error("one owner of registrations: multipathd is configured to register its own keys ({}); it would re-register a fenced node's paths behind csi-fencer's back. Remove reservation_key for the maps csi-fencer fences (and do not use mpathpersist or fence_mpath on them), or set multipathConfig: \"\" to skip this check", .0.join("; "))]
    OneOwner(Vec<String>),
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

/// Refuses to run beside a multipathd that registers keys itself.
fn check_one_owner(c: &Config) -> Result<(), DaemonError> {
    let Some(path) = &c.multipath_config else {
        return Ok(());
    };
    let owners =
        crate::platform::multipath_owners(path).map_err(|source| DaemonError::MultipathConfig {
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
        let m = metrics.clone();
        let not_ready = "attachment source not loaded yet, or the API server is unreachable\n";
        crate::daemon::http::spawn(addr, Arc::new(move || m.render()), ready.clone(), not_ready)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
    }
    let world = SourceView {
        node: opts.node.clone(),
        policy: policy(&opts.config),
        snapshot: Arc::new(Mutex::new((Attachments::default(), SystemTime::now()))),
    };
    tokio::select! {
        r = run_source(&opts, metrics, ready, world) => r?,
        _ = platform::stop_signal() => tracing::info!("stopping: no reservation is released on the way out"),
    }
    Ok(())
}

/// The source, the reconciler and the gRPC API, until one of them ends.
async fn run_source(
    opts: &Options,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: SourceView,
) -> Result<(), DaemonError> {
    let c = &opts.config;
    let transport = Metered::new(
        Hanging::new(platform::native(), opts.hang_devices.clone()),
        metrics.clone(),
    );
    let resolver = platform::locator(&c.map_uuid_prefix);
    let engine = Arc::new(engine(
        &opts.node,
        c,
        transport,
        resolver,
        &opts.state_dir,
        opts.dry_run,
    )?);
    match &opts.source {
        SourceSpec::File(path) => {
            let rec = Reconciler::new(
                engine,
                metrics.clone(),
                c.max_concurrent_volumes,
                c.operation_timeout,
            );
            rec.set_max_retry_delay(c.resync_interval);
            follow_kernel_log(c, &rec, &metrics);
            let source = FileSource {
                path: path.clone(),
                node: opts.node.clone(),
                monitor: c.monitor_interval,
                resync: c.resync_interval,
                policy: policy(c),
            };
            tokio::select! {
                _ = file_loop::follow(source, Arc::clone(&rec), metrics, ready, world.clone()) => {}
                r = serve_grpc(opts, &rec, &world) => r?,
            }
        }
        SourceSpec::Kubernetes(spec) => {
            let client = crate::k8s::daemon::client(spec, metrics.clone()).await?;
            let rules = crate::k8s::daemon::driver_rules(spec, c.drivers.clone()).await?;
            let cluster = Arc::new(Cluster::new(client, opts.node.clone(), spec.timeout, rules));
            let node = kubernetes_node(
                c,
                &opts.state_dir,
                cluster,
                engine,
                metrics,
                ready,
                world.clone(),
            );
            tokio::select! {
                r = node.run => r?,
                r = serve_grpc(opts, &node.rec, &world) => r?,
            }
        }
    }
    Ok(())
}

/// The engine of node `node` as `run` builds it from the configuration,
/// over any transport and resolver (the tests give it a simulated LUN).
pub fn engine<T: Transport>(
    node: &str,
    c: &Config,
    transport: T,
    resolver: impl Locate + 'static,
    state_dir: &Path,
    dry_run: bool,
) -> Result<Engine<T>, StateError> {
    let mut cfg = EngineConfig::new(node, c.tag);
    cfg.command_timeout = c.command_timeout;
    // The reconciler stops waiting then; the engine stops granting then.
    cfg.operation_deadline = c.operation_timeout;
    cfg.device_wait = c.device_wait;
    // Names the stale keys of nodes in reports; liveness comes from the source.
    cfg.known_nodes = c.known_nodes.clone();
    cfg.dry_run = dry_run;
    Ok(Engine::new(
        cfg,
        transport,
        resolver,
        StateStore::open(state_dir)?,
    ))
}

/// The policy every volume gets from the configuration (a driver rule may
/// override the reservation type and the preempt mode).
pub fn policy(c: &Config) -> Policy {
    Policy {
        reservation_type: None,
        preempt: c.preempt,
        all_tg_pt: c.all_tg_pt,
        aptpl: c.aptpl,
        remove_foreign_keys: c.remove_foreign_keys,
    }
}

/// Checks a LUN as soon as the kernel logs a RESERVATION CONFLICT on one of
/// its paths (Linux: see `platform::linux::kernel_log`); without the log, fences are
/// noticed at the monitor interval, as before.
pub(crate) fn follow_kernel_log<F: VolumeOps + 'static>(
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
    match platform::follow_kernel_log(path, on) {
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
async fn serve_grpc<F: VolumeOps>(
    opts: &Options,
    rec: &Arc<Reconciler<F>>,
    world: &SourceView,
) -> Result<(), DaemonError> {
    let Some(path) = &opts.grpc_socket else {
        return std::future::pending().await;
    };
    tracing::info!(socket = %path.display(), "serving the gRPC node API");
    let api = NodeService::new(
        Arc::clone(rec),
        world.clone(),
        opts.config.operation_timeout,
    );
    crate::daemon::grpc::serve(path, api).await?;
    Ok(())
}
