//! Reservation policy (docs/design.md §5): which type, how to preempt, which options.

use serde::{Deserialize, Serialize};

use crate::scsi::{Capabilities, ReservationType};

/// How many nodes may hold the volume at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessMode {
    /// RWO / RWOP: one writer; the holder fences everyone else.
    SingleNode,
    /// RWX / ROX block: every attached node stays registered.
    MultiNode,
}

impl std::str::FromStr for AccessMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single-node" | "ReadWriteOnce" | "ReadWriteOncePod" | "rwo" | "rwop" => Ok(AccessMode::SingleNode),
            "multi-node" | "ReadWriteMany" | "ReadOnlyMany" | "rwx" | "rox" => Ok(AccessMode::MultiNode),
            _ => Err(format!(
                "invalid access mode {s:?}: use single-node (ReadWriteOnce, ReadWriteOncePod) or multi-node (ReadWriteMany, ReadOnlyMany)"
            )),
        }
    }
}

/// PREEMPT or PREEMPT AND ABORT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PreemptMode {
    /// PREEMPT AND ABORT: the fenced node's queued commands are aborted too
    /// (its writes already in the target's queue never land). The default.
    #[default]
    PreemptAndAbort,
    /// Plain PREEMPT: for targets that mishandle the abort.
    Preempt,
    /// PREEMPT AND ABORT or nothing: on a target without it, the acquire
    /// fails (exit 9, kind `unsupported`) instead of falling back to PREEMPT.
    PreemptAndAbortOnly,
}

impl std::str::FromStr for PreemptMode {
    type Err = String;

    /// The spellings of the config file, StorageClass parameters and PV annotations.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "preempt-and-abort" => Ok(PreemptMode::PreemptAndAbort),
            "preempt" => Ok(PreemptMode::Preempt),
            "preempt-and-abort-only" => Ok(PreemptMode::PreemptAndAbortOnly),
            other => Err(format!(
                "{other:?}: allowed preempt-and-abort (falls back to preempt where the target lacks it), preempt-and-abort-only, preempt"
            )),
        }
    }
}

/// How the engine reserves a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Overrides the type chosen from the access mode (e.g. 6 or 8 for exclusive access).
    pub reservation_type: Option<ReservationType>,
    /// PREEMPT AND ABORT (default) or PREEMPT.
    pub preempt: PreemptMode,
    /// Register with ALL_TG_PT, if the target reports ATP_C.
    pub all_tg_pt: bool,
    /// Register with APTPL, if the target reports PTPL_C.
    pub aptpl: bool,
    /// Remove keys of other clusters (other tags) too. Default: report them only.
    pub remove_foreign_keys: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            reservation_type: None,
            preempt: PreemptMode::PreemptAndAbort,
            all_tg_pt: false,
            aptpl: false,
            remove_foreign_keys: false,
        }
    }
}

impl Policy {
    /// The reservation type for a volume of `access` (5 single-node, 7 multi-node).
    pub fn reservation_type(&self, access: AccessMode) -> ReservationType {
        self.reservation_type.unwrap_or(match access {
            AccessMode::SingleNode => ReservationType::WriteExclusiveRegistrantsOnly,
            AccessMode::MultiNode => ReservationType::WriteExclusiveAllRegistrants,
        })
    }

    /// ALL_TG_PT, only where the target supports it.
    pub fn use_all_tg_pt(&self, caps: Option<&Capabilities>) -> bool {
        self.all_tg_pt && caps.is_some_and(|c| c.all_target_ports)
    }

    /// APTPL, only where the target supports it.
    pub fn use_aptpl(&self, caps: Option<&Capabilities>) -> bool {
        self.aptpl && caps.is_some_and(|c| c.persist_through_power_loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_by_access_mode_and_override() {
        let p = Policy::default();
        assert_eq!(
            p.reservation_type(AccessMode::SingleNode),
            ReservationType::WriteExclusiveRegistrantsOnly
        );
        assert_eq!(
            p.reservation_type(AccessMode::MultiNode),
            ReservationType::WriteExclusiveAllRegistrants
        );
        let ea = Policy {
            reservation_type: Some(ReservationType::ExclusiveAccessRegistrantsOnly),
            ..p
        };
        assert_eq!(
            ea.reservation_type(AccessMode::SingleNode),
            ReservationType::ExclusiveAccessRegistrantsOnly
        );
        assert_eq!(Policy::default().preempt, PreemptMode::PreemptAndAbort);
    }

    #[test]
    fn options_only_where_the_target_supports_them() {
        let p = Policy {
            all_tg_pt: true,
            aptpl: true,
            ..Policy::default()
        };
        let none = Capabilities::default();
        let all = Capabilities {
            all_target_ports: true,
            persist_through_power_loss: true,
            ..Capabilities::default()
        };
        assert!(
            !p.use_all_tg_pt(Some(&none)) && !p.use_aptpl(Some(&none)) && !p.use_all_tg_pt(None)
        );
        assert!(p.use_all_tg_pt(Some(&all)) && p.use_aptpl(Some(&all)));
        assert!(!Policy::default().use_all_tg_pt(Some(&all)));
    }

    #[test]
    fn access_modes_parse_from_kubernetes_names() {
        assert_eq!("ReadWriteOnce".parse(), Ok(AccessMode::SingleNode));
        assert_eq!("ReadWriteMany".parse(), Ok(AccessMode::MultiNode));
        assert!("rw".parse::<AccessMode>().is_err());
    }
}
