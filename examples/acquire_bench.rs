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
//! Env: `ROUNDS` (5), `SIZES` (`1000,100000`).

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/mock.rs"]
mod mock;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use csi_fencer::daemon::metrics::Metrics;
use csi_fencer::daemon::reconcile::{Authority, Op};
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
    let authority = ApiAuthority(Arc::clone(c), tag);
    let vol = Volume {
        name: "pv-1".into(),
        wwid: "naa.6001405000000001".parse().expect("wwid"),
        device: None,
        access: AccessMode::SingleNode,
        policy: Policy::default(),
    };
    let auth = Authorization {
        attachment: AttachmentId(UID.into()),
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
        println!(
            "{n:>11} | {:>10.2} ms | {:>10.2} ms | {:.0}x",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
}
