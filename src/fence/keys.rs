//! Reservation keys (docs/design.md §4): 2-byte cluster tag ‖ 48 bits of SHA-256(node name).
//!
//! Stateless: any node computes any other node's key from its name, so a key
//! found on a LUN can be traced back to a node without a registry, and a key
//! never changes when nodes come and go (the fence-agents #289 pitfall).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::scsi::ReservationKey;

/// The 16-bit tag that separates this cluster's keys from other clusters' on a shared SAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClusterTag(u16);

/// Why a cluster tag was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TagError {
    /// Not 1..=4 hex digits.
    #[error("invalid cluster tag {0:?}: expected 1 to 4 hexadecimal digits (0x prefix optional), e.g. 0x1a2b")]
    Syntax(String),
    /// Zero is reserved: with a zero tag a key could be all zero, which means "no key".
    #[error("cluster tag 0 is not allowed: a zero tag could produce the all-zero key, which SPC reserves for \"unregister\"")]
    Zero,
    /// An empty cluster name.
    #[error("cluster name must not be empty")]
    EmptyName,
}

impl ClusterTag {
    /// A tag from its value; zero is refused.
    pub fn new(v: u16) -> Result<Self, TagError> {
        if v == 0 {
            Err(TagError::Zero)
        } else {
            Ok(ClusterTag(v))
        }
    }

    /// The tag derived from a cluster name: the first two bytes of
    /// SHA-256(name), with 0 mapped to 1 so a tag is never zero.
    pub fn from_cluster_name(name: &str) -> Result<Self, TagError> {
        if name.is_empty() {
            return Err(TagError::EmptyName);
        }
        let d = Sha256::digest(name.as_bytes());
        Ok(ClusterTag(u16::from_be_bytes([d[0], d[1]]).max(1)))
    }

    /// The tag value.
    pub fn value(self) -> u16 {
        self.0
    }

    /// True when `key` carries this tag, i.e. belongs to this cluster's key space.
    pub fn owns(self, key: ReservationKey) -> bool {
        (key.0 >> 48) as u16 == self.0
    }

    /// The key of node `node_name` in this cluster.
    pub fn key_for(self, node_name: &str) -> ReservationKey {
        let d = Sha256::digest(node_name.as_bytes());
        let mut low = [0u8; 8];
        low[2..].copy_from_slice(&d[..6]);
        ReservationKey(((self.0 as u64) << 48) | u64::from_be_bytes(low))
    }
}

impl fmt::Display for ClusterTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", self.0)
    }
}

impl FromStr for ClusterTag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let h = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if h.is_empty() || h.len() > 4 {
            return Err(TagError::Syntax(s.to_string()));
        }
        let v = u16::from_str_radix(h, 16).map_err(|_| TagError::Syntax(s.to_string()))?;
        ClusterTag::new(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_tag_then_48_bits_of_sha256() {
        let tag = ClusterTag::new(0x1a2b).unwrap();
        // `echo -n node-a | sha256sum` = 66570ff05a2074043084…
        let k = tag.key_for("node-a");
        assert_eq!(k, ReservationKey(0x1a2b_6657_0ff0_5a20));
        assert!(tag.owns(k));
        assert!(!ClusterTag::new(0x1a2c).unwrap().owns(k));
        assert_ne!(tag.key_for("node-a"), tag.key_for("node-b"));
        assert_eq!(tag.key_for("node-a"), tag.key_for("node-a"));
    }

    #[test]
    fn tag_parsing_and_zero() {
        assert_eq!("0x1a2b".parse::<ClusterTag>().unwrap().value(), 0x1a2b);
        assert_eq!("ff".parse::<ClusterTag>().unwrap().value(), 0xff);
        assert_eq!("0".parse::<ClusterTag>(), Err(TagError::Zero));
        assert!("0x12345".parse::<ClusterTag>().is_err());
        assert!("xyz".parse::<ClusterTag>().is_err());
        assert_eq!(ClusterTag::from_cluster_name(""), Err(TagError::EmptyName));
        let t = ClusterTag::from_cluster_name("prod-eu-1").unwrap();
        let d = Sha256::digest(b"prod-eu-1");
        assert_eq!(t.value(), u16::from_be_bytes([d[0], d[1]]).max(1));
    }
}
