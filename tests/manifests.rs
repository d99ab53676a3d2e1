//! The shipped manifests agree with the code: the CRD the chart installs is
//! what `csi-fencer crd` prints, the daemon's ClusterRole grants exactly the
//! API calls the daemon makes (`csi_fencer::k8s::api::Call::DAEMON`), and the
//! failover controller's roles exactly the calls it makes
//! (`Call::CONTROLLER`), each where it is made; no more, no less.

use std::collections::BTreeSet;

use csi_fencer::k8s::api::Call;
use serde::Deserialize;

const CHART_CRD: &str = "charts/csi-fencer/crds/volumereservations.csi-fencer.io.yaml";
const DEPLOY_CRD: &str = "deploy/crds/volumereservations.csi-fencer.io.yaml";
const DEPLOY: &str = "deploy/csi-fencer.yaml";
const FAILOVER: &str = "deploy/failover.yaml";

fn read(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_chart_and_deploy_crds_are_what_csi_fencer_crd_prints() {
    let printed = csi_fencer::k8s::crd::crd_yaml().unwrap();
    for path in [CHART_CRD, DEPLOY_CRD] {
        assert!(
            read(path) == printed,
            "{path} differs from `csi-fencer crd`: run `cargo run -- crd > {CHART_CRD}` and tests/chart/render-deploy.sh"
        );
    }
}

type Rules = BTreeSet<(String, String, String)>;

fn cluster_role_rules() -> Rules {
    roles(DEPLOY).remove("ClusterRole").unwrap_or_default()
}

/// The rules of every ClusterRole ("ClusterRole") and Role ("Role NS") of
/// a manifest file.
fn roles(path: &str) -> std::collections::BTreeMap<String, Rules> {
    let mut out = std::collections::BTreeMap::<String, Rules>::new();
    for doc in serde_yaml::Deserializer::from_str(&read(path)) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        let place = match v["kind"].as_str() {
            Some("ClusterRole") => "ClusterRole".to_string(),
            Some("Role") => format!(
                "Role {}",
                v["metadata"]["namespace"].as_str().unwrap_or("?")
            ),
            _ => continue,
        };
        let rules = out.entry(place).or_default();
        let list = v["rules"].as_sequence().expect("ClusterRole has rules");
        for r in list {
            let strings = |k: &str| -> Vec<String> {
                r[k].as_sequence()
                    .map(|s| {
                        s.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for g in strings("apiGroups") {
                for res in strings("resources") {
                    for verb in strings("verbs") {
                        rules.insert((g.clone(), res.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

fn needed(calls: impl IntoIterator<Item = Call>) -> Rules {
    calls
        .into_iter()
        .flat_map(|c| c.rules())
        .map(|r| (r.group.into(), r.resource.into(), r.verb.into()))
        .collect()
}

#[test]
fn the_failover_roles_grant_exactly_the_calls_the_controller_makes_where_it_makes_them() {
    let granted = roles(FAILOVER);
    // The kubelets' Leases are read in kube-node-lease only, the leader
    // Lease in the release's namespace only; the rest cluster-wide.
    let place = |c: &Call| match c {
        Call::ListNodeLeases | Call::WatchNodeLeases | Call::GetNodeLease => "Role kube-node-lease",
        Call::GetLeaderLease | Call::CreateLeaderLease | Call::UpdateLeaderLease => {
            "Role kube-system"
        }
        _ => "ClusterRole",
    };
    let mut wanted = std::collections::BTreeMap::<String, Rules>::new();
    for c in Call::CONTROLLER {
        wanted
            .entry(place(&c).to_string())
            .or_default()
            .extend(needed([c]));
    }
    assert_eq!(granted, wanted, "{FAILOVER} against Call::CONTROLLER");
    // Nothing of the daemon's powers: no PR-side writes, no PV reads.
    let daemon_only = needed(Call::DAEMON)
        .difference(&needed(Call::CONTROLLER))
        .cloned()
        .collect::<Rules>();
    for rules in granted.values() {
        assert!(rules.is_disjoint(&daemon_only), "{rules:?}");
    }
}

#[test]
fn the_cluster_role_grants_exactly_the_calls_the_code_makes() {
    let granted = cluster_role_rules();
    assert!(!granted.is_empty(), "no ClusterRole in {DEPLOY}");
    let needed = needed(Call::DAEMON);
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        missing.is_empty(),
        "calls without an RBAC rule in the chart: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "RBAC rules no call needs (least privilege): {extra:?}"
    );
}
