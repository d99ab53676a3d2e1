//! `csi-fencer pr DEVICE ACTION`: one PERSISTENT RESERVE IN/OUT command,
//! sent to DEVICE or, with `--all-paths`, to every path of a multipath map.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use csi_fencer::scsi::{
    BasicParams, Capabilities, FullStatus, MoveParams, PrOut, ReadKeys, ReadReservation,
    ReservationKey, ReservationType, Sense, TransportId,
};
use csi_fencer::transport::{ScsiError, ScsiPath, Transport};

use super::exit::{self, Failure};
use super::target::Target;
use super::{render, GlobalArgs};

const EXAMPLES: &str = "\
Reservation keys are hexadecimal (0x optional), as sg_persist takes them. Types: 1 we, \
3 ea, 5 we-ro, 6 ea-ro, 7 we-ar, 8 ea-ar (or the long names, e.g. \
write-exclusive-registrants-only).

Examples:
  # What is registered, and who holds the reservation?
  csi-fencer pr /dev/mapper/mpatha read-keys
  csi-fencer pr /dev/sdc full-status --json

  # Register this node's key on every path of a multipath map, then reserve type 5
  csi-fencer pr --all-paths /dev/dm-0 register-ignore --sa-key 0x1a2b66570ff05a20
  csi-fencer pr /dev/dm-0 reserve --key 0x1a2b66570ff05a20 --type we-ro

  # Fence node A (key ...a) from node B (key ...b): B takes the reservation
  csi-fencer pr /dev/dm-1 preempt-abort --key 0xb --sa-key 0xa --type 5

  # Unregister: REGISTER with the current key and a zero new key
  csi-fencer pr --all-paths /dev/dm-0 register --key 0x1a2b66570ff05a20 --sa-key 0

Nothing is sent without an explicit action. SG_IO through a dm device reaches only one \
of its paths, so registering through a map needs --all-paths (or name a path device). \
PR OUT needs root or CAP_SYS_RAWIO.";

/// Arguments of `csi-fencer pr`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct PrArgs {
    /// A path device (/dev/sdc, /dev/sg2) or a dm-multipath map (/dev/dm-0, /dev/mapper/NAME).
    pub device: PathBuf,
    /// On a dm-multipath map: send to every path under /sys/block/dm-N/slaves and report per path.
    #[arg(long)]
    pub all_paths: bool,
    /// The service action.
    #[command(subcommand)]
    pub action: Action,
}

/// PR IN and PR OUT service actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// PR IN READ KEYS: the registered keys, one per registered I_T nexus.
    ReadKeys,
    /// PR IN READ RESERVATION: who holds the reservation, and its type.
    ReadReservation,
    /// PR IN REPORT CAPABILITIES: which types and options the device supports.
    Capabilities,
    /// PR IN READ FULL STATUS: every registration with its initiator port and target port.
    FullStatus,
    /// PR OUT REGISTER: register --sa-key (with --key 0), change a key, or unregister (--sa-key 0).
    Register(RegisterArgs),
    /// PR OUT REGISTER AND IGNORE EXISTING KEY: register --sa-key whatever is registered now.
    RegisterIgnore(RegisterIgnoreArgs),
    /// PR OUT RESERVE: take the reservation with this path's registered --key.
    Reserve(KeyTypeArgs),
    /// PR OUT RELEASE: give up the reservation held under --key (the --type must match).
    Release(KeyTypeArgs),
    /// PR OUT CLEAR: remove EVERY registration and the reservation (all nodes!).
    Clear(KeyArgs),
    /// PR OUT PREEMPT: remove the registrations of --sa-key; take its reservation if it holds it.
    Preempt(PreemptArgs),
    /// PR OUT PREEMPT AND ABORT: PREEMPT, and abort the preempted nexuses' queued commands.
    PreemptAbort(PreemptArgs),
    /// PR OUT REGISTER AND MOVE: register another initiator port and move the reservation to it.
    RegisterMove(MoveArgs),
    /// PR OUT REPLACE LOST RESERVATION: take a reservation the device server lost.
    ReplaceLost(KeyTypeArgs),
}

fn key(s: &str) -> Result<ReservationKey, String> {
    s.parse()
        .map_err(|e: csi_fencer::scsi::types::KeyParseError| e.to_string())
}

fn rtype(s: &str) -> Result<ReservationType, String> {
    s.parse()
        .map_err(|e: csi_fencer::scsi::types::TypeParseError| e.to_string())
}

/// REGISTER arguments.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The key this path is registered with now (0 when it is not registered).
    #[arg(long, value_name = "HEX", default_value = "0", value_parser = key)]
    pub key: ReservationKey,
    /// The new key (0 unregisters).
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub sa_key: ReservationKey,
    /// Register through every target port (ALL_TG_PT); only if capabilities show ATP_C.
    #[arg(long)]
    pub all_tg_pt: bool,
    /// Keep the registration across a target power loss (APTPL).
    #[arg(long)]
    pub aptpl: bool,
}

/// REGISTER AND IGNORE EXISTING KEY arguments.
#[derive(Debug, Args)]
pub struct RegisterIgnoreArgs {
    /// The new key (0 unregisters).
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub sa_key: ReservationKey,
    /// Register through every target port (ALL_TG_PT).
    #[arg(long)]
    pub all_tg_pt: bool,
    /// Keep the registration across a target power loss (APTPL).
    #[arg(long)]
    pub aptpl: bool,
}

/// Arguments of actions that take a key and a type.
#[derive(Debug, Args)]
pub struct KeyTypeArgs {
    /// This path's registered key.
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub key: ReservationKey,
    /// Reservation type: 1, 3, 5, 6, 7, 8 or we, ea, we-ro, ea-ro, we-ar, ea-ar.
    #[arg(long = "type", value_name = "TYPE", value_parser = rtype)]
    pub rtype: ReservationType,
}

/// Arguments of CLEAR.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// This path's registered key.
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub key: ReservationKey,
}

/// PREEMPT / PREEMPT AND ABORT arguments.
#[derive(Debug, Args)]
pub struct PreemptArgs {
    /// This path's registered key.
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub key: ReservationKey,
    /// The key to remove (the fenced node's key).
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub sa_key: ReservationKey,
    /// Type of the reservation to hold afterwards.
    #[arg(long = "type", value_name = "TYPE", value_parser = rtype)]
    pub rtype: ReservationType,
}

/// REGISTER AND MOVE arguments.
#[derive(Debug, Args)]
pub struct MoveArgs {
    /// This path's registered key (it must hold the reservation).
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub key: ReservationKey,
    /// The key to register for the destination.
    #[arg(long, value_name = "HEX", value_parser = key)]
    pub sa_key: ReservationKey,
    /// Type of the moved reservation.
    #[arg(long = "type", value_name = "TYPE", value_parser = rtype)]
    pub rtype: ReservationType,
    /// The destination's relative target port identifier.
    #[arg(long, value_name = "N")]
    pub rel_tgt_port: u16,
    /// The destination initiator port: sas:HEX, fc:HEX or an iSCSI name[,i,0xISID].
    #[arg(long, value_name = "TID")]
    pub transport_id: TransportId,
    /// Unregister this path after the move.
    #[arg(long)]
    pub unreg: bool,
    /// APTPL.
    #[arg(long)]
    pub aptpl: bool,
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::ReadKeys => "read-keys",
            Action::ReadReservation => "read-reservation",
            Action::Capabilities => "capabilities",
            Action::FullStatus => "full-status",
            Action::Register(_) => "register",
            Action::RegisterIgnore(_) => "register-ignore",
            Action::Reserve(_) => "reserve",
            Action::Release(_) => "release",
            Action::Clear(_) => "clear",
            Action::Preempt(_) => "preempt",
            Action::PreemptAbort(_) => "preempt-abort",
            Action::RegisterMove(_) => "register-move",
            Action::ReplaceLost(_) => "replace-lost",
        }
    }

    /// The PR OUT command, or `None` for PR IN actions.
    fn prout(&self) -> Option<PrOut> {
        Some(match self {
            Action::ReadKeys
            | Action::ReadReservation
            | Action::Capabilities
            | Action::FullStatus => return None,
            Action::Register(a) => PrOut::Register(BasicParams {
                key: a.key,
                sa_key: a.sa_key,
                spec_i_pt: vec![],
                all_tg_pt: a.all_tg_pt,
                aptpl: a.aptpl,
            }),
            Action::RegisterIgnore(a) => PrOut::RegisterAndIgnore(BasicParams {
                key: ReservationKey::NONE,
                sa_key: a.sa_key,
                spec_i_pt: vec![],
                all_tg_pt: a.all_tg_pt,
                aptpl: a.aptpl,
            }),
            Action::Reserve(a) => PrOut::Reserve {
                key: a.key,
                rtype: a.rtype,
            },
            Action::Release(a) => PrOut::Release {
                key: a.key,
                rtype: a.rtype,
            },
            Action::Clear(a) => PrOut::Clear { key: a.key },
            Action::Preempt(a) | Action::PreemptAbort(a) => PrOut::Preempt {
                key: a.key,
                victim: a.sa_key,
                rtype: a.rtype,
                abort: matches!(self, Action::PreemptAbort(_)),
            },
            Action::RegisterMove(a) => PrOut::RegisterAndMove {
                rtype: a.rtype,
                params: MoveParams {
                    key: a.key,
                    sa_key: a.sa_key,
                    unregister: a.unreg,
                    aptpl: a.aptpl,
                    relative_target_port: a.rel_tgt_port,
                    transport_id: a.transport_id.clone(),
                },
            },
            Action::ReplaceLost(a) => PrOut::ReplaceLostReservation {
                key: a.key,
                rtype: a.rtype,
            },
        })
    }

    /// Registrations belong to one I_T nexus: through a map they need every path.
    fn is_registration(&self) -> bool {
        matches!(self, Action::Register(_) | Action::RegisterIgnore(_))
    }

    fn is_read(&self) -> bool {
        self.prout().is_none()
    }
}

/// What one path answered.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// READ KEYS.
    Keys(ReadKeys),
    /// READ RESERVATION.
    Reservation(ReadReservation),
    /// REPORT CAPABILITIES.
    Capabilities(Capabilities),
    /// READ FULL STATUS.
    FullStatus(FullStatus),
    /// A PR OUT that completed with GOOD status.
    Done {
        /// What was sent.
        sent: PrOut,
    },
}

/// The outcome on one path.
#[derive(Debug, Serialize)]
pub struct PathOutcome {
    /// The device node the command went to.
    pub path: PathBuf,
    /// True when the command completed with GOOD status.
    pub ok: bool,
    /// The answer, when ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Answer>,
    /// The error, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
    /// Unit attentions consumed (and retried past) on this path.
    pub unit_attentions: Vec<Sense>,
}

/// An error in JSON form.
#[derive(Debug, Serialize)]
pub struct ErrorReport {
    /// A fixed label (`reservation_conflict`, `unsupported` …).
    pub kind: &'static str,
    /// The full message.
    pub message: String,
    /// The decoded sense, if any.
    pub sense: Option<Sense>,
    /// The exit code this error maps to.
    pub exit_code: i32,
}

impl From<&ScsiError> for ErrorReport {
    fn from(e: &ScsiError) -> Self {
        ErrorReport {
            kind: e.kind(),
            message: e.to_string(),
            sense: e.sense().cloned(),
            exit_code: exit::for_scsi(e),
        }
    }
}

/// The whole report of `pr`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// DEVICE as given.
    pub device: PathBuf,
    /// The action name.
    pub action: &'static str,
    /// One outcome per path the command went to.
    pub paths: Vec<PathOutcome>,
}

fn check_action_fits(target: &Target, args: &PrArgs) -> Result<(), Failure> {
    let a = &args.action;
    if target.is_map() && a.is_registration() && !args.all_paths {
        return Err(Failure::usage(format!(
            "{} is a multipath map ({} paths): SG_IO through it reaches only one path, so the \
             registration would cover one I_T nexus. Use --all-paths to {} on every path, or \
             name a path device ({}).",
            args.device.display(),
            target.paths.len(),
            a.name(),
            target
                .paths
                .iter()
                .map(|p| p.dev.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if args.all_paths && !a.is_read() && !a.is_registration() {
        return Err(Failure::usage(format!(
            "--all-paths applies to reads and to register / register-ignore; a reservation \
             belongs to the logical unit, so {} is sent once (drop --all-paths)",
            a.name()
        )));
    }
    Ok(())
}

fn run_on_path(
    transport: &dyn Transport,
    path: &PathBuf,
    action: &Action,
    g: &GlobalArgs,
) -> PathOutcome {
    let mut p = ScsiPath::new(transport, path, g.timeout());
    let result = match action.prout() {
        Some(cmd) => p.prout(&cmd).map(|_| Answer::Done { sent: cmd }),
        None => match action {
            Action::ReadKeys => p.read_keys().map(Answer::Keys),
            Action::ReadReservation => p.read_reservation().map(Answer::Reservation),
            Action::Capabilities => p.capabilities().map(Answer::Capabilities),
            _ => p.full_status().map(Answer::FullStatus),
        },
    };
    let unit_attentions = p.unit_attentions().to_vec();
    match result {
        Ok(a) => PathOutcome {
            path: path.clone(),
            ok: true,
            result: Some(a),
            error: None,
            unit_attentions,
        },
        Err(e) => PathOutcome {
            path: path.clone(),
            ok: false,
            result: None,
            error: Some(ErrorReport::from(&e)),
            unit_attentions,
        },
    }
}

/// Runs `csi-fencer pr`.
pub fn run(args: &PrArgs, g: &GlobalArgs, transport: &dyn Transport) -> Result<i32, Failure> {
    let target = Target::resolve(&args.device)?;
    check_action_fits(&target, args)?;
    let dests = target.destinations(args.all_paths);
    if dests.is_empty() {
        return Err(Failure::new(
            exit::FILE_ERROR,
            anyhow::anyhow!(
                "{}: the multipath map has no path devices",
                args.device.display()
            ),
        ));
    }
    let report = Report {
        device: args.device.clone(),
        action: args.action.name(),
        paths: dests
            .iter()
            .map(|d| run_on_path(transport, d, &args.action, g))
            .collect(),
    };
    print_report(&report, g.json);
    Ok(report
        .paths
        .iter()
        .find_map(|p| p.error.as_ref().map(|e| e.exit_code))
        .unwrap_or(exit::OK))
}

fn print_report(r: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode the report as JSON: {e}"),
        }
        return;
    }
    let multi = r.paths.len() > 1;
    for p in &r.paths {
        let prefix = if multi {
            format!("{}: ", p.path.display())
        } else {
            String::new()
        };
        for ua in &p.unit_attentions {
            println!("{prefix}note: consumed {ua}");
        }
        match (&p.result, &p.error) {
            (Some(a), _) => println!("{prefix}{}", answer_text(a)),
            (None, Some(e)) => eprintln!("{prefix}error: {}", e.message),
            (None, None) => {}
        }
    }
}

fn answer_text(a: &Answer) -> String {
    match a {
        Answer::Keys(k) => render::keys(k),
        Answer::Reservation(r) => render::reservation(r),
        Answer::Capabilities(c) => render::capabilities(c),
        Answer::FullStatus(f) => render::full_status(f),
        Answer::Done { sent } => format!("{}: done", sent.command().name),
    }
}
