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
    /// The LUN's PRGENERATION when the phase was entered. For `Registering`
    /// it tells a REGISTER that never landed (the LUN unchanged since) from a
    /// registration that was preempted afterwards (the generation moved).
    #[serde(default)]
    pub generation: Option<u32>,
    /// How many registrations READ KEYS listed with this node's key when the
    /// record was written. Registrations only go away by PREEMPT, CLEAR, a
    /// reset or this node's own unregister, so fewer of them later, with no
    /// reset in sight, is the evidence that another node preempted us (I7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<u32>,
    /// The paths (`H:C:T:L`, or the kernel name) this node registered, for
    /// targets without READ FULL STATUS, where the LUN cannot say which I_T
    /// nexus carries the key: only paths missing here are registered again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The registrations were made with ALL_TG_PT (unregistering repeats it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_tg_pt: bool,
    /// Paths whose REGISTER went out but whose landing is not proven yet (an
    /// answer lost, or a crash before the read-back). A REGISTER that lands
    /// after another node's PREEMPT adds one registration where the PREEMPT
    /// took one: the count alone would hide the fence, so these are asked
    /// one by one before the count is trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsure: Vec<String>,
    /// A command to this LUN lost its answer since `key_count` was read: a
    /// reset's unit attention may have gone with it, so fewer registrations
    /// are not taken for a fence before every path has been asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blind: bool,
    /// Fenced on silence: no path could tell a target reset from a
    /// preemption. Every later report of this fence says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guessed: bool,
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
            generation: None,
            key_count: None,
            paths: Vec::new(),
            all_tg_pt: false,
            unsure: Vec::new(),
            blind: false,
            guessed: false,
        }
    }

    /// The same record, noting the LUN's PR generation.
    pub fn at_generation(mut self, generation: u32) -> Record {
        self.generation = Some(generation);
        self
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

/// The state file under a directory. Every read goes to the file, and every
/// change re-reads and rewrites it under an exclusive lock, so a daemon and
/// an operator's CLI sharing the directory never lose each other's records.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    lock: PathBuf,
}

const FILE: &str = "reservations.json";
const LOCK: &str = "reservations.lock";

impl StateStore {
    /// Opens (creating the directory, not the file) the store in `dir`, and
    /// checks that an existing file is readable.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source,
        })?;
        let s = StateStore {
            path: dir.join(FILE),
            lock: dir.join(LOCK),
        };
        s.load()?;
        Ok(s)
    }

    /// The file the records live in.
    pub fn file(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<BTreeMap<String, Record>, StateError> {
        let b = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(self.io("read", source)),
        };
        let f: File1 = serde_json::from_slice(&b).map_err(|e| self.corrupt(e.to_string()))?;
        if f.version != 1 {
            return Err(self.corrupt(format!("unknown version {}", f.version)));
        }
        Ok(f.luns)
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn corrupt(&self, why: String) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            why,
        }
    }

    /// Every LUN's record, by WWID, read from the file now.
    pub fn all(&self) -> Result<BTreeMap<String, Record>, StateError> {
        self.load()
    }

    /// The record of a LUN, read from the file now.
    pub fn get(&self, wwid: &str) -> Result<Option<Record>, StateError> {
        Ok(self.load()?.remove(wwid))
    }

    /// Sets (or with `None` removes) a LUN's record: under an exclusive lock,
    /// re-read, change, write atomically.
    pub fn set(&self, wwid: &str, rec: Option<Record>) -> Result<(), StateError> {
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| self.io("open lock file", e))?;
        let _guard = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.io("lock", std::io::Error::from_raw_os_error(e as i32)))?;
        let mut luns = self.load()?;
        let changed = match rec {
            Some(r) => luns.insert(wwid.to_string(), r.clone()).as_ref() != Some(&r),
            None => luns.remove(wwid).is_some(),
        };
        if changed {
            self.write(&File1 { version: 1, luns })?;
        }
        Ok(())
    }

    fn write(&self, f: &File1) -> Result<(), StateError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let tmp = self.path.with_extension(format!(
            "json.{}.{}.tmp",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let body = serde_json::to_vec_pretty(f)
            .map_err(|e| self.io("encode", std::io::Error::other(e)))?;
        let mut t = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| self.io("create temp file", e))?;
        let written = t.write_all(&body).and_then(|_| t.sync_all());
        if let Err(e) = written.and_then(|_| fs::rename(&tmp, &self.path)) {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("write temp file and rename", e));
        }
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io("fsync directory", e))?;
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
        assert_eq!(s.get("naa.1").unwrap(), None);
        let att = AttachmentId("uid-1".into());
        s.set("naa.1", Some(Record::now("pv-1", Phase::Fenced, &att)))
            .unwrap();
        drop(s);
        let s = StateStore::open(d.path()).unwrap();
        let r = s.get("naa.1").unwrap().unwrap();
        assert_eq!(
            (r.phase, r.attachment, r.volume.as_str()),
            (Phase::Fenced, att, "pv-1")
        );
        s.set("naa.1", None).unwrap();
        assert_eq!(
            StateStore::open(d.path()).unwrap().get("naa.1").unwrap(),
            None
        );
        let leftovers: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn two_stores_on_one_directory_keep_each_others_records() {
        let d = TempDir::new("state");
        let (daemon, cli) = (
            StateStore::open(d.path()).unwrap(),
            StateStore::open(d.path()).unwrap(),
        );
        let att = AttachmentId("g".into());
        daemon
            .set("naa.1", Some(Record::now("pv-1", Phase::Fenced, &att)))
            .unwrap();
        cli.set("naa.2", Some(Record::now("pv-2", Phase::Held, &att)))
            .unwrap();
        assert_eq!(daemon.get("naa.1").unwrap().unwrap().phase, Phase::Fenced);
        assert_eq!(daemon.get("naa.2").unwrap().unwrap().phase, Phase::Held);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = d.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = StateStore::open(&dir).unwrap();
                    let a = AttachmentId(format!("t{i}"));
                    s.set(
                        &format!("naa.t{i}"),
                        Some(Record::now("v", Phase::Held, &a)),
                    )
                    .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for i in 0..8 {
            assert!(
                cli.get(&format!("naa.t{i}")).unwrap().is_some(),
                "record {i} lost"
            );
        }
        assert!(cli.get("naa.1").unwrap().is_some());
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
