//! The engine's I/O: locating the LUN and proving identity, reading the PR
//! state, sending the planned steps, reading back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    registered_paths, Engine, FenceError, Located, Outcome, PathReport, UsablePath, VolumeState,
};
use crate::device::{NodeKind, PathInfo};
use crate::fence::decide::{Observed, PathRegistration, Step};
use crate::fence::state::{AttachmentId, Phase, Record};
use crate::scsi::{BasicParams, Designator, FullStatus, PrOut, TransportId, Wwid};
use crate::transport::{ScsiError, Transport};

const DEVICE_POLL: Duration = Duration::from_millis(250);

impl<T: Transport> Engine<T> {
    /// Finds the LUN's device and paths, and proves each path's identity (I3).
    pub(super) fn locate(&self, vol: &super::Volume) -> Result<Located, FenceError> {
        let (device, paths) = match &vol.device {
            Some(d) => self.explicit(d)?,
            None => {
                let l = self
                    .resolver
                    .wait(&vol.wwid, self.cfg.device_wait, DEVICE_POLL)?;
                (l.device, l.paths)
            }
        };
        // Identity is proven per path, where every PR OUT goes; not through the
        // map, whose SG_IO lands on whichever path dm picks, offline or not.
        if paths.is_empty() {
            self.verify_identity(&device, &vol.wwid)?;
        }
        let mut loc = Located {
            device,
            usable: Vec::new(),
            reports: Vec::new(),
        };
        for info in paths {
            let (usable, report) = self.check_path(info, &vol.wwid);
            loc.usable.extend(usable);
            loc.reports.push(report);
        }
        // An explicit device whose every path is another LUN: fail loudly (I3).
        if vol.device.is_some() && loc.usable.is_empty() && loc.reports.iter().any(|r| r.wrong_lun)
        {
            self.verify_identity(&loc.device, &vol.wwid)?;
        }
        Ok(loc)
    }

    fn explicit(&self, d: &Path) -> Result<(PathBuf, Vec<PathInfo>), FenceError> {
        let sysfs = self.resolver.sysfs();
        let (kind, name) = sysfs.kernel_name(d)?;
        if kind == NodeKind::Block && sysfs.is_dm(&name) {
            let paths = sysfs
                .slaves(&name)
                .iter()
                .map(|s| sysfs.path_info(s))
                .collect();
            return Ok((d.to_path_buf(), paths));
        }
        let mut info = sysfs.path_info(&name);
        info.dev = d.to_path_buf();
        Ok((d.to_path_buf(), vec![info]))
    }

    fn verify_identity(&self, dev: &Path, wwid: &Wwid) -> Result<(), FenceError> {
        let ds = self.path(dev).device_id()?;
        match Wwid::from_designations(&ds) {
            Some(w) if &w == wwid => Ok(()),
            other => Err(FenceError::IdentityMismatch {
                device: dev.to_path_buf(),
                expected: wwid.to_string(),
                found: other
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "no LU designator".into()),
            }),
        }
    }

    fn check_path(&self, info: PathInfo, wwid: &Wwid) -> (Option<UsablePath>, PathReport) {
        let mut report = PathReport {
            info,
            usable: false,
            wrong_lun: false,
            registered: false,
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

    /// Reads keys, reservation, capabilities and full status through the first
    /// path that answers, and works out which of our paths carry our key.
    pub(super) fn observe(&self, loc: &Located) -> Result<(Observed, Vec<String>), FenceError> {
        let mut readers: Vec<&Path> = loc.usable.iter().map(|p| p.dev.as_path()).collect();
        if readers.is_empty() {
            readers.push(&loc.device);
        }
        let mut last = None;
        for dev in readers {
            match self.read_state(dev) {
                Ok((mut obs, fs, uas)) => {
                    obs.paths = self.match_paths(loc, &fs);
                    return Ok((obs, uas));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(FenceError::Scsi(
            last.expect("at least one reader was tried"),
        ))
    }

    fn read_state(&self, dev: &Path) -> Result<(Observed, FullStatus, Vec<String>), ScsiError> {
        let mut p = self.path(dev);
        let keys = p.read_keys()?;
        let res = p.read_reservation()?;
        let caps = p.capabilities().ok();
        let fs = p.full_status()?;
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
        Ok((obs, fs, uas))
    }

    fn match_paths(&self, loc: &Located, fs: &FullStatus) -> Vec<(PathBuf, PathRegistration)> {
        loc.usable
            .iter()
            .map(|p| (p.dev.clone(), registration_of(p, fs, self.key)))
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
        for step in steps {
            match step {
                Step::Register { path, .. } | Step::Unregister { path, .. } => {
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
                }
                _ => {
                    if self.cfg.interrupt_after_register {
                        return Err(FenceError::Interrupted);
                    }
                    let via = self.via(step, &registered, loc).ok_or_else(|| {
                        FenceError::NoPathRegistered {
                            volume: vol.name.clone(),
                            errors: errors.join("; "),
                        }
                    })?;
                    self.path(&via).prout(&self.prout_of(step))?;
                    if let Step::Preempt { victim, .. } = step {
                        out.preempted.push(victim.clone());
                    }
                    out.steps.push(step.clone());
                }
            }
        }
        if self.cfg.interrupt_after_register
            && steps.iter().any(|s| matches!(s, Step::Register { .. }))
        {
            return Err(FenceError::Interrupted);
        }
        let wanted_registration = steps.iter().any(|s| matches!(s, Step::Register { .. }));
        if wanted_registration && registered.is_empty() {
            return Err(FenceError::NoPathRegistered {
                volume: vol.name.clone(),
                errors: errors.join("; "),
            });
        }
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

    fn prout_of(&self, step: &Step) -> PrOut {
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

    /// Reads back, sets the outcome's state and path registrations, and
    /// records `Held` under `attachment` when the key is on the LUN.
    pub(super) fn finish(
        &self,
        vol: &super::Volume,
        loc: &Located,
        out: &mut Outcome,
        attachment: Option<&AttachmentId>,
    ) -> Result<(), FenceError> {
        let (obs, uas) = self.observe(loc)?;
        out.generation.1 = obs.generation;
        out.unit_attentions.extend(uas);
        for (p, reg) in &obs.paths {
            if let Some(r) = out.paths.iter_mut().find(|r| &r.info.dev == p) {
                r.registered = reg.is_registered();
            }
        }
        let ours = obs.keys.contains(&self.key);
        let holds = obs
            .reservation
            .as_ref()
            .is_some_and(|r| r.key == self.key || r.rtype.all_registrants());
        out.state = match (ours, holds) {
            (false, _) => VolumeState::NotRegistered,
            (true, true) => VolumeState::Held,
            (true, false) => VolumeState::Registered,
        };
        if let (Some(a), true, false) = (attachment, ours, self.cfg.dry_run) {
            self.state.set(
                &vol.wwid.to_string(),
                Some(Record::now(&vol.name, Phase::Held, a)),
            )?;
        }
        Ok(())
    }
}

/// Whether READ FULL STATUS lists this path's I_T nexus with our key.
fn registration_of(
    p: &UsablePath,
    fs: &FullStatus,
    ours: crate::scsi::ReservationKey,
) -> PathRegistration {
    let Some(me) = &p.initiator else {
        return PathRegistration::Unknown;
    };
    if matches!(me, TransportId::Iscsi { isid: None, .. }) {
        return PathRegistration::Unknown;
    }
    fs.registrations
        .iter()
        .find(|r| {
            r.key == ours
                && same_port(&r.transport_id, me)
                && (r.all_target_ports || Some(r.relative_target_port) == p.rtpi)
        })
        .map(|r| PathRegistration::Registered {
            all_tg_pt: r.all_target_ports,
            holder: r.holder,
        })
        .unwrap_or(PathRegistration::NotRegistered)
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
