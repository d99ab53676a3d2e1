//! What the failover controller changes on a Node: the out-of-service taint
//! and the annotations that say csi-fencer applied it, when and why. Every
//! change is a JSON merge patch carrying the resourceVersion the decision
//! was made on, so a change made meanwhile (a kubelet, the node lifecycle
//! controller, the other replica) turns it into a conflict, not an
//! overwrite; the next pass decides again on what is there.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::convert::{
    taints, APPLIED_ANNOTATION, REASON_ANNOTATION, TAINT_EFFECT, TAINT_KEY, TAINT_VALUE,
};

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .unwrap_or_default()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The patch that puts the taint on `node` at `now`, with `reason`.
pub fn taint_patch(node: &Node, reason: &str, now: SystemTime) -> Value {
    let mut list: Vec<Value> = taints(node)
        .iter()
        .filter(|t| t.key != TAINT_KEY)
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .collect();
    list.push(json!({
        "key": TAINT_KEY,
        "value": TAINT_VALUE,
        "effect": TAINT_EFFECT,
        "timeAdded": rfc3339(now),
    }));
    json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": {
                APPLIED_ANNOTATION: rfc3339(now),
                REASON_ANNOTATION: reason,
            },
        },
        "spec": {"taints": list},
    })
}

/// The patch that takes csi-fencer's taint (exactly that one, see
/// [`super::convert::ours`]) and its annotations off `node`; every other
/// taint stays as it is.
pub fn untaint_patch(node: &Node) -> Value {
    let mine = super::convert::ours(node).map(|(_, t)| t.clone());
    let list: Vec<Value> = taints(node)
        .iter()
        .filter(|t| Some(*t) != mine.as_ref())
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .collect();
    json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": {APPLIED_ANNOTATION: null, REASON_ANNOTATION: null},
        },
        "spec": {"taints": list},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn node() -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "node-a", "resourceVersion": "42"},
            "spec": {"taints": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-12-07T10:00:00Z"},
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
            ]}
        }))
        .expect("a Node")
    }

    #[test]
    fn the_taint_patch_keeps_every_other_taint_and_is_conditional() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_637_600);
        let p = taint_patch(&node(), "kubelet Lease not renewed for 31 s", at);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        let list = p["spec"]["taints"].as_array().expect("a list");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["key"], "node.kubernetes.io/unreachable");
        assert_eq!(list[1]["value"], "db");
        assert_eq!(
            list[2],
            json!({"key": TAINT_KEY, "value": "nodeshutdown", "effect": "NoExecute", "timeAdded": "2026-12-07T10:00:00Z"})
        );
        assert_eq!(
            p["metadata"]["annotations"][APPLIED_ANNOTATION],
            "2026-12-07T10:00:00Z"
        );
        assert_eq!(
            p["metadata"]["annotations"][REASON_ANNOTATION],
            "kubelet Lease not renewed for 31 s"
        );
    }

    #[test]
    fn the_untaint_patch_removes_only_ours() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_637_600);
        let tainted: Node = {
            let mut n = node();
            let p = taint_patch(&n, "r", at);
            n.spec.as_mut().expect("spec").taints =
                serde_json::from_value(p["spec"]["taints"].clone()).expect("taints");
            n.metadata.annotations =
                serde_json::from_value(p["metadata"]["annotations"].clone()).expect("annotations");
            n
        };
        assert!(super::super::convert::ours(&tainted).is_some());
        let p = untaint_patch(&tainted);
        let list = p["spec"]["taints"].as_array().expect("a list");
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list.iter().all(|t| t["key"] != TAINT_KEY));
        assert_eq!(
            p["metadata"]["annotations"][APPLIED_ANNOTATION],
            Value::Null
        );
        assert_eq!(p["metadata"]["resourceVersion"], "42");
    }
}
