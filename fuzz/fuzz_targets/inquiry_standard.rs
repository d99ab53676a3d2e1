//! Fuzz target: standard INQUIRY parsing must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = csi_fencer::scsi::inquiry::parse_standard(data);
});
