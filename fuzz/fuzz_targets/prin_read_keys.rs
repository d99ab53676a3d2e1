//! Fuzz target: READ KEYS parsing must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = csi_fencer::scsi::prin::parse_read_keys(data);
    let _ = csi_fencer::scsi::prin::reissue(data, 512);
});
