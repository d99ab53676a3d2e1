//! The Kubernetes source with the real engine over a simulated LUN.
//!
//! [`real`] runs against a real kube-apiserver and etcd ([`plane`]), with
//! the shipped CRD and RBAC: attach, move to another PV of the same LUN,
//! fence, a role without a rule, status by two holders, Events, garbage
//! collection, an API-server restart, a start without it.
//!
//! The mock API server here stays only for what a real one cannot be made
//! to do on cue: record and count every request (which verbs, bodies, field
//! managers; that a monitor check writes nothing), hold back one watch event
//! while a list already shows the object, answer a fresh GET with another
//! node's object, expire a watch (410) with a delete lost in the gap, and
//! cut one node off (a partition, with requests that hang) while the others
//! still reach it. The same mock serves `make bench-kube`'s daemon.

mod doubles;
mod failover;
mod lun;
mod mock;
mod node;
mod plane;
mod real;
mod rest;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use self::lun::{SimLun, INITIATOR_A};
use self::mock::{pv, va, MockApi};
use self::node::{rules, start_node};
use super::cluster::Cluster;
use crate::daemon::metrics::Metrics;
use crate::daemon::reconcile::{Phase, Reconciler};
use crate::device::{Resolver, Sysfs};
use crate::fence::engine::Engine;
use crate::fence::keys::ClusterTag;
use crate::scsi::prout::PrOut;
use crate::source::rules::DriverRule;
use crate::testutil::TempDir;

const VA: &str = "csi-0a1b";
const UID: &str = "5f0c2a51-0000-4000-8000-000000000001";

fn tag() -> ClusterTag {
    ClusterTag::new(0x7e57).unwrap()
}

struct Rig {
    api: MockApi,
    lun: Arc<SimLun>,
    rec: Arc<Reconciler<Engine<Arc<SimLun>>>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    cluster: Arc<Cluster>,
    _dirs: (TempDir, TempDir),
    task: tokio::task::JoinHandle<()>,
}

/// node-a's daemon against `api`, its LUN in `lun`.
async fn start(api: MockApi, lun: SimLun) -> Rig {
    let sys = crate::testutil::iscsi_fixture(INITIATOR_A);
    let state = TempDir::new("k8s-state");
    let lun = Arc::new(lun);
    let resolver = Resolver::new(Sysfs::new(sys.path(), "/dev"), "mpath-");
    let d = start_node(
        api.client(),
        "node-a",
        Arc::clone(&lun),
        resolver,
        state.path(),
    );
    Rig {
        api,
        lun,
        rec: d.rec,
        metrics: d.metrics,
        ready: d.ready,
        cluster: d.cluster,
        _dirs: (sys, state),
        task: d.task,
    }
}

impl Rig {
    async fn until(&self, what: &str, f: impl Fn(&Rig) -> bool) {
        let (within, every) = (Duration::from_secs(4), Duration::from_millis(10));
        if crate::testutil::poll_async(within, every, || f(self)).await {
            return;
        }
        panic!(
            "timed out waiting for: {what}\nstatuses: {:?}\nrequests: {:?}",
            self.rec.statuses(),
            self.api
                .seen()
                .iter()
                .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
                .collect::<Vec<_>>()
        );
    }

    /// Waits for the cache, attaches pv-1 to node-a, waits until it is held.
    async fn attach_and_hold(&self) {
        self.loaded().await;
        self.api.put_va(va(VA, UID, "node-a", "pv-1", true));
        self.until("held", |r| r.phase() == Some(Phase::Held)).await;
    }

    async fn loaded(&self) {
        self.until("cache loaded", |r| {
            r.ready.load(std::sync::atomic::Ordering::Relaxed)
        })
        .await
    }

    fn phase(&self) -> Option<Phase> {
        self.rec.statuses().get("pv-1").map(|s| s.phase.clone())
    }

    fn message(&self) -> String {
        self.rec
            .statuses()
            .get("pv-1")
            .map(|s| s.message.clone())
            .unwrap_or_default()
    }

    fn gets_of(&self, name: &str) -> usize {
        let p = format!("/apis/storage.k8s.io/v1/volumeattachments/{name}");
        self.api
            .seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path == p)
            .count()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn api() -> MockApi {
    let api = MockApi::new(&["node-a", "node-b"]);
    api.put_pv(pv("pv-1", &["ReadWriteOnce"]));
    api
}

fn registered(lun: &SimLun) -> bool {
    lun.pr_out()
        .iter()
        .any(|(_, o)| matches!(o, PrOut::RegisterAndIgnore(_) | PrOut::Register(_)))
}

#[tokio::test]
async fn attach_for_this_node_is_confirmed_fresh_then_acquired_preempting_the_stale_holder() {
    let lun = SimLun::new();
    let b = tag().key_for("node-b");
    lun.register_other("iqn.2025-01.test.rig:nodeb", b, true);
    let rig = start(api(), lun).await;
    rig.attach_and_hold().await;
    // The fresh GET happened, and the engine acted under that VolumeAttachment's UID.
    assert_eq!(rig.gets_of(VA), 1);
    assert_eq!(rig.rec.statuses()["pv-1"].attachment.as_deref(), Some(UID));
    let (keys, holder) = rig.lun.keys();
    let a = tag().key_for("node-a");
    assert_eq!(holder, Some(a));
    assert!(
        !keys.contains(&b),
        "node-b's stale key was preempted: {keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| **k == a).count(),
        2,
        "registered on both paths"
    );
    // After the fresh GET of its own attachment, node-b's attachment was
    // asked for by the name Kubernetes gives it (a fresh read, not the
    // cache, and no list of the whole cluster): 404, so its key was stale.
    let seen = rig.api.seen();
    let get = seen.iter().position(|s| s.path.ends_with(VA)).unwrap();
    let b_va =
        super::cluster::attachment_name("block.csi.example.com", "36001405000000001", "node-b");
    let asked = |s: &&mock::Seen| s.method == "GET" && s.path.ends_with(&b_va);
    let listed =
        |s: &&mock::Seen| s.path.ends_with("/volumeattachments") && !s.query.contains("watch");
    assert!(
        seen[get..].iter().any(|s| asked(&s)) && !seen[get..].iter().any(|s| listed(&s)),
        "{:?}",
        seen.iter()
            .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
            .collect::<Vec<_>>()
    );
    // Status applied by node-a's field manager with only its own entry.
    rig.until("status applied", |r| {
        r.api.seen().iter().any(|s| s.path.ends_with("/status"))
    })
    .await;
    let by = |manager: &str| {
        rig.api.seen().into_iter().rfind(|s| {
            s.path.ends_with("pv-1/status") && s.query.contains(&format!("fieldManager={manager}"))
        })
    };
    let st = by("csi-fencer%2Fnode-a").expect("node-a's entry applied");
    assert_eq!(st.content_type, "application/apply-patch+yaml");
    assert!(st.query.contains("force=true"), "{}", st.query);
    let nodes = st.body["status"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node"], "node-a");
    assert_eq!(nodes[0]["state"], "Holder");
    assert!(
        st.body["status"].get("holder").is_none(),
        "the volume-wide fields go under the holders' shared manager"
    );
    let held = by("csi-fencer%2Fholder").expect("the holder's fields applied");
    assert_eq!(held.body["status"]["holder"]["node"], "node-a");
    assert!(held.body["status"].get("nodes").is_none());
    // The object itself was applied first, owned by the PV.
    let obj = rig
        .api
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("volumereservations/pv-1"))
        .unwrap();
    assert_eq!(
        obj.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-pv-1"
    );
    // Events on the PV: Reserved, and Preempted naming node-b.
    rig.until("events", |r| r.api.events().len() >= 2).await;
    let ev = rig.api.events();
    let reasons: Vec<&str> = ev.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(
        reasons.contains(&"Reserved") && reasons.contains(&"Preempted"),
        "{reasons:?}"
    );
    let pre = ev.iter().find(|e| e["reason"] == "Preempted").unwrap();
    assert!(pre["note"].as_str().unwrap().contains("node-b"), "{pre}");
    assert_eq!(pre["regarding"]["kind"], "PersistentVolume");
    assert_eq!(pre["regarding"]["name"], "pv-1");
    // Detach: the VolumeAttachment is deleted, a fresh list confirms, the key goes.
    rig.api.delete_va(VA);
    rig.until("released", |r| r.phase() == Some(Phase::Released))
        .await;
    let (keys, holder) = rig.lun.keys();
    assert!(keys.is_empty() && holder.is_none(), "{keys:?} {holder:?}");
    rig.until("Released event", |r| {
        r.api.events().iter().any(|e| e["reason"] == "Released")
    })
    .await;
}

#[tokio::test]
async fn a_node_that_finds_its_key_preempted_reports_fenced_and_never_registers_again() {
    let rig = start(api(), SimLun::new()).await;
    rig.attach_and_hold().await;
    let sent = rig.lun.pr_out().len();
    // Monitor checks that find nothing new write no status.
    rig.until("status applied", |r| r.api.last("pv-1/status").is_some())
        .await;
    let applies = |r: &Rig| r.api.count(|s| s.path.ends_with("pv-1/status"));
    let before = applies(&rig);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(applies(&rig), before, "three monitor checks, no new status");
    rig.lun.taken_by(
        "iqn.2025-01.test.rig:nodeb",
        tag().key_for("node-b"),
        tag().key_for("node-a"),
    );
    rig.until("fenced", |r| r.phase() == Some(Phase::Fenced))
        .await;
    rig.until("Fenced event", |r| {
        r.api
            .events()
            .iter()
            .any(|e| e["reason"] == "Fenced" && e["type"] == "Warning")
    })
    .await;
    let st = rig.api.last("pv-1/status").unwrap();
    assert_eq!(st.body["status"]["nodes"][0]["state"], "Fenced");
    assert!(
        st.body["status"].get("holder").is_none(),
        "a fenced node claims nothing volume-wide"
    );
    // I1: the same attachment, seen again over several monitor and resync
    // cycles, never registers again.
    rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rig.lun.pr_out().len(),
        sent,
        "no PR OUT after the fence: {:?}",
        &rig.lun.pr_out()[sent..]
    );
    assert_eq!(rig.phase(), Some(Phase::Fenced));
}

#[tokio::test]
async fn the_live_set_comes_from_fresh_reads_not_the_watch_cache() {
    // A multi-node volume: node-b attached a moment ago and registered; our
    // watch has not delivered its VolumeAttachment yet. The cache alone would
    // call node-b's key stale and preempt it (I2); a fresh GET of the
    // attachment Kubernetes names for node-b finds it.
    let api = MockApi::new(&["node-a", "node-b"]);
    api.put_pv(pv("pv-1", &["ReadWriteMany"]));
    let lun = SimLun::new();
    let b = tag().key_for("node-b");
    lun.register_other("iqn.2025-01.test.rig:nodeb", b, false);
    let rig = start(api, lun).await;
    rig.loaded().await;
    let b_va =
        super::cluster::attachment_name("block.csi.example.com", "36001405000000001", "node-b");
    rig.api
        .put_va_unwatched(va(&b_va, "uid-b", "node-b", "pv-1", true));
    rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
    rig.until("held", |r| r.phase() == Some(Phase::Held)).await;
    assert_eq!(
        rig.cluster.store.lock().unwrap().len(),
        1,
        "node-b's attachment is not cached"
    );
    assert!(
        rig.lun.keys().0.contains(&b),
        "node-b's key stays: {:?}",
        rig.lun.keys()
    );
    assert!(
        !rig.lun
            .pr_out()
            .iter()
            .any(|(_, o)| matches!(o, PrOut::Preempt { .. })),
        "nothing preempted: {:?}",
        rig.lun.pr_out()
    );
}

#[tokio::test]
async fn an_unconfirmed_detach_releases_nothing_and_the_volume_stays_monitored() {
    let rig = start(api(), SimLun::new()).await;
    rig.attach_and_hold().await;
    let sent = rig.lun.pr_out().len();
    // The watch (already open) delivers the delete, but the fresh list that
    // would confirm it cannot be made: no release (I4), only checks.
    rig.api.set_down(true);
    rig.api.delete_va(VA);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        rig.lun.pr_out().len(),
        sent,
        "nothing sent: {:?}",
        &rig.lun.pr_out()[sent..]
    );
    assert_eq!(rig.phase(), Some(Phase::Held));
    // Those checks still notice a preemption (I7).
    rig.lun.taken_by(
        "iqn.2025-01.test.rig:nodeb",
        tag().key_for("node-b"),
        tag().key_for("node-a"),
    );
    rig.until("fenced", |r| r.phase() == Some(Phase::Fenced))
        .await;
    assert_eq!(rig.lun.pr_out().len(), sent);
}

#[tokio::test]
async fn an_explicit_release_needs_no_confirmed_detach_and_an_inferred_one_does() {
    let rig = start(api(), SimLun::new()).await;
    rig.attach_and_hold().await;
    let vol = crate::fence::engine::Volume {
        name: "pv-1".into(),
        wwid: "naa.6001405000000001".parse().unwrap(),
        device: None,
        access: crate::fence::policy::AccessMode::SingleNode,
        policy: Default::default(),
    };
    // Inferred (the source dropped it) while the VolumeAttachment exists: a check.
    rig.rec.submit(crate::daemon::reconcile::Op::Release {
        vol: vol.clone(),
        explicit: false,
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.phase(), Some(Phase::Held));
    assert!(!rig.lun.keys().0.is_empty());
    // Explicit (gRPC Release): released although attached (I4 allows it).
    rig.rec.submit(crate::daemon::reconcile::Op::Release {
        vol,
        explicit: true,
    });
    rig.until("released", |r| r.phase() == Some(Phase::Released))
        .await;
    assert!(rig.lun.keys().0.is_empty());
}

#[tokio::test]
async fn csi_address_names_the_driver_whose_volumes_are_fenced() {
    use super::csi::pb::identity_server::{Identity, IdentityServer};
    use super::csi::pb::*;
    struct Driver;
    #[tonic::async_trait]
    impl Identity for Driver {
        async fn get_plugin_info(
            &self,
            _: tonic::Request<GetPluginInfoRequest>,
        ) -> Result<tonic::Response<GetPluginInfoResponse>, tonic::Status> {
            Ok(tonic::Response::new(GetPluginInfoResponse {
                name: "block.csi.example.com".into(),
                vendor_version: "1.2.3".into(),
                manifest: Default::default(),
            }))
        }
        async fn probe(
            &self,
            _: tonic::Request<ProbeRequest>,
        ) -> Result<tonic::Response<ProbeResponse>, tonic::Status> {
            Ok(tonic::Response::new(ProbeResponse { ready: None }))
        }
    }
    let dir = TempDir::new("csi");
    let sock = dir.path().join("csi.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(Driver))
            .serve_with_incoming(incoming),
    );
    let info = super::csi::probe(&sock, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        (info.name.as_str(), info.vendor_version.as_str(), info.ready),
        ("block.csi.example.com", "1.2.3", true)
    );
    let spec = super::daemon::KubeSpec {
        kubeconfig: None,
        limits: (5.0, 10),
        timeout: Duration::from_secs(2),
        csi_address: Some(format!("unix://{}", sock.display()).into()),
    };
    let mut two = rules();
    two.push(DriverRule {
        name: "other.csi".into(),
        ..rules().remove(0)
    });
    let mine = super::daemon::driver_rules(&spec, two).await.unwrap();
    assert_eq!(
        mine.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["block.csi.example.com"]
    );
    let only_other = vec![DriverRule {
        name: "other.csi".into(),
        ..rules().remove(0)
    }];
    let e = super::daemon::driver_rules(&spec, only_other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"block.csi.example.com\" (from --csi-address) has no entry"),
        "{e}"
    );
}

#[tokio::test]
async fn attachments_of_other_nodes_reach_neither_the_engine_nor_a_get() {
    let rig = start(api(), SimLun::new()).await;
    rig.loaded().await;
    rig.api.put_va(va("csi-other", UID, "node-b", "pv-1", true));
    rig.api.put_va(va(VA, "uid-2", "node-a", "pv-2", false));
    rig.until("both cached", |r| {
        r.cluster.store.lock().unwrap().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rig.lun.pr_out().is_empty(),
        "no PR OUT: {:?}",
        rig.lun.pr_out()
    );
    assert_eq!(rig.gets_of("csi-other"), 0);
    assert!(rig.rec.statuses().is_empty());
}

#[tokio::test]
async fn a_fresh_get_that_says_404_or_another_node_registers_nothing() {
    for how in ["404", "other-node"] {
        let api = api();
        match how {
            "404" => api.hide_on_get(VA),
            _ => api.get_shows_node(VA, "node-b"),
        }
        let rig = start(api, SimLun::new()).await;
        rig.loaded().await;
        rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
        rig.until("refused", |r| r.phase() == Some(Phase::Pending))
            .await;
        assert!(
            !registered(&rig.lun),
            "{how}: nothing registered: {:?}",
            rig.lun.pr_out()
        );
        let m = rig.message();
        assert!(
            m.contains("fresh GET") && m.contains("nothing registered"),
            "{how}: {m}"
        );
        assert!(
            m.contains(if how == "404" {
                "not found (404)"
            } else {
                "on node node-b"
            }),
            "{how}: {m}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_api_server_means_nothing_registered_or_preempted() {
    let lun = SimLun::new();
    lun.register_other("iqn.2025-01.test.rig:nodeb", tag().key_for("node-b"), true);
    let rig = start(api(), lun).await;
    rig.loaded().await;
    // The watch delivers the attachment, then the API server goes away
    // before the fresh GET can be made.
    rig.api.set_down(true);
    rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
    rig.until("error reported", |r| r.phase() == Some(Phase::Error))
        .await;
    assert!(
        rig.lun.pr_out().is_empty(),
        "no PR OUT at all: {:?}",
        rig.lun.pr_out()
    );
    assert!(rig.message().contains("unreachable"), "{}", rig.message());
    assert!(rig.cluster.health.is_down());
    rig.until("not ready", |r| {
        !r.ready.load(std::sync::atomic::Ordering::Relaxed) || r.metrics.kube_api_up.get() == 0
    })
    .await;
    let text = rig.metrics.render();
    assert!(
        text.contains("csi_fencer_reconcile_errors_total{kind=\"api_unreachable\"}"),
        "{text}"
    );
    // Back again: the next resync acquires.
    rig.api.set_down(false);
    rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
    rig.until("held", |r| r.phase() == Some(Phase::Held)).await;
}

#[tokio::test]
async fn watch_410_gone_relists_and_a_delete_missed_meanwhile_still_releases() {
    let rig = start(api(), SimLun::new()).await;
    rig.attach_and_hold().await;
    let watches = |r: &Rig| r.api.count(|s| s.query.contains("watch=true"));
    let before = watches(&rig);
    // The delete event is lost to compaction; the watch ends and restarts with 410 Expired.
    rig.api.delete_va_unseen_and_expire_watches();
    rig.until("released after the relist", |r| {
        r.phase() == Some(Phase::Released)
    })
    .await;
    // No delete event was sent: only the relist after 410 can have shown it
    // gone. The watch restarted (its old resourceVersion expired) and a
    // relist ran before the new watch.
    assert!(watches(&rig) > before, "the watch restarted");
    let seen = rig.api.seen();
    let last_watch = seen
        .iter()
        .rposition(|s| s.query.contains("watch=true"))
        .unwrap();
    assert!(
        seen[..last_watch]
            .iter()
            .rev()
            .take_while(|s| !s.query.contains("watch=true"))
            .any(|s| s.path.ends_with("/volumeattachments")),
        "a LIST right before the new watch"
    );
    assert!(rig.lun.keys().0.is_empty());
    assert_eq!(
        rig.metrics.source_errors.get(),
        0,
        "an expired watch is the API server's normal end of one, not a source error"
    );
}

#[tokio::test]
async fn concurrent_fresh_lists_are_coalesced_and_each_answer_is_exact() {
    let api = api();
    for i in 0..5 {
        api.put_va(va(
            &format!("csi-{i}"),
            &format!("u-{i}"),
            &format!("node-{i}"),
            &format!("pv-{i}"),
            true,
        ));
    }
    api.put_va(va("csi-x", "u-x", "node-x", "pv-0", true));
    let cluster = Cluster::new(
        api.client(),
        "node-a".into(),
        Duration::from_secs(2),
        rules(),
    );
    let asks = (0..5).map(|i| {
        let c = &cluster;
        async move { c.fresh_attachments(&format!("pv-{i}"), None).await.unwrap() }
    });
    let answers = futures_util::future::join_all(asks).await;
    for (i, a) in answers.iter().enumerate() {
        let mut nodes: Vec<&str> = a.iter().map(|f| f.node.as_str()).collect();
        nodes.sort();
        let want = if i == 0 {
            vec!["node-0", "node-x"]
        } else {
            vec![["node-1", "node-2", "node-3", "node-4"][i - 1]]
        };
        assert_eq!(nodes, want, "pv-{i}");
    }
    let lists = api
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/volumeattachments"))
        .count();
    assert!(lists <= 2, "5 concurrent asks, {lists} lists");
    // A later ask is never served by an earlier list.
    api.put_va(va("csi-y", "u-y", "node-y", "pv-1", true));
    let later = cluster.fresh_attachments("pv-1", None).await.unwrap();
    assert_eq!(later.len(), 2, "{later:?}");
}

#[tokio::test]
async fn rbac_403_names_the_verb_and_resource() {
    let api = api();
    api.forbid("list", "nodes");
    let cluster = Cluster::new(
        api.client(),
        "node-a".into(),
        Duration::from_secs(2),
        rules(),
    );
    let e = super::daemon::check_nodes(&cluster, tag())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("may not list nodes") && e.contains("ClusterRole"),
        "{e}"
    );
    let api = api_forbidding_get();
    let rig = start(api, SimLun::new()).await;
    rig.loaded().await;
    rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
    rig.until("error", |r| r.phase() == Some(Phase::Error))
        .await;
    let m = rig.message();
    assert!(m.contains("may not get volumeattachments"), "{m}");
    assert!(!registered(&rig.lun));
}

fn api_forbidding_get() -> MockApi {
    let api = api();
    api.forbid("get", "volumeattachments");
    api
}

#[tokio::test]
async fn every_request_is_covered_by_a_declared_rbac_rule() {
    // Drive a full attach/detach, then check each request against Call::DAEMON.
    let lun = SimLun::new();
    lun.register_other("iqn.2025-01.test.rig:nodeb", tag().key_for("node-b"), true);
    let rig = start(api(), lun).await;
    super::daemon::check_nodes(&rig.cluster, tag())
        .await
        .unwrap();
    rig.api.put_va(va(VA, UID, "node-a", "pv-1", true));
    rig.until("held", |r| r.phase() == Some(Phase::Held)).await;
    rig.api.delete_va(VA);
    rig.until("released event", |r| {
        r.api.events().iter().any(|e| e["reason"] == "Released")
    })
    .await;
    let declared: BTreeSet<(String, String, String)> = super::api::Call::DAEMON
        .iter()
        .map(|c| {
            let r = c.rule();
            (
                r.group.to_string(),
                r.resource.to_string(),
                r.verb.to_string(),
            )
        })
        .collect();
    let used: BTreeSet<(String, String, String)> = rig
        .api
        .seen()
        .iter()
        .filter_map(|s| super::api::classify(&s.method, &s.path, &s.query))
        .collect();
    let undeclared: Vec<_> = used.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "requests without an RBAC rule in Call::DAEMON: {undeclared:?}"
    );
    // PatchEvent is only used for repeated events; everything else must have been exercised.
    let unused: Vec<_> = declared
        .difference(&used)
        .filter(|r| r.1 != "events" || r.2 != "patch")
        .collect();
    assert!(unused.is_empty(), "rules never exercised here: {unused:?}");
}

#[tokio::test]
async fn a_partition_costs_one_timeout_not_one_per_volume() {
    // 20 volumes read before the partition; while it lasts, the monitor's
    // lookups must not each wait --timeout in turn (they would starve it).
    let api = MockApi::new(&["node-a"]);
    for i in 0..20 {
        api.put_pv(pv(&format!("pv-{i}"), &["ReadWriteOnce"]));
    }
    let (cut, hung) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let client = api.client_hung_by(Arc::clone(&cut), Arc::clone(&hung));
    let mut c = Cluster::new(client, "node-a".into(), Duration::from_millis(300), rules());
    c.volume_ttl = Duration::from_millis(1);
    for i in 0..20 {
        c.volume(&format!("pv-{i}")).await.expect("read");
    }
    cut.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..20 {
        let v = c.volume(&format!("pv-{i}")).await;
        assert!(
            v.is_ok(),
            "pv-{i}: the last good reading is used: {:?}",
            v.err()
        );
    }
    assert_eq!(
        hung.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one request found the API server gone; the others were not sent"
    );
}

#[tokio::test]
async fn without_a_name_to_ask_by_liveness_falls_back_to_a_fresh_list() {
    // node-b's attachment has a name only a list finds ("csi-b", not the one
    // Kubernetes would give it, not in any cache), and node-c has no Node
    // object any more while its attachment still exists. Neither may be
    // taken for dead (I2) when the PV's handle is unknown or the key's node
    // cannot be named.
    let api = MockApi::new(&["node-a", "node-b"]);
    api.put_pv(pv("pv-1", &["ReadWriteMany"]));
    api.put_va(va("csi-b", "uid-b", "node-b", "pv-1", true));
    api.put_va(va("csi-c", "uid-c", "node-c", "pv-1", true));
    let c = Arc::new(Cluster::new(
        api.client(),
        "node-a".into(),
        Duration::from_secs(2),
        rules(),
    ));
    let (b, cc) = (tag().key_for("node-b"), tag().key_for("node-c"));
    // The PV's handle could not be read: only the list can tell.
    let no_handle = super::authority::ApiLiveness::new(Arc::clone(&c), tag(), "pv-1", None);
    let found = no_handle
        .confirm_fresh(&[(b, Some("node-b".into()))])
        .await
        .expect("confirmed");
    assert_eq!(found.live.get(&b).map(String::as_str), Some("node-b"));
    // The handle is known, but node-c's key maps to no Node: the list again.
    let csi = Some((
        "block.csi.example.com".to_string(),
        "36001405000000001".to_string(),
    ));
    let handled = super::authority::ApiLiveness::new(Arc::clone(&c), tag(), "pv-1", csi);
    let found = handled
        .confirm_fresh(&[(cc, None)])
        .await
        .expect("confirmed");
    assert_eq!(found.live.get(&cc).map(String::as_str), Some("node-c"));
    // A key of no node and no attachment stays stale.
    let nobody = tag().key_for("node-z");
    let found = handled
        .confirm_fresh(&[(nobody, None)])
        .await
        .expect("confirmed");
    assert!(found.live.is_empty(), "{:?}", found.live);
}
