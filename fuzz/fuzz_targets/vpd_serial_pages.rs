//! Fuzz target: VPD 80h / 00h parsing must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = csi_fencer::scsi::inquiry::parse_serial(data);
    let _ = csi_fencer::scsi::inquiry::parse_supported_pages(data);
});
