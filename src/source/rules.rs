//! Per-driver rules that say which LUN a Kubernetes volume is: the WWID comes
//! from the CSI volume handle or one of its volume attributes, as each driver
//! encodes it differently. Pure: strings in, a [`Wwid`] or a reason out.

use std::collections::BTreeMap;

use regex::Regex;

use crate::fence::policy::PreemptMode;
use crate::scsi::{ReservationType, Wwid};

/// Where a driver keeps the WWID.
#[derive(Debug, Clone)]
pub enum WwidFrom {
    /// A regex over `spec.csi.volumeHandle`.
    VolumeHandle(Regex),
    /// A key of `spec.csi.volumeAttributes`, with an optional regex over its value.
    VolumeAttribute {
        /// The attribute key.
        key: String,
        /// Applied to the value; the whole value when absent.
        regex: Option<Regex>,
    },
}

/// One CSI driver whose volumes csi-fencer fences.
#[derive(Debug, Clone)]
pub struct DriverRule {
    /// The driver name (`spec.attacher` of its VolumeAttachments).
    pub name: String,
    /// How to find the WWID.
    pub wwid: WwidFrom,
    /// Reservation type for all its volumes (default: from the access mode).
    pub reservation_type: Option<ReservationType>,
    /// PREEMPT or PREEMPT AND ABORT for its volumes (default: the global policy).
    pub preempt: Option<PreemptMode>,
}

impl PartialEq for DriverRule {
    fn eq(&self, o: &Self) -> bool {
        let src = |w: &WwidFrom| match w {
            WwidFrom::VolumeHandle(r) => format!("h:{}", r.as_str()),
            WwidFrom::VolumeAttribute { key, regex } => {
                format!("a:{key}:{:?}", regex.as_ref().map(Regex::as_str))
            }
        };
        self.name == o.name
            && src(&self.wwid) == src(&o.wwid)
            && self.reservation_type == o.reservation_type
            && self.preempt == o.preempt
    }
}

impl Eq for DriverRule {}

/// Compiles a rule regex; it must have a `wwid` group or match the WWID whole.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    let re = Regex::new(pattern).map_err(|e| format!("{pattern:?} is not a valid regex: {e}"))?;
    Ok(re)
}

fn apply(re: &Regex, text: &str, what: &str) -> Result<String, String> {
    let caps = re
        .captures(text)
        .ok_or_else(|| format!("{what} {text:?} does not match /{}/", re.as_str()))?;
    let m = caps.name("wwid").or_else(|| caps.get(0));
    m.map(|m| m.as_str().to_string())
        .ok_or_else(|| format!("{what} {text:?}: /{}/ captured nothing", re.as_str()))
}

impl DriverRule {
    /// The WWID of a volume of this driver, from its handle and attributes.
    pub fn wwid(&self, handle: &str, attrs: &BTreeMap<String, String>) -> Result<Wwid, String> {
        let raw = match &self.wwid {
            WwidFrom::VolumeHandle(re) => apply(re, handle, "volumeHandle")?,
            WwidFrom::VolumeAttribute { key, regex } => {
                let v = attrs
                    .get(key)
                    .ok_or_else(|| format!("volumeAttributes has no {key:?}"))?;
                match regex {
                    Some(re) => apply(re, v, &format!("volumeAttributes[{key}]"))?,
                    None => v.clone(),
                }
            }
        };
        raw.parse().map_err(|e| format!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(from: WwidFrom) -> DriverRule {
        DriverRule {
            name: "block.csi.example.com".into(),
            wwid: from,
            reservation_type: None,
            preempt: None,
        }
    }

    #[test]
    fn handle_regex_with_a_named_group_or_whole_match() {
        let r = rule(WwidFrom::VolumeHandle(
            compile("^pool1/(?P<wwid>3[0-9a-f]{32})$").unwrap(),
        ));
        let w = r
            .wwid("pool1/36001405aaaaaaaaaaaaaaaaaaaaaaaaa", &BTreeMap::new())
            .unwrap();
        assert_eq!(w.to_string(), "naa.6001405aaaaaaaaaaaaaaaaaaaaaaaaa");
        let e = r.wwid("pool2/3600", &BTreeMap::new()).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let whole = rule(WwidFrom::VolumeHandle(compile("3[0-9a-f]{16}$").unwrap()));
        assert_eq!(
            whole
                .wwid("lun-36001405000000001", &BTreeMap::new())
                .unwrap()
                .to_string(),
            "naa.6001405000000001"
        );
    }

    #[test]
    fn attribute_with_and_without_regex() {
        let attrs: BTreeMap<String, String> = [("wwn".to_string(), "naa.6001405000000001".into())]
            .into_iter()
            .collect();
        let r = rule(WwidFrom::VolumeAttribute {
            key: "wwn".into(),
            regex: None,
        });
        assert_eq!(
            r.wwid("h", &attrs).unwrap().to_string(),
            "naa.6001405000000001"
        );
        let missing = rule(WwidFrom::VolumeAttribute {
            key: "lun".into(),
            regex: None,
        });
        assert!(missing
            .wwid("h", &attrs)
            .unwrap_err()
            .contains("no \"lun\""));
        let bad: BTreeMap<String, String> =
            [("wwn".to_string(), "zz".into())].into_iter().collect();
        assert!(r.wwid("h", &bad).is_err());
    }
}
