//! The daemon's configuration file (`--config`, YAML), validated at start:
//! an error names the field, the value and what is allowed.
//!
//! ```yaml
//! clusterName: prod-eu-1        # or clusterTag: "0x1a2b" (one of the two is required)
//! mapUuidPrefix: mpath-         # dm uuid prefix of multipath maps
//! multipathConfig: /etc/multipath.conf  # checked for reservation_key at start ("" skips)
//! policy:
//!   preempt: preempt-and-abort  # or preempt
//!   allTgPt: false
//!   aptpl: false
//!   removeForeignKeys: false
//! monitorIntervalSeconds: 10    # how often held volumes are checked (I7)
//! kernelLog: /dev/kmsg          # a conflict logged there is checked at once ("" turns it off)
//! resyncIntervalSeconds: 60     # full reconcile even without changes
//! maxConcurrentVolumes: 8       # volumes reconciled at once
//! operationTimeoutSeconds: 60   # one acquire/release/check, all commands (I6)
//! commandTimeoutSeconds: 20     # one SCSI command
//! deviceWaitSeconds: 30         # how long to wait for a LUN to appear
//! knownNodes: [node-a, node-b]  # optional: names stale keys in reports
//! drivers:                      # --source kubernetes: the CSI drivers whose volumes are fenced
//!   - name: block.csi.example.com
//!     volumeHandleRegex: '^(?P<wwid>3[0-9a-f]{32})$'   # WWID from spec.csi.volumeHandle
//!     # or: volumeAttribute: wwn (+ optional volumeAttributeRegex)
//!     reservationType: write-exclusive-registrants-only   # optional
//!     preempt: preempt                                    # optional
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::fence::keys::ClusterTag;
use crate::fence::policy::PreemptMode;
use crate::scsi::ReservationType;
use crate::source::rules::{self, DriverRule, WwidFrom};

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    cluster_name: Option<String>,
    cluster_tag: Option<String>,
    map_uuid_prefix: Option<String>,
    multipath_config: Option<String>,
    #[serde(default)]
    policy: RawPolicy,
    monitor_interval_seconds: Option<u64>,
    kernel_log: Option<String>,
    resync_interval_seconds: Option<u64>,
    max_concurrent_volumes: Option<u64>,
    operation_timeout_seconds: Option<u64>,
    command_timeout_seconds: Option<u64>,
    device_wait_seconds: Option<u64>,
    #[serde(default)]
    known_nodes: Vec<String>,
    #[serde(default)]
    drivers: Vec<RawDriver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDriver {
    name: String,
    volume_handle_regex: Option<String>,
    volume_attribute: Option<String>,
    volume_attribute_regex: Option<String>,
    reservation_type: Option<String>,
    preempt: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    preempt: Option<String>,
    all_tg_pt: Option<bool>,
    aptpl: Option<bool>,
    remove_foreign_keys: Option<bool>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This cluster's key tag.
    pub tag: ClusterTag,
    /// dm uuid prefix of multipath maps.
    pub map_uuid_prefix: String,
    /// multipath.conf to check for the one-owner rule; `None` skips the check.
    pub multipath_config: Option<std::path::PathBuf>,
    /// PREEMPT AND ABORT or PREEMPT.
    pub preempt: PreemptMode,
    /// ALL_TG_PT when supported.
    pub all_tg_pt: bool,
    /// APTPL when supported.
    pub aptpl: bool,
    /// Preempt other clusters' keys too.
    pub remove_foreign_keys: bool,
    /// How often held volumes are checked.
    pub monitor_interval: Duration,
    /// The kernel log to follow for this node's own RESERVATION CONFLICTs
    /// (see `platform::linux::kernel_log`); `None`: checks at the monitor
    /// interval only.
    pub kernel_log: Option<std::path::PathBuf>,
    /// Full reconcile period.
    pub resync_interval: Duration,
    /// Volumes reconciled at once.
    pub max_concurrent_volumes: usize,
    /// Bound of one engine operation.
    pub operation_timeout: Duration,
    /// Bound of one SCSI command.
    pub command_timeout: Duration,
    /// How long to wait for a LUN to appear.
    pub device_wait: Duration,
    /// Node names for naming stale keys.
    pub known_nodes: BTreeSet<String>,
    /// The CSI drivers whose volumes are fenced (Kubernetes source).
    pub drivers: Vec<DriverRule>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {field}: {why}")]
pub struct ConfigError {
    /// The file.
    pub origin: String,
    /// The field (or "file").
    pub field: String,
    /// What is wrong and what is allowed.
    pub why: String,
}

fn seconds(
    origin: &str,
    field: &str,
    v: Option<u64>,
    default: u64,
    range: (u64, u64),
) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or(default);
    if s < range.0 || s > range.1 {
        return Err(ConfigError {
            origin: origin.into(),
            field: field.into(),
            why: format!(
                "{s} is out of range: allowed {}..={} seconds",
                range.0, range.1
            ),
        });
    }
    Ok(Duration::from_secs(s))
}

impl Config {
    /// Parses and validates `text` from `origin`. An empty text is an error
    /// (the cluster tag has no safe default).
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let err = |field: &str, why: String| ConfigError {
            origin: origin.into(),
            field: field.into(),
            why,
        };
        let raw: Raw = serde_yaml::from_str(text).map_err(|e| err("file", e.to_string()))?;
        let tag = match (&raw.cluster_tag, &raw.cluster_name) {
            (Some(_), Some(_)) => return Err(err("clusterTag", "give clusterTag or clusterName, not both".into())),
            (Some(t), None) => t.parse().map_err(|e: crate::fence::keys::TagError| err("clusterTag", format!("{t:?}: {e}")))?,
            (None, Some(n)) => ClusterTag::from_cluster_name(n).map_err(|e| err("clusterName", e.to_string()))?,
            (None, None) => {
                return Err(err(
                    "clusterName",
                    "missing: set clusterName (or clusterTag) so keys of two clusters on one SAN never collide".into(),
                ))
            }
        };
        let preempt = preempt_mode(raw.policy.preempt.as_deref())
            .map_err(|why| err("policy.preempt", why))?
            .unwrap_or_default();
        let drivers = raw
            .drivers
            .iter()
            .enumerate()
            .map(|(i, d)| driver(i, d).map_err(|(f, why)| err(&f, why)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(dup) = duplicate(drivers.iter().map(|d| d.name.as_str())) {
            return Err(err("drivers", format!("{dup:?} is listed twice")));
        }
        let prefix = raw.map_uuid_prefix.unwrap_or_else(|| "mpath-".into());
        if prefix.is_empty() || prefix.contains('/') {
            return Err(err(
                "mapUuidPrefix",
                format!("{prefix:?}: must be non-empty, without '/'"),
            ));
        }
        let conc = raw.max_concurrent_volumes.unwrap_or(8);
        if !(1..=256).contains(&conc) {
            return Err(err(
                "maxConcurrentVolumes",
                format!("{conc} is out of range: allowed 1..=256"),
            ));
        }
        Ok(Config {
            tag,
            map_uuid_prefix: prefix,
            multipath_config: match raw.multipath_config.as_deref() {
                None => crate::platform::DEFAULT_MULTIPATH_CONFIG.map(Into::into),
                Some("") => None,
                Some(p) => Some(p.into()),
            },
            preempt,
            all_tg_pt: raw.policy.all_tg_pt.unwrap_or(false),
            aptpl: raw.policy.aptpl.unwrap_or(false),
            remove_foreign_keys: raw.policy.remove_foreign_keys.unwrap_or(false),
            monitor_interval: seconds(
                origin,
                "monitorIntervalSeconds",
                raw.monitor_interval_seconds,
                10,
                (1, 3600),
            )?,
            kernel_log: match raw.kernel_log.as_deref() {
                None => crate::platform::DEFAULT_KERNEL_LOG.map(Into::into),
                Some("") => None,
                Some(p) => Some(p.into()),
            },
            resync_interval: seconds(
                origin,
                "resyncIntervalSeconds",
                raw.resync_interval_seconds,
                60,
                (1, 86400),
            )?,
            max_concurrent_volumes: conc as usize,
            operation_timeout: seconds(
                origin,
                "operationTimeoutSeconds",
                raw.operation_timeout_seconds,
                60,
                (1, 3600),
            )?,
            command_timeout: seconds(
                origin,
                "commandTimeoutSeconds",
                raw.command_timeout_seconds,
                20,
                (1, 600),
            )?,
            device_wait: seconds(
                origin,
                "deviceWaitSeconds",
                raw.device_wait_seconds,
                30,
                (0, 3600),
            )?,
            known_nodes: raw
                .known_nodes
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            drivers,
        })
    }
}

fn preempt_mode(v: Option<&str>) -> Result<Option<PreemptMode>, String> {
    v.map(str::parse).transpose()
}

fn duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

/// One `drivers[i]` entry; errors name the field.
fn driver(i: usize, d: &RawDriver) -> Result<DriverRule, (String, String)> {
    let field = |f: &str| format!("drivers[{i}].{f}");
    if d.name.trim().is_empty() {
        return Err((field("name"), "must not be empty".into()));
    }
    let regex = |f: &str, p: &str| rules::compile(p).map_err(|why| (field(f), why));
    let wwid = match (&d.volume_handle_regex, &d.volume_attribute) {
        (Some(p), None) if d.volume_attribute_regex.is_none() => {
            WwidFrom::VolumeHandle(regex("volumeHandleRegex", p)?)
        }
        (None, Some(key)) if !key.is_empty() => WwidFrom::VolumeAttribute {
            key: key.clone(),
            regex: match &d.volume_attribute_regex {
                Some(p) => Some(regex("volumeAttributeRegex", p)?),
                None => None,
            },
        },
        _ => {
            return Err((
                field("volumeHandleRegex"),
                "give exactly one of volumeHandleRegex or volumeAttribute \
                 (volumeAttributeRegex only with volumeAttribute)"
                    .into(),
            ))
        }
    };
    let reservation_type = match &d.reservation_type {
        Some(t) => Some(
            t.parse::<ReservationType>()
                .map_err(|e| (field("reservationType"), e.to_string()))?,
        ),
        None => None,
    };
    Ok(DriverRule {
        name: d.name.clone(),
        wwid,
        reservation_type,
        preempt: preempt_mode(d.preempt.as_deref()).map_err(|why| (field("preempt"), why))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_just_a_cluster_name() {
        let c = Config::parse("c.yaml", "clusterName: demo\n").unwrap();
        assert_eq!(c.tag, ClusterTag::from_cluster_name("demo").unwrap());
        assert_eq!(c.map_uuid_prefix, "mpath-");
        assert_eq!(c.preempt, PreemptMode::PreemptAndAbort);
        assert_eq!(c.monitor_interval, Duration::from_secs(10));
        assert_eq!(c.max_concurrent_volumes, 8);
        assert!(!c.remove_foreign_keys);
        // /dev/kmsg and /etc/multipath.conf on Linux, none on Windows.
        let default = |p: Option<&str>| p.map(std::path::PathBuf::from);
        assert_eq!(c.kernel_log, default(crate::platform::DEFAULT_KERNEL_LOG));
        assert_eq!(
            c.multipath_config,
            default(crate::platform::DEFAULT_MULTIPATH_CONFIG)
        );
    }

    #[test]
    fn every_field_parses() {
        let text = "clusterTag: '0x7e57'\nmapUuidPrefix: mpathb-\npolicy: {preempt: preempt, allTgPt: true, aptpl: true, removeForeignKeys: true}\nmonitorIntervalSeconds: 2\nresyncIntervalSeconds: 30\nmaxConcurrentVolumes: 4\noperationTimeoutSeconds: 20\ncommandTimeoutSeconds: 5\ndeviceWaitSeconds: 0\nknownNodes: [a, b]\nkernelLog: \"\"\n";
        let c = Config::parse("c.yaml", text).unwrap();
        assert_eq!(c.tag.value(), 0x7e57);
        assert_eq!(
            (c.preempt, c.all_tg_pt, c.aptpl, c.remove_foreign_keys),
            (PreemptMode::Preempt, true, true, true)
        );
        assert_eq!(c.known_nodes.len(), 2);
        assert_eq!(c.device_wait, Duration::ZERO);
        assert_eq!(c.kernel_log, None, "\"\" turns it off");
    }

    #[test]
    fn errors_name_field_value_and_what_is_allowed() {
        let cases = [
            ("", "clusterName: missing"),
            (
                "clusterName: a\nclusterTag: '1'\n",
                "clusterTag: give clusterTag or clusterName, not both",
            ),
            (
                "clusterTag: '0'\n",
                "clusterTag: \"0\": cluster tag 0 is not allowed",
            ),
            (
                "clusterName: a\npolicy: {preempt: nuke}\n",
                "policy.preempt: \"nuke\": allowed preempt-and-abort (falls back to preempt where the target lacks it), preempt-and-abort-only, preempt",
            ),
            (
                "clusterName: a\nmonitorIntervalSeconds: 0\n",
                "monitorIntervalSeconds: 0 is out of range: allowed 1..=3600 seconds",
            ),
            (
                "clusterName: a\nmaxConcurrentVolumes: 0\n",
                "maxConcurrentVolumes: 0 is out of range",
            ),
            (
                "clusterName: a\nmonitorInterval: 5\n",
                "unknown field `monitorInterval`",
            ),
            (
                "clusterName: a\nmapUuidPrefix: ''\n",
                "mapUuidPrefix: \"\": must be non-empty",
            ),
            (
                "clusterName: a\ndrivers: [{name: d, volumeHandleRegex: '(['}]\n",
                "drivers[0].volumeHandleRegex: \"([\" is not a valid regex",
            ),
            (
                "clusterName: a\ndrivers: [{name: d}]\n",
                "drivers[0].volumeHandleRegex: give exactly one of",
            ),
            (
                "clusterName: a\ndrivers: [{name: d, volumeAttribute: w, preempt: later}]\n",
                "drivers[0].preempt: \"later\": allowed",
            ),
            (
                "clusterName: a\ndrivers: [{name: d, volumeAttribute: w, reservationType: nine}]\n",
                "drivers[0].reservationType:",
            ),
            (
                "clusterName: a\ndrivers: [{name: d, volumeAttribute: w}, {name: d, volumeAttribute: v}]\n",
                "drivers: \"d\" is listed twice",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse("c.yaml", text).unwrap_err().to_string();
            assert!(
                e.starts_with("c.yaml: ") && e.contains(want),
                "{e}\n  wanted: {want}"
            );
        }
    }
}
