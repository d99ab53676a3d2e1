//! The container image as operators receive it (`make image`, then `make
//! test-image`; `make test` runs both): the image names it by
//! `CSI_FENCER_IMAGE`, and podman runs it the way this machine can (runc,
//! cgroupfs, the shell's ulimits). Ignored by a plain `cargo test`: the
//! image is built by the script, not by cargo, and a test run without it
//! must say so rather than pass.

// Linux only: podman and a real kube-apiserver.
#![cfg(unix)]

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/plane.rs"]
mod plane;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/rest.rs"]
mod rest;

#[allow(dead_code, missing_docs)]
#[path = "../src/testutil.rs"]
mod testutil;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use plane::Plane;
use testutil::TempDir;

/// The image under test.
fn image() -> String {
    std::env::var("CSI_FENCER_IMAGE").unwrap_or_else(|_| {
        panic!("CSI_FENCER_IMAGE is not set: build the image with `make image` and run `make test-image`")
    })
}

/// `podman run` as this machine runs it: the runc runtime (crun refuses
/// hybrid cgroups), cgroupfs, ulimits no higher than the shell's.
fn podman_run_cmd() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs", "run"])
        .args(["--ulimit", "nofile=1024:1024"])
        .args(["--ulimit", "nproc=1024:1024"]);
    c
}

/// `podman run --rm` of the image with `args` before the image and `cmd`
/// after it.
fn podman_run(args: &[&str], cmd: &[&str]) -> Output {
    podman_run_cmd()
        .arg("--rm")
        .args(args)
        .arg(image())
        .args(cmd)
        .output()
        .expect("podman runs (make image installs it)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn host(cmd: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csi-fencer"))
        .args(cmd)
        .output()
        .expect("the host binary runs")
}

#[test]
#[ignore = "needs the image: make test-image"]
fn the_image_prints_its_version_and_the_crd_of_the_host_binary() {
    let v = podman_run(&[], &["--version"]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    assert_eq!(
        text(&v.stdout).trim(),
        format!("csi-fencer {}", env!("CARGO_PKG_VERSION"))
    );
    let inside = podman_run(&[], &["crd"]);
    assert!(inside.status.success(), "{}", text(&inside.stderr));
    let outside = host(&["crd"]);
    assert!(!inside.stdout.is_empty());
    assert_eq!(text(&inside.stdout), text(&outside.stdout));
    // The labels say what it is.
    let labels = Command::new("podman")
        .args(["image", "inspect", "--format", "{{json .Labels}}", &image()])
        .output()
        .expect("podman");
    let l: Value = serde_json::from_slice(&labels.stdout).expect("labels as JSON");
    assert_eq!(
        l["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(l["org.opencontainers.image.title"], "csi-fencer");
}

#[test]
#[ignore = "needs the image: make test-image"]
fn a_privileged_run_finds_the_devices_the_host_finds() {
    let dir = TempDir::new("image-dev");
    let state = dir.path().display().to_string();
    // A LUN that is nowhere: the host and the image must say the same,
    // having looked at the same /sys and /dev.
    let cmd = |state: &str| {
        [
            "check",
            "--json",
            "--wwid",
            "naa.60014050000000000000000000c0ffee",
            "--node",
            "node-x",
            "--cluster-name",
            "image-test",
            "--state-dir",
            state,
        ]
        .map(String::from)
    };
    let outside = host(&cmd(&state).each_ref().map(String::as_str));
    let mount = format!("{state}:/state");
    let inside = podman_run(
        &[
            "--privileged",
            "-v",
            "/dev:/dev",
            "-v",
            "/sys:/sys",
            "-v",
            &mount,
        ],
        &cmd("/state").each_ref().map(String::as_str),
    );
    assert_eq!(inside.status.code(), outside.status.code());
    assert_eq!(inside.status.code(), Some(15), "no device: exit 15");
    let (i, o) = (text(&inside.stdout), text(&outside.stdout));
    assert!(
        o.contains("no device for WWID naa.60014050000000000000000000c0ffee"),
        "{o}"
    );
    assert_eq!(i, o, "the image sees what the host sees");
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the image: make test-image"]
async fn the_daemon_in_the_image_publishes_its_entry_on_a_real_api_server() {
    let plane = Plane::start().await;
    plane.apply(&node("node-img")).await;
    plane
        .apply(&json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-img"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                     "volumeMode": "Block", "persistentVolumeReclaimPolicy": "Retain",
                     "csi": {"driver": "block.csi.example.com",
                             "volumeHandle": "36001405000000000000000000000c0de"}}}))
        .await;
    let dir = TempDir::new("image-daemon");
    write_inputs(&plane, dir.path()).await;
    let name = format!("csi-fencer-test-{}", std::process::id());
    let mount = format!("{}:/cfg", dir.path().display());
    // Not --rm: its log is read below when the test fails.
    let args = ["-d", "--name", &name, "--network", "host", "-v", &mount];
    let started = podman_run_cmd()
        .args(args)
        .arg(image())
        .args([
            "run",
            "--source",
            "kubernetes",
            "--kubeconfig",
            "/cfg/kubeconfig",
        ])
        .args(["--config", "/cfg/config.yaml", "--node-name", "node-img"])
        .args(["--state-dir", "/cfg/state"])
        .output()
        .expect("podman");
    assert!(started.status.success(), "{}", text(&started.stderr));
    let _gone = Removed(name.clone());
    plane
        .apply(
            &json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": "csi-va-img"},
            "spec": {"attacher": "block.csi.example.com", "nodeName": "node-img",
                     "source": {"persistentVolumeName": "pv-img"}}}),
        )
        .await;
    plane.set_attached("csi-va-img", true).await;
    // No SCSI device here: the daemon's acquire fails, and its entry says so.
    let path = "/apis/csi-fencer.io/v1alpha1/volumereservations/pv-img";
    let entry = |v: &Value| -> Option<Value> {
        v["status"]["nodes"]
            .as_array()?
            .iter()
            .find(|e| e["node"] == "node-img")
            .cloned()
    };
    for i in 0..600 {
        if i % 20 == 19 && !running(&name) {
            break;
        }
        if let Some(e) = plane.get(path).await.as_ref().and_then(entry) {
            assert_eq!(e["state"], "Error", "{e}");
            let msg = e["message"].as_str().unwrap_or_default();
            assert!(msg.contains("no device for WWID"), "{e}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = Command::new("podman").args(["logs", &name]).output();
    panic!(
        "no VolumeReservation entry of node-img (the container stopped, or 60 s passed); the daemon said:\n{}",
        logs.map(|o| text(&o.stdout) + &text(&o.stderr))
            .unwrap_or_default()
    );
}

/// The container's inputs in `dir` (mounted at /cfg): a kubeconfig with a
/// token of the chart's ServiceAccount, the CA it trusts, the config.
async fn write_inputs(plane: &Plane, dir: &Path) {
    let (ns, sa) = plane::SERVICE_ACCOUNT;
    let token = plane.token(ns, sa).await;
    std::fs::copy(plane.pki("ca.crt"), dir.join("ca.crt")).expect("ca.crt");
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: local, cluster: {{server: \"{}\", \
         certificate-authority: /cfg/ca.crt}}}}]\nusers: [{{name: sa, user: {{token: \"{token}\"}}}}]\n\
         contexts: [{{name: local, context: {{cluster: local, user: sa}}}}]\ncurrent-context: local\n",
        plane.url
    );
    std::fs::write(dir.join("kubeconfig"), kc).expect("kubeconfig");
    let config = "clusterName: image-test\nkernelLog: \"\"\nmultipathConfig: \"\"\n\
                  deviceWaitSeconds: 1\ndrivers:\n  - name: block.csi.example.com\n    \
                  volumeHandleRegex: '^(?P<wwid>3[0-9a-f]{32})$'\n";
    std::fs::write(dir.join("config.yaml"), config).expect("config.yaml");
}

/// Whether the container is still running.
fn running(name: &str) -> bool {
    Command::new("podman")
        .args(["inspect", "--format", "{{.State.Running}}", name])
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "true")
}

/// Removes the container when the test ends, passed or not.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager=cgroupfs",
                "rm",
                "-f",
                &self.0,
            ])
            .output();
    }
}
