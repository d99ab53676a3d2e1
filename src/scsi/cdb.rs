//! A SCSI command ready to send: CDB bytes, data direction and buffer, and a name.

use std::fmt;

/// Which way data moves, and how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataTransfer {
    /// No data phase (TEST UNIT READY).
    None,
    /// Data from the device into a buffer of this many bytes (the allocation length).
    FromDevice(usize),
    /// Data to the device (a PR OUT parameter list).
    ToDevice(Vec<u8>),
}

/// A command descriptor block of 6 to 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; 16],
    len: u8,
}

impl Cdb {
    /// Copies `bytes` (6..=16 long) into a CDB.
    ///
    /// # Panics
    /// On a length outside 6..=16: CDBs are built by this crate's builders, never
    /// from outside input, so a wrong length is a programming error.
    pub fn new(bytes: &[u8]) -> Self {
        assert!(
            (6..=16).contains(&bytes.len()),
            "CDB length {} outside 6..=16",
            bytes.len()
        );
        let mut b = [0u8; 16];
        b[..bytes.len()].copy_from_slice(bytes);
        Cdb {
            bytes: b,
            len: bytes.len() as u8,
        }
    }

    /// The CDB bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The operation code.
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }
}

impl fmt::Display for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cdb[{self}]")
    }
}

/// One command: what to send and how to name it in errors and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Human name, e.g. "PERSISTENT RESERVE OUT / REGISTER".
    pub name: &'static str,
    /// The CDB.
    pub cdb: Cdb,
    /// The data phase.
    pub data: DataTransfer,
}

/// The PERSISTENT RESERVE OUT opcode: the one command here that changes a
/// device's state.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

impl Command {
    /// True when the command may change device state (PR OUT). Used to refuse
    /// it where only reads are allowed (dry runs).
    pub fn changes_state(&self) -> bool {
        self.cdb.opcode() == PERSISTENT_RESERVE_OUT
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [cdb {}]", self.name, self.cdb)
    }
}

/// TEST UNIT READY (SPC-4 §6.47): no data; used to consume pending unit attentions.
pub fn test_unit_ready() -> Command {
    Command {
        name: "TEST UNIT READY",
        cdb: Cdb::new(&[0x00, 0, 0, 0, 0, 0]),
        data: DataTransfer::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tur_is_six_zero_bytes() {
        let c = test_unit_ready();
        assert_eq!(c.cdb.as_bytes(), &[0u8; 6]);
        assert_eq!(c.data, DataTransfer::None);
        assert!(!c.changes_state());
    }

    #[test]
    fn cdb_displays_as_hex() {
        assert_eq!(
            Cdb::new(&[0x5e, 1, 0, 0, 0, 0, 0, 0x20, 0, 0]).to_string(),
            "5e 01 00 00 00 00 00 20 00 00"
        );
    }
}
