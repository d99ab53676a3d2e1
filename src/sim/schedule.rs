//! Random schedules: a seed picks the target's capability profile, the
//! volume's access mode, the number of nodes, the faults, and a sequence of
//! control-plane moves, each run as concurrent engine operations under the
//! seeded scheduler; the schedule ends with the convergence check (S5).

use super::lun::Profile;
use super::world::{Faults, OpKind, Os, Rng, Sim};
use crate::fence::policy::{AccessMode, PreemptMode};

/// What one schedule found.
#[derive(Debug)]
pub struct Report {
    /// The seed (replays the schedule exactly).
    pub seed: u64,
    /// The target's profile.
    pub profile: &'static str,
    /// Single- or multi-node.
    pub access: AccessMode,
    /// Violations of S1–S5.
    pub violations: Vec<String>,
    /// The commands, answers and plane moves, in order.
    pub trace: String,
}

/// Every profile the schedules draw from.
pub fn profiles() -> Vec<(&'static str, Profile)> {
    let mut v = Profile::ALL.to_vec();
    v.push(("minimal", Profile::MINIMAL));
    v
}

/// Runs the schedule of `seed`.
pub fn run(seed: u64) -> Report {
    run_traced(seed, false)
}

/// Runs the schedule of `seed`; `verbose` traces the nodes' records too.
pub fn run_traced(seed: u64, verbose: bool) -> Report {
    run_on(Os::Linux, seed, verbose)
}

/// Runs the schedule of `seed` with nodes of `os`. Windows nodes get
/// single-node volumes and no ALL_TG_PT: the class driver refuses the
/// all-registrants reservation types and has no ALL_TG_PT bit.
pub fn run_on(os: Os, seed: u64, verbose: bool) -> Report {
    let mut rng = Rng::new(seed);
    let all = profiles();
    let (name, profile) = all[rng.below(all.len())];
    // The same draw as before Windows nodes existed: Linux seeds replay.
    let single = rng.percent(65);
    let access = if single || os == Os::Windows {
        AccessMode::SingleNode
    } else {
        AccessMode::MultiNode
    };
    let n = 2 + rng.below(2);
    let mut sim = Sim::on(os, rng.next_u64(), n, profile, access);
    sim.verbose = verbose;
    if rng.percent(15) {
        sim.volume.policy.preempt = PreemptMode::Preempt;
    }
    if rng.percent(20) && os == Os::Linux {
        sim.volume.policy.all_tg_pt = true;
    }
    if rng.percent(65) {
        sim.faults = Faults::ALL;
    }
    sim.attach(0);
    sim.run(&[(0, OpKind::Acquire)]);
    for _ in 0..2 + rng.below(4) {
        match access {
            AccessMode::SingleNode => single_node_move(&mut sim, &mut rng),
            AccessMode::MultiNode => multi_node_move(&mut sim, &mut rng),
        }
    }
    sim.converge();
    Report {
        seed,
        profile: name,
        access,
        violations: sim.violations.clone(),
        trace: sim.trace(),
    }
}

fn attached(sim: &Sim) -> Vec<usize> {
    (0..sim.nodes.len())
        .filter(|&i| sim.live.contains_key(&sim.nodes[i].name))
        .collect()
}

/// One move of a single-node volume: a failover (the old node releasing at
/// the same moment, checking because it was cut off, or silent), a re-attach
/// under a new identity, or a monitor round.
fn single_node_move(sim: &mut Sim, rng: &mut Rng) {
    let n = sim.nodes.len();
    let old = attached(sim).first().copied();
    match rng.below(4) {
        0 | 1 => {
            let new = (old.unwrap_or(0) + 1 + rng.below(n - 1)) % n;
            if let Some(o) = old {
                sim.detach(o);
            }
            sim.attach(new);
            let mut ops = vec![(new, OpKind::Acquire)];
            if let Some(o) = old {
                match rng.below(3) {
                    0 => ops.push((o, OpKind::Release)),
                    1 => ops.push((o, OpKind::Check)),
                    _ => {}
                }
            }
            sim.run(&ops);
        }
        2 => {
            if let Some(o) = old {
                sim.detach(o);
                sim.run(&[(o, OpKind::Release)]);
                sim.attach(o);
                sim.run(&[(o, OpKind::Acquire)]);
            }
        }
        _ => {
            let ops: Vec<_> = (0..n).map(|i| (i, OpKind::Check)).collect();
            sim.run(&ops);
        }
    }
}

/// One move of a multi-node volume: a node joins, leaves, or is cut off
/// and force-detached while another acquires (removing its stale key).
fn multi_node_move(sim: &mut Sim, rng: &mut Rng) {
    let n = sim.nodes.len();
    let on = attached(sim);
    let off: Vec<usize> = (0..n).filter(|i| !on.contains(i)).collect();
    let checks = |sim: &Sim, but: usize| -> Vec<(usize, OpKind)> {
        attached(sim)
            .into_iter()
            .filter(|&i| i != but)
            .map(|i| (i, OpKind::Check))
            .collect()
    };
    match rng.below(3) {
        0 if !off.is_empty() => {
            let j = off[rng.below(off.len())];
            sim.attach(j);
            let mut ops = checks(sim, j);
            ops.push((j, OpKind::Acquire));
            sim.run(&ops);
        }
        1 if on.len() > 1 => {
            let j = on[rng.below(on.len())];
            sim.detach(j);
            let mut ops = checks(sim, j);
            ops.push((j, OpKind::Release));
            sim.run(&ops);
        }
        _ if !on.is_empty() => {
            // Cut off: force-detached, still checking; another node acquires.
            let j = on[rng.below(on.len())];
            sim.detach(j);
            let k = (j + 1 + rng.below(n - 1)) % n;
            if !sim.live.contains_key(&sim.nodes[k].name) {
                sim.attach(k);
            }
            sim.run(&[(j, OpKind::Check), (k, OpKind::Acquire)]);
        }
        _ => {}
    }
}
