//! The real daemons on a real LIO target (VM rig): node-a and node-b each run
//! `csi-fencer run` with its own file source; the volume moves between them.

// Linux only: SG_IO, sysfs and dm-multipath in the VM rig.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const VOL0: Lun = Lun("VOL0");

struct Daemon {
    node: &'static str,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Daemon {
    fn new(node: &'static str, prefix: &str, port: u16) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/daemon-{node}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("daemon dir");
        let config = format!(
            "clusterTag: '7e57'\nmapUuidPrefix: {prefix}\nmonitorIntervalSeconds: 1\nresyncIntervalSeconds: 2\ndeviceWaitSeconds: 5\nknownNodes: [node-a, node-b]\n"
        );
        std::fs::write(dir.join("config.yaml"), config).expect("config");
        Daemon {
            node,
            dir,
            port,
            child: None,
        }
    }

    /// The monitor and resync intervals, in seconds.
    fn intervals(self, monitor: u32, resync: u32) -> Daemon {
        let path = self.dir.join("config.yaml");
        let c = std::fs::read_to_string(&path).expect("config");
        let c = c
            .replace(
                "monitorIntervalSeconds: 1",
                &format!("monitorIntervalSeconds: {monitor}"),
            )
            .replace(
                "resyncIntervalSeconds: 2",
                &format!("resyncIntervalSeconds: {resync}"),
            );
        std::fs::write(&path, c).expect("config");
        self
    }

    fn attach(&self, node: &str, generation: u32) {
        let text = format!(
            "- {{volume: pv-0, wwid: {}, node: {node}, accessMode: ReadWriteOnce, generation: {generation}}}\n",
            VOL0.wwid()
        );
        // Write then rename: the daemon never reads half a file.
        let tmp = self.dir.join("att.yaml.tmp");
        std::fs::write(&tmp, text).expect("attachments");
        std::fs::rename(&tmp, self.dir.join("att.yaml")).expect("rename");
    }

    fn start(&mut self) {
        self.start_with(&[]);
    }

    fn start_with(&mut self, extra: &[String]) {
        let bin = std::env::var("CSI_FENCER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_csi-fencer").into());
        let log = std::fs::File::create(self.dir.join("log")).expect("log");
        let child = Command::new(bin)
            .args(["run", "--node-name", self.node, "--config"])
            .arg(self.dir.join("config.yaml"))
            .arg("--source")
            .arg(format!("file:{}", self.dir.join("att.yaml").display()))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--grpc-socket")
            .arg(self.dir.join("sock"))
            .args(["--http-endpoint", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// The daemon's view of pv-0 through `csi-fencer ctl get --json`.
    fn phase(&self) -> Option<String> {
        self.phase_of("pv-0")
    }

    fn phase_of(&self, volume: &str) -> Option<String> {
        let sock = self.dir.join("sock").to_string_lossy().into_owned();
        let out = fencer(&["ctl", "--socket", &sock, "get", volume, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["phase"].as_str().map(str::to_string)
    }

    fn wait_phase(&self, want: &str, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.phase().as_deref() == Some(want) {
                return t0.elapsed();
            }
            if t0.elapsed() > within {
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                panic!(
                    "{}: pv-0 not {want} after {within:?} (now {:?}); log:\n{log}",
                    self.node,
                    self.phase()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn metrics(&self) -> String {
        let out = Command::new("wget")
            .args([
                "-q",
                "-O",
                "-",
                &format!("http://127.0.0.1:{}/metrics", self.port),
            ])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sample's value, 0 while the daemon has not exported it yet.
fn sample(metrics: &str, prefix: &str) -> f64 {
    common::testutil::sample(metrics, prefix).unwrap_or(0.0)
}

fn generation() -> u32 {
    let t = csi_fencer::transport::sgio::SgIo;
    csi_fencer::transport::ScsiPath::new(&t, VOL0.sd("B2"), Duration::from_secs(20))
        .read_keys()
        .expect("READ KEYS")
        .generation
}

fn socket_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn two_daemons_move_a_volume_and_the_old_node_stays_fenced() {
    reset_lun(VOL0);
    let (mut a, mut b) = (
        Daemon::new("node-a", "mpath-", 9801),
        Daemon::new("node-b", "mpathb-", 9802),
    );
    a.attach("node-a", 1);
    b.attach("node-a", 1);
    a.start();
    b.start();
    a.wait_phase("held", Duration::from_secs(20));
    assert_eq!(socket_mode(&a.dir.join("sock")), 0o600);
    assert_eq!(sg_read_keys(&VOL0.sd("B1")), vec![key_a().0, key_a().0]);

    // The volume moves to node-b; node-a's source still says "node-a, generation 1".
    b.attach("node-b", 2);
    let took = b.wait_phase("held", Duration::from_secs(20));
    println!("node-b held pv-0 {took:?} after its source changed");
    assert_eq!(sg_read_keys(&VOL0.sd("B1")), vec![key_b().0, key_b().0]);
    a.wait_phase("fenced", Duration::from_secs(10));
    assert_conflict(
        direct_write(&VOL0.dm("A"), 0, 4096, 0xaa),
        "node-a after the move",
    );
    direct_write(&VOL0.dm("B"), 0, 4096, 0xbb).expect("node-b writes");

    // I1: node-a's monitor keeps running and never re-registers.
    let g = generation();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(generation(), g, "no PR OUT from either daemon");
    assert_eq!(sg_read_keys(&VOL0.sd("B1")), vec![key_b().0, key_b().0]);
    assert_eq!(a.phase().as_deref(), Some("fenced"));

    // I4: restarting node-b's daemon changes nothing on the LUN.
    b.stop();
    assert_eq!(generation(), g, "stopping released nothing");
    b.start();
    b.wait_phase("held", Duration::from_secs(20));
    assert_eq!(
        generation(),
        g,
        "the restarted daemon found the LUN as it wants it"
    );

    // Metrics moved, and parse.
    let (ma, mb) = (a.metrics(), b.metrics());
    assert!(sample(&mb, "csi_fencer_scsi_commands_total{command=\"PERSISTENT RESERVE IN / READ FULL STATUS\",result=\"good\"}") >= 1.0, "{mb}");
    assert_eq!(
        sample(&mb, "csi_fencer_volumes{state=\"held\"}"),
        1.0,
        "{mb}"
    );
    assert_eq!(
        sample(&ma, "csi_fencer_volumes{state=\"fenced\"}"),
        1.0,
        "{ma}"
    );
    assert!(
        sample(
            &ma,
            "csi_fencer_operations_total{operation=\"acquire\",outcome=\"held\"}"
        ) >= 1.0,
        "{ma}"
    );
    assert!(
        ma.contains("csi_fencer_attachment_to_held_seconds_bucket")
            || ma.contains("csi_fencer_operation_duration_seconds_bucket"),
        "{ma}"
    );

    // A new attachment for node-a (generation 3): node-b's source detaches it.
    b.attach("node-a", 3);
    a.attach("node-a", 3);
    a.wait_phase("held", Duration::from_secs(20));
    b.wait_phase("released", Duration::from_secs(20));
    assert_eq!(
        sg_read_keys(&VOL0.sd("B1")),
        vec![key_a().0, key_a().0],
        "only node-a's key left"
    );
    let out = fencer(&[
        "ctl",
        "--socket",
        &a.dir.join("sock").to_string_lossy(),
        "list",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pv-0"),
        "ctl list"
    );
}

/// I7 at once: node-b takes the volume while node-a is cut off from the
/// API (its source still says node-a); node-a's next write fails with
/// RESERVATION CONFLICT, the kernel logs it, and node-a's daemon checks that
/// LUN then. Its monitor interval is an hour: only the kernel log can tell it.
#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn the_kernels_conflict_tells_the_daemon_it_is_fenced_at_once() {
    reset_lun(VOL0);
    let (mut a, mut b) = (
        Daemon::new("node-a", "mpath-", 9808).intervals(3600, 3600),
        Daemon::new("node-b", "mpathb-", 9809),
    );
    a.attach("node-a", 1);
    b.attach("node-a", 1);
    a.start();
    b.start();
    a.wait_phase("held", Duration::from_secs(20));
    direct_write(&VOL0.dm("A"), 0, 4096, 0xaa).expect("node-a writes while it holds");
    b.attach("node-b", 2);
    b.wait_phase("held", Duration::from_secs(20));
    assert_eq!(
        a.phase().as_deref(),
        Some("held"),
        "no check of node-a's yet"
    );
    assert_conflict(
        direct_write(&VOL0.dm("A"), 0, 4096, 0xab),
        "node-a after node-b took the volume",
    );
    let took = a.wait_phase("fenced", Duration::from_secs(30));
    let m = a.metrics();
    let (sum, count) = (
        sample(&m, "csi_fencer_kernel_notice_to_fenced_seconds_sum"),
        sample(&m, "csi_fencer_kernel_notice_to_fenced_seconds_count"),
    );
    println!(
        "node-a fenced {took:?} after its write failed; the kernel's conflict record to fenced: {:.1} ms",
        1000.0 * sum / count.max(1.0)
    );
    assert!(
        sample(&m, "csi_fencer_kernel_conflicts_total") >= 1.0,
        "{m}"
    );
    assert_eq!(
        count, 1.0,
        "one fence measured from the kernel's record:\n{m}"
    );
    // The notice made no PR OUT of node-a's: node-b's registrations only.
    assert_eq!(sg_read_keys(&VOL0.sd("B1")), vec![key_b().0, key_b().0]);
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn grpc_acquire_waits_for_the_reservation_and_release_gives_it_up() {
    reset_lun(VOL0);
    let mut a = Daemon::new("node-a", "mpath-", 9803);
    a.attach("node-a", 7);
    a.start();
    let sock = a.dir.join("sock").to_string_lossy().into_owned();
    let t0 = Instant::now();
    let mut out = fencer(&["ctl", "--socket", &sock, "acquire", "pv-0", "--json"]);
    while out.status.code() == Some(15) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100)); // the socket is not up yet
        out = fencer(&["ctl", "--socket", &sock, "acquire", "pv-0", "--json"]);
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["phase"], "held");
    assert_eq!(sg_read_keys(&VOL0.sd("B1")), vec![key_a().0, key_a().0]);
    let out = fencer(&["ctl", "--socket", &sock, "release", "pv-0"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sg_read_keys(&VOL0.sd("B1")).is_empty(), "released");
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn a_hung_path_does_not_delay_another_volume() {
    const VOL1: Lun = Lun("VOL1");
    reset_lun(VOL0);
    reset_lun(VOL1);
    let mut a = Daemon::new("node-a", "mpath-", 9804);
    let cfg = a.dir.join("config.yaml");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str("operationTimeoutSeconds: 3\n");
    std::fs::write(&cfg, text).expect("config");
    let entry = |v: &str, lun: Lun| {
        format!(
            "- {{volume: {v}, wwid: {}, node: node-a, accessMode: ReadWriteOnce, generation: 1}}\n",
            lun.wwid()
        )
    };
    std::fs::write(
        a.dir.join("att.yaml"),
        entry("pv-1", VOL1) + &entry("pv-0", VOL0),
    )
    .expect("attachments");
    // Every command to VOL1's paths blocks, as SG_IO does on a path that stopped answering.
    let hang: Vec<String> = ["A1", "A2"]
        .iter()
        .flat_map(|p| {
            [
                "--test-hang-device".to_string(),
                VOL1.sd(p).to_string_lossy().into_owned(),
            ]
        })
        .collect();
    let t0 = Instant::now();
    a.start_with(&hang);
    let wait = |vol: &str, want: &str, within: Duration| loop {
        if a.phase_of(vol).as_deref() == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{vol} not {want} after {within:?}: {:?}",
            a.phase_of(vol)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let held = wait("pv-0", "held", Duration::from_secs(10));
    // pv-1 is listed first: had the daemon waited for it, pv-1 would already
    // be reported hung when pv-0 is held.
    assert_ne!(
        a.phase_of("pv-1").as_deref(),
        Some("error"),
        "pv-0 was held only after pv-1's operation timed out ({held:?})"
    );
    let timed_out = wait("pv-1", "error", Duration::from_secs(15));
    println!("pv-0 held after {held:?}; pv-1 reported hung after {timed_out:?}");
    assert_eq!(sg_read_keys(&VOL0.sd("B1")), vec![key_a().0, key_a().0]);
    assert!(
        sg_read_keys(&VOL1.sd("B1")).is_empty(),
        "nothing reached the hung LUN"
    );
    let out = fencer(&[
        "ctl",
        "--socket",
        &a.dir.join("sock").to_string_lossy(),
        "get",
        "pv-1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("did not finish"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Fifty moves of one RWO volume between two daemons, half of them with the
/// old node releasing at the same moment (its PREEMPT then meets the release),
/// half with the old node cut off (found fenced by its monitor). The resync is
/// a minute and each move must finish in 10 s: a move that failed once is
/// retried by the reconciler, not by the resync.
#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn fifty_moves_half_with_the_old_node_releasing_at_the_same_moment() {
    reset_lun(VOL0);
    let mut d = [
        Daemon::new("node-a", "mpath-", 9811).intervals(2, 60),
        Daemon::new("node-b", "mpathb-", 9812).intervals(2, 60),
    ];
    let keys = [key_a().0, key_b().0];
    d[0].attach("node-a", 1);
    d[1].attach("node-a", 1);
    d[0].start();
    d[1].start();
    d[0].wait_phase("held", Duration::from_secs(20));
    let mut took = Vec::new();
    for n in 0..50u32 {
        let (old, new) = if n % 2 == 0 { (0, 1) } else { (1, 0) };
        let to = d[new].node;
        let generation = n + 2;
        let together = n % 4 < 2;
        if together {
            d[old].attach(to, generation);
        }
        d[new].attach(to, generation);
        took.push(d[new].wait_phase("held", Duration::from_secs(10)));
        if together {
            d[old].wait_phase("released", Duration::from_secs(10));
        } else {
            d[old].wait_phase("fenced", Duration::from_secs(10));
            d[old].attach(to, generation);
            d[old].wait_phase("released", Duration::from_secs(10));
        }
        assert_eq!(
            sg_read_keys(&VOL0.sd("B1")),
            vec![keys[new], keys[new]],
            "move {n}: only the new holder's key"
        );
        assert_eq!(holder(VOL0), Some(keys[new]), "move {n}");
        assert_conflict(
            direct_write(&VOL0.dm(if old == 0 { "A" } else { "B" }), 0, 4096, 0xaa),
            "the old holder after the move",
        );
    }
    took.sort();
    println!(
        "50 moves: time to held median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}
