//! Kernel notices of a conflict (see `platform::linux::kernel_log`), waiting for the
//! daemon's loop: which LUNs to check now, and since when the kernel has
//! said so (to measure how fast the daemon learns it is fenced).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A LUN noticed again within this time of its last notice is not checked
/// again: a fenced node's writers log a conflict per failed I/O.
pub const QUIET: Duration = Duration::from_secs(1);

/// What the loop checks on a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Noticed {
    /// A conflict on a path that could not be placed: every held volume.
    All,
    /// These LUNs (WWIDs as the engine writes them).
    Luns(BTreeSet<String>),
}

impl Noticed {
    /// Whether a check of the LUN `wwid` is one this notice asks for.
    pub fn covers(&self, wwid: &str) -> bool {
        match self {
            Noticed::All => true,
            Noticed::Luns(l) => l.contains(wwid),
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    all: bool,
    luns: BTreeSet<String>,
    /// The kernel's time (CLOCK_MONOTONIC) of the first conflict of each
    /// LUN not yet found fenced.
    first: BTreeMap<String, Duration>,
    /// When each LUN was last noticed.
    last: BTreeMap<String, Instant>,
}

/// The notices, shared by the kernel log's thread and the daemon's loop.
#[derive(Debug, Default)]
pub struct Notices {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

impl Notices {
    /// The kernel logged a conflict on a path of `lun` (`None`: a path it
    /// could not place) at `at` (its CLOCK_MONOTONIC time).
    pub fn notice(&self, lun: Option<String>, at: Option<Duration>) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        let Some(lun) = lun else {
            p.all = true;
            drop(p);
            self.wake.notify_one();
            return;
        };
        if let Some(at) = at {
            p.first.entry(lun.clone()).or_insert(at);
        }
        let now = Instant::now();
        if p.last.get(&lun).is_some_and(|t| now < *t + QUIET) {
            return;
        }
        p.last.insert(lun.clone(), now);
        p.luns.insert(lun);
        drop(p);
        self.wake.notify_one();
    }

    /// Waits for notices and takes them.
    pub async fn next(&self) -> Noticed {
        loop {
            self.wake.notified().await;
            if let Some(n) = self.take() {
                return n;
            }
        }
    }

    fn take(&self) -> Option<Noticed> {
        let mut p = self.pending.lock().ok()?;
        let luns = std::mem::take(&mut p.luns);
        if std::mem::take(&mut p.all) {
            return Some(Noticed::All);
        }
        (!luns.is_empty()).then_some(Noticed::Luns(luns))
    }

    /// The LUN was found fenced: how long after the kernel's first conflict
    /// (`now` on the same clock), if the kernel told.
    pub fn fenced(&self, lun: &str, now: Duration) -> Option<Duration> {
        let first = self.pending.lock().ok()?.first.remove(lun)?;
        Some(now.saturating_sub(first))
    }

    /// An operation that started at `started` (same clock) found the LUN
    /// not fenced: conflicts logged before it were not a fence (this node's
    /// own PR OUT meeting another node's reservation logs one too).
    pub fn not_fenced(&self, lun: &str, started: Duration) {
        if let Ok(mut p) = self.pending.lock() {
            if p.first.get(lun).is_some_and(|t| *t < started) {
                p.first.remove(lun);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_gather_until_taken_and_a_lun_is_quiet_for_a_while() {
        let n = Notices::default();
        n.notice(Some("naa.1".into()), Some(Duration::from_secs(5)));
        n.notice(Some("naa.2".into()), None);
        n.notice(Some("naa.1".into()), Some(Duration::from_secs(6)));
        let got = n.next().await;
        assert_eq!(
            got,
            Noticed::Luns(["naa.1".to_string(), "naa.2".to_string()].into())
        );
        // Within QUIET of its notice: not checked again.
        n.notice(Some("naa.1".into()), None);
        assert_eq!(n.take(), None);
        // The first conflict's time is what the delay is measured from.
        assert_eq!(
            n.fenced("naa.1", Duration::from_secs(7)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(n.fenced("naa.1", Duration::from_secs(8)), None, "once");
        assert_eq!(n.fenced("naa.2", Duration::from_secs(8)), None, "no time");
    }

    #[test]
    fn a_conflict_that_was_no_fence_is_not_measured_later() {
        let n = Notices::default();
        n.notice(Some("naa.1".into()), Some(Duration::from_secs(5)));
        // A check that started before the conflict proves nothing of it.
        n.not_fenced("naa.1", Duration::from_secs(4));
        assert_eq!(
            n.fenced("naa.1", Duration::from_secs(6)),
            Some(Duration::from_secs(1))
        );
        n.notice(Some("naa.2".into()), Some(Duration::from_secs(5)));
        n.not_fenced("naa.2", Duration::from_secs(6));
        assert_eq!(n.fenced("naa.2", Duration::from_secs(60)), None);
    }

    #[tokio::test]
    async fn a_conflict_that_cannot_be_placed_checks_everything() {
        let n = Notices::default();
        n.notice(Some("naa.1".into()), None);
        n.notice(None, None);
        assert_eq!(n.next().await, Noticed::All);
    }

    #[test]
    fn the_monotonic_clock_reads() {
        let a = crate::platform::monotonic().expect("CLOCK_MONOTONIC");
        let b = crate::platform::monotonic().expect("CLOCK_MONOTONIC");
        assert!(b >= a);
    }
}
