//! `--csi-address`: ask the CSI driver beside us for its name (Identity
//! GetPluginInfo) and whether it is ready (Probe), as the kubernetes-csi
//! sidecars do, so the sidecar needs no driver name of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The generated CSI Identity subset.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("csi.v1");
}

/// Why the driver could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// No connection to the socket.
    #[error("--csi-address {path}: cannot connect: {why}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The call failed.
    #[error("--csi-address {path}: {rpc} failed: {status}")]
    Call {
        /// The socket.
        path: PathBuf,
        /// GetPluginInfo or Probe.
        rpc: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The answer is unusable.
    #[error("--csi-address {path}: {why}")]
    Invalid {
        /// The socket.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// What the driver said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub vendor_version: String,
    /// Probe's answer (`true` when unset, as the spec says).
    pub ready: bool,
}

/// Connects to the driver's socket (a path, or `unix://PATH`) and asks it.
pub async fn probe(address: &Path, timeout: Duration) -> Result<PluginInfo, CsiError> {
    let raw = address.to_string_lossy();
    let path = PathBuf::from(raw.strip_prefix("unix://").unwrap_or(&raw));
    let channel = crate::daemon::grpc::channel(&path, timeout)
        .await
        .map_err(|e| CsiError::Connect {
            path: path.clone(),
            why: e.to_string(),
        })?;
    let mut c = pb::identity_client::IdentityClient::new(channel);
    let call = |rpc, status| CsiError::Call {
        path: path.clone(),
        rpc,
        status: Box::new(status),
    };
    let info = tokio::time::timeout(timeout, c.get_plugin_info(pb::GetPluginInfoRequest {}))
        .await
        .map_err(|_| call("GetPluginInfo", tonic::Status::deadline_exceeded("timeout")))?
        .map_err(|s| call("GetPluginInfo", s))?
        .into_inner();
    if info.name.is_empty() {
        return Err(CsiError::Invalid {
            path,
            why: "GetPluginInfo returned an empty driver name".into(),
        });
    }
    let ready = tokio::time::timeout(timeout, c.probe(pb::ProbeRequest {}))
        .await
        .map_err(|_| call("Probe", tonic::Status::deadline_exceeded("timeout")))?
        .map_err(|s| call("Probe", s))?
        .into_inner()
        .ready
        .unwrap_or(true);
    Ok(PluginInfo {
        name: info.name,
        vendor_version: info.vendor_version,
        ready,
    })
}
