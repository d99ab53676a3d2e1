//! `csi-fencer controller`: the failover controller (docs/failover.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use csi_fencer::failover::Settings;
use csi_fencer::k8s::failover::ControllerSpec;
use csi_fencer::k8s::leader::LeaderSpec;
use csi_fencer::runtime::controller::{self, ControllerOptions};

use super::exit::Failure;
use super::run::{endpoint, init_logging, LogFormat};
use super::GlobalArgs;

/// Arguments of `csi-fencer controller`.
#[derive(Debug, Args)]
#[command(after_help = "\
Applies the node.kubernetes.io/out-of-service taint (non-graceful node shutdown) to a node \
whose kubelet stopped renewing its Lease, so that its pods and volumes move to other nodes \
in seconds instead of minutes; and only when that is safe: every volume attached to the node \
is of a --driver that csi-fencer fences and its VolumeReservation shows the node under the \
fence, so a new node cannot write before it preempts the old one's key. It never taints a \
node that reported a graceful shutdown or is cordoned, nor while more than \
--max-unhealthy-percent of the nodes look dead (a partition, not a death), nor more than \
--max-concurrent nodes at a time. It removes only the taints it applied, once the node is \
back and none of its attachments predates the taint. Every refusal is an Event on the Node.

Run two replicas with leader election (the chart does, with failover.enabled=true).

Examples:
  # in a Deployment
  csi-fencer controller --driver block.csi.example.com --http-endpoint :9817
  # out of cluster, judging only: logs what it would do, changes nothing
  csi-fencer controller --kubeconfig ~/.kube/config --driver block.csi.example.com \\
      --leader-elect=false --dry-run")]
pub struct ControllerArgs {
    /// A CSI driver whose volumes csi-fencer fences (repeat for each; the
    /// daemon's config lists the same drivers).
    #[arg(long = "driver", value_name = "NAME", required = true)]
    pub drivers: Vec<String>,
    /// A driver whose attachments do not stop a taint (volumes that need no
    /// fence); repeatable. None by default.
    #[arg(long = "ignore-driver", value_name = "NAME")]
    pub ignored_drivers: Vec<String>,
    /// A node whose kubelet has not renewed its Lease for this long is dead
    /// (kubelet renews every 10 s).
    #[arg(long, value_name = "SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(15..=3600))]
    pub lease_grace_seconds: u64,
    /// No taint while more than this percentage of the nodes look dead.
    #[arg(long, value_name = "PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_unhealthy_percent: u32,
    /// At most this many nodes carry csi-fencer's taint at a time.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_concurrent: usize,
    /// How often to judge the cluster.
    #[arg(long, value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub interval_seconds: u64,
    /// Judge and report, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Force-delete the terminating pods of a node once it carries
    /// csi-fencer's taint, as pod GC does only after the node lifecycle
    /// controller marks it not Ready (about 50 s) and at its next 20 s tick.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub delete_pods: bool,
    /// A kubeconfig file, for running out of cluster.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (":9817" = every interface).
    #[arg(long, value_name = "ADDR")]
    pub http_endpoint: Option<String>,
    /// Elect a leader among the replicas on a Lease; only the leader taints.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The namespace of the leader Lease (the pod's own namespace).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NS",
        default_value = "default"
    )]
    pub leader_election_namespace: String,
    /// The leader Lease's name.
    #[arg(long, value_name = "NAME", default_value = "csi-fencer-failover")]
    pub leader_election_id: String,
    /// How long an unrenewed leader Lease stays its holder's.
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub leader_election_lease_duration: u64,
    /// How long a leader keeps leading without renewing.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub leader_election_renew_deadline: u64,
    /// How often replicas try to acquire or renew the leader Lease.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub leader_election_retry_period: u64,
    /// This replica's name (the pod's name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More of csi-fencer's own logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn identity(a: &ControllerArgs) -> String {
    a.identity
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| format!("csi-fencer-{}", std::process::id()))
}

fn spec(a: &ControllerArgs, g: &GlobalArgs) -> Result<ControllerSpec, Failure> {
    let mut settings = Settings::new(a.drivers.iter().cloned());
    settings.ignored_drivers = a.ignored_drivers.iter().cloned().collect();
    if let Some(both) = a
        .drivers
        .iter()
        .find(|d| settings.ignored_drivers.contains(*d))
    {
        return Err(Failure::usage(format!(
            "--driver {both:?} is also given to --ignore-driver: a driver is fenced or ignored, not both"
        )));
    }
    settings.lease_grace = Duration::from_secs(a.lease_grace_seconds);
    settings.max_unhealthy_percent = a.max_unhealthy_percent;
    settings.max_concurrent = a.max_concurrent;
    let identity = identity(a);
    let leader = a.leader_elect.then(|| LeaderSpec {
        namespace: a.leader_election_namespace.clone(),
        name: a.leader_election_id.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(a.leader_election_lease_duration),
        renew_deadline: Duration::from_secs(a.leader_election_renew_deadline),
        retry_period: Duration::from_secs(a.leader_election_retry_period),
    });
    if let Some(l) = &leader {
        l.check().map_err(Failure::usage)?;
    }
    Ok(ControllerSpec {
        settings,
        interval: Duration::from_secs(a.interval_seconds),
        timeout: g.timeout(),
        leader,
        dry_run: a.dry_run,
        delete_pods: a.delete_pods,
        identity,
    })
}

/// Runs the controller until SIGTERM.
pub fn run(a: &ControllerArgs, g: &GlobalArgs) -> Result<i32, Failure> {
    let opts = ControllerOptions {
        kubeconfig: a.kubeconfig.clone(),
        spec: spec(a, g)?,
        http: a.http_endpoint.as_deref().map(endpoint).transpose()?,
    };
    init_logging(a.log_format, a.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(99, e))?;
    rt.block_on(controller::run(opts))
        .map_err(|e| Failure::new(1, e))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The arguments the shipped Deployment gives the controller.
    fn shipped_args() -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/failover.yaml");
        let text = std::fs::read_to_string(&path).expect("deploy/failover.yaml");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("yaml");
            if v["kind"] == "Deployment" {
                let args = &v["spec"]["template"]["spec"]["containers"][0]["args"];
                return args
                    .as_sequence()
                    .expect("args")
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
            }
        }
        panic!("no Deployment in {}", path.display());
    }

    fn parse(args: &[String]) -> Result<(ControllerArgs, GlobalArgs), clap::Error> {
        let all = std::iter::once("csi-fencer".to_string()).chain(args.iter().cloned());
        let cli = crate::cli::Cli::try_parse_from(all)?;
        match cli.command {
            crate::cli::Command::Controller(a) => Ok((a, cli.global)),
            other => panic!("not the controller: {other:?}"),
        }
    }

    #[test]
    fn the_shipped_deployment_arguments_parse_into_the_defaults() {
        let (a, g) = parse(&shipped_args()).expect("the chart's flags parse");
        let s = spec(&a, &g).expect("a valid spec");
        assert_eq!(s.settings.drivers.len(), 1);
        assert_eq!(s.settings, {
            let mut d = Settings::new(s.settings.drivers.iter().cloned());
            d.lease_grace = Duration::from_secs(25);
            d
        });
        let l = s.leader.expect("leader election by default");
        assert_eq!(l.name, "csi-fencer-failover");
        assert_eq!(s.interval, Duration::from_secs(1));
        assert!(!s.dry_run);
        assert!(s.delete_pods);
    }

    #[test]
    fn bad_leader_timings_and_a_driver_both_fenced_and_ignored_are_refused() {
        let args = |extra: &[&str]| {
            let mut v = vec!["controller".to_string(), "--driver=d".to_string()];
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let (a, g) = parse(&args(&["--leader-election-renew-deadline=20"])).expect("parses");
        let e = spec(&a, &g).expect_err("renew deadline past the lease duration");
        assert!(format!("{:#}", e.error)
            .contains("must be shorter than --leader-election-lease-duration"));
        let (a, g) = parse(&args(&["--ignore-driver=d"])).expect("parses");
        let e = spec(&a, &g).expect_err("both");
        assert!(format!("{:#}", e.error).contains("fenced or ignored, not both"));
        assert!(
            parse(&args(&["--lease-grace-seconds=5"])).is_err(),
            "below 15 s"
        );
        let (a, g) = parse(&args(&["--leader-elect=false"])).expect("parses");
        assert!(spec(&a, &g).expect("spec").leader.is_none());
    }
}
