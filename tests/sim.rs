//! The deterministic SAN simulation: random schedules across every
//! capability profile (a budget that fits `cargo test`; `make sim` soaks),
//! and the named cases, each a sequence that broke an invariant before.

use csi_fencer::sim::schedule;

/// Seeds per `cargo test` run; `SIM_SCHEDULES` overrides.
const BUDGET: u64 = 300;

#[test]
fn random_schedules_keep_every_invariant() {
    let n: u64 = std::env::var("SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BUDGET);
    let first: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut bad = Vec::new();
    for seed in first..first + n {
        let r = schedule::run(seed);
        if !r.violations.is_empty() {
            bad.push(r);
        }
    }
    if let Some(r) = bad.iter().min_by_key(|r| r.trace.len()) {
        panic!(
            "{} of {n} schedules broke an invariant; shortest: seed {} ({} target, {:?}):\n{}\n--- trace ---\n{}",
            bad.len(),
            r.seed,
            r.profile,
            r.access,
            r.violations.join("\n"),
            r.trace
        );
    }
}
