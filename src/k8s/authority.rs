//! The API server's last word before any PR OUT. An acquire needs a fresh GET
//! of this node's VolumeAttachment (not the watch cache), and the engine asks
//! after each reading of the LUN which other keys on it are live (a fresh
//! GET per key, see `ApiLiveness`); a release needs this node's attachment
//! gone, read fresh. When the API server cannot be asked, nothing is
//! registered, preempted or released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::api::KubeError;
use super::cluster::{attachment_name, Cluster, Fresh};
use super::store::SlimVa;
use crate::daemon::reconcile::{Authority, Confirming, Denied, Op, Phase};
use crate::fence::engine::{Authorization, Volume};
use crate::fence::engine::{Confirm, Confirmed, Liveness};
use crate::fence::keys::ClusterTag;
use crate::scsi::ReservationKey;

/// [`Authority`] backed by the API server, for the cluster whose keys carry
/// the tag.
pub struct ApiAuthority(pub Arc<Cluster>, pub ClusterTag);

/// [`Liveness`] from the API server. A key's node is live for the LUN when
/// a VolumeAttachment of it exists for that node and is not being deleted,
/// read fresh: the name Kubernetes gives it (`csi-` and the SHA-256 of
/// handle, driver and node; the same for every PV with that handle) and the
/// names the watch cache knows for the PV. A key whose node is not known is
/// looked up in a fresh Node list; no such node, no attachment.
pub(crate) struct ApiLiveness {
    cluster: Arc<Cluster>,
    tag: ClusterTag,
    pv: String,
    csi: Option<(String, String)>,
    rt: tokio::runtime::Handle,
}

impl Liveness for ApiLiveness {
    fn confirm(
        &self,
        _vol: &Volume,
        keys: &[(ReservationKey, Option<String>)],
    ) -> Result<Confirmed, String> {
        self.rt.block_on(self.confirm_fresh(keys))
    }
}

impl ApiLiveness {
    /// Liveness of the keys on `pv`'s LUN (`csi`: its driver and handle,
    /// `None` when the PV could not be read), asked on the current runtime.
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        tag: ClusterTag,
        pv: &str,
        csi: Option<(String, String)>,
    ) -> Self {
        ApiLiveness {
            cluster,
            tag,
            pv: pv.to_string(),
            csi,
            rt: tokio::runtime::Handle::current(),
        }
    }

    pub(crate) async fn confirm_fresh(
        &self,
        keys: &[(ReservationKey, Option<String>)],
    ) -> Result<Confirmed, String> {
        let mut out = Confirmed::default();
        let mut nodes: Option<Vec<String>> = None;
        let mut listed: Option<BTreeMap<ReservationKey, Fresh>> = None;
        for (key, node) in keys {
            let node = match node {
                Some(n) => Some(n.clone()),
                None => {
                    if nodes.is_none() {
                        nodes = Some(self.cluster.node_names().await.map_err(|e| e.to_string())?);
                    }
                    let all = nodes.as_deref().unwrap_or_default();
                    all.iter().find(|n| self.tag.key_for(n) == *key).cloned()
                }
            };
            let found = match (node, &self.csi) {
                (Some(node), Some(_)) => self.attached(&node).await?.map(|pv| (node, pv)),
                // No name to ask by (the PV's handle could not be read, or
                // the key's node has no Node object, maybe deleted while its
                // attachment still exists): a fresh list of every attachment
                // decides, as before.
                _ => {
                    if listed.is_none() {
                        listed = Some(self.listed().await?);
                    }
                    listed
                        .as_ref()
                        .and_then(|l| l.get(key))
                        .map(|f| (f.node.clone(), f.pv.clone()))
                }
            };
            let Some((node, other_pv)) = found else {
                continue;
            };
            if other_pv != self.pv {
                let note = format!(
                    "{SHARED_LUN}: {other_pv} on {node} (another PV with the same volume handle); its node counts as live and is never preempted"
                );
                if !out.notes.contains(&note) {
                    out.notes.push(note);
                }
            }
            out.live.insert(*key, node);
        }
        Ok(out)
    }

    /// The live attachments of this LUN from a fresh list of all of them,
    /// by the key of their node.
    async fn listed(&self) -> Result<BTreeMap<ReservationKey, Fresh>, String> {
        let fresh = self
            .cluster
            .fresh_attachments(&self.pv, self.csi.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        Ok(fresh
            .into_iter()
            .filter(|f| !f.deleting)
            .map(|f| (self.tag.key_for(&f.node), f))
            .collect())
    }

    /// The names `node`'s attachment of this LUN may have: those the watch
    /// cache knows for the PV, and the one Kubernetes gives it.
    fn names(&self, node: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .cluster
            .store
            .lock()
            .map(|s| {
                s.of_node(node)
                    .filter(|(_, c)| c.pv == crate::k8s::packed::Packed::new(&self.pv))
                    .map(|(n, _)| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        if let Some((driver, handle)) = &self.csi {
            names.push(attachment_name(driver, handle, node));
        }
        names.sort();
        names.dedup();
        names
    }

    /// The PV of `node`'s live attachment of this LUN, read fresh, if any.
    async fn attached(&self, node: &str) -> Result<Option<String>, String> {
        for name in self.names(node) {
            let va = self
                .cluster
                .get_va(&name)
                .await
                .map_err(|e| e.to_string())?;
            let Some(va) = va else { continue };
            let live = va.metadata.deletion_timestamp.is_none() && va.spec.node_name == node;
            if live {
                let pv = va
                    .spec
                    .source
                    .persistent_volume_name
                    .clone()
                    .unwrap_or_default();
                return Ok(Some(pv));
            }
        }
        Ok(None)
    }
}

fn deny(kind: &'static str, message: String, phase: Option<Phase>) -> Denied {
    Denied {
        kind,
        message,
        phase,
    }
}

/// Why `va` does not authorise this node to register `vol`, if it does not.
fn refuse(va: &SlimVa, node: &str, vol: &str, uid: &str) -> Option<String> {
    let m = &va.metadata;
    let name = m.name.as_deref().unwrap_or("?");
    let pv = va.spec.source.persistent_volume_name.as_deref();
    if m.uid.as_deref() != Some(uid) {
        return Some(format!(
            "VolumeAttachment {name} was replaced (UID {} instead of {uid})",
            m.uid.as_deref().unwrap_or("none")
        ));
    }
    if va.spec.node_name != node || pv != Some(vol) {
        return Some(format!(
            "VolumeAttachment {name} is for PV {} on node {}, not {vol} on {node}",
            pv.unwrap_or("-"),
            va.spec.node_name
        ));
    }
    if m.deletion_timestamp.is_some() {
        return Some(format!("VolumeAttachment {name} is being deleted"));
    }
    if !va.status.as_ref().is_some_and(|s| s.attached) {
        return Some(format!("VolumeAttachment {name} is not attached yet"));
    }
    None
}

/// The start of the note that another PV attaches the same LUN.
pub const SHARED_LUN: &str = "the LUN is also attached through";

impl ApiAuthority {
    async fn acquire(&self, vol: Volume, auth: Authorization) -> Result<Op, Denied> {
        let c = &self.0;
        let uid = auth.attachment.0.clone();
        let name = c.store.lock().ok().and_then(|s| s.name_of_uid(&uid));
        let Some(name) = name else {
            return Err(deny(
                "not_attached",
                format!("attachment {uid} left the cache"),
                None,
            ));
        };
        let read_at = SystemTime::now();
        let nothing = "nothing registered or preempted";
        let va = match c.get_va(&name).await {
            Ok(Some(va)) => va,
            Ok(None) => {
                let why = format!("fresh GET: VolumeAttachment {name} not found (404); {nothing}");
                return Err(deny("not_attached", why, Some(Phase::Pending)));
            }
            Err(e) => {
                return Err(deny(
                    e.kind(),
                    format!("{e}; {nothing}"),
                    Some(Phase::Error),
                ))
            }
        };
        if let Some(why) = refuse(&va, &c.node, &vol.name, &uid) {
            return Err(deny(
                "not_attached",
                format!("fresh GET: {why}; {nothing}"),
                Some(Phase::Pending),
            ));
        }
        // Which other keys on the LUN are live is asked by the engine after
        // it read them (see ApiLiveness): one GET per key, not a list of the
        // cluster, and never older than the keys it answers for.
        let csi = c.volume(&vol.name).await.ok().map(|i| i.csi);
        let liveness = ApiLiveness::new(Arc::clone(c), self.1, &vol.name, csi);
        let auth = Authorization {
            attachment: auth.attachment,
            read_at,
            notes: Vec::new(),
            confirm: Some(Confirm(Arc::new(liveness))),
        };
        let live = [c.node.clone()].into();
        Ok(Op::Acquire { vol, auth, live })
    }

    /// A release goes ahead only on a confirmed detach. Until then the
    /// volume is still this node's to watch, so the release becomes a check
    /// (I7: a node whose detach cannot be confirmed still learns it was fenced).
    async fn release(&self, vol: Volume) -> Result<Op, Denied> {
        let c = &self.0;
        let why = match self.own_attachment(&vol.name).await {
            Err(e) => format!("{e}; not released until the detach is confirmed"),
            Ok(None) => {
                return Ok(Op::Release {
                    vol,
                    explicit: false,
                })
            }
            Ok(Some((name, deleting))) => {
                let how = if deleting {
                    "is still being detached"
                } else {
                    "still exists"
                };
                format!("VolumeAttachment {name} {how} (fresh read): not released yet")
            }
        };
        tracing::info!(volume = %vol.name, "{why}; checking it instead");
        let live = c
            .store
            .lock()
            .map(|s| s.nodes_of(&vol.name))
            .unwrap_or_default();
        Ok(Op::Check { vol, live })
    }
}

impl ApiAuthority {
    /// This node's attachment of `pv`, read fresh: its name and whether it
    /// is being deleted. By name (the cached ones and the one Kubernetes
    /// gives it) while the PV can be read; a fresh list of every
    /// attachment when it cannot (then its volume handle is unknown).
    async fn own_attachment(&self, pv: &str) -> Result<Option<(String, bool)>, KubeError> {
        let c = &self.0;
        let Ok(info) = c.volume(pv).await else {
            let fresh = c.fresh_attachments(pv, None).await?;
            return Ok(fresh
                .into_iter()
                .find(|f| f.node == c.node)
                .map(|f| (f.name, f.deleting)));
        };
        let liveness = ApiLiveness::new(Arc::clone(c), self.1, pv, Some(info.csi));
        for name in liveness.names(&c.node) {
            if let Some(va) = c.get_va(&name).await? {
                let mine = va.spec.node_name == c.node
                    && va.spec.source.persistent_volume_name.as_deref() == Some(pv);
                if mine {
                    return Ok(Some((name, va.metadata.deletion_timestamp.is_some())));
                }
            }
        }
        Ok(None)
    }
}

impl Authority for ApiAuthority {
    fn confirm(&self, op: Op) -> Confirming<'_> {
        Box::pin(async move {
            match op {
                Op::Acquire { vol, auth, .. } => self.acquire(vol, auth).await,
                // An explicit Release (gRPC) needs no confirmed detach (I4).
                explicit @ Op::Release { explicit: true, .. } => Ok(explicit),
                Op::Release { vol, .. } => self.release(vol).await,
                check @ Op::Check { .. } => Ok(check),
            }
        })
    }

    fn source(&self) -> &'static str {
        "kubernetes"
    }
}
