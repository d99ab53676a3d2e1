//! The engine's memory that survives restarts: under which attachment this
//! node holds, is registering, or was fenced from, each LUN (I1).
//!
//! One small JSON file per LUN, rewritten atomically (temp file, fsync,
//! rename, fsync of the directory). A missing file means "nothing recorded"
//! (first start); an unreadable or corrupt one is an error, never an empty
//! state: forgetting a fence would let the fenced node register again.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
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
pub enum Stage {
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
    /// The stage (written `phase` by earlier builds).
    #[serde(alias = "phase")]
    pub stage: Stage,
    /// The attachment it applies to.
    pub attachment: AttachmentId,
    /// Seconds since the epoch when the stage was entered.
    pub since: u64,
    /// The LUN's PRGENERATION when the stage was entered. For `Registering`
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
    pub fn now(volume: &str, stage: Stage, attachment: &AttachmentId) -> Record {
        Record {
            volume: volume.to_string(),
            stage,
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

/// One LUN's file.
#[derive(Debug, Serialize, Deserialize)]
struct LunFile {
    version: u32,
    /// The LUN (`naa.…`), whatever the volume is called. The file name
    /// is derived from it; this is what is trusted.
    wwid: String,
    record: Record,
}

/// The single file of earlier builds, every LUN in one map; read once and
/// split into one file per LUN when a store opens its directory.
#[derive(Debug, Deserialize)]
struct Legacy {
    version: u32,
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

/// The records under a directory, one file per LUN (`luns/<wwid>.json`).
/// Every read goes to the file (but for a record this process deferred,
/// which lives only for the rest of one acquire), so a daemon and an
/// operator's CLI sharing the directory see each other's records; every change is an atomic
/// rename of that LUN's file alone, so writers of different LUNs never
/// touch each other's records, and an acquire reads and writes one small
/// file however many LUNs the node holds.
#[derive(Debug)]
pub struct StateStore {
    luns: PathBuf,
    /// Records kept in memory ahead of their file (see [`StateStore::defer`]).
    deferred: Mutex<HashMap<String, Record>>,
}

const LUNS: &str = "luns";
const LEGACY: &str = "reservations.json";
const VERSION: u32 = 1;

fn io(path: &Path, op: &'static str, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn corrupt(path: &Path, why: String) -> StateError {
    StateError::Corrupt {
        path: path.to_path_buf(),
        why,
    }
}

impl StateStore {
    /// Opens (creating it if needed) the store in `dir`, takes over the
    /// single file of earlier builds, and checks that every record is
    /// readable.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let luns = dir.join(LUNS);
        fs::create_dir_all(&luns).map_err(|e| io(&luns, "create directory", e))?;
        let s = StateStore {
            luns,
            deferred: Mutex::new(HashMap::new()),
        };
        s.migrate(dir)?;
        s.all()?;
        Ok(s)
    }

    /// The file that holds the record of `wwid`.
    pub fn file_of(&self, wwid: &str) -> PathBuf {
        self.luns.join(format!("{}.json", file_name(wwid)))
    }

    fn read(&self, path: &Path) -> Result<Option<LunFile>, StateError> {
        let b = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path, "read", e)),
        };
        let f: LunFile = serde_json::from_slice(&b).map_err(|e| corrupt(path, e.to_string()))?;
        if f.version != VERSION {
            return Err(corrupt(path, format!("unknown version {}", f.version)));
        }
        Ok(Some(f))
    }

    /// Every LUN's record, by WWID, read from the files now (deferred ones
    /// as this process has them).
    pub fn all(&self) -> Result<BTreeMap<String, Record>, StateError> {
        let mut out = BTreeMap::new();
        let dir = fs::read_dir(&self.luns).map_err(|e| io(&self.luns, "list", e))?;
        for entry in dir {
            let path = entry.map_err(|e| io(&self.luns, "list", e))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                if let Some(f) = self.read(&path)? {
                    out.insert(f.wwid, f.record);
                }
            }
        }
        for (w, r) in self.deferred().iter() {
            out.insert(w.clone(), r.clone());
        }
        Ok(out)
    }

    /// The record of a LUN: the one deferred by this process if any, else
    /// read from its file now.
    pub fn get(&self, wwid: &str) -> Result<Option<Record>, StateError> {
        if let Some(r) = self.deferred().get(wwid) {
            return Ok(Some(r.clone()));
        }
        self.on_disk(wwid)
    }

    fn on_disk(&self, wwid: &str) -> Result<Option<Record>, StateError> {
        let path = self.file_of(wwid);
        match self.read(&path)? {
            Some(f) if f.wwid != wwid => {
                Err(corrupt(&path, format!("holds the record of {}", f.wwid)))
            }
            f => Ok(f.map(|f| f.record)),
        }
    }

    /// Sets (or with `None` removes) a LUN's record, durably: written to a
    /// temporary file, synced, renamed over the old one, directory synced.
    /// A record deferred for the LUN is replaced.
    pub fn set(&self, wwid: &str, rec: Option<Record>) -> Result<(), StateError> {
        self.deferred().remove(wwid);
        let now = self.on_disk(wwid)?;
        let path = self.file_of(wwid);
        match rec {
            Some(r) if now.as_ref() != Some(&r) => self.write(
                &path,
                &LunFile {
                    version: VERSION,
                    wwid: wwid.to_string(),
                    record: r,
                },
            ),
            None if now.is_some() => {
                fs::remove_file(&path).map_err(|e| io(&path, "remove", e))?;
                crate::platform::sync_dir(&self.luns)
                    .map_err(|e| io(&self.luns, "fsync directory", e))
            }
            _ => Ok(()),
        }
    }

    /// Makes `rec` the LUN's record for this process without writing it
    /// yet: only for a record that sharpens what the file already says, so
    /// that losing it in a crash leaves a file the restart recovers from
    /// (an intent naming the same paths, say). [`StateStore::flush`] writes
    /// it; [`StateStore::set`] replaces it.
    pub fn defer(&self, wwid: &str, rec: Record) {
        self.deferred().insert(wwid.to_string(), rec);
    }

    /// Writes the LUN's deferred record, if any, durably.
    pub fn flush(&self, wwid: &str) -> Result<(), StateError> {
        let pending = self.deferred().remove(wwid);
        match pending {
            Some(r) => self.set(wwid, Some(r)),
            None => Ok(()),
        }
    }

    /// Forgets the LUN's deferred record unwritten, as a crash would.
    pub fn discard(&self, wwid: &str) {
        self.deferred().remove(wwid);
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        // A panic while holding it cannot leave a half-made map entry.
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, path: &Path, f: &LunFile) -> Result<(), StateError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let tmp = path.with_extension(format!(
            "{}.{}.tmp",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let body = serde_json::to_vec_pretty(f).map_err(|e| io(path, "encode", e.into()))?;
        let mut t = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io(&tmp, "create temp file", e))?;
        let written = t.write_all(&body).and_then(|_| t.sync_data());
        if let Err(e) = written.and_then(|_| crate::platform::replace_file(&tmp, path)) {
            let _ = fs::remove_file(&tmp);
            return Err(io(path, "write temp file and rename", e));
        }
        crate::platform::sync_dir(&self.luns).map_err(|e| io(&self.luns, "fsync directory", e))
    }

    /// Splits the single file of earlier builds into one file per LUN; a
    /// LUN that already has its own file keeps it (written since). The old
    /// file is kept beside, renamed, for the operator.
    fn migrate(&self, dir: &Path) -> Result<(), StateError> {
        let legacy = dir.join(LEGACY);
        let b = match fs::read(&legacy) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&legacy, "read", e)),
        };
        let old: Legacy =
            serde_json::from_slice(&b).map_err(|e| corrupt(&legacy, e.to_string()))?;
        if old.version != VERSION {
            return Err(corrupt(&legacy, format!("unknown version {}", old.version)));
        }
        for (wwid, record) in old.luns {
            if self.get(&wwid)?.is_none() {
                let f = LunFile {
                    version: VERSION,
                    wwid: wwid.clone(),
                    record,
                };
                self.write(&self.file_of(&wwid), &f)?;
            }
        }
        match fs::rename(&legacy, dir.join(format!("{LEGACY}.migrated"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&legacy, "rename", e)),
            _ => Ok(()),
        }
    }
}

/// A file name for a WWID: letters, digits, `.`, `-` and `_` as they are,
/// every other byte as `%XX` (a T10 vendor identification may carry spaces
/// or a slash); never empty, never starting with a dot.
fn file_name(wwid: &str) -> String {
    let mut out = String::with_capacity(wwid.len());
    for b in wwid.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            b'.' if !out.is_empty() => out.push('.'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        // Never made by the loop: `%` is always followed by two digits.
        out.push('%');
    }
    out
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
        s.set("naa.1", Some(Record::now("pv-1", Stage::Fenced, &att)))
            .unwrap();
        drop(s);
        let s = StateStore::open(d.path()).unwrap();
        let r = s.get("naa.1").unwrap().unwrap();
        assert_eq!(
            (r.stage, r.attachment, r.volume.as_str()),
            (Stage::Fenced, att, "pv-1")
        );
        s.set("naa.1", None).unwrap();
        assert_eq!(
            StateStore::open(d.path()).unwrap().get("naa.1").unwrap(),
            None
        );
        let leftovers: Vec<_> = fs::read_dir(d.path().join(LUNS))
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
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
            .set("naa.1", Some(Record::now("pv-1", Stage::Fenced, &att)))
            .unwrap();
        cli.set("naa.2", Some(Record::now("pv-2", Stage::Held, &att)))
            .unwrap();
        assert_eq!(daemon.get("naa.1").unwrap().unwrap().stage, Stage::Fenced);
        assert_eq!(daemon.get("naa.2").unwrap().unwrap().stage, Stage::Held);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = d.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = StateStore::open(&dir).unwrap();
                    let a = AttachmentId(format!("t{i}"));
                    s.set(
                        &format!("naa.t{i}"),
                        Some(Record::now("v", Stage::Held, &a)),
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
        let s = StateStore::open(d.path()).unwrap();
        let f = s.file_of("naa.1");
        fs::write(&f, b"{\"version\":1,\"wwid\":\"naa.1\",\"record\":").unwrap();
        let e = StateStore::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(s.get("naa.1").is_err());
        assert!(
            s.set("naa.1", None).is_err(),
            "a corrupt record is not removed"
        );
        assert!(f.exists());
        // A record in another LUN's file (copied by hand) is not trusted.
        let att = AttachmentId("g".into());
        s.set("naa.2", Some(Record::now("pv-2", Stage::Fenced, &att)))
            .unwrap();
        fs::copy(s.file_of("naa.2"), &f).unwrap();
        let e = s.get("naa.1").unwrap_err();
        assert!(e.to_string().contains("holds the record of naa.2"), "{e}");
    }

    #[test]
    fn the_single_file_of_earlier_builds_is_split_once() {
        let d = TempDir::new("state");
        let att = AttachmentId("uid-1".into());
        let old = serde_json::json!({"version": 1, "luns": {
            "naa.1": Record::now("pv-1", Stage::Fenced, &att),
            "naa.2": Record::now("pv-2", Stage::Held, &att),
        }});
        // Earlier builds wrote the stage as `phase`.
        let old = old.to_string().replace("\"stage\"", "\"phase\"");
        assert!(old.contains("\"phase\":\"fenced\""), "{old}");
        fs::write(d.path().join(LEGACY), &old).unwrap();
        let s = StateStore::open(d.path()).unwrap();
        assert_eq!(s.get("naa.1").unwrap().unwrap().stage, Stage::Fenced);
        assert_eq!(s.all().unwrap().len(), 2);
        assert!(!d.path().join(LEGACY).exists());
        assert!(d.path().join("reservations.json.migrated").exists());
        // A newer record of the LUN wins over the old file.
        s.set("naa.1", Some(Record::now("pv-1", Stage::Held, &att)))
            .unwrap();
        fs::write(d.path().join(LEGACY), &old).unwrap();
        let s = StateStore::open(d.path()).unwrap();
        assert_eq!(s.get("naa.1").unwrap().unwrap().stage, Stage::Held);
        // An unreadable old file stops the store: it may hold a fence.
        fs::write(d.path().join(LEGACY), b"{\"version\":7,\"luns\":{}}").unwrap();
        assert!(StateStore::open(d.path()).is_err());
    }

    #[test]
    fn any_wwid_makes_one_plain_file_name() {
        assert_eq!(file_name("naa.6001405abc"), "naa.6001405abc");
        assert_eq!(file_name("t10.LIO-ORG a/b"), "t10.LIO-ORG%20a%2Fb");
        assert_eq!(file_name(".."), "%2E.");
        let d = TempDir::new("state");
        let s = StateStore::open(d.path()).unwrap();
        let att = AttachmentId("g".into());
        for w in ["t10.LIO-ORG a/b", "..", ""] {
            s.set(w, Some(Record::now("v", Stage::Held, &att))).unwrap();
            assert_eq!(s.get(w).unwrap().unwrap().volume, "v");
            assert_eq!(s.file_of(w).parent(), Some(d.path().join(LUNS).as_path()));
        }
        assert_eq!(s.all().unwrap().len(), 3);
    }
}
