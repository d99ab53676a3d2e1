//! SCSI status codes (SAM-5 table 38).

use std::fmt;

use serde::{Serialize, Serializer};

/// The STATUS byte of a completed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScsiStatus {
    /// 00h
    Good,
    /// 02h: sense data tells why.
    CheckCondition,
    /// 04h
    ConditionMet,
    /// 08h
    Busy,
    /// 18h: another nexus holds a reservation this command conflicts with.
    ReservationConflict,
    /// 28h
    TaskSetFull,
    /// 30h
    AcaActive,
    /// 40h
    TaskAborted,
    /// Any other value.
    Other(u8),
}

impl ScsiStatus {
    /// Decodes the full status byte. Never use the kernel's `masked_status`:
    /// it is shifted right by one, and 18h would read as 0Ch.
    pub fn from_byte(b: u8) -> ScsiStatus {
        match b {
            0x00 => ScsiStatus::Good,
            0x02 => ScsiStatus::CheckCondition,
            0x04 => ScsiStatus::ConditionMet,
            0x08 => ScsiStatus::Busy,
            0x18 => ScsiStatus::ReservationConflict,
            0x28 => ScsiStatus::TaskSetFull,
            0x30 => ScsiStatus::AcaActive,
            0x40 => ScsiStatus::TaskAborted,
            x => ScsiStatus::Other(x),
        }
    }

    /// The status byte.
    pub fn byte(self) -> u8 {
        match self {
            ScsiStatus::Good => 0x00,
            ScsiStatus::CheckCondition => 0x02,
            ScsiStatus::ConditionMet => 0x04,
            ScsiStatus::Busy => 0x08,
            ScsiStatus::ReservationConflict => 0x18,
            ScsiStatus::TaskSetFull => 0x28,
            ScsiStatus::AcaActive => 0x30,
            ScsiStatus::TaskAborted => 0x40,
            ScsiStatus::Other(x) => x,
        }
    }
}

impl fmt::Display for ScsiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScsiStatus::Good => f.write_str("GOOD"),
            ScsiStatus::CheckCondition => f.write_str("CHECK CONDITION"),
            ScsiStatus::ConditionMet => f.write_str("CONDITION MET"),
            ScsiStatus::Busy => f.write_str("BUSY"),
            ScsiStatus::ReservationConflict => f.write_str("RESERVATION CONFLICT"),
            ScsiStatus::TaskSetFull => f.write_str("TASK SET FULL"),
            ScsiStatus::AcaActive => f.write_str("ACA ACTIVE"),
            ScsiStatus::TaskAborted => f.write_str("TASK ABORTED"),
            ScsiStatus::Other(x) => write!(f, "status {x:#04x}"),
        }
    }
}

impl Serialize for ScsiStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(ScsiStatus::from_byte(b).byte(), b);
        }
        assert_eq!(ScsiStatus::from_byte(0x18), ScsiStatus::ReservationConflict);
        // masked_status of a conflict is 0x0c: it must not be mistaken for one.
        assert_ne!(ScsiStatus::from_byte(0x0c), ScsiStatus::ReservationConflict);
    }
}
