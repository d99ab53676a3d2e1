//! Doubles of the cluster around csi-fencer for the failover controller's
//! tests and its timeline benchmark (`examples/failover_bench.rs`): the
//! kubelets (Lease renewals, Ready), a network partition of one node, node
//! daemons over one simulated LUN, the shipped controller RBAC, and the
//! controller itself.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::lun::{Paths, SimLun, INITIATOR_A, INITIATOR_B};
use super::node::{start_node, NodeDaemon};
use super::plane::Plane;
use crate::device::{Resolver, Sysfs};
use crate::failover::Settings;
use crate::k8s::cluster::attachment_name;
use crate::k8s::failover::metrics::Metrics;
use crate::k8s::failover::{Controller, ControllerSpec};
use crate::k8s::leader::LeaderSpec;
use crate::testutil::TempDir;

/// The driver of the test volumes.
pub const DRIVER: &str = "block.csi.example.com";
/// pv-1's volume handle.
pub const HANDLE: &str = "36001405000000001";
/// The Lease grace the tests run with.
pub const GRACE: Duration = Duration::from_secs(3);

pub fn micro(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ts = k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).unwrap_or_default();
    format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        d.subsec_micros()
    )
}

/// The kubelets: renew the Leases of the nodes in `alive` every 300 ms,
/// and report them Ready.
pub fn kubelets(plane: &Plane, alive: Arc<Mutex<BTreeSet<String>>>) -> tokio::task::JoinHandle<()> {
    kubelets_every(plane, alive, Duration::from_millis(300), None)
}

/// The kubelets renewing every `period`; each renewal's time, by node, in
/// `renewals` when given (the last renewal before a death is t = 0 of a
/// failover).
pub fn kubelets_every(
    plane: &Plane,
    alive: Arc<Mutex<BTreeSet<String>>>,
    period: Duration,
    renewals: Option<Arc<Mutex<std::collections::BTreeMap<String, std::time::Instant>>>>,
) -> tokio::task::JoinHandle<()> {
    let rest = super::rest::Rest(plane.admin.clone());
    tokio::spawn(async move {
        loop {
            let nodes: Vec<String> = alive.lock().unwrap().iter().cloned().collect();
            for n in nodes {
                let at = std::time::Instant::now();
                rest.apply(
                    &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": n, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": n, "leaseDurationSeconds": 40,
                             "renewTime": micro(SystemTime::now())}}),
                )
                .await;
                if let Some(r) = &renewals {
                    r.lock().unwrap().insert(n, at);
                }
            }
            tokio::time::sleep(period).await;
        }
    })
}

/// The node's Ready condition True, as its kubelet posts it.
pub async fn ready(plane: &Plane, node: &str) {
    set_ready(
        plane,
        node,
        "True",
        "KubeletReady",
        "kubelet is posting ready status",
    )
    .await;
}

/// The node's Ready condition: `status` with `reason` and `message` (the
/// node lifecycle controller posts Unknown, "NodeStatusUnknown").
pub async fn set_ready(plane: &Plane, node: &str, status: &str, reason: &str, message: &str) {
    let now = micro(SystemTime::now());
    let now = format!("{}Z", &now[..19]);
    plane
        .apply_status_warnings(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "status": {"conditions": [{"type": "Ready", "status": status, "reason": reason,
                "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now}]}}),
        )
        .await;
}

/// A plane with node-a and node-b Ready, their Leases renewed, pv-1 (RWO)
/// and the failover controller's RBAC.
pub async fn cluster() -> (
    Plane,
    Arc<Mutex<BTreeSet<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let plane = Plane::start().await;
    for n in ["node-a", "node-b", "node-c"] {
        plane
            .apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
            .await;
        ready(&plane, n).await;
    }
    plane
        .apply(&json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}, "volumeMode": "Block",
                     "persistentVolumeReclaimPolicy": "Retain",
                     "csi": {"driver": DRIVER, "volumeHandle": HANDLE}}}))
        .await;
    plane.install_failover_rbac().await;
    let alive = Arc::new(Mutex::new(
        ["node-a", "node-b", "node-c"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ));
    let k = kubelets(&plane, alive.clone());
    (plane, alive, k)
}

/// A TCP proxy on loopback to the API server that a test can cut: a cut
/// closes every connection through it (watches included) and black-holes
/// new ones (accepted, never answered), as a network partition of one node
/// would.
pub struct Partition {
    /// The proxy's loopback port.
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Partition {
    pub async fn start(target: u16) -> Partition {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, list) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    // Black-holed, as dropped packets are: the connection
                    // stays open and nothing ever answers.
                    let t = tokio::spawn(async move {
                        let mut sink = [0u8; 4096];
                        while tokio::io::AsyncReadExt::read(&mut inbound, &mut sink)
                            .await
                            .is_ok_and(|n| n > 0)
                        {}
                    });
                    list.lock().unwrap().push(t.abort_handle());
                    continue;
                }
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                list.lock().unwrap().push(t.abort_handle());
            }
        });
        Partition {
            port,
            cut,
            conns,
            _accept: accept,
        }
    }

    pub fn set(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        // Cut: every connection through goes. Healed: the black-holed ones
        // go, so that their clients connect again.
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

pub struct Node {
    /// The daemon.
    pub d: NodeDaemon<Paths>,
    _dirs: Arc<(TempDir, TempDir)>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.d.task.abort();
    }
}

/// `node`'s daemon on `lun`, as the chart's ServiceAccount, reaching the
/// API server through loopback `port`.
pub async fn daemon(plane: &Plane, node: &str, lun: &Arc<SimLun>, port: u16) -> Node {
    let initiator = if node == "node-a" {
        INITIATOR_A
    } else {
        INITIATOR_B
    };
    let dirs = Arc::new((
        crate::testutil::iscsi_fixture(initiator),
        TempDir::new("failover-state"),
    ));
    let resolver = Resolver::new(Sysfs::new(dirs.0.path(), "/dev"), "mpath-");
    let paths = Paths {
        lun: Arc::clone(lun),
        initiator,
    };
    let (ns, sa) = super::plane::SERVICE_ACCOUNT;
    let url = format!("https://127.0.0.1:{port}");
    let client = plane.token_client_via(ns, sa, &url).await;
    let d = start_node(client, node, paths, resolver, dirs.1.path());
    Node { d, _dirs: dirs }
}

pub async fn attach(plane: &Plane, node: &str) -> String {
    let name = attachment_name(DRIVER, HANDLE, node);
    plane
        .apply(&json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": name},
            "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": "pv-1"}}}))
        .await;
    plane.set_attached(&name, true).await;
    name
}

/// The controller as the shipped ServiceAccount, judging every 200 ms,
/// electing on a Lease in kube-system; returns its task and stop switch.
pub async fn controller(
    plane: &Plane,
    identity: &str,
) -> (
    Arc<Metrics>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let mut settings = Settings::new([DRIVER.to_string()]);
    settings.lease_grace = GRACE;
    controller_with(plane, identity, settings, Duration::from_millis(200), true).await
}

/// The controller with `settings`, judging every `interval`, force-deleting
/// the terminating pods of nodes it tainted if `delete_pods`, as the
/// shipped ServiceAccount, electing on a Lease in kube-system.
pub async fn controller_with(
    plane: &Plane,
    identity: &str,
    settings: Settings,
    interval: Duration,
    delete_pods: bool,
) -> (
    Arc<Metrics>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let client = plane
        .token_client("kube-system", "csi-fencer-failover")
        .await;
    let spec = ControllerSpec {
        settings,
        interval,
        timeout: Duration::from_secs(5),
        leader: Some(LeaderSpec {
            namespace: "kube-system".into(),
            name: "csi-fencer-failover".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
        }),
        dry_run: false,
        delete_pods,
        identity: identity.into(),
    };
    let metrics = Arc::new(Metrics::new());
    let c = Controller::new(client, spec, metrics.clone());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (metrics, tokio::spawn(c.run(ready, stop)), stop_tx)
}

pub fn tainted(n: &Value) -> bool {
    n["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/out-of-service")
    })
}

pub async fn entry_state(plane: &Plane, node: &str) -> Option<String> {
    let v = plane
        .get("/apis/csi-fencer.io/v1alpha1/volumereservations/pv-1")
        .await?;
    v["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
        .and_then(|e| e["state"].as_str().map(str::to_string))
}
