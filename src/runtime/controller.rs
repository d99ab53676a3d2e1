//! The composition root of `csi-fencer controller`: the client, the failover
//! controller, its metrics and health endpoints, until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;

use crate::k8s::daemon::StartError;
use crate::k8s::failover::metrics::Metrics;
use crate::k8s::failover::{Controller, ControllerSpec};

/// Everything `csi-fencer controller` needs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// `--kubeconfig`; inferred otherwise.
    pub kubeconfig: Option<PathBuf>,
    /// The controller's settings.
    pub spec: ControllerSpec,
    /// Where to serve /metrics, /healthz, /readyz.
    pub http: Option<SocketAddr>,
}

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No client.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The HTTP endpoint could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs until SIGTERM or SIGINT; a leader gives its Lease up on the way out.
pub async fn run(opts: ControllerOptions) -> Result<(), ControllerError> {
    let config = crate::k8s::daemon::config(opts.kubeconfig.as_deref()).await?;
    let client = kube::Client::try_from(config).map_err(|e| StartError::Client(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = opts.http {
        let m = metrics.clone();
        let not_ready = "the caches of Nodes, Leases, VolumeAttachments and VolumeReservations are not loaded yet\n";
        crate::daemon::http::spawn(addr, Arc::new(move || m.render()), ready.clone(), not_ready)
            .await
            .map_err(|source| ControllerError::Listen { addr, source })?;
    }
    let (stop_tx, stop) = watch::channel(false);
    let controller = Controller::new(client, opts.spec, metrics);
    let running = tokio::spawn(controller.run(ready, stop));
    crate::platform::stop_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    // Give the elector its moment to hand the Lease over.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), running).await;
    Ok(())
}
