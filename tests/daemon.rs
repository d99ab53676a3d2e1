//! `csi-fencer run` on the host: the plumbing around the engine (source
//! watching, HTTP endpoints, metrics, readiness, stopping). There is no SAN
//! here, so every acquire fails to find its LUN: that failure is what the
//! metrics must show. The fencing itself is tested in the VM rig.

// Linux only: signals, unix sockets and a real kube-apiserver.
#![cfg(unix)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;
use testutil::sample;

struct Daemon {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ATTACHMENTS: &str = "- {volume: pv-1, wwid: naa.6001405000000001, node: node-a, accessMode: ReadWriteOnce, generation: 1}\n";

fn start(tag: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("csi-fencer-daemon-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), "clusterName: test\ndeviceWaitSeconds: 0\nmonitorIntervalSeconds: 1\nresyncIntervalSeconds: 1\n").unwrap();
    std::fs::write(dir.join("att.yaml"), ATTACHMENTS).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(["run", "--node-name", "node-a", "--config"])
        .arg(dir.join("config.yaml"))
        .arg("--source")
        .arg(format!("file:{}", dir.join("att.yaml").display()))
        .args([
            "--http-endpoint",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .arg("--grpc-socket")
        .arg(dir.join("fencer.sock"))
        .spawn()
        .expect("start csi-fencer run");
    Daemon { child, port, dir }
}

/// (status code, body) of GET path, or None while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    testutil::http_get(port, path)
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    let held = testutil::poll(Duration::from_secs(20), Duration::from_millis(100), f);
    assert!(held, "timed out waiting for {what}");
}

fn assert_prometheus_text(text: &str) {
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line}"
        );
        let name = name_labels.split('{').next().unwrap_or("");
        assert!(name.starts_with("csi_fencer_"), "unprefixed metric {name}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name}"
        );
        if let Some(l) = name_labels.strip_prefix(name) {
            assert!(
                l.is_empty() || (l.starts_with('{') && l.ends_with('}')),
                "bad labels in {line}"
            );
        }
    }
}

#[test]
fn serves_health_metrics_and_counts_failed_acquires() {
    let d = start("metrics");
    wait_for("/healthz", || {
        get(d.port, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    wait_for("/readyz", || {
        get(d.port, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let failed = "csi_fencer_operations_total{operation=\"acquire\",outcome=\"error\"}";
    wait_for("a failed acquire", || {
        get(d.port, "/metrics")
            .and_then(|(_, m)| sample(&m, failed))
            .is_some_and(|v| v >= 1.0)
    });
    let (code, m) = get(d.port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert_prometheus_text(&m);
    assert_eq!(
        sample(&m, "csi_fencer_volumes{state=\"error\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "csi_fencer_reconcile_errors_total{kind=\"device_not_found\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    // The failed volume is retried on resync: the counter keeps moving.
    let before = sample(&m, failed).unwrap_or(0.0);
    wait_for("a retry", || {
        get(d.port, "/metrics")
            .and_then(|(_, m)| sample(&m, failed))
            .is_some_and(|v| v > before)
    });
}

#[test]
fn a_broken_source_makes_it_unready_and_sigterm_stops_it_cleanly() {
    let mut d = start("broken");
    wait_for("/readyz", || {
        get(d.port, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    std::fs::write(
        d.dir.join("att.yaml"),
        "- {volume: pv-1, wwid: naa.zz, node: node-a}\n",
    )
    .unwrap();
    wait_for("unready", || {
        get(d.port, "/readyz").is_some_and(|(c, _)| c == 503)
    });
    let (_, m) = get(d.port, "/metrics").expect("metrics");
    assert!(
        sample(&m, "csi_fencer_source_errors_total").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    std::fs::write(d.dir.join("att.yaml"), ATTACHMENTS).unwrap();
    wait_for("ready again", || {
        get(d.port, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = d.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_configuration_is_refused_at_start_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("csi-fencer-daemon-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("c.yaml"),
        "clusterName: x\nmonitorIntervalSeconds: 0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args([
            "run",
            "--node-name",
            "n",
            "--source",
            "file:/nonexistent",
            "--config",
        ])
        .arg(dir.join("c.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("monitorIntervalSeconds: 0 is out of range"),
        "{err}"
    );
}

fn run_once(dir: &std::path::Path, config: &str, extra: &[&str]) -> (Option<i32>, String) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("c.yaml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(["run", "--node-name", "n", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--config")
        .arg(dir.join("c.yaml"))
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_multipathd_reservation_key_is_refused_at_start_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("csi-fencer-daemon-mp-{}", std::process::id()));
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("multipath.conf"),
        "defaults {\n    user_friendly_names yes\n    reservation_key file\n}\n",
    )
    .unwrap();
    let conf = format!(
        "clusterName: x\nmultipathConfig: {}\n",
        etc.join("multipath.conf").display()
    );
    let (code, err) = run_once(&dir, &conf, &["--source", "file:/nonexistent"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("one owner of registrations"), "{err}");
    assert!(
        err.contains("multipath.conf:3: reservation_key file for every map"),
        "{err}"
    );
    // The check can be skipped explicitly; then it gets as far as the source.
    let (code, err) = run_once(
        &dir,
        "clusterName: x\nmultipathConfig: ''\n",
        &[
            "--source",
            "kubernetes",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
    assert!(!err.contains("one owner"), "{err}");
}

fn ctl(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .arg("ctl")
        .arg("--socket")
        .arg(d.dir.join("fencer.sock"))
        .args(args)
        .output()
        .expect("run ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn grpc_api_over_the_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let d = start("grpc");
    wait_for("a status for pv-1", || {
        ctl(&d, &["list", "--json"]).1.contains("pv-1")
    });
    let mode = std::fs::metadata(d.dir.join("fencer.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the socket is for root only");
    let (code, text) = ctl(&d, &["list", "--json"]);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("JSON list");
    assert_eq!(v[0]["volume"], "pv-1");
    assert_eq!(v[0]["phase"], "error", "no SAN on the host: {v}");
    assert!(
        v[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no device for WWID"),
        "{v}"
    );
    assert_eq!(ctl(&d, &["get", "pv-1"]).0, 0);
    let (code, text) = ctl(&d, &["get", "pv-9"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("NotFound"), "{text}");
    // Acquire of an attached volume reconciles now and reports why it failed.
    let (code, text) = ctl(&d, &["acquire", "pv-1", "--timeout-seconds", "10"]);
    assert_eq!(code, 17, "{text}");
    assert!(
        text.contains("FailedPrecondition") && text.contains("no device for WWID"),
        "{text}"
    );
    // Acquire of a volume the source does not attach here is refused.
    let (code, text) = ctl(&d, &["acquire", "pv-9"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not attached to node node-a"), "{text}");
    // Watch starts with the current statuses.
    let mut w = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(["ctl", "--socket"])
        .arg(d.dir.join("fencer.sock"))
        .arg("watch")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(w.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        first.starts_with("pv-1") && first.contains("error"),
        "{first}"
    );
}

#[test]
fn ctl_without_a_daemon_names_the_socket() {
    let out = Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(["ctl", "--socket", "/tmp/csi-fencer-no-such.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/tmp/csi-fencer-no-such.sock")
            && err.contains("csi-fencer run --grpc-socket"),
        "{err}"
    );
}
