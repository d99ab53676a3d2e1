//! The file attachment source: a YAML list of attachments, for running
//! without Kubernetes (the local demo, other orchestrators, tests).
//!
//! ```yaml
//! - volume: pv-data-0          # any name; one entry per (volume, node)
//!   wwid: naa.60014050ea00...   # the LUN
//!   node: node-a
//!   accessMode: ReadWriteOnce   # or ReadWriteOncePod, ReadWriteMany, ReadOnlyMany
//!   generation: 3               # a new attachment gets a new generation (I1)
//! ```

use serde::Deserialize;

use super::{Attachment, Attachments, SourceError};
use crate::fence::policy::AccessMode;
use crate::fence::state::AttachmentId;
use crate::scsi::Wwid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    volume: String,
    wwid: String,
    node: String,
    access_mode: String,
    generation: u64,
}

/// Parses and validates the file's text. `origin` names the file in errors.
pub fn parse(origin: &str, text: &str) -> Result<Attachments, SourceError> {
    let entries: Vec<Entry> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(text).map_err(|e| SourceError::Invalid {
            origin: origin.to_string(),
            what: format!("not a YAML list of attachments: {e}"),
        })?
    };
    let mut out: Vec<Attachment> = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let a = entry(origin, i, e)?;
        check_consistent(origin, i, &a, &out)?;
        out.push(a);
    }
    Ok(Attachments::new(out))
}

fn invalid(origin: &str, i: usize, field: &str, value: &str, allowed: &str) -> SourceError {
    SourceError::Invalid {
        origin: origin.to_string(),
        what: format!("entry {i}: {field} {value:?} is invalid: {allowed}"),
    }
}

fn entry(origin: &str, i: usize, e: Entry) -> Result<Attachment, SourceError> {
    if e.volume.trim().is_empty() {
        return Err(invalid(origin, i, "volume", &e.volume, "must not be empty"));
    }
    if e.node.trim().is_empty() {
        return Err(invalid(origin, i, "node", &e.node, "must not be empty"));
    }
    let wwid: Wwid = e
        .wwid
        .parse()
        .map_err(|err: crate::scsi::inquiry::WwidParseError| {
            invalid(origin, i, "wwid", &e.wwid, err.why)
        })?;
    let access: AccessMode = e.access_mode.parse().map_err(|_| {
        invalid(
            origin,
            i,
            "accessMode",
            &e.access_mode,
            "use ReadWriteOnce, ReadWriteOncePod, ReadWriteMany or ReadOnlyMany",
        )
    })?;
    Ok(Attachment {
        volume: e.volume,
        wwid,
        node: e.node,
        access,
        id: AttachmentId(format!("generation-{}", e.generation)),
        overrides: Default::default(),
    })
}

/// One entry per (volume, node); a volume has one WWID and one access mode;
/// a single-node volume is attached to one node at a time; a LUN belongs to
/// one volume (the live set of I2 is per volume: under two names, each
/// node would take the other's key for stale).
fn check_consistent(
    origin: &str,
    i: usize,
    a: &Attachment,
    before: &[Attachment],
) -> Result<(), SourceError> {
    let related = before
        .iter()
        .filter(|b| b.volume == a.volume || b.wwid == a.wwid);
    for b in related {
        let why = if b.volume != a.volume {
            format!(
                "LUN {} is listed as volume {} and as volume {}",
                a.wwid, b.volume, a.volume
            )
        } else if b.node == a.node {
            format!("volume {} is listed twice for node {}", a.volume, a.node)
        } else if b.wwid != a.wwid {
            format!(
                "volume {} has two WWIDs ({} and {})",
                a.volume, b.wwid, a.wwid
            )
        } else if b.access != a.access {
            format!("volume {} has two access modes", a.volume)
        } else if a.access == AccessMode::SingleNode {
            format!(
                "volume {} is single-node but attached to {} and {}",
                a.volume, b.node, a.node
            )
        } else {
            continue;
        };
        return Err(SourceError::Invalid {
            origin: origin.to_string(),
            what: format!("entry {i}: {why}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The file's entries by volume, for quick lookups in tests.
    fn by_volume(a: &Attachments) -> BTreeMap<&str, Vec<&Attachment>> {
        let mut m: BTreeMap<&str, Vec<&Attachment>> = BTreeMap::new();
        for x in a.all() {
            m.entry(x.volume.as_str()).or_default().push(x);
        }
        m
    }

    const GOOD: &str = "
- volume: pv-0
  wwid: naa.60014050ea0000000000000000000000
  node: node-a
  accessMode: ReadWriteOnce
  generation: 3
- volume: pv-1
  wwid: 360014051ea0000000000000000000000
  node: node-a
  accessMode: ReadWriteMany
  generation: 1
- volume: pv-1
  wwid: naa.60014051ea0000000000000000000000
  node: node-b
  accessMode: ReadWriteMany
  generation: 2
";

    #[test]
    fn parses_attachments() {
        let a = parse("att.yaml", GOOD).unwrap();
        let m = by_volume(&a);
        assert_eq!(m["pv-0"].len(), 1);
        assert_eq!(m["pv-0"][0].id, AttachmentId("generation-3".into()));
        assert_eq!(m["pv-1"].len(), 2);
        assert_eq!(
            m["pv-1"][0].wwid, m["pv-1"][1].wwid,
            "both WWID forms name one LUN"
        );
        assert_eq!(a.for_node("node-b").count(), 1);
        assert!(parse("att.yaml", "").unwrap().all().is_empty());
    }

    #[test]
    fn errors_name_the_entry_field_value_and_what_is_allowed() {
        let cases = [
            ("- {volume: v, wwid: naa.zz, node: n, accessMode: ReadWriteOnce, generation: 1}", "entry 0: wwid \"naa.zz\""),
            ("- {volume: v, wwid: naa.6001405000000001, node: n, accessMode: RWX!, generation: 1}", "accessMode \"RWX!\" is invalid: use ReadWriteOnce"),
            ("- {volume: '', wwid: naa.6001405000000001, node: n, accessMode: ReadWriteOnce, generation: 1}", "volume \"\" is invalid"),
            ("- {volume: v, wwid: naa.6001405000000001, node: n, accessMode: ReadWriteOnce, generation: -1}", "not a YAML list"),
            ("- {volume: v, wwid: naa.6001405000000001, node: n, accessMode: ReadWriteOnce, generation: 1, extra: 1}", "unknown field `extra`"),
            ("volume: v", "not a YAML list"),
        ];
        for (text, want) in cases {
            let e = parse("att.yaml", text).unwrap_err().to_string();
            assert!(
                e.contains("att.yaml") && e.contains(want),
                "{e}\n  wanted: {want}"
            );
        }
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let e = |v: &str, w: &str, n: &str, m: &str, g: u32| {
            format!("- {{volume: {v}, wwid: naa.600140500000000{w}, node: {n}, accessMode: {m}, generation: {g}}}\n")
        };
        let cases = [
            (
                e("v", "1", "a", "ReadWriteOnce", 1) + &e("v", "1", "b", "ReadWriteOnce", 1),
                "single-node but attached to a and b",
            ),
            (
                e("v", "1", "a", "ReadWriteMany", 1) + &e("v", "1", "a", "ReadWriteMany", 2),
                "listed twice",
            ),
            (
                e("v", "1", "a", "ReadWriteMany", 1) + &e("v", "2", "b", "ReadWriteMany", 2),
                "two WWIDs",
            ),
            (
                e("v", "1", "a", "ReadWriteMany", 1) + &e("v", "1", "b", "ReadWriteOnce", 1),
                "two access modes",
            ),
            (
                e("v", "1", "a", "ReadWriteOnce", 1) + &e("w", "1", "b", "ReadWriteOnce", 1),
                "listed as volume v and as volume w",
            ),
        ];
        for (text, want) in cases {
            let err = parse("f", &text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}\n  wanted: {want}");
        }
        let fine = e("v", "1", "a", "ReadWriteMany", 1) + &e("v", "1", "b", "ReadWriteMany", 1);
        assert_eq!(parse("f", &fine).unwrap().all().len(), 2);
    }
}
