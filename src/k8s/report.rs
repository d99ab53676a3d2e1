//! Publishes what the reconciler did: server-side apply of this node's entry
//! in the volume's `VolumeReservation` status (and the volume-wide fields
//! while this node holds the reservation), and Events on the PV.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{json, Value};

use super::api::{call, Call, KubeError};
use super::authority::SHARED_LUN;
use super::cluster::Cluster;
use super::crd::{NodeState, VolumeReservation};
use crate::daemon::metrics::Metrics;
use crate::daemon::reconcile::{Phase, Update};
use crate::fence::engine::Outcome;
use crate::scsi::{ReservationKey, ReservationType};

/// The field manager every holder applies the volume-wide fields with.
pub const HOLDER_MANAGER: &str = "csi-fencer/holder";

/// The field manager of this node: it owns only its own entry.
pub fn field_manager(node: &str) -> String {
    format!("csi-fencer/{node}")
}

/// Memory of what was published per volume.
#[derive(Default)]
struct Seen {
    created: bool,
    rtype: Option<ReservationType>,
    /// The last status body applied: a monitor check that changed nothing
    /// is not written again (each one would cost an API request).
    applied: Option<serde_json::Value>,
    /// The volume-wide fields last applied as the holder.
    holding: Option<serde_json::Value>,
    /// The object is known not to name this node as the holder (asked
    /// once per volume, and again after each time this node held it).
    holder_checked: bool,
}

/// The reporter of one node.
pub struct Publisher {
    cluster: Arc<Cluster>,
    key: ReservationKey,
    recorder: Recorder,
    seen: HashMap<String, Seen>,
    metrics: Arc<Metrics>,
}

fn rfc3339(secs: u64) -> String {
    let t = k8s_openapi::jiff::Timestamp::from_second(secs as i64).unwrap_or_default();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn node_state(p: &Phase) -> NodeState {
    match p {
        Phase::Pending => NodeState::Pending,
        Phase::Held => NodeState::Holder,
        Phase::Registered => NodeState::Registered,
        Phase::Fenced => NodeState::Fenced,
        Phase::Released => NodeState::Released,
        Phase::Error => NodeState::Error,
    }
}

impl Publisher {
    /// A publisher for this node of `cluster`, whose key is `key`; a write
    /// that fails counts in `metrics` (`reconcile_errors_total`, by kind),
    /// so a forbidden status write fires the same alert as a forbidden read.
    pub fn new(cluster: Arc<Cluster>, key: ReservationKey, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "csi-fencer".into(),
            instance: Some(cluster.node.clone()),
        };
        Publisher {
            recorder: Recorder::new(cluster.client.clone(), reporter),
            cluster,
            key,
            seen: HashMap::new(),
            metrics,
        }
    }

    /// Publishes every update until the reconciler stops.
    pub async fn run(mut self, mut rx: tokio::sync::broadcast::Receiver<Update>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(u) => {
                    if let Err(e) = self.publish(&u).await {
                        self.metrics
                            .reconcile_errors
                            .with_label_values(&[e.kind()])
                            .inc();
                        tracing::warn!(volume = %u.status.volume, error = %e, "status not published");
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::warn!("{n} status updates skipped"),
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Applies the status (when it differs from the last one applied) and
    /// emits the Events of one update; Events go out even if the status
    /// could not be written.
    pub async fn publish(&mut self, u: &Update) -> Result<(), KubeError> {
        if u.op == "forget" {
            return self.withdraw(&u.status.volume).await;
        }
        let pv = u.status.volume.clone();
        let info = self.cluster.volume(&pv).await.ok();
        let status = self
            .apply_status(u, info.as_ref().map(|i| i.uid.as_str()))
            .await;
        let uid = info.map(|i| i.uid).unwrap_or_default();
        // Each Event on its own: one refused does not keep the others back.
        let mut failed = Ok(());
        for ev in events(u, &self.cluster.node) {
            if let Err(e) = self.event(&pv, &uid, ev).await {
                failed = failed.and(Err(e));
            }
        }
        status.and(failed)
    }

    async fn apply_status(&mut self, u: &Update, pv_uid: Option<&str>) -> Result<(), KubeError> {
        let pv = u.status.volume.as_str();
        let seen = self.seen.entry(pv.to_string()).or_default();
        if u.reservation_type.is_some() {
            seen.rtype = u.reservation_type;
        }
        let since = rfc3339(u.status.last_transition);
        let body = status_body(pv, &self.cluster.node, self.key, u, &since);
        let holding = holder_body(pv, &self.cluster.node, self.key, u, seen.rtype, &since);
        let unchanged = seen.applied.as_ref() == Some(&body)
            && seen.holding.as_ref() == holding.as_ref()
            && (holding.is_some() || seen.holder_checked);
        if unchanged {
            return Ok(());
        }
        if !seen.created {
            self.apply_object(pv, pv_uid).await?;
        }
        let r = self.apply_entry(pv, body).await;
        let h = match holding {
            Some(b) => self.apply_holder(pv, b).await,
            None => self.give_up_holder(pv).await,
        };
        r.and(h)
    }

    /// Takes this node's entry out of the volume's status (a volume it
    /// never got onto and that is no longer attached here): an apply of
    /// nothing under this node's manager removes what it owned.
    async fn withdraw(&mut self, pv: &str) -> Result<(), KubeError> {
        self.seen.remove(pv);
        let body = json!({
            "apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
            "metadata": { "name": pv }, "status": {},
        });
        let manager = field_manager(&self.cluster.node);
        match self.apply_status_as(pv, &manager, &body).await {
            Err(KubeError::Api { code: 404, .. }) => Ok(()),
            r => r,
        }
    }

    /// The object itself, with its owner reference (once per volume).
    async fn apply_object(&mut self, pv: &str, pv_uid: Option<&str>) -> Result<(), KubeError> {
        let object = object_body(pv, pv_uid);
        let manager = field_manager(&self.cluster.node);
        let params = PatchParams::apply(&manager).force();
        let api: Api<VolumeReservation> = Api::all(self.cluster.client.clone());
        let patch = Patch::Apply(&object);
        let fut = api.patch(pv, &params, &patch);
        let (health, timeout) = (&self.cluster.health, self.cluster.timeout);
        call(health, timeout, Call::ApplyVolumeReservation, fut).await?;
        self.seen_mut(pv).created = true;
        Ok(())
    }

    fn seen_mut(&mut self, pv: &str) -> &mut Seen {
        self.seen.entry(pv.to_string()).or_default()
    }

    /// This node's own entry, under this node's field manager.
    async fn apply_entry(&mut self, pv: &str, body: Value) -> Result<(), KubeError> {
        if self.seen_mut(pv).applied.as_ref() == Some(&body) {
            return Ok(());
        }
        let manager = field_manager(&self.cluster.node);
        let r = self.apply_status_as(pv, &manager, &body).await;
        let seen = self.seen_mut(pv);
        seen.applied = r.is_ok().then_some(body);
        r
    }

    /// The volume-wide fields, under the one manager every holder shares:
    /// a new holder's apply replaces all of the old holder's (who may never
    /// apply again), and nothing is left owned twice.
    async fn apply_holder(&mut self, pv: &str, body: Value) -> Result<(), KubeError> {
        if self.seen_mut(pv).holding.as_ref() == Some(&body) {
            return Ok(());
        }
        let r = self.apply_status_as(pv, HOLDER_MANAGER, &body).await;
        let seen = self.seen_mut(pv);
        seen.holding = r.is_ok().then_some(body);
        seen.holder_checked = false;
        r
    }

    /// No longer (or never) the holder: if the object still names this node
    /// as the holder, its volume-wide fields go, on the condition that
    /// nobody changed the object since it was read (a new holder's fields
    /// must survive an old holder's late release).
    async fn give_up_holder(&mut self, pv: &str) -> Result<(), KubeError> {
        if self.seen_mut(pv).holder_checked {
            return Ok(());
        }
        let api: Api<VolumeReservation> = Api::all(self.cluster.client.clone());
        let (health, timeout) = (self.cluster.health.clone(), self.cluster.timeout);
        for _ in 0..3 {
            let fut = api.get_opt(pv);
            let Some(obj) = call(&health, timeout, Call::GetVolumeReservation, fut).await? else {
                break;
            };
            let named = obj.status.as_ref().and_then(|s| s.holder.as_ref());
            if named.and_then(|h| h.node.as_deref()) != Some(self.cluster.node.as_str()) {
                break;
            }
            let body = json!({
                "apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
                "metadata": { "name": pv, "resourceVersion": obj.metadata.resource_version },
                "status": {},
            });
            match self.apply_status_as(pv, HOLDER_MANAGER, &body).await {
                Err(KubeError::Api { code: 409, .. }) => continue,
                r => {
                    r?;
                    break;
                }
            }
        }
        let seen = self.seen_mut(pv);
        seen.holding = None;
        seen.holder_checked = true;
        Ok(())
    }

    async fn apply_status_as(
        &mut self,
        pv: &str,
        manager: &str,
        body: &Value,
    ) -> Result<(), KubeError> {
        let params = PatchParams::apply(manager).force();
        let api: Api<VolumeReservation> = Api::all(self.cluster.client.clone());
        let patch = Patch::Apply(body);
        let fut = api.patch_status(pv, &params, &patch);
        let (health, timeout) = (&self.cluster.health, self.cluster.timeout);
        let r = call(health, timeout, Call::ApplyVolumeReservationStatus, fut).await;
        if let Err(KubeError::Api { code: 404, .. }) = &r {
            // Deleted behind our back: apply the object again next time.
            let seen = self.seen_mut(pv);
            seen.created = false;
            seen.applied = None;
            seen.holding = None;
        }
        r.map(|_| ())
    }

    async fn event(&self, pv: &str, uid: &str, ev: Event) -> Result<(), KubeError> {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolume".into()),
            name: Some(pv.to_string()),
            uid: (!uid.is_empty()).then(|| uid.to_string()),
            ..Default::default()
        };
        let (health, timeout) = (&self.cluster.health, self.cluster.timeout);
        call(
            health,
            timeout,
            Call::CreateEvent,
            self.recorder.publish(&ev, &reference),
        )
        .await
    }
}

/// The object itself, owned by its PV so it goes when the PV goes.
fn object_body(pv: &str, pv_uid: Option<&str>) -> Value {
    let mut meta = json!({ "name": pv });
    if let Some(uid) = pv_uid.filter(|u| !u.is_empty()) {
        meta["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "PersistentVolume", "name": pv, "uid": uid,
        }]);
    }
    json!({
        "apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
        "metadata": meta, "spec": { "persistentVolumeName": pv },
    })
}

/// The status apply body of this node's field manager: its entry only.
pub fn status_body(pv: &str, node: &str, key: ReservationKey, u: &Update, since: &str) -> Value {
    let s = &u.status;
    let mut entry = json!({
        "node": node,
        "key": key.to_string(),
        "state": node_state(&s.phase),
        "registeredPaths": s.paths_registered,
        "totalPaths": s.paths_total,
        "lastTransitionTime": since,
    });
    if let Some(a) = &s.attachment {
        entry["attachment"] = json!(a);
    }
    if !s.message.is_empty() {
        entry["message"] = json!(s.message);
    }
    json!({
        "apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
        "metadata": { "name": pv }, "status": { "nodes": [entry] },
    })
}

/// The volume-wide fields, while this node holds the reservation (applied
/// under [`HOLDER_MANAGER`]).
pub fn holder_body(
    pv: &str,
    node: &str,
    key: ReservationKey,
    u: &Update,
    rtype: Option<ReservationType>,
    since: &str,
) -> Option<Value> {
    let (Phase::Held, Some(o)) = (&u.status.phase, &u.outcome) else {
        return None;
    };
    let mut status = json!({});
    holder_fields(&mut status, node, key, o, rtype, since);
    Some(json!({
        "apiVersion": "csi-fencer.io/v1alpha1", "kind": "VolumeReservation",
        "metadata": { "name": pv }, "status": status,
    }))
}

fn holder_fields(
    status: &mut Value,
    node: &str,
    key: ReservationKey,
    o: &Outcome,
    rtype: Option<ReservationType>,
    since: &str,
) {
    let all = o.paths.iter().all(|p| p.registered);
    let owner = |k: ReservationKey, n: Option<&str>| match n {
        Some(n) => json!({ "key": k.to_string(), "node": n }),
        None => json!({ "key": k.to_string() }),
    };
    let mut keys = vec![owner(key, Some(node))];
    for k in o.keys.live.iter().chain(&o.keys.foreign) {
        keys.push(owner(k.key, k.node.as_deref()));
    }
    let cond = |t: &str, ok: bool, reason: &str, msg: String| {
        json!({ "type": t, "status": if ok { "True" } else { "False" }, "reason": reason,
                "message": msg, "lastTransitionTime": since })
    };
    let reg = o.paths.iter().filter(|p| p.registered).count();
    status["wwid"] = json!(o.wwid);
    if let Some(t) = rtype {
        status["reservationType"] = json!(t.long_name());
    }
    status["state"] = json!(if all { "Reserved" } else { "Degraded" });
    status["holder"] = owner(key, Some(node));
    status["registeredKeys"] = Value::Array(keys);
    status["conditions"] = json!([
        cond(
            "Reserved",
            true,
            "HeldByNode",
            format!("{node} holds the reservation")
        ),
        cond(
            "AllPathsRegistered",
            all,
            if all { "AllPaths" } else { "MissingPaths" },
            format!("{reg}/{} paths carry the holder's key", o.paths.len())
        ),
        cond(
            "ForeignKeys",
            !o.keys.foreign.is_empty(),
            "Observed",
            format!("{} keys of other clusters on the LUN", o.keys.foreign.len())
        ),
    ]);
}

/// The API server refuses an Event whose note is longer than this (bytes).
pub const NOTE_MAX: usize = 1024;

/// `note` cut to [`NOTE_MAX`] bytes at a character boundary, marked as cut.
pub(crate) fn fit_note(mut note: String) -> String {
    if note.len() <= NOTE_MAX {
        return note;
    }
    let mut end = NOTE_MAX - "…".len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push('…');
    note
}

pub(crate) fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(fit_note(note)),
        action: action.into(),
        secondary: None,
    }
}

/// The Events one update calls for.
pub fn events(u: &Update, node: &str) -> Vec<Event> {
    use EventType::{Normal, Warning};
    let s = &u.status;
    let mut out = Vec::new();
    match u.error_kind {
        Some("identity_mismatch") => out.push(event(
            Warning,
            "IdentityMismatch",
            "Verify",
            format!("{node}: {}", s.message),
        )),
        Some("unsupported") => out.push(event(
            Warning,
            "Unsupported",
            "Acquire",
            format!("{node}: {}", s.message),
        )),
        _ => {}
    }
    if let Some(o) = &u.outcome {
        let victims: Vec<String> = o
            .preempted
            .iter()
            .map(|k| match &k.node {
                Some(n) => format!("{n} (key {})", k.key),
                None => format!("key {}", k.key),
            })
            .collect();
        if !victims.is_empty() {
            out.push(event(
                Normal,
                "Preempted",
                "Preempt",
                format!(
                    "{node} preempted {}: it can no longer write to {}",
                    victims.join(", "),
                    o.wwid
                ),
            ));
        }
        if let Some(n) = o.notes.iter().find(|n| n.starts_with(SHARED_LUN)) {
            if u.changed {
                out.push(event(
                    Warning,
                    "SharedLun",
                    "Acquire",
                    format!("{node}: {n}"),
                ));
            }
        }
        if u.changed && !o.keys.foreign.is_empty() {
            let f: Vec<String> = o.keys.foreign.iter().map(|k| k.key.to_string()).collect();
            out.push(event(
                Warning,
                "ForeignKey",
                "Inspect",
                format!(
                    "keys of another cluster on {}: {} (left alone)",
                    o.wwid,
                    f.join(", ")
                ),
            ));
        }
    }
    if u.changed {
        let reg = format!("{}/{} paths", s.paths_registered, s.paths_total);
        match s.phase {
            Phase::Held => out.push(event(Normal, "Reserved", "Acquire", format!("{node} holds the reservation of {} ({reg})", s.wwid))),
            Phase::Registered => out.push(event(Normal, "Registered", "Acquire", format!("{node} registered on {} ({reg})", s.wwid))),
            Phase::Fenced => out.push(event(Warning, "Fenced", "Check", format!("{node}'s key was preempted on {} while attached: its writes now fail with RESERVATION CONFLICT", s.wwid))),
            Phase::Released => out.push(event(Normal, "Released", "Release", format!("{node} released {} after the detach", s.wwid))),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::reconcile::VolumeStatus;

    fn update(phase: Phase, changed: bool, kind: Option<&'static str>) -> Update {
        Update {
            status: VolumeStatus {
                volume: "pv-1".into(),
                wwid: "naa.6001405000000001".into(),
                phase,
                message: "why".into(),
                paths_registered: 1,
                paths_total: 2,
                last_transition: 0,
                attachment: Some("uid-1".into()),
                on_lun: true,
            },
            changed,
            outcome: None,
            reservation_type: None,
            error_kind: kind,
            op: "acquire",
            asked: None,
        }
    }

    fn reasons(u: &Update) -> Vec<String> {
        events(u, "node-a").into_iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_long_note_is_cut_to_what_the_api_server_takes() {
        let long = "é".repeat(800);
        let n = fit_note(long);
        assert!(n.len() <= NOTE_MAX && n.ends_with('…'), "{}", n.len());
        assert_eq!(fit_note("short".into()), "short");
    }

    #[test]
    fn each_change_maps_to_its_event_and_repeats_stay_quiet() {
        assert_eq!(reasons(&update(Phase::Held, true, None)), ["Reserved"]);
        assert_eq!(
            reasons(&update(Phase::Registered, true, None)),
            ["Registered"]
        );
        assert_eq!(reasons(&update(Phase::Fenced, true, None)), ["Fenced"]);
        assert_eq!(reasons(&update(Phase::Released, true, None)), ["Released"]);
        assert!(reasons(&update(Phase::Held, false, None)).is_empty());
        let id = update(Phase::Error, true, Some("identity_mismatch"));
        assert_eq!(reasons(&id), ["IdentityMismatch"]);
        assert_eq!(events(&id, "node-a")[0].type_, EventType::Warning);
        assert_eq!(
            reasons(&update(Phase::Error, true, Some("unsupported"))),
            ["Unsupported"]
        );
        assert!(reasons(&update(Phase::Error, true, Some("timeout"))).is_empty());
    }

    #[test]
    fn the_status_body_holds_only_this_nodes_entry_and_no_holder_fields() {
        let b = status_body(
            "pv-1",
            "node-a",
            ReservationKey(0x7e57_0000_0000_0001),
            &update(Phase::Fenced, true, None),
            "2026-11-23T10:00:00Z",
        );
        let nodes = b["status"]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["node"], "node-a");
        assert_eq!(nodes[0]["state"], "Fenced");
        assert_eq!(nodes[0]["key"], "0x7e57000000000001");
        assert_eq!(
            (
                nodes[0]["registeredPaths"].as_u64(),
                nodes[0]["totalPaths"].as_u64()
            ),
            (Some(1), Some(2))
        );
        assert!(b["status"].get("holder").is_none() && b["status"].get("wwid").is_none());
        assert_eq!(b["metadata"]["name"], "pv-1");
    }
}
