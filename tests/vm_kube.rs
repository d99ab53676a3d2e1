//! The Kubernetes source on a real LIO target (VM rig): two node daemons,
//! in-process, with the real engine over real SG_IO and dm-multipath, fed by
//! the mock API server of the unit tests. A failover in the way the cluster
//! does it (node-a cut off, its VolumeAttachment force-deleted, node-b
//! attached) fences node-a on the LUN: sg_persist and node-a's own writes say so.

mod common;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/mock.rs"]
mod mock;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/node.rs"]
mod node;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use csi_fencer::daemon::reconcile::{Phase, Reconciler};
use csi_fencer::device::{Resolver, Sysfs};
use csi_fencer::fence::engine::Engine;
use csi_fencer::transport::sgio::SgIo;
use mock::{pv_of, va, MockApi};
use node::start_node;

const VOL0: Lun = Lun("VOL0");

type Rec = Arc<Reconciler<Engine<SgIo>>>;

/// One node's daemon: its engine finds its own maps by `prefix`.
fn start(api: &MockApi, node: &str, prefix: &str, cut: Arc<AtomicBool>) -> (Rec, Arc<AtomicBool>) {
    let state = std::path::PathBuf::from(format!("/tmp/kube-state-{node}"));
    let _ = std::fs::remove_dir_all(&state);
    let resolver = Resolver::new(Sysfs::default(), prefix);
    let d = start_node(api.client_cut_by(cut), node, SgIo, resolver, &state);
    (d.rec, d.ready)
}

fn phase(rec: &Rec) -> Option<Phase> {
    rec.statuses().get("pv-vol0").map(|s| s.phase.clone())
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after 30 s waiting for: {what}");
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
        let api = MockApi::new(&["node-a", "node-b"]);
        let mut pv = pv_of("pv-vol0", &["ReadWriteOnce"], "vol0-handle");
        pv["metadata"]["annotations"]["csi-fencer.io/wwid"] = serde_json::json!(VOL0.wwid());
        api.put_pv(pv);
        let cut_a = Arc::new(AtomicBool::new(false));
        let (a, ready_a) = start(&api, "node-a", "mpath-", cut_a.clone());
        let (b, ready_b) = start(&api, "node-b", "mpathb-", Arc::new(AtomicBool::new(false)));
        until("both daemons listed", || {
            ready_a.load(Ordering::Relaxed) && ready_b.load(Ordering::Relaxed)
        })
        .await;

        api.put_va(va("csi-a", "uid-a", "node-a", "pv-vol0", true));
        until("node-a holds", || phase(&a) == Some(Phase::Held)).await;
        assert_eq!(
            keys(),
            vec![key_a().0, key_a().0],
            "node-a on both of its paths (sg_persist)"
        );
        assert_eq!(holder(VOL0), Some(key_a().0));
        direct_write(&VOL0.dm("A"), 0, 4096, 0xa1).expect("node-a writes while it holds the LUN");
        assert_eq!(phase(&b), None, "node-b has no attachment: nothing done");

        // node-a is cut off from the API server; the cluster force-detaches
        // its attachment and attaches the volume to node-b.
        cut_a.store(true, Ordering::Relaxed);
        api.delete_va("csi-a");
        api.put_va(va("csi-b", "uid-b", "node-b", "pv-vol0", true));
        until("node-b holds", || phase(&b) == Some(Phase::Held)).await;
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
        until("Preempted event naming node-a", || {
            api.events().iter().any(|e| {
                e["reason"] == "Preempted"
                    && e["note"].as_str().is_some_and(|n| n.contains("node-a"))
            })
        })
        .await;

        // The partition heals: node-a learns its attachment is gone and ends
        // Released, touching nothing of node-b's.
        cut_a.store(false, Ordering::Relaxed);
        until("node-a released after it relisted", || {
            phase(&a) == Some(Phase::Released)
        })
        .await;
        assert_eq!(keys(), vec![key_b().0, key_b().0]);
        assert_eq!(holder(VOL0), Some(key_b().0));
        // Each node applied only its own entry; the last words of each.
        let last_of = |node: &str| {
            api.seen()
                .into_iter()
                .rfind(|s| {
                    s.path.ends_with("pv-vol0/status")
                        && s.body["status"]["nodes"][0]["node"] == node
                })
                .unwrap_or_else(|| panic!("no status from {node}"))
                .body
        };
        until("node-a published Released", || {
            last_of("node-a")["status"]["nodes"][0]["state"] == "Released"
        })
        .await;
        let b_last = last_of("node-b");
        assert_eq!(b_last["status"]["nodes"][0]["state"], "Holder");
        // The volume-wide fields go under the holders' shared field manager.
        let holder = api
            .seen()
            .into_iter()
            .rfind(|s| {
                s.path.ends_with("pv-vol0/status")
                    && s.query.contains("fieldManager=csi-fencer%2Fholder")
            })
            .expect("the holder's fields applied")
            .body;
        assert_eq!(holder["status"]["holder"]["node"], "node-b");
    });
    rt.shutdown_background();
}
