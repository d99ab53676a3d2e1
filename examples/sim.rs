//! `make sim`: random schedules of the deterministic SAN simulation for
//! SIM_SECONDS (default 60; `make sim` passes 300) on every core, across every capability profile;
//! ends with `sim: N schedules, M violations`. `SIM_SEED=N` replays one
//! schedule and prints its trace; `SIM_FIRST=N` starts at seed N;
//! `SIM_LIST=1` prints each failing seed as it is found;
//! `SIM_SCHEDULES=N` stops after N seeds (a soak of a fixed size), and a
//! progress line goes to stderr every `SIM_PROGRESS` seconds (default 300).
//! `SIM_OS=windows` runs Windows nodes (the IOCTL translation over the
//! double of the class driver and MPIO) instead of Linux ones.

// Linux only (the simulated nodes use sysfs fixtures); elsewhere this example is empty.
#![cfg_attr(not(unix), no_main)]
#![cfg(unix)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use csi_fencer::sim::schedule;
use csi_fencer::sim::world::Os;

fn os() -> Os {
    match std::env::var("SIM_OS").as_deref() {
        Ok("windows") => Os::Windows,
        _ => Os::Linux,
    }
}

/// One schedule's threads hand the baton to each other several hundred
/// times: on one core that is a cheap switch, across cores an interrupt.
/// Threads a worker spawns inherit its CPU.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn main() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = env("SIM_SEED") {
        let r = schedule::run_on(os(), seed, true);
        println!(
            "{}\n--- seed {seed}: {} target, {:?}",
            r.trace, r.profile, r.access
        );
        for v in &r.violations {
            println!("VIOLATION {v}");
        }
        std::process::exit(i32::from(!r.violations.is_empty()));
    }
    let secs = env("SIM_SECONDS").unwrap_or(60);
    let first = env("SIM_FIRST").unwrap_or(1);
    let next = AtomicU64::new(first);
    let last = env("SIM_SCHEDULES").map_or(u64::MAX, |n| first.saturating_add(n));
    let every = Duration::from_secs(env("SIM_PROGRESS").unwrap_or(300).max(1));
    let workers = env("SIM_WORKERS")
        .map(|w| w.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(secs);
    // Per violation kind: how many schedules, and the smallest seed.
    let found: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());
    let per_profile: Mutex<BTreeMap<&str, u64>> = Mutex::new(BTreeMap::new());
    let (done, bad) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        let (done_p, bad_p, next_p) = (&done, &bad, &next);
        s.spawn(move || {
            let mut at = t0 + every;
            while Instant::now() < stop && next_below(next_p, last) {
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() >= at {
                    at += every;
                    eprintln!(
                        "sim: {:.0} s, {} schedules, {} violations so far",
                        t0.elapsed().as_secs_f64(),
                        done_p.load(Ordering::Relaxed),
                        bad_p.load(Ordering::Relaxed)
                    );
                }
            }
        });
        for w in 0..workers {
            let (next, stop, done, bad, found, per_profile) =
                (&next, stop, &done, &bad, &found, &per_profile);
            s.spawn(move || {
                pin_to_cpu(w);
                while Instant::now() < stop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= last {
                        break;
                    }
                    let r = schedule::run_on(os(), seed, false);
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut p) = per_profile.lock() {
                        *p.entry(r.profile).or_default() += 1;
                    }
                    if r.violations.is_empty() {
                        continue;
                    }
                    bad.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = found.lock() {
                        for v in &r.violations {
                            let kind = v.split([':', ' ']).next().unwrap_or("?").to_string();
                            let e = f.entry(kind).or_insert((0, seed));
                            e.0 += 1;
                            e.1 = e.1.min(seed);
                        }
                        if std::env::var_os("SIM_LIST").is_some() {
                            println!("seed {seed}: {}", r.violations.join(" | "));
                        }
                    }
                }
            });
        }
    });
    for (k, (count, seed)) in found.lock().map(|f| f.clone()).unwrap_or_default() {
        println!("{k}: {count} (smallest seed {seed}; replay with SIM_SEED={seed} make sim)");
    }
    let (n, m) = (done.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    println!(
        "profiles: {:?}",
        per_profile.lock().map(|p| p.clone()).unwrap_or_default()
    );
    println!(
        "{workers} workers, {:.0} s, {:.1} schedules/s",
        t0.elapsed().as_secs_f64(),
        n as f64 / t0.elapsed().as_secs_f64()
    );
    println!("sim: {n} schedules, {m} violations");
    std::process::exit(i32::from(m > 0));
}

/// Whether seeds below `last` remain to be handed out.
fn next_below(next: &AtomicU64, last: u64) -> bool {
    next.load(Ordering::Relaxed) < last
}
