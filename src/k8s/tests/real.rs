//! The Kubernetes side against a real kube-apiserver (see [`super::plane`]):
//! the daemon runs with a token of the chart's ServiceAccount, so every
//! request it makes is authorized by the shipped ClusterRole, validated by
//! the shipped CRD schema and merged by the real server-side apply.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::lun::{SimLun, INITIATOR_A};
use super::node::{rules, start_node, NodeDaemon};
use super::plane::Plane;
use super::tag;
use crate::daemon::reconcile::{Phase, Update, VolumeStatus};
use crate::device::{Resolver, Sysfs};
use crate::fence::decide::KeyClasses;
use crate::fence::engine::{Outcome, VolumeState};
use crate::k8s::cluster::{attachment_name, Cluster};
use crate::k8s::report::Publisher;
use crate::testutil::TempDir;

const HANDLE: &str = "36001405000000001";

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn pv(name: &str, modes: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"accessModes": modes, "capacity": {"storage": "10Gi"}, "volumeMode": "Block",
                 "storageClassName": "san-block", "persistentVolumeReclaimPolicy": "Retain",
                 "csi": {"driver": "block.csi.example.com", "volumeHandle": HANDLE}}})
}

fn va(name: &str, node: &str, pv: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": name},
        "spec": {"attacher": "block.csi.example.com", "nodeName": node,
                 "source": {"persistentVolumeName": pv}}})
}

/// A plane with node-a and node-b, the StorageClass and an RWO pv-1.
async fn cluster() -> Plane {
    let plane = Plane::start().await;
    for n in ["node-a", "node-b"] {
        plane.apply(&node(n)).await;
    }
    plane
        .apply(
            &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "san-block"}, "provisioner": "block.csi.example.com",
            "parameters": {"pool": "gold"}}),
        )
        .await;
    plane.apply(&pv("pv-1", &["ReadWriteOnce"])).await;
    plane
}

struct Daemon {
    d: NodeDaemon<Arc<SimLun>>,
    lun: Arc<SimLun>,
    dirs: Arc<(TempDir, TempDir)>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.d.task.abort();
    }
}

/// node-a's daemon, as the chart's ServiceAccount.
async fn node_a(plane: &Plane, lun: SimLun) -> Daemon {
    let dirs = (
        crate::testutil::iscsi_fixture(INITIATOR_A),
        TempDir::new("k8s-state"),
    );
    node_a_on(plane.daemon_client().await, Arc::new(lun), Arc::new(dirs))
}

/// node-a's daemon as ServiceAccount `kube-system/sa`.
async fn node_a_as(plane: &Plane, sa: &str, lun: SimLun) -> Daemon {
    let dirs = (
        crate::testutil::iscsi_fixture(INITIATOR_A),
        TempDir::new("k8s-state"),
    );
    let client = plane.token_client("kube-system", sa).await;
    node_a_on(client, Arc::new(lun), Arc::new(dirs))
}

/// node-a's daemon on `lun`, with its sysfs and state store in `dirs`.
fn node_a_on(client: kube::Client, lun: Arc<SimLun>, dirs: Arc<(TempDir, TempDir)>) -> Daemon {
    let resolver = Resolver::new(Sysfs::new(dirs.0.path(), "/dev"), "mpath-");
    let d = start_node(client, "node-a", Arc::clone(&lun), resolver, dirs.1.path());
    Daemon { d, lun, dirs }
}

/// A VolumeAttachment `name` of `pv` to `node`, attached as the attacher
/// marks it.
async fn attach(plane: &Plane, name: &str, node: &str, pv: &str) {
    plane.apply(&va(name, node, pv)).await;
    plane.set_attached(name, true).await;
}

impl Daemon {
    async fn loaded(&self) {
        self.until("cache loaded", |d| {
            d.d.ready.load(std::sync::atomic::Ordering::Relaxed)
        })
        .await
    }

    fn phase(&self) -> Option<Phase> {
        self.d.rec.statuses().get("pv-1").map(|s| s.phase.clone())
    }

    async fn until(&self, what: &str, f: impl Fn(&Daemon) -> bool) {
        let (within, every) = (Duration::from_secs(15), Duration::from_millis(50));
        if crate::testutil::poll_async(within, every, || f(self)).await {
            return;
        }
        panic!(
            "timed out after 15 s waiting for: {what}\nstatuses: {:?}",
            self.d.rec.statuses()
        );
    }
}

async fn vres(plane: &Plane, name: &str) -> Option<Value> {
    plane
        .get(&format!(
            "/apis/csi-fencer.io/v1alpha1/volumereservations/{name}"
        ))
        .await
}

fn entry<'a>(v: &'a Value, node: &str) -> Option<&'a Value> {
    v["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
}

#[tokio::test]
async fn the_shipped_rbac_lets_a_holder_create_and_report_its_volume_reservation() {
    let plane = cluster().await;
    let a = node_a(&plane, SimLun::new()).await;
    a.loaded().await;
    attach(&plane, "csi-va-1", "node-a", "pv-1").await;
    a.until("held", |d| d.phase() == Some(Phase::Held)).await;
    assert_eq!(a.lun.keys().1, Some(tag().key_for("node-a")));
    // The entry and the volume-wide holder fields are two applies (two
    // field managers): a reader may see the first before the second.
    plane
        .until(
            "the VolumeReservation with node-a's entry and as holder",
            || async {
                vres(&plane, "pv-1").await.as_ref().is_some_and(|v| {
                    entry(v, "node-a").is_some_and(|e| e["state"] == "Holder")
                        && v["status"]["holder"]["node"] == "node-a"
                })
            },
        )
        .await;
    let v = vres(&plane, "pv-1").await.expect("found");
    let pv = plane
        .get("/api/v1/persistentvolumes/pv-1")
        .await
        .expect("pv");
    assert_eq!(
        v["metadata"]["ownerReferences"][0]["uid"], pv["metadata"]["uid"],
        "owned by its PV, for garbage collection"
    );
    let forbidden =
        a.d.metrics
            .render()
            .lines()
            .any(|l| l.contains("api_forbidden") && !l.ends_with(" 0"));
    assert!(!forbidden, "no request was forbidden");
}

/// What a node's reconciler would say about pv-1.
fn update(node: &str, phase: Phase) -> Update {
    let key = tag().key_for(node);
    let held = phase == Phase::Held;
    let outcome = Outcome {
        volume: "pv-1".into(),
        wwid: format!("naa.{}", &HANDLE[1..]),
        device: "/dev/dm-0".into(),
        key,
        state: if held {
            VolumeState::Held
        } else {
            VolumeState::NotRegistered
        },
        refusal: None,
        steps: Vec::new(),
        dry_run: false,
        preempted: Vec::new(),
        keys: KeyClasses::default(),
        paths: Vec::new(),
        generation: (1, 2),
        unit_attentions: Vec::new(),
        raced: false,
        notes: Vec::new(),
        leftover: false,
    };
    Update {
        status: VolumeStatus {
            volume: "pv-1".into(),
            wwid: outcome.wwid.clone(),
            phase,
            message: String::new(),
            paths_registered: usize::from(held) * 2,
            paths_total: 2,
            last_transition: 1_796_000_000,
            attachment: Some(format!("uid-{node}")),
            on_lun: held,
        },
        changed: true,
        outcome: Some(Arc::new(outcome)),
        reservation_type: Some(crate::scsi::ReservationType::WriteExclusiveRegistrantsOnly),
        error_kind: None,
        op: if held { "acquire" } else { "release" },
        asked: None,
    }
}

async fn publisher(plane: &Plane, node: &str) -> Publisher {
    let client = plane.daemon_client().await;
    let c = Cluster::new(client, node.into(), Duration::from_secs(5), rules());
    Publisher::new(Arc::new(c), tag().key_for(node), Arc::default())
}

#[tokio::test]
async fn a_new_holder_takes_the_volume_wide_fields_and_its_release_leaves_none() {
    let plane = cluster().await;
    let mut a = publisher(&plane, "node-a").await;
    let mut b = publisher(&plane, "node-b").await;
    a.publish(&update("node-a", Phase::Held))
        .await
        .expect("node-a holds");
    // node-a dies; node-b takes over. node-a never applies again.
    b.publish(&update("node-b", Phase::Held))
        .await
        .expect("node-b holds");
    let v = vres(&plane, "pv-1").await.expect("object");
    assert_eq!(v["status"]["holder"]["node"], "node-b", "{v}");
    b.publish(&update("node-b", Phase::Released))
        .await
        .expect("node-b releases");
    let v = vres(&plane, "pv-1").await.expect("object");
    for f in [
        "holder",
        "state",
        "wwid",
        "reservationType",
        "conditions",
        "registeredKeys",
    ] {
        assert!(
            v["status"].get(f).is_none(),
            "{f} outlived the release: {}",
            v["status"]
        );
    }
    assert_eq!(entry(&v, "node-b").expect("node-b")["state"], "Released");
}

/// Three nodes' entries in one object, each under its own field manager:
/// the real server's merge keeps every node's entry whatever the others
/// apply, and one node's release changes only its own.
#[tokio::test]
async fn three_nodes_apply_their_own_entries_and_none_overwrites_another() {
    let plane = cluster().await;
    plane.apply(&node("node-c")).await;
    let mut a = publisher(&plane, "node-a").await;
    let mut b = publisher(&plane, "node-b").await;
    let mut c = publisher(&plane, "node-c").await;
    a.publish(&update("node-a", Phase::Fenced))
        .await
        .expect("a");
    b.publish(&update("node-b", Phase::Held)).await.expect("b");
    c.publish(&update("node-c", Phase::Registered))
        .await
        .expect("c");
    let v = vres(&plane, "pv-1").await.expect("object");
    let states = |v: &Value| {
        ["node-a", "node-b", "node-c"].map(|n| {
            entry(v, n)
                .and_then(|e| e["state"].as_str().map(String::from))
                .unwrap_or_default()
        })
    };
    assert_eq!(states(&v), ["Fenced", "Holder", "Registered"], "{v}");
    assert_eq!(v["status"]["holder"]["node"], "node-b");
    c.publish(&update("node-c", Phase::Released))
        .await
        .expect("c releases");
    let v = vres(&plane, "pv-1").await.expect("object");
    assert_eq!(states(&v), ["Fenced", "Holder", "Released"], "{v}");
    assert_eq!(v["status"]["holder"]["node"], "node-b", "{v}");
    let managers: Vec<&str> = v["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    for m in [
        "csi-fencer/node-a",
        "csi-fencer/node-b",
        "csi-fencer/node-c",
        "csi-fencer/holder",
    ] {
        assert!(managers.contains(&m), "{m} not among {managers:?}");
    }
}

#[tokio::test]
async fn the_volume_reservation_goes_with_its_pv_by_garbage_collection() {
    let mut plane = cluster().await;
    plane.start_controllers();
    let mut a = publisher(&plane, "node-a").await;
    a.publish(&update("node-a", Phase::Held))
        .await
        .expect("node-a holds");
    assert!(vres(&plane, "pv-1").await.is_some());
    plane.delete("/api/v1/persistentvolumes/pv-1").await;
    plane
        .until("the VolumeReservation collected", || async {
            vres(&plane, "pv-1").await.is_none()
        })
        .await;
}

#[tokio::test]
async fn after_an_api_server_restart_the_watch_resumes_and_a_detach_releases() {
    let mut plane = cluster().await;
    let a = node_a(&plane, SimLun::new()).await;
    a.loaded().await;
    attach(&plane, "csi-va-1", "node-a", "pv-1").await;
    a.until("held", |d| d.phase() == Some(Phase::Held)).await;
    let lists = |d: &Daemon| {
        d.d.metrics
            .kube_watch_events
            .with_label_values(&["init-done"])
            .get()
    };
    let before = lists(&a);
    plane.stop_apiserver();
    a.until("not ready while the API server is down", |d| {
        !d.d.ready.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.start_apiserver().await;
    // Ready again within the watch's back-off (at most 5 s) and a relist,
    // and only once the relist completed.
    a.until("ready again after a relist", |d| {
        d.d.ready.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    assert!(lists(&a) > before, "the watch relisted before ready");
    plane
        .delete("/apis/storage.k8s.io/v1/volumeattachments/csi-va-1")
        .await;
    for _ in 0..600 {
        if a.phase() == Some(Phase::Released) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.phase(), Some(Phase::Released), "{:?}", a.d.rec.statuses());
    assert!(
        a.lun.keys().0.is_empty(),
        "the key went: {:?}",
        a.lun.keys()
    );
}

#[tokio::test]
async fn a_live_node_on_another_pv_of_the_same_lun_is_never_preempted() {
    // Two static PVs with one volume handle: node-b attached pv-2 and holds
    // the LUN; pv-1, the same LUN, is now attached to node-a.
    let plane = cluster().await;
    plane.apply(&pv("pv-2", &["ReadWriteOnce"])).await;
    let lun = SimLun::new();
    let b = tag().key_for("node-b");
    lun.register_other("iqn.2025-01.test.rig:nodeb", b, true);
    let a = node_a(&plane, lun).await;
    a.loaded().await;
    let name_b = attachment_name("block.csi.example.com", HANDLE, "node-b");
    assert_eq!(
        name_b, "csi-238c0e4aa68a270f6bca4aa4555c930bc09b6e64f58857a953c7f01ce94ad85a",
        "the attach/detach controller's naming (sha256 of handle, driver, node)"
    );
    attach(&plane, &name_b, "node-b", "pv-2").await;
    let name_a = attachment_name("block.csi.example.com", HANDLE, "node-a");
    attach(&plane, &name_a, "node-a", "pv-1").await;
    a.until("the acquire answered", |d| {
        d.d.rec
            .statuses()
            .get("pv-1")
            .is_some_and(|s| s.message.contains("also attached through"))
    })
    .await;
    assert!(
        a.lun.keys().0.contains(&b),
        "node-b's key stays: {:?}",
        a.lun.keys()
    );
    assert_eq!(a.lun.keys().1, Some(b), "node-b still holds");
    let preempts = a
        .lun
        .pr_out()
        .into_iter()
        .filter(|(_, o)| matches!(o, crate::scsi::prout::PrOut::Preempt { .. }))
        .count();
    assert_eq!(preempts, 0, "{:?}", a.lun.pr_out());
    let msg = a.d.rec.statuses()["pv-1"].message.clone();
    assert!(msg.contains("pv-2 on node-b"), "{msg}");
}

#[tokio::test]
async fn a_daemon_started_while_the_api_server_is_down_monitors_its_state_store() {
    // node-a holds pv-1; its daemon restarts while the API server is down,
    // and meanwhile node-b preempts it. The restarted daemon must not exit
    // (a crash loop) and must learn of the fence from its state store (I7).
    let mut plane = cluster().await;
    let a = node_a(&plane, SimLun::new()).await;
    a.loaded().await;
    attach(&plane, "csi-va-1", "node-a", "pv-1").await;
    a.until("held", |d| d.phase() == Some(Phase::Held)).await;
    let client = plane.daemon_client().await;
    let (lun, dirs) = (Arc::clone(&a.lun), Arc::clone(&a.dirs));
    drop(a);
    plane.stop_apiserver();
    lun.taken_by(
        "iqn.2025-01.test.rig:nodeb",
        tag().key_for("node-b"),
        tag().key_for("node-a"),
    );
    let again = node_a_on(client, lun, dirs);
    again
        .until("fenced, with the API server down", |d| {
            d.phase() == Some(Phase::Fenced)
        })
        .await;
    assert!(!again.d.task.is_finished(), "the daemon is still running");
    assert!(!again.d.ready.load(std::sync::atomic::Ordering::Relaxed));
    plane.start_apiserver().await;
    again
        .until("ready once the API server answers", |d| {
            d.d.ready.load(std::sync::atomic::Ordering::Relaxed)
        })
        .await;
    assert_eq!(again.phase(), Some(Phase::Fenced));
}

#[tokio::test]
async fn the_shipped_crd_and_its_objects_draw_no_warning() {
    let plane = Plane::start().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/crds/volumereservations.csi-fencer.io.yaml"
    ))
    .expect("CRD");
    let crd: Value = serde_yaml::from_str(&text).expect("yaml");
    // Created anew (the harness installed it already).
    let path =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/volumereservations.csi-fencer.io";
    plane.delete(path).await;
    plane
        .until("the CRD gone", || async { plane.get(path).await.is_none() })
        .await;
    let w = plane.apply_warnings(&crd).await;
    assert!(w.is_empty(), "the CRD: {w:?}");
    plane
        .until("the VolumeReservation API served again", || async {
            let req = http::Request::get("/apis/csi-fencer.io/v1alpha1/volumereservations")
                .body(Vec::new())
                .expect("request");
            plane.admin.request_text(req).await.is_ok()
        })
        .await;
    let obj = json!({"apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
        "metadata": {"name": "pv-1"}, "spec": {"persistentVolumeName": "pv-1"}});
    let w = plane.apply_warnings(&obj).await;
    assert!(w.is_empty(), "a VolumeReservation: {w:?}");
    let status = json!({"apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
        "metadata": {"name": "pv-1"}, "status": {"nodes": [{"node": "node-a",
        "key": "0x7e5766570ff05a20", "state": "Holder", "registeredPaths": 2, "totalPaths": 2,
        "lastTransitionTime": "2026-12-07T10:00:00Z"}]}});
    let w = plane.apply_status_warnings(&status).await;
    assert!(w.is_empty(), "its status: {w:?}");
}

#[tokio::test]
async fn an_event_with_a_long_message_is_cut_to_fit_not_refused() {
    let plane = cluster().await;
    let mut a = publisher(&plane, "node-a").await;
    let mut u = update("node-a", Phase::Error);
    u.error_kind = Some("identity_mismatch");
    u.outcome = None;
    u.status.message = format!("/dev/sdc: identity mismatch: {}", "x".repeat(2000));
    a.publish(&u).await.expect("published");
    let list = plane
        .get("/apis/events.k8s.io/v1/namespaces/default/events")
        .await
        .expect("events");
    let ev = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["reason"] == "IdentityMismatch")
        .unwrap_or_else(|| panic!("no IdentityMismatch Event: {list}"));
    let note = ev["note"].as_str().expect("note");
    assert!(
        note.len() <= 1024 && note.starts_with("node-a: /dev/sdc"),
        "{note}"
    );
    assert_eq!(ev["regarding"]["name"], "pv-1");
}

#[tokio::test]
async fn a_volume_never_held_and_then_detached_leaves_no_entry_behind() {
    // pv-9's LUN is not on node-a: the acquire fails (no device). Once the
    // attachment goes, nothing of it stays in the statuses, the gauge or
    // the VolumeReservation.
    let plane = cluster().await;
    let mut lost = pv("pv-9", &["ReadWriteOnce"]);
    lost["spec"]["csi"]["volumeHandle"] = json!("3600140500000000f");
    plane.apply(&lost).await;
    let a = node_a(&plane, SimLun::new()).await;
    a.loaded().await;
    attach(&plane, "csi-va-9", "node-a", "pv-9").await;
    let errored = |d: &Daemon| {
        d.d.rec
            .statuses()
            .get("pv-9")
            .is_some_and(|s| s.phase == Phase::Error)
    };
    a.until("the acquire failed", errored).await;
    plane
        .until("node-a's entry reported", || async {
            vres(&plane, "pv-9")
                .await
                .is_some_and(|v| entry(&v, "node-a").is_some())
        })
        .await;
    plane
        .delete("/apis/storage.k8s.io/v1/volumeattachments/csi-va-9")
        .await;
    a.until("forgotten", |d| !d.d.rec.statuses().contains_key("pv-9"))
        .await;
    let gauge = a.d.metrics.render();
    assert!(
        !gauge
            .lines()
            .any(|l| l.starts_with("csi_fencer_volumes") && !l.ends_with(" 0")),
        "{gauge}"
    );
    plane
        .until("node-a's entry withdrawn", || async {
            vres(&plane, "pv-9")
                .await
                .is_some_and(|v| entry(&v, "node-a").is_none())
        })
        .await;
}

#[tokio::test]
async fn a_role_without_a_rule_is_named_and_nothing_is_registered() {
    // The shipped ClusterRole without `get volumeattachments`, bound to
    // another ServiceAccount: the real authorizer refuses the fresh GET.
    let plane = cluster().await;
    let shipped = plane
        .get("/apis/rbac.authorization.k8s.io/v1/clusterroles/csi-fencer")
        .await
        .expect("shipped ClusterRole");
    let mut rules = shipped["rules"].as_array().expect("rules").clone();
    for r in &mut rules {
        if r["resources"][0] == "volumeattachments" {
            r["verbs"] = json!(["list", "watch"]);
        }
    }
    plane
        .apply(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "csi-fencer-less"}, "rules": rules}),
        )
        .await;
    plane
        .apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "csi-fencer-less", "namespace": "kube-system"}}))
        .await;
    plane
        .apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "csi-fencer-less"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csi-fencer-less"},
            "subjects": [{"kind": "ServiceAccount", "name": "csi-fencer-less", "namespace": "kube-system"}]}))
        .await;
    let a = node_a_as(&plane, "csi-fencer-less", SimLun::new()).await;
    a.loaded().await;
    attach(&plane, "csi-va-1", "node-a", "pv-1").await;
    a.until("refused", |d| d.phase() == Some(Phase::Error))
        .await;
    let m = a.d.rec.statuses()["pv-1"].message.clone();
    assert!(
        m.contains("may not get volumeattachments") && m.contains("ClusterRole"),
        "{m}"
    );
    assert!(
        a.lun.pr_out().is_empty(),
        "nothing sent: {:?}",
        a.lun.pr_out()
    );
    let forbidden =
        a.d.metrics
            .reconcile_errors
            .with_label_values(&["api_forbidden"])
            .get();
    assert!(forbidden > 0, "counted as api_forbidden");
}

#[tokio::test]
async fn a_node_that_finds_its_key_preempted_reports_fenced_and_never_registers_again() {
    let plane = cluster().await;
    let a = node_a(&plane, SimLun::new()).await;
    a.loaded().await;
    attach(&plane, "csi-va-1", "node-a", "pv-1").await;
    a.until("held", |d| d.phase() == Some(Phase::Held)).await;
    let sent = a.lun.pr_out().len();
    a.lun.taken_by(
        "iqn.2025-01.test.rig:nodeb",
        tag().key_for("node-b"),
        tag().key_for("node-a"),
    );
    a.until("fenced", |d| d.phase() == Some(Phase::Fenced))
        .await;
    plane
        .until(
            "Fenced in the VolumeReservation, no holder claimed",
            || async {
                vres(&plane, "pv-1").await.is_some_and(|v| {
                    entry(&v, "node-a").is_some_and(|e| e["state"] == "Fenced")
                        && v["status"].get("holder").is_none()
                })
            },
        )
        .await;
    plane
        .until("a Warning Event Fenced on the PV", || async {
            plane
                .get("/apis/events.k8s.io/v1/namespaces/default/events")
                .await
                .is_some_and(|l| {
                    l["items"].as_array().is_some_and(|i| {
                        i.iter().any(|e| {
                            e["reason"] == "Fenced"
                                && e["type"] == "Warning"
                                && e["regarding"]["name"] == "pv-1"
                        })
                    })
                })
        })
        .await;
    // I1: the same attachment, seen again over monitor and resync cycles,
    // never registers again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        a.lun.pr_out().len(),
        sent,
        "no PR OUT after the fence: {:?}",
        &a.lun.pr_out()[sent..]
    );
    assert_eq!(a.phase(), Some(Phase::Fenced));
}
