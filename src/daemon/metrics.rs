//! Prometheus metrics, prefixed `csi_fencer_`, and a transport wrapper that
//! counts and times every SCSI command.

use std::path::Path;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::fence::engine::VolumeState;
use crate::scsi::{Command, ScsiStatus};
use crate::transport::{Completion, HostStatus, ScsiError, Transport};

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// PR (and INQUIRY, TUR) commands by command name and result.
    pub commands: IntCounterVec,
    /// Command latency by command name.
    pub command_seconds: HistogramVec,
    /// Engine operations by kind and outcome.
    pub operations: IntCounterVec,
    /// Engine operation latency by kind.
    pub operation_seconds: HistogramVec,
    /// Time from a source change (new attachment) to the volume being held.
    pub attach_to_held_seconds: HistogramVec,
    /// Keys preempted by this node.
    pub preemptions: IntCounter,
    /// RESERVATION CONFLICT answers seen by this node.
    pub conflicts: IntCounter,
    /// RESERVATION CONFLICTs of this node's own I/O, from the kernel log.
    pub kernel_conflicts: IntCounter,
    /// Time from the kernel's first conflict record for a LUN to the daemon
    /// reporting it fenced.
    pub kernel_notice_to_fenced_seconds: HistogramVec,
    /// Volumes by phase.
    pub volumes: IntGaugeVec,
    /// Paths registered and total, per volume.
    pub paths: IntGaugeVec,
    /// Reconcile errors by kind.
    pub reconcile_errors: IntCounterVec,
    /// The attachment source could not be read or was invalid.
    pub source_errors: IntCounter,
    /// 1 while the API server answers, 0 while it cannot be reached.
    pub kube_api_up: IntGauge,
    /// API requests by verb, resource and HTTP code (`error` without one).
    pub kube_requests: IntCounterVec,
    /// VolumeAttachment watch events by type.
    pub kube_watch_events: IntCounterVec,
    /// VolumeAttachments in the compact cache.
    pub volumeattachments: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants of this file: a failure is a bug here,
    // caught by the unit test that builds them.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(m.clone())));
            m
        };
        let hist_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let m = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                labels,
            ));
            must(registry.register(Box::new(m.clone())));
            m
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(m.clone())));
            m
        };
        let counter = |name: &str, help: &str| {
            let m = must(IntCounter::new(name, help));
            must(registry.register(Box::new(m.clone())));
            m
        };
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ];
        let slow = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let m = Metrics {
            commands: counter_vec(
                "csi_fencer_scsi_commands_total",
                "SCSI commands sent, by command and result.",
                &["command", "result"],
            ),
            command_seconds: hist_vec(
                "csi_fencer_scsi_command_duration_seconds",
                "SCSI command latency.",
                &["command"],
                fast,
            ),
            operations: counter_vec(
                "csi_fencer_operations_total",
                "Fencing operations by kind and outcome.",
                &["operation", "outcome"],
            ),
            operation_seconds: hist_vec(
                "csi_fencer_operation_duration_seconds",
                "Fencing operation latency.",
                &["operation"],
                slow.clone(),
            ),
            attach_to_held_seconds: hist_vec(
                "csi_fencer_attachment_to_held_seconds",
                "Time from reading an attachment change to the reservation being held.",
                &["source"],
                vec![
                    0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                    0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            ),
            preemptions: counter(
                "csi_fencer_preemptions_total",
                "Keys preempted by this node.",
            ),
            conflicts: counter(
                "csi_fencer_reservation_conflicts_total",
                "RESERVATION CONFLICT answers seen by this node.",
            ),
            kernel_conflicts: counter(
                "csi_fencer_kernel_conflicts_total",
                "RESERVATION CONFLICT records of this node's own I/O in the kernel log.",
            ),
            kernel_notice_to_fenced_seconds: hist_vec(
                "csi_fencer_kernel_notice_to_fenced_seconds",
                "Time from the kernel's first RESERVATION CONFLICT record for a LUN to the daemon reporting it fenced.",
                &[],
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ],
            ),
            volumes: gauge_vec("csi_fencer_volumes", "Volumes by state.", &["state"]),
            paths: gauge_vec(
                "csi_fencer_volume_paths",
                "Paths of each volume: registered and total.",
                &["volume", "kind"],
            ),
            reconcile_errors: counter_vec(
                "csi_fencer_reconcile_errors_total",
                "Failed reconciles by error kind.",
                &["kind"],
            ),
            source_errors: counter(
                "csi_fencer_source_errors_total",
                "Attachment source reads that failed or were invalid.",
            ),
            kube_api_up: must(IntGauge::new(
                "csi_fencer_kube_api_up",
                "1 while the Kubernetes API server answers, 0 while it cannot be reached.",
            )),
            kube_requests: counter_vec(
                "csi_fencer_kube_requests_total",
                "Kubernetes API requests by verb, resource and HTTP status code.",
                &["verb", "resource", "code"],
            ),
            kube_watch_events: counter_vec(
                "csi_fencer_kube_watch_events_total",
                "VolumeAttachment watch events by type.",
                &["type"],
            ),
            volumeattachments: must(IntGauge::new(
                "csi_fencer_volumeattachments",
                "VolumeAttachments of the configured drivers in the compact cache.",
            )),
            registry,
        };
        must(m.registry.register(Box::new(m.kube_api_up.clone())));
        must(m.registry.register(Box::new(m.volumeattachments.clone())));
        m.kube_api_up.set(1);
        let info = must(IntGaugeVec::new(
            Opts::new("csi_fencer_build_info", "Build information."),
            &["version"],
        ));
        must(m.registry.register(Box::new(info.clone())));
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records one engine operation.
    pub fn operation(&self, kind: &str, r: Result<VolumeState, &str>, took: Duration) {
        let outcome = match r {
            Ok(s) => match s {
                VolumeState::Held => "held",
                VolumeState::Registered => "registered",
                VolumeState::Fenced => "fenced",
                VolumeState::NotRegistered => "not_registered",
                VolumeState::Lost => "lost",
                VolumeState::Refused => "refused",
            },
            Err(kind) => {
                self.reconcile_errors.with_label_values(&[kind]).inc();
                "error"
            }
        };
        self.operations.with_label_values(&[kind, outcome]).inc();
        self.operation_seconds
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }

    /// Sets the per-state and per-volume gauges, one entry per volume.
    pub fn set_volumes<'a>(&self, all: impl IntoIterator<Item = VolumeGauge<'a>>) {
        for p in STATES {
            self.volumes.with_label_values(&[p]).set(0);
        }
        for g in all {
            self.volumes.with_label_values(&[g.state]).inc();
            self.paths
                .with_label_values(&[g.volume, "registered"])
                .set(g.paths_registered as i64);
            self.paths
                .with_label_values(&[g.volume, "total"])
                .set(g.paths_total as i64);
        }
    }
}

/// The `state` label values of `csi_fencer_volumes`, each set every time.
pub const STATES: [&str; 6] = [
    "pending",
    "held",
    "registered",
    "fenced",
    "released",
    "error",
];

/// What the gauges show of one volume.
pub struct VolumeGauge<'a> {
    /// The volume (PV) name.
    pub volume: &'a str,
    /// One of [`STATES`].
    pub state: &'static str,
    /// Paths carrying this node's key.
    pub paths_registered: usize,
    /// All paths of the LUN.
    pub paths_total: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A transport that counts and times every command it passes on.
pub struct Metered<T> {
    inner: T,
    metrics: std::sync::Arc<Metrics>,
}

impl<T> Metered<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, metrics: std::sync::Arc<Metrics>) -> Self {
        Metered { inner, metrics }
    }
}

fn result_label(r: &Result<Completion, ScsiError>) -> &'static str {
    match r {
        Err(e) => e.kind(),
        Ok(c) if c.host_status != HostStatus::Ok => "transport",
        Ok(c) => match c.status {
            ScsiStatus::Good | ScsiStatus::ConditionMet => "good",
            ScsiStatus::ReservationConflict => "reservation_conflict",
            ScsiStatus::CheckCondition => "check_condition",
            _ => "other_status",
        },
    }
}

impl<T: Transport> Transport for Metered<T> {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        let t0 = std::time::Instant::now();
        let r = self.inner.execute(path, cmd, timeout);
        let label = result_label(&r);
        self.metrics
            .commands
            .with_label_values(&[cmd.name, label])
            .inc();
        self.metrics
            .command_seconds
            .with_label_values(&[cmd.name])
            .observe(t0.elapsed().as_secs_f64());
        if label == "reservation_conflict" {
            self.metrics.conflicts.inc();
        }
        r
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        self.inner.device_number(path)
    }

    fn replays_registrations(&self) -> bool {
        self.inner.replays_registrations()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::scripted::Scripted;

    /// The daemon's transport (metered, hang hook, SG_IO) passes the device
    /// number on: without it the engine's I3 guards see no number at all.
    #[test]
    #[cfg(unix)]
    fn the_daemons_transport_passes_the_device_number_on() {
        use crate::transport::{hang::Hanging, sgio::SgIo};
        let t = Metered::new(
            Hanging::new(SgIo, Vec::new()),
            std::sync::Arc::new(Metrics::new()),
        );
        let null = Path::new("/dev/null");
        assert!(SgIo.device_number(null).is_some());
        assert_eq!(t.device_number(null), SgIo.device_number(null));
    }

    #[test]
    fn metrics_build_and_count_commands_by_result() {
        let m = std::sync::Arc::new(Metrics::new());
        let t = Metered::new(
            Scripted::new(vec![
                Completion::good(vec![]),
                Completion::with_status(ScsiStatus::ReservationConflict),
            ]),
            m.clone(),
        );
        let tur = crate::scsi::cdb::test_unit_ready();
        let _ = t.execute(Path::new("/dev/x"), &tur, Duration::from_secs(1));
        let _ = t.execute(Path::new("/dev/x"), &tur, Duration::from_secs(1));
        let text = m.render();
        assert!(
            text.contains(
                "csi_fencer_scsi_commands_total{command=\"TEST UNIT READY\",result=\"good\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("result=\"reservation_conflict\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("csi_fencer_reservation_conflicts_total 1"),
            "{text}"
        );
        assert!(text.contains("csi_fencer_build_info{version="), "{text}");
    }
}
