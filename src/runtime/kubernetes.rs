//! One node's Kubernetes daemon, assembled from its parts: `csi-fencer run
//! --source kubernetes` and the tests (over a simulated LUN, or the rig's
//! real one) build a node through this one function.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{follow_kernel_log, held_volumes, policy};
use crate::daemon::config::Config;
use crate::daemon::grpc::SourceView;
use crate::daemon::metrics::Metrics;
use crate::daemon::reconcile::Reconciler;
use crate::fence::engine::Engine;
use crate::k8s::authority::ApiAuthority;
use crate::k8s::cluster::Cluster;
use crate::k8s::daemon::{start, Start, StartError};
use crate::k8s::source::Tick;
use crate::transport::Transport;

/// A node daemon, assembled and not yet running.
pub struct KubeNode<T: Transport + 'static, R> {
    /// Its reconciler (statuses, and the gRPC API's way in).
    pub rec: Arc<Reconciler<Engine<T>>>,
    /// The Node list, then the watch loop and the status publisher; ends
    /// only on a start error.
    pub run: R,
}

/// Assembles the daemon of the engine's node: the reconciler under the API
/// server's authority, the kernel-log notices, and the loop that first
/// lists the Nodes (checking the state store's volumes while the API server
/// cannot be reached), then follows the attachments.
pub fn kubernetes_node<T: Transport + 'static>(
    c: &Config,
    state_dir: &Path,
    cluster: Arc<Cluster>,
    engine: Arc<Engine<T>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    world: SourceView,
) -> KubeNode<T, impl Future<Output = Result<(), StartError>>> {
    let authority = Box::new(ApiAuthority(Arc::clone(&cluster), c.tag));
    let rec = Reconciler::with_authority(
        Arc::clone(&engine),
        metrics.clone(),
        c.max_concurrent_volumes,
        c.operation_timeout,
        authority,
    );
    rec.set_max_retry_delay(c.resync_interval);
    follow_kernel_log(c, &rec, &metrics);
    let pol = policy(c);
    let tick = Tick {
        monitor: c.monitor_interval,
        resync: c.resync_interval,
        policy: pol.clone(),
    };
    let dir = state_dir.to_path_buf();
    let s = Start {
        held: move || held_volumes(&dir, &pol),
        learn: move |nodes| engine.learn_nodes(nodes),
        tick,
        tag: c.tag,
    };
    let run = start(cluster, Arc::clone(&rec), metrics, ready, world, s);
    KubeNode { rec, run }
}
