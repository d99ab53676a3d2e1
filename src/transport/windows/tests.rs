use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::scsi::{BasicParams, PrOut, ReservationKey};
use crate::transport::ScsiPath;

/// Disks that answer as the class driver checks: every buffer is decoded
/// by the contract's strict decoders, then answered from a script.
#[derive(Default)]
struct Script {
    /// Identity (VPD 83h page) per disk.
    disks: BTreeMap<PathBuf, Vec<u8>>,
    /// What the next IOCTLs fail with, in order.
    fail: Mutex<Vec<Win32Error>>,
    /// The PR OUT requests received.
    sent: Mutex<Vec<contract::PrOutRequest>>,
    /// READ KEYS data.
    keys: Vec<u8>,
}

impl Script {
    fn failing(e: u32) -> Script {
        let mut s = Script::with_disks(&[("PhysicalDrive0", 0x51)]);
        s.fail = Mutex::new(vec![Win32Error(e)]);
        s
    }

    fn with_disks(disks: &[(&str, u8)]) -> Script {
        Script {
            disks: disks
                .iter()
                .map(|(n, id)| (PathBuf::from(format!(r"\\.\{n}")), page(*id)))
                .collect(),
            ..Script::default()
        }
    }

    fn next_failure(&self) -> Result<(), Win32Error> {
        match self.fail.lock().unwrap().pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn disk(&self, disk: &Path) -> Result<&Vec<u8>, Win32Error> {
        self.disks
            .get(disk)
            .ok_or(Win32Error(w::ERROR_FILE_NOT_FOUND))
    }
}

fn page(last: u8) -> Vec<u8> {
    vec![
        0x00, 0x83, 0x00, 0x0c, 0x01, 0x03, 0x00, 0x08, 0x60, 0x01, 0x40, 0x50, 0, 0, 0, last,
    ]
}

fn wwid(last: u8) -> Wwid {
    format!("naa.60014050000000{last:02x}").parse().unwrap()
}

impl DiskIoctl for Script {
    fn reserve_in(
        &self,
        disk: &Path,
        input: &[u8],
        out_len: usize,
        _timeout: Duration,
    ) -> Result<Vec<u8>, Win32Error> {
        self.disk(disk)?;
        contract::decode_pr_in(input, out_len)
            .map_err(|_| Win32Error(w::ERROR_INVALID_PARAMETER))?;
        self.next_failure()?;
        let mut out = self.keys.clone();
        out.resize(out_len, 0);
        Ok(out)
    }

    fn reserve_out(&self, disk: &Path, input: &[u8], _timeout: Duration) -> Result<(), Win32Error> {
        self.disk(disk)?;
        let r =
            contract::decode_pr_out(input).map_err(|_| Win32Error(w::ERROR_INVALID_PARAMETER))?;
        self.next_failure()?;
        self.sent.lock().unwrap().push(r);
        Ok(())
    }

    fn query_property(&self, disk: &Path, query: &[u8]) -> Result<Vec<u8>, Win32Error> {
        assert_eq!(query, contract::device_id_query());
        Ok(contract::device_id_from_vpd83(self.disk(disk)?))
    }

    fn disks(&self) -> Vec<PathBuf> {
        self.disks.keys().cloned().collect()
    }
}

const DISK0: &str = r"\\.\PhysicalDrive0";

fn register() -> crate::scsi::Command {
    PrOut::Register(BasicParams {
        sa_key: ReservationKey(0x5157_0000_0000_0001),
        ..Default::default()
    })
    .command()
}

/// What one failing PR OUT becomes, as the engine and the CLI see it.
fn outcome(e: u32) -> ScsiError {
    let t = IoctlTransport::new(Arc::new(Script::failing(e)));
    ScsiPath::new(&t, DISK0, Duration::from_secs(5))
        .prout(&PrOut::Register(BasicParams {
            sa_key: ReservationKey(1),
            ..Default::default()
        }))
        .unwrap_err()
}

/// The error and its causes, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s
}

#[test]
fn every_documented_status_has_the_linux_words_for_it() {
    let busy = outcome(w::ERROR_BUSY);
    assert_eq!(busy.kind(), "reservation_conflict", "{busy}");
    assert!(busy.to_string().contains("RESERVATION CONFLICT"), "{busy}");
    for (code, name, words) in [
        (
            w::ERROR_INVALID_FUNCTION,
            "ERROR_INVALID_FUNCTION (1)",
            "storage drivers do not support",
        ),
        (
            w::ERROR_IO_DEVICE,
            "ERROR_IO_DEVICE (1117)",
            "device does not support",
        ),
    ] {
        let e = outcome(code);
        assert_eq!(e.kind(), "unsupported", "{e}");
        assert!(
            e.to_string().contains(name) && e.to_string().contains(words),
            "{e}"
        );
    }
    for code in [
        w::ERROR_INVALID_PARAMETER,
        w::ERROR_BAD_LENGTH,
        w::ERROR_INVALID_USER_BUFFER,
    ] {
        let e = outcome(code);
        assert_eq!(e.kind(), "io_error", "{e}");
        assert!(
            chain(&e).contains("refused the IOCTL's buffer"),
            "{}",
            chain(&e)
        );
    }
    let denied = outcome(w::ERROR_ACCESS_DENIED);
    assert_eq!(denied.kind(), "permission_denied");
    assert!(denied.to_string().contains("Administrator"), "{denied}");
    assert_eq!(outcome(w::ERROR_SEM_TIMEOUT).kind(), "timeout");
    assert_eq!(outcome(w::ERROR_FILE_NOT_FOUND).kind(), "not_found");
    let other = outcome(4321);
    assert!(
        chain(&other).contains("Win32 error 4321"),
        "{}",
        chain(&other)
    );
}

#[test]
fn commands_reach_the_disk_as_ioctls_and_what_cannot_is_unsupported() {
    let s = Arc::new(Script::with_disks(&[("PhysicalDrive0", 0x51)]));
    let t = IoctlTransport::new(Arc::clone(&s));
    let c = t
        .execute(Path::new(DISK0), &register(), Duration::from_secs(5))
        .unwrap();
    assert_eq!(c.status, ScsiStatus::Good);
    let sent = s.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].action, crate::scsi::PrOutAction::Register);
    assert_eq!(sent[0].list[8..16], 0x5157_0000_0000_0001u64.to_be_bytes());
    let mut p = ScsiPath::new(&t, DISK0, Duration::from_secs(5));
    let ds = p.device_id().unwrap();
    assert_eq!(Wwid::from_designations(&ds), Some(wwid(0x51)));
    let e = p.capabilities().unwrap_err();
    assert_eq!(e.kind(), "unsupported");
    assert!(
        e.to_string().contains("cannot be sent on this platform"),
        "{e}"
    );
    assert!(p.full_status().is_err());
}

#[test]
fn the_device_number_ignores_which_port_windows_read_the_identity_through() {
    // The same LU (NAA ...51) read through relative target port 1, then 2.
    let through = |port: u8| {
        let mut p = page(0x51);
        p[3] += 8;
        p.extend([0x61, 0x94, 0x00, 0x04, 0, 0, 0, port]);
        let mut s = Script::default();
        s.disks.insert(PathBuf::from(DISK0), p);
        IoctlTransport::new(Arc::new(s))
    };
    let d = Path::new(DISK0);
    assert!(through(1).device_number(d).is_some());
    assert_eq!(through(1).device_number(d), through(2).device_number(d));
}

#[test]
fn the_device_number_changes_with_the_disk_behind_the_name() {
    let a = IoctlTransport::new(Arc::new(Script::with_disks(&[("PhysicalDrive0", 0x51)])));
    let b = IoctlTransport::new(Arc::new(Script::with_disks(&[("PhysicalDrive0", 0x52)])));
    let d = Path::new(DISK0);
    assert!(a.device_number(d).is_some());
    assert_eq!(a.device_number(d), a.device_number(d));
    assert_ne!(a.device_number(d), b.device_number(d));
    assert_eq!(a.device_number(Path::new(r"\\.\PhysicalDrive9")), None);
}

#[test]
fn discovery_finds_the_one_disk_of_the_wwid_or_says_why_not() {
    let d = Disks::new(Arc::new(Script::with_disks(&[
        ("PhysicalDrive0", 0x10),
        ("PhysicalDrive1", 0x51),
        ("PhysicalDrive2", 0x52),
        ("PhysicalDrive3", 0x52),
    ])));
    let no_wait = Duration::ZERO;
    let lun = d.wait(&wwid(0x51), no_wait, no_wait).unwrap();
    assert_eq!(lun.device, PathBuf::from(r"\\.\PhysicalDrive1"));
    assert_eq!(lun.paths.len(), 1);
    assert_eq!(lun.paths[0].name, "PhysicalDrive1");
    let none = d
        .wait(&wwid(0x99), no_wait, no_wait)
        .unwrap_err()
        .to_string();
    assert!(
        none.contains("no device for WWID naa.6001405000000099")
            && none.contains("no disk with that identity among the 4 disks"),
        "{none}"
    );
    let two = d
        .wait(&wwid(0x52), no_wait, no_wait)
        .unwrap_err()
        .to_string();
    assert!(
        two.contains("2 disks with that identity (PhysicalDrive2, PhysicalDrive3)")
            && two.contains("MPIO"),
        "{two}"
    );
    let empty = Disks::new(Arc::new(Script::default()));
    let e = empty
        .wait(&wwid(0x51), no_wait, no_wait)
        .unwrap_err()
        .to_string();
    assert!(e.contains("among the 0 disks"), "{e}");
    let missing = d.for_device(Path::new(r"\\.\PhysicalDrive7")).unwrap_err();
    assert!(matches!(missing, DeviceError::NotFound { .. }), "{missing}");
}
