//! `csi-fencer key`: the reservation key of a node (docs/design.md §4).

use clap::Args;
use serde::Serialize;

use csi_fencer::fence::keys::ClusterTag;
use csi_fencer::scsi::ReservationKey;

use super::exit::Failure;

/// Arguments of `csi-fencer key`.
#[derive(Debug, Args)]
#[command(after_help = "\
The key is the 16-bit cluster tag followed by the first 48 bits of SHA-256 of the node \
name. Every node computes every other node's key, so a key found on a LUN names its \
node. Use the same tag (or cluster name) as the daemons' configuration.

Examples:
  csi-fencer key --node worker-3 --cluster-name prod-eu-1
  csi-fencer key --node worker-3 --cluster-tag 0x1a2b --json")]
pub struct KeyArgs {
    /// The Kubernetes node name.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// The cluster the key belongs to.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// How a command names its cluster (shared by every command that derives keys).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The cluster tag, 1 to 4 hex digits, not zero.
    #[arg(
        long,
        value_name = "HEX",
        conflicts_with = "cluster_name",
        required_unless_present = "cluster_name"
    )]
    pub cluster_tag: Option<String>,
    /// Derive the cluster tag from this cluster name (first 16 bits of its SHA-256).
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
}

impl ClusterArgs {
    /// The tag, or a usage error naming what is wrong.
    pub fn tag(&self) -> Result<ClusterTag, Failure> {
        match (&self.cluster_tag, &self.cluster_name) {
            (Some(t), _) => t.parse::<ClusterTag>(),
            (None, Some(n)) => ClusterTag::from_cluster_name(n),
            (None, None) => return Err(Failure::usage("give --cluster-tag or --cluster-name")),
        }
        .map_err(Failure::usage)
    }
}

#[derive(Serialize)]
struct KeyReport<'a> {
    node: &'a str,
    cluster_tag: String,
    key: ReservationKey,
}

/// Runs `csi-fencer key`.
pub fn run(args: &KeyArgs, json: bool) -> Result<i32, Failure> {
    let tag = args.cluster.tag()?;
    if args.node.is_empty() {
        return Err(Failure::usage("--node must not be empty"));
    }
    let key = tag.key_for(&args.node);
    if json {
        let r = KeyReport {
            node: &args.node,
            cluster_tag: tag.to_string(),
            key,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Failure::new(99, e))?
        );
    } else {
        println!("{key}");
    }
    Ok(0)
}
