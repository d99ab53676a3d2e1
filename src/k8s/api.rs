//! Every Kubernetes API call csi-fencer makes, named. The node daemon's
//! ClusterRole grants exactly [`Call::DAEMON`], the failover controller's
//! roles exactly [`Call::CONTROLLER`] (tests compare them), and every error
//! names the call so a missing RBAC rule reads as what to grant.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One kind of request to the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Call {
    /// The fresh read of this node's VolumeAttachment that authorises a registration (I1).
    GetVolumeAttachment,
    /// The cache's initial list, and the fresh list of live attachments (I2).
    ListVolumeAttachments,
    /// The cache's watch.
    WatchVolumeAttachments,
    /// A volume's WWID, access modes and annotations.
    GetPersistentVolume,
    /// Key collisions between node names, at start; the failover
    /// controller's cache of Nodes.
    ListNodes,
    /// StorageClass parameters that override the policy.
    GetStorageClass,
    /// Server-side apply of a VolumeReservation (creates it with its owner reference).
    ApplyVolumeReservation,
    /// Who the VolumeReservation names as holder, before a node that let go
    /// of the reservation removes its volume-wide fields; the nodes' reports
    /// read fresh before the failover controller taints a node.
    GetVolumeReservation,
    /// Server-side apply of this node's entry of a VolumeReservation's status.
    ApplyVolumeReservationStatus,
    /// An Event on a PersistentVolume.
    CreateEvent,
    /// The next occurrence of a repeated Event.
    PatchEvent,
    /// The failover controller's cache of Nodes: its watch.
    WatchNodes,
    /// The out-of-service taint and its annotations, put on or taken off.
    PatchNode,
    /// The kubelets' Leases (`kube-node-lease`): the cache's list.
    ListNodeLeases,
    /// The kubelets' Leases: the cache's watch.
    WatchNodeLeases,
    /// A fresh read of one kubelet's Lease before its node is tainted.
    GetNodeLease,
    /// The nodes' reservation reports: the cache's list.
    ListVolumeReservations,
    /// The nodes' reservation reports: the cache's watch.
    WatchVolumeReservations,
    /// The failover controller's leader Lease: read.
    GetLeaderLease,
    /// The failover controller's leader Lease: made the first time.
    CreateLeaderLease,
    /// The failover controller's leader Lease: acquired, renewed or given up.
    UpdateLeaderLease,
    /// The pods of a node csi-fencer tainted out-of-service.
    ListPods,
    /// A terminating pod of such a node, force-deleted.
    DeletePod,
}

/// One RBAC permission: API group, resource (with subresource), verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// The API group ("" for the core group).
    pub group: &'static str,
    /// The resource, `resource/subresource` for a subresource.
    pub resource: &'static str,
    /// The verb.
    pub verb: &'static str,
}

impl Call {
    /// Every call the node daemon makes.
    pub const DAEMON: [Call; 11] = [
        Call::GetVolumeAttachment,
        Call::ListVolumeAttachments,
        Call::WatchVolumeAttachments,
        Call::GetPersistentVolume,
        Call::ListNodes,
        Call::GetStorageClass,
        Call::ApplyVolumeReservation,
        Call::GetVolumeReservation,
        Call::ApplyVolumeReservationStatus,
        Call::CreateEvent,
        Call::PatchEvent,
    ];

    /// Every call the failover controller makes.
    pub const CONTROLLER: [Call; 18] = [
        Call::ListNodes,
        Call::WatchNodes,
        Call::PatchNode,
        Call::ListNodeLeases,
        Call::WatchNodeLeases,
        Call::GetNodeLease,
        Call::ListVolumeAttachments,
        Call::WatchVolumeAttachments,
        Call::ListVolumeReservations,
        Call::WatchVolumeReservations,
        Call::GetLeaderLease,
        Call::CreateLeaderLease,
        Call::UpdateLeaderLease,
        Call::CreateEvent,
        Call::PatchEvent,
        Call::ListPods,
        Call::DeletePod,
        Call::GetVolumeReservation,
    ];

    /// The permission it needs.
    pub fn rule(self) -> Rule {
        let (group, resource, verb) = match self {
            Call::GetVolumeAttachment => ("storage.k8s.io", "volumeattachments", "get"),
            Call::ListVolumeAttachments => ("storage.k8s.io", "volumeattachments", "list"),
            Call::WatchVolumeAttachments => ("storage.k8s.io", "volumeattachments", "watch"),
            Call::GetPersistentVolume => ("", "persistentvolumes", "get"),
            Call::ListNodes => ("", "nodes", "list"),
            Call::GetStorageClass => ("storage.k8s.io", "storageclasses", "get"),
            Call::ApplyVolumeReservation => ("csi-fencer.io", "volumereservations", "patch"),
            Call::GetVolumeReservation => ("csi-fencer.io", "volumereservations", "get"),
            Call::ApplyVolumeReservationStatus => {
                ("csi-fencer.io", "volumereservations/status", "patch")
            }
            Call::CreateEvent => ("events.k8s.io", "events", "create"),
            Call::PatchEvent => ("events.k8s.io", "events", "patch"),
            Call::WatchNodes => ("", "nodes", "watch"),
            Call::PatchNode => ("", "nodes", "patch"),
            Call::ListNodeLeases => ("coordination.k8s.io", "leases", "list"),
            Call::WatchNodeLeases => ("coordination.k8s.io", "leases", "watch"),
            Call::GetNodeLease | Call::GetLeaderLease => ("coordination.k8s.io", "leases", "get"),
            Call::ListVolumeReservations => ("csi-fencer.io", "volumereservations", "list"),
            Call::WatchVolumeReservations => ("csi-fencer.io", "volumereservations", "watch"),
            Call::CreateLeaderLease => ("coordination.k8s.io", "leases", "create"),
            Call::UpdateLeaderLease => ("coordination.k8s.io", "leases", "update"),
            Call::ListPods => ("", "pods", "list"),
            Call::DeletePod => ("", "pods", "delete"),
        };
        Rule {
            group,
            resource,
            verb,
        }
    }
}

impl Call {
    /// Every permission it needs. A server-side apply that creates the
    /// object is authorized as a create: `patch` alone lets the daemon
    /// change an object it can never make.
    pub fn rules(self) -> Vec<Rule> {
        let mut all = vec![self.rule()];
        if self == Call::ApplyVolumeReservation {
            all.push(Rule {
                verb: "create",
                ..self.rule()
            });
        }
        all
    }

    /// The rule the API server's message says was missing ("cannot create
    /// resource …"); the call's own rule when the message does not say.
    pub fn refused(self, message: &str) -> Rule {
        let verb = message
            .split_once("cannot ")
            .and_then(|(_, rest)| rest.split_whitespace().next());
        self.rules()
            .into_iter()
            .find(|r| Some(r.verb) == verb)
            .unwrap_or_else(|| self.rule())
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.rule();
        let group = if r.group.is_empty() { "core" } else { r.group };
        write!(f, "{} {} ({group})", r.verb, r.resource)
    }
}

/// The permission a request needs, from its method, path and query: what
/// the API server's RBAC authorizer would check. `None` for non-resource paths.
pub fn classify(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("".to_string(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (group, mut rest) = rest;
    if rest.len() >= 3 && rest[0] == "namespaces" {
        rest = &rest[2..];
    }
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name) {
        ("GET", _) if watch => "watch",
        ("GET", Some(_)) => "get",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => return None,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    Some((group, resource, verb.to_string()))
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// RBAC said no.
    #[error("{call}: forbidden: the service account may not {} {} in API group {:?}; grant it in the ClusterRole (API server: {message})", call.refused(message).verb, call.refused(message).resource, call.refused(message).group)]
    Forbidden {
        /// The call.
        call: Call,
        /// The API server's message.
        message: String,
    },
    /// No answer in time.
    #[error(
        "{call}: no answer from the API server within {0:?} (--timeout)",
        timeout
    )]
    Timeout {
        /// The call.
        call: Call,
        /// The bound.
        timeout: Duration,
    },
    /// The API server could not be reached, or answered 5xx.
    #[error("{call}: API server unreachable: {message}")]
    Unreachable {
        /// The call.
        call: Call,
        /// What the client saw.
        message: String,
    },
    /// Any other answer.
    #[error("{call}: the API server answered {code} {reason}: {message}")]
    Api {
        /// The call.
        call: Call,
        /// HTTP status.
        code: u16,
        /// The Status reason.
        reason: String,
        /// The Status message.
        message: String,
    },
}

impl KubeError {
    /// A label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeError::Forbidden { .. } => "api_forbidden",
            KubeError::Timeout { .. } | KubeError::Unreachable { .. } => "api_unreachable",
            KubeError::Api { .. } => "api_error",
        }
    }

    /// The API server could not be asked: nothing it says is known.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            KubeError::Timeout { .. } | KubeError::Unreachable { .. }
        )
    }

    /// Classifies a kube client error for `call`.
    pub fn from_kube(call: Call, e: kube::Error) -> KubeError {
        match e {
            kube::Error::Api(s) if s.code == 403 => KubeError::Forbidden {
                call,
                message: s.message,
            },
            kube::Error::Api(s) if s.code >= 500 => KubeError::Unreachable {
                call,
                message: format!("{} {}: {}", s.code, s.reason, s.message),
            },
            kube::Error::Api(s) => KubeError::Api {
                call,
                code: s.code,
                reason: s.reason,
                message: s.message,
            },
            other => KubeError::Unreachable {
                call,
                message: other.to_string(),
            },
        }
    }
}

/// Whether the API server answered lately; feeds /readyz and
/// `csi_fencer_kube_api_up`.
#[derive(Debug, Default)]
pub struct ApiHealth {
    down: AtomicBool,
    why: Mutex<String>,
}

impl ApiHealth {
    /// Records the result of one call.
    pub fn observe(&self, r: Result<(), &KubeError>) {
        match r {
            Err(e) if e.unreachable() => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "API server unreachable: nothing will be registered or preempted until it answers again");
                }
                if let Ok(mut w) = self.why.lock() {
                    *w = e.to_string();
                }
            }
            _ => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("API server reachable again");
                }
            }
        }
    }

    /// True while the last call could not reach the API server.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The last reason it was unreachable.
    pub fn why(&self) -> String {
        self.why.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

/// Runs one API call under `timeout`, classifies its error, records health.
pub async fn call<T>(
    health: &Arc<ApiHealth>,
    timeout: Duration,
    which: Call,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    let r = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(KubeError::from_kube(which, e)),
        Err(_) => Err(KubeError::Timeout {
            call: which,
            timeout,
        }),
    };
    health.observe(r.as_ref().map(|_| ()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_the_rbac_rule_they_need() {
        let c = |m, p, q| classify(m, p, q).map(|(g, r, v)| format!("{g}|{r}|{v}"));
        assert_eq!(
            c(
                "GET",
                "/apis/storage.k8s.io/v1/volumeattachments",
                "limit=500"
            )
            .as_deref(),
            Some("storage.k8s.io|volumeattachments|list")
        );
        assert_eq!(
            c(
                "GET",
                "/apis/storage.k8s.io/v1/volumeattachments",
                "watch=true&resourceVersion=5"
            )
            .as_deref(),
            Some("storage.k8s.io|volumeattachments|watch")
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/csi-fencer.io/v1alpha1/volumereservations/pv-1/status",
                "fieldManager=x"
            )
            .as_deref(),
            Some("csi-fencer.io|volumereservations/status|patch")
        );
        assert_eq!(
            c(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/default/events",
                ""
            )
            .as_deref(),
            Some("events.k8s.io|events|create")
        );
        assert_eq!(
            c("GET", "/api/v1/nodes", "").as_deref(),
            Some("|nodes|list")
        );
        assert_eq!(c("GET", "/version", ""), None);
        for call in Call::DAEMON {
            assert!(!call.rule().verb.is_empty());
        }
    }

    #[test]
    fn forbidden_names_verb_and_resource() {
        let e = KubeError::Forbidden {
            call: Call::ListNodes,
            message: "nodes is forbidden".into(),
        };
        let t = e.to_string();
        assert!(t.contains("may not list nodes"), "{t}");
        assert!(t.contains("ClusterRole"), "{t}");
        // An apply that would create the object names the verb the server refused.
        let e = KubeError::Forbidden {
            call: Call::ApplyVolumeReservation,
            message: "volumereservations.csi-fencer.io \"pv-1\" is forbidden: User \"x\" cannot create resource \"volumereservations\"".into(),
        };
        assert!(
            e.to_string().contains("may not create volumereservations"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod call_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_ends_at_the_timeout_and_marks_the_api_down() {
        let health = Arc::new(ApiHealth::default());
        let never = std::future::pending::<Result<(), kube::Error>>();
        let e = call(
            &health,
            Duration::from_secs(15),
            Call::GetVolumeAttachment,
            never,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("within 15s (--timeout)"), "{e}");
        assert!(e.unreachable() && health.is_down());
        call(&health, Duration::from_secs(1), Call::ListNodes, async {
            Ok(())
        })
        .await
        .unwrap();
        assert!(!health.is_down());
    }
}
