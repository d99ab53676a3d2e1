//! What wakes a source's loop besides its source: the monitor and resync
//! tickers, a due retry, a kernel notice of a conflict. Both sources (the
//! file and Kubernetes) wait on these the same way.

use std::time::Duration;

use tokio::time::{interval, Interval};

use super::notice::Noticed;
use super::reconcile::{Reconciler, VolumeOps};

/// Why the loop woke.
#[derive(Debug)]
pub enum Wake {
    /// The monitor interval: check every held volume.
    Monitor,
    /// The resync interval: plan everything again.
    Resync,
    /// A failed operation's retry is due.
    Retry,
    /// The kernel logged a conflict: check these LUNs now.
    Notice(Noticed),
}

impl Wake {
    /// Whether the plan checks held volumes (the monitor, a notice).
    pub fn checks(&self) -> bool {
        matches!(self, Wake::Monitor | Wake::Notice(_))
    }

    /// The notice, which limits the checks to its LUNs.
    pub fn noticed(self) -> Option<Noticed> {
        match self {
            Wake::Notice(n) => Some(n),
            _ => None,
        }
    }
}

/// The monitor and resync tickers.
pub struct Waker {
    monitor: Interval,
    resync: Interval,
}

impl Waker {
    /// Tickers at these intervals (each fires at once the first time).
    pub fn new(monitor: Duration, resync: Duration) -> Self {
        Waker {
            monitor: interval(monitor),
            resync: interval(resync),
        }
    }

    /// The next wake. Cancel-safe: a loop selects it beside its source.
    pub async fn next<F: VolumeOps>(&mut self, rec: &Reconciler<F>) -> Wake {
        tokio::select! {
            _ = self.monitor.tick() => Wake::Monitor,
            _ = self.resync.tick() => Wake::Resync,
            _ = rec.retry_due() => Wake::Retry,
            n = rec.notices().next() => Wake::Notice(n),
        }
    }
}
