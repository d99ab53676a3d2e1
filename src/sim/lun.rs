//! A strict model of one logical unit's SPC-4 persistent reservations.
//!
//! It answers commands from many I_T nexuses the way a device server does,
//! in the bytes the codec parses, and refuses everything SPC-4 refuses: the
//! engine is tested against the rules, not against a forgiving fake. Where
//! SPC-4 leaves room, the model does what LIO (`target_core_pr.c`) does, and
//! where real targets differ, [`Quirks`] is the knob. Each such choice is
//! marked "Choice:" below.
//!
//! Not modelled (answered ILLEGAL REQUEST, INVALID FIELD IN CDB, stricter
//! than any real target): SPEC_I_PT, REGISTER AND MOVE, REPLACE LOST
//! RESERVATION, SPC-2 RESERVE/RELEASE, reads and writes (use
//! [`Lun::may_write`]), task queues.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::scsi::inquiry::{self, Association, CodeSet, Designation, Designator, StandardInquiry};
use crate::scsi::prin::{
    self, Capabilities, FullStatus, ReadKeys, ReadReservation, Registration, Reservation,
};
use crate::scsi::prout::{self, BasicParams, PrOut};
use crate::scsi::transport_id::protocol;
use crate::scsi::{
    Command, DataTransfer, PrOutAction, ReservationKey, ReservationType, Scope, ScsiStatus, Sense,
    SenseKey, TransportId,
};
use crate::transport::Completion;

/// One I_T nexus: an initiator port and a relative target port id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexus {
    /// The initiator port (for iSCSI: the name and the session's ISID).
    pub initiator: TransportId,
    /// The relative target port identifier the command arrived on.
    pub target_port: u16,
}

impl Nexus {
    /// The nexus of `initiator` through relative target port `target_port`.
    pub fn new(initiator: TransportId, target_port: u16) -> Nexus {
        Nexus {
            initiator,
            target_port,
        }
    }

    /// An iSCSI nexus: initiator `name`, session `isid` (hex), through `target_port`.
    pub fn iscsi(name: &str, isid: &str, target_port: u16) -> Nexus {
        Nexus::new(
            TransportId::Iscsi {
                name: name.to_string(),
                isid: Some(isid.to_string()),
            },
            target_port,
        )
    }

    /// The same initiator port through another target port.
    pub fn via(&self, target_port: u16) -> Nexus {
        Nexus::new(self.initiator.clone(), target_port)
    }
}

/// What a target implements of the optional PR features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// PR IN READ FULL STATUS.
    pub read_full_status: bool,
    /// PR OUT PREEMPT AND ABORT.
    pub preempt_and_abort: bool,
    /// ALL_TG_PT in REGISTER (REPORT CAPABILITIES ATP_C).
    pub all_tg_pt: bool,
    /// APTPL in REGISTER (REPORT CAPABILITIES PTPL_C).
    pub aptpl: bool,
    /// PR IN REPORT CAPABILITIES.
    pub report_capabilities: bool,
}

impl Profile {
    /// Every optional feature (LIO).
    pub const FULL: Profile = Profile {
        read_full_status: true,
        preempt_and_abort: true,
        all_tg_pt: true,
        aptpl: true,
        report_capabilities: true,
    };
    /// FULL without READ FULL STATUS.
    pub const NO_READ_FULL_STATUS: Profile = Profile {
        read_full_status: false,
        ..Profile::FULL
    };
    /// FULL without PREEMPT AND ABORT.
    pub const NO_PREEMPT_AND_ABORT: Profile = Profile {
        preempt_and_abort: false,
        ..Profile::FULL
    };
    /// FULL without ALL_TG_PT and without APTPL.
    pub const NO_ALL_TG_PT_APTPL: Profile = Profile {
        all_tg_pt: false,
        aptpl: false,
        ..Profile::FULL
    };
    /// FULL without REPORT CAPABILITIES.
    pub const NO_REPORT_CAPABILITIES: Profile = Profile {
        report_capabilities: false,
        ..Profile::FULL
    };
    /// No optional feature at all.
    pub const MINIMAL: Profile = Profile {
        read_full_status: false,
        preempt_and_abort: false,
        all_tg_pt: false,
        aptpl: false,
        report_capabilities: false,
    };
    /// FULL and each profile lacking one feature, with short names.
    pub const ALL: [(&'static str, Profile); 5] = [
        ("full", Profile::FULL),
        ("no-rfs", Profile::NO_READ_FULL_STATUS),
        ("no-pa", Profile::NO_PREEMPT_AND_ABORT),
        ("no-atp", Profile::NO_ALL_TG_PT_APTPL),
        ("no-rc", Profile::NO_REPORT_CAPABILITIES),
    ];
}

/// Where real targets answer the same command differently and SPC-4 does
/// not settle it: the notes ask for a knob, not a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// ASCQ of the 2Ah unit attention sent to nexuses whose registration a
    /// PREEMPT removed: 05h REGISTRATIONS PREEMPTED (LIO), 03h RESERVATIONS
    /// PREEMPTED (tgt).
    pub preempted_ascq: u8,
    /// Whether REGISTER with SERVICE ACTION RESERVATION KEY 0 from an
    /// unregistered nexus (which changes nothing) bumps PRgeneration: LIO
    /// no, tgt yes.
    pub bump_generation_on_noop_unregister: bool,
}

impl Quirks {
    /// The Linux kernel target (LIO).
    pub const LIO: Quirks = Quirks {
        preempted_ascq: 0x05,
        bump_generation_on_noop_unregister: false,
    };
    /// The tgt user-space target.
    pub const TGT: Quirks = Quirks {
        preempted_ascq: 0x03,
        bump_generation_on_noop_unregister: true,
    };
}

/// ASC/ASCQ pairs the model answers with.
mod asc {
    pub const PARAMETER_LIST_LENGTH: (u8, u8) = (0x1a, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    pub const INVALID_FIELD_IN_LIST: (u8, u8) = (0x26, 0x00);
    pub const INVALID_RELEASE: (u8, u8) = (0x26, 0x04);
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
}

/// Standard INQUIRY identity of every simulated LUN.
pub const VENDOR: &str = "CSIFSIM";
/// PRODUCT IDENTIFICATION of every simulated LUN.
pub const PRODUCT: &str = "STRICT LUN";

#[derive(Debug, Clone)]
struct Reg {
    nexus: Nexus,
    key: ReservationKey,
    /// Made with ALL_TG_PT: one of a group, one per target port, that
    /// changes and goes together.
    all_tg_pt: bool,
}

#[derive(Debug, Clone)]
struct Res {
    /// None for the all-registrants types, whose holders are every registrant.
    holder: Option<Nexus>,
    rtype: ReservationType,
}

/// One logical unit's persistent-reservation state and its device server.
#[derive(Debug, Clone)]
pub struct Lun {
    naa: Vec<u8>,
    target_ports: Vec<u16>,
    profile: Profile,
    quirks: Quirks,
    generation: u32,
    /// In registration order: READ KEYS and READ FULL STATUS list them so.
    regs: Vec<Reg>,
    res: Option<Res>,
    /// PTPL_A: SPC-4 makes APTPL device-wide, set by the last REGISTER.
    ptpl_active: bool,
    ua: BTreeMap<Nexus, VecDeque<(u8, u8)>>,
    /// Every nexus that sent a command or was registered: a reset reaches them.
    seen: BTreeSet<Nexus>,
    aborted_tasks: u64,
}

fn illegal((asc, ascq): (u8, u8)) -> Completion {
    Completion::check_condition(Sense::fixed(SenseKey::IllegalRequest, asc, ascq))
}

fn conflict() -> Completion {
    Completion::with_status(ScsiStatus::ReservationConflict)
}

fn good() -> Completion {
    Completion::good(Vec::new())
}

/// Data-in as a device sends it: at most the allocation length, and never
/// more than the host's buffer; the header inside keeps the full length.
fn data_in(cmd: &Command, allocation: usize, mut data: Vec<u8>) -> Completion {
    let buffer = match cmd.data {
        DataTransfer::FromDevice(n) => n,
        _ => 0,
    };
    data.truncate(allocation.min(buffer));
    Completion::good(data)
}

fn protocol_of(t: &TransportId) -> u8 {
    match t {
        TransportId::FibreChannel { .. } => protocol::FC,
        TransportId::Sas { .. } => protocol::SAS,
        TransportId::Iscsi { .. } => protocol::ISCSI,
        TransportId::Srp { .. } => protocol::SRP,
        TransportId::Sbp { .. } => protocol::SBP,
        TransportId::Other { protocol_id, .. } => *protocol_id,
    }
}

fn registrants_only(t: ReservationType) -> bool {
    matches!(
        t,
        ReservationType::WriteExclusiveRegistrantsOnly
            | ReservationType::ExclusiveAccessRegistrantsOnly
    )
}

impl Lun {
    /// naa: the 16-byte NAA-6 designator bytes or 8-byte NAA-5; target_ports:
    /// the relative target port ids that exist (e.g. [1, 2]).
    ///
    /// # Panics
    /// When `naa` is not 8 or 16 bytes long: a test set-up error, never input.
    pub fn new(naa: Vec<u8>, target_ports: &[u16], profile: Profile) -> Lun {
        assert!(
            matches!(naa.len(), 8 | 16),
            "an NAA designator is 8 or 16 bytes, not {}",
            naa.len()
        );
        let mut ports = Vec::new();
        for p in target_ports {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        Lun {
            naa,
            target_ports: ports,
            profile,
            quirks: Quirks::LIO,
            generation: 0,
            regs: Vec::new(),
            res: None,
            ptpl_active: false,
            ua: BTreeMap::new(),
            seen: BTreeSet::new(),
            aborted_tasks: 0,
        }
    }

    /// The same LUN answering with other target quirks (default [`Quirks::LIO`]).
    pub fn with_quirks(mut self, quirks: Quirks) -> Lun {
        self.quirks = quirks;
        self
    }

    /// Executes one command from `nexus` and answers like a device server. Never panics.
    pub fn execute(&mut self, nexus: &Nexus, cmd: &Command) -> Completion {
        self.seen.insert(nexus.clone());
        let cdb = cmd.cdb.as_bytes();
        let opcode = cmd.cdb.opcode();
        // SPC-4 lets INQUIRY through a pending unit attention, and reports
        // it (to be consumed) on anything else; LIO runs with the UA
        // interlock off, so the report clears it at once.
        if opcode != inquiry::OPCODE {
            if let Some((a, q)) = self.ua.get_mut(nexus).and_then(|u| u.pop_front()) {
                return Completion::check_condition(Sense::fixed(SenseKey::UnitAttention, a, q));
            }
        }
        match opcode {
            0x00 => good(),
            inquiry::OPCODE => self.inquiry(nexus, cdb, cmd),
            prin::OPCODE => self.pr_in(cdb, cmd),
            prout::OPCODE => self.pr_out(nexus, cdb, cmd),
            _ => illegal(asc::INVALID_OPCODE),
        }
    }

    /// The write-access oracle: may a WRITE from this nexus proceed now (no RESERVATION CONFLICT)?
    pub fn may_write(&self, nexus: &Nexus) -> bool {
        match &self.res {
            None => true,
            Some(r) => match r.rtype {
                ReservationType::WriteExclusive | ReservationType::ExclusiveAccess => {
                    r.holder.as_ref() == Some(nexus)
                }
                _ => self.index(nexus).is_some(),
            },
        }
    }

    /// Target reset / power loss: every registration and the reservation are
    /// lost unless APTPL is active (and the profile supports it); UNIT
    /// ATTENTION 29/00 is queued on every nexus that ever sent a command or
    /// was registered, replacing what was pending there.
    pub fn reset(&mut self) {
        // SPC-4 §5.9.4: APTPL is one device-wide state, set by the last
        // REGISTER, so it keeps every registration or none.
        if !(self.ptpl_active && self.profile.aptpl) {
            self.regs.clear();
            self.res = None;
        }
        // SPC-4 §6.16.2: "the PRgeneration value shall be set to zero by a
        // power on", APTPL or not: it is not monotonic across a 29/xx.
        self.generation = 0;
        self.aborted_tasks = 0;
        // Pending unit attentions are volatile state: a power on loses them
        // and reports itself instead.
        self.ua.clear();
        for n in self.seen.clone() {
            self.queue_unit_attention(&n, asc::POWER_ON_RESET.0, asc::POWER_ON_RESET.1);
        }
    }

    /// Queue a unit attention on a nexus (for fault injection: UA storms).
    pub fn queue_unit_attention(&mut self, nexus: &Nexus, asc: u8, ascq: u8) {
        self.ua
            .entry(nexus.clone())
            .or_default()
            .push_back((asc, ascq));
    }

    /// The unit attentions pending on `nexus`, oldest first.
    pub fn pending_unit_attentions(&self, nexus: &Nexus) -> Vec<(u8, u8)> {
        self.ua
            .get(nexus)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    /// PRgeneration.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// One entry per registered I_T nexus, in registration order.
    pub fn registrations(&self) -> Vec<(Nexus, ReservationKey)> {
        self.regs.iter().map(|r| (r.nexus.clone(), r.key)).collect()
    }

    /// The key `nexus` is registered with.
    pub fn key_of(&self, nexus: &Nexus) -> Option<ReservationKey> {
        self.index(nexus).map(|i| self.regs[i].key)
    }

    /// The registrations of every initiator whose iSCSI name, or whose
    /// TransportID as displayed (`sas 0x…`, `fc wwpn 0x…`), starts with
    /// `initiator_prefix`: all sessions and ports of one node.
    pub fn keys_of(&self, initiator_prefix: &str) -> Vec<(Nexus, ReservationKey)> {
        let matches = |t: &TransportId| {
            let by_name =
                matches!(t, TransportId::Iscsi { name, .. } if name.starts_with(initiator_prefix));
            by_name || t.to_string().starts_with(initiator_prefix)
        };
        self.regs
            .iter()
            .filter(|r| matches(&r.nexus.initiator))
            .map(|r| (r.nexus.clone(), r.key))
            .collect()
    }

    /// Holder nexus (None for all-registrants types), key (0 for
    /// all-registrants, as SPC-4 reports it), type.
    pub fn reservation(&self) -> Option<(Option<Nexus>, ReservationKey, ReservationType)> {
        let r = self.res.as_ref()?;
        let key = r
            .holder
            .as_ref()
            .and_then(|h| self.key_of(h))
            .unwrap_or(ReservationKey::NONE);
        Some((r.holder.clone(), key, r.rtype))
    }

    /// The optional features this LUN implements.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The target quirks this LUN follows.
    pub fn quirks(&self) -> Quirks {
        self.quirks
    }

    /// PTPL_A: whether registrations would survive [`Lun::reset`].
    pub fn ptpl_active(&self) -> bool {
        self.ptpl_active
    }

    /// How many nexuses PREEMPT AND ABORT removed (each would have had its
    /// queued commands aborted) since creation or the last reset.
    pub fn aborted_tasks(&self) -> u64 {
        self.aborted_tasks
    }

    /// The NAA designator bytes.
    pub fn naa(&self) -> &[u8] {
        &self.naa
    }

    /// The relative target port ids that exist.
    pub fn target_ports(&self) -> &[u16] {
        &self.target_ports
    }

    /// Broken invariants of the PR state, for model checkers: empty when sound.
    pub fn invariant_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut nexuses = BTreeSet::new();
        for r in &self.regs {
            if !nexuses.insert(&r.nexus) {
                v.push(format!("{:?} is registered twice", r.nexus));
            }
            if r.key.is_none() {
                v.push(format!("{:?} is registered with key 0", r.nexus));
            }
            if r.all_tg_pt {
                for s in self.regs.iter().filter(|s| {
                    s.all_tg_pt && s.nexus.initiator == r.nexus.initiator && s.key != r.key
                }) {
                    v.push(format!(
                        "ALL_TG_PT group of {:?} has keys {} and {}",
                        r.nexus.initiator, r.key, s.key
                    ));
                }
            }
        }
        match &self.res {
            Some(Res {
                holder: Some(h),
                rtype,
            }) => {
                if rtype.all_registrants() {
                    v.push(format!("all-registrants type {rtype} has a single holder"));
                }
                if self.index(h).is_none() {
                    v.push(format!("holder {h:?} is not registered"));
                }
            }
            Some(Res {
                holder: None,
                rtype,
            }) => {
                if !rtype.all_registrants() {
                    v.push(format!("type {rtype} has no holder"));
                }
                if self.regs.is_empty() {
                    v.push("all-registrants reservation without registrants".into());
                }
            }
            None => {}
        }
        v
    }

    fn index(&self, nexus: &Nexus) -> Option<usize> {
        self.regs.iter().position(|r| &r.nexus == nexus)
    }

    /// Whether `nexus` holds the reservation (any registrant does, under
    /// an all-registrants type).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.res {
            None => false,
            Some(r) if r.rtype.all_registrants() => self.index(nexus).is_some(),
            Some(r) => r.holder.as_ref() == Some(nexus),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn ua_to(&mut self, nexuses: &[Nexus], (a, q): (u8, u8)) {
        for n in nexuses {
            self.queue_unit_attention(n, a, q);
        }
    }

    fn registered_except(&self, nexus: &Nexus) -> Vec<Nexus> {
        self.regs
            .iter()
            .filter(|r| &r.nexus != nexus)
            .map(|r| r.nexus.clone())
            .collect()
    }

    /// Removes the registrations of `gone`, with what that does to the
    /// reservation: a lost single holder releases it, and an all-registrants
    /// reservation ends with its last registrant. Returns the released type.
    fn remove(&mut self, gone: &[Nexus]) -> Option<ReservationType> {
        self.regs.retain(|r| !gone.contains(&r.nexus));
        let ends = match &self.res {
            Some(Res {
                holder: Some(h), ..
            }) => gone.contains(h),
            Some(Res { holder: None, .. }) => self.regs.is_empty(),
            None => false,
        };
        if ends {
            self.res.take().map(|r| r.rtype)
        } else {
            None
        }
    }

    /// A new reservation held by `nexus` (by every registrant for 7 and 8).
    fn reserve_for(&mut self, nexus: &Nexus, rtype: ReservationType) {
        self.res = Some(Res {
            holder: (!rtype.all_registrants()).then(|| nexus.clone()),
            rtype,
        });
    }

    // ---- INQUIRY -------------------------------------------------------

    fn inquiry(&self, nexus: &Nexus, cdb: &[u8], cmd: &Command) -> Completion {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let allocation = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
        // SPC-4 §6.6.1: a PAGE CODE without EVPD, and the obsolete CMDDT bit,
        // are invalid fields.
        if cdb[1] & 0x02 != 0 || (!evpd && page != 0) {
            return illegal(asc::INVALID_FIELD_IN_CDB);
        }
        let data = if !evpd {
            StandardInquiry {
                peripheral_qualifier: 0,
                device_type: 0,
                version: 6,
                tpgs: 0,
                vendor: VENDOR.into(),
                product: PRODUCT.into(),
                revision: "0001".into(),
            }
            .encode()
        } else {
            match page {
                inquiry::page::SUPPORTED => inquiry::encode_supported_pages(&[
                    inquiry::page::SUPPORTED,
                    inquiry::page::SERIAL,
                    inquiry::page::DEVICE_ID,
                ]),
                inquiry::page::SERIAL => inquiry::encode_serial(&self.serial()),
                inquiry::page::DEVICE_ID => inquiry::encode_device_id(&[
                    Designation {
                        association: Association::LogicalUnit,
                        code_set: CodeSet::Binary,
                        protocol: None,
                        designator: Designator::Naa {
                            id: crate::scsi::error::hex(&self.naa),
                        },
                    },
                    Designation {
                        association: Association::TargetPort,
                        code_set: CodeSet::Binary,
                        protocol: Some(protocol_of(&nexus.initiator)),
                        designator: Designator::RelativeTargetPort {
                            port: nexus.target_port,
                        },
                    },
                ]),
                _ => return illegal(asc::INVALID_FIELD_IN_CDB),
            }
        };
        data_in(cmd, allocation, data)
    }

    fn serial(&self) -> String {
        format!("csifsim{}", crate::scsi::error::hex(&self.naa))
    }

    // ---- PERSISTENT RESERVE IN -----------------------------------------

    fn pr_in(&self, cdb: &[u8], cmd: &Command) -> Completion {
        if cdb.len() < 10 {
            return illegal(asc::INVALID_FIELD_IN_CDB);
        }
        let allocation = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
        let data = match cdb[1] & 0x1f {
            0 => ReadKeys {
                generation: self.generation,
                keys: self.regs.iter().map(|r| r.key).collect(),
            }
            .encode(),
            1 => ReadReservation {
                generation: self.generation,
                reservation: self.reservation().map(|(_, key, rtype)| Reservation {
                    key,
                    scope: Scope::LogicalUnit,
                    rtype,
                }),
            }
            .encode(),
            2 if self.profile.report_capabilities => self.capabilities().encode(),
            3 if self.profile.read_full_status => self.full_status().encode(),
            _ => return illegal(asc::INVALID_FIELD_IN_CDB),
        };
        data_in(cmd, allocation, data)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            replace_lost_reservation: false,
            // Choice: no SPC-2 RESERVE/RELEASE, hence no CRH.
            compatible_reservation_handling: false,
            specify_initiator_ports: false,
            all_target_ports: self.profile.all_tg_pt,
            persist_through_power_loss: self.profile.aptpl,
            type_mask_valid: true,
            allow_commands: 0,
            persist_through_power_loss_active: self.ptpl_active,
            types: ReservationType::ALL.to_vec(),
        }
    }

    fn full_status(&self) -> FullStatus {
        FullStatus {
            generation: self.generation,
            registrations: self
                .regs
                .iter()
                .map(|r| {
                    let holder = self.is_holder(&r.nexus);
                    Registration {
                        key: r.key,
                        all_target_ports: r.all_tg_pt,
                        holder,
                        rtype: self.res.as_ref().filter(|_| holder).map(|s| s.rtype),
                        // Choice (LIO): every member of an ALL_TG_PT group is
                        // its own descriptor with its own port, although SPC
                        // calls the field unused when ALL_TG_PT is set.
                        relative_target_port: r.nexus.target_port,
                        transport_id: r.nexus.initiator.clone(),
                    }
                })
                .collect(),
        }
    }

    // ---- PERSISTENT RESERVE OUT ----------------------------------------

    fn pr_out(&mut self, nexus: &Nexus, cdb: &[u8], cmd: &Command) -> Completion {
        if cdb.len() < 10 {
            return illegal(asc::INVALID_FIELD_IN_CDB);
        }
        let code = cdb[1] & 0x1f;
        let Some(action) = PrOutAction::ALL.into_iter().find(|a| *a as u8 == code) else {
            return illegal(asc::INVALID_FIELD_IN_CDB);
        };
        match action {
            // Not modelled in any profile; a target without them answers so.
            PrOutAction::RegisterAndMove | PrOutAction::ReplaceLostReservation => {
                return illegal(asc::INVALID_FIELD_IN_CDB)
            }
            PrOutAction::PreemptAndAbort if !self.profile.preempt_and_abort => {
                return illegal(asc::INVALID_FIELD_IN_CDB)
            }
            _ => {}
        }
        if action.uses_type() {
            // Choice: a bad SCOPE is a CDB field (24/00); LIO says 26/00.
            let scope_ok = cdb[2] >> 4 == Scope::LogicalUnit.code();
            if !scope_ok || ReservationType::from_code(cdb[2] & 0x0f).is_none() {
                return illegal(asc::INVALID_FIELD_IN_CDB);
            }
        }
        let declared = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]) as usize;
        let sent: &[u8] = match &cmd.data {
            DataTransfer::ToDevice(d) => d,
            _ => &[],
        };
        let list = &sent[..declared.min(sent.len())];
        // SPC-4 §6.17.1 and LIO: without SPEC_I_PT the list is exactly 24 bytes.
        let Some(&flags) = list.get(20) else {
            return illegal(asc::PARAMETER_LIST_LENGTH);
        };
        let registering = matches!(
            action,
            PrOutAction::Register | PrOutAction::RegisterAndIgnoreExistingKey
        );
        if flags & 0x08 != 0 {
            // SPEC_I_PT is not modelled (SIP_C 0): refused as unsupported on
            // REGISTER, and as SPC-4 says (invalid in the list) elsewhere.
            return illegal(if registering {
                asc::INVALID_FIELD_IN_CDB
            } else {
                asc::INVALID_FIELD_IN_LIST
            });
        }
        if list.len() != prout::BASIC_LIST_LEN {
            return illegal(asc::PARAMETER_LIST_LENGTH);
        }
        // ALL_TG_PT and APTPL mean something only to the REGISTER actions
        // (SPC-4 table 227: ignored elsewhere).
        if registering
            && ((flags & 0x01 != 0 && !self.profile.aptpl)
                || (flags & 0x04 != 0 && !self.profile.all_tg_pt))
        {
            return illegal(asc::INVALID_FIELD_IN_LIST);
        }
        let Ok(op) = prout::parse(cdb, list) else {
            return illegal(asc::INVALID_FIELD_IN_LIST);
        };
        match op {
            PrOut::Register(p) => self.register(nexus, &p, false),
            PrOut::RegisterAndIgnore(p) => self.register(nexus, &p, true),
            PrOut::Reserve { key, rtype } => self.reserve(nexus, key, rtype),
            PrOut::Release { key, rtype } => self.release(nexus, key, rtype),
            PrOut::Clear { key } => self.clear(nexus, key),
            PrOut::Preempt {
                key,
                victim,
                rtype,
                abort,
            } => self.preempt(nexus, key, victim, rtype, abort),
            PrOut::RegisterAndMove { .. } | PrOut::ReplaceLostReservation { .. } => {
                illegal(asc::INVALID_FIELD_IN_CDB)
            }
        }
    }

    /// The sender's registration index when it is registered with `key`.
    fn sender(&self, nexus: &Nexus, key: ReservationKey) -> Option<usize> {
        self.index(nexus).filter(|&i| self.regs[i].key == key)
    }

    fn register(&mut self, nexus: &Nexus, p: &BasicParams, ignore_key: bool) -> Completion {
        let Some(i) = self.index(nexus) else {
            if !ignore_key && !p.key.is_none() {
                return conflict();
            }
            if p.sa_key.is_none() {
                // Unregistering what is not registered changes nothing: GOOD,
                // and (LIO) APTPL and the generation stay as they are.
                if self.quirks.bump_generation_on_noop_unregister {
                    self.bump();
                }
                return good();
            }
            if p.all_tg_pt {
                // The sender's own port first, then the others (LIO's order).
                let mut ports = vec![nexus.target_port];
                ports.extend(
                    self.target_ports
                        .iter()
                        .filter(|&&t| t != nexus.target_port),
                );
                for port in ports {
                    let n = nexus.via(port);
                    // Choice: a separate registration of this initiator port
                    // on another target port joins the group (takes the new
                    // key) instead of standing beside it with a stale one.
                    match self.index(&n) {
                        Some(j) => {
                            self.regs[j].key = p.sa_key;
                            self.regs[j].all_tg_pt = true;
                        }
                        None => self.regs.push(Reg {
                            nexus: n.clone(),
                            key: p.sa_key,
                            all_tg_pt: true,
                        }),
                    }
                    self.seen.insert(n);
                }
            } else {
                self.regs.push(Reg {
                    nexus: nexus.clone(),
                    key: p.sa_key,
                    all_tg_pt: false,
                });
            }
            self.ptpl_active = p.aptpl;
            self.bump();
            return good();
        };
        if !ignore_key && p.key != self.regs[i].key {
            return conflict();
        }
        // LIO: a registration made with ALL_TG_PT changes or goes only with
        // ALL_TG_PT set again, else INVALID FIELD IN CDB.
        if self.regs[i].all_tg_pt && !p.all_tg_pt {
            return illegal(asc::INVALID_FIELD_IN_CDB);
        }
        // Choice: ALL_TG_PT on an existing single registration is ignored
        // (it does not grow into a group); a group acts as one.
        let group: Vec<Nexus> = if self.regs[i].all_tg_pt {
            self.regs
                .iter()
                .filter(|r| r.all_tg_pt && r.nexus.initiator == nexus.initiator)
                .map(|r| r.nexus.clone())
                .collect()
        } else {
            vec![nexus.clone()]
        };
        if p.sa_key.is_none() {
            let released = self.remove(&group);
            // SPC-4 §5.9.11.3: only a registrants-only reservation released by
            // unregistering tells the others.
            if released.is_some_and(registrants_only) {
                let others: Vec<Nexus> = self.regs.iter().map(|r| r.nexus.clone()).collect();
                self.ua_to(&others, asc::RESERVATIONS_RELEASED);
            }
        } else {
            for r in self.regs.iter_mut().filter(|r| group.contains(&r.nexus)) {
                r.key = p.sa_key;
            }
        }
        self.ptpl_active = p.aptpl;
        self.bump();
        good()
    }

    fn reserve(
        &mut self,
        nexus: &Nexus,
        key: ReservationKey,
        rtype: ReservationType,
    ) -> Completion {
        // Choice (SPC-4): an unregistered sender gets RESERVATION CONFLICT;
        // LIO answers LOGICAL UNIT COMMUNICATION FAILURE.
        if self.sender(nexus, key).is_none() {
            return conflict();
        }
        match &self.res {
            None => {
                self.reserve_for(nexus, rtype);
                good()
            }
            Some(r) if self.is_holder(nexus) && r.rtype == rtype => good(),
            Some(_) => conflict(),
        }
    }

    fn release(
        &mut self,
        nexus: &Nexus,
        key: ReservationKey,
        rtype: ReservationType,
    ) -> Completion {
        // Choice (SPC-4 table 227): a key mismatch conflicts even from a
        // non-holder; LIO checks the key only for the holder.
        if self.sender(nexus, key).is_none() {
            return conflict();
        }
        let Some(held) = self.res.as_ref().map(|r| r.rtype) else {
            return good();
        };
        if !self.is_holder(nexus) {
            return good();
        }
        // Choice (SPC-4): INVALID RELEASE OF PERSISTENT RESERVATION; LIO
        // answers RESERVATION CONFLICT.
        if held != rtype {
            return illegal(asc::INVALID_RELEASE);
        }
        self.res = None;
        if registrants_only(held) || held.all_registrants() {
            let others = self.registered_except(nexus);
            self.ua_to(&others, asc::RESERVATIONS_RELEASED);
        }
        good()
    }

    fn clear(&mut self, nexus: &Nexus, key: ReservationKey) -> Completion {
        if self.sender(nexus, key).is_none() {
            return conflict();
        }
        let others = self.registered_except(nexus);
        self.regs.clear();
        self.res = None;
        // LIO: CLEAR also deactivates APTPL.
        self.ptpl_active = false;
        self.ua_to(&others, asc::RESERVATIONS_PREEMPTED);
        self.bump();
        good()
    }

    fn preempt(
        &mut self,
        nexus: &Nexus,
        key: ReservationKey,
        victim: ReservationKey,
        rtype: ReservationType,
        abort: bool,
    ) -> Completion {
        if self.sender(nexus, key).is_none() {
            return conflict();
        }
        let preempted = (0x2a, self.quirks.preempted_ascq);
        let all_registrants = self.res.as_ref().map(|r| r.rtype.all_registrants());
        let holder_key = self.reservation().map(|(_, k, _)| k);
        let gone: Vec<Nexus>;
        if all_registrants == Some(true) {
            // SPC-4 §5.9.11.4.3: under 7/8, SARK 0 removes everyone else and
            // the sender takes a new reservation; any other SARK removes that
            // key's registrations only. LIO spares the sender either way.
            gone = self
                .regs
                .iter()
                .filter(|r| &r.nexus != nexus && (victim.is_none() || r.key == victim))
                .map(|r| r.nexus.clone())
                .collect();
            if !victim.is_none() && !self.regs.iter().any(|r| r.key == victim) {
                return conflict();
            }
            self.remove(&gone);
            if victim.is_none() {
                self.reserve_for(nexus, rtype);
            }
            self.ua_to(&gone, preempted);
        } else if victim.is_none() {
            return illegal(asc::INVALID_FIELD_IN_LIST);
        } else if holder_key == Some(victim) {
            // SPC-4 §5.9.11.4.3: the holder's key: its registrations go
            // (the sender's own nexus stays when it preempts itself) and the
            // reservation moves to the sender, with the CDB's type, at once.
            let old = self.res.as_ref().map(|r| r.rtype);
            gone = self
                .regs
                .iter()
                .filter(|r| &r.nexus != nexus && r.key == victim)
                .map(|r| r.nexus.clone())
                .collect();
            self.remove(&gone);
            self.reserve_for(nexus, rtype);
            self.ua_to(&gone, preempted);
            if old != Some(rtype) {
                let others = self.registered_except(nexus);
                self.ua_to(&others, asc::RESERVATIONS_RELEASED);
            }
        } else {
            // SPC-4 §5.9.11.4.4: not the holder's key (or no reservation):
            // remove that key's registrations, leave the reservation alone.
            // A key nobody holds any more (the victim just unregistered) is
            // a RESERVATION CONFLICT. Choice (LIO): the sender's own nexus
            // goes too if it carries that key, without a unit attention.
            let all: Vec<Nexus> = self
                .regs
                .iter()
                .filter(|r| r.key == victim)
                .map(|r| r.nexus.clone())
                .collect();
            if all.is_empty() {
                return conflict();
            }
            self.remove(&all);
            gone = all.into_iter().filter(|n| n != nexus).collect();
            self.ua_to(&gone, preempted);
        }
        if abort {
            self.aborted_tasks += gone.len() as u64;
        }
        self.bump();
        good()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::{test_unit_ready, Cdb};
    use crate::scsi::prin::{parse_capabilities, parse_full_status, parse_read_keys};
    use crate::scsi::prin::{parse_read_reservation, reissue, Reissue};
    use crate::scsi::{ParseError, PrInAction};
    use ReservationType::*;

    const NAA: [u8; 16] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn lun(profile: Profile) -> Lun {
        Lun::new(NAA.to_vec(), &[1, 2], profile)
    }

    fn a1() -> Nexus {
        Nexus::iscsi("iqn.2025-01.test.rig:nodea", "00023d000001", 1)
    }
    fn a2() -> Nexus {
        a1().via(2)
    }
    fn b1() -> Nexus {
        Nexus::iscsi("iqn.2025-01.test.rig:nodeb", "00023d000001", 1)
    }
    fn b2() -> Nexus {
        b1().via(2)
    }
    fn c1() -> Nexus {
        Nexus::new(
            TransportId::Sas {
                sas_address: [0x50, 0, 0, 0, 0, 0, 0, 0xc],
            },
            1,
        )
    }
    /// A nexus that only looks: it never registers, so no UA reaches it.
    fn obs() -> Nexus {
        Nexus::iscsi("iqn.2025-01.test.rig:observer", "00023d0000ff", 2)
    }

    fn k(x: u64) -> ReservationKey {
        ReservationKey(x)
    }

    fn basic(key: u64, sa: u64, all_tg_pt: bool, aptpl: bool) -> BasicParams {
        BasicParams {
            key: k(key),
            sa_key: k(sa),
            spec_i_pt: vec![],
            all_tg_pt,
            aptpl,
        }
    }
    fn register(old: u64, new: u64) -> Command {
        PrOut::Register(basic(old, new, false, false)).command()
    }
    fn register_atp(old: u64, new: u64) -> Command {
        PrOut::Register(basic(old, new, true, false)).command()
    }
    fn register_aptpl(old: u64, new: u64) -> Command {
        PrOut::Register(basic(old, new, false, true)).command()
    }
    fn ignore(new: u64) -> Command {
        PrOut::RegisterAndIgnore(basic(0x999, new, false, false)).command()
    }
    fn reserve(key: u64, rtype: ReservationType) -> Command {
        PrOut::Reserve { key: k(key), rtype }.command()
    }
    fn release(key: u64, rtype: ReservationType) -> Command {
        PrOut::Release { key: k(key), rtype }.command()
    }
    fn clear(key: u64) -> Command {
        PrOut::Clear { key: k(key) }.command()
    }
    fn preempt(key: u64, victim: u64, rtype: ReservationType) -> Command {
        PrOut::Preempt {
            key: k(key),
            victim: k(victim),
            rtype,
            abort: false,
        }
        .command()
    }
    fn preempt_abort(key: u64, victim: u64, rtype: ReservationType) -> Command {
        PrOut::Preempt {
            key: k(key),
            victim: k(victim),
            rtype,
            abort: true,
        }
        .command()
    }
    fn tur() -> Command {
        test_unit_ready()
    }
    fn raw(cdb: &[u8], data: DataTransfer) -> Command {
        Command {
            name: "raw",
            cdb: Cdb::new(cdb),
            data,
        }
    }

    /// What a step must answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        Good,
        Conflict,
        Illegal(u8, u8),
        Ua(u8, u8),
    }
    use Want::*;

    fn verdict(c: &Completion) -> Want {
        match c.status {
            ScsiStatus::Good => {
                assert!(c.sense.is_empty());
                Good
            }
            ScsiStatus::ReservationConflict => {
                assert!(c.sense.is_empty() && c.data.is_empty());
                Conflict
            }
            ScsiStatus::CheckCondition => {
                let s = Sense::parse(&c.sense).expect("the codec decodes the model's sense");
                assert!(c.data.is_empty());
                match s.key {
                    SenseKey::IllegalRequest => Illegal(s.asc, s.ascq),
                    SenseKey::UnitAttention => Ua(s.asc, s.ascq),
                    other => panic!("unexpected sense key {other:?}"),
                }
            }
            other => panic!("unexpected status {other:?}"),
        }
    }

    /// One command, its expected answer, and PRgeneration afterwards.
    struct Step(Nexus, Command, Want, u32);

    fn run(lun: &mut Lun, steps: Vec<Step>) {
        for (i, Step(n, cmd, want, generation)) in steps.into_iter().enumerate() {
            let c = lun.execute(&n, &cmd);
            let got = verdict(&c);
            assert_eq!(got, want, "step {i}: {cmd} from {n:?}");
            assert_eq!(lun.generation(), generation, "step {i}: {cmd}: generation");
            assert_eq!(lun.invariant_violations(), Vec::<String>::new(), "step {i}");
        }
    }

    fn regs(lun: &Lun) -> Vec<(Nexus, u64)> {
        lun.registrations()
            .into_iter()
            .map(|(n, k)| (n, k.0))
            .collect()
    }

    fn prin_data(lun: &mut Lun, n: &Nexus, action: PrInAction, alloc: u16) -> Vec<u8> {
        let c = lun.execute(n, &prin::command(action, alloc));
        assert_eq!(verdict(&c), Good, "{action:?}");
        c.data
    }

    fn read_keys(lun: &mut Lun) -> ReadKeys {
        parse_read_keys(&prin_data(lun, &obs(), PrInAction::ReadKeys, 512)).unwrap()
    }

    fn read_reservation(lun: &mut Lun) -> ReadReservation {
        parse_read_reservation(&prin_data(lun, &obs(), PrInAction::ReadReservation, 512)).unwrap()
    }

    /// a1 0xa, b1 0xb, c1 0xc, then a1 holds `rtype`: generation 3.
    fn three_with_a_holding(profile: Profile, rtype: ReservationType) -> Lun {
        let mut l = lun(profile);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(b1(), register(0, 0xb), Good, 2),
                Step(c1(), register(0, 0xc), Good, 3),
                Step(a1(), reserve(0xa, rtype), Good, 3),
            ],
        );
        l
    }

    #[test]
    fn register_and_register_and_ignore() {
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                // Registered with 0xa: another RESERVATION KEY conflicts.
                Step(a1(), register(0xb, 0xc), Conflict, 1),
                Step(a1(), register(0, 0xc), Conflict, 1),
                // Unregistered: only RESERVATION KEY 0 is accepted.
                Step(b1(), register(5, 0xb), Conflict, 1),
                Step(b1(), register(0, 0xb), Good, 2),
                Step(b1(), ignore(0xbb), Good, 3),
                // Unregistering an unregistered nexus: GOOD, no generation.
                Step(c1(), register(0, 0), Good, 3),
                Step(c1(), ignore(0), Good, 3),
                Step(a1(), register(0xa, 0xaa), Good, 4),
                Step(a1(), register(0xaa, 0), Good, 5),
                // The same initiator through port 2 is another, unregistered nexus.
                Step(a2(), register(0xaa, 0xa), Conflict, 5),
            ],
        );
        assert_eq!(regs(&l), vec![(b1(), 0xbb)]);
        let rk = read_keys(&mut l);
        assert_eq!((rk.generation, rk.keys), (5, vec![k(0xbb)]));
    }

    #[test]
    fn tgt_quirks_bump_on_noop_unregister_and_say_2a03() {
        let mut l = lun(Profile::FULL).with_quirks(Quirks::TGT);
        run(
            &mut l,
            vec![
                Step(c1(), register(0, 0), Good, 1),
                Step(a1(), register(0, 0xa), Good, 2),
                Step(b1(), register(0, 0xb), Good, 3),
                Step(
                    b1(),
                    preempt(0xb, 0xa, WriteExclusiveRegistrantsOnly),
                    Good,
                    4,
                ),
                Step(a1(), tur(), Ua(0x2a, 0x03), 4),
            ],
        );
    }

    #[test]
    fn reserve_rules() {
        let mut l = lun(Profile::FULL);
        let mut bad_scope = reserve(0xa, WriteExclusiveRegistrantsOnly);
        let mut b = bad_scope.cdb.as_bytes().to_vec();
        b[2] |= 0x10;
        bad_scope.cdb = Cdb::new(&b);
        let mut bad_type = reserve(0xa, WriteExclusiveRegistrantsOnly);
        b[2] = 0x02;
        bad_type.cdb = Cdb::new(&b);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(b1(), register(0, 0xb), Good, 2),
                Step(c1(), reserve(0, WriteExclusiveRegistrantsOnly), Conflict, 2),
                Step(
                    a1(),
                    reserve(0xb, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    2,
                ),
                Step(a1(), bad_scope, Illegal(0x24, 0), 2),
                Step(a1(), bad_type, Illegal(0x24, 0), 2),
                Step(a1(), reserve(0xa, WriteExclusiveRegistrantsOnly), Good, 2),
                // Another nexus, even a registered one, may not reserve.
                Step(
                    b1(),
                    reserve(0xb, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    2,
                ),
                Step(a1(), reserve(0xa, WriteExclusiveRegistrantsOnly), Good, 2),
                Step(a1(), reserve(0xa, WriteExclusive), Conflict, 2),
                Step(a2(), reserve(0, WriteExclusiveRegistrantsOnly), Conflict, 2),
            ],
        );
        assert_eq!(
            l.reservation(),
            Some((Some(a1()), k(0xa), WriteExclusiveRegistrantsOnly))
        );
        let r = read_reservation(&mut l);
        assert_eq!(r.generation, 2);
        let r = r.reservation.unwrap();
        assert_eq!((r.key, r.rtype), (k(0xa), WriteExclusiveRegistrantsOnly));
    }

    #[test]
    fn all_registrants_reserve_is_held_by_every_registrant() {
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(b1(), register(0, 0xb), Good, 2),
                Step(a1(), reserve(0xa, WriteExclusiveAllRegistrants), Good, 2),
                // b1 holds too: the same type is a no-op, another conflicts.
                Step(b1(), reserve(0xb, WriteExclusiveAllRegistrants), Good, 2),
                Step(
                    b1(),
                    reserve(0xb, ExclusiveAccessAllRegistrants),
                    Conflict,
                    2,
                ),
            ],
        );
        assert_eq!(
            l.reservation(),
            Some((None, k(0), WriteExclusiveAllRegistrants))
        );
        let r = read_reservation(&mut l).reservation.unwrap();
        assert_eq!((r.key, r.rtype), (k(0), WriteExclusiveAllRegistrants));
        let fs =
            parse_full_status(&prin_data(&mut l, &obs(), PrInAction::ReadFullStatus, 512)).unwrap();
        assert!(fs
            .registrations
            .iter()
            .all(|r| r.holder && r.rtype == Some(WriteExclusiveAllRegistrants)));
        // Unregistering one registrant keeps it; the last one ends it.
        run(
            &mut l,
            vec![
                Step(a1(), register(0xa, 0), Good, 3),
                Step(b1(), tur(), Good, 3),
                Step(b1(), register(0xb, 0), Good, 4),
            ],
        );
        assert_eq!(l.reservation(), None);
    }

    #[test]
    fn release_rules() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(
            &mut l,
            vec![
                Step(
                    obs(),
                    release(0, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    3,
                ),
                Step(
                    b1(),
                    release(0xa, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    3,
                ),
                // A registered non-holder: GOOD, nothing happens.
                Step(b1(), release(0xb, WriteExclusiveRegistrantsOnly), Good, 3),
                Step(a1(), release(0xa, WriteExclusive), Illegal(0x26, 0x04), 3),
                Step(a1(), release(0xa, WriteExclusiveRegistrantsOnly), Good, 3),
                Step(b1(), tur(), Ua(0x2a, 0x04), 3),
                Step(b1(), tur(), Good, 3),
                Step(c1(), tur(), Ua(0x2a, 0x04), 3),
                Step(a1(), tur(), Good, 3),
                // Nothing reserved: GOOD.
                Step(b1(), release(0xb, WriteExclusiveRegistrantsOnly), Good, 3),
            ],
        );
        assert_eq!(l.reservation(), None);
        assert_eq!(regs(&l).len(), 3, "RELEASE removes no registration");

        // Write Exclusive: released without telling anyone.
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusive);
        run(
            &mut l,
            vec![
                Step(a1(), release(0xa, WriteExclusive), Good, 3),
                Step(b1(), tur(), Good, 3),
            ],
        );
    }

    #[test]
    fn unregistering_the_holder_releases() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(
            &mut l,
            vec![
                Step(a1(), register(0xa, 0), Good, 4),
                Step(b1(), tur(), Ua(0x2a, 0x04), 4),
                Step(b1(), tur(), Good, 4),
                Step(c1(), tur(), Ua(0x2a, 0x04), 4),
                Step(a1(), tur(), Good, 4),
            ],
        );
        assert_eq!(l.reservation(), None);
        assert_eq!(regs(&l), vec![(b1(), 0xb), (c1(), 0xc)]);

        let mut l = three_with_a_holding(Profile::FULL, WriteExclusive);
        run(
            &mut l,
            vec![
                Step(a1(), register(0xa, 0), Good, 4),
                Step(b1(), tur(), Good, 4),
            ],
        );
        assert_eq!(l.reservation(), None);
    }

    #[test]
    fn clear_rules() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(
            &mut l,
            vec![
                Step(obs(), clear(0), Conflict, 3),
                Step(c1(), clear(0xb), Conflict, 3),
                Step(c1(), clear(0xc), Good, 4),
                Step(a1(), tur(), Ua(0x2a, 0x03), 4),
                Step(b1(), tur(), Ua(0x2a, 0x03), 4),
                Step(c1(), tur(), Good, 4),
                Step(a1(), tur(), Good, 4),
            ],
        );
        assert!(regs(&l).is_empty());
        assert_eq!(l.reservation(), None);
    }

    #[test]
    fn preempting_the_holder_moves_the_reservation_and_warns_exactly_the_victims() {
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(a2(), register(0, 0xa), Good, 2),
                Step(b1(), register(0, 0xb), Good, 3),
                Step(c1(), register(0, 0xc), Good, 4),
                Step(a1(), reserve(0xa, WriteExclusiveRegistrantsOnly), Good, 4),
                Step(
                    b1(),
                    preempt(0xb, 0xa, WriteExclusiveRegistrantsOnly),
                    Good,
                    5,
                ),
            ],
        );
        assert_eq!(regs(&l), vec![(b1(), 0xb), (c1(), 0xc)]);
        assert_eq!(
            l.reservation(),
            Some((Some(b1()), k(0xb), WriteExclusiveRegistrantsOnly))
        );
        assert!(!l.may_write(&a1()) && !l.may_write(&a2()));
        assert!(l.may_write(&b1()) && l.may_write(&c1()));
        run(
            &mut l,
            vec![
                Step(a1(), tur(), Ua(0x2a, 0x05), 5),
                Step(a1(), tur(), Good, 5),
                Step(a2(), tur(), Ua(0x2a, 0x05), 5),
                Step(a2(), tur(), Good, 5),
                // Same type: the survivor hears nothing.
                Step(c1(), tur(), Good, 5),
                Step(b1(), tur(), Good, 5),
            ],
        );
    }

    #[test]
    fn preempt_of_a_key_that_just_went_away_conflicts() {
        // The victim unregistered first: its key names no registration.
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(b1(), register(0, 0xb), Good, 2),
                Step(a1(), reserve(0xa, WriteExclusiveRegistrantsOnly), Good, 2),
                Step(a1(), register(0xa, 0), Good, 3),
                Step(b1(), tur(), Ua(0x2a, 0x04), 3),
                Step(
                    b1(),
                    preempt(0xb, 0xa, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    3,
                ),
            ],
        );
        assert_eq!(l.reservation(), None);
        assert_eq!(regs(&l), vec![(b1(), 0xb)]);

        // The victim only released: PREEMPT removes its registration but,
        // with no holder to take over from, reserves nothing.
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(b1(), register(0, 0xb), Good, 2),
                Step(a1(), reserve(0xa, WriteExclusiveRegistrantsOnly), Good, 2),
                Step(a1(), release(0xa, WriteExclusiveRegistrantsOnly), Good, 2),
                Step(b1(), tur(), Ua(0x2a, 0x04), 2),
                Step(
                    b1(),
                    preempt(0xb, 0xa, WriteExclusiveRegistrantsOnly),
                    Good,
                    3,
                ),
                Step(a1(), tur(), Ua(0x2a, 0x05), 3),
            ],
        );
        assert_eq!(l.reservation(), None);
        assert_eq!(regs(&l), vec![(b1(), 0xb)]);
    }

    #[test]
    fn preempt_key_checks_and_zero_sark() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(
            &mut l,
            vec![
                Step(
                    obs(),
                    preempt(0, 0xa, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    3,
                ),
                Step(
                    b1(),
                    preempt(0xc, 0xa, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    3,
                ),
                Step(
                    b1(),
                    preempt(0xb, 0, WriteExclusiveRegistrantsOnly),
                    Illegal(0x26, 0),
                    3,
                ),
                Step(
                    b1(),
                    preempt(0xb, 0x77, WriteExclusiveRegistrantsOnly),
                    Conflict,
                    3,
                ),
                // A non-holder's key: only its registration goes.
                Step(b1(), preempt(0xb, 0xc, WriteExclusive), Good, 4),
                Step(c1(), tur(), Ua(0x2a, 0x05), 4),
                Step(a1(), tur(), Good, 4),
            ],
        );
        assert_eq!(
            l.reservation(),
            Some((Some(a1()), k(0xa), WriteExclusiveRegistrantsOnly))
        );
        assert_eq!(regs(&l), vec![(a1(), 0xa), (b1(), 0xb)]);

        // No reservation at all: SARK 0 is still invalid.
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(a1(), preempt(0xa, 0, WriteExclusive), Illegal(0x26, 0), 1),
            ],
        );
    }

    #[test]
    fn preempt_changing_the_type_releases_for_the_survivors() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(
            &mut l,
            vec![
                Step(b1(), preempt(0xb, 0xa, ExclusiveAccess), Good, 4),
                Step(a1(), tur(), Ua(0x2a, 0x05), 4),
                Step(c1(), tur(), Ua(0x2a, 0x04), 4),
                Step(b1(), tur(), Good, 4),
            ],
        );
        assert_eq!(l.reservation(), Some((Some(b1()), k(0xb), ExclusiveAccess)));
    }

    #[test]
    fn preempting_ones_own_key_keeps_the_sender_only() {
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register(0, 0xa), Good, 1),
                Step(a2(), register(0, 0xa), Good, 2),
                Step(a1(), reserve(0xa, WriteExclusiveRegistrantsOnly), Good, 2),
                Step(a1(), preempt(0xa, 0xa, WriteExclusive), Good, 3),
                Step(a2(), tur(), Ua(0x2a, 0x05), 3),
                Step(a1(), tur(), Good, 3),
            ],
        );
        assert_eq!(regs(&l), vec![(a1(), 0xa)]);
        assert_eq!(l.reservation(), Some((Some(a1()), k(0xa), WriteExclusive)));
    }

    #[test]
    fn preempt_under_all_registrants() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveAllRegistrants);
        run(
            &mut l,
            vec![
                // A named key: that registration goes, the reservation stays.
                Step(
                    b1(),
                    preempt(0xb, 0xc, WriteExclusiveRegistrantsOnly),
                    Good,
                    4,
                ),
                Step(c1(), tur(), Ua(0x2a, 0x05), 4),
                Step(a1(), tur(), Good, 4),
            ],
        );
        assert_eq!(
            l.reservation(),
            Some((None, k(0), WriteExclusiveAllRegistrants))
        );
        run(
            &mut l,
            vec![
                Step(c1(), register(0, 0xc), Good, 5),
                // SARK 0: everyone else goes, the sender holds the new type.
                Step(
                    b1(),
                    preempt(0xb, 0, WriteExclusiveRegistrantsOnly),
                    Good,
                    6,
                ),
                Step(a1(), tur(), Ua(0x2a, 0x05), 6),
                Step(c1(), tur(), Ua(0x2a, 0x05), 6),
                Step(b1(), tur(), Good, 6),
            ],
        );
        assert_eq!(regs(&l), vec![(b1(), 0xb)]);
        assert_eq!(
            l.reservation(),
            Some((Some(b1()), k(0xb), WriteExclusiveRegistrantsOnly))
        );
    }

    #[test]
    fn preempt_and_abort_counts_and_is_refused_without_support() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(
            &mut l,
            vec![Step(
                b1(),
                preempt_abort(0xb, 0xa, WriteExclusiveRegistrantsOnly),
                Good,
                4,
            )],
        );
        assert_eq!(l.aborted_tasks(), 1);
        assert_eq!(
            l.reservation(),
            Some((Some(b1()), k(0xb), WriteExclusiveRegistrantsOnly))
        );

        for profile in [Profile::NO_PREEMPT_AND_ABORT, Profile::MINIMAL] {
            let mut l = three_with_a_holding(profile, WriteExclusiveRegistrantsOnly);
            run(
                &mut l,
                vec![Step(
                    b1(),
                    preempt_abort(0xb, 0xa, WriteExclusiveRegistrantsOnly),
                    Illegal(0x24, 0),
                    3,
                )],
            );
            assert_eq!(l.aborted_tasks(), 0);
        }
    }

    #[test]
    fn all_tg_pt_registers_every_port_and_goes_as_one() {
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a2(), register_atp(0, 0xa), Good, 1),
                Step(b1(), register(0, 0xb), Good, 2),
            ],
        );
        assert_eq!(regs(&l), vec![(a2(), 0xa), (a1(), 0xa), (b1(), 0xb)]);
        let fs =
            parse_full_status(&prin_data(&mut l, &obs(), PrInAction::ReadFullStatus, 512)).unwrap();
        let seen: Vec<_> = fs
            .registrations
            .iter()
            .map(|r| (r.key.0, r.all_target_ports, r.relative_target_port))
            .collect();
        assert_eq!(seen, vec![(0xa, true, 2), (0xa, true, 1), (0xb, false, 1)]);
        assert_eq!(fs.registrations[0].transport_id, a1().initiator);
        run(
            &mut l,
            vec![
                // LIO: the group changes only with ALL_TG_PT set again.
                Step(a1(), register(0xa, 0), Illegal(0x24, 0), 2),
                Step(a1(), register_atp(0xa, 0xaa), Good, 3),
            ],
        );
        assert_eq!(regs(&l), vec![(a2(), 0xaa), (a1(), 0xaa), (b1(), 0xb)]);
        run(&mut l, vec![Step(a1(), register_atp(0xaa, 0), Good, 4)]);
        assert_eq!(regs(&l), vec![(b1(), 0xb)]);
        // b's single registration through port 1 joins b's group.
        run(&mut l, vec![Step(b2(), register_atp(0, 0xbb), Good, 5)]);
        assert_eq!(regs(&l), vec![(b1(), 0xbb), (b2(), 0xbb)]);
        assert_eq!(
            l.keys_of("iqn.2025-01.test.rig:nodeb"),
            vec![(b1(), k(0xbb)), (b2(), k(0xbb))]
        );
        assert!(l.keys_of("iqn.2025-01.test.rig:nodea").is_empty());
    }

    #[test]
    fn reset_without_aptpl_drops_everything_and_reports_29_00() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        run(&mut l, vec![Step(obs(), tur(), Good, 3)]);
        l.queue_unit_attention(&b1(), 0x2a, 0x06);
        l.reset();
        assert!(regs(&l).is_empty());
        assert_eq!(l.reservation(), None);
        assert_eq!(l.generation(), 0);
        let never = Nexus::iscsi("iqn.2025-01.test.rig:never", "00023d000009", 1);
        run(
            &mut l,
            vec![
                Step(a1(), tur(), Ua(0x29, 0), 0),
                Step(a1(), tur(), Good, 0),
                // The pending 2A/06 was lost with the power.
                Step(b1(), tur(), Ua(0x29, 0), 0),
                Step(b1(), tur(), Good, 0),
                Step(obs(), tur(), Ua(0x29, 0), 0),
                Step(never, tur(), Good, 0),
            ],
        );
    }

    #[test]
    fn reset_with_aptpl_keeps_registrations_and_reservation() {
        let mut l = lun(Profile::FULL);
        run(
            &mut l,
            vec![
                Step(a1(), register_atp(0, 0xa), Good, 1),
                Step(b1(), register_aptpl(0, 0xb), Good, 2),
                Step(b1(), reserve(0xb, WriteExclusiveRegistrantsOnly), Good, 2),
            ],
        );
        assert!(l.ptpl_active());
        let before = l.registrations();
        l.reset();
        assert_eq!(l.registrations(), before);
        assert_eq!(
            l.reservation(),
            Some((Some(b1()), k(0xb), WriteExclusiveRegistrantsOnly))
        );
        // a2 never sent a command but was registered (ALL_TG_PT): it hears too.
        run(
            &mut l,
            vec![
                Step(a2(), tur(), Ua(0x29, 0), 0),
                Step(a1(), tur(), Ua(0x29, 0), 0),
                Step(b1(), tur(), Ua(0x29, 0), 0),
            ],
        );
        // APTPL is device-wide: the last REGISTER (without it) turns it off.
        run(&mut l, vec![Step(a1(), register_atp(0xa, 0xa1), Good, 1)]);
        assert!(!l.ptpl_active());
        l.reset();
        assert!(regs(&l).is_empty());
        assert_eq!(l.reservation(), None);
    }

    #[test]
    fn may_write_for_each_type() {
        let l = lun(Profile::FULL);
        assert!(l.may_write(&a1()) && l.may_write(&obs()));
        for rtype in ReservationType::ALL {
            let l = three_with_a_holding(Profile::FULL, rtype);
            let holder_only = matches!(rtype, WriteExclusive | ExclusiveAccess);
            assert!(l.may_write(&a1()), "{rtype}");
            assert_eq!(l.may_write(&b1()), !holder_only, "{rtype}");
            assert!(!l.may_write(&obs()), "{rtype}");
            assert!(!l.may_write(&a2()), "{rtype}: a2 is another nexus");
        }
    }

    #[test]
    fn truncated_allocation_lengths_keep_the_true_length() {
        let mut l = three_with_a_holding(Profile::FULL, WriteExclusiveRegistrantsOnly);
        let short = prin_data(&mut l, &obs(), PrInAction::ReadKeys, 8);
        assert_eq!(short, vec![0, 0, 0, 3, 0, 0, 0, 24]);
        assert_eq!(reissue(&short, 8), Reissue::With(32));
        assert!(matches!(
            parse_read_keys(&short),
            Err(ParseError::Truncated { announced: 32, .. })
        ));
        let full = parse_read_keys(&prin_data(&mut l, &obs(), PrInAction::ReadKeys, 32)).unwrap();
        assert_eq!(full.keys, vec![k(0xa), k(0xb), k(0xc)]);
        assert!(prin_data(&mut l, &obs(), PrInAction::ReadKeys, 0).is_empty());

        let whole = prin_data(&mut l, &obs(), PrInAction::ReadFullStatus, 1024);
        let cut = prin_data(&mut l, &obs(), PrInAction::ReadFullStatus, 30);
        assert_eq!(cut, whole[..30]);
        assert_eq!(reissue(&cut, 30), Reissue::With(whole.len() as u16));
        assert!(parse_full_status(&cut).is_err());
        assert_eq!(parse_full_status(&whole).unwrap().registrations.len(), 3);

        let r = prin_data(&mut l, &obs(), PrInAction::ReadReservation, 12);
        assert_eq!(r, vec![0, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 0]);
        // The host buffer bounds the transfer too.
        let c = l.execute(
            &obs(),
            &raw(
                prin::command(PrInAction::ReadKeys, 512).cdb.as_bytes(),
                DataTransfer::FromDevice(10),
            ),
        );
        assert_eq!(c.data.len(), 10);
    }

    #[test]
    fn each_profile_refuses_exactly_what_it_lacks() {
        let mut profiles = Profile::ALL.to_vec();
        profiles.push(("minimal", Profile::MINIMAL));
        for (name, p) in profiles {
            let mut l = lun(p);
            let rfs = l.execute(&obs(), &prin::command(PrInAction::ReadFullStatus, 512));
            let want = if p.read_full_status {
                Good
            } else {
                Illegal(0x24, 0)
            };
            assert_eq!(verdict(&rfs), want, "{name}: READ FULL STATUS");

            let rc = l.execute(&obs(), &prin::command(PrInAction::ReportCapabilities, 512));
            if p.report_capabilities {
                assert_eq!(verdict(&rc), Good, "{name}");
                let caps = parse_capabilities(&rc.data).unwrap();
                assert_eq!(caps.all_target_ports, p.all_tg_pt, "{name}: ATP_C");
                assert_eq!(caps.persist_through_power_loss, p.aptpl, "{name}: PTPL_C");
                assert!(!caps.specify_initiator_ports && !caps.replace_lost_reservation);
                assert!(caps.type_mask_valid);
                assert_eq!(caps.types, ReservationType::ALL.to_vec());
                assert!(!caps.persist_through_power_loss_active);
            } else {
                assert_eq!(
                    verdict(&rc),
                    Illegal(0x24, 0),
                    "{name}: REPORT CAPABILITIES"
                );
            }

            let atp = l.execute(&a1(), &register_atp(0, 0xa));
            let want = if p.all_tg_pt { Good } else { Illegal(0x26, 0) };
            assert_eq!(verdict(&atp), want, "{name}: ALL_TG_PT");

            let aptpl = l.execute(&b1(), &register_aptpl(0, 0xb));
            let want = if p.aptpl { Good } else { Illegal(0x26, 0) };
            assert_eq!(verdict(&aptpl), want, "{name}: APTPL");
            if p.aptpl && p.report_capabilities {
                let rc = l.execute(&obs(), &prin::command(PrInAction::ReportCapabilities, 512));
                assert!(
                    parse_capabilities(&rc.data)
                        .unwrap()
                        .persist_through_power_loss_active
                );
            }

            let g = l.generation() + 1;
            run(&mut l, vec![Step(c1(), register(0, 0xc), Good, g)]);
            let pa = l.execute(&c1(), &preempt_abort(0xc, 0xc, WriteExclusive));
            let want = if p.preempt_and_abort {
                Good
            } else {
                Illegal(0x24, 0)
            };
            assert_eq!(verdict(&pa), want, "{name}: PREEMPT AND ABORT");
            assert_eq!(l.generation(), g + u32::from(p.preempt_and_abort));
        }
    }

    #[test]
    fn commands_outside_the_model_are_refused() {
        let mut l = lun(Profile::FULL);
        let mv = PrOut::RegisterAndMove {
            rtype: WriteExclusive,
            params: prout::MoveParams {
                key: k(0xa),
                sa_key: k(0xb),
                unregister: false,
                aptpl: false,
                relative_target_port: 2,
                transport_id: b1().initiator,
            },
        }
        .command();
        let spec = PrOut::Register(BasicParams {
            spec_i_pt: vec![b1().initiator],
            ..basic(0, 0xa, false, false)
        })
        .command();
        let mut spec_reserve = spec.clone();
        let mut cdb = spec.cdb.as_bytes().to_vec();
        cdb[1] = 1;
        cdb[2] = WriteExclusive.code();
        spec_reserve.cdb = Cdb::new(&cdb);
        let list_of = |n: usize| {
            let mut c = register(0, 0xa);
            let mut cdb = c.cdb.as_bytes().to_vec();
            cdb[5..9].copy_from_slice(&(n as u32).to_be_bytes());
            c.cdb = Cdb::new(&cdb);
            c.data = DataTransfer::ToDevice(vec![0; n]);
            c
        };
        let mut declared_short = register(0, 0xa);
        let mut cdb = declared_short.cdb.as_bytes().to_vec();
        cdb[8] = 20;
        declared_short.cdb = Cdb::new(&cdb);
        run(
            &mut l,
            vec![
                Step(a1(), mv, Illegal(0x24, 0), 0),
                Step(
                    a1(),
                    PrOut::ReplaceLostReservation {
                        key: k(0),
                        rtype: WriteExclusive,
                    }
                    .command(),
                    Illegal(0x24, 0),
                    0,
                ),
                Step(a1(), spec, Illegal(0x24, 0), 0),
                Step(a1(), spec_reserve, Illegal(0x26, 0), 0),
                Step(a1(), list_of(0), Illegal(0x1a, 0), 0),
                Step(a1(), list_of(23), Illegal(0x1a, 0), 0),
                Step(a1(), list_of(25), Illegal(0x1a, 0), 0),
                Step(a1(), declared_short, Illegal(0x1a, 0), 0),
                Step(
                    a1(),
                    raw(
                        &[0x5f, 9, 0, 0, 0, 0, 0, 0, 24, 0],
                        DataTransfer::ToDevice(vec![0; 24]),
                    ),
                    Illegal(0x24, 0),
                    0,
                ),
                Step(
                    a1(),
                    raw(
                        &[0x5e, 4, 0, 0, 0, 0, 0, 0, 24, 0],
                        DataTransfer::FromDevice(24),
                    ),
                    Illegal(0x24, 0),
                    0,
                ),
                Step(
                    a1(),
                    raw(&[0x5f, 0, 0, 0, 0, 0], DataTransfer::None),
                    Illegal(0x24, 0),
                    0,
                ),
                Step(
                    a1(),
                    raw(
                        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                        DataTransfer::ToDevice(vec![0; 512]),
                    ),
                    Illegal(0x20, 0),
                    0,
                ),
                Step(a1(), tur(), Good, 0),
            ],
        );
        assert!(regs(&l).is_empty());
    }

    #[test]
    fn inquiry_speaks_the_codec() {
        let mut l = lun(Profile::FULL);
        let c = l.execute(&a2(), &inquiry::standard_command(96));
        let s = inquiry::parse_standard(&c.data).unwrap();
        assert_eq!((s.vendor.as_str(), s.product.as_str()), (VENDOR, PRODUCT));
        assert_eq!(
            (s.version, s.device_type, s.peripheral_qualifier),
            (6, 0, 0)
        );
        let c = l.execute(&a2(), &inquiry::vpd_command(0x00, 255));
        assert_eq!(
            inquiry::parse_supported_pages(&c.data).unwrap(),
            vec![0x00, 0x80, 0x83]
        );
        let c = l.execute(&a2(), &inquiry::vpd_command(0x80, 255));
        assert_eq!(
            inquiry::parse_serial(&c.data).unwrap(),
            "csifsim60014050000000000000000000000001"
        );
        for n in [a1(), a2(), c1()] {
            let c = l.execute(&n, &inquiry::vpd_command(0x83, 255));
            let ds = inquiry::parse_device_id(&c.data).unwrap();
            assert_eq!(
                inquiry::Wwid::from_designations(&ds)
                    .unwrap()
                    .multipath_form(),
                "360014050000000000000000000000001"
            );
            assert_eq!(ds[1].association, Association::TargetPort);
            assert_eq!(
                ds[1].designator,
                Designator::RelativeTargetPort {
                    port: n.target_port
                }
            );
            assert_eq!(ds[1].protocol, Some(protocol_of(&n.initiator)));
        }
        let c = l.execute(&a1(), &inquiry::vpd_command(0x83, 6));
        assert_eq!(c.data.len(), 6);
        assert_eq!(
            verdict(&l.execute(&a1(), &inquiry::vpd_command(0x89, 255))),
            Illegal(0x24, 0)
        );
        let no_evpd = raw(&[0x12, 0, 0x83, 0, 255, 0], DataTransfer::FromDevice(255));
        assert_eq!(verdict(&l.execute(&a1(), &no_evpd)), Illegal(0x24, 0));
    }

    #[test]
    fn unit_attentions_queue_per_nexus_and_block_all_but_inquiry() {
        let mut l = lun(Profile::FULL);
        l.queue_unit_attention(&a1(), 0x2a, 0x06);
        l.queue_unit_attention(&a1(), 0x3f, 0x0e);
        let c = l.execute(&a1(), &inquiry::standard_command(96));
        assert_eq!(verdict(&c), Good);
        assert_eq!(
            l.pending_unit_attentions(&a1()),
            vec![(0x2a, 0x06), (0x3f, 0x0e)]
        );
        run(
            &mut l,
            vec![
                // The command that meets the UA is not executed.
                Step(a1(), register(0, 0xa), Ua(0x2a, 0x06), 0),
                Step(a2(), register(0, 0xa), Good, 1),
                Step(
                    a1(),
                    prin::command(PrInAction::ReadKeys, 512),
                    Ua(0x3f, 0x0e),
                    1,
                ),
                Step(a1(), register(0, 0xa), Good, 2),
            ],
        );
        assert_eq!(regs(&l), vec![(a2(), 0xa), (a1(), 0xa)]);
        assert!(l.pending_unit_attentions(&a1()).is_empty());
    }

    /// Fixed-seed linear congruential generator (Knuth's MMIX constants).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u8
        }

        fn one_in(&mut self, n: u8) -> bool {
            self.next().is_multiple_of(n)
        }
    }

    #[test]
    fn malformed_commands_never_panic() {
        let mut rng = Lcg(0x5eed);
        let nexuses = [a1(), a2(), b1(), c1(), obs()];
        for profile in [Profile::FULL, Profile::MINIMAL] {
            let mut l = lun(profile);
            let (mut changed, mut conflicts, mut reserved) = (0, 0, 0);
            for i in 0..20_000 {
                let n = nexuses[rng.next() as usize % nexuses.len()].clone();
                let mut cdb = [0u8; 10];
                cdb.iter_mut().for_each(|b| *b = rng.next());
                // Mostly PR commands with small keys, so that state changes.
                cdb[0] = match rng.next() % 8 {
                    0..=2 => prout::OPCODE,
                    3 | 4 => prin::OPCODE,
                    5 => inquiry::OPCODE,
                    6 => 0,
                    _ => cdb[0],
                };
                cdb[1] &= if rng.one_in(4) { 0xff } else { 0x07 };
                if !rng.one_in(4) {
                    cdb[2] = [1, 3, 5, 6, 7, 8][rng.next() as usize % 6];
                }
                let len = if !rng.one_in(4) {
                    24
                } else {
                    rng.next() as usize % 40
                };
                if !rng.one_in(4) {
                    cdb[5..9].copy_from_slice(&(len as u32).to_be_bytes());
                }
                let mut list = vec![0u8; len];
                list.iter_mut().for_each(|b| *b = rng.next());
                // Small keys (0 to 3) so that keys match, and mostly clean flags.
                if len >= 16 && !rng.one_in(4) {
                    list[..16].fill(0);
                    list[7] = rng.next() % 4;
                    list[15] = rng.next() % 4;
                }
                if len > 20 && !rng.one_in(4) {
                    list[20] &= 0x05;
                }
                let cmd = match cdb[0] {
                    prout::OPCODE => raw(&cdb, DataTransfer::ToDevice(list)),
                    inquiry::OPCODE => raw(&cdb[..6], DataTransfer::FromDevice(len)),
                    _ => raw(&cdb, DataTransfer::FromDevice(len * 16)),
                };
                let before = l.generation();
                let c = l.execute(&n, &cmd);
                let v = verdict(&c);
                if v != Good {
                    assert_eq!(l.generation(), before, "iteration {i}: {cmd}");
                }
                changed += usize::from(l.generation() != before);
                conflicts += usize::from(v == Conflict);
                reserved += usize::from(l.reservation().is_some());
                assert_eq!(
                    l.invariant_violations(),
                    Vec::<String>::new(),
                    "iteration {i}"
                );
                if rng.one_in(200) {
                    l.reset();
                }
            }
            // The loop must reach the state machine, not only the validation.
            assert!(
                changed > 100 && conflicts > 100 && reserved > 100,
                "{changed} {conflicts} {reserved}"
            );
        }
    }
}
