//! The node daemon (`csi-fencer run`): follows the attachments, reconciles
//! each volume with the engine, monitors held volumes, serves metrics and
//! health.

pub mod config;
pub mod grpc;
pub mod kernel_log;
pub mod metrics;
pub mod notice;
pub mod reconcile;
pub mod run;
