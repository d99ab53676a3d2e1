//! `csi-fencer run`: the node daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use csi_fencer::daemon::config::Config;
use csi_fencer::runtime::{self, Options, SourceSpec};

use super::exit::Failure;
use super::GlobalArgs;
use csi_fencer::k8s::daemon::KubeSpec;

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

With --source kubernetes (the default) it watches every VolumeAttachment of the configured \
drivers, GETs this node's attachment fresh from the API server before any registration, \
and publishes each volume's state in its VolumeReservation status and as Events on the PV. \
While the API server cannot be reached nothing is registered or preempted; held \
reservations stay as they are.

Examples:
  # in a DaemonSet (in-cluster credentials, NODE_NAME from the Downward API)
  csi-fencer run --config /etc/csi-fencer/config.yaml --http-endpoint :9816 \\
      --grpc-socket /csi-fencer/fencer.sock --csi-address /csi/csi.sock --timeout 15
  # out of cluster, against a kubeconfig
  csi-fencer run --node-name node-a --config c.yaml --kubeconfig ~/.kube/config --dry-run -v
  # without Kubernetes: attachments from a YAML file
  csi-fencer run --node-name node-a --config c.yaml --source file:/etc/csi-fencer/attachments.yaml")]
pub struct RunArgs {
    /// This node's name (Kubernetes: from the Downward API).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: String,
    /// The configuration file (YAML; see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where attachments come from: kubernetes (VolumeAttachments), or file:PATH (a YAML list).
    #[arg(long, value_name = "SOURCE", default_value = "kubernetes")]
    pub source: String,
    /// A kubeconfig file, for running out of cluster (default: $KUBECONFIG or
    /// ~/.kube/config when present, else the pod's in-cluster credentials).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Sustained Kubernetes API requests per second (client-side rate limit).
    #[arg(long, value_name = "QPS", default_value_t = 5.0)]
    pub kube_api_qps: f64,
    /// Kubernetes API requests allowed in a burst.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub kube_api_burst: u32,
    /// The CSI driver's socket: its Identity service names the driver whose
    /// volumes this instance fences (sidecar mode). A path or unix://PATH.
    #[arg(long, value_name = "PATH")]
    pub csi_address: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (":9816" = every interface).
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
    #[arg(long, value_name = "DIR", default_value = csi_fencer::platform::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Decide and report, but send no PR OUT.
    #[arg(long)]
    pub dry_run: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More of csi-fencer's own logging (-v debug, -vv trace; the
    /// libraries stay at info: set RUST_LOG for them).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn source(a: &RunArgs, g: &GlobalArgs) -> Result<SourceSpec, Failure> {
    let s = a.source.as_str();
    if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
        return Ok(SourceSpec::File(PathBuf::from(p)));
    }
    if s != "kubernetes" {
        return Err(Failure::usage(format!(
            "--source {s:?}: use kubernetes or file:PATH"
        )));
    }
    if !(a.kube_api_qps > 0.0 && a.kube_api_qps.is_finite()) || a.kube_api_burst == 0 {
        return Err(Failure::usage(
            "--kube-api-qps must be > 0 and --kube-api-burst >= 1",
        ));
    }
    Ok(SourceSpec::Kubernetes(KubeSpec {
        kubeconfig: a.kubeconfig.clone(),
        limits: (a.kube_api_qps, a.kube_api_burst),
        timeout: g.timeout(),
        csi_address: a.csi_address.clone(),
    }))
}

/// `HOST:PORT`, or `:PORT` for every interface.
pub fn endpoint(s: &str) -> Result<SocketAddr, Failure> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| Failure::usage(format!("--http-endpoint {s:?}: use HOST:PORT or :PORT")))
}

/// The log filter of `-v`: more of csi-fencer's own logs; the libraries
/// (hyper, tower, kube) stay at info, or their lines drown csi-fencer's
/// (`RUST_LOG` sets anything else).
fn log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "info",
        1 => "info,csi_fencer=debug",
        _ => "info,csi_fencer=trace",
    }
}

/// Logs to stderr in `format`, more of csi-fencer's own with `verbose`.
pub fn init_logging(format: LogFormat, verbose: u8) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(verbose)));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Runs the daemon until SIGTERM.
pub fn run(a: &RunArgs, g: &GlobalArgs) -> Result<i32, Failure> {
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
        source: source(a, g)?,
        state_dir: a.state_dir.clone(),
        http: a.http_endpoint.as_deref().map(endpoint).transpose()?,
        dry_run: a.dry_run,
        grpc_socket: a.grpc_socket.clone(),
        hang_devices: a.test_hang_device.clone(),
    };
    init_logging(a.log_format, a.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(99, e))?;
    let r = rt.block_on(runtime::run(opts));
    // A call stuck in SG_IO never returns; dropping the runtime would wait for
    // it forever. Leave it behind so SIGTERM always stops the daemon.
    rt.shutdown_background();
    r.map_err(|e| Failure::new(1, e))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn verbose_logs_csi_fencers_debug_lines_and_not_the_libraries() {
        let out = Lines::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter(1)))
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::debug!(target: "csi_fencer::k8s", "ours");
            tracing::debug!(target: "hyper::proto::h1", "theirs");
            tracing::info!(target: "kube_client", "their info");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("ours") && text.contains("their info"),
            "{text}"
        );
        assert!(!text.contains("theirs"), "{text}");
    }
}
