//! The shipped manifests agree with the code: the CRD the chart installs is
//! what `csi-fencer crd` prints, and the ClusterRole grants exactly the API
//! calls the daemon makes (`csi_fencer::k8s::api::Call::ALL`), no more, no less.

use std::collections::BTreeSet;

use csi_fencer::k8s::api::Call;
use serde::Deserialize;

const CHART_CRD: &str = "charts/csi-fencer/crds/volumereservations.csi-fencer.io.yaml";
const DEPLOY_CRD: &str = "deploy/crds/volumereservations.csi-fencer.io.yaml";
const DEPLOY: &str = "deploy/csi-fencer.yaml";

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

fn cluster_role_rules() -> BTreeSet<(String, String, String)> {
    let mut rules = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&read(DEPLOY)) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" {
            continue;
        }
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
    rules
}

#[test]
fn the_cluster_role_grants_exactly_the_calls_the_code_makes() {
    let granted = cluster_role_rules();
    assert!(!granted.is_empty(), "no ClusterRole in {DEPLOY}");
    let needed: BTreeSet<(String, String, String)> = Call::ALL
        .iter()
        .flat_map(|c| c.rules())
        .map(|r| (r.group.into(), r.resource.into(), r.verb.into()))
        .collect();
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
