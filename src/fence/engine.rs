//! The fencing engine: acquire, release and check one volume's reservation,
//! deciding every step from what the LUN answers now (DESIGN §3, §5).
//!
//! Order of every operation: find the LUN and prove each path's identity (I3);
//! read the PR state; consult the fenced-state store (I1); decide (pure, in
//! [`super::decide`]); send; read back. Blocking: callers run it on a
//! blocking thread; every SCSI command is bounded by its timeout (I6).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::decide::{self, Context, KeyClasses, Observed, OtherKey, Refusal, Step};
use super::keys::ClusterTag;
use super::policy::{AccessMode, Policy};
use super::state::{AttachmentId, Phase, Record, StateError, StateStore};
use crate::device::{DeviceError, NotFound, PathInfo, Resolver};
use crate::scsi::{ReservationKey, Wwid};
use crate::transport::{RetryPolicy, ScsiError, ScsiPath, Transport};

/// A volume as the engine sees it: no Kubernetes types.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// The volume's name (a PV name), for reports.
    pub name: String,
    /// The LUN's identity.
    pub wwid: Wwid,
    /// An explicit device (map or path) instead of a lookup by WWID.
    pub device: Option<PathBuf>,
    /// Single- or multi-node.
    pub access: AccessMode,
    /// How to reserve it.
    pub policy: Policy,
}

/// The attachment that allows this node to hold the volume, and when it
/// was read fresh from its source (I1).
#[derive(Debug, Clone, Serialize)]
pub struct Authorization {
    /// VolumeAttachment UID, or the file source's generation.
    pub attachment: AttachmentId,
    /// When the source confirmed it.
    pub read_at: SystemTime,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name.
    pub node: String,
    /// This cluster's tag.
    pub tag: ClusterTag,
    /// Timeout of each SCSI command.
    pub command_timeout: Duration,
    /// Retries of UNIT ATTENTION / NOT READY per command.
    pub retry: RetryPolicy,
    /// How long to wait for a LUN that has not appeared yet.
    pub device_wait: Duration,
    /// An authorization older than this is not fresh.
    pub max_authorization_age: Duration,
    /// Every node name of the cluster, so stale keys can be named in reports.
    pub known_nodes: BTreeSet<String>,
    /// Send no PR OUT; report what would be sent.
    pub dry_run: bool,
    /// Test hook: stop right after the registrations of an acquire, as a
    /// crash there would (no read-back, no state update).
    pub interrupt_after_register: bool,
}

impl EngineConfig {
    /// Defaults for `node` in the cluster of `tag`.
    pub fn new(node: impl Into<String>, tag: ClusterTag) -> Self {
        EngineConfig {
            node: node.into(),
            tag,
            command_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            device_wait: Duration::from_secs(0),
            max_authorization_age: Duration::from_secs(60),
            known_nodes: BTreeSet::new(),
            dry_run: false,
            interrupt_after_register: false,
        }
    }
}

/// Where the volume stands for this node after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    /// Registered on the usable paths and holding the reservation
    /// (for all-registrants types: registered, so holding).
    Held,
    /// Registered, but the reservation is someone else's.
    Registered,
    /// This node's key was preempted (I7).
    Fenced,
    /// Not registered, by this node's choice (released or never acquired).
    NotRegistered,
    /// The engine refused to act; see the refusal.
    Refused,
}

/// One path as the operation found it.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    /// sysfs facts.
    #[serde(flatten)]
    pub info: PathInfo,
    /// False when the path is not used: offline, or another LUN (I3).
    pub usable: bool,
    /// The path leads to another LUN (VPD 83h differs): never ours to register.
    pub wrong_lun: bool,
    /// Carries this node's key after the operation (known from READ FULL STATUS).
    pub registered: bool,
    /// What is known of the path's registration: registered, not-registered,
    /// or unknown (its I_T nexus cannot be named from sysfs).
    pub registration: Option<super::decide::PathRegistration>,
    /// The WWID the path reports, when it is another LUN's.
    pub reports_wwid: Option<String>,
    /// Why the path is unusable or failed.
    pub problem: Option<String>,
}

/// What an operation did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The volume.
    pub volume: String,
    /// Its WWID.
    pub wwid: String,
    /// The device node used for the LUN.
    pub device: PathBuf,
    /// This node's key.
    pub key: ReservationKey,
    /// The result.
    pub state: VolumeState,
    /// Why nothing was done, when refused.
    pub refusal: Option<Refusal>,
    /// The PR OUT commands sent (or, in a dry run, that would be sent).
    pub steps: Vec<Step>,
    /// True in a dry run: `steps` were not sent.
    pub dry_run: bool,
    /// Keys removed, with their nodes.
    pub preempted: Vec<OtherKey>,
    /// Keys of live nodes (left alone) and foreign keys (reported).
    pub keys: KeyClasses,
    /// Every path.
    pub paths: Vec<PathReport>,
    /// PRGENERATION before and after.
    pub generation: (u32, u32),
    /// Unit attentions seen (e.g. "2A/05 registrations preempted" when fenced).
    pub unit_attentions: Vec<String>,
    /// The PR generation moved by more than this operation's own commands:
    /// another node changed the LUN at the same time.
    pub raced: bool,
}

/// Why an operation failed (not a refusal: something went wrong).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The LUN did not appear.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// The explicit device could not be resolved.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The device is another LUN (I3).
    #[error("{device}: identity mismatch: VPD 83h says {found}, the volume is {expected}; no PR OUT sent")]
    IdentityMismatch {
        /// The device.
        device: PathBuf,
        /// The volume's WWID.
        expected: String,
        /// What the device reports.
        found: String,
    },
    /// A SCSI command failed.
    #[error(transparent)]
    Scsi(#[from] ScsiError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No path could be registered.
    #[error("volume {volume}: registration failed on every path: {errors}")]
    NoPathRegistered {
        /// The volume.
        volume: String,
        /// The per-path errors.
        errors: String,
    },
    /// Stopped by the test hook after registering.
    #[error("interrupted after REGISTER (test hook)")]
    Interrupted,
    /// A step failed after others were sent: what was sent is listed.
    #[error("volume {volume}: {failed:?} failed after {} step(s) were sent ({done:?})", done.len())]
    Step {
        /// The volume.
        volume: String,
        /// The steps sent before the failure.
        done: Vec<Step>,
        /// The step that failed.
        failed: Box<Step>,
        /// Why.
        source: Box<ScsiError>,
    },
    /// No path of the LUN can be used; nothing is sent through the map
    /// (SG_IO there can block without a timeout when dm queues I/O).
    #[error("volume {volume}: no usable path ({reasons})")]
    NoUsablePath {
        /// The volume.
        volume: String,
        /// Each path's problem.
        reasons: String,
    },
    /// READ KEYS, READ RESERVATION and READ FULL STATUS kept disagreeing on
    /// the PR generation: the LUN was changing while it was read.
    #[error(
        "{device}: the PR state kept changing while it was read (generations {generations:?})"
    )]
    Unstable {
        /// The path read.
        device: PathBuf,
        /// The generations seen in the last attempt.
        generations: Vec<u32>,
    },
}

impl FenceError {
    /// A small label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FenceError::NotFound(_) | FenceError::Device(_) => "device_not_found",
            FenceError::IdentityMismatch { .. } => "identity_mismatch",
            FenceError::Scsi(e) => e.kind(),
            FenceError::State(_) => "state_store",
            FenceError::NoPathRegistered { .. } => "no_path_registered",
            FenceError::Interrupted => "interrupted",
            FenceError::Step { source, .. } => source.kind(),
            FenceError::NoUsablePath { .. } => "no_usable_path",
            FenceError::Unstable { .. } => "unstable",
        }
    }
}

/// A usable path: identity proven, nexus named where sysfs can.
#[derive(Debug, Clone)]
struct UsablePath {
    dev: PathBuf,
    rtpi: Option<u16>,
    initiator: Option<crate::device::InitiatorPort>,
}

/// The LUN as located for one operation.
struct Located {
    device: PathBuf,
    usable: Vec<UsablePath>,
    reports: Vec<PathReport>,
}

/// The engine for one node.
pub struct Engine<T: Transport> {
    cfg: EngineConfig,
    key: ReservationKey,
    transport: T,
    resolver: Resolver,
    state: StateStore,
}

impl<T: Transport> Engine<T> {
    /// An engine sending through `transport`, finding LUNs with `resolver`.
    pub fn new(cfg: EngineConfig, transport: T, resolver: Resolver, state: StateStore) -> Self {
        let key = cfg.tag.key_for(&cfg.node);
        Engine {
            cfg,
            key,
            transport,
            resolver,
            state,
        }
    }

    /// This node's key.
    pub fn key(&self) -> ReservationKey {
        self.key
    }

    /// The transport (benchmarks read their stopwatch from it).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn path(&self, dev: &Path) -> ScsiPath<'_> {
        ScsiPath::new(&self.transport, dev, self.cfg.command_timeout).with_retry(self.cfg.retry)
    }

    /// Takes the volume for this node (DESIGN §5 "Acquire").
    pub fn acquire(
        &self,
        vol: &Volume,
        auth: &Authorization,
        live: &BTreeSet<String>,
    ) -> Result<Outcome, FenceError> {
        let loc = self.locate(vol)?;
        let mut out = self.outcome(vol, &loc);
        if let Some(r) = self.unfresh_authorization(auth) {
            return Ok(out.refused(r));
        }
        let rec = self.record_for(vol, Some(&auth.attachment))?;
        // Only PR IN until the fence checks below have passed (I1).
        let obs = self.observe_into(&loc, &mut out)?;
        let (lives, known) = self.key_maps(live);
        let ctx = self.context(vol, &lives, &known);
        out.keys = decide::classify(&obs.keys, &ctx);
        if let Some(r) = rec.as_ref().filter(|r| preempted_under(r, &obs, self.key)) {
            self.note(
                vol,
                Phase::Fenced,
                &r.attachment,
                obs.generation,
                r.phase != Phase::Fenced,
            )?;
            return Ok(out.refused(fenced(auth)));
        }
        let steps = match decide::plan_acquire(&obs, &ctx) {
            Ok(s) => s,
            Err(r) => return Ok(out.refused(r)),
        };
        // The intent goes to disk before the first REGISTER, with the PR
        // generation it starts from: a crash anywhere after it is recoverable.
        let registers = steps.iter().any(|s| matches!(s, Step::Register { .. }));
        self.note(
            vol,
            Phase::Registering,
            &auth.attachment,
            obs.generation,
            registers && rec.is_none(),
        )?;
        self.execute(vol, &loc, &obs, &steps, &mut out)?;
        self.finish(&loc, &mut out, &obs, &steps)?;
        self.settle(vol, &auth.attachment, &out)?;
        Ok(out)
    }

    /// Gives the volume up (DESIGN §5 "Release"): only this node's
    /// registrations. A "fenced under X" record is kept (I1); any other
    /// record goes once the key is gone.
    pub fn release(&self, vol: &Volume) -> Result<Outcome, FenceError> {
        let loc = self.locate(vol)?;
        let mut out = self.outcome(vol, &loc);
        let rec = self.record_for(vol, None)?;
        let obs = self.observe_into(&loc, &mut out)?;
        let empty = BTreeMap::new();
        let ctx = self.context(vol, &empty, &empty);
        out.keys = decide::classify(&obs.keys, &ctx);
        let steps = decide::plan_release(&obs, &ctx);
        self.execute(vol, &loc, &obs, &steps, &mut out)?;
        self.finish(&loc, &mut out, &obs, &steps)?;
        let gone = out.state == VolumeState::NotRegistered;
        if gone && !self.cfg.dry_run && rec.is_some_and(|r| r.phase != Phase::Fenced) {
            self.state.set(&vol.wwid.to_string(), None)?;
        }
        Ok(out)
    }

    /// The monitor (DESIGN §5 "Monitor"): is our key still there (I7), are
    /// new paths registered (I5); reports stale and foreign keys.
    pub fn check(&self, vol: &Volume, live: &BTreeSet<String>) -> Result<Outcome, FenceError> {
        let loc = self.locate(vol)?;
        let mut out = self.outcome(vol, &loc);
        let rec = self.record_for(vol, None)?;
        let obs = self.observe_into(&loc, &mut out)?;
        let (lives, known) = self.key_maps(live);
        let ctx = self.context(vol, &lives, &known);
        out.keys = decide::classify(&obs.keys, &ctx);
        if !out.keys.ours_present {
            out.state = VolumeState::NotRegistered;
            if let Some(r) = rec.filter(|r| preempted_under(r, &obs, self.key)) {
                self.note(
                    vol,
                    Phase::Fenced,
                    &r.attachment,
                    obs.generation,
                    r.phase != Phase::Fenced,
                )?;
                out.state = VolumeState::Fenced;
            }
            return Ok(out);
        }
        let steps = decide::plan_check(&obs, &ctx);
        self.execute(vol, &loc, &obs, &steps, &mut out)?;
        self.finish(&loc, &mut out, &obs, &steps)?;
        if out.raced {
            self.undo_registrations(vol, &loc, &obs, &steps, &mut out, rec.as_ref())?;
        }
        Ok(out)
    }

    /// The record of this LUN, if it belongs to `attachment` (or any, with `None`).
    fn record_for(
        &self,
        vol: &Volume,
        attachment: Option<&AttachmentId>,
    ) -> Result<Option<Record>, FenceError> {
        let rec = self.state.get(&vol.wwid.to_string())?;
        Ok(rec.filter(|r| attachment.is_none_or(|a| &r.attachment == a)))
    }

    /// Writes a record when `when` holds (never in a dry run).
    fn note(
        &self,
        vol: &Volume,
        phase: Phase,
        a: &AttachmentId,
        generation: u32,
        when: bool,
    ) -> Result<(), FenceError> {
        if when && !self.cfg.dry_run {
            let rec = Record::now(&vol.name, phase, a).at_generation(generation);
            self.state.set(&vol.wwid.to_string(), Some(rec))?;
        }
        Ok(())
    }

    /// After an acquire: Held when the key is on the LUN, Fenced when a
    /// concurrent preemption took it (the generation moved under us).
    fn settle(&self, vol: &Volume, a: &AttachmentId, out: &Outcome) -> Result<(), FenceError> {
        match out.state {
            VolumeState::Held | VolumeState::Registered => {
                self.note(vol, Phase::Held, a, out.generation.1, true)
            }
            _ if out.raced => self.note(vol, Phase::Fenced, a, out.generation.1, true),
            _ => Ok(()),
        }
    }

    /// The LUN changed under a check's new registrations: another node acted
    /// between our read and our REGISTER, possibly preempting us. Take the
    /// new registrations back (multipathd does the same) and read again; a
    /// later check registers them if the key is still ours.
    fn undo_registrations(
        &self,
        vol: &Volume,
        loc: &Located,
        obs: &Observed,
        steps: &[Step],
        out: &mut Outcome,
        rec: Option<&Record>,
    ) -> Result<(), FenceError> {
        for s in steps {
            if let Step::Register {
                path, all_tg_pt, ..
            } = s
            {
                let undo = Step::Unregister {
                    path: path.clone(),
                    all_tg_pt: *all_tg_pt,
                    ignore_existing: true,
                };
                self.path(path).prout(&self.prout_of(&undo))?;
                out.steps.push(undo);
            }
        }
        self.finish(loc, out, obs, &[])?;
        out.raced = true;
        if out.state == VolumeState::NotRegistered {
            out.state = VolumeState::Fenced;
            if let Some(r) = rec {
                self.note(vol, Phase::Fenced, &r.attachment, out.generation.1, true)?;
            }
        }
        Ok(())
    }

    fn unfresh_authorization(&self, auth: &Authorization) -> Option<Refusal> {
        let now = SystemTime::now();
        if let Ok(ahead) = auth.read_at.duration_since(now) {
            // A read "from the future" is a clock problem, not freshness.
            if ahead > CLOCK_SKEW {
                return Some(Refusal::ClockSkew {
                    attachment: auth.attachment.to_string(),
                    ahead_secs: ahead.as_secs(),
                });
            }
        }
        let age = now.duration_since(auth.read_at).unwrap_or(Duration::ZERO);
        (age > self.cfg.max_authorization_age).then(|| Refusal::StaleAuthorization {
            attachment: auth.attachment.to_string(),
            age_secs: age.as_secs(),
            max_secs: self.cfg.max_authorization_age.as_secs(),
        })
    }

    fn key_maps(
        &self,
        live: &BTreeSet<String>,
    ) -> (
        BTreeMap<ReservationKey, String>,
        BTreeMap<ReservationKey, String>,
    ) {
        let names = |set: &BTreeSet<String>| -> BTreeMap<ReservationKey, String> {
            set.iter()
                .map(|n| (self.cfg.tag.key_for(n), n.clone()))
                .collect()
        };
        let mut lives = names(live);
        lives.insert(self.key, self.cfg.node.clone());
        let mut known = names(&self.cfg.known_nodes);
        known.extend(lives.clone());
        (lives, known)
    }

    fn context<'a>(
        &self,
        vol: &'a Volume,
        live: &'a BTreeMap<ReservationKey, String>,
        known: &'a BTreeMap<ReservationKey, String>,
    ) -> Context<'a> {
        Context {
            ours: self.key,
            tag: self.cfg.tag,
            live,
            known,
            access: vol.access,
            policy: &vol.policy,
        }
    }

    fn outcome(&self, vol: &Volume, loc: &Located) -> Outcome {
        Outcome {
            volume: vol.name.clone(),
            wwid: vol.wwid.to_string(),
            device: loc.device.clone(),
            key: self.key,
            state: VolumeState::NotRegistered,
            refusal: None,
            steps: Vec::new(),
            dry_run: self.cfg.dry_run,
            preempted: Vec::new(),
            keys: KeyClasses::default(),
            paths: loc.reports.clone(),
            generation: (0, 0),
            unit_attentions: Vec::new(),
            raced: false,
        }
    }
}

fn fenced(auth: &Authorization) -> Refusal {
    Refusal::Fenced {
        attachment: auth.attachment.to_string(),
    }
}

/// True when the record shows this node held (or was registering) under the
/// attachment and the LUN shows it was preempted since.
fn preempted_under(rec: &Record, obs: &Observed, ours: ReservationKey) -> bool {
    let ours_present = obs.keys.contains(&ours);
    match rec.phase {
        Phase::Held => !ours_present,
        // Registering and gone: fenced only if the LUN changed since the
        // intent was noted; unchanged means the REGISTER never landed.
        Phase::Registering => {
            !ours_present
                && match rec.generation {
                    Some(g) => obs.generation != g,
                    None => obs.reservation.is_some() || !obs.keys.is_empty(),
                }
        }
        Phase::Fenced => true,
    }
}

/// How far ahead of this node's clock an authorization may be read.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

fn registered_paths(obs: &Observed) -> Vec<PathBuf> {
    obs.paths
        .iter()
        .filter(|(_, r)| r.is_registered())
        .map(|(p, _)| p.clone())
        .collect()
}

impl Outcome {
    fn refused(mut self, r: Refusal) -> Outcome {
        self.state = match r {
            Refusal::Fenced { .. } => VolumeState::Fenced,
            _ => VolumeState::Refused,
        };
        self.refusal = Some(r);
        self
    }
}

mod io;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{Reservation, ReservationType, Scope};

    fn obs(keys: &[u64], reserved_by: Option<u64>) -> Observed {
        Observed {
            generation: 1,
            keys: keys.iter().map(|&k| ReservationKey(k)).collect(),
            reservation: reserved_by.map(|k| Reservation {
                key: ReservationKey(k),
                scope: Scope::LogicalUnit,
                rtype: ReservationType::WriteExclusiveRegistrantsOnly,
            }),
            caps: None,
            paths: vec![],
        }
    }

    /// I1: which records, with which LUN state, mean "fenced under this attachment".
    #[test]
    fn preempted_under_table() {
        let ours = ReservationKey(0xa);
        let rec = |phase, generation: Option<u32>| Record {
            generation,
            ..Record::now("pv", phase, &AttachmentId("gen-1".into()))
        };
        let at = |g: u32, o: Observed| Observed { generation: g, ..o };
        #[rustfmt::skip]
        let rows = [
            (rec(Phase::Held, Some(1)), at(1, obs(&[0xa, 0xa], Some(0xa))), false, "still held"),
            (rec(Phase::Held, Some(1)), at(3, obs(&[0xb], Some(0xb))), true, "held, key gone: preempted"),
            (rec(Phase::Held, Some(1)), at(4, obs(&[], None)), true, "held, LUN cleared: treated as fenced"),
            (rec(Phase::Registering, Some(5)), at(5, obs(&[], None)), false, "REGISTER never landed on an empty LUN"),
            (rec(Phase::Registering, Some(5)), at(5, obs(&[0xb], Some(0xb))), false, "REGISTER never landed (failover retry)"),
            (rec(Phase::Registering, Some(5)), at(8, obs(&[0xb], Some(0xb))), true, "registering, the LUN moved, key gone"),
            (rec(Phase::Registering, Some(5)), at(6, obs(&[0xa], None)), false, "registered, crash before RESERVE"),
            (rec(Phase::Registering, None), at(9, obs(&[0xb], Some(0xb))), true, "old record without generation: conservative"),
            (rec(Phase::Fenced, Some(1)), at(1, obs(&[], None)), true, "fenced stays fenced"),
        ];
        for (r, o, want, why) in rows {
            assert_eq!(preempted_under(&r, &o, ours), want, "{why}");
        }
    }

    #[test]
    fn fenced_refusal_names_the_attachment() {
        let a = Authorization {
            attachment: AttachmentId("uid-7".into()),
            read_at: SystemTime::now(),
        };
        let r = fenced(&a);
        assert!(r.to_string().contains("uid-7"), "{r}");
    }
}

/// The engine end to end over a sysfs fixture and a scripted transport: the
/// race that only the PR generation reveals (I1/I5).
#[cfg(test)]
mod race_tests {
    use super::*;
    use crate::device::Sysfs;
    use crate::scsi::{Capabilities, ReservationType, TransportId};
    use crate::testutil::TempDir;
    use crate::transport::scripted::Scripted;
    use crate::transport::Completion;

    const NAA: [u8; 8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 1];
    const A: &str = "iqn.2025-01.test.rig:nodea";

    fn fixture() -> TempDir {
        crate::testutil::iscsi_fixture(A)
    }

    fn vpd83(rtpi: u8) -> Completion {
        let mut body = vec![0x01, 0x03, 0x00, 0x08];
        body.extend_from_slice(&NAA);
        body.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0, 0, 0, rtpi]);
        let mut b = vec![0x00, 0x83, 0x00, body.len() as u8];
        b.extend(body);
        Completion::good(b)
    }

    fn header(generation: u32, body: Vec<u8>) -> Completion {
        let mut b = generation.to_be_bytes().to_vec();
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend(body);
        Completion::good(b)
    }

    /// READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS, all at `g`.
    fn state(g: u32, regs: &[(ReservationKey, u8)], holder: ReservationKey) -> Vec<Completion> {
        let keys = regs.iter().flat_map(|(k, _)| k.to_bytes()).collect();
        let mut res = holder.to_bytes().to_vec();
        res.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        let mut fs = Vec::new();
        for (k, sess) in regs {
            let tid = TransportId::Iscsi {
                name: A.into(),
                isid: Some(format!("00023d00000{sess}")),
            }
            .encode();
            fs.extend_from_slice(&k.to_bytes());
            fs.extend_from_slice(&[
                0,
                0,
                0,
                0,
                u8::from(*k == holder),
                if *k == holder { 5 } else { 0 },
                0,
                0,
                0,
                0,
                0,
                *sess,
            ]);
            fs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            fs.extend(tid);
        }
        let caps = Capabilities {
            type_mask_valid: true,
            types: ReservationType::ALL.to_vec(),
            ..Default::default()
        };
        vec![
            header(g, keys),
            header(g, res),
            Completion::good(caps.encode()),
            header(g, fs),
        ]
    }

    #[test]
    fn a_check_that_raced_with_a_preemption_takes_its_new_registration_back() {
        let d = fixture();
        let tag = ClusterTag::new(0x7e57).unwrap();
        let (ours, theirs) = (tag.key_for("node-a"), tag.key_for("node-b"));
        let mut answers = vec![vpd83(1), vpd83(2)];
        // Before: our key on sdc only, we hold the reservation (generation 5).
        answers.extend(state(5, &[(ours, 1)], ours));
        answers.push(Completion::good(vec![])); // REGISTER on sdd
                                                // After: generation 8, not 6: node-b preempted us meanwhile; only our
                                                // new sdd registration (made after the preemption) is left.
        answers.extend(state(8, &[(theirs, 3), (ours, 2)], theirs));
        answers.push(Completion::good(vec![])); // the undo on sdd
        answers.extend(state(9, &[(theirs, 3)], theirs));
        let t = Scripted::new(answers);
        let state_dir = d.path().join("state");
        let store = StateStore::open(&state_dir).unwrap();
        let wwid = Wwid::Naa(NAA.to_vec());
        store
            .set(
                &wwid.to_string(),
                Some(Record::now("pv", Phase::Held, &AttachmentId("g1".into()))),
            )
            .unwrap();
        let e = Engine::new(
            EngineConfig::new("node-a", tag),
            &t,
            Resolver::new(Sysfs::new(d.path(), "/dev"), "mpath-"),
            store,
        );
        let vol = Volume {
            name: "pv".into(),
            wwid: wwid.clone(),
            device: None,
            access: AccessMode::SingleNode,
            policy: Policy::default(),
        };
        let out = e.check(&vol, &BTreeSet::new()).unwrap();
        assert!(out.raced, "the generation moved by more than our REGISTER");
        assert_eq!(out.state, VolumeState::Fenced);
        let kinds: Vec<_> = out
            .steps
            .iter()
            .map(|s| serde_json::to_value(s).unwrap()["step"].clone())
            .collect();
        assert_eq!(kinds, vec!["register", "unregister"]);
        let sent = t.sent();
        let undo = &sent[sent.len() - 5];
        assert_eq!(undo.device, PathBuf::from("/dev/sdd"));
        assert_eq!(
            undo.cdb.as_bytes()[1],
            6,
            "REGISTER AND IGNORE EXISTING KEY"
        );
        assert_eq!(&undo.data_out[8..16], &[0u8; 8], "with SARK 0: unregister");
        let rec = StateStore::open(&state_dir)
            .unwrap()
            .get(&wwid.to_string())
            .unwrap()
            .unwrap();
        assert_eq!(
            rec.phase,
            Phase::Fenced,
            "remembered: never re-registered under g1"
        );
    }
}
