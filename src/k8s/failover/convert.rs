//! From the API server's objects to the failover judgement's view: the only
//! place that knows which fields of a Node, a kubelet Lease, a
//! VolumeAttachment and a VolumeReservation the judgement rests on.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as KubeNode, Taint};
use k8s_openapi::api::storage::v1::VolumeAttachment;

use crate::daemon::reconcile::Phase;
use crate::failover::view::{Attachment, Cluster, Node, Ready, Report};
use crate::k8s::crd::{NodeState, VolumeReservation};

/// The taint csi-fencer applies, as non-graceful node shutdown defines it.
pub const TAINT_KEY: &str = "node.kubernetes.io/out-of-service";
/// The taint's value.
pub const TAINT_VALUE: &str = "nodeshutdown";
/// The taint's effect.
pub const TAINT_EFFECT: &str = "NoExecute";
/// When csi-fencer applied the taint (RFC 3339): the mark that it is ours.
pub const APPLIED_ANNOTATION: &str = "csi-fencer.io/out-of-service-applied";
/// Why csi-fencer applied it, in words.
pub const REASON_ANNOTATION: &str = "csi-fencer.io/out-of-service-reason";

/// The cluster from the caches' contents; `renewed` says when each node's
/// kubelet was last seen renewing its Lease.
pub fn cluster<'a>(
    nodes: impl IntoIterator<Item = &'a KubeNode>,
    renewed: &BTreeMap<String, SystemTime>,
    attachments: impl IntoIterator<Item = &'a VolumeAttachment>,
    reservations: impl IntoIterator<Item = &'a VolumeReservation>,
) -> Cluster {
    Cluster {
        nodes: nodes.into_iter().filter_map(|n| node(n, renewed)).collect(),
        attachments: attachments.into_iter().filter_map(attachment).collect(),
        reports: reservations.into_iter().filter_map(reports).collect(),
    }
}

/// A kubelet Lease's node and last renewal.
pub fn renewal(l: &Lease) -> Option<(String, SystemTime)> {
    let name = l.metadata.name.clone()?;
    let at = l.spec.as_ref()?.renew_time.as_ref()?;
    Some((name, SystemTime::from(at.0)))
}

fn node(n: &KubeNode, renewed: &BTreeMap<String, SystemTime>) -> Option<Node> {
    let name = n.metadata.name.clone()?;
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let ready = match ready {
        Some(c) if c.status == "True" => Ready::True,
        Some(c) => Ready::NotReady {
            // The kubelet's node shutdown manager says so in the message.
            shutting_down: c
                .message
                .as_deref()
                .is_some_and(|m| m.contains("shutting down")),
        },
        None => Ready::NotReady {
            shutting_down: false,
        },
    };
    let spec = n.spec.as_ref();
    let out_of_service = taints(n).iter().any(|t| t.key == TAINT_KEY);
    Some(Node {
        renewed: renewed.get(&name).copied(),
        name,
        ready,
        cordoned: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        out_of_service,
        tainted_by_us: ours(n).map(|(at, _)| at),
        volumes_in_use: n
            .status
            .as_ref()
            .and_then(|s| s.volumes_in_use.clone())
            .unwrap_or_default(),
    })
}

/// csi-fencer's taint on the node, with when it was applied: the
/// out-of-service taint whose `timeAdded` is the time the annotation names
/// (both are written by one patch). A taint a person applied after one of
/// ours was removed by hand is not ours, whatever annotation is left.
pub fn ours(n: &KubeNode) -> Option<(SystemTime, &Taint)> {
    let at = applied_at(n)?;
    let second = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()
    };
    taints(n).iter().find_map(|t| {
        let added = t.time_added.as_ref().map(|x| SystemTime::from(x.0));
        let same = t.key == TAINT_KEY
            && t.effect == TAINT_EFFECT
            && t.value.as_deref() == Some(TAINT_VALUE)
            && added
                .and_then(second)
                .is_some_and(|a| Some(a) == second(at));
        same.then_some((at, t))
    })
}

/// The node's taints.
pub fn taints(n: &KubeNode) -> &[Taint] {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// When csi-fencer applied its taint, from its annotation.
pub fn applied_at(n: &KubeNode) -> Option<SystemTime> {
    let v = n.metadata.annotations.as_ref()?.get(APPLIED_ANNOTATION)?;
    let t: k8s_openapi::jiff::Timestamp = v.parse().ok()?;
    Some(SystemTime::from(t))
}

fn attachment(va: &VolumeAttachment) -> Option<Attachment> {
    Some(Attachment {
        name: va.metadata.name.clone()?,
        node: va.spec.node_name.clone(),
        driver: va.spec.attacher.clone(),
        pv: va.spec.source.persistent_volume_name.clone(),
        created: va
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| SystemTime::from(t.0)),
    })
}

fn reports(vr: &VolumeReservation) -> Option<(String, BTreeMap<String, Report>)> {
    vr.status.as_ref()?;
    Some((vr.spec.persistent_volume_name.clone(), reports_of(vr)))
}

/// Each node's report in a VolumeReservation.
pub fn reports_of(vr: &VolumeReservation) -> BTreeMap<String, Report> {
    let Some(status) = vr.status.as_ref() else {
        return BTreeMap::new();
    };
    status
        .nodes
        .iter()
        .map(|e| {
            let r = Report {
                phase: phase(e.state),
                message: e.message.clone(),
            };
            (e.node.clone(), r)
        })
        .collect()
}

/// The domain state a node's entry reports.
pub fn phase(s: NodeState) -> Phase {
    match s {
        NodeState::Pending => Phase::Pending,
        NodeState::Holder => Phase::Held,
        NodeState::Registered => Phase::Registered,
        NodeState::Fenced => Phase::Fenced,
        NodeState::Released => Phase::Released,
        NodeState::Error => Phase::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kube_node(v: serde_json::Value) -> KubeNode {
        serde_json::from_value(v).expect("a Node")
    }

    #[test]
    fn a_node_reads_as_the_judgement_needs_it() {
        let n = kube_node(json!({
            "metadata": {"name": "node-a", "annotations": {APPLIED_ANNOTATION: "2026-12-07T10:00:00Z"}},
            "spec": {"unschedulable": true, "taints": [{"key": TAINT_KEY, "value": TAINT_VALUE, "effect": TAINT_EFFECT,
                "timeAdded": "2026-12-07T10:00:00Z"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False", "message": "node is shutting down"}],
                "volumesInUse": ["kubernetes.io/csi/d^3600a"]}
        }));
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "node-a", "namespace": "kube-node-lease"},
            "spec": {"renewTime": "2026-12-07T09:59:00.000000Z"}
        }))
        .expect("a Lease");
        let renewed = [&lease].into_iter().filter_map(renewal).collect();
        let c = cluster([&n], &renewed, [], []);
        let got = &c.nodes[0];
        assert_eq!(got.name, "node-a");
        assert_eq!(
            got.ready,
            Ready::NotReady {
                shutting_down: true
            }
        );
        assert!(got.cordoned && got.out_of_service);
        let at = |s: &str| SystemTime::from(s.parse::<k8s_openapi::jiff::Timestamp>().unwrap());
        assert_eq!(got.tainted_by_us, Some(at("2026-12-07T10:00:00Z")));
        assert_eq!(got.renewed, Some(at("2026-12-07T09:59:00Z")));
        assert_eq!(
            got.volumes_in_use,
            vec!["kubernetes.io/csi/d^3600a".to_string()]
        );
    }

    #[test]
    fn a_taint_is_ours_only_if_it_was_added_when_our_annotation_says() {
        let with = |added: &str| {
            kube_node(json!({
                "metadata": {"name": "node-a", "annotations": {APPLIED_ANNOTATION: "2026-12-07T10:00:00Z"}},
                "spec": {"taints": [{"key": TAINT_KEY, "value": TAINT_VALUE, "effect": TAINT_EFFECT, "timeAdded": added}]}
            }))
        };
        assert!(ours(&with("2026-12-07T10:00:00Z")).is_some());
        // A person's taint, applied after ours was removed by hand.
        assert!(ours(&with("2026-12-07T11:30:00Z")).is_none());
        let c = cluster([&with("2026-12-07T11:30:00Z")], &BTreeMap::new(), [], []);
        assert!(c.nodes[0].out_of_service && c.nodes[0].tainted_by_us.is_none());
    }

    #[test]
    fn the_annotation_without_the_taint_is_not_ours() {
        let n = kube_node(json!({
            "metadata": {"name": "node-a", "annotations": {APPLIED_ANNOTATION: "2026-12-07T10:00:00Z"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let c = cluster([&n], &BTreeMap::new(), [], []);
        assert_eq!(c.nodes[0].tainted_by_us, None);
        assert_eq!(c.nodes[0].renewed, None);
        assert_eq!(c.nodes[0].ready, Ready::True);
    }

    #[test]
    fn attachments_and_reports_carry_their_volume() {
        let va: VolumeAttachment = serde_json::from_value(json!({
            "metadata": {"name": "csi-1", "creationTimestamp": "2026-12-07T08:00:00Z"},
            "spec": {"attacher": "d", "nodeName": "node-a", "source": {"persistentVolumeName": "pv-1"}}
        }))
        .expect("a VolumeAttachment");
        let vr: VolumeReservation = serde_json::from_value(json!({
            "apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
            "metadata": {"name": "pv-1"},
            "spec": {"persistentVolumeName": "pv-1"},
            "status": {"nodes": [{"node": "node-a", "key": "0x1", "state": "Error", "registeredPaths": 0,
                "totalPaths": 2, "message": "no device", "lastTransitionTime": "2026-12-07T08:00:00Z"}]}
        }))
        .expect("a VolumeReservation");
        let c = cluster([], &BTreeMap::new(), [&va], [&vr]);
        assert_eq!(c.attachments[0].pv.as_deref(), Some("pv-1"));
        assert_eq!(c.attachments[0].node, "node-a");
        let r = &c.reports["pv-1"]["node-a"];
        assert_eq!(
            (r.phase.clone(), r.message.as_str()),
            (Phase::Error, "no device")
        );
    }
}
