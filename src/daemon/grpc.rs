//! The node API (proto/csifencer/v1/fencer.proto) on a unix socket: a CSI
//! node plugin's Acquire before it mounts, and `csi-fencer ctl`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::reconcile::{self, Op, Reconciler, VolumeOps, VolumeStatus};
use crate::fence::engine::Volume;
use crate::fence::policy::{AccessMode, Policy};
use crate::source::Attachments;

/// The generated protobuf types and service stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("csifencer.v1");
}

use pb::fencer_server::{Fencer as FencerApi, FencerServer};

/// What the source says now, shared with the API for on-demand reconciles.
#[derive(Debug, Clone)]
pub struct SourceView {
    /// This node.
    pub node: String,
    /// The reservation policy.
    pub policy: Policy,
    /// The latest good snapshot and when it was confirmed.
    pub snapshot: Arc<Mutex<(Attachments, SystemTime)>>,
}

/// The service.
pub struct NodeService<F: VolumeOps> {
    rec: Arc<Reconciler<F>>,
    world: SourceView,
    default_timeout: Duration,
}

impl<F: VolumeOps> NodeService<F> {
    /// A service over the reconciler.
    pub fn new(rec: Arc<Reconciler<F>>, world: SourceView, default_timeout: Duration) -> Self {
        NodeService {
            rec,
            world,
            default_timeout,
        }
    }
}

fn to_pb(s: &VolumeStatus) -> pb::VolumeStatus {
    use reconcile::Phase as P;
    let phase = match s.phase {
        P::Pending => pb::Phase::Pending,
        P::Held => pb::Phase::Held,
        P::Registered => pb::Phase::Registered,
        P::Fenced => pb::Phase::Fenced,
        P::Released => pb::Phase::Released,
        P::Error => pb::Phase::Error,
    };
    pb::VolumeStatus {
        volume: s.volume.clone(),
        wwid: s.wwid.clone(),
        phase: phase as i32,
        message: s.message.clone(),
        paths_registered: s.paths_registered as u32,
        paths_total: s.paths_total as u32,
        last_transition_unix: s.last_transition as i64,
        attachment: s.attachment.clone().unwrap_or_default(),
    }
}

impl<F: VolumeOps> NodeService<F> {
    /// Runs `op` (after whatever runs on the volume now) and waits for the
    /// update that answers it: same volume and kind of operation, and for an
    /// acquire the same attachment (a monitor check of the old attachment, or
    /// the end of an operation that was already running, is no answer).
    async fn run_and_wait(&self, op: Op, timeout: Duration) -> Result<VolumeStatus, Status> {
        let name = op.volume().to_string();
        let (kind, asked) = (op.kind(), op.asked());
        let mut rx = self.rec.subscribe();
        self.rec.submit(op);
        let answers =
            |u: &reconcile::Update| u.status.volume == name && u.op == kind && u.asked == asked;
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(u) if answers(&u) => return Ok(u.status),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return Err(Status::unavailable("the daemon is stopping")),
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "volume {name}: no result within {}",
                crate::text::duration(&timeout)
            ))
        })?
    }

    fn timeout(&self, secs: u32) -> Duration {
        if secs == 0 {
            self.default_timeout
        } else {
            Duration::from_secs(secs as u64)
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::VolumeStatus, Status>> + Send>>;

#[tonic::async_trait]
impl<F: VolumeOps> FencerApi for NodeService<F> {
    async fn acquire(
        &self,
        req: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::VolumeStatus>, Status> {
        let r = req.into_inner();
        let (snap, read_at) = self
            .world
            .snapshot
            .lock()
            .map(|s| s.clone())
            .map_err(|_| Status::internal("state lock"))?;
        let a = snap
            .for_node(&self.world.node)
            .find(|a| a.volume == r.volume)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {} is not attached to node {} in the attachment source",
                    r.volume, self.world.node
                ))
            })?;
        // Always on the LUN: a status held a minute ago is no proof now, and
        // the acquire of a held volume costs only its reads.
        let op = Op::Acquire {
            vol: Volume {
                name: a.volume.clone(),
                wwid: a.wwid.clone(),
                device: None,
                access: a.access,
                policy: a.overrides.apply(&self.world.policy),
            },
            auth: crate::fence::engine::Authorization {
                attachment: a.id.clone(),
                read_at,
                notes: Vec::new(),
                confirm: None,
            },
            live: snap.nodes_of(&a.volume),
        };
        let status = self
            .run_and_wait(op, self.timeout(r.timeout_seconds))
            .await?;
        // Only Held lets a node write safely: Registered under another
        // node's reservation is exactly what fencing must prevent.
        match status.phase {
            reconcile::Phase::Held => Ok(Response::new(to_pb(&status))),
            _ => Err(Status::failed_precondition(format!(
                "volume {}: {}: {}",
                status.volume, status.phase, status.message
            ))),
        }
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::VolumeStatus>, Status> {
        let r = req.into_inner();
        let st =
            self.rec.statuses().get(&r.volume).cloned().ok_or_else(|| {
                Status::not_found(format!("volume {} is not known here", r.volume))
            })?;
        let wwid = st
            .wwid
            .parse()
            .map_err(|_| Status::internal("stored WWID does not parse"))?;
        let vol = Volume {
            name: r.volume.clone(),
            wwid,
            device: None,
            access: AccessMode::SingleNode,
            policy: self.world.policy.clone(),
        };
        let status = self
            .run_and_wait(
                Op::Release {
                    vol,
                    explicit: true,
                },
                self.default_timeout,
            )
            .await?;
        match status.phase {
            reconcile::Phase::Released => Ok(Response::new(to_pb(&status))),
            _ => Err(Status::failed_precondition(format!(
                "volume {}: {}: {}",
                status.volume, status.phase, status.message
            ))),
        }
    }

    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::VolumeStatus>, Status> {
        let name = req.into_inner().volume;
        self.rec
            .statuses()
            .get(&name)
            .map(|s| Response::new(to_pb(s)))
            .ok_or_else(|| Status::not_found(format!("volume {name} is not known here")))
    }

    async fn list_volumes(
        &self,
        _: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let volumes = self.rec.statuses().values().map(to_pb).collect();
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    type WatchVolumesStream = WatchStream;

    async fn watch_volumes(
        &self,
        _: Request<pb::WatchVolumesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let rx = self.rec.subscribe();
        let now: Vec<Result<pb::VolumeStatus, Status>> =
            self.rec.statuses().values().map(|s| Ok(to_pb(s))).collect();
        let changes = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|u| match u {
            Ok(u) if u.changed => Some(Ok(to_pb(&u.status))),
            _ => None,
        });
        Ok(Response::new(Box::pin(
            tokio_stream::iter(now).chain(changes),
        )))
    }
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
#[error("gRPC socket {path}: {what}")]
pub struct SocketError {
    /// The socket path.
    pub path: PathBuf,
    /// What failed.
    pub what: String,
}

/// Serves the API on a unix socket readable by root only (0600).
pub async fn serve<F: VolumeOps>(path: &Path, api: NodeService<F>) -> Result<(), SocketError> {
    let err = |what: String| SocketError {
        path: path.to_path_buf(),
        what,
    };
    let incoming = crate::platform::listen(path).map_err(err)?;
    tonic::transport::Server::builder()
        .add_service(FencerServer::new(api))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| err(format!("serve: {e}")))
}

/// A gRPC channel over the unix socket at `path` (also a CSI driver's).
pub async fn channel(
    path: &Path,
    timeout: Duration,
) -> Result<tonic::transport::Channel, SocketError> {
    let p = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .map_err(|e| SocketError {
            path: p.clone(),
            what: e.to_string(),
        })?
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    crate::platform::dial(&p).await?,
                ))
            }
        }))
        .await
        .map_err(|e| SocketError {
            path: path.to_path_buf(),
            what: format!("connect: {e}"),
        })
}

/// A client connected to the daemon's socket.
pub async fn connect(
    path: &Path,
) -> Result<pb::fencer_client::FencerClient<tonic::transport::Channel>, SocketError> {
    let channel = channel(path, Duration::from_secs(10))
        .await
        .map_err(|e| SocketError {
            path: e.path,
            what: format!("{} (is `csi-fencer run --grpc-socket` running?)", e.what),
        })?;
    Ok(pb::fencer_client::FencerClient::new(channel))
}
