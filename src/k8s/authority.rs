//! The API server's last word before any PR OUT. An acquire needs a fresh GET
//! of this node's VolumeAttachment (not the watch cache) and a fresh list for
//! the live nodes; a release needs a fresh list without this node's
//! attachment. When the API server cannot be asked, nothing is registered,
//! preempted or released.

use std::sync::Arc;
use std::time::SystemTime;

use std::collections::BTreeSet;

use super::cluster::{Cluster, Fresh};
use super::store::SlimVa;
use crate::daemon::reconcile::{Authority, Confirming, Denied, Op, Phase};
use crate::fence::engine::{Authorization, Volume};

/// [`Authority`] backed by the API server.
pub struct ApiAuthority(pub Arc<Cluster>);

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

/// The note for attachments of other PVs on the same LUN: their nodes are
/// live (never preempted), and the operator should know.
fn shared_lun(pv: &str, fresh: &[Fresh]) -> Option<String> {
    let others: BTreeSet<String> = fresh
        .iter()
        .filter(|f| f.pv != pv)
        .map(|f| format!("{} on {}", f.pv, f.node))
        .collect();
    (!others.is_empty()).then(|| {
        let list: Vec<String> = others.into_iter().collect();
        format!(
            "{SHARED_LUN}: {} (another PV with the same volume handle); their nodes count as live and are never preempted",
            list.join(", ")
        )
    })
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
                "not-attached",
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
                return Err(deny("not-attached", why, Some(Phase::Pending)));
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
                "not-attached",
                format!("fresh GET: {why}; {nothing}"),
                Some(Phase::Pending),
            ));
        }
        // The PV's CSI handle (cached; it never changes) finds the other
        // PVs' attachments of the same LUN.
        let csi = c.volume(&vol.name).await.ok().map(|i| i.csi);
        let fresh = c
            .fresh_attachments(&vol.name, csi.as_ref())
            .await
            .map_err(|e| deny(e.kind(), format!("{e}; {nothing}"), Some(Phase::Error)))?;
        let notes = shared_lun(&vol.name, &fresh).into_iter().collect();
        let live = fresh
            .into_iter()
            .filter(|f| !f.deleting)
            .map(|f| f.node)
            .chain([c.node.clone()])
            .collect();
        let auth = Authorization {
            attachment: auth.attachment,
            read_at,
            notes,
        };
        Ok(Op::Acquire { vol, auth, live })
    }

    /// A release goes ahead only on a confirmed detach. Until then the
    /// volume is still this node's to watch, so the release becomes a check
    /// (I7: a node whose detach cannot be confirmed still learns it was fenced).
    async fn release(&self, vol: Volume) -> Result<Op, Denied> {
        let c = &self.0;
        let why = match c.fresh_attachments(&vol.name, None).await {
            Err(e) => format!("{e}; not released until the detach is confirmed"),
            Ok(fresh) => match fresh.iter().find(|f| f.node == c.node) {
                None => {
                    return Ok(Op::Release {
                        vol,
                        explicit: false,
                    })
                }
                Some(mine) => {
                    let how = if mine.deleting {
                        "is still being detached"
                    } else {
                        "still exists"
                    };
                    format!(
                        "VolumeAttachment {} {how} (fresh list): not released yet",
                        mine.name
                    )
                }
            },
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
