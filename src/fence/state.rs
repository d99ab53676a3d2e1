//! The engine's memory that survives restarts: under which attachment this
//! node holds, is registering, or was fenced from, each LUN (I1).
//!
//! One small JSON file, rewritten atomically (temp file, fsync, rename, fsync
//! of the directory). A missing file means "nothing recorded" (first start);
//! an unreadable or corrupt one is an error, never an empty state: forgetting
//! a fence would let the fenced node register again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The identity of the attachment that authorises holding a volume: a
/// VolumeAttachment's UID, or a file source's generation. Compared for
/// equality only, never ordered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct AttachmentId(pub String);

impl std::fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where this node stands with a LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// About to register (or registered, not yet confirmed) under the attachment.
    Registering,
    /// Registered (and holding, for single-node volumes) under the attachment.
    Held,
    /// Found its key preempted while holding under the attachment.
    Fenced,
}

/// One LUN's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The volume (PV) name, for people reading the file.
    pub volume: String,
    /// The phase.
    pub phase: Phase,
    /// The attachment it applies to.
    pub attachment: AttachmentId,
    /// Seconds since the epoch when the phase was entered.
    pub since: u64,
}

impl Record {
    /// A record entered now.
    pub fn now(volume: &str, phase: Phase, attachment: &AttachmentId) -> Record {
        Record {
            volume: volume.to_string(),
            phase,
            attachment: attachment.clone(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File1 {
    version: u32,
    /// Keyed by WWID (`naa.…`): the LUN, whatever the volume is called.
    luns: BTreeMap<String, Record>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the state file or directory.
    #[error("state store {path}: {op} failed")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but is not valid state.
    #[error("state store {path} is corrupt ({why}); refusing to register anything until it is repaired or removed by an operator who knows no node is fenced")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The state file under a directory.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    luns: Mutex<BTreeMap<String, Record>>,
}

const FILE: &str = "reservations.json";

impl StateStore {
    /// Opens (creating the directory, not the file) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source,
        })?;
        let path = dir.join(FILE);
        let luns = match fs::read(&path) {
            Ok(b) => {
                let f: File1 = serde_json::from_slice(&b).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                if f.version != 1 {
                    return Err(StateError::Corrupt {
                        path,
                        why: format!("unknown version {}", f.version),
                    });
                }
                f.luns
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(StateError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        };
        Ok(StateStore {
            path,
            luns: Mutex::new(luns),
        })
    }

    /// The record of a LUN.
    pub fn get(&self, wwid: &str) -> Option<Record> {
        self.luns.lock().ok().and_then(|m| m.get(wwid).cloned())
    }

    /// Sets (or with `None` removes) a LUN's record and persists the file.
    pub fn set(&self, wwid: &str, rec: Option<Record>) -> Result<(), StateError> {
        let mut m = self.luns.lock().map_err(|_| StateError::Corrupt {
            path: self.path.clone(),
            why: "a writer panicked while holding the lock".into(),
        })?;
        let before = m.get(wwid).cloned();
        if before == rec {
            return Ok(());
        }
        match rec {
            Some(r) => m.insert(wwid.to_string(), r),
            None => m.remove(wwid),
        };
        let file = File1 {
            version: 1,
            luns: m.clone(),
        };
        if let Err(e) = self.write(&file) {
            // Keep memory equal to disk: a failed write changes nothing.
            match before {
                Some(b) => m.insert(wwid.to_string(), b),
                None => m.remove(wwid),
            };
            return Err(e);
        }
        Ok(())
    }

    fn write(&self, f: &File1) -> Result<(), StateError> {
        let io = |op, source| StateError::Io {
            path: self.path.clone(),
            op,
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body =
            serde_json::to_vec_pretty(f).map_err(|e| io("encode", std::io::Error::other(e)))?;
        let mut t = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("create temp file", e))?;
        t.write_all(&body).map_err(|e| io("write temp file", e))?;
        t.sync_all().map_err(|e| io("fsync temp file", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("rename", e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync directory", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn records_survive_a_reopen() {
        let d = TempDir::new("state");
        let s = StateStore::open(d.path()).unwrap();
        assert_eq!(s.get("naa.1"), None);
        let att = AttachmentId("uid-1".into());
        s.set("naa.1", Some(Record::now("pv-1", Phase::Fenced, &att)))
            .unwrap();
        drop(s);
        let s = StateStore::open(d.path()).unwrap();
        let r = s.get("naa.1").unwrap();
        assert_eq!(
            (r.phase, r.attachment, r.volume.as_str()),
            (Phase::Fenced, att, "pv-1")
        );
        s.set("naa.1", None).unwrap();
        assert_eq!(StateStore::open(d.path()).unwrap().get("naa.1"), None);
        assert!(!d.path().join("reservations.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_state() {
        let d = TempDir::new("state");
        fs::write(d.path().join(FILE), b"{\"version\":1,\"luns\":{\"x\":").unwrap();
        let e = StateStore::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        fs::write(d.path().join(FILE), b"{\"version\":7,\"luns\":{}}").unwrap();
        assert!(StateStore::open(d.path()).is_err());
    }
}
