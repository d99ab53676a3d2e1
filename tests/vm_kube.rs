//! The Kubernetes source on a real LIO target (VM rig) against a real
//! kube-apiserver: two node daemons, in-process, with the real engine over
//! real SG_IO and dm-multipath, each with a token of the chart's
//! ServiceAccount, talking to the etcd and kube-apiserver that
//! `examples/kube_relay.rs` runs on the host's loopback (reached through a
//! virtio-serial port; the guest has no network device). A failover in the
//! way the cluster does it with csi-fencer's failover controller: node-a is
//! cut off and its kubelet stops renewing its Lease; the controller taints
//! it out-of-service; a double of kube-controller-manager force-deletes its
//! VolumeAttachment and attaches node-b; node-b's acquire fences node-a on
//! the LUN: sg_persist and node-a's own O_DIRECT writes say so, and the
//! VolumeReservation tells it. When node-a is back the taint goes.

// Linux only: SG_IO, sysfs and dm-multipath in the VM rig.
#![cfg(unix)]

mod common;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/node.rs"]
mod node;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/rest.rs"]
mod rest;

#[allow(dead_code, missing_docs)]
#[path = "common/relay.rs"]
mod relay;

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use csi_fencer::daemon::reconcile::{Phase, Reconciler};
use csi_fencer::device::{Resolver, Sysfs};
use csi_fencer::failover::Settings;
use csi_fencer::fence::engine::Engine;
use csi_fencer::k8s::cluster::attachment_name;
use csi_fencer::k8s::failover::metrics::Metrics as FailoverMetrics;
use csi_fencer::k8s::failover::{Controller, ControllerSpec};
use csi_fencer::transport::sgio::SgIo;
use node::start_node;
use rest::Rest;
use serde_json::{json, Value};

const VOL0: Lun = Lun("VOL0");
const DRIVER: &str = "block.csi.example.com";
/// Where the host's relay put the CA, the admin's certificate and the token.
const KUBE: &str = "/kube";
/// The guest's loopback ports into the relay: everyone's, and node-a's
/// own (the one a test can cut).
const PORT: u16 = 6443;
const PORT_A: u16 = 6444;

type Rec = Arc<Reconciler<Engine<SgIo>>>;

/// The virtio-serial port QEMU named `kube`, as a device node.
fn relay_port() -> std::path::PathBuf {
    let dir = std::fs::read_dir("/sys/class/virtio-ports")
        .expect("no virtio-ports in the guest: is virtio_console loaded?");
    for e in dir.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == "kube" {
            return Path::new("/dev").join(e.file_name());
        }
    }
    panic!("no virtio-serial port named kube: did run.sh start examples/kube_relay?");
}

/// Starts the guest's end of the relay; returns node-a's cut switch.
fn relay() -> Arc<AtomicBool> {
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(relay_port())
        .expect("open the relay port");
    let mux = relay::Mux::new(port.try_clone().expect("port"));
    let cut_a = Arc::new(AtomicBool::new(false));
    for (p, cut) in [
        (PORT, Arc::new(AtomicBool::new(false))),
        (PORT_A, cut_a.clone()),
    ] {
        let l = TcpListener::bind(("127.0.0.1", p)).expect("bind a guest loopback port");
        mux.serve(l, cut);
    }
    let m = Arc::clone(&mux);
    std::thread::spawn(move || {
        m.demux(port, None);
        // Every request would wait on the port forever: fail now, and say why.
        eprintln!("relay: the host closed the port (did examples/kube_relay die? see target/rig/out/kube-relay.log)");
        std::process::abort();
    });
    cut_a
}

/// A client of the host's API server through guest port `port`: the admin
/// (client certificate) or the chart's ServiceAccount (its token).
async fn client(port: u16, admin: bool) -> kube::Client {
    let user = if admin {
        format!("{{client-certificate: {KUBE}/admin.crt, client-key: {KUBE}/admin.key}}")
    } else {
        let token = std::fs::read_to_string(format!("{KUBE}/daemon.token")).expect("token");
        format!("{{token: \"{}\"}}", token.trim())
    };
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: host, cluster: {{server: \"https://127.0.0.1:{port}\", \
         certificate-authority: {KUBE}/ca.crt}}}}]\nusers: [{{name: u, user: {user}}}]\n\
         contexts: [{{name: c, context: {{cluster: host, user: u}}}}]\ncurrent-context: c\n"
    );
    let kc = kube::config::Kubeconfig::from_yaml(&kc).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("client")
}

/// One node's daemon on guest port `port`: its engine finds its own maps by `prefix`.
async fn start(node: &str, prefix: &str, port: u16) -> (Rec, Arc<AtomicBool>) {
    let state = std::path::PathBuf::from(format!("/tmp/kube-state-{node}"));
    let _ = std::fs::remove_dir_all(&state);
    let resolver = Resolver::new(Sysfs::default(), prefix);
    let d = start_node(client(port, false).await, node, SgIo, resolver, &state);
    (d.rec, d.ready)
}

/// The volume handle: the WWID as the driver rule reads it (`3` + NAA hex).
fn handle() -> String {
    format!("3{}", VOL0.wwid().trim_start_matches("naa."))
}

/// A VolumeAttachment of pv-vol0 to `node`, named as the external-attacher names it.
fn va(node: &str) -> (String, Value) {
    let name = attachment_name(DRIVER, &handle(), node);
    let v = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": "pv-vol0"}}});
    (name, v)
}

fn now_rfc3339(micros: bool) -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).unwrap_or_default();
    let secs = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    if micros {
        format!("{secs}.{:06}Z", d.subsec_micros())
    } else {
        format!("{secs}Z")
    }
}

/// The kubelets: while a node's flag is set, renew its Lease every 500 ms.
fn kubelets(api: Rest, alive: Vec<(&'static str, Arc<AtomicBool>)>) {
    tokio::spawn(async move {
        loop {
            for (n, on) in &alive {
                if on.load(Ordering::Relaxed) {
                    api.apply(
                        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": n, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": n, "leaseDurationSeconds": 40,
                                 "renewTime": now_rfc3339(true)}}),
                    )
                    .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// What kube-controller-manager does once node-a carries the out-of-service
/// taint: its attachment force-detached (deleted), the replacement pod's
/// made on node-b and attached by the external-attacher.
fn kcm_double(api: Rest, old: String) {
    tokio::spawn(async move {
        loop {
            let n = api.get("/api/v1/nodes/node-a").await.unwrap_or_default();
            if tainted(&n) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api.delete(&format!("/apis/storage.k8s.io/v1/volumeattachments/{old}"))
            .await;
        attach(&api, "node-b").await;
    });
}

fn tainted(n: &Value) -> bool {
    n["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/out-of-service")
    })
}

/// The failover controller, in-process (the admin's client: the host's
/// tests check its RBAC), judging every 200 ms with a 3 s Lease grace.
fn controller(client: kube::Client) -> Arc<FailoverMetrics> {
    let mut settings = Settings::new([DRIVER.to_string()]);
    settings.lease_grace = Duration::from_secs(3);
    let spec = ControllerSpec {
        settings,
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
        leader: None,
        dry_run: false,
        delete_pods: true,
        identity: "vm".into(),
    };
    let metrics = Arc::new(FailoverMetrics::new());
    let c = Controller::new(client, spec, metrics.clone());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // Never stopped: it lives as long as the test's runtime.
    std::mem::forget(stop_tx);
    tokio::spawn(c.run(Arc::new(AtomicBool::new(false)), stop));
    metrics
}

async fn cluster(api: &Rest) {
    for n in ["node-a", "node-b"] {
        api.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
            .await;
        let now = now_rfc3339(false);
        api.apply_status_warnings(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
                "lastTransitionTime": now}]}}),
        )
        .await;
    }
    api.apply(
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "san-block"}, "provisioner": DRIVER}),
    )
    .await;
    api.apply(&json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-vol0"},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "64Mi"},
                 "volumeMode": "Block", "storageClassName": "san-block",
                 "persistentVolumeReclaimPolicy": "Retain",
                 "csi": {"driver": DRIVER, "volumeHandle": handle()}}}))
        .await;
}

async fn attach(api: &Rest, node: &str) -> String {
    let (name, v) = va(node);
    api.apply(&v).await;
    api.set_attached(&name, true).await;
    name
}

/// node's entry in pv-vol0's VolumeReservation.
async fn entry(api: &Rest, node: &str) -> Option<Value> {
    let v = api
        .get("/apis/csi-fencer.io/v1alpha1/volumereservations/pv-vol0")
        .await?;
    v["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
        .cloned()
}

fn phase(rec: &Rec) -> Option<Phase> {
    rec.statuses().get("pv-vol0").map(|s| s.phase.clone())
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let held =
        common::testutil::poll_async(Duration::from_secs(30), Duration::from_millis(50), f).await;
    assert!(held, "timed out after 30 s waiting for: {what}");
}

fn keys() -> Vec<u64> {
    let mut k = sg_read_keys(&VOL0.sd("B1"));
    k.sort();
    k
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn a_kubernetes_failover_fences_the_cut_off_node_on_the_lun() {
    reset_lun(VOL0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cut_a = relay();
        let api = Rest(client(PORT, true).await);
        cluster(&api).await;
        let (lease_a, lease_b) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(true)),
        );
        kubelets(
            Rest(client(PORT, true).await),
            vec![("node-a", lease_a.clone()), ("node-b", lease_b)],
        );
        let (a, ready_a) = start("node-a", "mpath-", PORT_A).await;
        let (b, ready_b) = start("node-b", "mpathb-", PORT).await;
        until("both daemons listed", || {
            ready_a.load(Ordering::Relaxed) && ready_b.load(Ordering::Relaxed)
        })
        .await;

        let va_a = attach(&api, "node-a").await;
        until("node-a holds", || phase(&a) == Some(Phase::Held)).await;
        assert_eq!(
            keys(),
            vec![key_a().0, key_a().0],
            "node-a on both of its paths (sg_persist)"
        );
        assert_eq!(holder(VOL0), Some(key_a().0));
        direct_write(&VOL0.dm("A"), 0, 4096, 0xa1).expect("node-a writes while it holds the LUN");
        assert_eq!(phase(&b), None, "node-b has no attachment: nothing done");
        api.until("node-a's entry: Holder", || async {
            entry(&api, "node-a")
                .await
                .is_some_and(|e| e["state"] == "Holder")
        })
        .await;

        // node-a is cut off from the API server and its kubelet stops
        // renewing; the failover controller taints it out-of-service, and
        // the cluster force-detaches its attachment and attaches node-b.
        let failover = controller(client(PORT, true).await);
        kcm_double(Rest(client(PORT, true).await), va_a);
        cut_a.store(true, Ordering::Relaxed);
        lease_a.store(false, Ordering::Relaxed);
        direct_write(&VOL0.dm("A"), 4096, 4096, 0xa3)
            .expect("node-a writes until node-b preempts it");
        until("node-b holds", || phase(&b) == Some(Phase::Held)).await;
        let n = api.get("/api/v1/nodes/node-a").await.expect("node-a");
        assert!(tainted(&n), "{n}");
        let applied = "csi_fencer_failover_taints_total{action=\"applied\"}";
        assert_eq!(
            common::testutil::sample(&failover.render(), applied),
            Some(1.0)
        );
        assert_eq!(
            keys(),
            vec![key_b().0, key_b().0],
            "node-a's key preempted (sg_persist)"
        );
        assert_eq!(holder(VOL0), Some(key_b().0));
        assert_conflict(
            direct_write(&VOL0.dm("A"), 0, 4096, 0xa2),
            "node-a after the failover",
        );
        until("node-a knows it is fenced", || {
            phase(&a) == Some(Phase::Fenced)
        })
        .await;
        api.until("a Preempted Event naming node-a", || async {
            api.get("/apis/events.k8s.io/v1/namespaces/default/events")
                .await
                .is_some_and(|l| {
                    l["items"].as_array().is_some_and(|i| {
                        i.iter().any(|e| {
                            e["reason"] == "Preempted"
                                && e["note"].as_str().is_some_and(|n| n.contains("node-a"))
                        })
                    })
                })
        })
        .await;

        // The partition heals: node-a learns its attachment is gone and ends
        // Released, touching nothing of node-b's; its kubelet renews again
        // and the controller takes its taint back.
        cut_a.store(false, Ordering::Relaxed);
        lease_a.store(true, Ordering::Relaxed);
        until("node-a released after it relisted", || {
            phase(&a) == Some(Phase::Released)
        })
        .await;
        assert_eq!(keys(), vec![key_b().0, key_b().0]);
        assert_eq!(holder(VOL0), Some(key_b().0));
        api.until(
            "node-a's entry Released or gone, node-b's Holder",
            || async {
                entry(&api, "node-a")
                    .await
                    .is_none_or(|e| e["state"] == "Released")
                    && entry(&api, "node-b")
                        .await
                        .is_some_and(|e| e["state"] == "Holder")
            },
        )
        .await;
        let v = api
            .get("/apis/csi-fencer.io/v1alpha1/volumereservations/pv-vol0")
            .await
            .expect("the VolumeReservation");
        assert_eq!(v["status"]["holder"]["node"], "node-b", "{v}");
        api.until("node-a's taint taken back", || async {
            api.get("/api/v1/nodes/node-a")
                .await
                .is_some_and(|n| !tainted(&n))
        })
        .await;
        assert_conflict(
            direct_write(&VOL0.dm("A"), 0, 4096, 0xa4),
            "node-a after the taint went: still fenced",
        );
    });
    rt.shutdown_background();
}
