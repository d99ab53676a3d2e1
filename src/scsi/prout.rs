//! PERSISTENT RESERVE OUT (SPC-4 §6.17): CDB and parameter-list builders, and
//! their parsers (for round-trip tests and for fakes that play a device).

use serde::Serialize;

use super::cdb::{Cdb, Command, DataTransfer};
use super::error::{be16, be32, be64, need, ParseError};
use super::transport_id::TransportId;
use super::types::{PrOutAction, ReservationKey, ReservationType, Scope};

/// PERSISTENT RESERVE OUT operation code.
pub const OPCODE: u8 = super::cdb::PERSISTENT_RESERVE_OUT;

/// Length of the basic parameter list without SPEC_I_PT TransportIDs.
pub const BASIC_LIST_LEN: usize = 24;

/// The basic PR OUT parameter list (SPC-4 table 226) of every action except
/// REGISTER AND MOVE.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct BasicParams {
    /// RESERVATION KEY: the key this nexus is registered with (0 if none).
    pub key: ReservationKey,
    /// SERVICE ACTION RESERVATION KEY: the new key (REGISTER) or the victim (PREEMPT).
    pub sa_key: ReservationKey,
    /// SPEC_I_PT: also register the listed initiator ports (REGISTER only).
    pub spec_i_pt: Vec<TransportId>,
    /// ALL_TG_PT: register through every target port of the device.
    pub all_tg_pt: bool,
    /// APTPL: keep registrations across a power loss.
    pub aptpl: bool,
}

/// The REGISTER AND MOVE parameter list (SPC-4 table 228).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveParams {
    /// RESERVATION KEY of the sending nexus (the current holder).
    pub key: ReservationKey,
    /// The key to register for the destination nexus.
    pub sa_key: ReservationKey,
    /// UNREG: unregister the sending nexus after the move.
    pub unregister: bool,
    /// APTPL.
    pub aptpl: bool,
    /// RELATIVE TARGET PORT IDENTIFIER of the destination.
    pub relative_target_port: u16,
    /// The destination initiator port.
    pub transport_id: TransportId,
}

/// A fully specified PR OUT command: illegal combinations do not build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum PrOut {
    /// REGISTER: `key` is the current key (0 when unregistered), `sa_key` the new one (0 unregisters).
    Register(BasicParams),
    /// REGISTER AND IGNORE EXISTING KEY: `sa_key` is the new key.
    RegisterAndIgnore(BasicParams),
    /// RESERVE with this nexus's `key`.
    Reserve {
        /// This nexus's key.
        key: ReservationKey,
        /// Type to reserve.
        rtype: ReservationType,
    },
    /// RELEASE the reservation of `rtype` held under `key`.
    Release {
        /// This nexus's key.
        key: ReservationKey,
        /// The type of the held reservation (must match).
        rtype: ReservationType,
    },
    /// CLEAR every registration and the reservation.
    Clear {
        /// This nexus's key.
        key: ReservationKey,
    },
    /// PREEMPT the registrations of `victim` (and its reservation).
    Preempt {
        /// This nexus's key.
        key: ReservationKey,
        /// The key to remove.
        victim: ReservationKey,
        /// The type of the reservation to create or keep.
        rtype: ReservationType,
        /// PREEMPT AND ABORT: also abort the victims' commands.
        abort: bool,
    },
    /// REGISTER AND MOVE the reservation to another nexus.
    RegisterAndMove {
        /// Type of the moved reservation.
        rtype: ReservationType,
        /// Parameters.
        params: MoveParams,
    },
    /// REPLACE LOST RESERVATION.
    ReplaceLostReservation {
        /// This nexus's key.
        key: ReservationKey,
        /// Type of the new reservation.
        rtype: ReservationType,
    },
}

impl PrOut {
    /// The service action.
    pub fn action(&self) -> PrOutAction {
        match self {
            PrOut::Register(_) => PrOutAction::Register,
            PrOut::RegisterAndIgnore(_) => PrOutAction::RegisterAndIgnoreExistingKey,
            PrOut::Reserve { .. } => PrOutAction::Reserve,
            PrOut::Release { .. } => PrOutAction::Release,
            PrOut::Clear { .. } => PrOutAction::Clear,
            PrOut::Preempt { abort: false, .. } => PrOutAction::Preempt,
            PrOut::Preempt { abort: true, .. } => PrOutAction::PreemptAndAbort,
            PrOut::RegisterAndMove { .. } => PrOutAction::RegisterAndMove,
            PrOut::ReplaceLostReservation { .. } => PrOutAction::ReplaceLostReservation,
        }
    }

    fn rtype(&self) -> Option<ReservationType> {
        match self {
            PrOut::Reserve { rtype, .. }
            | PrOut::Release { rtype, .. }
            | PrOut::Preempt { rtype, .. }
            | PrOut::RegisterAndMove { rtype, .. }
            | PrOut::ReplaceLostReservation { rtype, .. } => Some(*rtype),
            _ => None,
        }
    }

    /// The parameter list this command sends.
    pub fn parameter_list(&self) -> Vec<u8> {
        match self {
            PrOut::Register(p) | PrOut::RegisterAndIgnore(p) => encode_basic(p),
            PrOut::RegisterAndMove { params, .. } => encode_move(params),
            PrOut::Reserve { key, .. }
            | PrOut::Release { key, .. }
            | PrOut::Clear { key }
            | PrOut::ReplaceLostReservation { key, .. } => encode_basic(&BasicParams {
                key: *key,
                ..Default::default()
            }),
            PrOut::Preempt { key, victim, .. } => encode_basic(&BasicParams {
                key: *key,
                sa_key: *victim,
                ..Default::default()
            }),
        }
    }

    /// The complete command: CDB and parameter list.
    pub fn command(&self) -> Command {
        let list = self.parameter_list();
        let scope_type = self
            .rtype()
            .map(|t| (Scope::LogicalUnit.code() << 4) | t.code())
            .unwrap_or(0);
        let len = (list.len() as u32).to_be_bytes();
        Command {
            name: command_name(self.action()),
            cdb: Cdb::new(&[
                OPCODE,
                self.action() as u8,
                scope_type,
                0,
                0,
                len[0],
                len[1],
                len[2],
                len[3],
                0,
            ]),
            data: DataTransfer::ToDevice(list),
        }
    }
}

fn command_name(a: PrOutAction) -> &'static str {
    match a {
        PrOutAction::Register => "PERSISTENT RESERVE OUT / REGISTER",
        PrOutAction::Reserve => "PERSISTENT RESERVE OUT / RESERVE",
        PrOutAction::Release => "PERSISTENT RESERVE OUT / RELEASE",
        PrOutAction::Clear => "PERSISTENT RESERVE OUT / CLEAR",
        PrOutAction::Preempt => "PERSISTENT RESERVE OUT / PREEMPT",
        PrOutAction::PreemptAndAbort => "PERSISTENT RESERVE OUT / PREEMPT AND ABORT",
        PrOutAction::RegisterAndIgnoreExistingKey => {
            "PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY"
        }
        PrOutAction::RegisterAndMove => "PERSISTENT RESERVE OUT / REGISTER AND MOVE",
        PrOutAction::ReplaceLostReservation => "PERSISTENT RESERVE OUT / REPLACE LOST RESERVATION",
    }
}

fn encode_basic(p: &BasicParams) -> Vec<u8> {
    let mut b = vec![0u8; BASIC_LIST_LEN];
    b[0..8].copy_from_slice(&p.key.to_bytes());
    b[8..16].copy_from_slice(&p.sa_key.to_bytes());
    b[20] =
        (u8::from(!p.spec_i_pt.is_empty()) << 3) | (u8::from(p.all_tg_pt) << 2) | u8::from(p.aptpl);
    if !p.spec_i_pt.is_empty() {
        let tids: Vec<u8> = p.spec_i_pt.iter().flat_map(|t| t.encode()).collect();
        b.extend_from_slice(&(tids.len() as u32).to_be_bytes());
        b.extend(tids);
    }
    b
}

fn encode_move(p: &MoveParams) -> Vec<u8> {
    let tid = p.transport_id.encode();
    let mut b = vec![0u8; 24];
    b[0..8].copy_from_slice(&p.key.to_bytes());
    b[8..16].copy_from_slice(&p.sa_key.to_bytes());
    b[17] = (u8::from(p.unregister) << 1) | u8::from(p.aptpl);
    b[18..20].copy_from_slice(&p.relative_target_port.to_be_bytes());
    b[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    b.extend(tid);
    b
}

/// Decodes a basic parameter list (what a device server receives).
pub fn parse_basic(b: &[u8]) -> Result<BasicParams, ParseError> {
    const WHAT: &str = "PR OUT parameter list";
    need(WHAT, b, BASIC_LIST_LEN)?;
    let spec = b[20] & 0x08 != 0;
    let mut spec_i_pt = Vec::new();
    if spec {
        need(WHAT, b, BASIC_LIST_LEN + 4)?;
        let len = be32(b, 24) as usize;
        let mut rest = super::error::announced(WHAT, b, 28, len)?;
        while !rest.is_empty() {
            let (t, n) = TransportId::parse(rest)?;
            spec_i_pt.push(t);
            rest = rest.get(n..).unwrap_or(&[]);
        }
    }
    Ok(BasicParams {
        key: ReservationKey(be64(b, 0)),
        sa_key: ReservationKey(be64(b, 8)),
        spec_i_pt,
        all_tg_pt: b[20] & 0x04 != 0,
        aptpl: b[20] & 0x01 != 0,
    })
}

/// Decodes a REGISTER AND MOVE parameter list.
pub fn parse_move(b: &[u8]) -> Result<MoveParams, ParseError> {
    const WHAT: &str = "REGISTER AND MOVE parameter list";
    need(WHAT, b, 24)?;
    let tid = super::error::announced(WHAT, b, 24, be32(b, 20) as usize)?;
    Ok(MoveParams {
        key: ReservationKey(be64(b, 0)),
        sa_key: ReservationKey(be64(b, 8)),
        unregister: b[17] & 0x02 != 0,
        aptpl: b[17] & 0x01 != 0,
        relative_target_port: be16(b, 18),
        transport_id: TransportId::parse(tid)?.0,
    })
}

/// Decodes a PR OUT CDB and its parameter list back into a `PrOut`.
pub fn parse(cdb: &[u8], list: &[u8]) -> Result<PrOut, ParseError> {
    const WHAT: &str = "PR OUT CDB";
    need(WHAT, cdb, 10)?;
    if cdb[0] != OPCODE {
        return Err(ParseError::InvalidField {
            what: WHAT,
            field: "OPERATION CODE",
            value: cdb[0] as u64,
            why: "PERSISTENT RESERVE OUT is 0x5f",
        });
    }
    let code = cdb[1] & 0x1f;
    let action = PrOutAction::ALL
        .into_iter()
        .find(|a| *a as u8 == code)
        .ok_or(ParseError::InvalidField {
            what: WHAT,
            field: "SERVICE ACTION",
            value: code as u64,
            why: "SPC-4 defines 0 to 8",
        })?;
    let rtype = || {
        ReservationType::from_code(cdb[2] & 0x0f).ok_or(ParseError::InvalidField {
            what: WHAT,
            field: "TYPE",
            value: (cdb[2] & 0x0f) as u64,
            why: "SPC-4 defines types 1, 3, 5, 6, 7 and 8",
        })
    };
    if action == PrOutAction::RegisterAndMove {
        return Ok(PrOut::RegisterAndMove {
            rtype: rtype()?,
            params: parse_move(list)?,
        });
    }
    let p = parse_basic(list)?;
    Ok(match action {
        PrOutAction::Register => PrOut::Register(p),
        PrOutAction::RegisterAndIgnoreExistingKey => PrOut::RegisterAndIgnore(p),
        PrOutAction::Reserve => PrOut::Reserve {
            key: p.key,
            rtype: rtype()?,
        },
        PrOutAction::Release => PrOut::Release {
            key: p.key,
            rtype: rtype()?,
        },
        PrOutAction::Clear => PrOut::Clear { key: p.key },
        PrOutAction::Preempt | PrOutAction::PreemptAndAbort => PrOut::Preempt {
            key: p.key,
            victim: p.sa_key,
            rtype: rtype()?,
            abort: action == PrOutAction::PreemptAndAbort,
        },
        PrOutAction::ReplaceLostReservation => PrOut::ReplaceLostReservation {
            key: p.key,
            rtype: rtype()?,
        },
        PrOutAction::RegisterAndMove => unreachable!("handled above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationType::*;

    fn k(x: u64) -> ReservationKey {
        ReservationKey(x)
    }

    #[test]
    fn register_cdb_and_list_byte_for_byte() {
        let c = PrOut::Register(BasicParams {
            key: k(0x0102030405060708),
            sa_key: k(0x1112131415161718),
            all_tg_pt: true,
            aptpl: true,
            ..Default::default()
        })
        .command();
        assert_eq!(c.cdb.as_bytes(), &[0x5f, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0]);
        assert!(c.changes_state());
        let DataTransfer::ToDevice(list) = c.data else {
            panic!("PR OUT sends data")
        };
        assert_eq!(
            list,
            vec![
                1, 2, 3, 4, 5, 6, 7, 8, // RESERVATION KEY
                0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // SA RESERVATION KEY
                0, 0, 0, 0,    // obsolete
                0x05, // ALL_TG_PT | APTPL
                0, 0, 0
            ]
        );
    }

    #[test]
    fn every_action_code_and_type_byte() {
        let cases: Vec<(PrOut, u8, u8)> = vec![
            (PrOut::Register(BasicParams::default()), 0, 0),
            (
                PrOut::Reserve {
                    key: k(1),
                    rtype: WriteExclusiveRegistrantsOnly,
                },
                1,
                0x05,
            ),
            (
                PrOut::Release {
                    key: k(1),
                    rtype: WriteExclusiveAllRegistrants,
                },
                2,
                0x07,
            ),
            (PrOut::Clear { key: k(1) }, 3, 0),
            (
                PrOut::Preempt {
                    key: k(1),
                    victim: k(2),
                    rtype: WriteExclusiveRegistrantsOnly,
                    abort: false,
                },
                4,
                0x05,
            ),
            (
                PrOut::Preempt {
                    key: k(1),
                    victim: k(2),
                    rtype: ExclusiveAccessAllRegistrants,
                    abort: true,
                },
                5,
                0x08,
            ),
            (
                PrOut::RegisterAndIgnore(BasicParams {
                    sa_key: k(3),
                    ..Default::default()
                }),
                6,
                0,
            ),
            (
                PrOut::RegisterAndMove {
                    rtype: WriteExclusive,
                    params: MoveParams {
                        key: k(1),
                        sa_key: k(4),
                        unregister: true,
                        aptpl: false,
                        relative_target_port: 2,
                        transport_id: TransportId::Sas {
                            sas_address: [0x50, 0, 0, 0, 0, 0, 0, 1],
                        },
                    },
                },
                7,
                0x01,
            ),
            (
                PrOut::ReplaceLostReservation {
                    key: k(1),
                    rtype: ExclusiveAccess,
                },
                8,
                0x03,
            ),
        ];
        for (p, sa, st) in cases {
            let c = p.command();
            assert_eq!(c.cdb.as_bytes()[0], 0x5f);
            assert_eq!(c.cdb.as_bytes()[1], sa, "{p:?}");
            assert_eq!(c.cdb.as_bytes()[2], st, "{p:?}");
            let DataTransfer::ToDevice(list) = &c.data else {
                panic!()
            };
            assert_eq!(c.cdb.as_bytes()[5..9], (list.len() as u32).to_be_bytes());
            assert_eq!(parse(c.cdb.as_bytes(), list).unwrap(), p);
        }
    }

    #[test]
    fn preempt_puts_victim_in_sa_key() {
        let c = PrOut::Preempt {
            key: k(0xb),
            victim: k(0xa),
            rtype: WriteExclusiveRegistrantsOnly,
            abort: true,
        }
        .command();
        let DataTransfer::ToDevice(list) = c.data else {
            panic!()
        };
        assert_eq!(&list[0..8], &0xbu64.to_be_bytes());
        assert_eq!(&list[8..16], &0xau64.to_be_bytes());
        assert_eq!(list[20], 0);
    }

    #[test]
    fn register_and_move_list_layout() {
        let p = MoveParams {
            key: k(0xa),
            sa_key: k(0xc),
            unregister: true,
            aptpl: true,
            relative_target_port: 0x0102,
            transport_id: TransportId::Iscsi {
                name: "iqn.x:y".into(),
                isid: None,
            },
        };
        let b = encode_move(&p);
        assert_eq!(b[17], 0x03);
        assert_eq!(&b[18..20], &[1, 2]);
        assert_eq!(be32(&b, 20) as usize, b.len() - 24);
        assert_eq!(b[24], 0x05); // iSCSI name form
        assert_eq!(parse_move(&b).unwrap(), p);
    }

    #[test]
    fn spec_i_pt_appends_transport_ids() {
        let p = BasicParams {
            key: k(0),
            sa_key: k(0xd),
            spec_i_pt: vec![
                TransportId::Sas {
                    sas_address: [1; 8],
                },
                TransportId::Iscsi {
                    name: "iqn.a:b".into(),
                    isid: Some("00023d000001".into()),
                },
            ],
            all_tg_pt: false,
            aptpl: false,
        };
        let b = encode_basic(&p);
        assert_eq!(b[20], 0x08);
        assert_eq!(be32(&b, 24) as usize, b.len() - 28);
        assert_eq!(parse_basic(&b).unwrap(), p);
    }

    #[test]
    fn parse_rejects_bad_cdbs() {
        let list = [0u8; 24];
        assert!(parse(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list).is_err());
        assert!(parse(&[0x5f, 9, 0, 0, 0, 0, 0, 0, 24, 0], &list).is_err());
        assert!(parse(&[0x5f, 1, 2, 0, 0, 0, 0, 0, 24, 0], &list).is_err());
        assert!(parse(&[0x5f, 0, 0], &list).is_err());
        assert!(parse(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list[..23]).is_err());
    }
}
