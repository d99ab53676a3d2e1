//! `csi-fencer controller`: the failover controller's Kubernetes side. It
//! caches Nodes, the kubelets' Leases, VolumeAttachments and
//! VolumeReservations (watches, so a pass costs no API call), judges the
//! cluster every interval (`failover::judge`), and, while it leads, applies
//! or removes the out-of-service taint. Before a taint it reads the Nodes
//! and the node's Lease fresh and judges again: a cache that lags must not
//! taint a node that came back, nor count fewer taints than there are.

pub mod act;
pub mod convert;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use super::api::{call, ApiHealth, Call, KubeError};
use super::crd::VolumeReservation;
use super::leader::{Elector, LeaderSpec};
use crate::failover::{judge, Action, Judgement, Refusal, Settings};
use metrics::Metrics;

/// The namespace of the kubelets' Leases.
pub const NODE_LEASES: &str = "kube-node-lease";

/// How the controller runs (the `controller` subcommand's flags).
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    /// What the judgement allows.
    pub settings: Settings,
    /// How often to judge.
    pub interval: Duration,
    /// Each API call's bound.
    pub timeout: Duration,
    /// Leader election; `None` runs as the only replica.
    pub leader: Option<LeaderSpec>,
    /// Judge and report, change nothing.
    pub dry_run: bool,
    /// Force-delete the terminating pods of a node csi-fencer tainted, as
    /// pod GC would once the node is not Ready, without waiting for that.
    pub delete_pods: bool,
    /// This replica's name in Events.
    pub identity: String,
}

/// The caches the judgement reads; their watches stop when it is dropped.
struct Caches {
    nodes: Store<Node>,
    leases: Store<Lease>,
    attachments: Store<VolumeAttachment>,
    reservations: Store<VolumeReservation>,
    _watches: Vec<Stops>,
}

/// Aborts a task when dropped: a controller that is dropped (or crashes in
/// a test) leaves no watch or elector behind.
struct Stops(tokio::task::JoinHandle<()>);

impl Drop for Stops {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn cache<K>(api: Api<K>, what: &'static str, tasks: &mut Vec<Stops>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    K: serde::de::DeserializeOwned,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().page_size(500)),
    )
    .default_backoff()
    .touched_objects();
    let task = tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                tracing::warn!(cache = what, error = %e, "watch failed; listing again");
            }
        }
    });
    tasks.push(Stops(task));
    reader
}

impl Caches {
    fn start(client: &Client) -> Caches {
        let mut w = Vec::new();
        Caches {
            nodes: cache(Api::all(client.clone()), "nodes", &mut w),
            leases: cache(
                Api::namespaced(client.clone(), NODE_LEASES),
                "leases",
                &mut w,
            ),
            attachments: cache(Api::all(client.clone()), "volumeattachments", &mut w),
            reservations: cache(Api::all(client.clone()), "volumereservations", &mut w),
            _watches: w,
        }
    }

    async fn ready(&self) {
        // A store whose writer is gone never becomes ready: its task ends
        // only when the caches are dropped.
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.leases.wait_until_ready().await;
        let _ = self.attachments.wait_until_ready().await;
        let _ = self.reservations.wait_until_ready().await;
    }

    fn cluster(&self, nodes: Option<&[Node]>) -> crate::failover::Cluster {
        let cached = self.nodes.state();
        let leases = self.leases.state();
        let atts = self.attachments.state();
        let vrs = self.reservations.state();
        let nodes: Vec<&Node> = match nodes {
            Some(fresh) => fresh.iter().collect(),
            None => cached.iter().map(|n| n.as_ref()).collect(),
        };
        convert::cluster(
            nodes,
            leases.iter().map(|l| l.as_ref()),
            atts.iter().map(|a| a.as_ref()),
            vrs.iter().map(|v| v.as_ref()),
        )
    }
}

/// The controller of one replica.
pub struct Controller {
    client: Client,
    spec: ControllerSpec,
    health: Arc<ApiHealth>,
    metrics: Arc<Metrics>,
    caches: Caches,
    reporter: Reporter,
    /// The refusal last announced per node, so each is told once.
    refused: HashMap<String, String>,
}

impl Controller {
    /// Starts the caches.
    pub fn new(client: Client, spec: ControllerSpec, metrics: Arc<Metrics>) -> Controller {
        let reporter = Reporter {
            controller: "csi-fencer-failover".into(),
            instance: Some(spec.identity.clone()),
        };
        Controller {
            caches: Caches::start(&client),
            reporter,
            client,
            spec,
            health: Arc::new(ApiHealth::default()),
            metrics,
            refused: HashMap::new(),
        }
    }

    /// Runs until `stop` fires: caches first, then a pass every interval
    /// while this replica leads. `ready` is set once the caches are loaded.
    pub async fn run(
        mut self,
        ready: Arc<std::sync::atomic::AtomicBool>,
        stop: watch::Receiver<bool>,
    ) {
        self.caches.ready().await;
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "caches loaded: judging every {}",
            crate::text::duration(&self.spec.interval)
        );
        let (lead_tx, leading) = watch::channel(self.spec.leader.is_none());
        let elector = self.spec.leader.clone().map(|l| {
            let e = Elector::new(
                self.client.clone(),
                l,
                self.health.clone(),
                self.spec.timeout,
            );
            Stops(tokio::spawn(e.run(lead_tx, stop.clone())))
        });
        let mut stop = stop;
        let mut was_leading = false;
        loop {
            let leads = *leading.borrow();
            if leads != was_leading {
                tracing::info!(leading = leads, "leadership changed");
                self.refused.clear();
                was_leading = leads;
            }
            self.metrics.leader.set(i64::from(leads));
            if leads {
                self.pass().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.spec.interval) => {}
                _ = stop.changed() => break,
            }
        }
        // The elector gives the Lease up, so the other replica leads at once.
        if let Some(mut e) = elector {
            let _ = (&mut e.0).await;
        }
    }

    /// One judgement, and what it calls for.
    pub async fn pass(&mut self) {
        let j = judge(
            &self.caches.cluster(None),
            &self.spec.settings,
            SystemTime::now(),
        );
        self.gauges(&j);
        self.announce(&j.refusals).await;
        if self.spec.delete_pods && !self.spec.dry_run {
            for node in &j.sweep {
                if let Err(e) = self.sweep(node).await {
                    tracing::warn!(node = %node, error = %e, "could not force-delete the node's terminating pods; the next pass tries again");
                    self.metrics
                        .errors
                        .with_label_values(&["delete-pods", e.kind()])
                        .inc();
                }
            }
        }
        for a in j.actions {
            let (what, r) = match &a {
                Action::Taint { node, .. } => ("taint", self.taint(node).await),
                Action::Untaint { node } => ("untaint", self.untaint(node).await),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not {what}; the next pass decides again");
                self.metrics
                    .errors
                    .with_label_values(&[what, e.kind()])
                    .inc();
            }
        }
    }

    fn gauges(&self, j: &Judgement) {
        self.metrics.dead.set(j.dead.len() as i64);
        let tainted = self
            .caches
            .nodes
            .state()
            .iter()
            .filter(|n| {
                convert::applied_at(n).is_some()
                    && convert::taints(n)
                        .iter()
                        .any(|t| t.key == convert::TAINT_KEY)
            })
            .count();
        self.metrics.tainted.set(tainted as i64);
    }

    /// A Warning Event and a log line the first time a node is refused for
    /// a reason; nothing while the reason stays the same.
    async fn announce(&mut self, refusals: &[(String, Refusal)]) {
        self.refused
            .retain(|n, _| refusals.iter().any(|(r, _)| r == n));
        for (node, why) in refusals {
            let text = why.to_string();
            if self.refused.get(node) == Some(&text) {
                continue;
            }
            self.refused.insert(node.clone(), text.clone());
            self.metrics
                .refusals
                .with_label_values(&[why.reason()])
                .inc();
            tracing::warn!(node = %node, reason = why.reason(), "not tainting the dead node out-of-service: {text}");
            if !self.spec.dry_run {
                self.event(node, EventType::Warning, "OutOfServiceRefused", text)
                    .await;
            }
        }
    }

    /// Judges again on fresh Nodes and the node's fresh Lease; taints if the
    /// judgement still says so.
    async fn taint(&mut self, name: &str) -> Result<(), KubeError> {
        let nodes = self.fresh_nodes().await?;
        let mut cluster = self.caches.cluster(Some(&nodes));
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASES);
        let lease = call(
            &self.health,
            self.spec.timeout,
            Call::GetNodeLease,
            leases.get_opt(name),
        )
        .await?;
        let renewed = lease.as_ref().and_then(convert::renewal).map(|(_, t)| t);
        if let Some(n) = cluster.nodes.iter_mut().find(|n| n.name == name) {
            n.renewed = renewed;
        }
        let now = SystemTime::now();
        let j = judge(&cluster, &self.spec.settings, now);
        let Some(Action::Taint {
            silent_for,
            volumes,
            ..
        }) = j
            .actions
            .into_iter()
            .find(|a| matches!(a, Action::Taint { node, .. } if node == name))
        else {
            tracing::info!(node = %name, "not tainting after all: the fresh reading says otherwise");
            return Ok(());
        };
        let reason = crate::failover::judge::taint_reason(&silent_for, &volumes);
        if self.spec.dry_run {
            tracing::warn!(node = %name, "dry run: would apply the out-of-service taint: {reason}");
            return Ok(());
        }
        let Some(node) = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
        else {
            return Ok(());
        };
        let patch = act::taint_patch(node, &reason, now);
        if !self.patch(name, patch).await? {
            return Ok(());
        }
        self.metrics.taints.with_label_values(&["applied"]).inc();
        self.metrics.detection.observe(silent_for.as_secs_f64());
        tracing::warn!(node = %name, "applied the out-of-service taint: {reason}");
        self.event(name, EventType::Normal, "OutOfServiceTainted", reason)
            .await;
        Ok(())
    }

    async fn untaint(&mut self, name: &str) -> Result<(), KubeError> {
        let Some(node) = self
            .caches
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
        else {
            return Ok(());
        };
        if self.spec.dry_run {
            tracing::info!(node = %name, "dry run: would remove the out-of-service taint");
            return Ok(());
        }
        if !self.patch(name, act::untaint_patch(&node)).await? {
            return Ok(());
        }
        self.metrics.taints.with_label_values(&["removed"]).inc();
        let note = "the node is back (kubelet Lease renewed, Ready) and none of its attachments predates the taint".to_string();
        tracing::info!(node = %name, "removed the out-of-service taint: {note}");
        self.event(name, EventType::Normal, "OutOfServiceRemoved", note)
            .await;
        Ok(())
    }

    /// Force-deletes the pods of `node` that are terminating (marked by the
    /// taint's eviction), so their replacements need not wait for pod GC.
    /// Pods that tolerate the taint are not terminating and stay.
    async fn sweep(&self, node: &str) -> Result<(), KubeError> {
        use k8s_openapi::api::core::v1::Pod;
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let (h, t) = (&self.health, self.spec.timeout);
        let pods = call(h, t, Call::ListPods, api.list(&lp)).await?;
        let mut gone = Vec::new();
        for p in pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
        {
            let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
                continue;
            };
            let dp = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: p.metadata.uid.clone().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..kube::api::DeleteParams::default()
            };
            let ns_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            match call(h, t, Call::DeletePod, ns_api.delete(name, &dp)).await {
                Ok(_)
                | Err(KubeError::Api {
                    code: 404 | 409, ..
                }) => gone.push(format!("{ns}/{name}")),
                Err(e) => return Err(e),
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        self.metrics.pods_deleted.inc_by(gone.len() as u64);
        let note = format!(
            "force-deleted {} terminating pod(s) of the out-of-service node: {}",
            gone.len(),
            gone.join(", ")
        );
        tracing::warn!(node = %node, "{note}");
        self.event(node, EventType::Normal, "OutOfServicePodsDeleted", note)
            .await;
        Ok(())
    }

    /// A conditional patch; false when the Node changed since it was read.
    async fn patch(&self, name: &str, body: serde_json::Value) -> Result<bool, KubeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let pp = PatchParams::default();
        let r = call(
            &self.health,
            self.spec.timeout,
            Call::PatchNode,
            api.patch(name, &pp, &Patch::Merge(&body)),
        )
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(KubeError::Api { code: 409, .. }) => {
                tracing::info!(node = %name, "the Node changed since it was read; the next pass decides again");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn fresh_nodes(&self) -> Result<Vec<Node>, KubeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let list = call(
            &self.health,
            self.spec.timeout,
            Call::ListNodes,
            api.list(&ListParams::default()),
        )
        .await?;
        Ok(list.items)
    }

    async fn event(&self, node: &str, type_: EventType, reason: &str, note: String) {
        let uid = self
            .caches
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .and_then(|n| n.metadata.uid.clone());
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            uid,
            ..ObjectReference::default()
        };
        let ev = super::report::event(type_, reason, "FailOver", note);
        let r = call(
            &self.health,
            self.spec.timeout,
            Call::CreateEvent,
            // A recorder of its own: kube's merges Events of one reason on
            // one object into a series that keeps the first note, and each
            // of these says something new (repeats are filtered above).
            Recorder::new(self.client.clone(), self.reporter.clone()).publish(&ev, &reference),
        )
        .await;
        if let Err(e) = r {
            tracing::warn!(node = %node, error = %e, "could not post the Event");
        }
    }
}
