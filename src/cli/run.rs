//! `csi-fencer run`: the node daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use csi_fencer::daemon::config::Config;
use csi_fencer::daemon::run::{self as daemon, Options, SourceSpec};

use super::exit::Failure;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `csi-fencer run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Runs on every node that attaches shared LUNs. It follows the attachments of its source, \
acquires what is attached to this node, releases what was detached, checks held volumes \
every monitorIntervalSeconds, and serves Prometheus metrics and health. Stopping it \
releases nothing.

Examples:
  csi-fencer run --node-name node-a --config /etc/csi-fencer/config.yaml \\
      --source file:/etc/csi-fencer/attachments.yaml --http-endpoint :9808
  NODE_NAME=node-b csi-fencer run --config c.yaml --source file:att.yaml --dry-run -v")]
pub struct RunArgs {
    /// This node's name (Kubernetes: from the Downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: String,
    /// The configuration file (YAML; see the README's configuration reference).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where attachments come from: file:PATH (a YAML list), or kubernetes (not yet).
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// Serve /metrics, /healthz and /readyz on this address (":9808" = every interface).
    #[arg(long, value_name = "ADDR")]
    pub http_endpoint: Option<String>,
    /// Serve the gRPC node API (Acquire, Release, GetVolume, ListVolumes,
    /// WatchVolumes) on this unix socket, mode 0600.
    #[arg(long, value_name = "PATH")]
    pub grpc_socket: Option<PathBuf>,
    /// Test hook: commands to this device never return (a hung path).
    #[arg(long, hide = true, value_name = "DEV")]
    pub test_hang_device: Vec<PathBuf>,
    /// The engine's fenced-state directory (must survive restarts).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/csi-fencer")]
    pub state_dir: PathBuf,
    /// Decide and report, but send no PR OUT.
    #[arg(long)]
    pub dry_run: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn source(s: &str) -> Result<SourceSpec, Failure> {
    if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
        return Ok(SourceSpec::File(PathBuf::from(p)));
    }
    if s == "kubernetes" {
        return Err(Failure::usage(
            "--source kubernetes is not implemented yet; use file:PATH",
        ));
    }
    Err(Failure::usage(format!(
        "--source {s:?}: use file:PATH (or kubernetes, later)"
    )))
}

fn endpoint(s: &str) -> Result<SocketAddr, Failure> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| Failure::usage(format!("--http-endpoint {s:?}: use HOST:PORT or :PORT")))
}

fn init_logging(a: &RunArgs) {
    let level = match a.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match a.log_format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Runs the daemon until SIGTERM.
pub fn run(a: &RunArgs) -> Result<i32, Failure> {
    if a.node_name.is_empty() {
        return Err(Failure::usage(
            "--node-name (or NODE_NAME) must not be empty",
        ));
    }
    let origin = a.config.display().to_string();
    let text = std::fs::read_to_string(&a.config)
        .map_err(|e| Failure::usage(format!("--config {origin}: cannot read: {e}")))?;
    let config = Config::parse(&origin, &text).map_err(Failure::usage)?;
    let opts = Options {
        node: a.node_name.clone(),
        config,
        source: source(&a.source)?,
        state_dir: a.state_dir.clone(),
        http: a.http_endpoint.as_deref().map(endpoint).transpose()?,
        dry_run: a.dry_run,
        grpc_socket: a.grpc_socket.clone(),
        hang_devices: a.test_hang_device.clone(),
    };
    init_logging(a);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(99, e))?;
    let r = rt.block_on(daemon::run(opts));
    // A call stuck in SG_IO never returns; dropping the runtime would wait for
    // it forever. Leave it behind so SIGTERM always stops the daemon.
    rt.shutdown_background();
    r.map_err(|e| Failure::new(1, e))?;
    Ok(0)
}
