//! Time as the engine sees it: wall time to age an authorization read from
//! another machine, monotonic time for an operation's own deadline. A trait,
//! so the deterministic simulation can run the real engine on virtual time.

use std::fmt::Debug;
use std::time::{Duration, Instant, SystemTime};

/// A source of time.
pub trait Clock: Send + Sync + Debug {
    /// Wall-clock time (authorizations carry the wall time of their read).
    fn wall(&self) -> SystemTime;
    /// Monotonic time since an arbitrary origin (deadlines).
    fn mono(&self) -> Duration;
}

/// The machine's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn mono(&self) -> Duration {
        self.origin.elapsed()
    }
}
