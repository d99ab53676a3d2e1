//! What the failover controller knows of the cluster, in its own terms: the
//! Kubernetes edge (`k8s::failover`) fills these from Nodes, kubelet Leases,
//! VolumeAttachments and VolumeReservations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::daemon::reconcile::Phase;

/// A node's Ready condition, as far as the judgement needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Ready is True.
    True,
    /// Ready is False or Unknown, or missing.
    NotReady {
        /// The kubelet said it is shutting down gracefully: its pods are
        /// being stopped and their volumes unmounted the normal way.
        shutting_down: bool,
    },
}

/// One Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The Node's name.
    pub name: String,
    /// Its Ready condition.
    pub ready: Ready,
    /// When its kubelet last renewed its Lease (`kube-node-lease`); `None`
    /// when it has none, which is not taken as death.
    pub renewed: Option<SystemTime>,
    /// Cordoned (`spec.unschedulable`): someone is working on it.
    pub cordoned: bool,
    /// It carries the out-of-service taint, whoever applied it.
    pub out_of_service: bool,
    /// When csi-fencer applied the out-of-service taint it carries (from the
    /// annotation it writes with it); `None` when csi-fencer did not.
    pub tainted_by_us: Option<SystemTime>,
    /// The volumes its kubelet last reported in use (`status.volumesInUse`,
    /// `kubernetes.io/csi/<driver>^<handle>` for CSI): a SAN volume with no
    /// VolumeAttachment (an in-tree iSCSI or FC volume, a CSI driver that
    /// needs no attach) shows only here.
    pub volumes_in_use: Vec<String>,
}

/// One VolumeAttachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Its name.
    pub name: String,
    /// The node it attaches to.
    pub node: String,
    /// The CSI driver (`spec.attacher`).
    pub driver: String,
    /// The PersistentVolume; `None` for an inline volume.
    pub pv: Option<String>,
    /// When it was created.
    pub created: Option<SystemTime>,
}

/// What one node last reported about a volume's LUN (its entry in the
/// VolumeReservation's status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The node's state on the LUN.
    pub phase: Phase,
    /// Why, in the node's words.
    pub message: String,
}

/// The cluster as the controller sees it at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Every Node.
    pub nodes: Vec<Node>,
    /// Every VolumeAttachment.
    pub attachments: Vec<Attachment>,
    /// By PersistentVolume, then by node: the nodes' reports.
    pub reports: BTreeMap<String, BTreeMap<String, Report>>,
}

/// The controller's settings (the chart's `failover.*` values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A node whose kubelet has not renewed its Lease for this long is dead.
    pub lease_grace: Duration,
    /// No taint while more than this share of the nodes (percent) look dead.
    pub max_unhealthy_percent: u32,
    /// At most this many nodes carry csi-fencer's taint at a time.
    pub max_concurrent: usize,
    /// The CSI drivers whose volumes csi-fencer fences.
    pub drivers: BTreeSet<String>,
    /// Drivers whose attachments do not stop a taint (volumes that need no
    /// fence, such as read-only or node-local ones): off by default.
    pub ignored_drivers: BTreeSet<String>,
}

impl Settings {
    /// Defaults that put the whole failover under a minute with kubelet's
    /// 10 s renewals (docs/failover.md), for the given fenced drivers.
    pub fn new(drivers: impl IntoIterator<Item = String>) -> Settings {
        Settings {
            lease_grace: Duration::from_secs(25),
            max_unhealthy_percent: 50,
            max_concurrent: 3,
            drivers: drivers.into_iter().collect(),
            ignored_drivers: BTreeSet::new(),
        }
    }
}
