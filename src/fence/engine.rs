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
use crate::scsi::{BasicParams, PrOut, ReservationKey, TransportId, Wwid};
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
    /// Carries this node's key after the operation.
    pub registered: bool,
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
        }
    }
}

/// A usable path: identity proven, nexus named where sysfs can.
#[derive(Debug, Clone)]
struct UsablePath {
    dev: PathBuf,
    rtpi: Option<u16>,
    initiator: Option<TransportId>,
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
        if let Some(r) = self.stale_authorization(auth) {
            return Ok(out.refused(r));
        }
        let wwid = vol.wwid.to_string();
        let rec = self
            .state
            .get(&wwid)
            .filter(|r| r.attachment == auth.attachment);
        // Only PR IN until the fence checks below have passed (I1).
        let (obs, uas) = self.observe(&loc)?;
        out.record_observation(&obs, uas);
        let (lives, known) = self.key_maps(live);
        let ctx = self.context(vol, &lives, &known);
        out.keys = decide::classify(&obs.keys, &ctx);
        if let Some(r) = rec.filter(|r| preempted_under(r, &obs, self.key)) {
            if r.phase != Phase::Fenced {
                let fenced = Record::now(&vol.name, Phase::Fenced, &r.attachment);
                self.state.set(&wwid, Some(fenced))?;
            }
            return Ok(out.refused(fenced(auth)));
        }
        let steps = match decide::plan_acquire(&obs, &ctx) {
            Ok(s) => s,
            Err(r) => return Ok(out.refused(r)),
        };
        if !steps.is_empty() && !out.keys.ours_present && !self.cfg.dry_run {
            self.state.set(
                &wwid,
                Some(Record::now(&vol.name, Phase::Registering, &auth.attachment)),
            )?;
        }
        self.execute(vol, &loc, &obs, &steps, &mut out)?;
        self.finish(vol, &loc, &mut out, Some(&auth.attachment))?;
        Ok(out)
    }

    /// Gives the volume up (DESIGN §5 "Release"): only this node's registrations.
    pub fn release(&self, vol: &Volume) -> Result<Outcome, FenceError> {
        let loc = self.locate(vol)?;
        let mut out = self.outcome(vol, &loc);
        let (obs, uas) = self.observe(&loc)?;
        out.record_observation(&obs, uas);
        let empty = BTreeMap::new();
        let ctx = self.context(vol, &empty, &empty);
        out.keys = decide::classify(&obs.keys, &ctx);
        let steps = decide::plan_release(&obs, &ctx);
        self.execute(vol, &loc, &obs, &steps, &mut out)?;
        self.finish(vol, &loc, &mut out, None)?;
        if !self.cfg.dry_run {
            self.state.set(&vol.wwid.to_string(), None)?;
        }
        Ok(out)
    }

    /// The monitor (DESIGN §5 "Monitor"): is our key still there (I7), are
    /// new paths registered (I5); reports stale and foreign keys.
    pub fn check(&self, vol: &Volume, live: &BTreeSet<String>) -> Result<Outcome, FenceError> {
        let loc = self.locate(vol)?;
        let mut out = self.outcome(vol, &loc);
        let (obs, uas) = self.observe(&loc)?;
        out.record_observation(&obs, uas);
        let (lives, known) = self.key_maps(live);
        let ctx = self.context(vol, &lives, &known);
        out.keys = decide::classify(&obs.keys, &ctx);
        let wwid = vol.wwid.to_string();
        let rec = self.state.get(&wwid);
        if !out.keys.ours_present {
            out.state = self.fenced_or_not(vol, rec.as_ref())?;
            return Ok(out);
        }
        let steps = decide::plan_check(&obs, &ctx);
        let before: Vec<PathBuf> = registered_paths(&obs);
        self.execute(vol, &loc, &obs, &steps, &mut out)?;
        let attachment = rec.as_ref().map(|r| r.attachment.clone());
        self.finish(vol, &loc, &mut out, None)?;
        self.undo_if_raced(vol, &loc, &before, &steps, &mut out, attachment)?;
        Ok(out)
    }

    fn fenced_or_not(&self, vol: &Volume, rec: Option<&Record>) -> Result<VolumeState, FenceError> {
        match rec {
            Some(r) if matches!(r.phase, Phase::Held | Phase::Fenced) => {
                if r.phase == Phase::Held && !self.cfg.dry_run {
                    let fenced = Record::now(&vol.name, Phase::Fenced, &r.attachment);
                    self.state.set(&vol.wwid.to_string(), Some(fenced))?;
                }
                Ok(VolumeState::Fenced)
            }
            _ => Ok(VolumeState::NotRegistered),
        }
    }

    /// A new path registered during a check while a preemption removed the
    /// key from the others: take the new registration back (multipathd does
    /// the same) and report the node fenced.
    fn undo_if_raced(
        &self,
        vol: &Volume,
        loc: &Located,
        before: &[PathBuf],
        steps: &[Step],
        out: &mut Outcome,
        attachment: Option<AttachmentId>,
    ) -> Result<(), FenceError> {
        if steps.is_empty() || self.cfg.dry_run {
            return Ok(());
        }
        let still = |p: &PathBuf| out.paths.iter().any(|r| &r.info.dev == p && r.registered);
        if before.iter().all(still) {
            return Ok(());
        }
        for s in steps {
            if let Step::Register { path, .. } = s {
                let undo = PrOut::Register(BasicParams {
                    key: self.key,
                    ..Default::default()
                });
                let _ = self.path(path).prout(&undo);
            }
        }
        if let Some(a) = attachment {
            self.state.set(
                &vol.wwid.to_string(),
                Some(Record::now(&vol.name, Phase::Fenced, &a)),
            )?;
        }
        self.finish(vol, loc, out, None)?;
        out.state = VolumeState::Fenced;
        Ok(())
    }

    fn stale_authorization(&self, auth: &Authorization) -> Option<Refusal> {
        let age = SystemTime::now()
            .duration_since(auth.read_at)
            .unwrap_or(Duration::ZERO);
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
        // Registering and gone: fenced only if someone else took the LUN; an
        // empty LUN means the REGISTER never landed (crash before it).
        Phase::Registering => !ours_present && (obs.reservation.is_some() || !obs.keys.is_empty()),
        Phase::Fenced => true,
    }
}

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

    fn record_observation(&mut self, obs: &Observed, uas: Vec<String>) {
        self.generation = (obs.generation, obs.generation);
        self.unit_attentions.extend(uas);
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
        let rec = |phase| Record::now("pv", phase, &AttachmentId("gen-1".into()));
        let rows = [
            (
                Phase::Held,
                obs(&[0xa, 0xa], Some(0xa)),
                false,
                "still held",
            ),
            (
                Phase::Held,
                obs(&[0xb], Some(0xb)),
                true,
                "held, key gone: preempted",
            ),
            (
                Phase::Held,
                obs(&[], None),
                true,
                "held, LUN cleared: treated as fenced",
            ),
            (
                Phase::Registering,
                obs(&[], None),
                false,
                "crash before REGISTER landed",
            ),
            (
                Phase::Registering,
                obs(&[0xb], Some(0xb)),
                true,
                "registering, another took it",
            ),
            (
                Phase::Registering,
                obs(&[0xa], None),
                false,
                "registered, crash before RESERVE",
            ),
            (Phase::Fenced, obs(&[], None), true, "fenced stays fenced"),
        ];
        for (phase, o, want, why) in rows {
            assert_eq!(preempted_under(&rec(phase), &o, ours), want, "{why}");
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
