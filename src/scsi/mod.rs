//! The pure SCSI codec: bytes in, bytes out, no I/O.
//!
//! Builders return a [`Command`] (CDB, data direction, buffer); parsers take
//! the bytes a device returned and never panic, whatever those bytes are.

pub mod cdb;
pub mod error;
pub mod inquiry;
pub mod prin;
pub mod prout;
pub mod sense;
pub mod status;
pub mod transport_id;
pub mod types;

pub use cdb::{Cdb, Command, DataTransfer};
pub use error::ParseError;
pub use inquiry::{Designation, Designator, Wwid};
pub use prin::{Capabilities, FullStatus, ReadKeys, ReadReservation, Registration, Reservation};
pub use prout::{BasicParams, MoveParams, PrOut};
pub use sense::{Sense, SenseKey};
pub use status::ScsiStatus;
pub use transport_id::TransportId;
pub use types::{PrInAction, PrOutAction, ReservationKey, ReservationType, Scope};
