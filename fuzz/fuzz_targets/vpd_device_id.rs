//! Fuzz target: VPD 83h parsing and WWID choice must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ds) = csi_fencer::scsi::inquiry::parse_device_id(data) {
        let _ = csi_fencer::scsi::Wwid::from_designations(&ds);
    }
});
