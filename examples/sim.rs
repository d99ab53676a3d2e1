//! `make sim`: random schedules of the deterministic SAN simulation for
//! SIM_SECONDS (default 60), across every capability profile; ends with
//! `sim: N schedules, M violations`. `SIM_SEED=N` replays one schedule and
//! prints its trace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use csi_fencer::sim::schedule;

fn main() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = env("SIM_SEED") {
        let r = schedule::run(seed);
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
    let stop = Instant::now() + Duration::from_secs(secs);
    let (mut n, mut bad) = (0u64, 0u64);
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut per_profile: BTreeMap<&str, u64> = BTreeMap::new();
    while Instant::now() < stop {
        let seed = first + n;
        let r = schedule::run(seed);
        n += 1;
        *per_profile.entry(r.profile).or_default() += 1;
        if !r.violations.is_empty() {
            bad += 1;
            for v in &r.violations {
                let kind = v
                    .split(':')
                    .next()
                    .unwrap_or("?")
                    .split(" at ")
                    .next()
                    .unwrap_or("?")
                    .to_string();
                let e = kinds.entry(kind).or_insert((0, seed));
                e.0 += 1;
            }
        }
    }
    for (k, (count, seed)) in &kinds {
        println!("{k}: {count} (first seed {seed})");
    }
    println!("profiles: {per_profile:?}");
    println!("sim: {n} schedules, {bad} violations");
    std::process::exit(i32::from(bad > 0));
}
