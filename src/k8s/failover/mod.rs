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

use std::collections::{BTreeMap, HashMap};
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

    fn cluster(
        &self,
        nodes: Option<&[Node]>,
        renewed: &BTreeMap<String, SystemTime>,
    ) -> crate::failover::Cluster {
        let cached = self.nodes.state();
        let atts = self.attachments.state();
        let vrs = self.reservations.state();
        let nodes: Vec<&Node> = match nodes {
            Some(fresh) => fresh.iter().collect(),
            None => cached.iter().map(|n| n.as_ref()).collect(),
        };
        convert::cluster(
            nodes,
            renewed,
            atts.iter().map(|a| a.as_ref()),
            vrs.iter().map(|v| v.as_ref()),
        )
    }
}

/// When each kubelet was last seen renewing, on this replica's clock: a
/// Lease whose renewTime changed was renewed when the change was first
/// seen. Kubelets' clocks do not count, so a node whose clock runs late is
/// not taken for dead (as the node lifecycle controller does it). A replica
/// that just started has seen every Lease renewed now.
#[derive(Default)]
struct Renewals(HashMap<String, (Option<String>, SystemTime)>);

impl Renewals {
    /// Updates from `leases`; when each node was last seen renewing.
    fn update<'a>(
        &mut self,
        leases: impl IntoIterator<Item = &'a Lease>,
    ) -> BTreeMap<String, SystemTime> {
        let now = SystemTime::now();
        let mut out = BTreeMap::new();
        for l in leases {
            let Some(name) = l.metadata.name.clone() else {
                continue;
            };
            let at = renew_time(l);
            let e = self
                .0
                .entry(name.clone())
                .or_insert_with(|| (at.clone(), now));
            if e.0 != at {
                *e = (at, now);
            }
            out.insert(name, e.1);
        }
        out
    }

    /// Whether `fresh` shows a renewal this replica has not seen yet.
    fn renewed_since(&self, fresh: &Lease) -> bool {
        let name = fresh.metadata.name.clone().unwrap_or_default();
        self.0
            .get(&name)
            .is_none_or(|(at, _)| *at != renew_time(fresh))
    }
}

fn renew_time(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()?
        .renew_time
        .as_ref()
        .map(|t| t.0.to_string())
}

/// What a repeated refusal is told once for: its reason and the volume it
/// names; the counts in a partition's words change without news.
fn refusal_key(r: &Refusal) -> String {
    match r {
        Refusal::UnfencedDriver { attachment, .. } | Refusal::Unprotected { attachment, .. } => {
            format!("{}/{attachment}", r.reason())
        }
        Refusal::UnattachedVolume { volume } => format!("{}/{volume}", r.reason()),
        _ => r.reason().to_string(),
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
    /// The refusal last announced per node (its key), so each is told once.
    refused: HashMap<String, String>,
    renewals: Renewals,
    /// Until when this replica leads (see [`Elector`]); `None`: it does not.
    leads: watch::Receiver<Option<std::time::Instant>>,
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
            renewals: Renewals::default(),
            leads: watch::channel(None).1,
        }
    }

    /// Whether this replica may change anything now.
    fn leading(&self) -> bool {
        self.spec.leader.is_none()
            || self
                .leads
                .borrow()
                .is_some_and(|until| std::time::Instant::now() < until)
    }

    /// Runs until `stop` fires: caches first, then a judgement every
    /// interval, acted on while this replica leads. `ready` is set once the
    /// caches are loaded. The leader Lease is given up only after the last
    /// pass has ended.
    pub async fn run(
        mut self,
        ready: Arc<std::sync::atomic::AtomicBool>,
        mut stop: watch::Receiver<bool>,
    ) {
        tokio::select! {
            _ = self.caches.ready() => {}
            _ = stop.changed() => return,
        }
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "caches loaded: judging every {}",
            crate::text::duration(&self.spec.interval)
        );
        let (elector_stop, elector_stopped) = watch::channel(false);
        let elector = self.spec.leader.clone().map(|l| {
            let (valid, leads) = watch::channel(None);
            self.leads = leads;
            let e = Elector::new(
                self.client.clone(),
                l,
                self.health.clone(),
                self.spec.timeout,
            );
            Stops(tokio::spawn(e.run(valid, elector_stopped)))
        });
        let mut was_leading = false;
        loop {
            let leads = self.leading();
            if leads != was_leading {
                tracing::info!(leading = leads, "leadership changed");
                self.refused.clear();
                was_leading = leads;
            }
            self.metrics.leader.set(i64::from(leads));
            self.pass(leads).await;
            tokio::select! {
                _ = tokio::time::sleep(self.spec.interval) => {}
                _ = stop.changed() => break,
            }
        }
        // The last pass is over: now the elector may give the Lease up, so
        // the other replica leads at once.
        let _ = elector_stop.send(true);
        if let Some(mut e) = elector {
            let _ = (&mut e.0).await;
        }
    }

    /// One judgement; acted on when `act` (this replica leads).
    pub async fn pass(&mut self, act: bool) {
        let renewed = self
            .renewals
            .update(self.caches.leases.state().iter().map(|l| l.as_ref()));
        let j = judge(
            &self.caches.cluster(None, &renewed),
            &self.spec.settings,
            SystemTime::now(),
        );
        self.gauges(&j);
        if !act {
            return;
        }
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
                Action::Taint { node, .. } => ("taint", self.taint(node, &renewed).await),
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
        let nodes = self.caches.nodes.state();
        let tainted = nodes.iter().filter(|n| convert::ours(n).is_some()).count();
        self.metrics.tainted.set(tainted as i64);
    }

    /// A Warning Event and a log line the first time a node is refused for
    /// a reason (and volume); nothing while that stays the same.
    async fn announce(&mut self, refusals: &[(String, Refusal)]) {
        self.refused
            .retain(|n, _| refusals.iter().any(|(r, _)| r == n));
        for (node, why) in refusals {
            let key = refusal_key(why);
            if self.refused.get(node) == Some(&key) {
                continue;
            }
            self.refused.insert(node.clone(), key);
            self.metrics
                .refusals
                .with_label_values(&[why.reason()])
                .inc();
            let text = why.to_string();
            tracing::warn!(node = %node, reason = why.reason(), "not tainting the dead node out-of-service: {text}");
            if !self.spec.dry_run {
                self.event(node, EventType::Warning, "OutOfServiceRefused", text)
                    .await;
            }
        }
    }

    /// The node's Lease read fresh: false if it shows a renewal the caches
    /// have not (the node is back, or never left).
    async fn still_silent(&self, name: &str) -> Result<bool, KubeError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASES);
        let get = leases.get_opt(name);
        let lease = call(&self.health, self.spec.timeout, Call::GetNodeLease, get).await?;
        Ok(lease.is_some_and(|l| !self.renewals.renewed_since(&l)))
    }

    /// Judges again on fresh Nodes, the node's fresh Lease and fresh
    /// reservation reports of its volumes; taints if the judgement still
    /// says so and this replica still leads.
    async fn taint(
        &mut self,
        name: &str,
        renewed: &BTreeMap<String, SystemTime>,
    ) -> Result<(), KubeError> {
        let nodes = self.fresh_nodes().await?;
        let mut cluster = self.caches.cluster(Some(&nodes), renewed);
        if !self.still_silent(name).await? {
            tracing::info!(node = %name, "not tainting: its kubelet renewed its Lease after all");
            return Ok(());
        }
        self.fresh_reports(name, &mut cluster).await?;
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
        if !self.patch(name, node, patch).await? {
            return Ok(());
        }
        self.metrics.taints.with_label_values(&["applied"]).inc();
        self.metrics.detection.observe(silent_for.as_secs_f64());
        tracing::warn!(node = %name, "applied the out-of-service taint: {reason}");
        self.event(name, EventType::Normal, "OutOfServiceTainted", reason)
            .await;
        Ok(())
    }

    /// Replaces, in `cluster`, the reports of the volumes attached to
    /// `name` by their VolumeReservations read now.
    async fn fresh_reports(
        &self,
        name: &str,
        cluster: &mut crate::failover::Cluster,
    ) -> Result<(), KubeError> {
        let api: Api<VolumeReservation> = Api::all(self.client.clone());
        let pvs: Vec<String> = cluster
            .attachments
            .iter()
            .filter(|a| a.node == name)
            .filter_map(|a| a.pv.clone())
            .collect();
        for pv in pvs {
            let got = call(
                &self.health,
                self.spec.timeout,
                Call::GetVolumeReservation,
                api.get_opt(&pv),
            )
            .await?;
            let fresh = got.as_ref().map(convert::reports_of).unwrap_or_default();
            cluster.reports.insert(pv, fresh);
        }
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
        if !self.patch(name, &node, act::untaint_patch(&node)).await? {
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
    /// taint's eviction), so their replacements need not wait for pod GC;
    /// only while its Lease, read now, is still silent. Pods that tolerate
    /// the taint are not terminating and stay.
    async fn sweep(&self, node: &str) -> Result<(), KubeError> {
        use k8s_openapi::api::core::v1::Pod;
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let (h, t) = (&self.health, self.spec.timeout);
        let pods = call(h, t, Call::ListPods, api.list(&lp)).await?;
        let terminating: Vec<&Pod> = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .collect();
        if terminating.is_empty() || !self.still_silent(node).await? {
            return Ok(());
        }
        let mut gone = Vec::new();
        for p in terminating {
            let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
                continue;
            };
            if !self.leading() {
                break;
            }
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

    /// A patch conditional on the resourceVersion `node` was read at; false
    /// when the Node changed since, when it carries no resourceVersion (the
    /// patch would not be conditional), or when this replica no longer
    /// leads.
    async fn patch(
        &self,
        name: &str,
        node: &Node,
        body: serde_json::Value,
    ) -> Result<bool, KubeError> {
        if node.metadata.resource_version.is_none() || !self.leading() {
            return Ok(false);
        }
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

    /// An Event on the Node, bounded by a few seconds: a slow Event must not
    /// hold a taint back.
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
        // A recorder of its own: kube's merges Events of one reason on one
        // object into a series that keeps the first note, and each of these
        // says something new (repeats are filtered above).
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let bound = self.spec.timeout.min(EVENT_TIMEOUT);
        let r = call(
            &self.health,
            bound,
            Call::CreateEvent,
            recorder.publish(&ev, &reference),
        )
        .await;
        if let Err(e) = r {
            tracing::warn!(node = %node, error = %e, "could not post the Event");
        }
    }
}

/// The most an Event may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
