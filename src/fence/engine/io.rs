//! The engine's I/O: locating the LUN and proving identity, reading the PR
//! state, sending the planned steps, reading back.
//!
//! Nothing here sends SG_IO to a dm map: through a map it lands on whichever
//! path dm picks, and with `queue_if_no_path` and every path down it can
//! block without any timeout. Every command goes to a verified path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    registered_paths, Engine, FenceError, Located, Outcome, PathReport, UsablePath, VolumeState,
};
use crate::device::PathInfo;
use crate::fence::decide::{Observed, PathRegistration, Step};
use crate::scsi::{BasicParams, Designator, FullStatus, PrOut, TransportId, Wwid};
use crate::transport::Transport;

const DEVICE_POLL: Duration = Duration::from_millis(250);

/// Reads of the PR state that may disagree (the LUN changing meanwhile)
/// before the engine gives up for this round.
const CONSISTENT_READ_ATTEMPTS: usize = 3;

impl<T: Transport> Engine<T> {
    /// Finds the LUN's paths and proves each path's identity (I3).
    pub(super) fn locate(&self, vol: &super::Volume) -> Result<Located, FenceError> {
        let lun = match &vol.device {
            Some(d) => self.resolver.for_device(d)?,
            None => self
                .resolver
                .wait(&vol.wwid, self.cfg.device_wait, DEVICE_POLL)?,
        };
        let mut loc = Located {
            device: lun.device,
            usable: Vec::new(),
            reports: Vec::new(),
        };
        for info in lun.paths {
            let (usable, report) = self.check_path(info, &vol.wwid);
            loc.usable.extend(usable);
            loc.reports.push(report);
        }
        // A device the operator named, every path of which is another LUN.
        if loc.usable.is_empty() {
            if let Some(r) = loc.reports.iter().find(|r| r.wrong_lun) {
                return Err(FenceError::IdentityMismatch {
                    device: r.info.dev.clone(),
                    expected: vol.wwid.to_string(),
                    found: r.reports_wwid.clone().unwrap_or_default(),
                });
            }
        }
        Ok(loc)
    }

    fn check_path(&self, info: PathInfo, wwid: &Wwid) -> (Option<UsablePath>, PathReport) {
        let mut report = PathReport {
            info,
            usable: false,
            wrong_lun: false,
            registered: false,
            registration: None,
            reports_wwid: None,
            problem: None,
        };
        if let Some(s) = report.info.state.as_deref().filter(|s| *s != "running") {
            report.problem = Some(format!("path state is {s}"));
            return (None, report);
        }
        let ds = match self.path(&report.info.dev).device_id() {
            Ok(ds) => ds,
            Err(e) => {
                report.problem = Some(e.to_string());
                return (None, report);
            }
        };
        match Wwid::from_designations(&ds) {
            Some(w) if &w == wwid => {}
            other => {
                let found = other
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "no LU designator".into());
                report.problem = Some(format!(
                    "identity mismatch: VPD 83h says {found}, not {wwid}"
                ));
                report.reports_wwid = Some(found);
                report.wrong_lun = true;
                return (None, report);
            }
        }
        let rtpi = ds.iter().find_map(|d| match d.designator {
            Designator::RelativeTargetPort { port } => Some(port),
            _ => None,
        });
        report.usable = true;
        let usable = UsablePath {
            dev: report.info.dev.clone(),
            rtpi,
            initiator: self.resolver.sysfs().initiator_port(&report.info.name),
        };
        (Some(usable), report)
    }

    /// Reads the PR state through the first usable path that answers, and
    /// records it in the outcome.
    pub(super) fn observe_into(
        &self,
        loc: &Located,
        out: &mut Outcome,
    ) -> Result<Observed, FenceError> {
        let (obs, uas) = self.observe(loc, &out.volume)?;
        out.generation = (obs.generation, obs.generation);
        out.unit_attentions.extend(uas);
        set_registrations(out, &obs);
        Ok(obs)
    }

    fn observe(&self, loc: &Located, volume: &str) -> Result<(Observed, Vec<String>), FenceError> {
        if loc.usable.is_empty() {
            let reasons: Vec<String> = loc
                .reports
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.info.name,
                        r.problem.as_deref().unwrap_or("unusable")
                    )
                })
                .collect();
            return Err(FenceError::NoUsablePath {
                volume: volume.to_string(),
                reasons: if reasons.is_empty() {
                    "the map has no paths".into()
                } else {
                    reasons.join("; ")
                },
            });
        }
        let mut last = None;
        for p in &loc.usable {
            match self.consistent_state(&p.dev) {
                Ok((mut obs, fs, uas)) => {
                    obs.paths = self.match_paths(loc, &fs);
                    return Ok((obs, uas));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(FenceError::NoUsablePath {
            volume: volume.to_string(),
            reasons: "no path answered".into(),
        }))
    }

    /// READ KEYS, READ RESERVATION, REPORT CAPABILITIES and READ FULL STATUS,
    /// again until the three generations agree: a decision must never mix a
    /// state from before another node's PR OUT with one from after it.
    fn consistent_state(
        &self,
        dev: &Path,
    ) -> Result<(Observed, FullStatus, Vec<String>), FenceError> {
        let mut seen = Vec::new();
        for _ in 0..CONSISTENT_READ_ATTEMPTS {
            let mut p = self.path(dev);
            let keys = p.read_keys()?;
            let res = p.read_reservation()?;
            let caps = p.capabilities().ok();
            let fs = p.full_status()?;
            seen = vec![keys.generation, res.generation, fs.generation];
            if seen.iter().all(|g| *g == keys.generation) {
                let uas = p
                    .unit_attentions()
                    .iter()
                    .map(|s| format!("{}: {s}", dev.display()))
                    .collect();
                let obs = Observed {
                    generation: keys.generation,
                    keys: keys.keys,
                    reservation: res.reservation,
                    caps,
                    paths: Vec::new(),
                };
                return Ok((obs, fs, uas));
            }
        }
        Err(FenceError::Unstable {
            device: dev.to_path_buf(),
            generations: seen,
        })
    }

    fn match_paths(&self, loc: &Located, fs: &FullStatus) -> Vec<(PathBuf, PathRegistration)> {
        loc.usable
            .iter()
            .map(|p| (p.dev.clone(), registration_of(p, &loc.usable, fs, self.key)))
            .collect()
    }

    /// Sends the steps (or, in a dry run, only lists them).
    pub(super) fn execute(
        &self,
        vol: &super::Volume,
        loc: &Located,
        obs: &Observed,
        steps: &[Step],
        out: &mut Outcome,
    ) -> Result<(), FenceError> {
        if self.cfg.dry_run {
            out.steps = steps.to_vec();
            return Ok(());
        }
        let mut registered = registered_paths(obs);
        let mut errors = Vec::new();
        let wanted_registration = steps.iter().any(|s| matches!(s, Step::Register { .. }));
        // Test hook: stop as a crash would, after the REGISTERs (path steps
        // come first) and before any reservation step.
        let interrupt = self.cfg.interrupt_after_register && wanted_registration;
        for step in steps {
            if let Step::Register { path, .. } | Step::Unregister { path, .. } = step {
                match self.path(path).prout(&self.prout_of(step)) {
                    Ok(()) => {
                        if matches!(step, Step::Register { .. }) {
                            registered.push(path.clone());
                        }
                        out.steps.push(step.clone());
                    }
                    Err(e) => {
                        set_problem(out, path, e.to_string());
                        errors.push(format!("{}: {e}", path.display()));
                    }
                }
                continue;
            }
            if interrupt {
                return Err(FenceError::Interrupted);
            }
            self.lu_step(vol, step, &registered, loc, &errors, out)?;
        }
        if interrupt {
            return Err(FenceError::Interrupted);
        }
        if wanted_registration && registered.is_empty() {
            return Err(FenceError::NoPathRegistered {
                volume: vol.name.clone(),
                errors: errors.join("; "),
            });
        }
        Ok(())
    }

    /// A logical-unit-wide step (RESERVE, PREEMPT, RELEASE) through one path.
    fn lu_step(
        &self,
        vol: &super::Volume,
        step: &Step,
        registered: &[PathBuf],
        loc: &Located,
        errors: &[String],
        out: &mut Outcome,
    ) -> Result<(), FenceError> {
        let via = self
            .via(step, registered, loc)
            .ok_or_else(|| FenceError::NoPathRegistered {
                volume: vol.name.clone(),
                errors: errors.join("; "),
            })?;
        if let Err(source) = self.path(&via).prout(&self.prout_of(step)) {
            return Err(FenceError::Step {
                volume: vol.name.clone(),
                done: out.steps.clone(),
                failed: Box::new(step.clone()),
                source: Box::new(source),
            });
        }
        if let Step::Preempt { victim, .. } = step {
            out.preempted.push(victim.clone());
        }
        out.steps.push(step.clone());
        Ok(())
    }

    /// The path a LU-wide step goes through: the holder for RELEASE, else a
    /// path that carries our key.
    fn via(&self, step: &Step, registered: &[PathBuf], loc: &Located) -> Option<PathBuf> {
        if let Step::Release { path: Some(p), .. } = step {
            return Some(p.clone());
        }
        registered.first().cloned().or_else(|| match step {
            Step::Release { .. } => loc.usable.first().map(|p| p.dev.clone()),
            _ => None,
        })
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

    /// Reads back and sets the outcome's state and path registrations. The
    /// generation must have moved by exactly this operation's own commands;
    /// more means another node changed the LUN meanwhile (`raced`).
    pub(super) fn finish(
        &self,
        loc: &Located,
        out: &mut Outcome,
        before: &Observed,
        steps: &[Step],
    ) -> Result<(), FenceError> {
        if self.cfg.dry_run {
            out.state = state_of(before, self.key);
            return Ok(());
        }
        let (obs, uas) = self.observe(loc, &out.volume)?;
        out.generation.1 = obs.generation;
        out.unit_attentions.extend(uas);
        set_registrations(out, &obs);
        let sent = out
            .steps
            .iter()
            .filter(|s| steps.contains(s))
            .filter(|s| bumps_generation(s))
            .count();
        let expected = before.generation.wrapping_add(sent as u32);
        out.raced |= obs.generation != expected;
        out.state = state_of(&obs, self.key);
        Ok(())
    }
}

/// SPC: every successful PR OUT bumps PRGENERATION except RESERVE and RELEASE.
fn bumps_generation(s: &Step) -> bool {
    !matches!(s, Step::Reserve { .. } | Step::Release { .. })
}

fn state_of(obs: &Observed, ours: crate::scsi::ReservationKey) -> VolumeState {
    let present = obs.keys.contains(&ours);
    let holds = obs
        .reservation
        .as_ref()
        .is_some_and(|r| r.key == ours || r.rtype.all_registrants());
    match (present, holds) {
        (false, _) => VolumeState::NotRegistered,
        (true, true) => VolumeState::Held,
        (true, false) => VolumeState::Registered,
    }
}

fn set_registrations(out: &mut Outcome, obs: &Observed) {
    for (p, reg) in &obs.paths {
        if let Some(r) = out.paths.iter_mut().find(|r| &r.info.dev == p) {
            r.registered = reg.is_registered();
            r.registration = Some(*reg);
        }
    }
}

/// Whether READ FULL STATUS lists this path's I_T nexus with our key.
fn registration_of(
    p: &UsablePath,
    all: &[UsablePath],
    fs: &FullStatus,
    ours: crate::scsi::ReservationKey,
) -> PathRegistration {
    let (Some(me), Some(rtpi)) = (&p.initiator, p.rtpi) else {
        return PathRegistration::Unknown;
    };
    if matches!(me.id, TransportId::Iscsi { isid: None, .. }) {
        return PathRegistration::Unknown;
    }
    let ours_here = |r: &&crate::scsi::Registration| {
        r.key == ours && (r.all_target_ports || r.relative_target_port == rtpi)
    };
    let mut found = fs
        .registrations
        .iter()
        .filter(ours_here)
        .find(|r| same_port(&r.transport_id, &me.id));
    if found.is_none() && me.isid_guessed {
        // The ISID was derived, not read: if it was wrong, our registration
        // carries another ISID. Take the one registration of our name on this
        // port that no other path of ours claims exactly, so a release still
        // unregisters it (I4) and a check does not register it again.
        let claimed = |r: &crate::scsi::Registration| {
            all.iter().any(|o| {
                o.dev != p.dev
                    && o.initiator
                        .as_ref()
                        .is_some_and(|i| same_port(&r.transport_id, &i.id))
            })
        };
        let mut same_name = fs
            .registrations
            .iter()
            .filter(ours_here)
            .filter(|r| !claimed(r) && same_iscsi_name(&r.transport_id, &me.id));
        found = match (same_name.next(), same_name.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        };
    }
    match found {
        Some(r) => PathRegistration::Registered {
            all_tg_pt: r.all_target_ports,
            holder: r.holder,
        },
        None => PathRegistration::NotRegistered,
    }
}

/// Both are iSCSI ports of the same initiator name, whatever their ISIDs.
fn same_iscsi_name(a: &TransportId, b: &TransportId) -> bool {
    match (a, b) {
        (TransportId::Iscsi { name: n1, .. }, TransportId::Iscsi { name: n2, .. }) => {
            n1.eq_ignore_ascii_case(n2)
        }
        _ => false,
    }
}

/// TransportID equality; iSCSI names compare without case (RFC 3720 §3.2.6).
fn same_port(a: &TransportId, b: &TransportId) -> bool {
    match (a, b) {
        (TransportId::Iscsi { name: n1, isid: i1 }, TransportId::Iscsi { name: n2, isid: i2 }) => {
            n1.eq_ignore_ascii_case(n2) && i1 == i2
        }
        _ => a == b,
    }
}

fn set_problem(out: &mut Outcome, path: &Path, problem: String) {
    if let Some(r) = out.paths.iter_mut().find(|r| r.info.dev == path) {
        r.problem = Some(problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::InitiatorPort;
    use crate::scsi::{Registration, ReservationKey};

    const NAME: &str = "iqn.2025-01.test.rig:nodea";

    fn path(dev: &str, rtpi: u16, isid: &str, guessed: bool) -> UsablePath {
        UsablePath {
            dev: PathBuf::from(dev),
            rtpi: Some(rtpi),
            initiator: Some(InitiatorPort {
                id: TransportId::Iscsi {
                    name: NAME.into(),
                    isid: Some(isid.into()),
                },
                isid_guessed: guessed,
            }),
        }
    }

    fn reg(key: u64, rtpi: u16, isid: &str) -> Registration {
        Registration {
            key: ReservationKey(key),
            all_target_ports: false,
            holder: false,
            rtype: None,
            relative_target_port: rtpi,
            transport_id: TransportId::Iscsi {
                name: NAME.into(),
                isid: Some(isid.into()),
            },
        }
    }

    fn of(paths: &[UsablePath], regs: Vec<Registration>) -> Vec<bool> {
        let fs = FullStatus {
            generation: 1,
            registrations: regs,
        };
        paths
            .iter()
            .map(|p| registration_of(p, paths, &fs, ReservationKey(0xa)).is_registered())
            .collect()
    }

    #[test]
    fn a_wrong_isid_guess_still_finds_the_paths_own_registration() {
        // The initiator numbers ISIDs its own way: no exact match on either path.
        let paths = [
            path("/dev/sdc", 1, "00023d000001", true),
            path("/dev/sdd", 2, "00023d000002", true),
        ];
        let regs = || vec![reg(0xa, 1, "400001370000"), reg(0xa, 2, "400001370001")];
        assert_eq!(
            of(&paths, regs()),
            [true, true],
            "release must unregister both"
        );
        // Read from sysfs (not guessed), a mismatch is a mismatch.
        let read = [
            path("/dev/sdc", 1, "00023d000001", false),
            path("/dev/sdd", 2, "00023d000002", false),
        ];
        assert_eq!(of(&read, regs()), [false, false]);
    }

    #[test]
    fn a_new_session_on_a_registered_port_is_not_taken_for_registered() {
        // sde is a second session through port 1; only sdc's nexus is registered.
        let paths = [
            path("/dev/sdc", 1, "00023d000001", true),
            path("/dev/sde", 1, "00023d000005", true),
        ];
        assert_eq!(of(&paths, vec![reg(0xa, 1, "00023d000001")]), [true, false]);
        // Another key on the port is never ours.
        assert_eq!(
            of(&paths, vec![reg(0xb, 1, "400001370000")]),
            [false, false]
        );
    }
}
