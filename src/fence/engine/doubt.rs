//! What a lost answer leaves in doubt, and how it is settled.
//!
//! Two things cannot be known from the LUN's state alone:
//! - whether a REGISTER whose answer never came (or that a crash cut off
//!   before its read-back) landed: one that lands after another node's
//!   PREEMPT puts back the registration the PREEMPT took, and the count of
//!   our registrations hides the fence. Each such path is asked directly
//!   (REGISTER with our key as both keys: GOOD only where the nexus carries
//!   it, RESERVATION CONFLICT elsewhere, and nothing changes either way);
//! - whether our registrations went by a target reset or by a PREEMPT, when
//!   the unit attention that tells (29/xx) came back on a command whose
//!   answer was lost. Every path is then asked for what it still holds
//!   (TEST UNIT READY consumes the pending attentions): each nexus of this
//!   node got its own 29/xx at the reset.

use std::path::Path;

use super::{Engine, FenceError, Run};
use crate::fence::decide::{self, Evidence, Observed, Signs};
use crate::fence::state::{Record, Stage};
use crate::scsi::{BasicParams, PrOut};
use crate::transport::{Refusal, ScsiError, Transport};

/// What the paths said when asked for their pending unit attentions.
enum Testimony {
    /// A 29/xx on some path: the target was reset.
    Reset,
    /// A 2A/05 and no reset: another node preempted us.
    Preempted,
    /// Every path answered and none had anything left to tell.
    Silent,
    /// The platform keeps unit attentions from us (Windows' class driver
    /// consumes and retries them) and cannot send TEST UNIT READY: silence
    /// is all there will ever be.
    Hidden,
    /// Nothing decisive, and a path did not answer.
    Unreachable(String),
}

const SILENT_NOTE: &str = "this node's registrations are gone and no path could tell a target reset from a preemption (the unit attention that would have went with a lost answer): taken as a fence, the safe side";

const HIDDEN_NOTE: &str = "this node's registrations are gone and no path could tell a target reset from a preemption: this platform's storage driver consumes the unit attentions that would say which (Windows' class driver); taken as a fence, the safe side";

/// This operation's fence was taken on silence (see [`Record::guessed`]).
pub(super) fn guessed(run: &Run<'_>) -> bool {
    run.out
        .notes
        .iter()
        .any(|n| n == SILENT_NOTE || n == HIDDEN_NOTE)
}

impl<T: Transport> Engine<T> {
    /// A command's answer was lost: a reset's unit attention may have gone
    /// with it. Written at once, like a reset, so a crash cannot forget it.
    pub(super) fn note_blind(&self, wwid: &str) {
        let _one = self.noting.lock();
        let noted = (|| -> Result<(), FenceError> {
            let Some(mut rec) = self.state.get(wwid)? else {
                return Ok(());
            };
            if rec.stage == Stage::Fenced || rec.blind || self.cfg.dry_run {
                return Ok(());
            }
            rec.blind = true;
            Ok(self.state.set(wwid, Some(rec))?)
        })();
        if let Err(e) = noted {
            tracing::warn!(wwid, "{e}");
        }
    }

    /// The evidence on our registrations (see [`decide::evidence`]), with
    /// what lost answers left in doubt settled first.
    pub(super) fn judge(
        &self,
        run: &mut Run<'_>,
        rec: Option<&Record>,
        obs: &Observed,
    ) -> Result<Evidence, FenceError> {
        let access = run.vol.access;
        if rec.is_some_and(|r| r.stage == Stage::Fenced && r.guessed) {
            run.out.notes.push(SILENT_NOTE.into());
        }
        let Some(r) = rec.filter(|r| r.stage != Stage::Fenced && !self.cfg.dry_run) else {
            return Ok(decide::evidence(rec, obs, self.key, access));
        };
        if run.auth.is_none()
            && r.stage == Stage::Registering
            && r.key_count == Some(0)
            && obs.ours_count > 0
        {
            // The record counts none of ours (a reset was noted, or an
            // acquire was cut off before its REGISTERs were counted), yet
            // the LUN shows some: they landed after that baseline, from an
            // operation that did not finish. A check has no authority to
            // adopt them (the repair REGISTER of a check that read the LUN
            // before a preemption and a reset lands as a fresh one): they
            // are taken back, and an acquire under a live attachment
            // registers again.
            return Ok(Evidence::Lost);
        }
        let mut counted = obs.clone();
        if let Some(id) = r
            .unsure
            .iter()
            .find(|id| obs.ours_count > 0 && !run.loc.usable.iter().any(|u| &u.id == *id))
        {
            // A REGISTER that may have landed after a PREEMPT, on a path
            // that cannot be asked now: the count cannot be trusted, and
            // nothing is done on it until the path answers.
            return Err(FenceError::Undecided {
                volume: run.vol.name.clone(),
                why: format!("path {id} may carry a late registration and cannot be asked now"),
            });
        }
        if !r.unsure.is_empty() && obs.ours_count > 0 {
            let resets = run.att.resets.get();
            let landed = self.probe_unsure(run, r, obs)?;
            if run.att.resets.get() != resets {
                // A probe met a reset: the reading it was to correct is from
                // before it. Nothing is decided on it; the next try reads anew.
                return Err(FenceError::Unstable {
                    device: run.loc.device.clone(),
                    generations: vec![obs.generation],
                });
            }
            counted.ours_count = obs.ours_count.saturating_sub(landed);
        }
        let mut e = decide::evidence(Some(r), &counted, self.key, access);
        if run.att.fresh_preempt.get() {
            // A probe's path told of a preemption since this operation
            // first read it.
            e = Evidence::Preempted;
        }
        match e {
            Evidence::Preempted if run.att.fresh_preempt.get() => Ok(e),
            // The path read said nothing of a preemption (2A/05): the
            // others may still hold the reset attention that explains it.
            Evidence::Preempted if !obs.signs.preempted => self.weigh_testimony(run, r.blind),
            Evidence::None if !r.unsure.is_empty() || r.blind => {
                // Doubt settled: what the LUN shows now is the new baseline.
                let mut clean = r.clone();
                clean.unsure.clear();
                clean.blind = false;
                clean.key_count = Some(obs.ours_count);
                clean.generation = Some(obs.generation);
                self.state.set(&run.vol.wwid.to_string(), Some(clean))?;
                Ok(e)
            }
            _ => Ok(e),
        }
    }

    /// How many of the record's unsure paths carry our key now.
    fn probe_unsure(
        &self,
        run: &mut Run<'_>,
        rec: &Record,
        obs: &Observed,
    ) -> Result<u32, FenceError> {
        let aptpl = run.vol.policy.use_aptpl(obs.caps.as_ref());
        let devs: Vec<_> = run
            .loc
            .usable
            .iter()
            .filter(|u| rec.unsure.contains(&u.id))
            .map(|u| u.dev.clone())
            .collect();
        let mut landed = 0;
        for dev in devs {
            if self.carries_key(run, &dev, rec.all_tg_pt, aptpl)? {
                landed += 1;
            }
        }
        Ok(landed)
    }

    /// Does this path's nexus carry our key? REGISTER with our key as the
    /// reservation key and as the new one: GOOD re-registers the same key,
    /// RESERVATION CONFLICT says the nexus carries none of ours. It grants
    /// nothing, so no authority is needed; the identity is checked all the same.
    pub(super) fn carries_key(
        &self,
        run: &mut Run<'_>,
        dev: &Path,
        all_tg_pt: bool,
        aptpl: bool,
    ) -> Result<bool, FenceError> {
        if let Err(why) = self.same_device(run, dev) {
            return Err(FenceError::Undecided {
                volume: run.vol.name.clone(),
                why,
            });
        }
        let probe = PrOut::Register(BasicParams {
            key: self.key,
            sa_key: self.key,
            all_tg_pt,
            aptpl,
            ..Default::default()
        });
        match self.prout_on(run, dev, &probe).0 {
            Ok(()) => Ok(true),
            Err(ScsiError::ReservationConflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Our registrations dropped and the path read did not say why: every
    /// path is asked what it still holds (a reset leaves 29/xx on each
    /// nexus; the one read may not have existed at the reset, or its
    /// attention went with a lost answer).
    /// `blind`: an answer was lost, and with it maybe the only attention
    /// that would tell; silence is then a guess, said as such.
    pub(super) fn weigh_testimony(
        &self,
        run: &mut Run<'_>,
        blind: bool,
    ) -> Result<Evidence, FenceError> {
        match self.testimony(run) {
            Testimony::Reset => Ok(Evidence::Lost),
            Testimony::Preempted => Ok(Evidence::Preempted),
            Testimony::Silent => {
                if blind {
                    run.out.notes.push(SILENT_NOTE.into());
                }
                Ok(Evidence::Preempted)
            }
            Testimony::Hidden => {
                run.out.notes.push(HIDDEN_NOTE.into());
                Ok(Evidence::Preempted)
            }
            Testimony::Unreachable(why) => Err(FenceError::Undecided {
                volume: run.vol.name.clone(),
                why,
            }),
        }
    }

    fn testimony(&self, run: &Run<'_>) -> Testimony {
        let wwid = run.vol.wwid.to_string();
        let (mut signs, mut unreachable, mut hidden) = (Signs::default(), None, false);
        // A path left out of this operation (its INQUIRY failed) may hold
        // its own 29/xx: silence from the others proves nothing then.
        if let Some(r) = run.loc.reports.iter().find(|r| !r.usable && !r.wrong_lun) {
            unreachable = Some(format!("{} was not usable", r.info.dev.display()));
        }
        // A TEST UNIT READY whose answer is lost may take the very attention
        // it was sent for: noted like any lost answer, so the silence that
        // may follow (now or after a crash) is weighed as blind.
        let lost = || self.note_blind(&wwid);
        for u in &run.loc.usable {
            let fresh = run.att.open(&u.dev);
            let noted = |s: &crate::scsi::Sense| self.unit_attention(&wwid, &run.att, fresh, s);
            let mut p = self
                .path(&u.dev)
                .on_unit_attention(&noted)
                .on_lost_answer(&lost);
            let r = p.test_unit_ready();
            run.att.answered(&u.dev, &r);
            match r {
                Err(ScsiError::Unsupported {
                    by: Refusal::Platform(_),
                    ..
                }) => hidden = true,
                Err(e) => unreachable = Some(e.to_string()),
                Ok(()) => {}
            }
            let s = Signs::from_unit_attentions(p.unit_attentions());
            signs.reset |= s.reset;
            signs.preempted |= s.preempted;
        }
        match (signs, unreachable) {
            (Signs { reset: true, .. }, _) => Testimony::Reset,
            (
                Signs {
                    preempted: true, ..
                },
                _,
            ) => Testimony::Preempted,
            (_, Some(why)) => Testimony::Unreachable(why),
            (_, None) if hidden => Testimony::Hidden,
            (_, None) => Testimony::Silent,
        }
    }
}
