//! Fuzz target: sense data decoding must return, never panic, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = csi_fencer::scsi::Sense::parse(data);
});
