//! Fuzz target: PR OUT CDB + parameter list decoding must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 10 {
        let _ = csi_fencer::scsi::prout::parse(&data[..10], &data[10..]);
    }
});
