//! Failover benchmark, run in the VM rig (`make bench-vm`); prints figures,
//! asserts nothing about speed.
//!
//! Each round, with the engines' caches warm as in a running daemon: clear
//! VOL0; node-a acquires it from empty; node-b takes it over (REGISTER on both
//! of B's paths, PREEMPT AND ABORT of A); node-b checks it (steady state);
//! node-b releases it. For each operation, side by side in the same run:
//! - the number of SCSI commands it sent;
//! - `engine`: the in-process `Engine` call's wall time;
//! - `raw`: the sum of the wall times of those commands (measured around
//!   each `Transport::execute`), i.e. the floor for a sequential sender.
//!
//! For the failover, the same PR sequence done the way fence_mpath /
//! fence_scsi do it: one `sg_persist` / `sg_vpd` process per command.

// Linux only (the VM rig); elsewhere this example is empty.
#![cfg_attr(not(unix), no_main)]
#![cfg(unix)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use csi_fencer::device::{Resolver, Sysfs};
use csi_fencer::fence::engine::{Authorization, Engine, EngineConfig, Volume, VolumeState};
use csi_fencer::fence::keys::ClusterTag;
use csi_fencer::fence::policy::{AccessMode, Policy};
use csi_fencer::fence::state::{AttachmentId, Record, Stage, StateStore};
use csi_fencer::scsi::Command as ScsiCommand;
use csi_fencer::transport::sgio::SgIo;
use csi_fencer::transport::{Completion, ScsiError, Transport};

/// Each command's start, end and short name, in the order they ended.
type CommandLog = Vec<(Instant, Instant, &'static str)>;

/// SG_IO with a stopwatch around every command: when each began and ended.
struct Timed {
    log: Mutex<CommandLog>,
}

impl Transport for Timed {
    fn execute(
        &self,
        path: &Path,
        cmd: &ScsiCommand,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        let t0 = Instant::now();
        let r = SgIo.execute(path, cmd, timeout);
        if let Ok(mut l) = self.log.lock() {
            l.push((t0, Instant::now(), short(cmd.name)));
        }
        r
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        SgIo.device_number(path)
    }

    fn replays_registrations(&self) -> bool {
        false
    }

    fn at_once<'a, R: Send + 'a>(&self, jobs: Vec<csi_fencer::transport::Job<'a, R>>) -> Vec<R> {
        if std::env::var_os("BENCH_SEQUENTIAL").is_some() {
            return jobs.into_iter().map(|j| j()).collect();
        }
        SgIo.at_once(jobs)
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run this inside the VM rig (make bench-vm)");
        std::process::exit(2)
    })
}

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).output().expect("spawn");
    if !st.status.success() {
        panic!("{cmd} {args:?}: {}", String::from_utf8_lossy(&st.stderr));
    }
}

/// Consumes pending unit attentions (left by the previous round's CLEAR or
/// PREEMPT), untimed, so both contenders start from quiet nexuses.
fn drain(paths: &[&str]) {
    for p in paths {
        for _ in 0..2 {
            let _ = Command::new("sg_turs").arg(p).output();
        }
    }
}

fn reset(sd: &str) {
    drain(&[sd]);
    sh(
        "sg_persist",
        &["--out", "--register-ignore", "--param-sark", "0x5c5c", sd],
    );
    sh(
        "sg_persist",
        &["--out", "--clear", "--param-rk", "0x5c5c", sd],
    );
}

fn engine<T: Transport>(node: &str, prefix: &str, t: T, dir: &str) -> Engine<T> {
    let _ = std::fs::remove_dir_all(dir);
    let tag = ClusterTag::new(0x7e57).expect("tag");
    let state = StateStore::open(Path::new(dir)).expect("state");
    Engine::new(
        EngineConfig::new(node, tag),
        t,
        Resolver::new(Sysfs::default(), prefix),
        state,
    )
}

fn auth(id: &str) -> Authorization {
    Authorization {
        attachment: AttachmentId(id.into()),
        read_at: SystemTime::now(),
        notes: Vec::new(),
        confirm: None,
    }
}

fn stats(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let med = v[v.len() / 2];
    let p95 = v[(v.len() * 95).div_ceil(100).min(v.len()) - 1];
    println!(
        "{name:<34} median {:>8.2} ms   p95 {:>8.2} ms   (n={})",
        ms(med),
        ms(p95),
        v.len()
    );
    med
}

/// The fence_mpath way: one process per command, the same sequence.
fn sg_persist_failover(b: &[String], ka: u64, kb: u64) {
    for p in b {
        sh("sg_vpd", &["--page=di", p]);
    }
    sh("sg_persist", &["--in", "--read-keys", &b[0]]);
    sh("sg_persist", &["--in", "--read-reservation", &b[0]]);
    for p in b {
        sh(
            "sg_persist",
            &[
                "--out",
                "--register-ignore",
                "--param-sark",
                &format!("{kb:#x}"),
                p,
            ],
        );
    }
    sh(
        "sg_persist",
        &[
            "--out",
            "--preempt-abort",
            "--param-rk",
            &format!("{kb:#x}"),
            "--param-sark",
            &format!("{ka:#x}"),
            "--prout-type=5",
            &b[0],
        ],
    );
    sh("sg_persist", &["--in", "--read-keys", &b[0]]);
    sh("sg_persist", &["--in", "--read-reservation", &b[0]]);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "failover".into());
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    match what.as_str() {
        "failover" => failover(runs),
        "bulk" => bulk(runs),
        // Used by bench.sh: an application's write on a node that may be fenced.
        "write" => {
            let dev = std::env::args().nth(2).unwrap_or_default();
            std::process::exit(i32::from(write_direct(Path::new(&dev)).is_err()))
        }
        other => {
            eprintln!("usage: vm_bench failover|bulk [ROUNDS] | write DEVICE (not {other:?})");
            std::process::exit(2)
        }
    }
}

/// One 4 KiB O_DIRECT write at offset 0, as an application would.
fn write_direct(dev: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)?;
    // O_DIRECT wants an aligned buffer: 4 KiB inside an 8 KiB allocation.
    let mut v = vec![0x5au8; 8192];
    let off = v.as_ptr().align_offset(4096);
    f.write_all_at(&v[off..off + 4096], 0)?;
    v.clear();
    Ok(())
}

fn volume(name: &str, wwid: &str) -> Volume {
    Volume {
        name: name.into(),
        wwid: wwid.parse().expect("WWID from the rig"),
        device: None,
        access: AccessMode::SingleNode,
        policy: Policy::default(),
    }
}

fn live(node: &str) -> BTreeSet<String> {
    [node.to_string()].into()
}

/// One timed engine operation: its wall time, the sum of the round trips of
/// the SCSI commands it sent, and how many it sent.
#[derive(Default)]
struct Op {
    wall: Vec<Duration>,
    raw: Vec<Duration>,
    commands: Vec<usize>,
    /// Time outside SCSI: before the first command, between commands (no
    /// command in flight), after the last.
    outside: Vec<[Duration; 3]>,
    /// Every gap with no command in flight, named by the commands around it,
    /// in the order of the last run.
    gaps: Vec<(String, Vec<Duration>)>,
}

impl Op {
    /// Runs `f` with the transport's log cleared, and records it.
    fn time<R>(&mut self, e: &Engine<Timed>, f: impl FnOnce() -> R) -> R {
        if let Ok(mut l) = e.transport_log() {
            l.clear();
        }
        let t0 = Instant::now();
        let r = f();
        let t1 = Instant::now();
        self.wall.push(t1 - t0);
        let log = e.transport_log().map(|l| l.clone()).unwrap_or_default();
        self.commands.push(log.len());
        self.raw.push(log.iter().map(|(b, e, _)| *e - *b).sum());
        for (i, (name, d)) in gaps(t0, t1, &log).into_iter().enumerate() {
            if self.gaps.get(i).is_none_or(|g| g.0 != name) {
                self.gaps.truncate(i);
                self.gaps.push((name, Vec::new()));
            }
            self.gaps[i].1.push(d);
        }
        self.outside.push(outside(t0, t1, log));
        r
    }

    fn row(&self, name: &str) -> (Duration, Duration) {
        let (w, r) = (median(&self.wall), median(&self.raw));
        let mut c = self.commands.clone();
        c.sort();
        println!(
            "{name:<26} {:>8} {:>10.2} {:>10.2} {:>10.2}x   (commands min {} max {})",
            c[c.len() / 2],
            ms(w),
            ms(r),
            w.as_secs_f64() / r.as_secs_f64(),
            c[0],
            c[c.len() - 1],
        );
        let part = |i: usize| {
            ms(median(
                &self.outside.iter().map(|o| o[i]).collect::<Vec<_>>(),
            ))
        };
        println!(
            "{:<26} outside SCSI: before the first {:.2} ms, between {:.2} ms, after the last {:.2} ms",
            "",
            part(0),
            part(1),
            part(2)
        );
        if std::env::var_os("BENCH_GAPS").is_some() {
            for (name, v) in &self.gaps {
                println!(
                    "{:<26}   {:>6.2} ms  {name}  (n={})",
                    "",
                    ms(median(v)),
                    v.len()
                );
            }
        }
        (w, r)
    }
}

/// The gaps with no command in flight, each named by the commands around it.
fn gaps(t0: Instant, t1: Instant, log: &[(Instant, Instant, &str)]) -> Vec<(String, Duration)> {
    let mut log = log.to_vec();
    log.sort();
    let mut out = Vec::new();
    let (mut reach, mut prev) = (t0, "start");
    for (b, e, name) in log {
        out.push((
            format!("{prev} -> {name}"),
            b.saturating_duration_since(reach),
        ));
        if e > reach {
            (reach, prev) = (e, name);
        }
    }
    out.push((
        format!("{prev} -> return"),
        t1.saturating_duration_since(reach),
    ));
    out
}

/// The command's name without the group: "REGISTER", "READ FULL STATUS".
fn short(name: &'static str) -> &'static str {
    name.rsplit(" / ").next().unwrap_or(name)
}

/// Splits the time with no command in flight into before the first, between
/// commands, and after the last.
fn outside(t0: Instant, t1: Instant, mut log: Vec<(Instant, Instant, &str)>) -> [Duration; 3] {
    log.sort();
    let (Some(first), Some(last_end)) = (log.first(), log.iter().map(|(_, e, _)| *e).max()) else {
        return [t1 - t0, Duration::ZERO, Duration::ZERO];
    };
    let mut between = Duration::ZERO;
    let mut reach = first.1;
    for (b, e, _) in &log[1..] {
        if *b > reach {
            between += *b - reach;
        }
        reach = reach.max(*e);
    }
    [first.0 - t0, between, t1 - last_end]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn timed() -> Timed {
    Timed {
        log: Mutex::new(Vec::new()),
    }
}

fn failover(runs: usize) {
    let vol = volume("vol0", &env("RIG_VOL0_WWID"));
    let a_paths = [env("RIG_VOL0_A1_SD"), env("RIG_VOL0_A2_SD")];
    let b_paths = [env("RIG_VOL0_B1_SD"), env("RIG_VOL0_B2_SD")];
    let a = engine("node-a", "mpath-", timed(), "/tmp/bench-a");
    let b = engine("node-b", "mpathb-", timed(), "/tmp/bench-b");
    let (live_a, live_b) = (live("node-a"), live("node-b"));
    let (mut empty, mut fail, mut check, mut release) =
        (Op::default(), Op::default(), Op::default(), Op::default());
    let mut sgp = Vec::new();
    for i in 0..runs {
        reset(&a_paths[0]);
        drain(&[&a_paths[0], &a_paths[1]]);
        empty.time(&a, || {
            a.acquire(&vol, &auth(&format!("a-{i}")), &live_a)
                .expect("A acquires")
        });
        drain(&[&b_paths[0], &b_paths[1]]);
        let out = fail.time(&b, || {
            b.acquire(&vol, &auth(&format!("b-{i}")), &live_b)
                .expect("B acquires")
        });
        assert_eq!(out.preempted.len(), 1, "B preempted A");
        let out = check.time(&b, || b.check(&vol, &live_b).expect("B checks"));
        assert_eq!(out.state, VolumeState::Held, "B holds");
        let out = release.time(&b, || b.release(&vol).expect("B releases"));
        assert_eq!(out.state, VolumeState::NotRegistered, "B released");
        reset(&a_paths[0]);
        a.acquire(&vol, &auth(&format!("a2-{i}")), &live_a)
            .expect("A acquires");
        drain(&[&b_paths[0], &b_paths[1]]);
        let t0 = Instant::now();
        sg_persist_failover(&b_paths, a.key().0, b.key().0);
        sgp.push(t0.elapsed());
    }
    println!("VOL0 (2 paths per node), {runs} rounds; medians; the engine's caches warm (a daemon's steady state)");
    println!(
        "{:<26} {:>8} {:>10} {:>10} {:>11}",
        "operation", "commands", "engine ms", "raw ms", "engine/raw"
    );
    empty.row("acquire from empty (A)");
    let (e, _) = fail.row("failover (B preempts A)");
    check.row("steady check (B)");
    release.row("release (B)");
    let s = stats("failover, sg_persist one process per command", sgp);
    println!(
        "sg_persist / engine failover = {:.1}x (goal >= 10)",
        s.as_secs_f64() / e.as_secs_f64()
    );
    overheads(&vol.wwid);
}

/// How many volumes node-b acquires at once in the bulk benchmark.
const CONCURRENCY: usize = 8;

/// Node-a holds every extra LUN; node-b takes them all over: with the
/// engine, CONCURRENCY at a time, against a sequential sg_persist loop.
fn bulk(runs: usize) {
    let n: usize = env("RIG_EXTRA_COUNT").parse().expect("RIG_EXTRA_COUNT");
    assert!(
        n > 0,
        "bulk needs extra LUNs: RIG_EXTRA_LUNS=64 make bench-vm"
    );
    let var = |i: usize, what: &str| env(&format!("RIG_EXTRA_{i:03}_{what}"));
    let vols: Vec<Volume> = (0..n)
        .map(|i| volume(&format!("x{i:03}"), &var(i, "WWID")))
        .collect();
    let b_paths: Vec<[String; 2]> = (0..n).map(|i| [var(i, "B1_SD"), var(i, "B2_SD")]).collect();
    let a1: Vec<String> = (0..n).map(|i| var(i, "A1_SD")).collect();
    let a = engine("node-a", "mpath-", SgIo, "/tmp/bulk-a");
    let b = engine("node-b", "mpathb-", timed(), "/tmp/bulk-b");
    let (live_a, live_b) = (live("node-a"), live("node-b"));
    let setup = |round: &str| {
        for (i, v) in vols.iter().enumerate() {
            reset(&a1[i]);
            a.acquire(v, &auth(&format!("{round}-{i}")), &live_a)
                .expect("A acquires");
            drain(&[&b_paths[i][0], &b_paths[i][1]]);
        }
    };
    let (mut eng, mut sgp, mut commands) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs {
        setup(&format!("a{r}"));
        let next = std::sync::atomic::AtomicUsize::new(0);
        if let Ok(mut l) = b.transport_log() {
            l.clear();
        }
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..CONCURRENCY {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(v) = vols.get(i) else { break };
                    let out = b
                        .acquire(v, &auth(&format!("b{r}-{i}")), &live_b)
                        .expect("B acquires");
                    assert_eq!(out.preempted.len(), 1, "{} preempted A", v.name);
                });
            }
        });
        eng.push(t0.elapsed());
        commands.push(b.transport_log().map(|l| l.len()).unwrap_or_default());
        if std::env::var_os("BENCH_NO_SG_PERSIST").is_some() {
            continue;
        }
        setup(&format!("c{r}"));
        let t0 = Instant::now();
        for p in &b_paths {
            sg_persist_failover(p, a.key().0, b.key().0);
        }
        sgp.push(t0.elapsed());
    }
    commands.sort();
    println!(
        "bulk failover of {n} LUNs from node-a to node-b, {runs} rounds, {} SCSI commands ({:.1} per LUN)",
        commands[commands.len() / 2],
        commands[commands.len() / 2] as f64 / n as f64
    );
    let e = stats(&format!("engine, {CONCURRENCY} at a time"), eng);
    if sgp.is_empty() {
        return;
    }
    let s = stats("sg_persist loop, sequential", sgp);
    println!(
        "sg_persist / engine  = {:.1}x",
        s.as_secs_f64() / e.as_secs_f64()
    );
}

/// Where the engine's time outside SCSI goes: the sysfs lookup of the LUN
/// and one durable state-store write (an acquire does two).
fn overheads(wwid: &csi_fencer::scsi::Wwid) {
    let r = Resolver::new(Sysfs::default(), "mpathb-");
    let find: Vec<Duration> = (0..50)
        .map(|_| {
            let t0 = Instant::now();
            let _ = r.find(wwid);
            t0.elapsed()
        })
        .collect();
    stats("  of which: sysfs lookup of the LUN", find);
    let st = StateStore::open(Path::new("/tmp/bench-state")).expect("state");
    let writes: Vec<Duration> = (0..50)
        .map(|i| {
            let rec = Record::now("v", Stage::Held, &AttachmentId(format!("{i}")));
            let t0 = Instant::now();
            st.set("naa.x", Some(rec)).expect("write");
            t0.elapsed()
        })
        .collect();
    stats("  of which: one state-store write", writes);
    let reads: Vec<Duration> = (0..50)
        .map(|_| {
            let t0 = Instant::now();
            let _ = st.get("naa.x");
            t0.elapsed()
        })
        .collect();
    stats("  of which: one state-store read", reads);
    let sys = Sysfs::default();
    let paths = r.find(wwid).map(|l| l.paths).unwrap_or_default();
    let per_path: Vec<Duration> = (0..50)
        .map(|_| {
            let t0 = Instant::now();
            for p in &paths {
                let _ = sys.path_info(&p.name);
                let _ = sys.initiator_port(&p.name);
                let _ = sys.scsi_wwid(&p.name);
                let _ = SgIo.device_number(&p.dev);
            }
            t0.elapsed()
        })
        .collect();
    stats("  of which: sysfs of both paths", per_path);
    let a_cmd: ScsiCommand =
        csi_fencer::scsi::prin::command(csi_fencer::scsi::PrInAction::ReadFullStatus, 8192);
    if let Some(p) = paths.first() {
        let rfs: Vec<Duration> = (0..50)
            .map(|_| {
                let t0 = Instant::now();
                let _ = SgIo.execute(&p.dev, &a_cmd, Duration::from_secs(5));
                t0.elapsed()
            })
            .collect();
        stats("  one READ FULL STATUS, raw SG_IO", rfs);
    }
}

trait Log {
    fn transport_log(&self) -> Result<std::sync::MutexGuard<'_, CommandLog>, ()>;
}

impl Log for Engine<Timed> {
    fn transport_log(&self) -> Result<std::sync::MutexGuard<'_, CommandLog>, ()> {
        self.transport().log.lock().map_err(|_| ())
    }
}
