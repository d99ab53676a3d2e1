//! One node's Kubernetes daemon, assembled in-process the way `csi-fencer
//! run --source kubernetes` assembles it, over any transport: the unit tests
//! give it a simulated LUN, the VM rig real SG_IO. Shared by both.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use csi_fencer::daemon::grpc::World;
use csi_fencer::daemon::metrics::Metrics;
use csi_fencer::daemon::reconcile::Reconciler;
use csi_fencer::device::Resolver;
use csi_fencer::fence::engine::{Engine, EngineConfig};
use csi_fencer::fence::keys::ClusterTag;
use csi_fencer::fence::policy::Policy;
use csi_fencer::fence::state::StateStore;
use csi_fencer::k8s::authority::ApiAuthority;
use csi_fencer::k8s::cluster::Cluster;
use csi_fencer::k8s::source::Tick;
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

/// Starts `node`'s daemon on the current runtime. Cluster tag 0x7e57; the
/// Node list is node-a and node-b; monitor every 300 ms, resync every 500 ms.
pub fn start_node<T: Transport + 'static>(
    client: kube::Client,
    node: &str,
    transport: T,
    resolver: Resolver,
    state: &Path,
) -> NodeDaemon<T> {
    let tag = ClusterTag::new(0x7e57).expect("tag");
    // As `run` does: the Node list names other nodes' keys in reports.
    let mut cfg = EngineConfig::new(node, tag);
    cfg.known_nodes = ["node-a".to_string(), "node-b".to_string()].into();
    cfg.device_wait = Duration::from_secs(5);
    let store = StateStore::open(state).expect("state dir");
    let engine = Engine::new(cfg, transport, resolver, store);
    let metrics = Arc::new(Metrics::new());
    let cluster = Arc::new(Cluster::new(
        client,
        node.into(),
        Duration::from_secs(2),
        rules(),
    ));
    let auth = Box::new(ApiAuthority(Arc::clone(&cluster), tag));
    let rec = Reconciler::with_authority(
        Arc::new(engine),
        metrics.clone(),
        4,
        Duration::from_secs(30),
        auth,
    );
    let ready = Arc::new(AtomicBool::new(false));
    let world = World {
        node: node.into(),
        policy: Policy::default(),
        snapshot: Arc::new(std::sync::Mutex::new((
            Default::default(),
            std::time::SystemTime::now(),
        ))),
    };
    let tick = Tick {
        monitor: Duration::from_millis(300),
        resync: Duration::from_millis(500),
        policy: Policy::default(),
    };
    // As `run` starts it: the Node list first, the state store's volumes
    // monitored while the API server cannot be reached.
    let dir = state.to_path_buf();
    let start = csi_fencer::k8s::daemon::Start {
        held: move || csi_fencer::daemon::run::held_volumes(&dir, &Policy::default()),
        learn: |_| {},
        tick,
        tag,
    };
    let (c, r, m, ready2) = (
        Arc::clone(&cluster),
        Arc::clone(&rec),
        metrics.clone(),
        ready.clone(),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = csi_fencer::k8s::daemon::start(c, r, m, ready2, world, start).await {
            panic!("the daemon did not start: {e}");
        }
    });
    NodeDaemon {
        rec,
        metrics,
        ready,
        cluster,
        task,
    }
}
