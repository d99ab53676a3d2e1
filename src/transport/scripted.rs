//! A [`Transport`] that plays back recorded completions, for tests of the
//! layers above SG_IO and for `--dry-run`-style recording.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{Completion, ScsiError, Transport};
use crate::scsi::{Cdb, Command, DataTransfer};

/// One command as the scripted transport received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The device path it was sent to.
    pub device: PathBuf,
    /// The CDB.
    pub cdb: Cdb,
    /// The data sent (PR OUT parameter list), if any.
    pub data_out: Vec<u8>,
}

/// Answers each command with the next scripted completion, in order.
pub struct Scripted {
    answers: Mutex<VecDeque<Completion>>,
    sent: Mutex<Vec<Sent>>,
}

impl Scripted {
    /// A transport that will answer with `answers`, one per command.
    pub fn new(answers: Vec<Completion>) -> Self {
        Scripted {
            answers: Mutex::new(answers.into()),
            sent: Mutex::new(Vec::new()),
        }
    }

    /// Every command received so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Transport for Scripted {
    fn execute(
        &self,
        path: &Path,
        cmd: &Command,
        _timeout: Duration,
    ) -> Result<Completion, ScsiError> {
        if let Ok(mut s) = self.sent.lock() {
            s.push(Sent {
                device: path.to_path_buf(),
                cdb: cmd.cdb,
                data_out: match &cmd.data {
                    DataTransfer::ToDevice(v) => v.clone(),
                    _ => Vec::new(),
                },
            });
        }
        let next = self.answers.lock().ok().and_then(|mut a| a.pop_front());
        next.ok_or_else(|| ScsiError::NotScsi {
            device: path.to_path_buf(),
            reason: format!("scripted transport has no answer left for {cmd}"),
        })
    }

    /// Scripted devices have no device number: each operation proves their
    /// identity again.
    fn device_number(&self, _path: &Path) -> Option<u64> {
        None
    }

    fn replays_registrations(&self) -> bool {
        false
    }
}
