//! The failover controller's metrics (`/metrics` of `csi-fencer controller`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the controller.
pub struct Metrics {
    registry: Registry,
    /// Taints applied and removed (`action`).
    pub taints: IntCounterVec,
    /// Dead nodes left untainted, by `reason`, counted when a node's reason
    /// changes (not at every pass).
    pub refusals: IntCounterVec,
    /// From a node's last kubelet Lease renewal to csi-fencer's taint.
    pub detection: Histogram,
    /// 1 while this replica leads.
    pub leader: IntGauge,
    /// Nodes whose kubelet Lease is older than the grace period.
    pub dead: IntGauge,
    /// Nodes carrying csi-fencer's taint.
    pub tainted: IntGauge,
    /// Taints and untaints that failed, by action and error kind.
    pub errors: IntCounterVec,
    /// Terminating pods of tainted nodes force-deleted.
    pub pods_deleted: IntCounter,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // The definitions are constants of this file: a failure is a bug here,
    // caught by the unit test that builds them.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let m = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(m.clone())));
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = must(IntGauge::new(name, help));
            must(registry.register(Box::new(m.clone())));
            m
        };
        let detection = must(Histogram::with_opts(
            HistogramOpts::new(
                "csi_fencer_failover_detection_seconds",
                "From a node's last kubelet Lease renewal to csi-fencer's out-of-service taint.",
            )
            .buckets(vec![
                10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 90.0, 120.0, 300.0,
            ]),
        ));
        must(registry.register(Box::new(detection.clone())));
        let pods_deleted = must(IntCounter::new(
            "csi_fencer_failover_pods_deleted_total",
            "Terminating pods of nodes csi-fencer tainted, force-deleted without waiting for pod GC.",
        ));
        must(registry.register(Box::new(pods_deleted.clone())));
        Metrics {
            pods_deleted,
            taints: counters(
                "csi_fencer_failover_taints_total",
                "Out-of-service taints csi-fencer applied or removed.",
                &["action"],
            ),
            refusals: counters(
                "csi_fencer_failover_refusals_total",
                "Dead nodes csi-fencer did not taint, by reason (counted when a node's reason changes).",
                &["reason"],
            ),
            detection,
            leader: gauge(
                "csi_fencer_failover_leader",
                "1 while this replica leads the failover controller.",
            ),
            dead: gauge(
                "csi_fencer_failover_dead_nodes",
                "Nodes whose kubelet Lease was not renewed for the grace period.",
            ),
            tainted: gauge(
                "csi_fencer_failover_tainted_nodes",
                "Nodes carrying the out-of-service taint csi-fencer applied.",
            ),
            errors: counters(
                "csi_fencer_failover_api_errors_total",
                "Failed taints, untaints and pod deletions of the failover controller, by action and error kind.",
                &["action", "kind"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_builds_and_renders() {
        let m = super::Metrics::new();
        m.taints.with_label_values(&["applied"]).inc();
        m.refusals.with_label_values(&["cordoned"]).inc();
        m.detection.observe(31.0);
        let text = m.render();
        for name in [
            "csi_fencer_failover_taints_total{action=\"applied\"} 1",
            "csi_fencer_failover_refusals_total{reason=\"cordoned\"} 1",
            "csi_fencer_failover_detection_seconds_count 1",
            "csi_fencer_failover_leader 0",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
