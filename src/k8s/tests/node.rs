//! One node's Kubernetes daemon, assembled in-process by the function that
//! `csi-fencer run --source kubernetes` uses, over any transport: the unit
//! tests give it a simulated LUN, the VM rig real SG_IO. Shared by both.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use csi_fencer::daemon::config::Config;
use csi_fencer::daemon::grpc::SourceView;
use csi_fencer::daemon::metrics::Metrics;
use csi_fencer::daemon::reconcile::Reconciler;
use csi_fencer::device::Resolver;
use csi_fencer::fence::engine::Engine;
use csi_fencer::k8s::cluster::Cluster;
use csi_fencer::runtime;
use csi_fencer::source::rules::{compile, DriverRule, WwidFrom};
use csi_fencer::transport::Transport;

/// A running node daemon.
pub struct NodeDaemon<T: Transport + 'static> {
    /// Its reconciler (statuses).
    pub rec: Arc<Reconciler<Engine<T>>>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// /readyz.
    pub ready: Arc<AtomicBool>,
    /// Its view of the API server (the watch cache, health).
    pub cluster: Arc<Cluster>,
    /// The watch loop and publisher.
    pub task: tokio::task::JoinHandle<()>,
}

/// The driver every test volume belongs to; the WWID is the volume handle.
pub fn rules() -> Vec<DriverRule> {
    vec![DriverRule {
        name: "block.csi.example.com".into(),
        wwid: WwidFrom::VolumeHandle(compile("^(?P<wwid>3[0-9a-f]+)$").expect("regex")),
        reservation_type: None,
        preempt: None,
    }]
}

/// The configuration every test node runs with: cluster tag 0x7e57; the
/// Node list is node-a and node-b; monitor every 300 ms, resync every
/// 500 ms; no kernel log and no multipath.conf check.
pub fn config() -> Config {
    let mut c = Config::parse(
        "test",
        "clusterTag: '0x7e57'\nkernelLog: ''\nmultipathConfig: ''\n",
    )
    .expect("test configuration");
    c.known_nodes = ["node-a".to_string(), "node-b".to_string()].into();
    c.device_wait = Duration::from_secs(5);
    c.max_concurrent_volumes = 4;
    c.operation_timeout = Duration::from_secs(30);
    c.monitor_interval = Duration::from_millis(300);
    c.resync_interval = Duration::from_millis(500);
    c
}

/// Starts `node`'s daemon on the current runtime, assembled by the same
/// function as `csi-fencer run --source kubernetes`, with [`config`].
pub fn start_node<T: Transport + 'static>(
    client: kube::Client,
    node: &str,
    transport: T,
    resolver: Resolver,
    state: &Path,
) -> NodeDaemon<T> {
    let c = config();
    let engine = runtime::engine(node, &c, transport, resolver, state, false).expect("state dir");
    let metrics = Arc::new(Metrics::new());
    let cluster = Arc::new(Cluster::new(
        client,
        node.into(),
        Duration::from_secs(2),
        rules(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let world = SourceView {
        node: node.into(),
        policy: runtime::policy(&c),
        snapshot: Arc::new(std::sync::Mutex::new((
            Default::default(),
            std::time::SystemTime::now(),
        ))),
    };
    let n = runtime::kubernetes_node(
        &c,
        state,
        Arc::clone(&cluster),
        Arc::new(engine),
        metrics.clone(),
        ready.clone(),
        world,
    );
    let run = n.run;
    let task = tokio::spawn(async move {
        if let Err(e) = run.await {
            panic!("the daemon did not start: {e}");
        }
    });
    NodeDaemon {
        rec: n.rec,
        metrics,
        ready,
        cluster,
        task,
    }
}
