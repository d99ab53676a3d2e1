//! Where attachments come from: "volume V is attached to node N under
//! attachment X". The daemon reconciles each volume against these; the
//! engine never sees where they came from.

pub mod file;
pub mod rules;

use serde::Serialize;

use crate::fence::policy::{AccessMode, Policy, PreemptMode};
use crate::fence::state::AttachmentId;
use crate::scsi::{ReservationType, Wwid};

/// One live attachment of a volume to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The volume (PV) name.
    pub volume: String,
    /// The LUN.
    pub wwid: Wwid,
    /// The node it is attached to.
    pub node: String,
    /// Single- or multi-node.
    pub access: AccessMode,
    /// The attachment's identity (a VolumeAttachment UID, a file generation).
    pub id: AttachmentId,
    /// Per-volume policy overrides (driver rules, StorageClass, PV annotations).
    pub overrides: Overrides,
}

/// Policy settings one volume overrides; unset ones come from the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    /// The reservation type.
    pub reservation_type: Option<ReservationType>,
    /// PREEMPT or PREEMPT AND ABORT.
    pub preempt: Option<PreemptMode>,
}

impl Overrides {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: &Policy) -> Policy {
        let mut p = base.clone();
        if let Some(t) = self.reservation_type {
            p.reservation_type = Some(t);
        }
        if let Some(m) = self.preempt {
            p.preempt = m;
        }
        p
    }
}

/// A consistent snapshot of every live attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    all: Vec<Attachment>,
}

impl Attachments {
    /// A snapshot of `all`, already validated by its source.
    pub fn new(all: Vec<Attachment>) -> Self {
        Attachments { all }
    }

    /// Every attachment.
    pub fn all(&self) -> &[Attachment] {
        &self.all
    }

    /// The attachments of `node`.
    pub fn for_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Attachment> + 'a {
        self.all.iter().filter(move |a| a.node == node)
    }

    /// The nodes with a live attachment of `volume` (I2's "live" set).
    pub fn nodes_of(&self, volume: &str) -> std::collections::BTreeSet<String> {
        self.all
            .iter()
            .filter(|a| a.volume == volume)
            .map(|a| a.node.clone())
            .collect()
    }
}

/// Why a source could not give a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's content is malformed; nothing from it is used.
    #[error("{origin}: {what}")]
    Invalid {
        /// The file or object.
        origin: String,
        /// What is wrong, naming the entry, field, value and what is allowed.
        what: String,
    },
    /// The source could not be read.
    #[error("{origin}: cannot read")]
    Unreadable {
        /// The file or endpoint.
        origin: String,
        /// The cause.
        source: std::io::Error,
    },
}
