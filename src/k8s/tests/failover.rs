//! The failover controller against a real kube-apiserver, with the shipped
//! RBAC of `deploy/failover.yaml`, two node daemons on one strict LUN and
//! doubles of the kubelets (Lease renewals, Ready) and of what
//! kube-controller-manager does on the out-of-service taint (the dead node's
//! attachment deleted, the replacement pod's attachment made on node-b).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::doubles::*;
use super::lun::{SimLun, INITIATOR_A};
use super::plane::Plane;
use super::tag;
use crate::k8s::cluster::attachment_name;
use crate::k8s::failover::metrics::Metrics;
use crate::scsi::prout::PrOut;

async fn node_json(plane: &Plane, node: &str) -> Value {
    plane
        .get(&format!("/api/v1/nodes/{node}"))
        .await
        .expect("node")
}

async fn events(plane: &Plane, node: &str) -> Vec<String> {
    let list = plane
        .get("/apis/events.k8s.io/v1/namespaces/default/events")
        .await
        .unwrap_or_default();
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["regarding"]["name"] == node && e["regarding"]["kind"] == "Node")
                .filter_map(|e| e["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What kube-controller-manager does once node-a carries the taint: its
/// attachment force-detached (deleted), the replacement pod's made on node-b
/// and attached by the external-attacher.
fn kcm_double(plane: &Plane, old: String) -> tokio::task::JoinHandle<()> {
    let rest = super::rest::Rest(plane.admin.clone());
    tokio::spawn(async move {
        loop {
            let n = rest.get("/api/v1/nodes/node-a").await.unwrap_or_default();
            if tainted(&n) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Taint eviction: the pod marked for deletion, with its grace
        // period; nobody on node-a will finish it.
        graceful_delete(&rest, "/api/v1/namespaces/default/pods/app-0").await;
        // Attach-detach: the volume detached once its pod is gone (pod GC
        // would wait for NotReady; csi-fencer's controller does not).
        loop {
            if rest
                .get("/api/v1/namespaces/default/pods/app-0")
                .await
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rest.delete(&format!("/apis/storage.k8s.io/v1/volumeattachments/{old}"))
            .await;
        let name = attachment_name(DRIVER, HANDLE, "node-b");
        rest.apply(&json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": name},
            "spec": {"attacher": DRIVER, "nodeName": "node-b", "source": {"persistentVolumeName": "pv-1"}}}))
            .await;
        rest.set_attached(&name, true).await;
    })
}

/// A DELETE with the pod's own grace period: the API server only marks it.
async fn graceful_delete(rest: &super::rest::Rest, path: &str) {
    let body = serde_json::to_vec(
        &json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 30}),
    )
    .expect("json");
    let req = http::Request::delete(path)
        .header("Content-Type", "application/json")
        .body(body)
        .expect("request");
    rest.0.request_text(req).await.expect("graceful delete");
}

/// The application's pod on node-a, running.
async fn app_pod(plane: &Plane) {
    // The ServiceAccount admission wants the namespace's default account,
    // which kube-controller-manager would have made.
    plane
        .apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": "default"}}))
        .await;
    plane
        .apply(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app-0", "namespace": "default"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]}}))
        .await;
}

fn registers(lun: &SimLun, initiator: &str) -> usize {
    lun.pr_out_of(initiator)
        .iter()
        .filter(|(_, o)| matches!(o, PrOut::Register(_) | PrOut::RegisterAndIgnore(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_tainted_fenced_by_the_new_holder_and_untainted_when_back() {
    let (plane, alive, _kubelets) = cluster().await;
    let lun = Arc::new(SimLun::new());
    let partition = Partition::start(plane.api_port()).await;
    let a = daemon(&plane, "node-a", &lun, partition.port).await;
    let _b = daemon(&plane, "node-b", &lun, plane.api_port()).await;
    let old = attach(&plane, "node-a").await;
    app_pod(&plane).await;
    plane
        .until("node-a holds pv-1 and says so", || async {
            entry_state(&plane, "node-a").await.as_deref() == Some("Holder")
        })
        .await;
    assert_eq!(lun.keys().1, Some(tag().key_for("node-a")));
    let (metrics, _c, _stop) = controller(&plane, "controller-1").await;
    let _kcm = kcm_double(&plane, old);
    // node-a is cut off: its kubelet and its daemon stop reaching the API
    // server; node-a itself keeps writing.
    partition.set(true);
    alive.lock().unwrap().remove("node-a");
    let cut = std::time::Instant::now();
    let a_registers = registers(&lun, INITIATOR_A);
    let mut b_holds = false;
    while cut.elapsed() < Duration::from_secs(30) {
        let holder = lun.keys().1;
        if holder == Some(tag().key_for("node-b")) {
            b_holds = true;
        }
        // The write oracle: node-a writes until node-b's acquire preempts
        // it, and never again after.
        assert_eq!(lun.may_write(INITIATOR_A), !b_holds, "holder {holder:?}");
        if b_holds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b_holds, "node-b never took pv-1 over");
    let took = cut.elapsed();
    // The last renewal came at most one kubelet period (300 ms) before the cut.
    assert!(
        took + Duration::from_millis(300) >= GRACE,
        "tainted before the grace period: {took:?}"
    );
    let n = node_json(&plane, "node-a").await;
    assert!(tainted(&n), "{n}");
    let reason = n["metadata"]["annotations"]["csi-fencer.io/out-of-service-reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("fenced volumes: pv-1"), "{reason}");
    let evs = events(&plane, "node-a").await;
    for reason in ["OutOfServiceTainted", "OutOfServicePodsDeleted"] {
        assert!(evs.contains(&reason.to_string()), "{reason}: {evs:?}");
    }
    assert_eq!(
        crate::testutil::sample(&metrics.render(), "csi_fencer_failover_pods_deleted_total"),
        Some(1.0)
    );
    assert_eq!(
        crate::testutil::sample(
            &metrics.render(),
            "csi_fencer_failover_taints_total{action=\"applied\"}"
        ),
        Some(1.0)
    );
    let silence = crate::testutil::sample(
        &metrics.render(),
        "csi_fencer_failover_detection_seconds_sum",
    );
    assert!(
        silence.is_some_and(|s| s >= GRACE.as_secs_f64()),
        "{silence:?}"
    );
    // Still cut off, node-a's daemon learns it is fenced from the LUN (its
    // monitor needs no API server).
    let fenced = "csi_fencer_operations_total{operation=\"check\",outcome=\"fenced\"}";
    let knows = || crate::testutil::sample(&a.d.metrics.render(), fenced).is_some_and(|n| n >= 1.0);
    let learned =
        crate::testutil::poll_async(Duration::from_secs(10), Duration::from_millis(50), knows)
            .await;
    assert!(learned, "node-a's daemon never found itself fenced");
    // node-a comes back: its kubelet renews; its daemon says it was fenced
    // (then released, its attachment being gone) and registers nothing.
    partition.set(false);
    alive.lock().unwrap().insert("node-a".into());
    plane
        .until("node-a's report: fenced, or released after it", || async {
            matches!(
                entry_state(&plane, "node-a").await.as_deref(),
                Some("Fenced" | "Released")
            )
        })
        .await;
    plane
        .until("the taint taken back", || async {
            !tainted(&node_json(&plane, "node-a").await)
        })
        .await;
    assert!(!lun.may_write(INITIATOR_A));
    assert_eq!(
        registers(&lun, INITIATOR_A),
        a_registers,
        "node-a registered again"
    );
    let n = node_json(&plane, "node-a").await;
    assert!(
        n["metadata"]["annotations"]["csi-fencer.io/out-of-service-applied"].is_null(),
        "{n}"
    );
    assert!(events(&plane, "node-a")
        .await
        .contains(&"OutOfServiceRemoved".to_string()));
}

async fn apply_va(plane: &Plane, name: &str, node: &str, driver: &str, pv: &str) {
    plane
        .apply(&json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": name},
            "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": pv}}}))
        .await;
}

/// Waits until a Warning Event on `node` says `words`.
async fn refused(plane: &Plane, node: &str, words: &str) {
    plane
        .until(
            &format!("an OutOfServiceRefused Event on {node} saying {words:?}"),
            || async {
                let list = plane
                    .get("/apis/events.k8s.io/v1/namespaces/default/events")
                    .await
                    .unwrap_or_default();
                list["items"].as_array().is_some_and(|items| {
                    items.iter().any(|e| {
                        e["regarding"]["name"] == node
                            && e["reason"] == "OutOfServiceRefused"
                            && e["type"] == "Warning"
                            && e["note"].as_str().is_some_and(|n| n.contains(words))
                    })
                })
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unfenced_volume_or_a_partition_sized_death_is_refused_with_an_event() {
    let (plane, alive, _kubelets) = cluster().await;
    // node-c has a volume of a driver csi-fencer does not fence; node-b one
    // whose LUN its daemon could not fence (its report says Error).
    apply_va(&plane, "csi-nfs", "node-c", "nfs.csi.k8s.io", "pv-nfs").await;
    apply_va(&plane, "csi-2", "node-b", DRIVER, "pv-2").await;
    plane
        .apply(
            &json!({"apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
            "metadata": {"name": "pv-2"}, "spec": {"persistentVolumeName": "pv-2"}}),
        )
        .await;
    plane
        .apply_status_warnings(&json!({"apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
            "metadata": {"name": "pv-2"},
            "status": {"nodes": [{"node": "node-b", "key": "0x7e57000000000001", "state": "Error",
                "registeredPaths": 0, "totalPaths": 2, "message": "persistent reservations not supported",
                "lastTransitionTime": "2026-12-07T10:00:00Z"}]}}))
        .await;
    let (metrics, _c, _stop) = controller(&plane, "controller-1").await;
    alive.lock().unwrap().remove("node-c");
    refused(
        &plane,
        "node-c",
        "is of driver nfs.csi.k8s.io, which csi-fencer does not fence",
    )
    .await;
    alive.lock().unwrap().remove("node-b");
    refused(&plane, "node-b", "volume pv-2 (VolumeAttachment csi-2) is not fenced: the node's last report is error: persistent reservations not supported").await;
    // node-c's foreign volume goes: node-c would now be taintable, but two
    // of three nodes look dead.
    plane
        .delete("/apis/storage.k8s.io/v1/volumeattachments/csi-nfs")
        .await;
    refused(&plane, "node-c", "2 of 3 nodes look dead").await;
    for n in ["node-a", "node-b", "node-c"] {
        assert!(!tainted(&node_json(&plane, n).await), "{n} tainted");
    }
    let text = metrics.render();
    for reason in [
        "unfenced-driver",
        "unprotected-volume",
        "too-many-unhealthy",
    ] {
        let line = format!("csi_fencer_failover_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(
            crate::testutil::sample(&text, &line),
            Some(1.0),
            "{reason}:\n{text}"
        );
    }
}

fn counted(m: &Metrics, what: &str) -> f64 {
    crate::testutil::sample(&m.render(), what).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_dies_mid_failover_loses_no_decision_and_its_successor_taints_nothing_twice()
{
    let (plane, alive, _kubelets) = cluster().await;
    let (m1, c1, _s1) = controller(&plane, "controller-1").await;
    let (m2, c2, _s2) = controller(&plane, "controller-2").await;
    plane
        .until("one leader", || async {
            counted(&m1, "csi_fencer_failover_leader") + counted(&m2, "csi_fencer_failover_leader")
                == 1.0
        })
        .await;
    let (lead, follow) = if counted(&m1, "csi_fencer_failover_leader") == 1.0 {
        ((m1, c1), (m2, c2))
    } else {
        ((m2, c2), (m1, c1))
    };
    // The leader crashes (its Lease stays held) as node-a dies: the decision
    // to taint node-a is the successor's, once the Lease expires.
    lead.1.abort();
    alive.lock().unwrap().remove("node-a");
    plane
        .until("node-a tainted by the successor", || async {
            tainted(&node_json(&plane, "node-a").await)
        })
        .await;
    let applied = "csi_fencer_failover_taints_total{action=\"applied\"}";
    assert_eq!(counted(&lead.0, applied), 0.0);
    assert_eq!(counted(&follow.0, applied), 1.0);
    let stamp = node_json(&plane, "node-a").await["metadata"]["annotations"]
        ["csi-fencer.io/out-of-service-applied"]
        .clone();
    // The successor crashes right after its taint; a third replica takes
    // over and finds the decision carried out: nothing is tainted twice.
    follow.1.abort();
    let (m3, _c3, _s3) = controller(&plane, "controller-3").await;
    plane
        .until("controller-3 leads", || async {
            counted(&m3, "csi_fencer_failover_leader") == 1.0
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counted(&m3, applied), 0.0);
    let n = node_json(&plane, "node-a").await;
    assert_eq!(
        n["metadata"]["annotations"]["csi-fencer.io/out-of-service-applied"],
        stamp
    );
    let ours = n["spec"]["taints"].as_array().map(|t| {
        t.iter()
            .filter(|t| t["key"] == "node.kubernetes.io/out-of-service")
            .count()
    });
    assert_eq!(ours, Some(1), "{n}");
    let lease = plane
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/csi-fencer-failover")
        .await
        .expect("leader Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "controller-3");
    assert_eq!(lease["spec"]["leaseTransitions"], 2, "{lease}");
}

/// Two electors; the leader is cut off from the API server. At no moment
/// do both hold leadership (each `valid_until` in the future), and the
/// other takes over once the Lease has gone unrenewed for its duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_api_server_stops_leading_before_the_other_starts() {
    use crate::k8s::api::ApiHealth;
    use crate::k8s::leader::{Elector, LeaderSpec};
    use std::time::Instant;
    let (plane, _alive, _kubelets) = cluster().await;
    let partition = Partition::start(plane.api_port()).await;
    let spec = |id: &str| LeaderSpec {
        namespace: "kube-system".into(),
        name: "csi-fencer-failover".into(),
        identity: id.into(),
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
    };
    let (ns, sa) = ("kube-system", "csi-fencer-failover");
    let url_a = format!("https://127.0.0.1:{}", partition.port);
    let client_a = plane.token_client_via(ns, sa, &url_a).await;
    let client_b = plane.token_client(ns, sa).await;
    let timeout = Duration::from_secs(20);
    let (valid_a, a) = tokio::sync::watch::channel(None);
    let (valid_b, b) = tokio::sync::watch::channel(None);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let ea = Elector::new(client_a, spec("a"), Arc::new(ApiHealth::default()), timeout);
    tokio::spawn(ea.run(valid_a, stopped.clone()));
    let leads = |r: &tokio::sync::watch::Receiver<Option<Instant>>| {
        r.borrow().is_some_and(|u| Instant::now() < u)
    };
    let a_leads =
        crate::testutil::poll_async(Duration::from_secs(10), Duration::from_millis(20), || {
            leads(&a)
        })
        .await;
    assert!(a_leads, "a never led");
    let eb = Elector::new(client_b, spec("b"), Arc::new(ApiHealth::default()), timeout);
    tokio::spawn(eb.run(valid_b, stopped));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!leads(&b), "b leads while a renews");
    partition.set(true);
    let cut = Instant::now();
    let (mut a_stopped, mut b_started) = (None, None);
    while cut.elapsed() < Duration::from_secs(15) && b_started.is_none() {
        let (la, lb) = (leads(&a), leads(&b));
        assert!(!(la && lb), "two leaders {:?} after the cut", cut.elapsed());
        if !la && a_stopped.is_none() {
            a_stopped = Some(cut.elapsed());
        }
        if lb {
            b_started = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stopped_at, started_at) = (
        a_stopped.expect("a stopped"),
        b_started.expect("b took over"),
    );
    assert!(
        stopped_at <= Duration::from_secs(3),
        "a led {stopped_at:?} past the cut"
    );
    assert!(
        started_at >= Duration::from_secs(3),
        "b led {started_at:?} after the cut"
    );
}
