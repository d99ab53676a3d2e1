//! What an acquire asks the API server, at 1 000 and at 100 000
//! VolumeAttachments (`make bench-acquire`); prints figures, asserts nothing
//! about speed.
//!
//! The mock API server of the tests holds N attachments (pv-1 attached to
//! node-a, the others spread over 200 nodes and N PVs); the client goes
//! through the daemon's own rate limit (`--kube-api-qps 5`,
//! `--kube-api-burst 10`, as client-go). Measured side by side, each
//! `ROUNDS` times (default 5), medians:
//!
//! - **now**: the authority's confirmation of node-a's acquire (a fresh GET
//!   of its attachment) and the liveness question the engine asks after
//!   reading the LUN (one GET for the other key on it, node-b's);
//! - **before**: the fresh list of every attachment that the acquire used to
//!   make (still the release's fallback when the PV cannot be read).
//!
//! Then the same against a real kube-apiserver and etcd v1.36 (the tests'
//! control plane, `src/k8s/tests/plane.rs`), at the sizes it holds here:
//! node-a's client is the daemon's own (`k8s::daemon::client`: a token of
//! the chart's ServiceAccount, the same rate limit), its attachment named
//! as the external-attacher names it. And end to end: node-a's daemon, as
//! `run` assembles it, over the tests' simulated LUN (node-b's stale key on
//! it), from the PATCH that marks its attachment attached to the engine's
//! first PR OUT (polled every millisecond).
//!
//! Env: `ROUNDS` (5), `SIZES` (`1000,100000`), `REAL_SIZES` (`1000,10000`;
//! empty skips the real server).

// Linux only (sysfs fixtures, a real kube-apiserver); elsewhere this example is empty.
#![cfg_attr(not(unix), no_main)]
#![cfg(unix)]

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/mock.rs"]
mod mock;

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

// The paths the shared test modules use inside the crate.
use csi_fencer::{scsi, sim, transport};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use csi_fencer::daemon::metrics::Metrics;
use csi_fencer::daemon::reconcile::{Authority, Op, Phase};
use csi_fencer::fence::engine::{Authorization, Volume};
use csi_fencer::fence::keys::ClusterTag;
use csi_fencer::fence::policy::{AccessMode, Policy};
use csi_fencer::fence::state::AttachmentId;
use csi_fencer::k8s::authority::ApiAuthority;
use csi_fencer::k8s::cluster::Cluster;
use csi_fencer::k8s::gate::{GateLayer, Limits};
use csi_fencer::k8s::store::SlimVa;
use csi_fencer::source::rules::{compile, DriverRule, WwidFrom};
use mock::{pv, va, MockApi};
use tower::Layer;

const UID: &str = "5f0c2a51-0000-4000-8000-000000000001";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn rules() -> Vec<DriverRule> {
    vec![DriverRule {
        name: "block.csi.example.com".into(),
        wwid: WwidFrom::VolumeHandle(compile("^(?P<wwid>3[0-9a-f]+)$").expect("regex")),
        reservation_type: None,
        preempt: None,
    }]
}

/// A mock with `n` attachments, node-a's of pv-1 among them.
fn cluster_of(n: usize) -> MockApi {
    let api = MockApi::new(&["node-a", "node-b"]);
    api.put_pv(pv("pv-1", &["ReadWriteOnce"]));
    api.put_va(va("csi-own", UID, "node-a", "pv-1", true));
    for i in 1..n {
        let name = format!("csi-{i:064x}");
        let node = format!("node-{}", i % 200);
        api.put_va(va(
            &name,
            &format!("uid-{i}"),
            &node,
            &format!("pv-x{i}"),
            true,
        ));
    }
    api
}

/// node-a's view: the gated client and a watch cache holding its attachment.
fn node_a(api: &MockApi) -> Arc<Cluster> {
    let limits = Limits {
        qps: 5.0,
        burst: 10,
    };
    let svc = GateLayer::new(limits, Arc::new(Metrics::new())).layer(api.service());
    let client = kube::Client::new(svc, "default");
    let c = Cluster::new(client, "node-a".into(), Duration::from_secs(60), rules());
    let own: SlimVa =
        serde_json::from_value(va("csi-own", UID, "node-a", "pv-1", true)).expect("attachment");
    if let Ok(mut s) = c.store.lock() {
        s.apply(&own);
    }
    Arc::new(c)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn now(c: &Arc<Cluster>, tag: ClusterTag) -> Duration {
    now_for(c, tag, UID).await
}

async fn now_for(c: &Arc<Cluster>, tag: ClusterTag, uid: &str) -> Duration {
    let authority = ApiAuthority(Arc::clone(c), tag);
    let vol = Volume {
        name: "pv-1".into(),
        wwid: "naa.6001405000000001".parse().expect("wwid"),
        device: None,
        access: AccessMode::SingleNode,
        policy: Policy::default(),
    };
    let auth = Authorization {
        attachment: AttachmentId(uid.into()),
        read_at: SystemTime::now(),
        notes: Vec::new(),
        confirm: None,
    };
    let t0 = Instant::now();
    let op = Op::Acquire {
        vol: vol.clone(),
        auth,
        live: Default::default(),
    };
    let Ok(Op::Acquire { auth, .. }) = authority.confirm(op).await else {
        panic!("the acquire was not confirmed");
    };
    let liveness = auth.confirm.expect("a liveness question").0;
    let key_b = tag.key_for("node-b");
    let asked = tokio::task::spawn_blocking(move || {
        liveness.confirm(&vol, &[(key_b, Some("node-b".into()))])
    })
    .await
    .expect("join")
    .expect("confirmed");
    assert!(asked.live.is_empty(), "node-b has no attachment");
    t0.elapsed()
}

async fn before(c: &Arc<Cluster>) -> Duration {
    let t0 = Instant::now();
    let found = c.fresh_attachments("pv-1", None).await.expect("list");
    assert_eq!(found.len(), 1);
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    let rounds: usize = env("ROUNDS", "5").parse().expect("ROUNDS");
    let tag = ClusterTag::new(0x7e57).expect("tag");
    println!("attachments | now: GET own + GET per other key (median) | before: fresh list of all (median) | ratio");
    for n in env("SIZES", "1000,100000").split(',') {
        let n: usize = n.trim().parse().expect("SIZES");
        let api = cluster_of(n);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            // A fresh client each time: a full token bucket, as after a quiet spell.
            a.push(now(&node_a(&api), tag).await);
            b.push(before(&node_a(&api)).await);
        }
        let (a, b) = (median(a), median(b));
        row(&n.to_string(), a, b);
    }
    let sizes: Vec<usize> = env("REAL_SIZES", "1000,10000")
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("REAL_SIZES"))
        .collect();
    if !sizes.is_empty() {
        real(&sizes, rounds, tag).await;
    }
}

fn row(what: &str, a: Duration, b: Duration) {
    println!(
        "{what:>11} | {:>10.2} ms | {:>10.2} ms | {:.0}x",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        b.as_secs_f64() / a.as_secs_f64()
    );
}

const DRIVER: &str = "block.csi.example.com";
const HANDLE: &str = "36001405000000001";

/// The real control plane, grown to each size in turn.
async fn real(sizes: &[usize], rounds: usize, tag: ClusterTag) {
    let plane = plane::Plane::start().await;
    for n in ["node-a", "node-b"] {
        plane
            .apply(
                &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}),
            )
            .await;
    }
    let own = csi_fencer::k8s::cluster::attachment_name(DRIVER, HANDLE, "node-a");
    plane
        .apply(
            &serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                     "volumeMode": "Block", "persistentVolumeReclaimPolicy": "Retain",
                     "csi": {"driver": DRIVER, "volumeHandle": HANDLE}}}),
        )
        .await;
    let mut have = 1;
    for &n in sizes {
        let t0 = Instant::now();
        fill(&plane, have, n).await;
        have = have.max(n);
        eprintln!(
            "real server: {n} attachments stored in {:.0?}",
            t0.elapsed()
        );
        plane.apply(&real_va(&own, "node-a", "pv-1")).await;
        plane.set_attached(&own, true).await;
        let uid = plane
            .get(&format!("/apis/storage.k8s.io/v1/volumeattachments/{own}"))
            .await
            .and_then(|v| v["metadata"]["uid"].as_str().map(String::from))
            .expect("node-a's attachment");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let c = real_node_a(&plane, &own, &uid).await;
            a.push(now_for(&c, tag, &uid).await);
            b.push(before(&real_node_a(&plane, &own, &uid).await).await);
        }
        row(&format!("{n} (real)"), median(a), median(b));
        end_to_end(&plane, &own, n, rounds).await;
    }
}

/// node-a's daemon on the simulated LUN: attached to first PR OUT, `rounds`
/// times, each after a full release.
async fn end_to_end(plane: &plane::Plane, own: &str, n: usize, rounds: usize) {
    let va_path = format!("/apis/storage.k8s.io/v1/volumeattachments/{own}");
    plane.delete(&va_path).await;
    let lun = Arc::new(lun::SimLun::new());
    let (sys, state) = (
        testutil::iscsi_fixture(lun::INITIATOR_A),
        testutil::TempDir::new("bench-state"),
    );
    let resolver = csi_fencer::device::Resolver::new(
        csi_fencer::device::Sysfs::new(sys.path(), "/dev"),
        "mpath-",
    );
    let (ns, sa) = plane::SERVICE_ACCOUNT;
    let client = plane.token_client(ns, sa).await;
    let d = node::start_node(client, "node-a", Arc::clone(&lun), resolver, state.path());
    let t0 = Instant::now();
    wait("node-a's daemon listed", || {
        d.ready.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    eprintln!(
        "real server: node-a's daemon listed {n} attachments in {:.0?}",
        t0.elapsed()
    );
    let phase = || d.rec.statuses().get("pv-1").map(|s| s.phase.clone());
    let mut took = Vec::new();
    for _ in 0..rounds {
        let b = csi_fencer::fence::keys::ClusterTag::new(0x7e57)
            .expect("tag")
            .key_for("node-b");
        lun.register_other("iqn.2025-01.test.rig:nodeb", b, true);
        plane.apply(&real_va(own, "node-a", "pv-1")).await;
        let sent = lun.pr_out().len();
        let t0 = Instant::now();
        plane.set_attached(own, true).await;
        while lun.pr_out().len() == sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(t0.elapsed() < Duration::from_secs(60), "no PR OUT in 60 s");
        }
        took.push(t0.elapsed());
        wait("held", || phase() == Some(Phase::Held)).await;
        plane.delete(&va_path).await;
        wait("released", || phase() == Some(Phase::Released)).await;
    }
    d.task.abort();
    println!(
        "{:>11} | attached -> first PR OUT (median of {rounds}): {:.1} ms",
        format!("{n} (real)"),
        median(took).as_secs_f64() * 1e3
    );
}

async fn wait(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn real_va(name: &str, node: &str, pv: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": pv}}})
}

/// Creates attachments `from..to` (other nodes' volumes), 16 at a time.
async fn fill(plane: &plane::Plane, from: usize, to: usize) {
    use futures_util::StreamExt;
    let creates = (from..to).map(|i| {
        let body = real_va(
            &format!("csi-{i:064x}"),
            &format!("node-{}", i % 200),
            &format!("pv-x{i}"),
        );
        let req = http::Request::post("/apis/storage.k8s.io/v1/volumeattachments")
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request");
        let client = plane.admin.clone();
        async move { client.request_text(req).await.map(|_| ()) }
    });
    let mut results = futures_util::stream::iter(creates).buffer_unordered(16);
    while let Some(r) = results.next().await {
        r.expect("create an attachment");
    }
}

/// node-a's view through the daemon's own client (the chart's
/// ServiceAccount, its rate limit), its watch cache holding its attachment.
async fn real_node_a(plane: &plane::Plane, own: &str, uid: &str) -> Arc<Cluster> {
    let (ns, sa) = plane::SERVICE_ACCOUNT;
    let kc = std::env::temp_dir().join(format!("acquire-bench-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: p, cluster: {{server: \"{}\", \
             certificate-authority: \"{}\"}}}}]\nusers: [{{name: u, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: c, context: {{cluster: p, user: u}}}}]\ncurrent-context: c\n",
            plane.url,
            plane.pki("ca.crt"),
            plane.token(ns, sa).await
        ),
    )
    .expect("kubeconfig");
    let spec = csi_fencer::k8s::daemon::KubeSpec {
        kubeconfig: Some(kc),
        limits: (5.0, 10),
        timeout: Duration::from_secs(60),
        csi_address: None,
    };
    let client = csi_fencer::k8s::daemon::client(&spec, Arc::new(Metrics::new()))
        .await
        .expect("the daemon's client");
    let c = Cluster::new(client, "node-a".into(), Duration::from_secs(60), rules());
    let mine = serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": own, "uid": uid},
        "spec": {"attacher": DRIVER, "nodeName": "node-a", "source": {"persistentVolumeName": "pv-1"}},
        "status": {"attached": true}});
    let slim: SlimVa = serde_json::from_value(mine).expect("attachment");
    if let Ok(mut s) = c.store.lock() {
        s.apply(&slim);
    }
    Arc::new(c)
}
