//! Sending commands to one path (I_T nexus) of a logical unit.
//!
//! [`Transport`] executes one CDB on one device path and reports what came
//! back, without judging it; [`ScsiPath`] turns that into typed results and
//! [`ScsiError`]s that name the device, the command and the decoded sense.

mod error;
pub mod hang;
mod path;
pub mod scripted;
#[cfg(unix)]
pub mod sgio;
pub mod windows;

use std::path::Path;
use std::time::Duration;

pub use error::{HostStatus, Refusal, ScsiError, LINUX_PRIVILEGE};
pub use path::{RetryPolicy, ScsiPath};

use crate::scsi::{Command, ScsiStatus};

/// What the host adapter and the device answered to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The full SCSI status byte.
    pub status: ScsiStatus,
    /// The host adapter's verdict (transport failures, timeouts).
    pub host_status: HostStatus,
    /// The Linux driver status (sense valid, timeout …), raw.
    pub driver_status: u16,
    /// Sense data, empty when none was returned.
    pub sense: Vec<u8>,
    /// Data received (already cut to what the device sent).
    pub data: Vec<u8>,
    /// How long the command took, as the kernel measured it.
    pub duration: Duration,
}

impl Completion {
    /// A GOOD completion carrying `data`, for scripted transports.
    pub fn good(data: Vec<u8>) -> Completion {
        Completion {
            status: ScsiStatus::Good,
            host_status: HostStatus::Ok,
            driver_status: 0,
            sense: Vec::new(),
            data,
            duration: Duration::ZERO,
        }
    }

    /// A CHECK CONDITION completion with `sense`.
    pub fn check_condition(sense: Vec<u8>) -> Completion {
        Completion {
            status: ScsiStatus::CheckCondition,
            sense,
            ..Completion::good(Vec::new())
        }
    }

    /// A completion with `status` and no data.
    pub fn with_status(status: ScsiStatus) -> Completion {
        Completion {
            status,
            ..Completion::good(Vec::new())
        }
    }
}

/// Executes one SCSI command on one device path.
///
/// Implementations report the device's answer as a [`Completion`] and fail
/// only when the command could not be delivered or did not finish (no
/// device, no permission, not SCSI, timeout).
pub trait Transport: Send + Sync {
    /// Sends `cmd` to `path` and waits at most `timeout` for it.
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError>;

    /// The device number (`st_rdev`) behind `path` now, where there is one.
    /// The engine checks it right before each PR OUT against the number it
    /// had when the path's identity (VPD 83h) was proven, and reuses a
    /// proven identity only while it is unchanged: a name that the kernel
    /// gave to another device meanwhile must not receive a command (I3).
    /// No default: a wrapper that forgot to pass it on would silently turn
    /// both guards off.
    fn device_number(&self, path: &Path) -> Option<u64>;

    /// True when something below this transport keeps the key and
    /// registers it again by itself: Windows' MPIO DSM registers the key it
    /// last saw on every path that appears. A node that learns it is fenced
    /// must then make it forget (an unregister, which changes nothing on a
    /// LUN where the key is already gone), or a path that comes back would
    /// re-admit it (I1). No default, like [`Transport::device_number`].
    fn replays_registrations(&self) -> bool;

    /// Runs `jobs` (each sending commands through this transport) at once and
    /// returns their results in order: commands to independent paths need
    /// not wait for each other. The default runs each but the first on a thread of its own;
    /// a transport that schedules commands itself (the simulation) overrides
    /// it to keep every interleaving under its control.
    fn at_once<'a, R: Send + 'a>(&self, jobs: Vec<Job<'a, R>>) -> Vec<R>
    where
        Self: Sized,
    {
        if jobs.len() < 2 {
            return jobs.into_iter().map(|j| j()).collect();
        }
        // The first job runs on the calling thread: a thread costs more to
        // start than a PR OUT takes on a fast target.
        let mut jobs = jobs.into_iter();
        let first = jobs.next();
        std::thread::scope(|s| {
            let running: Vec<_> = jobs.map(|j| s.spawn(j)).collect();
            let mut out: Vec<R> = first.into_iter().map(|j| j()).collect();
            out.extend(
                running
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            );
            out
        })
    }
}

/// One of the jobs of [`Transport::at_once`].
pub type Job<'a, R> = Box<dyn FnOnce() -> R + Send + 'a>;

impl<T: Transport + ?Sized> Transport for &T {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        (**self).execute(path, cmd, timeout)
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        (**self).device_number(path)
    }

    fn replays_registrations(&self) -> bool {
        (**self).replays_registrations()
    }
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        (**self).execute(path, cmd, timeout)
    }

    fn device_number(&self, path: &Path) -> Option<u64> {
        (**self).device_number(path)
    }

    fn replays_registrations(&self) -> bool {
        (**self).replays_registrations()
    }
}
