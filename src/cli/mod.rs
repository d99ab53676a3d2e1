//! The `csi-fencer` command line: one clap struct, one module per subcommand.

pub mod controller;
pub mod crd;
pub mod ctl;
pub mod exit;
pub mod fence;
pub mod inspect;
pub mod key;
pub mod pr;
pub mod render;
pub mod run;
pub mod target;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Fence shared SAN block storage with SCSI-3 Persistent Reservations.
#[derive(Debug, Parser)]
#[command(
    name = "csi-fencer",
    version,
    propagate_version = true,
    after_help = "Exit codes follow sg3_utils: 0 ok, 1 bad command line, 2 not ready, \
3 medium or hardware error, 5 illegal request, 6 unit attention, 9 persistent \
reservations not supported, 11 aborted command, 15 cannot open the device (missing, \
not SCSI, no permission), 24 reservation conflict, 33 timeout, 35 transport error, \
97 malformed response, 99 other."
)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options that every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each SCSI command before giving up on it. For
    /// `run`: for each Kubernetes API and CSI call (the daemon's SCSI commands
    /// use commandTimeoutSeconds of its config).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

impl GlobalArgs {
    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one PERSISTENT RESERVE IN/OUT command (like sg_persist, multipath-aware).
    Pr(pr::PrArgs),
    /// Show a device's identity, paths, capabilities, keys and reservation in one screen.
    Inspect(inspect::InspectArgs),
    /// Print the reservation key of a node (cluster tag ‖ 48 bits of SHA-256 of the name).
    Key(key::KeyArgs),
    /// Take a volume's LUN for this node: register on every path, reserve, preempt stale keys.
    Acquire(fence::FenceArgs),
    /// Give a volume's LUN up: release and unregister this node's paths only.
    Release(fence::FenceArgs),
    /// Is this node still registered, or fenced? Registers paths that lack the key while it is still on the LUN.
    Check(fence::FenceArgs),
    /// Run the node daemon: follow attachments, keep reservations in step, serve metrics.
    Run(run::RunArgs),
    /// Run the failover controller: taint dead nodes out-of-service once every volume on them is fenced.
    Controller(controller::ControllerArgs),
    /// Ask a running daemon over its gRPC socket (get, list, watch, acquire, release).
    Ctl(ctl::CtlArgs),
    /// Print the VolumeReservation CustomResourceDefinition (YAML) the chart installs.
    Crd,
}
