//! The node daemon (`csi-fencer run`): follows the attachments, reconciles
//! each volume with the engine, monitors held volumes, serves metrics and
//! health. Generic over where attachments come from: the Kubernetes source
//! lives in `k8s`, and `runtime` puts the two together.

pub mod config;
pub mod file_loop;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod notice;
pub mod reconcile;
pub mod wake;
