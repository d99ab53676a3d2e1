//! Sense data (SPC-4 §4.5) in fixed (0x70/0x71) and descriptor (0x72/0x73)
//! formats, decoded to key / ASC / ASCQ with names an operator can read.

use std::fmt;

use serde::{Serialize, Serializer};

use super::error::{need, ParseError};

/// The 4-bit SENSE KEY (SPC-4 table 48). Every code has a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// 0h
    NoSense = 0x0,
    /// 1h
    RecoveredError = 0x1,
    /// 2h
    NotReady = 0x2,
    /// 3h
    MediumError = 0x3,
    /// 4h
    HardwareError = 0x4,
    /// 5h
    IllegalRequest = 0x5,
    /// 6h
    UnitAttention = 0x6,
    /// 7h
    DataProtect = 0x7,
    /// 8h
    BlankCheck = 0x8,
    /// 9h
    VendorSpecific = 0x9,
    /// Ah
    CopyAborted = 0xa,
    /// Bh
    AbortedCommand = 0xb,
    /// Ch (obsolete EQUAL)
    Obsolete = 0xc,
    /// Dh
    VolumeOverflow = 0xd,
    /// Eh
    Miscompare = 0xe,
    /// Fh
    Completed = 0xf,
}

impl SenseKey {
    /// The key for the low four bits of `b`.
    pub fn from_nibble(b: u8) -> SenseKey {
        use SenseKey::*;
        [
            NoSense,
            RecoveredError,
            NotReady,
            MediumError,
            HardwareError,
            IllegalRequest,
            UnitAttention,
            DataProtect,
            BlankCheck,
            VendorSpecific,
            CopyAborted,
            AbortedCommand,
            Obsolete,
            VolumeOverflow,
            Miscompare,
            Completed,
        ][(b & 0x0f) as usize]
    }

    /// The SPC name, upper case as in the standard and in sg3_utils.
    pub fn name(self) -> &'static str {
        use SenseKey::*;
        match self {
            NoSense => "NO SENSE",
            RecoveredError => "RECOVERED ERROR",
            NotReady => "NOT READY",
            MediumError => "MEDIUM ERROR",
            HardwareError => "HARDWARE ERROR",
            IllegalRequest => "ILLEGAL REQUEST",
            UnitAttention => "UNIT ATTENTION",
            DataProtect => "DATA PROTECT",
            BlankCheck => "BLANK CHECK",
            VendorSpecific => "VENDOR SPECIFIC",
            CopyAborted => "COPY ABORTED",
            AbortedCommand => "ABORTED COMMAND",
            Obsolete => "EQUAL (obsolete)",
            VolumeOverflow => "VOLUME OVERFLOW",
            Miscompare => "MISCOMPARE",
            Completed => "COMPLETED",
        }
    }
}

impl Serialize for SenseKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Fixed or descriptor format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SenseFormat {
    /// Response codes 70h/71h.
    Fixed,
    /// Response codes 72h/73h.
    Descriptor,
}

/// Decoded sense data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sense {
    /// Which layout it came in.
    pub format: SenseFormat,
    /// False for deferred errors (71h/73h).
    pub current: bool,
    /// SENSE KEY.
    pub key: SenseKey,
    /// ADDITIONAL SENSE CODE.
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER.
    pub ascq: u8,
    /// The words for ASC/ASCQ, when known.
    pub description: Option<&'static str>,
}

impl Sense {
    /// Decodes sense data as returned in an SG_IO sense buffer.
    pub fn parse(b: &[u8]) -> Result<Sense, ParseError> {
        const WHAT: &str = "sense data";
        need(WHAT, b, 1)?;
        let (format, current) = match b[0] & 0x7f {
            0x70 => (SenseFormat::Fixed, true),
            0x71 => (SenseFormat::Fixed, false),
            0x72 => (SenseFormat::Descriptor, true),
            0x73 => (SenseFormat::Descriptor, false),
            other => {
                return Err(ParseError::InvalidField {
                    what: WHAT,
                    field: "RESPONSE CODE",
                    value: other as u64,
                    why: "expected 70h-73h (fixed or descriptor format)",
                })
            }
        };
        let (key, asc, ascq) = match format {
            SenseFormat::Fixed => {
                need(WHAT, b, 3)?;
                // ASC/ASCQ sit at 12/13 only when the additional length reaches them.
                let add = b.get(7).copied().unwrap_or(0) as usize;
                let asc = if add >= 5 {
                    b.get(12).copied().unwrap_or(0)
                } else {
                    0
                };
                let ascq = if add >= 6 {
                    b.get(13).copied().unwrap_or(0)
                } else {
                    0
                };
                (SenseKey::from_nibble(b[2]), asc, ascq)
            }
            SenseFormat::Descriptor => {
                need(WHAT, b, 4)?;
                (SenseKey::from_nibble(b[1]), b[2], b[3])
            }
        };
        Ok(Sense {
            format,
            current,
            key,
            asc,
            ascq,
            description: describe(asc, ascq),
        })
    }

    /// Encodes fixed-format sense (for tests and scripted transports).
    pub fn fixed(key: SenseKey, asc: u8, ascq: u8) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        b[2] = key as u8;
        b[7] = 10;
        b[12] = asc;
        b[13] = ascq;
        b
    }

    /// Encodes descriptor-format sense with no descriptors.
    pub fn descriptor(key: SenseKey, asc: u8, ascq: u8) -> Vec<u8> {
        vec![0x72, key as u8, asc, ascq, 0, 0, 0, 0]
    }

    /// True for UNIT ATTENTION.
    pub fn is_unit_attention(&self) -> bool {
        self.key == SenseKey::UnitAttention
    }

    /// True for the unit attentions that tell this nexus it lost its
    /// registration or the reservation (2A/03, 2A/04, 2A/05).
    pub fn is_reservation_change(&self) -> bool {
        self.is_unit_attention() && self.asc == 0x2a && matches!(self.ascq, 0x03..=0x05)
    }

    /// True for NOT READY, LOGICAL UNIT NOT READY, OPERATION IN PROGRESS (04/07),
    /// and the ALUA transitioning state (04/0A): both say "try again shortly".
    pub fn is_transient_not_ready(&self) -> bool {
        self.key == SenseKey::NotReady && self.asc == 0x04 && matches!(self.ascq, 0x07 | 0x0a)
    }

    /// True for ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20/00): the
    /// device does not implement the command (no persistent reservations).
    pub fn is_invalid_opcode(&self) -> bool {
        self.key == SenseKey::IllegalRequest && self.asc == 0x20 && self.ascq == 0x00
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24/00): on a PR command, the
    /// way targets refuse a service action (or type) they do not implement.
    pub fn is_invalid_field_in_cdb(&self) -> bool {
        self.key == SenseKey::IllegalRequest && self.asc == 0x24 && self.ascq == 0x00
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key.name())?;
        match self.description {
            Some(d) => write!(f, ": {d} ({:02X}/{:02X})", self.asc, self.ascq)?,
            None => write!(f, ": ASC/ASCQ {:02X}/{:02X}", self.asc, self.ascq)?,
        }
        if !self.current {
            f.write_str(" [deferred]")?;
        }
        Ok(())
    }
}

/// ASC/ASCQ names (SPC-4 Annex D / T10 asc-num.txt), those a PR tool meets.
const ASC_TABLE: &[(u8, u8, &str)] = &[
    (0x00, 0x00, "no additional sense information"),
    (0x04, 0x00, "logical unit not ready, cause not reportable"),
    (0x04, 0x01, "logical unit is in process of becoming ready"),
    (
        0x04,
        0x02,
        "logical unit not ready, initializing command required",
    ),
    (
        0x04,
        0x03,
        "logical unit not ready, manual intervention required",
    ),
    (0x04, 0x07, "logical unit not ready, operation in progress"),
    (
        0x04,
        0x0a,
        "logical unit not accessible, asymmetric access state transition",
    ),
    (
        0x04,
        0x0b,
        "logical unit not accessible, target port in standby state",
    ),
    (
        0x04,
        0x0c,
        "logical unit not accessible, target port in unavailable state",
    ),
    (0x05, 0x00, "logical unit does not respond to selection"),
    (0x08, 0x00, "logical unit communication failure"),
    (0x0c, 0x00, "write error"),
    (0x11, 0x00, "unrecovered read error"),
    (0x1a, 0x00, "parameter list length error"),
    (0x20, 0x00, "invalid command operation code"),
    (0x21, 0x00, "logical block address out of range"),
    (0x24, 0x00, "invalid field in cdb"),
    (0x25, 0x00, "logical unit not supported"),
    (0x26, 0x00, "invalid field in parameter list"),
    (0x26, 0x01, "parameter not supported"),
    (0x26, 0x02, "parameter value invalid"),
    (0x26, 0x04, "invalid release of persistent reservation"),
    (0x27, 0x00, "write protected"),
    (
        0x28,
        0x00,
        "not ready to ready change, medium may have changed",
    ),
    (0x29, 0x00, "power on, reset, or bus device reset occurred"),
    (0x29, 0x01, "power on occurred"),
    (0x29, 0x02, "scsi bus reset occurred"),
    (0x29, 0x03, "bus device reset function occurred"),
    (0x29, 0x04, "device internal reset"),
    (0x29, 0x07, "i_t nexus loss occurred"),
    (0x2a, 0x00, "parameters changed"),
    (0x2a, 0x01, "mode parameters changed"),
    (0x2a, 0x02, "log parameters changed"),
    (0x2a, 0x03, "reservations preempted"),
    (0x2a, 0x04, "reservations released"),
    (0x2a, 0x05, "registrations preempted"),
    (0x2a, 0x06, "asymmetric access state changed"),
    (
        0x2a,
        0x07,
        "implicit asymmetric access state transition failed",
    ),
    (0x2a, 0x09, "capacity data has changed"),
    (0x2c, 0x00, "command sequence error"),
    (0x2c, 0x09, "previous reservation conflict status"),
    (0x2f, 0x00, "commands cleared by another initiator"),
    (0x2f, 0x01, "commands cleared by power loss notification"),
    (0x2f, 0x02, "commands cleared by device server"),
    (0x2f, 0x03, "some commands cleared by queuing layer event"),
    (0x3a, 0x00, "medium not present"),
    (0x3e, 0x00, "logical unit has not self-configured yet"),
    (0x3f, 0x00, "target operating conditions have changed"),
    (0x3f, 0x01, "microcode has been changed"),
    (0x3f, 0x03, "inquiry data has changed"),
    (0x3f, 0x0e, "reported luns data has changed"),
    (0x44, 0x00, "internal target failure"),
    (0x47, 0x00, "scsi parity error"),
    (0x4b, 0x00, "data phase error"),
    (0x55, 0x02, "insufficient reservation resources"),
    (0x55, 0x03, "insufficient resources"),
    (0x55, 0x04, "insufficient registration resources"),
    (0x5d, 0x00, "failure prediction threshold exceeded"),
];

/// The words for an ASC/ASCQ pair, when the table knows them.
pub fn describe(asc: u8, ascq: u8) -> Option<&'static str> {
    ASC_TABLE
        .iter()
        .find(|(a, q, _)| *a == asc && *q == ascq)
        .map(|(_, _, d)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_preempted_fixed_from_lio() {
        // What LIO sent A's path after B's PREEMPT (from the rig log).
        let b = [
            0x70, 0x00, 0x06, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x2a, 0x05, 0, 0, 0, 0,
        ];
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::UnitAttention);
        assert_eq!((s.asc, s.ascq), (0x2a, 0x05));
        assert!(s.is_reservation_change());
        assert_eq!(
            s.to_string(),
            "UNIT ATTENTION: registrations preempted (2A/05)"
        );
    }

    #[test]
    fn descriptor_format_and_deferred() {
        let s = Sense::parse(&[0xf3, 0x05, 0x20, 0x00, 0, 0, 0, 0]).unwrap();
        assert_eq!(s.format, SenseFormat::Descriptor);
        assert!(!s.current);
        assert!(s.is_invalid_opcode());
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST: invalid command operation code (20/00) [deferred]"
        );
    }

    #[test]
    fn unknown_codes_print_as_numbers() {
        let s = Sense::parse(&Sense::fixed(SenseKey::HardwareError, 0x80, 0x12)).unwrap();
        assert_eq!(s.description, None);
        assert_eq!(s.to_string(), "HARDWARE ERROR: ASC/ASCQ 80/12");
    }

    #[test]
    fn short_fixed_sense_has_no_asc() {
        // Additional length 0: ASC/ASCQ are not present.
        let s = Sense::parse(&[0x70, 0, 0x02, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (SenseKey::NotReady, 0, 0));
        assert!(Sense::parse(&[0x70, 0]).is_err());
        assert!(Sense::parse(&[0x72, 5, 0x24]).is_err());
        assert!(Sense::parse(&[0x00; 18]).is_err());
        assert!(Sense::parse(&[]).is_err());
    }

    #[test]
    fn every_condition_in_the_spc_notes_has_a_name() {
        for (a, q) in [
            (0x2a, 0x03),
            (0x2a, 0x04),
            (0x2a, 0x05),
            (0x2a, 0x00),
            (0x2a, 0x06),
            (0x29, 0x00),
            (0x29, 0x07),
            (0x3f, 0x0e),
            (0x2f, 0x00),
            (0x2f, 0x02),
            (0x20, 0x00),
            (0x24, 0x00),
            (0x26, 0x00),
            (0x1a, 0x00),
            (0x55, 0x02),
            (0x55, 0x04),
            (0x04, 0x07),
        ] {
            assert!(describe(a, q).is_some(), "{a:02x}/{q:02x}");
        }
    }

    #[test]
    fn transient_not_ready() {
        let s = Sense::parse(&Sense::descriptor(SenseKey::NotReady, 0x04, 0x07)).unwrap();
        assert!(s.is_transient_not_ready());
        let s = Sense::parse(&Sense::fixed(SenseKey::NotReady, 0x04, 0x03)).unwrap();
        assert!(!s.is_transient_not_ready());
    }
}
