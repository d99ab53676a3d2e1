//! `csi-fencer ctl`: the gRPC client of a running daemon.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use csi_fencer::daemon::grpc::{connect, pb};

use super::exit::{self, Failure};

/// Arguments of `csi-fencer ctl`.
#[derive(Debug, Args)]
#[command(after_help = "\
Talks to `csi-fencer run --grpc-socket PATH` on this node.

Examples:
  csi-fencer ctl --socket /var/lib/kubelet/plugins/csi-fencer/fencer.sock list
  csi-fencer ctl --socket /run/csi-fencer.sock acquire pv-data-0 --timeout-seconds 30
  csi-fencer ctl --socket /run/csi-fencer.sock watch --json")]
pub struct CtlArgs {
    /// The daemon's socket (the chart sets CSI_FENCER_SOCKET in its container).
    #[arg(
        long,
        env = "CSI_FENCER_SOCKET",
        value_name = "PATH",
        default_value = "/run/csi-fencer/fencer.sock"
    )]
    pub socket: PathBuf,
    /// What to ask.
    #[command(subcommand)]
    pub what: CtlCommand,
}

/// `ctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// One volume's status.
    Get {
        /// The volume.
        volume: String,
    },
    /// Every volume's status.
    List,
    /// The statuses, then every change, until interrupted.
    Watch,
    /// Reconcile a volume now and wait until this node holds it.
    Acquire {
        /// The volume.
        volume: String,
        /// How long to wait (0: the daemon's operation timeout).
        #[arg(long, default_value_t = 0)]
        timeout_seconds: u32,
    },
    /// Release a volume now (this node's registrations only).
    Release {
        /// The volume.
        volume: String,
    },
}

#[derive(Serialize)]
struct Row<'a> {
    volume: &'a str,
    wwid: &'a str,
    phase: &'static str,
    paths_registered: u32,
    paths_total: u32,
    attachment: &'a str,
    last_transition_unix: i64,
    message: &'a str,
}

fn phase_name(p: i32) -> &'static str {
    match pb::Phase::try_from(p).unwrap_or(pb::Phase::Unspecified) {
        pb::Phase::Unspecified => "unspecified",
        pb::Phase::Pending => "pending",
        pb::Phase::Held => "held",
        pb::Phase::Registered => "registered",
        pb::Phase::Fenced => "fenced",
        pb::Phase::Released => "released",
        pb::Phase::Error => "error",
    }
}

fn row(s: &pb::VolumeStatus) -> Row<'_> {
    Row {
        volume: &s.volume,
        wwid: &s.wwid,
        phase: phase_name(s.phase),
        paths_registered: s.paths_registered,
        paths_total: s.paths_total,
        attachment: &s.attachment,
        last_transition_unix: s.last_transition_unix,
        message: &s.message,
    }
}

fn print(rows: &[pb::VolumeStatus], json: bool) {
    if json {
        let v: Vec<Row> = rows.iter().map(row).collect();
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
        return;
    }
    for s in rows {
        let r = row(s);
        println!(
            "{:<20} {:<10} paths {}/{}  {:<40} {}",
            r.volume, r.phase, r.paths_registered, r.paths_total, r.wwid, r.message
        );
    }
}

fn status_failure(s: tonic::Status) -> Failure {
    let code = match s.code() {
        tonic::Code::NotFound => exit::USAGE,
        tonic::Code::FailedPrecondition => super::fence::REFUSED,
        tonic::Code::DeadlineExceeded => exit::TIMEOUT,
        _ => exit::OTHER,
    };
    Failure::new(code, anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
}

/// Runs `csi-fencer ctl`.
pub fn run(a: &CtlArgs, json: bool) -> Result<i32, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::OTHER, e))?;
    rt.block_on(async {
        let mut c = connect(&a.socket)
            .await
            .map_err(|e| Failure::new(exit::FILE_ERROR, e))?;
        match &a.what {
            CtlCommand::Get { volume } => {
                let s = c
                    .get_volume(pb::GetVolumeRequest {
                        volume: volume.clone(),
                    })
                    .await
                    .map_err(status_failure)?;
                print(&[s.into_inner()], json);
            }
            CtlCommand::List => {
                let l = c
                    .list_volumes(pb::ListVolumesRequest {})
                    .await
                    .map_err(status_failure)?;
                print(&l.into_inner().volumes, json);
            }
            CtlCommand::Watch => {
                let mut st = c
                    .watch_volumes(pb::WatchVolumesRequest {})
                    .await
                    .map_err(status_failure)?
                    .into_inner();
                while let Some(s) = st.message().await.map_err(status_failure)? {
                    print(&[s], json);
                }
            }
            CtlCommand::Acquire {
                volume,
                timeout_seconds,
            } => {
                let req = pb::AcquireRequest {
                    volume: volume.clone(),
                    timeout_seconds: *timeout_seconds,
                };
                let s = c.acquire(req).await.map_err(status_failure)?;
                print(&[s.into_inner()], json);
            }
            CtlCommand::Release { volume } => {
                let s = c
                    .release(pb::ReleaseRequest {
                        volume: volume.clone(),
                    })
                    .await
                    .map_err(status_failure)?;
                print(&[s.into_inner()], json);
            }
        }
        Ok(0)
    })
}
