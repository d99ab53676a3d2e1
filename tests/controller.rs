//! `csi-fencer controller` as a process, against a real kube-apiserver with
//! the shipped controller RBAC (`deploy/failover.yaml`): it loads its caches,
//! leads on its Lease, serves its endpoints, refuses a partition-sized
//! death with an Event, and gives its Lease up on SIGTERM.

// Linux only: signals, unix sockets and a real kube-apiserver.
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

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use plane::Plane;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_process_leads_refuses_a_partition_and_hands_its_lease_over_on_sigterm() {
    let plane = Plane::start().await;
    plane.install_failover_rbac().await;
    // One node, whose kubelet last renewed a minute ago: all of the cluster
    // looks dead, which is a partition, not a node death.
    plane
        .apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-x"}}))
        .await;
    plane
        .apply(
            &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "node-x", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "node-x", "renewTime": "2026-01-01T00:00:00.000000Z"}}),
        )
        .await;
    let kc = plane
        .token_kubeconfig("kube-system", "csi-fencer-failover", &plane.url)
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args([
            "controller",
            "--driver",
            "block.csi.example.com",
            "--http-endpoint",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args([
            "--identity",
            "replica-1",
            "--leader-election-namespace",
            "kube-system",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("csi-fencer controller");
    let mut p = Proc(child);
    let ready = || testutil::http_get(port, "/readyz").is_some_and(|(c, _)| c == 200);
    assert!(
        testutil::poll_async(Duration::from_secs(30), Duration::from_millis(100), ready).await,
        "/readyz never answered 200"
    );
    let leads = || {
        testutil::http_get(port, "/metrics")
            .and_then(|(_, m)| testutil::sample(&m, "csi_fencer_failover_leader"))
            == Some(1.0)
    };
    assert!(
        testutil::poll_async(Duration::from_secs(30), Duration::from_millis(100), leads).await,
        "never led"
    );
    plane
        .until("the refusal Event on node-x", || async {
            let l = plane
                .get("/apis/events.k8s.io/v1/namespaces/default/events")
                .await
                .unwrap_or_default();
            l["items"].as_array().is_some_and(|i| {
                i.iter().any(|e| {
                    e["regarding"]["name"] == "node-x"
                        && e["reason"] == "OutOfServiceRefused"
                        && e["note"]
                            .as_str()
                            .is_some_and(|n| n.contains("1 of 1 nodes look dead"))
                })
            })
        })
        .await;
    let lease_path =
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/csi-fencer-failover";
    let lease = plane.get(lease_path).await.expect("the leader Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-1");
    let node = plane.get("/api/v1/nodes/node-x").await.expect("node-x");
    let out_of_service = node["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/out-of-service")
    });
    assert!(!out_of_service, "{node}");
    // SIGTERM: the Lease is given up, so another replica leads at once.
    let pid = p.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let s = p.0.wait();
        (s, p)
    })
    .await
    .expect("wait");
    let (status, mut p) = status;
    let mut log = String::new();
    if let Some(mut e) = p.0.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "exit: {status:?}\n{log}"
    );
    let lease = plane.get(lease_path).await.expect("the leader Lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}\n{log}");
}
