//! TransportIDs (SPC-4 §7.6.4): who an I_T nexus's initiator port is, per protocol.
//!
//! READ FULL STATUS reports one per registration; REGISTER AND MOVE and
//! SPEC_I_PT take them as input. Only iSCSI names are variable-length.

use std::fmt;

use serde::Serialize;

use super::error::{be16, hex, need, ParseError};

const WHAT: &str = "TransportID";

/// A decoded TransportID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "protocol", rename_all = "kebab-case")]
pub enum TransportId {
    /// Fibre Channel: the initiator's N_Port_Name (WWPN).
    FibreChannel {
        /// 8-byte N_Port_Name.
        #[serde(serialize_with = "ser_hex")]
        n_port_name: [u8; 8],
    },
    /// Serial Attached SCSI: the initiator port's SAS address.
    Sas {
        /// 8-byte SAS address.
        #[serde(serialize_with = "ser_hex")]
        sas_address: [u8; 8],
    },
    /// iSCSI: the initiator's iSCSI name and, in the port form, its ISID.
    Iscsi {
        /// iSCSI name, e.g. `iqn.2025-01.test.rig:nodea`.
        name: String,
        /// The ISID (hex, as in `,i,0x…`) when the TransportID names one port.
        isid: Option<String>,
    },
    /// SCSI RDMA Protocol: 16-byte initiator port identifier (24-byte TransportID).
    Srp {
        /// Initiator port identifier.
        #[serde(serialize_with = "ser_hex")]
        port_id: [u8; 16],
    },
    /// IEEE 1394 (SBP): the EUI-64.
    Sbp {
        /// EUI-64.
        #[serde(serialize_with = "ser_hex")]
        eui64: [u8; 8],
    },
    /// Any other protocol, kept raw.
    Other {
        /// PROTOCOL IDENTIFIER code.
        protocol_id: u8,
        /// FORMAT CODE.
        format: u8,
        /// The raw TransportID, hex.
        raw: String,
    },
}

fn ser_hex<S: serde::Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(b))
}

/// Protocol identifiers (SPC-4 table 444) that this module decodes.
pub mod protocol {
    /// Fibre Channel.
    pub const FC: u8 = 0x0;
    /// IEEE 1394.
    pub const SBP: u8 = 0x3;
    /// SCSI RDMA.
    pub const SRP: u8 = 0x4;
    /// iSCSI.
    pub const ISCSI: u8 = 0x5;
    /// SAS.
    pub const SAS: u8 = 0x6;
}

impl TransportId {
    /// Decodes the TransportID at the start of `b`; returns it and its length.
    pub fn parse(b: &[u8]) -> Result<(TransportId, usize), ParseError> {
        need(WHAT, b, 1)?;
        let format = b[0] >> 6;
        let proto = b[0] & 0x0f;
        match (proto, format) {
            (protocol::ISCSI, 0 | 1) => parse_iscsi(b, format),
            (protocol::FC, 0) => {
                fixed::<8>(b, 24, 8).map(|n| (TransportId::FibreChannel { n_port_name: n }, 24))
            }
            (protocol::SAS, 0) => {
                fixed::<8>(b, 24, 4).map(|a| (TransportId::Sas { sas_address: a }, 24))
            }
            (protocol::SBP, 0) => fixed::<8>(b, 24, 8).map(|e| (TransportId::Sbp { eui64: e }, 24)),
            (protocol::SRP, 0) => {
                fixed::<16>(b, 24, 8).map(|p| (TransportId::Srp { port_id: p }, 24))
            }
            _ => {
                // Unknown protocols use the 24-byte minimum length.
                need(WHAT, b, 24)?;
                Ok((
                    TransportId::Other {
                        protocol_id: proto,
                        format,
                        raw: hex(&b[..24]),
                    },
                    24,
                ))
            }
        }
    }

    /// A TransportID kept as its raw bytes (one that did not decode).
    pub fn raw(b: &[u8]) -> TransportId {
        TransportId::Other {
            protocol_id: b.first().map(|x| x & 0x0f).unwrap_or(0),
            format: b.first().map(|x| x >> 6).unwrap_or(0),
            raw: hex(b),
        }
    }

    /// Encodes the TransportID (for REGISTER AND MOVE and SPEC_I_PT lists).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TransportId::FibreChannel { n_port_name } => fixed_encode(protocol::FC, 8, n_port_name),
            TransportId::Sas { sas_address } => fixed_encode(protocol::SAS, 4, sas_address),
            TransportId::Sbp { eui64 } => fixed_encode(protocol::SBP, 8, eui64),
            TransportId::Srp { port_id } => {
                let mut v = vec![0u8; 24];
                v[0] = protocol::SRP;
                v[8..24].copy_from_slice(port_id);
                v
            }
            TransportId::Iscsi { name, isid } => encode_iscsi(name, isid.as_deref()),
            TransportId::Other {
                protocol_id,
                format,
                raw,
            } => {
                let mut v = decode_hex(raw).unwrap_or_default();
                v.resize(24, 0);
                v[0] = (format << 6) | (protocol_id & 0x0f);
                v
            }
        }
    }
}

impl fmt::Display for TransportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportId::FibreChannel { n_port_name } => {
                write!(f, "fc wwpn 0x{}", hex(n_port_name))
            }
            TransportId::Sas { sas_address } => write!(f, "sas 0x{}", hex(sas_address)),
            TransportId::Iscsi {
                name,
                isid: Some(i),
            } => write!(f, "iscsi {name},i,0x{i}"),
            TransportId::Iscsi { name, isid: None } => write!(f, "iscsi {name}"),
            TransportId::Srp { port_id } => write!(f, "srp 0x{}", hex(port_id)),
            TransportId::Sbp { eui64 } => write!(f, "sbp eui-64 0x{}", hex(eui64)),
            TransportId::Other {
                protocol_id, raw, ..
            } => {
                write!(f, "protocol {protocol_id:#x} {raw}")
            }
        }
    }
}

/// Why a TransportID given as text was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid TransportID {0:?}: use sas:<16 hex digits>, fc:<16 hex digits>, or an iSCSI name (iqn.…, eui.…, naa.…) optionally followed by ,i,0x<ISID>")]
pub struct TransportIdParseError(pub String);

impl std::str::FromStr for TransportId {
    type Err = TransportIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TransportIdParseError(s.to_string());
        let eight = |h: &str| -> Result<[u8; 8], TransportIdParseError> {
            let v = decode_hex(strip_0x(h)).ok_or_else(err)?;
            v.try_into().map_err(|_| err())
        };
        let t = s.trim();
        if let Some(h) = t.strip_prefix("sas:") {
            return Ok(TransportId::Sas {
                sas_address: eight(h)?,
            });
        }
        if let Some(h) = t.strip_prefix("fc:") {
            return Ok(TransportId::FibreChannel {
                n_port_name: eight(h)?,
            });
        }
        let lower = t.to_ascii_lowercase();
        if !["iqn.", "eui.", "naa."]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            return Err(err());
        }
        Ok(match t.split_once(",i,") {
            Some((name, isid)) if decode_hex(strip_0x(isid)).is_some_and(|b| b.len() == 6) => {
                TransportId::Iscsi {
                    name: name.to_string(),
                    isid: Some(strip_0x(isid).to_ascii_lowercase()),
                }
            }
            Some(_) => return Err(err()),
            None => TransportId::Iscsi {
                name: t.to_string(),
                isid: None,
            },
        })
    }
}

fn fixed<const N: usize>(b: &[u8], total: usize, at: usize) -> Result<[u8; N], ParseError> {
    need(WHAT, b, total)?;
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    Ok(a)
}

fn fixed_encode(proto: u8, at: usize, id: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 24];
    v[0] = proto;
    v[at..at + id.len()].copy_from_slice(id);
    v
}

fn parse_iscsi(b: &[u8], format: u8) -> Result<(TransportId, usize), ParseError> {
    need(WHAT, b, 4)?;
    let len = be16(b, 2) as usize;
    let body = super::error::announced(WHAT, b, 4, len)?;
    // The name is NUL-terminated and padded to a multiple of four bytes.
    let text_end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
    let text = String::from_utf8_lossy(&body[..text_end]).into_owned();
    let (name, isid) = match format {
        1 => match text.split_once(",i,") {
            Some((n, i)) => (n.to_string(), Some(strip_0x(i).to_ascii_lowercase())),
            None => {
                return Err(ParseError::InvalidField {
                    what: WHAT,
                    field: "iSCSI initiator port name",
                    value: format as u64,
                    why: "format 01b requires the \",i,0x<ISID>\" separator",
                })
            }
        },
        _ => (text, None),
    };
    Ok((TransportId::Iscsi { name, isid }, 4 + len))
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

fn encode_iscsi(name: &str, isid: Option<&str>) -> Vec<u8> {
    let text = match isid {
        Some(i) => format!("{name},i,0x{i}"),
        None => name.to_string(),
    };
    // NUL terminator, then pad to a multiple of 4; the minimum length is 20.
    let mut body = text.into_bytes();
    body.push(0);
    while body.len() % 4 != 0 || body.len() < 20 {
        body.push(0);
    }
    let mut v = vec![
        (u8::from(isid.is_some()) << 6) | protocol::ISCSI,
        0,
        (body.len() >> 8) as u8,
        body.len() as u8,
    ];
    v.extend(body);
    v
}

/// Decodes lower- or upper-case hex without separators.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_port_form_from_lio() {
        // LIO's READ FULL STATUS TransportID for an open-iscsi session.
        let name = b"iqn.2025-01.test.rig:nodea,i,0x00023d000001";
        let mut raw = vec![0x45, 0x00, 0x00, 0x2c];
        raw.extend_from_slice(name);
        raw.resize(4 + 0x2c, 0);
        let (t, len) = TransportId::parse(&raw).unwrap();
        assert_eq!(len, 48);
        assert_eq!(
            t,
            TransportId::Iscsi {
                name: "iqn.2025-01.test.rig:nodea".into(),
                isid: Some("00023d000001".into())
            }
        );
        assert_eq!(
            t.to_string(),
            "iscsi iqn.2025-01.test.rig:nodea,i,0x00023d000001"
        );
        assert_eq!(TransportId::parse(&t.encode()).unwrap().0, t);
    }

    #[test]
    fn sas_and_fc_are_24_bytes() {
        let mut sas = vec![0u8; 24];
        sas[0] = 0x06;
        sas[4..12].copy_from_slice(&[0x50, 0x01, 0x40, 0x5a, 0xaa, 0xaa, 0xaa, 0xaa]);
        let (t, len) = TransportId::parse(&sas).unwrap();
        assert_eq!(len, 24);
        assert_eq!(t.to_string(), "sas 0x5001405aaaaaaaaa");
        assert_eq!(t.encode(), sas);

        let mut fc = vec![0u8; 24];
        fc[8..16].copy_from_slice(&[0x21, 0, 0, 0x24, 0xff, 0x01, 0x02, 0x03]);
        let (t, _) = TransportId::parse(&fc).unwrap();
        assert_eq!(t.to_string(), "fc wwpn 0x21000024ff010203");
        assert_eq!(t.encode(), fc);
    }

    #[test]
    fn srp_transport_id_is_24_bytes() {
        let mut srp = vec![0u8; 24];
        srp[0] = 0x04;
        srp[8..24].copy_from_slice(&[7u8; 16]);
        let (t, len) = TransportId::parse(&srp).unwrap();
        assert_eq!(len, 24);
        assert_eq!(t.encode(), srp);
        assert!(TransportId::parse(&srp[..23]).is_err());
    }

    #[test]
    fn text_forms_parse() {
        assert_eq!(
            "sas:5001405aaaaaaaaa"
                .parse::<TransportId>()
                .unwrap()
                .to_string(),
            "sas 0x5001405aaaaaaaaa"
        );
        assert_eq!(
            "fc:0x21000024ff010203"
                .parse::<TransportId>()
                .unwrap()
                .to_string(),
            "fc wwpn 0x21000024ff010203"
        );
        assert_eq!(
            "iqn.2025-01.test.rig:nodea,i,0x00023D000001"
                .parse::<TransportId>()
                .unwrap(),
            TransportId::Iscsi {
                name: "iqn.2025-01.test.rig:nodea".into(),
                isid: Some("00023d000001".into())
            }
        );
        for bad in ["", "sas:12", "host1", "iqn.x,i,0x12", "fc:zz00000000000000"] {
            assert!(bad.parse::<TransportId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn short_and_overlong_iscsi_are_errors() {
        assert!(TransportId::parse(&[]).is_err());
        assert!(TransportId::parse(&[0x06; 10]).is_err());
        // announces 64 bytes of name, carries 4
        assert!(matches!(
            TransportId::parse(&[0x05, 0, 0, 64, b'i', b'q', b'n', 0]),
            Err(ParseError::Truncated { .. })
        ));
        // port form without ",i,"
        let mut raw = vec![0x45, 0, 0, 8];
        raw.extend_from_slice(b"iqn.x\0\0\0");
        assert!(TransportId::parse(&raw).is_err());
    }
}
