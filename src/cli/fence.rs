//! `csi-fencer acquire | release | check`: the engine for operators and
//! scripts (the fence_mpath on / off / status of this world).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};

use csi_fencer::device::Locate;
use csi_fencer::fence::decide::PathRegistration;
use csi_fencer::fence::engine::{
    Authorization, Engine, EngineConfig, FenceError, Outcome, Volume, VolumeState,
};
use csi_fencer::fence::policy::{AccessMode, Policy, PreemptMode};
use csi_fencer::fence::state::{AttachmentId, StateStore};
use csi_fencer::platform::{self, Native};
use csi_fencer::scsi::{ReservationType, Wwid};

use super::exit::{self, Failure};
use super::GlobalArgs;

/// Exit code: the node is fenced (its key was preempted).
pub const FENCED: i32 = 10;
/// Exit code: the engine refused to act (see the message). Not 11, which
/// sg3_utils uses for an aborted command.
pub const REFUSED: i32 = 17;
/// Exit code: done, but some path could not be registered.
pub const PARTIAL: i32 = 12;
/// Exit code: the LUN's PR state kept changing while it was read; try again.
pub const UNSTABLE: i32 = 13;
/// Exit code: the device is another LUN.
pub const IDENTITY: i32 = 14;
/// Exit code: the state store failed.
pub const STATE: i32 = 16;
/// Exit code of `check`: this node is not registered (not 2, sg3_utils' "not ready").
pub const NOT_REGISTERED: i32 = 18;

const FENCE_HELP: &str = "\
Exit codes: 0 done (acquire: held; release: released; check: registered), 10 this node \
is FENCED, 12 some path not registered (or none usable), 13 the PR state kept changing \
while read (try again), 14 identity mismatch (wrong LUN), 16 state store error, \
17 refused (a live node holds it, foreign holder, stale authorization …), 18 check: \
this node is not registered (never was, or released); \
device errors as in `csi-fencer --help` (15 cannot open, 24 conflict, 33 timeout …).

Examples:
  # Take vol-1 for node-b after node-a lost it (node-a gets fenced)
  csi-fencer acquire --wwid naa.6001405e0f5b8a2c --node node-b --cluster-name prod \\
      --attachment csi-3f2a…(VolumeAttachment UID) --attached-nodes node-b
  # What would it send?
  csi-fencer acquire --device /dev/mapper/mpatha --node node-b --cluster-name prod \\
      --attachment 7 --dry-run
  # Is node-a still registered, or fenced?
  csi-fencer check --wwid naa.6001405e0f5b8a2c --node node-a --cluster-name prod
  # Give it up (only node-b's own registrations are removed)
  csi-fencer release --wwid naa.6001405e0f5b8a2c --node node-b --cluster-name prod";

/// Which engine operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// acquire
    Acquire,
    /// release
    Release,
    /// check
    Check,
}

/// Reservation type choices on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PreemptArg {
    /// PREEMPT AND ABORT (default): the fenced node's queued writes are
    /// aborted; plain PREEMPT, said so, on a target that lacks it.
    Abort,
    /// PREEMPT AND ABORT or fail (exit 9) on a target that lacks it.
    AbortOnly,
    /// Plain PREEMPT.
    Plain,
}

/// Arguments shared by acquire, release and check.
#[derive(Debug, Args)]
#[command(after_help = FENCE_HELP)]
pub struct FenceArgs {
    /// A name for the volume in reports (e.g. the PV name); default: the WWID.
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// The volume's LUN identity (naa.…, eui.…, or the multipath form 3…).
    #[arg(long, value_name = "WWID", required_unless_present = "device")]
    pub wwid: Option<String>,
    /// Use this device (map or path) instead of finding the LUN by WWID; its
    /// identity is still checked against --wwid when both are given.
    #[arg(long, value_name = "DEV")]
    pub device: Option<PathBuf>,
    /// This node's name (its key is derived from it).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node: String,
    /// The cluster (its tag is the first 16 bits of every key).
    #[command(flatten)]
    pub cluster: super::key::ClusterArgs,
    /// The attachment that authorises holding the volume (a VolumeAttachment
    /// UID, a generation). After a fence, only a different one allows acquiring again.
    #[arg(long, value_name = "ID")]
    pub attachment: Option<String>,
    /// Nodes that hold live attachments for the volume (comma-separated); other
    /// nodes' keys of this cluster are stale and preempted. Default: this node only.
    #[arg(long, value_name = "NODES", value_delimiter = ',')]
    pub attached_nodes: Vec<String>,
    /// Every node of the cluster (comma-separated), to name stale keys in reports.
    #[arg(long, value_name = "NODES", value_delimiter = ',')]
    pub known_nodes: Vec<String>,
    /// single-node (type 5, RWO) or multi-node (type 7, RWX).
    #[arg(long, value_name = "MODE", default_value = "single-node")]
    pub access_mode: AccessMode,
    /// Override the reservation type (e.g. 6 or ea-ro for exclusive access).
    #[arg(long = "type", value_name = "TYPE")]
    pub rtype: Option<ReservationType>,
    /// How to remove a stale key.
    #[arg(long, value_enum, default_value = "abort")]
    pub preempt: PreemptArg,
    /// Register with ALL_TG_PT when the target supports it.
    #[arg(long)]
    pub all_tg_pt: bool,
    /// Register with APTPL when the target supports it.
    #[arg(long)]
    pub aptpl: bool,
    /// Also preempt keys of other clusters (other tags).
    #[arg(long)]
    pub remove_foreign_keys: bool,
    /// Print the PR OUT commands that would be sent; send none.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the fenced-state file lives.
    #[arg(long, value_name = "DIR", default_value = platform::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// dm uuid prefix of multipath maps (multipath-tools: mpath-).
    #[arg(long, value_name = "PREFIX", default_value = "mpath-")]
    pub map_uuid_prefix: String,
    /// Seconds to wait for the LUN to appear.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub device_wait: u64,
    /// Test hook: exit right after the REGISTERs of an acquire, like a crash.
    #[arg(long, hide = true)]
    pub test_interrupt_after_register: bool,
}

fn volume(
    a: &FenceArgs,
    t: &dyn csi_fencer::transport::Transport,
    g: &GlobalArgs,
) -> Result<Volume, Failure> {
    let wwid = match (&a.wwid, &a.device) {
        (Some(w), _) => w.parse::<Wwid>().map_err(Failure::usage)?,
        (None, Some(d)) => {
            // Only a device: its own identity names the volume, read from one
            // of its paths: never SG_IO through a dm map, which can block
            // without a timeout while the map queues I/O (I6).
            let resolver = platform::locator(&a.map_uuid_prefix);
            let lun = Locate::for_device(&resolver, d)?;
            let path = lun
                .paths
                .iter()
                .find(|p| p.state.as_deref().is_none_or(|s| s == "running"))
                .ok_or_else(|| {
                    Failure::new(
                        exit::NOT_READY,
                        anyhow::anyhow!(
                            "{}: no running path to read its identity from",
                            d.display()
                        ),
                    )
                })?;
            let ds = csi_fencer::transport::ScsiPath::new(t, &path.dev, g.timeout()).device_id()?;
            Wwid::from_designations(&ds).ok_or_else(|| {
                Failure::usage(format!(
                    "{}: VPD 83h has no LU designator; give --wwid",
                    d.display()
                ))
            })?
        }
        (None, None) => return Err(Failure::usage("give --wwid or --device")),
    };
    Ok(Volume {
        name: a.volume.clone().unwrap_or_else(|| wwid.to_string()),
        wwid,
        device: a.device.clone(),
        access: a.access_mode,
        policy: Policy {
            reservation_type: a.rtype,
            preempt: match a.preempt {
                PreemptArg::Abort => PreemptMode::PreemptAndAbort,
                PreemptArg::AbortOnly => PreemptMode::PreemptAndAbortOnly,
                PreemptArg::Plain => PreemptMode::Preempt,
            },
            all_tg_pt: a.all_tg_pt,
            aptpl: a.aptpl,
            remove_foreign_keys: a.remove_foreign_keys,
        },
    })
}

fn engine(a: &FenceArgs, g: &GlobalArgs) -> Result<Engine<Native>, Failure> {
    let mut cfg = EngineConfig::new(a.node.clone(), a.cluster.tag()?);
    cfg.command_timeout = g.timeout();
    cfg.device_wait = Duration::from_secs(a.device_wait);
    cfg.dry_run = a.dry_run;
    cfg.known_nodes = a
        .known_nodes
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    cfg.interrupt_after_register = a.test_interrupt_after_register;
    let state = StateStore::open(&a.state_dir).map_err(|e| Failure::new(STATE, e))?;
    let resolver = platform::locator(&a.map_uuid_prefix);
    Ok(Engine::new(cfg, platform::native(), resolver, state))
}

/// Runs acquire, release or check.
pub fn run(op: Op, a: &FenceArgs, g: &GlobalArgs) -> Result<i32, Failure> {
    if a.node.is_empty() {
        return Err(Failure::usage("--node must not be empty"));
    }
    let e = engine(a, g)?;
    let vol = volume(a, &platform::native(), g)?;
    let mut live: BTreeSet<String> = a
        .attached_nodes
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    let result = match op {
        Op::Acquire => {
            let id = a.attachment.clone().ok_or_else(|| {
                Failure::usage("acquire needs --attachment: the identity of the attachment that authorises this node (I1)")
            })?;
            live.insert(a.node.clone());
            let auth = Authorization {
                attachment: AttachmentId(id),
                read_at: SystemTime::now(),
                notes: Vec::new(),
                confirm: None,
            };
            e.acquire(&vol, &auth, &live)
        }
        Op::Release => e.release(&vol),
        Op::Check => e.check(&vol, &live),
    };
    let out = result.map_err(fence_failure)?;
    print(&out, g.json);
    Ok(exit_code(op, &out))
}

fn fence_failure(e: FenceError) -> Failure {
    let code = match &e {
        FenceError::Scsi(s) => exit::for_scsi(s),
        FenceError::NotFound(_) | FenceError::Device(_) => exit::FILE_ERROR,
        FenceError::IdentityMismatch { .. } => IDENTITY,
        FenceError::State(_) => STATE,
        FenceError::NoPathRegistered { .. } => PARTIAL,
        FenceError::Interrupted => 70,
        FenceError::Step { source, .. } => exit::for_scsi(source),
        FenceError::NoUsablePath { .. } => PARTIAL,
        FenceError::Unstable { .. }
        | FenceError::NotConverged { .. }
        | FenceError::Undecided { .. } => UNSTABLE,
        FenceError::Unsupported { .. } | FenceError::Platform { .. } => exit::UNSUPPORTED,
        FenceError::Stopped { .. } => exit::TIMEOUT,
    };
    Failure::new(code, e)
}

fn exit_code(op: Op, out: &Outcome) -> i32 {
    // Every path of this LUN should carry the key, an offline one too (I5);
    // a path whose nexus cannot be named is not counted against it.
    let partial = out.paths.iter().any(|p| {
        !p.wrong_lun && (!p.usable || p.registration == Some(PathRegistration::NotRegistered))
    });
    match (op, out.state) {
        (_, VolumeState::Fenced) => FENCED,
        (_, VolumeState::Refused) => REFUSED,
        (_, _) if out.dry_run => exit::OK,
        (Op::Release, VolumeState::NotRegistered) => exit::OK,
        (Op::Release, _) => PARTIAL,
        (Op::Check, VolumeState::NotRegistered | VolumeState::Lost) => NOT_REGISTERED,
        (_, VolumeState::Lost) => PARTIAL,
        (_, VolumeState::Held | VolumeState::Registered) if partial => PARTIAL,
        (_, VolumeState::Held | VolumeState::Registered) => exit::OK,
        (Op::Acquire, VolumeState::NotRegistered) => PARTIAL,
    }
}

fn print(out: &Outcome, json: bool) {
    if json {
        match serde_json::to_string_pretty(out) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode the outcome as JSON: {e}"),
        }
        return;
    }
    let state = serde_json::to_value(out.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_uppercase))
        .unwrap_or_default();
    let name = if out.volume == out.wwid {
        out.wwid.clone()
    } else {
        format!("{} ({})", out.volume, out.wwid)
    };
    println!("volume {name} on {}: {state}", out.device.display());
    if let Some(r) = &out.refusal {
        println!("  refused: {r}");
    }
    let verb = if out.dry_run { "would send" } else { "sent" };
    for s in &out.steps {
        println!("  {verb}: {}", serde_json::to_string(s).unwrap_or_default());
    }
    for p in &out.paths {
        let what = if p.registered {
            "registered"
        } else {
            "NOT registered"
        };
        let why = p
            .problem
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        println!(
            "  path {} {}: {what}{why}",
            p.info.name,
            p.info.dev.display()
        );
    }
    for k in out.keys.foreign.iter() {
        println!("  foreign key {} left alone (another cluster's)", k.key);
    }
    for ua in &out.unit_attentions {
        println!("  unit attention: {ua}");
    }
    println!(
        "  PR generation {:#x} -> {:#x}",
        out.generation.0, out.generation.1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_exit_codes_never_reuse_an_sg3_utils_code() {
        let ours = [
            FENCED,
            REFUSED,
            PARTIAL,
            UNSTABLE,
            IDENTITY,
            STATE,
            NOT_REGISTERED,
        ];
        let sg3 = [
            exit::OK,
            exit::USAGE,
            exit::NOT_READY,
            exit::MEDIUM_HARD,
            exit::ILLEGAL_REQUEST,
            exit::UNIT_ATTENTION,
            exit::UNSUPPORTED,
            exit::ABORTED,
            exit::FILE_ERROR,
            exit::CONFLICT,
            exit::TIMEOUT,
            exit::TRANSPORT,
            exit::MALFORMED,
            exit::OTHER,
        ];
        for c in ours {
            assert!(
                !sg3.contains(&c),
                "exit code {c} already means something in sg3_utils"
            );
            assert_eq!(
                ours.iter().filter(|o| **o == c).count(),
                1,
                "{c} used twice"
            );
            assert!(
                FENCE_HELP.contains(&format!("{c} ")),
                "{c} missing from the help"
            );
        }
    }
}
