//! The command line on the host: help that teaches, keys, and bad input that
//! fails clearly with the documented exit code and sends nothing.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(args)
        .output()
        .expect("run csi-fencer")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn pr_and_inspect_help_teach_with_examples() {
    let h = text(&run(&["pr", "--help"]));
    for want in [
        "Examples:",
        "--all-paths",
        "preempt-abort",
        "register-ignore",
        "CAP_SYS_RAWIO",
        "we-ro",
    ] {
        assert!(h.contains(want), "pr --help lacks {want:?}:\n{h}");
    }
    let h = text(&run(&["inspect", "--help"]));
    assert!(h.contains("Examples:") && h.contains("MISMATCH"), "{h}");
    let h = text(&run(&["--help"]));
    assert!(h.contains("24 reservation conflict"), "{h}");
}

#[test]
fn key_follows_the_design_scheme() {
    let o = run(&["key", "--node", "node-a", "--cluster-tag", "0x1a2b"]);
    assert_eq!(o.status.code(), Some(0));
    // tag 1a2b ‖ first 48 bits of sha256("node-a") = 66570ff05a20
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0x1a2b66570ff05a20"
    );
    let o = run(&["key", "--node", "node-a", "--cluster-tag", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("cluster tag 0 is not allowed"));
    let o = run(&["key", "--node", "node-a"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn bad_keys_and_types_are_usage_errors() {
    let o = run(&["pr", "/dev/null", "reserve", "--key", "0xzz", "--type", "5"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("invalid reservation key \"0xzz\""),
        "{}",
        text(&o)
    );
    let o = run(&["pr", "/dev/null", "reserve", "--key", "1", "--type", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("invalid reservation type \"4\""),
        "{}",
        text(&o)
    );
    // A PR OUT needs an explicit service action.
    let o = run(&["pr", "/dev/null"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn missing_device_fails_with_exit_15_and_json_error() {
    let o = run(&["pr", "/dev/csi-fencer-missing", "read-keys", "--json"]);
    assert_eq!(o.status.code(), Some(15));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["exit_code"], 15);
    assert!(v["error"]
        .as_str()
        .unwrap_or("")
        .contains("/dev/csi-fencer-missing: no such device"));
}

#[test]
#[cfg(unix)] // a character device that is not SCSI
fn non_scsi_device_is_named_as_such() {
    let o = run(&["pr", "/dev/null", "read-keys"]);
    assert_eq!(o.status.code(), Some(15));
    assert!(
        text(&o).contains("/dev/null: not a SCSI device"),
        "{}",
        text(&o)
    );
}
