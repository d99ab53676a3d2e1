//! One LUN for the Kubernetes tests: the strict SPC model of
//! [`crate::sim::lun`] behind a [`Transport`]. The LUN itself is node-a's
//! view, its two paths being two I_T nexuses (sdc: session 1 through target
//! port 1, sdd: session 2 through port 2); [`Paths`] gives another node with
//! a daemon of its own the same two paths from its initiator; other nodes
//! act on it through nexuses of their own with real PR OUT commands.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::scsi::prout::{self, PrOut};
use crate::scsi::{BasicParams, Command, ReservationKey, ReservationType};
use crate::sim::lun::{Lun, Nexus, Profile};
use crate::transport::{Completion, ScsiError, Transport};

/// The initiator of node-a's paths.
pub const INITIATOR_A: &str = "iqn.2025-01.test.rig:nodea";
/// The initiator of node-b's paths.
pub const INITIATOR_B: &str = "iqn.2025-01.test.rig:nodeb";
/// The LUN's NAA designator (naa.6001405000000001).
pub const NAA: [u8; 8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 1];

const TYPE5: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;

/// The LUN, and every PR OUT sent through its paths, by initiator.
pub struct SimLun {
    lun: Mutex<Lun>,
    pr_out: Mutex<Vec<(String, PathBuf, PrOut)>>,
}

/// A node's nexus behind a device path, as the sysfs fixture names them.
fn nexus(initiator: &str, path: &Path) -> Nexus {
    if path.to_string_lossy().ends_with("sdd") {
        Nexus::iscsi(initiator, "00023d000002", 2)
    } else {
        Nexus::iscsi(initiator, "00023d000001", 1)
    }
}

/// Another node's one nexus.
fn nexus_of(initiator: &str) -> Nexus {
    Nexus::iscsi(initiator, "00023d0000aa", 1)
}

impl SimLun {
    /// A LUN of the full profile, nothing registered.
    pub fn new() -> Self {
        SimLun {
            lun: Mutex::new(Lun::new(NAA.to_vec(), &[1, 2], Profile::FULL)),
            pr_out: Mutex::new(Vec::new()),
        }
    }

    fn run(&self, nexus: &Nexus, p: &PrOut) {
        let mut lun = self.lun.lock().unwrap();
        // Another node's daemon reads the attentions its nexus has pending
        // (a preemption by node-a, say) before it acts again.
        let tur = crate::scsi::cdb::test_unit_ready();
        while !lun.pending_unit_attentions(nexus).is_empty() {
            lun.execute(nexus, &tur);
        }
        let done = lun.execute(nexus, &p.command());
        assert_eq!(
            done.status,
            crate::scsi::ScsiStatus::Good,
            "test setup: {:?} from {nexus:?}",
            p.action()
        );
    }

    /// Another node registers on a nexus of its own, and reserves when `holds`.
    pub fn register_other(&self, initiator: &str, key: ReservationKey, holds: bool) {
        let n = nexus_of(initiator);
        self.run(
            &n,
            &PrOut::RegisterAndIgnore(BasicParams {
                sa_key: key,
                ..Default::default()
            }),
        );
        if holds {
            self.run(&n, &PrOut::Reserve { key, rtype: TYPE5 });
        }
    }

    /// Another node takes the LUN as its daemon would: registers, then
    /// PREEMPTs `victim` (the reservation moves to it).
    pub fn taken_by(&self, initiator: &str, key: ReservationKey, victim: ReservationKey) {
        self.register_other(initiator, key, false);
        self.run(
            &nexus_of(initiator),
            &PrOut::Preempt {
                key,
                victim,
                rtype: TYPE5,
                abort: false,
            },
        );
    }

    /// Every PR OUT node-a sent, in order.
    pub fn pr_out(&self) -> Vec<(PathBuf, PrOut)> {
        self.pr_out_of(INITIATOR_A)
    }

    /// Every PR OUT sent through the paths of `initiator`, in order.
    pub fn pr_out_of(&self, initiator: &str) -> Vec<(PathBuf, PrOut)> {
        let all = self.pr_out.lock().unwrap();
        all.iter()
            .filter(|(i, _, _)| i == initiator)
            .map(|(_, p, o)| (p.clone(), o.clone()))
            .collect()
    }

    /// Whether a WRITE from `initiator`'s first path would be let through
    /// (the write oracle: RESERVATION CONFLICT otherwise).
    pub fn may_write(&self, initiator: &str) -> bool {
        let n = nexus(initiator, Path::new("/dev/sdc"));
        self.lun.lock().unwrap().may_write(&n)
    }

    fn send(&self, initiator: &str, path: &Path, cmd: &Command) -> Completion {
        if cmd.cdb.opcode() == prout::OPCODE {
            if let crate::scsi::DataTransfer::ToDevice(list) = &cmd.data {
                if let Ok(op) = prout::parse(cmd.cdb.as_bytes(), list) {
                    let sent = (initiator.to_string(), path.to_path_buf(), op);
                    self.pr_out.lock().unwrap().push(sent);
                }
            }
        }
        self.lun
            .lock()
            .unwrap()
            .execute(&nexus(initiator, path), cmd)
    }

    /// The registered keys (one per nexus) and the holder.
    pub fn keys(&self) -> (Vec<ReservationKey>, Option<ReservationKey>) {
        let lun = self.lun.lock().unwrap();
        let keys = lun.registrations().into_iter().map(|(_, k)| k).collect();
        (keys, lun.reservation().map(|r| r.1))
    }
}

impl Transport for SimLun {
    fn execute(&self, path: &Path, cmd: &Command, _t: Duration) -> Result<Completion, ScsiError> {
        Ok(self.send(INITIATOR_A, path, cmd))
    }

    fn device_number(&self, _path: &Path) -> Option<u64> {
        None
    }

    fn replays_registrations(&self) -> bool {
        false
    }
}

/// Another node's two paths to the LUN, for a daemon of its own.
pub struct Paths {
    /// The LUN.
    pub lun: std::sync::Arc<SimLun>,
    /// The node's initiator (its sysfs fixture must name the same).
    pub initiator: &'static str,
}

impl Transport for Paths {
    fn execute(&self, path: &Path, cmd: &Command, _t: Duration) -> Result<Completion, ScsiError> {
        Ok(self.lun.send(self.initiator, path, cmd))
    }

    fn device_number(&self, _path: &Path) -> Option<u64> {
        None
    }

    fn replays_registrations(&self) -> bool {
        false
    }
}
