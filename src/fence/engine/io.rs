//! The engine's reading side: locating the LUN and proving identity, reading
//! the PR state (learning once what the target supports), matching
//! registrations to this node's paths.
//!
//! Nothing here sends SG_IO to a dm map: through a map it lands on whichever
//! path dm picks, and with `queue_if_no_path` and every path down it can
//! block without any timeout. Every command goes to a verified path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    identity, Attentions, Engine, FenceError, Located, LunCaps, PathReport, Run, UsablePath,
    VolumeState,
};
use crate::device::PathInfo;
use crate::fence::decide::{self, Observed, PathRegistration, Signs};
use crate::fence::state::{Record, Stage};
use crate::scsi::{Designator, FullStatus, Reservation, ReservationKey, TransportId, Wwid};
use crate::transport::{ScsiError, Transport};

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
        // The number first: if the name moves to another device after the
        // VPD read, the number taken before it no longer matches (I3).
        let devnum = self.transport.device_number(&report.info.dev);
        let (ds, initiator) = match self.identity(&report.info, devnum) {
            Ok(proof) => proof,
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
            id: report
                .info
                .hctl
                .clone()
                .unwrap_or_else(|| report.info.name.clone()),
            devnum,
            rtpi,
            initiator,
        };
        (Some(usable), report)
    }

    /// The path's designations and initiator port: as last proven, while
    /// nothing that sysfs and the device number tell has changed, else from
    /// VPD 83h and sysfs.
    fn identity(&self, info: &PathInfo, devnum: Option<u64>) -> Result<identity::Proof, ScsiError> {
        let seen = identity::Seen {
            devnum,
            hctl: info.hctl.clone(),
            kernel_wwid: self.resolver.system_wwid(info),
        };
        if let Some(proof) = self.ids.get(&info.dev, &seen) {
            return Ok(proof);
        }
        match self.path(&info.dev).device_id() {
            Ok(ds) => {
                let initiator = self.resolver.initiator_port(info);
                self.ids.put(&info.dev, seen, &ds, initiator.clone());
                Ok((ds, initiator))
            }
            Err(e) => {
                self.ids.forget(&info.dev);
                Err(e)
            }
        }
    }

    /// Reads the PR state and records it in the run's outcome.
    pub(super) fn observe_into(
        &self,
        run: &mut Run<'_>,
        first: bool,
    ) -> Result<Observed, FenceError> {
        let (obs, uas) = self.observe(run)?;
        if first {
            run.out.generation.0 = obs.generation;
        }
        run.out.generation.1 = obs.generation;
        run.out.unit_attentions.extend(uas);
        set_registrations(&mut run.out, &obs);
        Ok(obs)
    }

    fn observe(&self, run: &Run<'_>) -> Result<(Observed, Vec<String>), FenceError> {
        let loc = &run.loc;
        // Which paths carry the key is known from the LUN's record whatever
        // attachment wrote it: a new attachment inherits the registrations.
        let known = self.state.get(&run.vol.wwid.to_string())?;
        let rec = known.as_ref();
        if loc.usable.is_empty() {
            return Err(no_usable_path(&run.vol.name, loc));
        }
        let wwid = run.vol.wwid.to_string();
        let mut caps = self.lun_caps(&wwid);
        let mut last = None;
        // The preferred path first (a check's read-back goes through a path
        // registered before it, whose attention would tell of a preemption).
        let mut order: Vec<&UsablePath> = loc.usable.iter().collect();
        if let Some(i) = run
            .prefer
            .as_ref()
            .and_then(|d| order.iter().position(|u| &u.dev == d))
        {
            order.rotate_left(i);
        }
        for p in order {
            match self.consistent_state(&p.dev, &wwid, &run.att, &mut caps) {
                Ok((mut obs, fs, uas)) => {
                    if let Ok(mut all) = self.caps.lock() {
                        // Learned across a change of microcode or inquiry
                        // data: asked again next time.
                        match obs.signs.features_changed {
                            true => all.remove(&wwid),
                            false => all.insert(wwid.clone(), caps.clone()),
                        };
                    }
                    obs.paths = self.match_paths(loc, fs.as_ref(), rec, obs.ours_count > 0);
                    return Ok((obs, uas));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| no_usable_path(&run.vol.name, loc)))
    }

    /// What is known of the LUN's optional features.
    pub(super) fn lun_caps(&self, wwid: &str) -> LunCaps {
        self.caps
            .lock()
            .ok()
            .and_then(|c| c.get(wwid).cloned())
            .unwrap_or_default()
    }

    /// Notes that the target refused PREEMPT AND ABORT.
    pub(super) fn learn_no_preempt_and_abort(&self, wwid: &str) {
        if let Ok(mut all) = self.caps.lock() {
            all.entry(wwid.to_string())
                .or_default()
                .no_preempt_and_abort = true;
        }
    }

    /// One consistent reading of the PR state: READ FULL STATUS alone where
    /// the target has it (keys, holder and type under one generation), else
    /// READ KEYS and READ RESERVATION, again until their generations agree:
    /// a decision must never mix a state from before another node's PR OUT
    /// with one from after it. REPORT CAPABILITIES is asked once per LUN.
    fn consistent_state(
        &self,
        dev: &Path,
        wwid: &str,
        att: &Attentions,
        caps: &mut LunCaps,
    ) -> Result<(Observed, Option<FullStatus>, Vec<String>), FenceError> {
        let mut seen = Vec::new();
        // One path object for every attempt: a unit attention consumed by a
        // discarded attempt still tells what happened.
        let fresh = att.open(dev);
        let noted = |s: &crate::scsi::Sense| self.unit_attention(wwid, att, fresh, s);
        let lost = || self.note_blind(wwid);
        let mut p = self
            .path(dev)
            .on_unit_attention(&noted)
            .on_lost_answer(&lost);
        if !caps.asked {
            let c = p.capabilities();
            att.answered(dev, &c);
            match c {
                Ok(c) => (caps.report, caps.asked) = (Some(c), true),
                Err(ScsiError::Unsupported { .. }) => (caps.report, caps.asked) = (None, true),
                Err(_) => {}
            }
        }
        if !caps.no_full_status {
            let fs = p.full_status();
            att.answered(dev, &fs);
            match fs {
                Ok(fs) => {
                    let (keys, reservation) = decide::from_full_status(&fs);
                    let obs = self.observed(fs.generation, keys, reservation, caps, &p, true);
                    return Ok((obs, Some(fs), attentions_of(dev, &p)));
                }
                Err(ScsiError::Unsupported { .. }) => caps.no_full_status = true,
                Err(e) => return Err(e.into()),
            }
        }
        for _ in 0..CONSISTENT_READ_ATTEMPTS {
            let keys = p.read_keys();
            att.answered(dev, &keys);
            let keys = keys?;
            // A unit attention met by a later read of the same attempt says
            // the LUN changed between the reads (a reset even sets the
            // generation back, so the generations alone may agree).
            let settled = p.unit_attentions().len();
            let res = p.read_reservation()?;
            seen = vec![keys.generation, res.generation];
            let quiet = p.unit_attentions().len() == settled;
            if quiet && keys.generation == res.generation {
                let obs =
                    self.observed(keys.generation, keys.keys, res.reservation, caps, &p, false);
                return Ok((obs, None, attentions_of(dev, &p)));
            }
        }
        Err(FenceError::Unstable {
            device: dev.to_path_buf(),
            generations: seen,
        })
    }

    /// An observation from one consistent reading (its paths matched later).
    fn observed(
        &self,
        generation: u32,
        keys: Vec<ReservationKey>,
        reservation: Option<Reservation>,
        caps: &LunCaps,
        p: &crate::transport::ScsiPath<'_>,
        full_status: bool,
    ) -> Observed {
        let ours_count = keys.iter().filter(|k| **k == self.key).count() as u32;
        Observed {
            generation,
            keys,
            reservation,
            caps: caps.report.clone(),
            paths: Vec::new(),
            ours_count,
            full_status,
            no_preempt_and_abort: caps.no_preempt_and_abort,
            signs: Signs::from_unit_attentions(p.unit_attentions()),
        }
    }

    /// A unit attention, the moment it is consumed: a reset (29/xx) is
    /// written down at once (see [`Engine::note_reset`]); a crash right
    /// after must not forget it.
    pub(super) fn unit_attention(
        &self,
        wwid: &str,
        att: &Attentions,
        fresh: bool,
        s: &crate::scsi::Sense,
    ) {
        att.met(s, fresh);
        if identity::unsettles_identity(s) {
            self.ids.forget_lun(wwid);
        }
        let noted = match (s.asc, s.ascq) {
            (0x29, _) => self.note_reset(wwid),
            (0x2a, 0x05) if fresh => self.note_preempted(wwid),
            _ => Ok(()),
        };
        if let Err(e) = noted {
            tracing::warn!(wwid, "{e}");
        }
    }

    /// Each usable path's registration: from READ FULL STATUS where the
    /// nexus can be named, else from the record of what this node
    /// registered (never re-registered by reflex).
    fn match_paths(
        &self,
        loc: &Located,
        fs: Option<&FullStatus>,
        rec: Option<&Record>,
        ours_present: bool,
    ) -> Vec<(PathBuf, PathRegistration)> {
        loc.usable
            .iter()
            .map(|p| {
                let from_lun = match fs {
                    Some(fs) => registration_of(p, &loc.usable, fs, self.key),
                    None => PathRegistration::Unknown,
                };
                let reg = match from_lun {
                    PathRegistration::Unknown if !ours_present => PathRegistration::NotRegistered,
                    // The record names every path this node registered or
                    // was about to (written before each REGISTER): a path it
                    // does not name carries no key of ours.
                    PathRegistration::Unknown => match rec {
                        Some(r) if r.paths.contains(&p.id) => PathRegistration::Registered {
                            all_tg_pt: r.all_tg_pt,
                            holder: false,
                        },
                        Some(r) if r.stage != Stage::Fenced => PathRegistration::NotRegistered,
                        _ => PathRegistration::Unknown,
                    },
                    known => known,
                };
                (p.dev.clone(), reg)
            })
            .collect()
    }
}

/// The unit attentions a path met, as the outcome reports them.
fn attentions_of(dev: &Path, p: &crate::transport::ScsiPath<'_>) -> Vec<String> {
    p.unit_attentions()
        .iter()
        .map(|s| format!("{}: {s}", dev.display()))
        .collect()
}

fn no_usable_path(volume: &str, loc: &Located) -> FenceError {
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
    FenceError::NoUsablePath {
        volume: volume.to_string(),
        reasons: if reasons.is_empty() {
            "the map has no paths".into()
        } else {
            reasons.join("; ")
        },
    }
}

/// The record's `paths`: the ids of the usable paths that carry our key
/// now, and the paths the record named that this operation could not use
/// (an unusable path keeps whatever registration it had).
pub(super) fn remembered(loc: &Located, obs: &Observed, prev: Option<&Record>) -> Vec<String> {
    let mut ids: Vec<String> = obs
        .paths
        .iter()
        .filter(|(_, r)| r.is_registered())
        .filter_map(|(dev, _)| loc.usable.iter().find(|u| &u.dev == dev))
        .map(|u| u.id.clone())
        .collect();
    let used = |id: &String| loc.usable.iter().any(|u| &u.id == id);
    if let Some(p) = prev.filter(|p| p.stage != Stage::Fenced) {
        ids.extend(p.paths.iter().filter(|id| !used(id)).cloned());
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The record's ids of these paths, sorted.
pub(super) fn ids_of(loc: &Located, paths: &[PathBuf]) -> Vec<String> {
    let mut ids: Vec<String> = loc
        .usable
        .iter()
        .filter(|u| paths.contains(&u.dev))
        .map(|u| u.id.clone())
        .collect();
    ids.sort();
    ids
}

pub(super) fn state_of(obs: &Observed, ours: ReservationKey) -> VolumeState {
    let present = obs.ours_count > 0;
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

pub(super) fn set_registrations(out: &mut super::Outcome, obs: &Observed) {
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
    ours: ReservationKey,
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

/// The observation knows this path carries none of our keys.
pub(super) fn known_unregistered(obs: &Observed, path: &Path) -> bool {
    obs.paths
        .iter()
        .any(|(q, r)| q == path && *r == PathRegistration::NotRegistered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::InitiatorPort;
    use crate::scsi::Registration;

    const NAME: &str = "iqn.2025-01.test.rig:nodea";

    fn path(dev: &str, rtpi: u16, isid: &str, guessed: bool) -> UsablePath {
        UsablePath {
            dev: PathBuf::from(dev),
            id: dev.into(),
            devnum: None,
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
