//! Value types of SCSI-3 Persistent Reservations (SPC-4 §5.13, §6.16, §6.17).

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// An 8-byte reservation key. Zero means "no key" on the wire (unregister).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReservationKey(pub u64);

impl ReservationKey {
    /// The all-zero key: as a SERVICE ACTION RESERVATION KEY of REGISTER it unregisters.
    pub const NONE: ReservationKey = ReservationKey(0);

    /// True for the all-zero key.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The key as it travels on the wire (big-endian).
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Reads a key from 8 big-endian bytes.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        ReservationKey(u64::from_be_bytes(b))
    }
}

impl fmt::Display for ReservationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

impl Serialize for ReservationKey {
    // JSON numbers lose precision above 2^53 in most consumers: keys travel as hex strings.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a reservation key given as text was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reservation key {input:?}: expected up to 16 hexadecimal digits, 0x prefix optional (like sg_persist --param-rk)")]
pub struct KeyParseError {
    /// The text that was given.
    pub input: String,
}

impl FromStr for ReservationKey {
    type Err = KeyParseError;

    // Hex always, as sg_persist does: "10" is 0x10, never ten.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let err = || KeyParseError {
            input: s.to_string(),
        };
        if digits.is_empty() || digits.len() > 16 {
            return Err(err());
        }
        u64::from_str_radix(digits, 16)
            .map(ReservationKey)
            .map_err(|_| err())
    }
}

/// The persistent reservation types of SPC-4 table 214.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ReservationType {
    /// 1: only the holder may write; anyone may read.
    WriteExclusive = 1,
    /// 3: only the holder may read or write.
    ExclusiveAccess = 3,
    /// 5: every registrant may write; the fencing type for single-node volumes.
    WriteExclusiveRegistrantsOnly = 5,
    /// 6: every registrant may read and write.
    ExclusiveAccessRegistrantsOnly = 6,
    /// 7: every registrant holds the reservation; for multi-node volumes.
    WriteExclusiveAllRegistrants = 7,
    /// 8: like 7, and non-registrants may not read.
    ExclusiveAccessAllRegistrants = 8,
}

impl ReservationType {
    /// Every defined type, in code order.
    pub const ALL: [ReservationType; 6] = [
        ReservationType::WriteExclusive,
        ReservationType::ExclusiveAccess,
        ReservationType::WriteExclusiveRegistrantsOnly,
        ReservationType::ExclusiveAccessRegistrantsOnly,
        ReservationType::WriteExclusiveAllRegistrants,
        ReservationType::ExclusiveAccessAllRegistrants,
    ];

    /// The type code of the CDB and of PR IN data.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type for a 4-bit type code, if SPC-4 defines one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The short name used on the command line (`we-ro` …).
    pub fn short_name(self) -> &'static str {
        match self {
            ReservationType::WriteExclusive => "we",
            ReservationType::ExclusiveAccess => "ea",
            ReservationType::WriteExclusiveRegistrantsOnly => "we-ro",
            ReservationType::ExclusiveAccessRegistrantsOnly => "ea-ro",
            ReservationType::WriteExclusiveAllRegistrants => "we-ar",
            ReservationType::ExclusiveAccessAllRegistrants => "ea-ar",
        }
    }

    /// The SPC-4 name.
    pub fn long_name(self) -> &'static str {
        match self {
            ReservationType::WriteExclusive => "write-exclusive",
            ReservationType::ExclusiveAccess => "exclusive-access",
            ReservationType::WriteExclusiveRegistrantsOnly => "write-exclusive-registrants-only",
            ReservationType::ExclusiveAccessRegistrantsOnly => "exclusive-access-registrants-only",
            ReservationType::WriteExclusiveAllRegistrants => "write-exclusive-all-registrants",
            ReservationType::ExclusiveAccessAllRegistrants => "exclusive-access-all-registrants",
        }
    }

    /// True for the "all registrants" types, whose holder is every registrant.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }
}

impl fmt::Display for ReservationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.long_name(), self.code())
    }
}

impl Serialize for ReservationType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.long_name())
    }
}

/// Why a reservation type given as text was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reservation type {input:?}: use 1, 3, 5, 6, 7 or 8, or a name: we, ea, we-ro, ea-ro, we-ar, ea-ar (or write-exclusive-registrants-only …)")]
pub struct TypeParseError {
    /// The text that was given.
    pub input: String,
}

impl FromStr for ReservationType {
    type Err = TypeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        let found = ReservationType::ALL
            .into_iter()
            .find(|ty| t == ty.short_name() || t == ty.long_name() || t == ty.code().to_string());
        found.ok_or_else(|| TypeParseError {
            input: s.to_string(),
        })
    }
}

/// PERSISTENT RESERVE IN service actions (SPC-4 table 209).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum PrInAction {
    /// 0: list the registered keys.
    ReadKeys = 0,
    /// 1: the current reservation, if any.
    ReadReservation = 1,
    /// 2: what the device server supports.
    ReportCapabilities = 2,
    /// 3: every registration with its I_T nexus.
    ReadFullStatus = 3,
}

impl PrInAction {
    /// The SPC-4 name of the service action.
    pub fn name(self) -> &'static str {
        match self {
            PrInAction::ReadKeys => "READ KEYS",
            PrInAction::ReadReservation => "READ RESERVATION",
            PrInAction::ReportCapabilities => "REPORT CAPABILITIES",
            PrInAction::ReadFullStatus => "READ FULL STATUS",
        }
    }
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 table 225).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum PrOutAction {
    /// 0: register, change or (with SARK 0) remove this nexus's key.
    Register = 0,
    /// 1: take the reservation.
    Reserve = 1,
    /// 2: give up the reservation.
    Release = 2,
    /// 3: remove every registration and the reservation.
    Clear = 3,
    /// 4: remove the registrations of another key (and take its reservation).
    Preempt = 4,
    /// 5: PREEMPT, and abort the preempted nexuses' queued commands.
    PreemptAndAbort = 5,
    /// 6: register without knowing the current key.
    RegisterAndIgnoreExistingKey = 6,
    /// 7: register another nexus and move the reservation to it.
    RegisterAndMove = 7,
    /// 8: take a reservation that the device server lost.
    ReplaceLostReservation = 8,
}

impl PrOutAction {
    /// Every defined action, in code order.
    pub const ALL: [PrOutAction; 9] = [
        PrOutAction::Register,
        PrOutAction::Reserve,
        PrOutAction::Release,
        PrOutAction::Clear,
        PrOutAction::Preempt,
        PrOutAction::PreemptAndAbort,
        PrOutAction::RegisterAndIgnoreExistingKey,
        PrOutAction::RegisterAndMove,
        PrOutAction::ReplaceLostReservation,
    ];

    /// The SPC-4 name of the service action.
    pub fn name(self) -> &'static str {
        match self {
            PrOutAction::Register => "REGISTER",
            PrOutAction::Reserve => "RESERVE",
            PrOutAction::Release => "RELEASE",
            PrOutAction::Clear => "CLEAR",
            PrOutAction::Preempt => "PREEMPT",
            PrOutAction::PreemptAndAbort => "PREEMPT AND ABORT",
            PrOutAction::RegisterAndIgnoreExistingKey => "REGISTER AND IGNORE EXISTING KEY",
            PrOutAction::RegisterAndMove => "REGISTER AND MOVE",
            PrOutAction::ReplaceLostReservation => "REPLACE LOST RESERVATION",
        }
    }

    /// True for the actions whose CDB TYPE field is meaningful.
    pub fn uses_type(self) -> bool {
        matches!(
            self,
            PrOutAction::Reserve
                | PrOutAction::Release
                | PrOutAction::Preempt
                | PrOutAction::PreemptAndAbort
                | PrOutAction::RegisterAndMove
                | PrOutAction::ReplaceLostReservation
        )
    }
}

/// Where a reservation applies. SPC-4 defines only the logical unit scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// 0h: the whole logical unit.
    #[default]
    LogicalUnit,
}

impl Scope {
    /// The 4-bit scope code.
    pub fn code(self) -> u8 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_hex_like_sg_persist() {
        assert_eq!("0xa".parse(), Ok(ReservationKey(0xa)));
        assert_eq!("10".parse(), Ok(ReservationKey(0x10)));
        assert_eq!("0XFFFFFFFFFFFFFFFF".parse(), Ok(ReservationKey(u64::MAX)));
        for bad in ["", "0x", "g", "0x1ffffffffffffffff", "-1", "0x 1"] {
            assert!(bad.parse::<ReservationKey>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_display_is_fixed_width_hex() {
        assert_eq!(ReservationKey(0xab).to_string(), "0x00000000000000ab");
        assert_eq!(
            serde_json::to_string(&ReservationKey(1)).unwrap(),
            "\"0x0000000000000001\""
        );
    }

    #[test]
    fn types_parse_by_number_short_and_long_name() {
        use ReservationType::*;
        for (s, t) in [
            ("5", WriteExclusiveRegistrantsOnly),
            ("we-ro", WriteExclusiveRegistrantsOnly),
            ("WE_RO", WriteExclusiveRegistrantsOnly),
            (
                "write-exclusive-registrants-only",
                WriteExclusiveRegistrantsOnly,
            ),
            ("7", WriteExclusiveAllRegistrants),
            ("ea-ar", ExclusiveAccessAllRegistrants),
            ("1", WriteExclusive),
        ] {
            assert_eq!(s.parse::<ReservationType>(), Ok(t), "{s}");
        }
        for bad in ["0", "2", "4", "9", "we-rx", ""] {
            assert!(bad.parse::<ReservationType>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn type_codes_round_trip_and_gaps_are_undefined() {
        for t in ReservationType::ALL {
            assert_eq!(ReservationType::from_code(t.code()), Some(t));
        }
        for c in [0u8, 2, 4, 9, 15] {
            assert_eq!(ReservationType::from_code(c), None);
        }
    }
}
