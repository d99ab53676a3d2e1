//! A simulated LUN that answers like an SPC-4 PR device server (LIO's
//! behaviour where SPC leaves room): each path is one I_T nexus, other nodes
//! are extra nexuses registered directly. Stateful, so the real engine can
//! run any sequence against it, and tests assert on the final state.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::scsi::prout::{self, PrOut};
use crate::scsi::{
    Capabilities, Command, ReservationKey, ReservationType, ScsiStatus, TransportId,
};
use crate::transport::{Completion, ScsiError, Transport};

/// The initiator of node-a's paths.
pub const INITIATOR_A: &str = "iqn.2025-01.test.rig:nodea";
/// The LUN's NAA designator (naa.6001405000000001).
pub const NAA: [u8; 8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 1];

#[derive(Debug, Clone)]
struct Nexus {
    initiator: String,
    session: u8,
    key: Option<ReservationKey>,
}

#[derive(Debug)]
struct State {
    generation: u32,
    nexus: Vec<Nexus>,
    holder: Option<(ReservationKey, ReservationType)>,
    pr_out: Vec<(PathBuf, PrOut)>,
}

/// The LUN.
pub struct SimLun {
    state: Mutex<State>,
}

impl SimLun {
    /// node-a's two paths (/dev/sdc on session 1, /dev/sdd on session 2), nothing registered.
    pub fn new() -> Self {
        let a = |session| Nexus {
            initiator: INITIATOR_A.into(),
            session,
            key: None,
        };
        SimLun {
            state: Mutex::new(State {
                generation: 0,
                nexus: vec![a(1), a(2)],
                holder: None,
                pr_out: Vec::new(),
            }),
        }
    }

    /// Another node registered on one nexus of its own, holding the reservation when `holds`.
    pub fn register_other(&self, initiator: &str, key: ReservationKey, holds: bool) {
        let mut s = self.state.lock().unwrap();
        let session = 10 + s.nexus.len() as u8;
        s.nexus.push(Nexus {
            initiator: initiator.into(),
            session,
            key: Some(key),
        });
        s.generation += 1;
        if holds {
            s.holder = Some((key, ReservationType::WriteExclusiveRegistrantsOnly));
        }
    }

    /// Another node takes the LUN: registers and PREEMPTs `victim` (as its daemon would).
    pub fn taken_by(&self, initiator: &str, key: ReservationKey, victim: ReservationKey) {
        self.register_other(initiator, key, false);
        let mut s = self.state.lock().unwrap();
        for n in s.nexus.iter_mut().filter(|n| n.key == Some(victim)) {
            n.key = None;
        }
        s.holder = Some((key, ReservationType::WriteExclusiveRegistrantsOnly));
        s.generation += 1;
    }

    /// Every PR OUT received, in order.
    pub fn pr_out(&self) -> Vec<(PathBuf, PrOut)> {
        self.state.lock().unwrap().pr_out.clone()
    }

    /// The registered keys (one per nexus) and the holder.
    pub fn keys(&self) -> (Vec<ReservationKey>, Option<ReservationKey>) {
        let s = self.state.lock().unwrap();
        let keys = s.nexus.iter().filter_map(|n| n.key).collect();
        (keys, s.holder.map(|h| h.0))
    }
}

fn header(generation: u32, body: Vec<u8>) -> Vec<u8> {
    let mut b = generation.to_be_bytes().to_vec();
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend(body);
    b
}

fn conflict() -> Completion {
    Completion::with_status(ScsiStatus::ReservationConflict)
}

impl State {
    fn index(path: &Path) -> usize {
        usize::from(path.to_string_lossy().ends_with("sdd"))
    }

    fn vpd83(&self, i: usize) -> Vec<u8> {
        let mut body = vec![0x01, 0x03, 0x00, 0x08];
        body.extend_from_slice(&NAA);
        body.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0, 0, 0, self.nexus[i].session]);
        let mut b = vec![0x00, 0x83, 0x00, body.len() as u8];
        b.extend(body);
        b
    }

    fn prin(&self, sa: u8) -> Vec<u8> {
        match sa {
            0 => header(
                self.generation,
                self.nexus
                    .iter()
                    .filter_map(|n| n.key)
                    .flat_map(|k| k.to_bytes())
                    .collect(),
            ),
            1 => header(
                self.generation,
                match self.holder {
                    Some((k, t)) => {
                        let mut r = k.to_bytes().to_vec();
                        r.extend_from_slice(&[0, 0, 0, 0, 0, t.code(), 0, 0]);
                        r
                    }
                    None => Vec::new(),
                },
            ),
            2 => Capabilities {
                type_mask_valid: true,
                types: ReservationType::ALL.to_vec(),
                ..Default::default()
            }
            .encode(),
            _ => {
                let mut fs = Vec::new();
                for n in &self.nexus {
                    let Some(k) = n.key else { continue };
                    let holds = self.holder.map(|h| h.0) == Some(k);
                    let tid = TransportId::Iscsi {
                        name: n.initiator.clone(),
                        isid: Some(format!("00023d00000{}", n.session)),
                    }
                    .encode();
                    fs.extend_from_slice(&k.to_bytes());
                    let t = self.holder.filter(|_| holds).map_or(0, |h| h.1.code());
                    fs.extend_from_slice(&[
                        0,
                        0,
                        0,
                        0,
                        u8::from(holds),
                        t,
                        0,
                        0,
                        0,
                        0,
                        0,
                        n.session,
                    ]);
                    fs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    fs.extend(tid);
                }
                header(self.generation, fs)
            }
        }
    }

    fn prout(&mut self, i: usize, op: &PrOut) -> Completion {
        let mine = self.nexus[i].key;
        let registered = |k: ReservationKey| mine == Some(k);
        match op {
            PrOut::RegisterAndIgnore(p) | PrOut::Register(p) => {
                if matches!(op, PrOut::Register(_)) && mine.unwrap_or(ReservationKey(0)) != p.key {
                    return conflict();
                }
                let new = (p.sa_key.0 != 0).then_some(p.sa_key);
                if new.is_none() && self.holder.map(|h| Some(h.0) == mine).unwrap_or(false) {
                    let others = self
                        .nexus
                        .iter()
                        .enumerate()
                        .any(|(j, n)| j != i && n.key == mine);
                    if !others {
                        self.holder = None;
                    }
                }
                self.nexus[i].key = new;
                self.generation += 1;
            }
            PrOut::Reserve { key, rtype } => {
                if !registered(*key) {
                    return conflict();
                }
                match self.holder {
                    None => self.holder = Some((*key, *rtype)),
                    Some((k, t)) if k == *key && t == *rtype => {}
                    Some(_) => return conflict(),
                }
            }
            PrOut::Release { key, rtype } => {
                if !registered(*key) {
                    return conflict();
                }
                match self.holder {
                    Some((k, t)) if k == *key && t == *rtype => self.holder = None,
                    Some((k, _)) if k == *key => return conflict(),
                    _ => {}
                }
            }
            PrOut::Preempt {
                key, victim, rtype, ..
            } => {
                if !registered(*key) {
                    return conflict();
                }
                let had = self.nexus.iter().any(|n| n.key == Some(*victim));
                for n in self.nexus.iter_mut().filter(|n| n.key == Some(*victim)) {
                    n.key = None;
                }
                if self.holder.map(|h| h.0) == Some(*victim) {
                    self.holder = Some((*key, *rtype));
                } else if !had {
                    return conflict();
                }
                self.generation += 1;
            }
            PrOut::Clear { key } => {
                if !registered(*key) {
                    return conflict();
                }
                self.nexus.iter_mut().for_each(|n| n.key = None);
                self.holder = None;
                self.generation += 1;
            }
            _ => {
                return Completion::check_condition(vec![
                    0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0,
                ])
            }
        }
        Completion::good(Vec::new())
    }
}

impl Transport for SimLun {
    fn execute(&self, path: &Path, cmd: &Command, _t: Duration) -> Result<Completion, ScsiError> {
        let cdb = cmd.cdb.as_bytes().to_vec();
        let mut s = self.state.lock().unwrap();
        let i = State::index(path);
        Ok(match cdb[0] {
            0x00 => Completion::good(Vec::new()),
            0x12 if cdb[1] & 1 == 1 && cdb[2] == 0x83 => Completion::good(s.vpd83(i)),
            0x12 if cdb[1] & 1 == 1 => Completion::good(vec![0, cdb[2], 0, 3, 0x00, 0x80, 0x83]),
            0x12 => Completion::good(vec![
                0, 0, 6, 2, 31, 0, 0, 0x02, b'L', b'I', b'O', b'-', b'O', b'R', b'G', b' ',
            ]),
            0x5e => Completion::good(s.prin(cdb[1] & 0x1f)),
            0x5f => {
                let list = match &cmd.data {
                    crate::scsi::DataTransfer::ToDevice(d) => d.clone(),
                    _ => Vec::new(),
                };
                let Ok(op) = prout::parse(&cdb, &list) else {
                    return Ok(Completion::check_condition(vec![
                        0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x26, 0,
                    ]));
                };
                s.pr_out.push((path.to_path_buf(), op.clone()));
                s.prout(i, &op)
            }
            _ => Completion::check_condition(vec![
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0,
            ]),
        })
    }
}
