//! The kernel's word that this node is fenced: when the node's own I/O
//! comes back with RESERVATION CONFLICT, the daemon checks that LUN at once
//! instead of at the next monitor tick (I7).
//!
//! The SCSI midlayer logs `sd H:C:T:L: reservation conflict` for every
//! command that ends with that status, and the block layer adds
//! `reservation conflict error, dev sdX, …` for file system and
//! application I/O (`critical nexus error, dev sdX, …` before Linux 6.5).
//! Each record names a path; the LUN behind it is checked now. The log is
//! a hint and never a verdict: the check decides from what the LUN says,
//! and a record this code cannot place checks every held volume.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::device::Sysfs;
use crate::scsi::Wwid;

/// Where the kernel log is read by default.
pub const DEFAULT_PATH: &str = "/dev/kmsg";

/// The path a conflict record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Culprit {
    /// A SCSI device by its address `H:C:T:L` (the midlayer's line).
    Scsi(String),
    /// A disk by its kernel name (the block layer's line).
    Disk(String),
}

/// A conflict the kernel logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The path.
    pub culprit: Culprit,
    /// When the kernel logged it (CLOCK_MONOTONIC, from the record).
    pub at: Option<Duration>,
}

/// The conflicts in what one read of `/dev/kmsg` returned: one record
/// (`PRIO,SEQ,USEC,FLAGS;message` and ` KEY=value` lines), or several
/// lines of them from a pipe in tests.
pub fn conflicts(text: &str) -> Vec<Conflict> {
    text.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (head, msg) = l.split_once(';')?;
            let at = head
                .split(',')
                .nth(2)
                .and_then(|u| u.parse().ok())
                .map(Duration::from_micros);
            culprit(msg).map(|culprit| Conflict { culprit, at })
        })
        .collect()
}

/// The path named by one log message, if it tells of a reservation conflict.
pub fn culprit(msg: &str) -> Option<Culprit> {
    if let Some(rest) = msg.strip_prefix("sd ") {
        let (hctl, what) = rest.split_once(": ")?;
        let is_hctl = hctl.split(':').count() == 4
            && hctl
                .split(':')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return (is_hctl && what.trim_end() == "reservation conflict")
            .then(|| Culprit::Scsi(hctl.to_string()));
    }
    let dev = [
        "reservation conflict error, dev ",
        "critical nexus error, dev ",
    ]
    .iter()
    .find_map(|p| msg.strip_prefix(p))?;
    let name: String = dev
        .chars()
        .take_while(|c| *c != ',' && !c.is_whitespace())
        .collect();
    let plausible = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric());
    plausible.then_some(Culprit::Disk(name))
}

/// The LUN (its WWID, as the engine writes it) behind a culprit, from the
/// kernel's own reading of the path's VPD 83h; `None` when sysfs cannot say.
pub fn lun_of(sysfs: &Sysfs, c: &Culprit) -> Option<String> {
    let disk = match c {
        Culprit::Disk(d) => d.clone(),
        Culprit::Scsi(hctl) => sysfs.disk_of_scsi(hctl)?,
    };
    let w: Wwid = sysfs.scsi_wwid(&disk)?.parse().ok()?;
    Some(w.to_string())
}

/// Why the kernel log cannot be followed.
#[derive(Debug, thiserror::Error)]
#[error("kernel log {path}: {source} (fences are still noticed at each monitor check; set kernelLog: \"\" to stop trying)")]
pub struct KernelLogError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// Follows the kernel log from now on (older records are skipped) on a
/// thread of its own, calling `on` with the LUN of each conflict (`None`:
/// a conflict this node cannot place) and when the kernel logged it.
pub fn follow(
    path: &Path,
    sysfs: Sysfs,
    on: impl Fn(Option<String>, Option<Duration>) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, KernelLogError> {
    let err = |source| KernelLogError {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    // /dev/kmsg starts at the oldest record kept; a pipe cannot seek.
    let _ = f.seek(SeekFrom::End(0));
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || read_loop(&path, f, &sysfs, &on))
        .map_err(err)
}

fn read_loop(
    path: &Path,
    mut f: File,
    sysfs: &Sysfs,
    on: &dyn Fn(Option<String>, Option<Duration>),
) {
    // One read returns one record; records are at most 8 KiB (printk).
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            // End of a pipe (tests): nothing more will come.
            Ok(0) => return,
            Ok(n) => {
                for c in conflicts(&String::from_utf8_lossy(&buf[..n])) {
                    on(lun_of(sysfs, &c.culprit), c.at);
                }
            }
            // The reader fell behind and records were overwritten: go on.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "kernel log unreadable: fences are noticed at each monitor check only");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_that_tell_of_a_conflict_and_the_path_they_name() {
        let cases = [
            ("sd 2:0:0:1: reservation conflict", Some(Culprit::Scsi("2:0:0:1".into()))),
            (
                "reservation conflict error, dev sdc, sector 0 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 0",
                Some(Culprit::Disk("sdc".into())),
            ),
            (
                "critical nexus error, dev sdd, sector 2048 op 0x1:(WRITE)",
                Some(Culprit::Disk("sdd".into())),
            ),
            ("sd 2:0:0:1: [sdc] Attached SCSI disk", None),
            ("sd 2:0:0: reservation conflict", None),
            ("sd a:b:c:d: reservation conflict", None),
            ("I/O error, dev sdc, sector 0 op 0x1:(WRITE)", None),
            ("reservation conflict error, dev ../x, sector 0", None),
            ("", None),
        ];
        for (msg, want) in cases {
            assert_eq!(culprit(msg), want, "{msg:?}");
        }
    }

    #[test]
    fn a_kmsg_record_gives_its_time_and_its_dictionary_is_ignored() {
        let rec = "6,1042,93127365,-;sd 3:0:0:0: reservation conflict\n SUBSYSTEM=scsi\n DEVICE=+scsi:3:0:0:0\n";
        assert_eq!(
            conflicts(rec),
            vec![Conflict {
                culprit: Culprit::Scsi("3:0:0:0".into()),
                at: Some(Duration::from_micros(93127365)),
            }]
        );
        assert!(conflicts("6,1,2,-;sd 3:0:0:0: [sdc] Write Protect is off\n").is_empty());
        assert!(conflicts("no separator: reservation conflict\n").is_empty());
    }
}
