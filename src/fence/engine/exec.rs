//! The engine's sending side: each PR OUT behind its guard, an acquire's
//! round of steps, the rollback that never leaves this node registered
//! where it must not be, and the read-back.

use std::path::{Path, PathBuf};

use super::{io, Engine, Executed, FenceError, Run, Send, VolumeState};
use crate::fence::decide::{self, Observed, PathRegistration, Step};
use crate::fence::policy::PreemptMode;
use crate::scsi::{BasicParams, PrOut};
use crate::transport::{ScsiError, Transport};

impl<T: Transport> Engine<T> {
    /// One acquire round: REGISTERs on every path that lacks the key, then
    /// the logical-unit steps through a registered path. A conflict or an
    /// unsupported PREEMPT AND ABORT asks for a new round instead of
    /// stopping half-way.
    pub(super) fn execute_acquire(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        steps: &[Step],
    ) -> Result<Executed, FenceError> {
        let mut registered: Vec<PathBuf> = registered_paths(obs);
        let mut errors = Vec::new();
        let regs: Vec<(&Step, &PathBuf)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Register { path, .. } => Some((s, path)),
                _ => None,
            })
            .collect();
        for chunk in regs.chunks(REGISTERS_AT_ONCE) {
            // Every guard of the chunk holds before any of it is sent.
            for (step, path) in chunk {
                if let Err(why) = self.may_grant(run, path) {
                    return Err(self.stopped(run, obs, step, why)?);
                }
            }
            let answers = self.send_at_once(run, chunk);
            for ((step, path), r) in chunk.iter().zip(answers) {
                match r {
                    Ok(()) => {
                        run.out.steps.push((*step).clone());
                        run.touched.push((*path).clone());
                        registered.push((*path).clone());
                    }
                    Err(e) => {
                        if self.may_have_landed(&e) {
                            // It may still have landed: roll it back like one that did.
                            run.touched.push((*path).clone());
                        }
                        set_problem(&mut run.out, path, e.to_string());
                        errors.push(format!("{}: {e}", path.display()));
                    }
                }
            }
        }
        let wanted = steps.iter().any(|s| matches!(s, Step::Register { .. }));
        if self.cfg.interrupt_after_register && wanted {
            return Err(FenceError::Interrupted);
        }
        if registered.is_empty() {
            self.roll_back(run, obs)?;
            return Err(FenceError::NoPathRegistered {
                volume: run.vol.name.clone(),
                errors: errors.join("; "),
            });
        }
        if wanted {
            self.note_registered(run, obs, &registered)?;
        }
        for step in steps.iter().filter(|s| !matches!(s, Step::Register { .. })) {
            if let Some(replan) = self.lu_step(run, obs, step, &registered)? {
                return Ok(replan);
            }
        }
        Ok(Executed::Done)
    }

    /// RESERVE or PREEMPT through a path that carries our key.
    fn lu_step(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        step: &Step,
        registered: &[PathBuf],
    ) -> Result<Option<Executed>, FenceError> {
        let mut failure = None;
        for via in registered {
            match self.send_granting(run, step, via) {
                Ok(()) => {
                    if let Step::Preempt { victim, .. } = step {
                        run.out.preempted.push(victim.clone());
                    }
                    return Ok(None);
                }
                Err(Send::Stop(why)) => return Err(self.stopped(run, obs, step, why)?),
                Err(Send::Path(ScsiError::ReservationConflict { .. })) => {
                    return Ok(Some(Executed::Replan(format!(
                        "{step} got RESERVATION CONFLICT: the reservation changed meanwhile (another node releasing or acquiring)"
                    ))));
                }
                Err(Send::Path(e @ ScsiError::Unsupported { .. })) => {
                    return self.unsupported(run, obs, step, e).map(Some)
                }
                // A path problem: the same command through the next path.
                Err(Send::Path(e)) if is_path_problem(&e) => {
                    set_problem(&mut run.out, via, e.to_string());
                    failure = Some(e);
                }
                Err(Send::Path(e)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(source) = failure.map(Box::new) else {
            return Err(FenceError::NoPathRegistered {
                volume: run.vol.name.clone(),
                errors: format!("no registered path left to send {step} through"),
            });
        };
        let rolled_back = self.roll_back_unless_holding(run, obs)?;
        Err(FenceError::Step {
            volume: run.vol.name.clone(),
            done: run.out.steps.clone(),
            failed: Box::new(step.clone()),
            rolled_back,
            source,
        })
    }

    /// The target refused a service action. PREEMPT AND ABORT falls back to
    /// PREEMPT unless the policy insists; anything else is final.
    fn unsupported(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        step: &Step,
        e: ScsiError,
    ) -> Result<Executed, FenceError> {
        let abort = matches!(step, Step::Preempt { abort: true, .. });
        if abort && run.vol.policy.preempt == PreemptMode::PreemptAndAbort {
            self.learn_no_preempt_and_abort(&run.vol.wwid.to_string());
            let note = "the target does not support PREEMPT AND ABORT: plain PREEMPT is used instead (commands the preempted node had queued are not aborted)";
            return Ok(Executed::Replan(note.into()));
        }
        self.roll_back_unless_holding(run, obs)?;
        if abort {
            return Err(FenceError::Unsupported {
                volume: run.vol.name.clone(),
                capability: "PREEMPT AND ABORT",
                why: "policy preempt is preempt-and-abort-only; set it to preempt-and-abort to fall back to PREEMPT".into(),
            });
        }
        Err(FenceError::Scsi(e))
    }

    /// Whether a REGISTER that failed with `e` may still have registered:
    /// one whose answer was lost; on a transport that fans a REGISTER out
    /// to several paths itself (MPIO), any failure after it was sent, since
    /// some paths may have taken it.
    pub(super) fn may_have_landed(&self, e: &ScsiError) -> bool {
        match e {
            ScsiError::Timeout { .. } => true,
            ScsiError::Unsupported {
                by: crate::transport::Refusal::Platform(_),
                ..
            } => false,
            _ => self.transport.replays_registrations(),
        }
    }

    /// Sends a PR OUT that grants or takes access (REGISTER, RESERVE,
    /// PREEMPT), only while the operation is within its deadline, its
    /// authorization is fresh, and the device is still the one whose
    /// identity was proven.
    pub(super) fn send_granting(
        &self,
        run: &mut Run<'_>,
        step: &Step,
        via: &Path,
    ) -> Result<(), Send> {
        self.may_grant(run, via).map_err(Send::Stop)?;
        self.send(run, via, step).map_err(Send::Path)?;
        run.out.steps.push(step.clone());
        Ok(())
    }

    /// Whether a PR OUT that grants access may go to `via` now: within the
    /// deadline (I6), under a fresh authority (I1), to the proven device (I3).
    fn may_grant(&self, run: &Run<'_>, via: &Path) -> Result<(), String> {
        if self.cfg.clock.mono() > run.deadline {
            return Err(format!(
                "the operation's deadline ({}) passed",
                crate::text::duration(&self.cfg.operation_deadline)
            ));
        }
        if let Some(r) = run.auth.and_then(|a| self.unfresh_authorization(a)) {
            return Err(r.to_string());
        }
        self.same_device(run, via)
    }

    /// The REGISTERs of one chunk, each on its own path, at once; their
    /// answers in order, reported like [`Engine::send`]'s.
    fn send_at_once(
        &self,
        run: &mut Run<'_>,
        sends: &[(&Step, &PathBuf)],
    ) -> Vec<Result<(), ScsiError>> {
        let wwid = run.vol.wwid.to_string();
        let cmds: Vec<(&Path, PrOut)> = sends
            .iter()
            .map(|(step, path)| (path.as_path(), self.prout_of(step)))
            .collect();
        let (att, wwid) = (&run.att, wwid.as_str());
        type Answer = (Result<(), ScsiError>, Vec<crate::scsi::Sense>);
        let jobs: Vec<crate::transport::Job<'_, Answer>> = cmds
            .iter()
            .map(|(dev, cmd)| {
                Box::new(move || self.prout_with(att, wwid, dev, cmd))
                    as crate::transport::Job<'_, Answer>
            })
            .collect();
        let answers = self.transport.at_once(jobs);
        answers
            .into_iter()
            .zip(sends)
            .map(|((r, uas), (_, via))| {
                run.failed_sends += u32::from(r.is_err());
                run.out
                    .unit_attentions
                    .extend(uas.iter().map(|s| format!("{}: {s}", via.display())));
                r
            })
            .collect()
    }

    /// One PR OUT on `dev`: the unit attentions it meets are judged by age
    /// (see `Attentions`), a reset is noted at once, a lost answer too.
    /// Returns the result and the attentions met.
    pub(super) fn prout_on(
        &self,
        run: &Run<'_>,
        dev: &Path,
        cmd: &PrOut,
    ) -> (Result<(), ScsiError>, Vec<crate::scsi::Sense>) {
        self.prout_with(&run.att, &run.vol.wwid.to_string(), dev, cmd)
    }

    fn prout_with(
        &self,
        att: &super::Attentions,
        wwid: &str,
        dev: &Path,
        cmd: &PrOut,
    ) -> (Result<(), ScsiError>, Vec<crate::scsi::Sense>) {
        let fresh = att.open(dev);
        let noted = |s: &crate::scsi::Sense| self.unit_attention(wwid, att, fresh, s);
        let lost = || self.note_blind(wwid);
        let mut p = self
            .path(dev)
            .on_unit_attention(&noted)
            .on_lost_answer(&lost);
        let r = p.prout(cmd);
        att.answered(dev, &r);
        (r, p.unit_attentions().to_vec())
    }

    /// One PR OUT through one path. A reset unit attention met on the way
    /// is noted at once (see [`Engine::note_reset`]).
    fn send(&self, run: &mut Run<'_>, via: &Path, step: &Step) -> Result<(), ScsiError> {
        let (r, uas) = self.prout_on(run, via, &self.prout_of(step));
        run.failed_sends += u32::from(r.is_err());
        run.out
            .unit_attentions
            .extend(uas.iter().map(|s| format!("{}: {s}", via.display())));
        r
    }

    pub(super) fn same_device(&self, run: &Run<'_>, via: &Path) -> Result<(), String> {
        let Some(p) = run.loc.usable.iter().find(|u| u.dev == via) else {
            return Err(format!(
                "{} is not a verified path of the LUN",
                via.display()
            ));
        };
        let now = self.transport.device_number(via);
        if p.devnum.is_some() && now != p.devnum {
            return Err(format!(
                "{} is another device than the one whose identity was proven (device number changed): not sent (I3); the next attempt proves it again",
                via.display()
            ));
        }
        Ok(())
    }

    /// Sends a step that only gives access up (RELEASE, unregister): no
    /// authority needed. A failed unregister is reported on its path.
    pub(super) fn send_releasing(&self, run: &mut Run<'_>, step: &Step) -> Result<(), FenceError> {
        match step {
            Step::Unregister { path, .. } => {
                if let Err(e) = self.same_device(run, path) {
                    set_problem(&mut run.out, path, e);
                    return Ok(());
                }
                // Giving access up is worth a second try on a flaky path.
                let mut tries = UNREGISTER_TRIES;
                loop {
                    tries -= 1;
                    match self.send(run, path, step) {
                        Ok(()) => run.out.steps.push(step.clone()),
                        Err(e) if tries > 0 && is_path_problem(&e) => continue,
                        Err(e) => set_problem(&mut run.out, path, e.to_string()),
                    }
                    return Ok(());
                }
            }
            _ => {
                // Through the holder's path when the LUN named it, else a
                // path that carries our key: RELEASE from any other nexus
                // conflicts. Without one, unregistering the holder releases.
                let via = match step {
                    Step::Release { path: Some(p), .. } => Some(p.clone()),
                    _ => run.release_via.clone(),
                };
                let Some(via) = via else { return Ok(()) };
                // Our key is the same on every LUN: a RELEASE on a name that
                // now stands for another LUN would end our reservation there.
                if let Err(e) = self.same_device(run, &via) {
                    set_problem(&mut run.out, &via, e);
                    return Ok(());
                }
                match self.send(run, &via, step) {
                    Ok(()) => run.out.steps.push(step.clone()),
                    // Not fatal: the unregisters that follow end the
                    // reservation with the holder's registration.
                    Err(e) => set_problem(&mut run.out, &via, e.to_string()),
                }
                Ok(())
            }
        }
    }

    /// Unregisters every path of ours that is, or may be, registered, and
    /// reads back. Only gives access up, so it needs no authority and runs
    /// past the deadline too: a late completion must not leave a
    /// registration nobody owns.
    pub(super) fn roll_back(&self, run: &mut Run<'_>, obs: &Observed) -> Result<(), FenceError> {
        let all_tg_pt = decide::uses_all_tg_pt(obs, &run.vol.policy);
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        for (p, reg) in &obs.paths {
            match reg {
                PathRegistration::Registered { all_tg_pt: a, .. } => paths.push((p.clone(), *a)),
                PathRegistration::Unknown => paths.push((p.clone(), all_tg_pt)),
                PathRegistration::NotRegistered if run.touched.contains(p) => {
                    paths.push((p.clone(), all_tg_pt))
                }
                PathRegistration::NotRegistered => {}
            }
        }
        for p in &run.touched {
            if !paths.iter().any(|(q, _)| q == p) {
                paths.push((p.clone(), all_tg_pt));
            }
        }
        // Said before it is done: after a crash half-way, fewer registrations
        // than recorded must not read as a preemption.
        self.recount(run, None)?;
        for (path, all_tg_pt) in paths {
            let undo = Step::Unregister {
                path,
                all_tg_pt,
                ignore_existing: true,
            };
            self.send_releasing(run, &undo)?;
        }
        run.touched.clear();
        let after = self.observe_into(run, false)?;
        run.out.state = io::state_of(&after, self.key);
        // Our own unregisters lowered the count: the record must say so, or
        // the next operation would take the difference for a preemption.
        self.recount(run, Some(&after))?;
        if after.ours_count > 0 {
            run.out.leftover = true;
            run.out.notes.push(format!(
                "rollback incomplete: {} registration(s) of this node remain; the next check retries",
                after.ours_count
            ));
        } else {
            run.out
                .notes
                .push("this node's registrations were taken back".into());
        }
        Ok(())
    }

    /// Best effort after a failure that left the LUN unread: unregister
    /// every path (the form that is a no-op where not registered), errors
    /// ignored; the next check finishes what this could not.
    pub(super) fn abandon(&self, run: &mut Run<'_>) {
        let all_tg_pt = self
            .record_for(run.vol, None)
            .ok()
            .flatten()
            .is_some_and(|r| r.all_tg_pt);
        if let Err(e) = self.recount(run, None) {
            tracing::warn!(volume = %run.vol.name, "{e}");
        }
        let paths: Vec<PathBuf> = run.loc.usable.iter().map(|u| u.dev.clone()).collect();
        for path in paths {
            let undo = Step::Unregister {
                path,
                all_tg_pt,
                ignore_existing: true,
            };
            if let Err(e) = self.send_releasing(run, &undo) {
                tracing::warn!(volume = %run.vol.name, "{e}");
            }
        }
        run.touched.clear();
    }

    /// Rolls back unless this node held the reservation before the
    /// operation began (then its registrations are its own to keep).
    pub(super) fn roll_back_unless_holding(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
    ) -> Result<bool, FenceError> {
        if io::state_of(obs, self.key) == VolumeState::Held {
            return Ok(false);
        }
        self.roll_back(run, obs)?;
        Ok(true)
    }

    /// The guard stopped the next step: take back what this operation
    /// registered (unless we held before), and say what was not sent.
    pub(super) fn stopped(
        &self,
        run: &mut Run<'_>,
        obs: &Observed,
        next: &Step,
        why: String,
    ) -> Result<FenceError, FenceError> {
        let rolled_back = self.roll_back_unless_holding(run, obs)?;
        Ok(FenceError::Stopped {
            volume: run.vol.name.clone(),
            next: next.to_string(),
            why,
            rolled_back,
        })
    }

    /// Sets the outcome from the read-back: state, path registrations, and
    /// whether the generation moved by more than this operation's commands.
    pub(super) fn finish(&self, run: &mut Run<'_>, before: &Observed, after: &Observed) {
        let sent = run.out.steps.iter().filter(|s| bumps_generation(s)).count();
        let expected = before.generation.wrapping_add(sent as u32);
        run.out.raced |= after.generation != expected;
        run.out.generation.1 = after.generation;
        run.out.state = io::state_of(after, self.key);
    }

    pub(super) fn prout_of(&self, step: &Step) -> PrOut {
        let ours = self.key;
        match step {
            Step::Register {
                all_tg_pt, aptpl, ..
            } => PrOut::RegisterAndIgnore(BasicParams {
                sa_key: ours,
                all_tg_pt: *all_tg_pt,
                aptpl: *aptpl,
                ..Default::default()
            }),
            Step::Unregister {
                all_tg_pt,
                ignore_existing: true,
                ..
            } => PrOut::RegisterAndIgnore(BasicParams {
                all_tg_pt: *all_tg_pt,
                ..Default::default()
            }),
            Step::Unregister { all_tg_pt, .. } => PrOut::Register(BasicParams {
                key: ours,
                all_tg_pt: *all_tg_pt,
                ..Default::default()
            }),
            Step::Reserve { rtype } => PrOut::Reserve {
                key: ours,
                rtype: *rtype,
            },
            Step::Release { rtype, .. } => PrOut::Release {
                key: ours,
                rtype: *rtype,
            },
            Step::Preempt {
                victim,
                abort,
                rtype,
                ..
            } => PrOut::Preempt {
                key: ours,
                victim: victim.key,
                rtype: *rtype,
                abort: *abort,
            },
        }
    }
}

/// Attempts of one unregister on a path that fails.
const UNREGISTER_TRIES: u32 = 3;

/// Failures of one path, where another path may do.
/// REGISTERs sent at once, at most: one per path of a LUN, bounded so that
/// a LUN with many paths does not open a thread per path.
const REGISTERS_AT_ONCE: usize = 8;

fn is_path_problem(e: &ScsiError) -> bool {
    matches!(
        e,
        ScsiError::Timeout { .. }
            | ScsiError::Transport { .. }
            | ScsiError::NotFound { .. }
            | ScsiError::Io { .. }
    )
}

/// SPC: every successful PR OUT bumps PRGENERATION except RESERVE and RELEASE.
fn bumps_generation(s: &Step) -> bool {
    !matches!(s, Step::Reserve { .. } | Step::Release { .. })
}

fn registered_paths(obs: &Observed) -> Vec<PathBuf> {
    obs.paths
        .iter()
        .filter(|(_, r)| r.is_registered())
        .map(|(p, _)| p.clone())
        .collect()
}

fn set_problem(out: &mut super::Outcome, path: &Path, problem: String) {
    if let Some(r) = out.paths.iter_mut().find(|r| r.info.dev == path) {
        r.problem = Some(problem);
    }
}
