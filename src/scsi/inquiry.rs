//! INQUIRY (SPC-4 §6.6): standard data and the VPD pages 00h, 80h and 83h.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::cdb::{Cdb, Command, DataTransfer};
use super::error::{announced, be16, hex, need, ParseError};
use super::transport_id::decode_hex;

/// INQUIRY operation code.
pub const OPCODE: u8 = 0x12;

/// Allocation length for INQUIRY: VPD pages of a LUN with many ports fit.
pub const DEFAULT_ALLOCATION: u16 = 1024;

/// VPD page codes this module decodes.
pub mod page {
    /// Supported VPD pages.
    pub const SUPPORTED: u8 = 0x00;
    /// Unit serial number.
    pub const SERIAL: u8 = 0x80;
    /// Device identification.
    pub const DEVICE_ID: u8 = 0x83;
}

/// Standard INQUIRY CDB.
pub fn standard_command(allocation: u16) -> Command {
    let [hi, lo] = allocation.to_be_bytes();
    Command {
        name: "INQUIRY",
        cdb: Cdb::new(&[OPCODE, 0, 0, hi, lo, 0]),
        data: DataTransfer::FromDevice(allocation as usize),
    }
}

/// INQUIRY CDB for a VPD page (EVPD = 1).
pub fn vpd_command(page_code: u8, allocation: u16) -> Command {
    let [hi, lo] = allocation.to_be_bytes();
    Command {
        name: match page_code {
            page::SUPPORTED => "INQUIRY / VPD 00h supported pages",
            page::SERIAL => "INQUIRY / VPD 80h unit serial number",
            page::DEVICE_ID => "INQUIRY / VPD 83h device identification",
            _ => "INQUIRY / VPD page",
        },
        cdb: Cdb::new(&[OPCODE, 0x01, page_code, hi, lo, 0]),
        data: DataTransfer::FromDevice(allocation as usize),
    }
}

/// Standard INQUIRY data, the fields an operator looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandardInquiry {
    /// PERIPHERAL QUALIFIER (0: connected).
    pub peripheral_qualifier: u8,
    /// PERIPHERAL DEVICE TYPE (0: direct access block device).
    pub device_type: u8,
    /// VERSION (6: SPC-4, 7: SPC-5).
    pub version: u8,
    /// TPGS: ALUA support (0 none, 1 implicit, 2 explicit, 3 both).
    pub tpgs: u8,
    /// T10 VENDOR IDENTIFICATION.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION.
    pub product: String,
    /// PRODUCT REVISION LEVEL.
    pub revision: String,
}

/// Parses standard INQUIRY data (at least the 36 bytes every device returns).
pub fn parse_standard(b: &[u8]) -> Result<StandardInquiry, ParseError> {
    need("standard INQUIRY", b, 36)?;
    Ok(StandardInquiry {
        peripheral_qualifier: b[0] >> 5,
        device_type: b[0] & 0x1f,
        version: b[2],
        tpgs: (b[5] >> 4) & 0x03,
        vendor: ascii_field(&b[8..16]),
        product: ascii_field(&b[16..32]),
        revision: ascii_field(&b[32..36]),
    })
}

impl StandardInquiry {
    /// Encodes the 36 bytes of standard INQUIRY data every device returns
    /// (SPC-4 table 142): RESPONSE DATA FORMAT 2, CMDQUE set, text fields
    /// space-padded (and cut) to their widths.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 36];
        b[0] = ((self.peripheral_qualifier & 0x07) << 5) | (self.device_type & 0x1f);
        b[2] = self.version;
        b[3] = 0x02;
        b[4] = 31;
        b[5] = (self.tpgs & 0x03) << 4;
        b[7] = 0x02;
        put_ascii(&mut b[8..16], &self.vendor);
        put_ascii(&mut b[16..32], &self.product);
        put_ascii(&mut b[32..36], &self.revision);
        b
    }
}

fn put_ascii(field: &mut [u8], text: &str) {
    field.fill(b' ');
    for (f, c) in field.iter_mut().zip(text.bytes()) {
        *f = c;
    }
}

fn ascii_field(b: &[u8]) -> String {
    // Fields are space-padded, but some targets NUL-pad them (LIO's serial).
    // Only trailing padding goes: an embedded NUL stays visible (as '.'), so
    // two T10 identifiers that differ after it never read the same (I3).
    let end = b
        .iter()
        .rposition(|&c| c != 0 && c != b' ')
        .map_or(0, |i| i + 1);
    let s: String = b[..end]
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        })
        .collect();
    s.trim().to_string()
}

/// The body of a VPD page after its 4-byte header, checked against `page_code`.
fn vpd_body<'a>(what: &'static str, b: &'a [u8], page_code: u8) -> Result<&'a [u8], ParseError> {
    need(what, b, 4)?;
    if b[1] != page_code {
        return Err(ParseError::InvalidField {
            what,
            field: "PAGE CODE",
            value: b[1] as u64,
            why: "the device answered with another VPD page",
        });
    }
    announced(what, b, 4, be16(b, 2) as usize)
}

/// A VPD page: peripheral byte 0 (connected direct-access device), the page
/// code, the page length and `body`, cut to the 16-bit length the header holds.
fn vpd_page(page_code: u8, mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(u16::MAX as usize);
    let mut b = vec![0, page_code];
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend(body);
    b
}

/// Encodes VPD 00h listing `pages` (in ascending order, as SPC-4 requires).
pub fn encode_supported_pages(pages: &[u8]) -> Vec<u8> {
    vpd_page(page::SUPPORTED, pages.to_vec())
}

/// Encodes VPD 80h carrying `serial` as ASCII.
pub fn encode_serial(serial: &str) -> Vec<u8> {
    vpd_page(page::SERIAL, serial.as_bytes().to_vec())
}

/// Encodes VPD 83h with these designation descriptors, in order.
pub fn encode_device_id(ds: &[Designation]) -> Vec<u8> {
    vpd_page(
        page::DEVICE_ID,
        ds.iter().flat_map(|d| d.encode()).collect(),
    )
}

/// VPD 00h: the page codes the device supports.
pub fn parse_supported_pages(b: &[u8]) -> Result<Vec<u8>, ParseError> {
    Ok(vpd_body("VPD page 00h", b, page::SUPPORTED)?.to_vec())
}

/// VPD 80h: the unit serial number, trimmed.
pub fn parse_serial(b: &[u8]) -> Result<String, ParseError> {
    Ok(ascii_field(vpd_body("VPD page 80h", b, page::SERIAL)?))
}

/// ASSOCIATION of a designator (SPC-4 table 594).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Association {
    /// 0: the addressed logical unit.
    LogicalUnit,
    /// 1: the target port that received the command.
    TargetPort,
    /// 2: the SCSI target device.
    TargetDevice,
    /// 3: reserved.
    Reserved,
}

/// CODE SET of a designator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeSet {
    /// 1: binary.
    Binary,
    /// 2: ASCII.
    Ascii,
    /// 3: UTF-8.
    Utf8,
    /// Anything else.
    Other(u8),
}

/// One designation descriptor of VPD 83h, decoded by designator type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Designator {
    /// 1: T10 vendor ID based (8-byte vendor, then vendor-specific).
    T10VendorId {
        /// T10 vendor identification.
        vendor: String,
        /// The vendor-specific rest.
        id: String,
    },
    /// 2: EUI-64 based (8, 12 or 16 bytes).
    Eui64 {
        /// The identifier, hex.
        id: String,
    },
    /// 3: NAA (8 or 16 bytes); the first nibble is the NAA type.
    Naa {
        /// The identifier, hex.
        id: String,
    },
    /// 4: relative target port identifier.
    RelativeTargetPort {
        /// The port number.
        port: u16,
    },
    /// 5: target port group.
    TargetPortGroup {
        /// The group number.
        group: u16,
    },
    /// 8: SCSI name string (UTF-8, e.g. an iSCSI name).
    ScsiName {
        /// The name.
        name: String,
    },
    /// Any other type, kept raw.
    Other {
        /// DESIGNATOR TYPE.
        designator_type: u8,
        /// The raw designator, hex.
        raw: String,
    },
}

/// A designation descriptor with its association.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Designation {
    /// What the designator names.
    pub association: Association,
    /// How it is encoded.
    pub code_set: CodeSet,
    /// PROTOCOL IDENTIFIER, when PIV is set.
    pub protocol: Option<u8>,
    /// The designator.
    pub designator: Designator,
}

/// VPD 83h: every designation descriptor.
pub fn parse_device_id(b: &[u8]) -> Result<Vec<Designation>, ParseError> {
    const WHAT: &str = "VPD page 83h";
    let mut rest = vpd_body(WHAT, b, page::DEVICE_ID)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        need(WHAT, rest, 4)?;
        let len = rest[3] as usize;
        let d = announced(WHAT, rest, 4, len)?;
        out.push(parse_designation(rest[0], rest[1], d)?);
        rest = &rest[4 + len..];
    }
    Ok(out)
}

fn parse_designation(b0: u8, b1: u8, d: &[u8]) -> Result<Designation, ParseError> {
    const WHAT: &str = "VPD page 83h designator";
    let code_set = match b0 & 0x0f {
        1 => CodeSet::Binary,
        2 => CodeSet::Ascii,
        3 => CodeSet::Utf8,
        c => CodeSet::Other(c),
    };
    let association = match (b1 >> 4) & 0x03 {
        0 => Association::LogicalUnit,
        1 => Association::TargetPort,
        2 => Association::TargetDevice,
        _ => Association::Reserved,
    };
    let dtype = b1 & 0x0f;
    let designator = match dtype {
        1 => {
            need(WHAT, d, 8)?;
            Designator::T10VendorId {
                vendor: ascii_field(&d[..8]),
                id: ascii_field(&d[8..]),
            }
        }
        2 => match d.len() {
            8 | 12 | 16 => Designator::Eui64 { id: hex(d) },
            n => {
                return Err(bad_len(
                    WHAT,
                    "EUI-64 designator length",
                    n,
                    "must be 8, 12 or 16",
                ))
            }
        },
        3 => match d.len() {
            8 | 16 => Designator::Naa { id: hex(d) },
            n => return Err(bad_len(WHAT, "NAA designator length", n, "must be 8 or 16")),
        },
        4 | 5 => {
            need(WHAT, d, 4)?;
            let v = be16(d, 2);
            if dtype == 4 {
                Designator::RelativeTargetPort { port: v }
            } else {
                Designator::TargetPortGroup { group: v }
            }
        }
        8 => {
            let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
            Designator::ScsiName {
                name: String::from_utf8_lossy(&d[..end]).into_owned(),
            }
        }
        t => Designator::Other {
            designator_type: t,
            raw: hex(d),
        },
    };
    Ok(Designation {
        association,
        code_set,
        protocol: (b1 & 0x80 != 0).then_some(b0 >> 4),
        designator,
    })
}

impl Designation {
    /// Encodes this designation descriptor (SPC-4 table 590). A designator
    /// longer than the one-byte DESIGNATOR LENGTH allows is cut, and hex
    /// that does not decode encodes as empty: encoding never panics.
    pub fn encode(&self) -> Vec<u8> {
        let code_set = match self.code_set {
            CodeSet::Binary => 1,
            CodeSet::Ascii => 2,
            CodeSet::Utf8 => 3,
            CodeSet::Other(c) => c & 0x0f,
        };
        let association: u8 = match self.association {
            Association::LogicalUnit => 0,
            Association::TargetPort => 1,
            Association::TargetDevice => 2,
            Association::Reserved => 3,
        };
        let hexbytes = |h: &str| decode_hex(h).unwrap_or_default();
        let (dtype, mut d) = match &self.designator {
            Designator::T10VendorId { vendor, id } => {
                let mut v = vec![0u8; 8];
                put_ascii(&mut v, vendor);
                v.extend_from_slice(id.as_bytes());
                (1, v)
            }
            Designator::Eui64 { id } => (2, hexbytes(id)),
            Designator::Naa { id } => (3, hexbytes(id)),
            Designator::RelativeTargetPort { port } => {
                let [hi, lo] = port.to_be_bytes();
                (4, vec![0, 0, hi, lo])
            }
            Designator::TargetPortGroup { group } => {
                let [hi, lo] = group.to_be_bytes();
                (5, vec![0, 0, hi, lo])
            }
            Designator::ScsiName { name } => {
                // NUL-terminated, padded to a multiple of four (SPC-4 7.8.6.11).
                let mut v = name.as_bytes().to_vec();
                v.truncate(251);
                v.push(0);
                while v.len() % 4 != 0 {
                    v.push(0);
                }
                (8, v)
            }
            Designator::Other {
                designator_type,
                raw,
            } => (designator_type & 0x0f, hexbytes(raw)),
        };
        d.truncate(u8::MAX as usize);
        let (piv, proto) = match self.protocol {
            Some(p) => (0x80, (p & 0x0f) << 4),
            None => (0, 0),
        };
        let mut b = vec![
            proto | code_set,
            piv | (association << 4) | dtype,
            0,
            d.len() as u8,
        ];
        b.extend(d);
        b
    }
}

fn bad_len(what: &'static str, field: &'static str, n: usize, why: &'static str) -> ParseError {
    ParseError::InvalidField {
        what,
        field,
        value: n as u64,
        why,
    }
}

/// A logical unit's world-wide identity: the designator that multipath-tools
/// and /dev/disk/by-id name it by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Wwid {
    /// NAA designator bytes.
    Naa(Vec<u8>),
    /// EUI-64 designator bytes.
    Eui64(Vec<u8>),
    /// T10 vendor ID designator: vendor and the rest, as text.
    T10(String),
    /// SCSI name string.
    ScsiName(String),
}

impl Wwid {
    /// The logical unit's WWID from its VPD 83h designators, preferring (as
    /// udev's scsi_id does) NAA registered extended, registered, extended,
    /// locally assigned, then EUI-64, T10 vendor ID, SCSI name string.
    pub fn from_designations(ds: &[Designation]) -> Option<Wwid> {
        let lu = ds
            .iter()
            .filter(|d| d.association == Association::LogicalUnit);
        let rank = |d: &Designation| -> Option<(u8, Wwid)> {
            match &d.designator {
                Designator::Naa { id } => {
                    let naa_rank = match id.as_bytes().first() {
                        Some(b'6') => 0,
                        Some(b'5') => 1,
                        Some(b'2') => 2,
                        _ => 3,
                    };
                    Some((naa_rank, Wwid::Naa(decode_hex(id)?)))
                }
                Designator::Eui64 { id } => Some((4, Wwid::Eui64(decode_hex(id)?))),
                Designator::T10VendorId { vendor, id } => {
                    Some((5, Wwid::T10(format!("{vendor:<8}{id}"))))
                }
                Designator::ScsiName { name } => Some((6, Wwid::ScsiName(name.clone()))),
                _ => None,
            }
        };
        lu.filter_map(rank).min_by_key(|(r, _)| *r).map(|(_, w)| w)
    }

    /// The form multipath-tools uses in `/etc/multipath/wwids` and dm uuids
    /// (`mpath-<this>`): the designator type digit, then the identifier.
    pub fn multipath_form(&self) -> String {
        match self {
            Wwid::Naa(b) => format!("3{}", hex(b)),
            Wwid::Eui64(b) => format!("2{}", hex(b)),
            Wwid::T10(s) => format!("1{}", s.replace(' ', "_")),
            Wwid::ScsiName(s) => format!("8{s}"),
        }
    }
}

impl fmt::Display for Wwid {
    /// The /dev/disk/by-id `wwn-` style: `naa.<hex>`, `eui.<hex>`, `t10.<text>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wwid::Naa(b) => write!(f, "naa.{}", hex(b)),
            Wwid::Eui64(b) => write!(f, "eui.{}", hex(b)),
            Wwid::T10(s) => write!(f, "t10.{}", s.replace(' ', "_")),
            Wwid::ScsiName(s) => write!(f, "name.{s}"),
        }
    }
}

impl Serialize for Wwid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a WWID given as text was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid WWID {input:?}: {why}; use naa.<hex>, eui.<hex>, t10.<text>, or the multipath form 3<hex> / 2<hex> / 1<text> / 8<name> (also 0x<hex> for NAA)")]
pub struct WwidParseError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for Wwid {
    type Err = WwidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| WwidParseError {
            input: s.to_string(),
            why,
        };
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let binary = |h: &str, lens: &[usize], why| {
            let b = decode_hex(h).ok_or(err("not hexadecimal"))?;
            if lens.contains(&b.len()) {
                Ok(b)
            } else {
                Err(err(why))
            }
        };
        const NAA_LEN: &str = "an NAA designator is 8 or 16 bytes (16 or 32 hex digits)";
        const EUI_LEN: &str = "an EUI-64 designator is 8, 12 or 16 bytes";
        if let Some(h) = lower
            .strip_prefix("naa.")
            .or_else(|| lower.strip_prefix("0x"))
        {
            return binary(h, &[8, 16], NAA_LEN).map(Wwid::Naa);
        }
        if let Some(h) = lower.strip_prefix("eui.") {
            return binary(h, &[8, 12, 16], EUI_LEN).map(Wwid::Eui64);
        }
        if let Some(r) = t.strip_prefix("t10.").filter(|r| !r.is_empty()) {
            return Ok(Wwid::T10(r.replace('_', " ")));
        }
        if let Some(r) = t.strip_prefix("name.").filter(|r| !r.is_empty()) {
            return Ok(Wwid::ScsiName(r.to_string()));
        }
        match (lower.chars().next(), lower.get(1..)) {
            (Some('3'), Some(h)) => binary(h, &[8, 16], NAA_LEN).map(Wwid::Naa),
            (Some('2'), Some(h)) => binary(h, &[8, 12, 16], EUI_LEN).map(Wwid::Eui64),
            (Some('1'), Some(r)) if !r.is_empty() => Ok(Wwid::T10(t[1..].replace('_', " "))),
            (Some('8'), Some(r)) if !r.is_empty() => Ok(Wwid::ScsiName(t[1..].to_string())),
            _ => Err(err("unknown prefix")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_fields_lose_trailing_padding_only() {
        assert_eq!(ascii_field(b"LIO-ORG "), "LIO-ORG");
        assert_eq!(ascii_field(b"serial\0\0\0"), "serial");
        assert_eq!(ascii_field(b"ab\0cd  "), "ab.cd");
        assert_ne!(ascii_field(b"ab\0cd"), ascii_field(b"ab\0ce"));
        assert_eq!(ascii_field(b"\0\0"), "");
    }

    /// VPD 83h as LIO 6.12 answers it over iSCSI (NAA, T10, rtpi, tpg, SCSI name).
    fn lio_vpd83() -> Vec<u8> {
        let mut body = vec![];
        // NAA 6 (registered extended), LU association
        body.extend_from_slice(&[0x01, 0x03, 0x00, 0x10]);
        body.extend_from_slice(&[
            0x60, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde,
            0xf0, 0x12,
        ]);
        // T10 vendor id "LIO-ORG " + uuid
        let t10 = b"LIO-ORG vol0serial";
        body.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
        body.extend_from_slice(t10);
        // relative target port 2, PIV iSCSI, target port association
        body.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0, 0, 0, 2]);
        // target port group 0
        body.extend_from_slice(&[0x51, 0x95, 0x00, 0x04, 0, 0, 0, 0]);
        // SCSI name string of the target port
        let name = b"iqn.2003-01.org.linux-iscsi.rig:lun0,t,0x0002\0\0\0";
        body.extend_from_slice(&[0x53, 0x98, 0x00, name.len() as u8]);
        body.extend_from_slice(name);
        let mut b = vec![0x00, 0x83];
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend(body);
        b
    }

    #[test]
    fn vpd_cdbs() {
        assert_eq!(
            vpd_command(0x83, 0x400).cdb.as_bytes(),
            &[0x12, 0x01, 0x83, 0x04, 0x00, 0x00]
        );
        assert_eq!(standard_command(96).cdb.as_bytes(), &[0x12, 0, 0, 0, 96, 0]);
    }

    #[test]
    fn device_id_of_lio_and_its_wwid() {
        let ds = parse_device_id(&lio_vpd83()).unwrap();
        assert_eq!(ds.len(), 5);
        assert_eq!(ds[2].designator, Designator::RelativeTargetPort { port: 2 });
        assert_eq!(ds[2].association, Association::TargetPort);
        assert_eq!(ds[2].protocol, Some(5));
        assert_eq!(ds[3].designator, Designator::TargetPortGroup { group: 0 });
        assert_eq!(
            ds[4].designator,
            Designator::ScsiName {
                name: "iqn.2003-01.org.linux-iscsi.rig:lun0,t,0x0002".into()
            }
        );
        assert_eq!(
            ds[1].designator,
            Designator::T10VendorId {
                vendor: "LIO-ORG".into(),
                id: "vol0serial".into()
            }
        );
        let w = Wwid::from_designations(&ds).unwrap();
        assert_eq!(w.to_string(), "naa.6001405abcdef0123456789abcdef012");
        assert_eq!(w.multipath_form(), "36001405abcdef0123456789abcdef012");
        assert_eq!(w.to_string().parse::<Wwid>().unwrap(), w);
        assert_eq!(w.multipath_form().parse::<Wwid>().unwrap(), w);
    }

    #[test]
    fn truncated_vpd83_is_an_error() {
        let b = lio_vpd83();
        for cut in [0, 3, 10, b.len() - 1] {
            assert!(parse_device_id(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_page = b.clone();
        wrong_page[1] = 0x80;
        assert!(parse_device_id(&wrong_page).is_err());
        let mut bad_naa = b.clone();
        bad_naa[7] = 0x0f; // NAA length 15
        assert!(parse_device_id(&bad_naa).is_err());
    }

    #[test]
    fn serial_and_supported_pages() {
        assert_eq!(
            parse_serial(&[
                0, 0x80, 0, 12, b' ', b'v', b'o', b'l', b'0', b's', b'e', b'r', b'i', b'a', b'l',
                b' '
            ])
            .unwrap(),
            "vol0serial"
        );
        assert_eq!(
            parse_supported_pages(&[0, 0, 0, 3, 0x00, 0x80, 0x83]).unwrap(),
            vec![0, 0x80, 0x83]
        );
        assert!(parse_serial(&[0, 0x80, 0, 12, b'x']).is_err());
    }

    #[test]
    fn standard_inquiry_of_lio() {
        let mut b = vec![0u8; 36];
        b[0] = 0x00;
        b[2] = 0x06;
        b[5] = 0x10;
        b[8..16].copy_from_slice(b"LIO-ORG ");
        b[16..32].copy_from_slice(b"FILEIO          ");
        b[32..36].copy_from_slice(b"4.0\0");
        let s = parse_standard(&b).unwrap();
        assert_eq!(
            (s.vendor.as_str(), s.product.as_str()),
            ("LIO-ORG", "FILEIO")
        );
        assert_eq!(s.revision, "4.0", "a NUL ends the field");
        assert_eq!((s.version, s.tpgs, s.device_type), (6, 1, 0));
        assert!(parse_standard(&b[..35]).is_err());
    }

    #[test]
    fn wwid_text_forms() {
        assert!("naa.600140512345678".parse::<Wwid>().is_err()); // odd digit count
        assert_eq!(
            "0x5000c500a1b2c3d4".parse::<Wwid>().unwrap(),
            Wwid::Naa(vec![0x50, 0x00, 0xc5, 0x00, 0xa1, 0xb2, 0xc3, 0xd4])
        );
        assert_eq!(
            "eui.0025385b71b00001"
                .parse::<Wwid>()
                .unwrap()
                .multipath_form(),
            "20025385b71b00001"
        );
        assert_eq!(
            "1LIO-ORG_x".parse::<Wwid>().unwrap(),
            Wwid::T10("LIO-ORG x".into())
        );
        for bad in ["", "naa.", "naa.zz", "4abcd", "3abc", "naa.0011"] {
            assert!(bad.parse::<Wwid>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_id_encode_round_trips_lio_byte_for_byte() {
        let b = lio_vpd83();
        let ds = parse_device_id(&b).unwrap();
        assert_eq!(encode_device_id(&ds), b);
    }

    #[test]
    fn device_id_encode_round_trips_every_designator() {
        let ds = vec![
            Designation {
                association: Association::LogicalUnit,
                code_set: CodeSet::Binary,
                protocol: None,
                designator: Designator::Naa {
                    id: "5000c500a1b2c3d4".into(),
                },
            },
            Designation {
                association: Association::LogicalUnit,
                code_set: CodeSet::Binary,
                protocol: None,
                designator: Designator::Eui64 {
                    id: "0025385b71b00001".into(),
                },
            },
            Designation {
                association: Association::LogicalUnit,
                code_set: CodeSet::Ascii,
                protocol: None,
                designator: Designator::T10VendorId {
                    vendor: "CSIFSIM".into(),
                    id: "lun0".into(),
                },
            },
            Designation {
                association: Association::TargetPort,
                code_set: CodeSet::Binary,
                protocol: Some(6),
                designator: Designator::RelativeTargetPort { port: 0x1234 },
            },
            Designation {
                association: Association::TargetPort,
                code_set: CodeSet::Binary,
                protocol: None,
                designator: Designator::TargetPortGroup { group: 7 },
            },
            Designation {
                association: Association::TargetDevice,
                code_set: CodeSet::Utf8,
                protocol: Some(5),
                designator: Designator::ScsiName {
                    name: "iqn.2025-01.test.rig:target".into(),
                },
            },
            Designation {
                association: Association::Reserved,
                code_set: CodeSet::Other(9),
                protocol: None,
                designator: Designator::Other {
                    designator_type: 0xa,
                    raw: "0102".into(),
                },
            },
        ];
        let b = encode_device_id(&ds);
        assert_eq!(parse_device_id(&b).unwrap(), ds);
        assert_eq!(
            Wwid::from_designations(&ds).unwrap().to_string(),
            "naa.5000c500a1b2c3d4"
        );
    }

    #[test]
    fn standard_serial_and_supported_pages_encode_round_trip() {
        let s = StandardInquiry {
            peripheral_qualifier: 0,
            device_type: 0,
            version: 6,
            tpgs: 1,
            vendor: "CSIFSIM".into(),
            product: "STRICT LUN".into(),
            revision: "0001".into(),
        };
        let b = s.encode();
        assert_eq!(b.len(), 36);
        assert_eq!(&b[8..16], b"CSIFSIM ");
        assert_eq!(parse_standard(&b).unwrap(), s);
        assert_eq!(
            parse_serial(&encode_serial("vol0serial")).unwrap(),
            "vol0serial"
        );
        assert_eq!(
            parse_supported_pages(&encode_supported_pages(&[0, 0x80, 0x83])).unwrap(),
            vec![0, 0x80, 0x83]
        );
    }
}
