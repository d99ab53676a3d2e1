//! Support for the in-guest tests (`tests/vm_*.rs`): the rig's topology from
//! the `RIG_*` environment (written by tests/vm/guest-init.sh), the project's
//! binary, sg3_utils as an independent cross-check, and O_DIRECT I/O.
//!
//! These tests only run inside the VM rig (`make test-vm`); on the host they
//! are `#[ignore]`d, and a missing variable fails the test loudly.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Command, Output};

use csi_fencer::fence::keys::ClusterTag;
use csi_fencer::scsi::ReservationKey;

/// The polling and metric helpers the unit tests use too.
#[path = "../../src/testutil.rs"]
pub mod testutil;

/// A `RIG_*` variable; panics with its name when the rig did not set it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test runs only inside the VM rig (make test-vm)")
    })
}

/// The cluster tag the tests use for node keys.
pub fn tag() -> ClusterTag {
    ClusterTag::new(0x7e57).expect("non-zero tag")
}

/// Node A's key.
pub fn key_a() -> ReservationKey {
    tag().key_for("node-a")
}

/// Node B's key.
pub fn key_b() -> ReservationKey {
    tag().key_for("node-b")
}

/// A LUN of the rig: VOL0, VOL1, SLOW or NOPR.
#[derive(Clone, Copy, Debug)]
pub struct Lun(pub &'static str);

/// The four paths: node A's two and node B's two.
pub const PATHS: [&str; 4] = ["A1", "A2", "B1", "B2"];

impl Lun {
    /// The sd device of a path (`A1` …).
    pub fn sd(self, path: &str) -> PathBuf {
        PathBuf::from(env(&format!("RIG_{}_{path}_SD", self.0)))
    }

    /// The sg device of a path.
    pub fn sg(self, path: &str) -> PathBuf {
        PathBuf::from(env(&format!("RIG_{}_{path}_SG", self.0)))
    }

    /// Node `A` or `B`'s dm-multipath map over its two paths.
    pub fn dm(self, node: &str) -> PathBuf {
        PathBuf::from(env(&format!("RIG_{}_{node}_DM", self.0)))
    }

    /// The WWID as `naa.<hex>`.
    pub fn wwid(self) -> String {
        env(&format!("RIG_{}_WWID", self.0))
    }

    /// Every path's sd device.
    pub fn all_sd(self) -> Vec<PathBuf> {
        PATHS.iter().map(|p| self.sd(p)).collect()
    }
}

/// Runs the project's `csi-fencer` binary.
pub fn fencer(args: &[&str]) -> Output {
    let bin = std::env::var("CSI_FENCER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_csi-fencer").to_string());
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

/// Runs `csi-fencer ARGS --json`; returns the exit code and the parsed JSON.
pub fn fencer_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = fencer(&a);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "csi-fencer {a:?} printed no JSON ({e}):\nstdout: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Like [`fencer_json`], and asserts exit code 0.
pub fn fencer_ok(args: &[&str]) -> serde_json::Value {
    let (code, v) = fencer_json(args);
    assert_eq!(code, 0, "csi-fencer {args:?} failed: {v:#}");
    v
}

/// Runs sg_persist; returns (exit code, stdout + stderr). A PR IN that
/// meets a pending UNIT ATTENTION (exit 6; sg_persist does not retry) is
/// sent again: the attention is consumed by the failed attempt.
pub fn sg_persist(args: &[&str]) -> (i32, String) {
    let once = || {
        let out = Command::new("sg_persist")
            .args(args)
            .output()
            .expect("sg_persist is in the rig's initramfs");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), s)
    };
    let mut r = once();
    for _ in 0..3 {
        if r.0 != 6 || !args.contains(&"--in") {
            break;
        }
        r = once();
    }
    r
}

/// The keys `sg_persist --in --read-keys DEV` lists, parsed from its text.
pub fn sg_read_keys(dev: &std::path::Path) -> Vec<u64> {
    let d = dev.to_string_lossy();
    let (code, text) = sg_persist(&["--in", "--read-keys", &d]);
    assert_eq!(code, 0, "sg_persist --read-keys {d}: {text}");
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad key line {h:?}")))
        .collect()
}

/// Runs sg_turs three times on a path: consumes pending unit attentions.
pub fn drain_unit_attentions(dev: &std::path::Path) {
    for _ in 0..3 {
        let _ = Command::new("sg_turs").arg(dev).output();
    }
}

/// Removes every registration and reservation of the LUN (with sg_persist,
/// independent of the code under test), then drains unit attentions on all paths.
pub fn reset_lun(lun: Lun) {
    let scratch = "0x5c5c5c5c";
    let d = lun.sd("A1").to_string_lossy().into_owned();
    drain_unit_attentions(&lun.sg("A1"));
    let (c, t) = sg_persist(&["--out", "--register-ignore", "--param-sark", scratch, &d]);
    assert_eq!(c, 0, "reset: register-ignore on {d}: {t}");
    let (c, t) = sg_persist(&["--out", "--clear", "--param-rk", scratch, &d]);
    assert_eq!(c, 0, "reset: clear on {d}: {t}");
    for p in PATHS {
        drain_unit_attentions(&lun.sg(p));
    }
    assert!(
        sg_read_keys(&lun.sd("B1")).is_empty(),
        "reset left keys on {}",
        lun.0
    );
}

/// A 4 KiB-aligned buffer for O_DIRECT.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    /// `len` bytes of `fill`, aligned to 4096.
    pub fn new(len: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: layout has non-zero size (callers pass len > 0).
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: ptr points to len writable bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        Aligned { ptr, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

// SAFETY: Aligned owns its allocation exclusively.
unsafe impl Send for Aligned {}

/// One O_DIRECT write of `len` bytes of `fill` at `offset`.
pub fn direct_write(dev: &std::path::Path, offset: u64, len: usize, fill: u8) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)?;
    let buf = Aligned::new(len, fill);
    f.write_all_at(buf.as_slice(), offset)
}

/// One O_DIRECT read of `len` bytes at `offset`.
pub fn direct_read(dev: &std::path::Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)?;
    let mut buf = Aligned::new(len, 0);
    f.read_exact_at(buf.as_mut_slice(), offset)?;
    Ok(buf.as_slice().to_vec())
}

/// EBADE, which Linux returns for a RESERVATION CONFLICT on block I/O.
pub const EBADE: i32 = nix::libc::EBADE;

/// Asserts that a write failed the way a fenced node's write fails.
pub fn assert_conflict(r: io::Result<()>, what: &str) {
    match r {
        Ok(()) => panic!("{what}: the write succeeded, but this node is fenced"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(EBADE),
            "{what}: expected EBADE (RESERVATION CONFLICT), got {e}"
        ),
    }
}

/// A JSON string field, or a clear panic.
pub fn s<'a>(v: &'a serde_json::Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("no string at {ptr} in {v:#}"))
}

/// Reads the keys through the library on `dev`.
pub fn keys_on(dev: &std::path::Path) -> Vec<ReservationKey> {
    let t = csi_fencer::transport::sgio::SgIo;
    csi_fencer::transport::ScsiPath::new(&t, dev, std::time::Duration::from_secs(20))
        .read_keys()
        .unwrap_or_else(|e| panic!("read keys on {}: {e}", dev.display()))
        .keys
}

/// The reservation holder's key, as sg_persist reads it on B2 (an independent cross-check).
pub fn holder(lun: Lun) -> Option<u64> {
    let (code, text) = sg_persist(&[
        "--in",
        "--read-reservation",
        lun.sd("B2").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{text}");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Key=0x"))
        .map(|h| u64::from_str_radix(h.trim(), 16).expect("hex key"))
}
