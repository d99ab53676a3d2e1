//! Fuzz target: parsing of operator text (WWID, key, type, TransportID) must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<csi_fencer::scsi::Wwid>();
        let _ = s.parse::<csi_fencer::scsi::ReservationKey>();
        let _ = s.parse::<csi_fencer::scsi::ReservationType>();
        let _ = s.parse::<csi_fencer::scsi::TransportId>();
    }
});
