//! The failover controller's judgement, with no I/O and no Kubernetes types:
//! which dead nodes may carry the `node.kubernetes.io/out-of-service` taint,
//! which may not and why, and which of the taints it applied it takes back.
//!
//! The taint tells Kubernetes that a node is down for good: its pods are
//! force-deleted and its volumes detached at once, so they start elsewhere
//! in seconds instead of after the attach-detach controller's six minutes.
//! It is safe only where the storage is fenced: a node that is cut off but
//! alive keeps writing. So a node is tainted only when every volume attached
//! to it is one csi-fencer fences and its reservation report shows the node
//! under the fence (a new node cannot write before it preempts this one),
//! and never while the cluster looks partitioned rather than a node dead.
//! `k8s::failover` feeds it what the API server says and carries out what it
//! decides; docs/failover.md is the operator's view.

pub mod judge;
pub mod view;

pub use judge::{judge, Action, Judgement, Refusal};
pub use view::{Attachment, Cluster, Node, Ready, Settings};
