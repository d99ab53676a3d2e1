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
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // tag 1a2b ‖ first 48 bits of sha256("node-a") = 66570ff05a20
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0x1a2b66570ff05a20",
        "{}",
        text(&o)
    );
    let o = run(&["key", "--node", "node-a", "--cluster-tag", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("cluster tag 0 is not allowed"),
        "{}",
        text(&o)
    );
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

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;

/// A LUN this machine does not have: the fencing commands say so and exit
/// 15, on Linux (no dm map, no disk) as on Windows (no disk of that identity).
#[test]
fn a_lun_that_is_not_here_is_named_with_exit_15() {
    let dir = std::env::temp_dir().join(format!("csi-fencer-cli-check-{}", std::process::id()));
    let state = dir.join("state");
    let o = run(&[
        "check",
        "--wwid",
        "naa.6001405000000fff",
        "--node",
        "node-a",
        "--cluster-name",
        "test",
        "--device-wait",
        "0",
        "--state-dir",
        &state.to_string_lossy(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(15), "{}", text(&o));
    assert!(
        text(&o).contains("no device for WWID naa.6001405000000fff after 0 ms"),
        "{}",
        text(&o)
    );
}

/// `run --source file:` on any system: it reads the attachments, serves
/// health and readiness, and counts the acquire that found no LUN.
#[test]
fn the_daemon_runs_from_a_file_and_counts_the_lun_it_cannot_find() {
    let dir = std::env::temp_dir().join(format!("csi-fencer-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "clusterName: test\ndeviceWaitSeconds: 0\nresyncIntervalSeconds: 1\n",
    )
    .unwrap();
    let att = dir.join("att.yaml");
    std::fs::write(&att, "- {volume: pv-1, wwid: naa.6001405000000001, node: node-a, accessMode: ReadWriteOnce, generation: 1}\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(["run", "--node-name", "node-a", "--config"])
        .arg(&config)
        .arg("--source")
        .arg(format!("file:{}", att.display()))
        .args([
            "--http-endpoint",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start csi-fencer run");
    let failed = "csi_fencer_operations_total{operation=\"acquire\",outcome=\"error\"}";
    let counted = testutil::poll(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || {
            testutil::http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)
                && testutil::http_get(port, "/metrics")
                    .and_then(|(_, m)| testutil::sample(&m, failed))
                    .is_some_and(|v| v >= 1.0)
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        counted,
        "the daemon never became ready with a failed acquire counted"
    );
}
