//! The failover timeline (`make bench-failover`): from node-a's last kubelet
//! Lease renewal to node-b holding node-a's volume; prints figures, asserts
//! nothing about speed.
//!
//! A real kube-apiserver and etcd (the tests' control plane, with the
//! shipped RBAC); node-a and node-b, whose kubelet doubles renew their Leases
//! every 10 s as kubelet does; two node daemons as `csi-fencer run`
//! assembles them, over one simulated LUN (the LUN's own latency is what
//! `make bench-vm` measures); csi-fencer's failover controller with its
//! defaults (25 s grace, a pass every second); and a double of
//! kube-controller-manager acting with its default delays, as measured on
//! the real one (docs/failover.md):
//! - node lifecycle: node-a's Ready goes Unknown once its Lease is 50 s old,
//!   checked every 5 s;
//! - pod GC: every 20 s (its first tick at a random moment), force-deletes
//!   the pods of a node that carries the out-of-service taint and is not
//!   Ready;
//! - attach-detach: 0.1 s later deletes node-a's VolumeAttachment, 0.5 s
//!   after that makes node-b's, which the external-attacher double marks
//!   attached.
//!
//! Each round node-a holds the volume and runs its pod, then its kubelet
//! stops; t = 0 is its last renewal. Taint eviction (the double) marks the
//! pod for deletion at the taint; the pod is gone when csi-fencer's
//! controller force-deletes it (`--delete-pods`, the default) or when pod
//! GC does, whichever comes first. Printed per round and as medians: the
//! taint (detection: grace plus up to one pass), csi-fencer's own decision
//! (from the moment the grace ran out to the taint written), Ready Unknown,
//! the pod gone, node-b's attachment, node-b holding (its acquire). Then
//! node-a comes back, the controller takes its taint back, and the volume
//! returns to node-a for the next round.
//!
//! Env: `ROUNDS` (3), `GRACE` (25 s), `DELETE_PODS` (`true`; `false`: only
//! pod GC deletes the pod, kube-controller-manager's own timeline).

// Linux only (sysfs fixtures, a real kube-apiserver); elsewhere this example is empty.
#![cfg_attr(not(unix), no_main)]
#![cfg(unix)]

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/plane.rs"]
mod plane;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/rest.rs"]
mod rest;

#[allow(dead_code, missing_docs)]
#[path = "../src/testutil.rs"]
mod testutil;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/lun.rs"]
mod lun;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/node.rs"]
mod node;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/doubles.rs"]
mod doubles;

// The paths the shared test modules use inside the crate.
use csi_fencer::{device, failover, k8s, scsi, sim, transport};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doubles::*;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each step of one round happened, from t = 0 (node-a's last renewal).
#[derive(Default, Clone)]
struct Round {
    taint: Duration,
    decision: Duration,
    not_ready: Option<Duration>,
    pods_deleted: Duration,
    attached_b: Duration,
    held_b: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:7.2} s", d.as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The kube-controller-manager double for one round; returns when node-b's
/// attachment is attached, with the moments it acted.
async fn kcm(
    plane: &plane::Plane,
    t0: Instant,
    old: &str,
    phases: (Duration, Duration),
) -> (Option<Duration>, Duration, Duration) {
    let pod = "/api/v1/namespaces/default/pods/app-0";
    let (mut not_ready, mut evicted) = (None, false);
    let mut next_monitor = t0 + phases.0;
    let mut next_gc = Instant::now() + phases.1;
    loop {
        let now = Instant::now();
        if not_ready.is_none() && now >= next_monitor {
            next_monitor += Duration::from_secs(5);
            if now - t0 >= Duration::from_secs(50) {
                set_ready(
                    plane,
                    "node-a",
                    "Unknown",
                    "NodeStatusUnknown",
                    "Kubelet stopped posting node status.",
                )
                .await;
                not_ready = Some(now - t0);
            }
        }
        let is_tainted = tainted(&plane.get("/api/v1/nodes/node-a").await.unwrap_or_default());
        if is_tainted && !evicted {
            delete_with_grace(plane, pod, 30).await;
            evicted = true;
        }
        if now >= next_gc {
            next_gc += Duration::from_secs(20);
            if is_tainted && not_ready.is_some() {
                delete_with_grace(plane, pod, 0).await;
            }
        }
        if evicted && plane.get(pod).await.is_none() {
            let gone = Instant::now() - t0;
            tokio::time::sleep(Duration::from_millis(100)).await;
            plane
                .delete(&format!("/apis/storage.k8s.io/v1/volumeattachments/{old}"))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            attach(plane, "node-b").await;
            return (not_ready, gone, Instant::now() - t0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A DELETE with `grace` seconds: taint eviction's (30: the pod only
/// marked) or pod GC's (0: gone at once).
async fn delete_with_grace(plane: &plane::Plane, path: &str, grace: u32) {
    let body = serde_json::to_vec(
        &serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace}),
    )
    .expect("json");
    let req = http::Request::delete(path)
        .header("Content-Type", "application/json")
        .body(body)
        .expect("request");
    let _ = plane.admin.request_text(req).await;
}

async fn app_pod(plane: &plane::Plane) {
    plane
        .apply(&serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app-0", "namespace": "default"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]}}))
        .await;
}

async fn holder(plane: &plane::Plane) -> Option<String> {
    let v = plane
        .get("/apis/csi-fencer.io/v1alpha1/volumereservations/pv-1")
        .await?;
    v["status"]["holder"]["node"].as_str().map(str::to_string)
}

async fn round(
    plane: &plane::Plane,
    lun: &lun::SimLun,
    alive: &Arc<Mutex<std::collections::BTreeSet<String>>>,
    renewals: &Arc<Mutex<BTreeMap<String, Instant>>>,
    grace: Duration,
    i: u64,
) -> Round {
    let old = attach(plane, "node-a").await;
    app_pod(plane).await;
    let key_a = csi_fencer::fence::keys::ClusterTag::new(0x7e57)
        .expect("tag")
        .key_for("node-a");
    let key_b = csi_fencer::fence::keys::ClusterTag::new(0x7e57)
        .expect("tag")
        .key_for("node-b");
    plane
        .until("node-a holds", || async {
            lun.keys().1 == Some(key_a) && holder(plane).await.as_deref() == Some("node-a")
        })
        .await;
    // Let its kubelet renew once more at its own pace, then stop it.
    tokio::time::sleep(Duration::from_millis(2000 + 2371 * i % 8000)).await;
    alive.lock().unwrap().remove("node-a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = renewals.lock().unwrap()["node-a"];
    // The controller-manager's loops tick at moments of their own.
    let phases = (
        Duration::from_millis(3137 * (i + 1) % 5_000),
        Duration::from_millis(7919 * (i + 1) % 20_000),
    );
    let watch = async {
        loop {
            let n = plane.get("/api/v1/nodes/node-a").await.unwrap_or_default();
            if tainted(&n) {
                return Instant::now() - t0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((not_ready, pods_deleted, attached_b), taint) =
        tokio::join!(kcm(plane, t0, &old, phases), watch);
    loop {
        if lun.keys().1 == Some(key_b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held_b = Instant::now() - t0;
    let r = Round {
        taint,
        decision: taint.saturating_sub(grace),
        not_ready,
        pods_deleted,
        attached_b,
        held_b,
    };
    // node-a comes back; its taint goes; the volume returns to it.
    alive.lock().unwrap().insert("node-a".into());
    ready(plane, "node-a").await;
    plane
        .until("the taint taken back", || async {
            !tainted(&plane.get("/api/v1/nodes/node-a").await.unwrap_or_default())
        })
        .await;
    let b = csi_fencer::k8s::cluster::attachment_name(DRIVER, HANDLE, "node-b");
    plane
        .delete(&format!("/apis/storage.k8s.io/v1/volumeattachments/{b}"))
        .await;
    plane
        .until("node-b let go", || async { lun.keys().1.is_none() })
        .await;
    r
}

fn main() {
    let rounds = env_num("ROUNDS", 3);
    let grace = Duration::from_secs(env_num("GRACE", 25));
    let delete_pods = std::env::var("DELETE_PODS").map_or(true, |v| v != "false");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (plane, alive, fast) = cluster().await;
        // The tests' kubelets renew every 300 ms: from now on, every 10 s.
        fast.abort();
        // The ServiceAccount admission wants the namespace's default account.
        plane
            .apply(&serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": "default"}}))
            .await;
        let renewals = Arc::new(Mutex::new(BTreeMap::new()));
        let _kubelets = kubelets_every(&plane, alive.clone(), Duration::from_secs(10), Some(renewals.clone()));
        let lun = Arc::new(lun::SimLun::new());
        let _a = daemon(&plane, "node-a", &lun, plane.api_port()).await;
        let _b = daemon(&plane, "node-b", &lun, plane.api_port()).await;
        let mut settings = failover::Settings::new([DRIVER.to_string()]);
        settings.lease_grace = grace;
        let (_m, _c, _stop) = controller_with(&plane, "bench", settings, Duration::from_secs(1), delete_pods).await;
        println!(
            "failover timeline, {rounds} rounds, grace {} s, pods deleted by pod GC {}; seconds from node-a's last Lease renewal",
            grace.as_secs(),
            if delete_pods { "or csi-fencer's controller (--delete-pods)" } else { "only (DELETE_PODS=false)" }
        );
        println!("{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "round", "taint", "decision", "NotReady", "pod gone", "B attach", "B holds");
        let mut all = Vec::new();
        for i in 0..rounds {
            let r = round(&plane, &lun, &alive, &renewals, grace, i).await;
            let nr = r.not_ready.map(secs).unwrap_or_else(|| "      -  ".into());
            println!("{:>5} {} {} {} {} {} {}", i + 1, secs(r.taint), secs(r.decision), nr, secs(r.pods_deleted), secs(r.attached_b), secs(r.held_b));
            all.push(r);
        }
        let m = |f: fn(&Round) -> Duration| median(all.iter().map(f).collect());
        println!(
            "median {} {} {:>9} {} {} {}",
            secs(m(|r| r.taint)),
            secs(m(|r| r.decision)),
            "",
            secs(m(|r| r.pods_deleted)),
            secs(m(|r| r.attached_b)),
            secs(m(|r| r.held_b))
        );
        println!(
            "csi-fencer's share: decision (grace expiry -> taint) median {} + acquire (B attached -> B holds) median {}",
            secs(m(|r| r.decision)),
            secs(m(|r| r.held_b - r.attached_b))
        );
    });
    rt.shutdown_background();
}
