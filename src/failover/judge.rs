//! One pass of the failover controller's judgement over a [`Cluster`]: pure,
//! so that every rule is a table test and a new leader reaches the same
//! decisions from the same cluster (nothing is remembered between passes
//! but what the Nodes themselves carry).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::view::{Attachment, Cluster, Node, Ready, Report, Settings};
use crate::daemon::reconcile::Phase;
use crate::text;

/// What to do to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply the out-of-service taint.
    Taint {
        /// The node.
        node: String,
        /// How long its kubelet has not renewed its Lease.
        silent_for: Duration,
        /// The fenced volumes (PersistentVolumes) attached to it.
        volumes: Vec<String>,
    },
    /// Take back the out-of-service taint csi-fencer applied.
    Untaint {
        /// The node.
        node: String,
    },
}

/// Why a dead node is not tainted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The kubelet reported a graceful shutdown.
    ShuttingDown,
    /// Cordoned: a person or a tool is draining it for maintenance.
    Cordoned,
    /// An attachment of a driver csi-fencer does not fence.
    UnfencedDriver {
        /// The VolumeAttachment.
        attachment: String,
        /// Its driver.
        driver: String,
    },
    /// A volume the kubelet reported in use that no fenced attachment
    /// accounts for.
    UnattachedVolume {
        /// The volume as the kubelet names it.
        volume: String,
    },
    /// An attachment of a fenced driver whose LUN does not show the node
    /// under the fence.
    Unprotected {
        /// The VolumeAttachment.
        attachment: String,
        /// The PersistentVolume, if any.
        pv: Option<String>,
        /// What the report says, or that there is none.
        why: String,
    },
    /// More of the cluster looks dead than a node death explains.
    TooManyUnhealthy {
        /// Nodes that look dead.
        dead: usize,
        /// All nodes.
        total: usize,
        /// The most that may look dead (percent).
        max_percent: u32,
    },
    /// As many nodes as allowed carry csi-fencer's taint already.
    TooManyTainted {
        /// Nodes carrying it.
        tainted: usize,
        /// The limit.
        max: usize,
    },
}

impl Refusal {
    /// The `reason` label of the refusal metric and the Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "shutting-down",
            Refusal::Cordoned => "cordoned",
            Refusal::UnfencedDriver { .. } => "unfenced-driver",
            Refusal::UnattachedVolume { .. } => "unattached-volume",
            Refusal::Unprotected { .. } => "unprotected-volume",
            Refusal::TooManyUnhealthy { .. } => "too-many-unhealthy",
            Refusal::TooManyTainted { .. } => "too-many-tainted",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ShuttingDown => write!(f, "the kubelet reported a graceful shutdown"),
            Refusal::Cordoned => write!(f, "the node is cordoned (maintenance)"),
            Refusal::UnfencedDriver { attachment, driver } => write!(
                f,
                "VolumeAttachment {attachment} is of driver {driver}, which csi-fencer does not fence"
            ),
            Refusal::UnattachedVolume { volume } => write!(
                f,
                "the kubelet reported volume {volume} in use, and no attachment of a driver csi-fencer fences accounts for it"
            ),
            Refusal::Unprotected {
                attachment,
                pv: Some(pv),
                why,
            } => write!(
                f,
                "volume {pv} (VolumeAttachment {attachment}) is not fenced: {why}"
            ),
            Refusal::Unprotected {
                attachment,
                pv: None,
                why,
            } => write!(f, "VolumeAttachment {attachment} is not fenced: {why}"),
            Refusal::TooManyUnhealthy {
                dead,
                total,
                max_percent,
            } => write!(
                f,
                "{dead} of {total} nodes look dead, more than {max_percent}%: a partition, not a node death"
            ),
            Refusal::TooManyTainted { tainted, max } => write!(
                f,
                "{tainted} nodes carry csi-fencer's out-of-service taint already (at most {max})"
            ),
        }
    }
}

/// The outcome of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Nodes whose Lease has not been renewed for the grace period.
    pub dead: Vec<String>,
    /// What to do, in node-name order.
    pub actions: Vec<Action>,
    /// Dead nodes left untainted, and why.
    pub refusals: Vec<(String, Refusal)>,
    /// Nodes carrying csi-fencer's taint and still dead: their terminating
    /// pods may be force-deleted now, as pod GC does for an out-of-service
    /// node once the node lifecycle controller has marked it not Ready.
    pub sweep: Vec<String>,
}

/// Judges the cluster at `now`.
pub fn judge(c: &Cluster, s: &Settings, now: SystemTime) -> Judgement {
    let mut nodes: Vec<&Node> = c.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let silent = |n: &Node| silent_for(n, now).filter(|d| *d >= s.lease_grace);
    let mut out = Judgement {
        dead: nodes
            .iter()
            .filter(|n| silent(n).is_some())
            .map(|n| n.name.clone())
            .collect(),
        ..Judgement::default()
    };
    for n in nodes
        .iter()
        .filter(|n| recovered(n, c, silent(n).is_some()))
    {
        out.actions.push(Action::Untaint {
            node: n.name.clone(),
        });
    }
    out.sweep = nodes
        .iter()
        .filter(|n| n.tainted_by_us.is_some() && silent(n).is_some())
        .map(|n| n.name.clone())
        .collect();
    let mut tainted = nodes.iter().filter(|n| n.tainted_by_us.is_some()).count();
    let crowd = too_many_dead(out.dead.len(), nodes.len(), s);
    for n in nodes
        .iter()
        .filter(|n| n.tainted_by_us.is_none() && !n.out_of_service)
    {
        let Some(silent_for) = silent(n) else {
            continue;
        };
        let verdict = protected(n, c, s).and_then(|volumes| {
            if let Some(r) = crowd.clone() {
                return Err(r);
            }
            if tainted >= s.max_concurrent {
                return Err(Refusal::TooManyTainted {
                    tainted,
                    max: s.max_concurrent,
                });
            }
            Ok(volumes)
        });
        match verdict {
            Ok(volumes) => {
                tainted += 1;
                out.actions.push(Action::Taint {
                    node: n.name.clone(),
                    silent_for,
                    volumes,
                });
            }
            Err(r) => out.refusals.push((n.name.clone(), r)),
        }
    }
    out
}

/// How long the node's kubelet has not renewed its Lease.
fn silent_for(n: &Node, now: SystemTime) -> Option<Duration> {
    n.renewed.map(|t| now.duration_since(t).unwrap_or_default())
}

/// A node csi-fencer tainted is back: its kubelet renews its Lease, it is
/// Ready, and none of its attachments predates the taint (those were
/// detached; their volumes' new holders fenced it).
fn recovered(n: &Node, c: &Cluster, dead: bool) -> bool {
    let Some(at) = n.tainted_by_us else {
        return false;
    };
    !dead
        && n.renewed.is_some()
        && n.ready == Ready::True
        && !attachments_of(c, &n.name).any(|a| a.created.is_none_or(|t| t <= at))
}

fn too_many_dead(dead: usize, total: usize, s: &Settings) -> Option<Refusal> {
    (dead * 100 > s.max_unhealthy_percent as usize * total).then_some(Refusal::TooManyUnhealthy {
        dead,
        total,
        max_percent: s.max_unhealthy_percent,
    })
}

fn attachments_of<'a>(c: &'a Cluster, node: &'a str) -> impl Iterator<Item = &'a Attachment> {
    c.attachments.iter().filter(move |a| a.node == node)
}

/// The node's own refusals: its state, then each of its attachments; the
/// fenced volumes when there is none.
fn protected(n: &Node, c: &Cluster, s: &Settings) -> Result<Vec<String>, Refusal> {
    if n.ready
        == (Ready::NotReady {
            shutting_down: true,
        })
    {
        return Err(Refusal::ShuttingDown);
    }
    if n.cordoned {
        return Err(Refusal::Cordoned);
    }
    let mut atts: Vec<&Attachment> = attachments_of(c, &n.name).collect();
    atts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut volumes = Vec::new();
    in_use_accounted(n, &atts, s)?;
    for a in atts {
        if s.ignored_drivers.contains(&a.driver) {
            continue;
        }
        if !s.drivers.contains(&a.driver) {
            return Err(Refusal::UnfencedDriver {
                attachment: a.name.clone(),
                driver: a.driver.clone(),
            });
        }
        let unprotected = |why: String| Refusal::Unprotected {
            attachment: a.name.clone(),
            pv: a.pv.clone(),
            why,
        };
        let Some(pv) = &a.pv else {
            return Err(unprotected(
                "an inline volume has no VolumeReservation".into(),
            ));
        };
        let report = c.reports.get(pv).and_then(|r| r.get(&n.name));
        fenced_on(report).map_err(unprotected)?;
        volumes.push(pv.clone());
    }
    Ok(volumes)
}

/// Every volume the kubelet reported in use is accounted for by an
/// attachment: a CSI volume of a fenced driver needs an attachment of that
/// driver on the node (one per volume), of an ignored driver nothing; any
/// other volume (in-tree iSCSI or FC, a driver that is not fenced) refuses.
fn in_use_accounted(n: &Node, atts: &[&Attachment], s: &Settings) -> Result<(), Refusal> {
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for a in atts {
        *left.entry(a.driver.as_str()).or_default() += 1;
    }
    for v in &n.volumes_in_use {
        let driver = v
            .strip_prefix("kubernetes.io/csi/")
            .and_then(|r| r.split('^').next());
        let unaccounted = || Refusal::UnattachedVolume { volume: v.clone() };
        match driver {
            Some(d) if s.ignored_drivers.contains(d) => {}
            Some(d) if s.drivers.contains(d) => {
                let n = left
                    .get_mut(d)
                    .filter(|n| **n > 0)
                    .ok_or_else(unaccounted)?;
                *n -= 1;
            }
            _ => return Err(unaccounted()),
        }
    }
    Ok(())
}

/// Whether the node's last report puts it under the fence: it holds the
/// reservation or is registered under one (a new node must preempt its key
/// before writing), or is fenced already.
fn fenced_on(report: Option<&Report>) -> Result<(), String> {
    let Some(r) = report else {
        return Err("the node never reported on its LUN".into());
    };
    match r.phase {
        Phase::Held | Phase::Registered | Phase::Fenced => Ok(()),
        _ if r.message.is_empty() => Err(format!("the node's last report is {}", r.phase.label())),
        _ => Err(format!(
            "the node's last report is {}: {}",
            r.phase.label(),
            r.message
        )),
    }
}

/// Words for the Event and the annotation of a taint.
pub fn taint_reason(silent_for: &Duration, volumes: &[String]) -> String {
    let vols = if volumes.is_empty() {
        "no attached volume".to_string()
    } else {
        format!("fenced volumes: {}", volumes.join(", "))
    };
    format!(
        "kubelet Lease not renewed for {}; {vols}",
        text::duration(&Duration::from_secs(silent_for.as_secs()))
    )
}

#[cfg(test)]
mod tests;
