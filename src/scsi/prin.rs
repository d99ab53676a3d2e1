//! PERSISTENT RESERVE IN (SPC-4 §6.16): CDB builder and response parsers.

use serde::Serialize;

use super::cdb::{Cdb, Command, DataTransfer};
use super::error::{announced, be16, be32, be64, need, ParseError};
use super::transport_id::TransportId;
use super::types::{PrInAction, ReservationKey, ReservationType, Scope};

/// PERSISTENT RESERVE IN operation code.
pub const OPCODE: u8 = 0x5e;

/// A first allocation length that fits 60 keys or a handful of full-status
/// descriptors; larger answers are re-read at the length they announce.
pub const DEFAULT_ALLOCATION: u16 = 512;

/// First allocation length of READ FULL STATUS: a descriptor with an iSCSI
/// name takes about 90 bytes, and a re-read at the announced length would
/// double the cost of the engine's one observation; 8 KiB holds some 90
/// registrations.
pub const FULL_STATUS_ALLOCATION: u16 = 8192;

/// Builds a PR IN CDB for `action` with `allocation` bytes of buffer.
pub fn command(action: PrInAction, allocation: u16) -> Command {
    let [hi, lo] = allocation.to_be_bytes();
    Command {
        name: match action {
            PrInAction::ReadKeys => "PERSISTENT RESERVE IN / READ KEYS",
            PrInAction::ReadReservation => "PERSISTENT RESERVE IN / READ RESERVATION",
            PrInAction::ReportCapabilities => "PERSISTENT RESERVE IN / REPORT CAPABILITIES",
            PrInAction::ReadFullStatus => "PERSISTENT RESERVE IN / READ FULL STATUS",
        },
        cdb: Cdb::new(&[OPCODE, action as u8, 0, 0, 0, 0, 0, hi, lo, 0]),
        data: DataTransfer::FromDevice(allocation as usize),
    }
}

/// What a response needs when its additional length exceeds the buffer the
/// command was given (SPC-4: the device truncates, the header tells the truth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reissue {
    /// Everything fitted.
    Complete,
    /// Ask again with this allocation length.
    With(u16),
    /// The response is larger than any 16-bit allocation length can fetch.
    TooLarge(usize),
}

/// Decides whether a READ KEYS / READ FULL STATUS answer must be read again.
/// `allocated` is the allocation length the command was sent with.
pub fn reissue(response: &[u8], allocated: usize) -> Reissue {
    if response.len() < 8 {
        return Reissue::Complete; // the parser reports the short header
    }
    let total = 8usize.saturating_add(be32(response, 4) as usize);
    if total <= allocated {
        Reissue::Complete
    } else if total <= u16::MAX as usize {
        Reissue::With(total as u16)
    } else {
        Reissue::TooLarge(total)
    }
}

/// READ KEYS: the generation and every registered key (one per I_T nexus).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadKeys {
    /// PRGENERATION: bumps on every successful PR OUT except RESERVE/RELEASE.
    pub generation: u32,
    /// The registered keys, duplicates included (one per registered nexus).
    pub keys: Vec<ReservationKey>,
}

/// Parses READ KEYS parameter data.
pub fn parse_read_keys(b: &[u8]) -> Result<ReadKeys, ParseError> {
    const WHAT: &str = "READ KEYS";
    need(WHAT, b, 8)?;
    let len = be32(b, 4) as usize;
    if !len.is_multiple_of(8) {
        return Err(ParseError::InvalidField {
            what: WHAT,
            field: "ADDITIONAL LENGTH",
            value: len as u64,
            why: "must be a multiple of 8 (one 8-byte key each)",
        });
    }
    let body = announced(WHAT, b, 8, len)?;
    let keys = body
        .chunks_exact(8)
        .map(|c| ReservationKey(be64(c, 0)))
        .collect();
    Ok(ReadKeys {
        generation: be32(b, 0),
        keys,
    })
}

impl ReadKeys {
    /// Encodes READ KEYS parameter data as a device server would (for fakes
    /// and simulations): the full answer, before any allocation-length cut.
    pub fn encode(&self) -> Vec<u8> {
        let body: Vec<u8> = self.keys.iter().flat_map(|k| k.to_bytes()).collect();
        with_header(self.generation, body)
    }
}

/// PRGENERATION, ADDITIONAL LENGTH, then `body`: the layout of every PR IN
/// answer except REPORT CAPABILITIES.
fn with_header(generation: u32, body: Vec<u8>) -> Vec<u8> {
    let mut b = generation.to_be_bytes().to_vec();
    // A body past 4 GiB cannot occur: a u16 allocation length reads at most 64 KiB.
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend(body);
    b
}

/// The reservation a READ RESERVATION reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// The holder's key (for all-registrants types: zero).
    pub key: ReservationKey,
    /// Scope (always the logical unit).
    pub scope: Scope,
    /// Type.
    #[serde(rename = "type")]
    pub rtype: ReservationType,
}

/// READ RESERVATION: the generation and the reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadReservation {
    /// PRGENERATION.
    pub generation: u32,
    /// The reservation, or `None` when the logical unit is not reserved.
    pub reservation: Option<Reservation>,
}

/// Parses READ RESERVATION parameter data.
pub fn parse_read_reservation(b: &[u8]) -> Result<ReadReservation, ParseError> {
    const WHAT: &str = "READ RESERVATION";
    need(WHAT, b, 8)?;
    let generation = be32(b, 0);
    let len = be32(b, 4) as usize;
    if len == 0 {
        return Ok(ReadReservation {
            generation,
            reservation: None,
        });
    }
    if len < 16 {
        return Err(ParseError::InvalidField {
            what: WHAT,
            field: "ADDITIONAL LENGTH",
            value: len as u64,
            why: "must be 0 (not reserved) or 16",
        });
    }
    let body = announced(WHAT, b, 8, len)?;
    let (scope, rtype) = scope_type(WHAT, body[13])?;
    Ok(ReadReservation {
        generation,
        reservation: Some(Reservation {
            key: ReservationKey(be64(body, 0)),
            scope,
            rtype,
        }),
    })
}

impl ReadReservation {
    /// Encodes READ RESERVATION parameter data (SPC-4 table 216). For the
    /// all-registrants types the caller passes key 0, as SPC-4 requires.
    pub fn encode(&self) -> Vec<u8> {
        let body = match &self.reservation {
            None => Vec::new(),
            Some(r) => {
                let mut d = vec![0u8; 16];
                d[0..8].copy_from_slice(&r.key.to_bytes());
                d[13] = (r.scope.code() << 4) | r.rtype.code();
                d
            }
        };
        with_header(self.generation, body)
    }
}

fn scope_type(what: &'static str, b: u8) -> Result<(Scope, ReservationType), ParseError> {
    let scope = b >> 4;
    if scope != Scope::LogicalUnit.code() {
        return Err(ParseError::InvalidField {
            what,
            field: "SCOPE",
            value: scope as u64,
            why: "only 0 (logical unit scope) is defined",
        });
    }
    let code = b & 0x0f;
    let rtype = ReservationType::from_code(code).ok_or(ParseError::InvalidField {
        what,
        field: "TYPE",
        value: code as u64,
        why: "SPC-4 defines types 1, 3, 5, 6, 7 and 8",
    })?;
    Ok((Scope::LogicalUnit, rtype))
}

/// REPORT CAPABILITIES: what the device server supports (SPC-4 §6.16.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Capabilities {
    /// RLR_C: replace lost reservation capable.
    pub replace_lost_reservation: bool,
    /// CRH: compatible reservation handling (SPC-2 RESERVE/RELEASE interplay).
    pub compatible_reservation_handling: bool,
    /// SIP_C: SPEC_I_PT supported.
    pub specify_initiator_ports: bool,
    /// ATP_C: ALL_TG_PT supported.
    pub all_target_ports: bool,
    /// PTPL_C: persist through power loss supported.
    pub persist_through_power_loss: bool,
    /// TMV: the type mask is valid.
    pub type_mask_valid: bool,
    /// ALLOW COMMANDS field (3 bits).
    pub allow_commands: u8,
    /// PTPL_A: persist through power loss is active.
    pub persist_through_power_loss_active: bool,
    /// The supported types (meaningful only when `type_mask_valid`).
    pub types: Vec<ReservationType>,
}

/// Parses REPORT CAPABILITIES parameter data.
pub fn parse_capabilities(b: &[u8]) -> Result<Capabilities, ParseError> {
    const WHAT: &str = "REPORT CAPABILITIES";
    need(WHAT, b, 8)?;
    let len = be16(b, 0) as usize;
    if len < 8 {
        return Err(ParseError::InvalidField {
            what: WHAT,
            field: "LENGTH",
            value: len as u64,
            why: "must be at least 8",
        });
    }
    let mask = be16(b, 4);
    // Type mask bits (SPC-4 table 213), most significant bit first.
    let bits = [
        (0x8000, ReservationType::WriteExclusiveAllRegistrants),
        (0x4000, ReservationType::ExclusiveAccessRegistrantsOnly),
        (0x2000, ReservationType::WriteExclusiveRegistrantsOnly),
        (0x0800, ReservationType::ExclusiveAccess),
        (0x0200, ReservationType::WriteExclusive),
        (0x0001, ReservationType::ExclusiveAccessAllRegistrants),
    ];
    let mut types: Vec<_> = bits
        .iter()
        .filter(|(m, _)| mask & m != 0)
        .map(|(_, t)| *t)
        .collect();
    types.sort();
    Ok(Capabilities {
        replace_lost_reservation: b[2] & 0x80 != 0,
        compatible_reservation_handling: b[2] & 0x10 != 0,
        specify_initiator_ports: b[2] & 0x08 != 0,
        all_target_ports: b[2] & 0x04 != 0,
        persist_through_power_loss: b[2] & 0x01 != 0,
        type_mask_valid: b[3] & 0x80 != 0,
        allow_commands: (b[3] >> 4) & 0x07,
        persist_through_power_loss_active: b[3] & 0x01 != 0,
        types,
    })
}

impl Capabilities {
    /// Encodes the capabilities as a device would (for tests and fakes).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[1] = 8;
        b[2] = (u8::from(self.replace_lost_reservation) << 7)
            | (u8::from(self.compatible_reservation_handling) << 4)
            | (u8::from(self.specify_initiator_ports) << 3)
            | (u8::from(self.all_target_ports) << 2)
            | u8::from(self.persist_through_power_loss);
        b[3] = (u8::from(self.type_mask_valid) << 7)
            | ((self.allow_commands & 7) << 4)
            | u8::from(self.persist_through_power_loss_active);
        let mut mask = 0u16;
        for t in &self.types {
            mask |= match t {
                ReservationType::WriteExclusiveAllRegistrants => 0x8000,
                ReservationType::ExclusiveAccessRegistrantsOnly => 0x4000,
                ReservationType::WriteExclusiveRegistrantsOnly => 0x2000,
                ReservationType::ExclusiveAccess => 0x0800,
                ReservationType::WriteExclusive => 0x0200,
                ReservationType::ExclusiveAccessAllRegistrants => 0x0001,
            };
        }
        b[4..6].copy_from_slice(&mask.to_be_bytes());
        b
    }
}

/// One registration as READ FULL STATUS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// The key.
    pub key: ReservationKey,
    /// ALL_TG_PT: registered through every target port.
    pub all_target_ports: bool,
    /// R_HOLDER: this nexus holds the reservation.
    pub holder: bool,
    /// The reservation type, when `holder`.
    #[serde(rename = "type")]
    pub rtype: Option<ReservationType>,
    /// RELATIVE TARGET PORT IDENTIFIER (meaningless with ALL_TG_PT).
    pub relative_target_port: u16,
    /// The initiator port.
    pub transport_id: TransportId,
}

/// READ FULL STATUS: the generation and every registration with its nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FullStatus {
    /// PRGENERATION.
    pub generation: u32,
    /// The registrations.
    pub registrations: Vec<Registration>,
}

/// Parses READ FULL STATUS parameter data.
pub fn parse_full_status(b: &[u8]) -> Result<FullStatus, ParseError> {
    const WHAT: &str = "READ FULL STATUS";
    need(WHAT, b, 8)?;
    let body = announced(WHAT, b, 8, be32(b, 4) as usize)?;
    let mut registrations = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        need(WHAT, rest, 24)?;
        let tid_len = be32(rest, 20) as usize;
        let tid_bytes = announced(WHAT, rest, 24, tid_len)?;
        let holder = rest[12] & 0x01 != 0;
        let rtype = if holder {
            Some(scope_type(WHAT, rest[13])?.1)
        } else {
            None
        };
        // One odd TransportID must not hide every other registration: keep it raw.
        let transport_id = TransportId::parse(tid_bytes)
            .map(|(t, _)| t)
            .unwrap_or_else(|_| TransportId::raw(tid_bytes));
        registrations.push(Registration {
            key: ReservationKey(be64(rest, 0)),
            all_target_ports: rest[12] & 0x02 != 0,
            holder,
            rtype,
            relative_target_port: be16(rest, 18),
            transport_id,
        });
        rest = &rest[24 + tid_len..];
    }
    Ok(FullStatus {
        generation: be32(b, 0),
        registrations,
    })
}

impl FullStatus {
    /// Encodes READ FULL STATUS parameter data (SPC-4 table 217), one
    /// descriptor per registration with its TransportID.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for r in &self.registrations {
            let tid = r.transport_id.encode();
            let mut d = vec![0u8; 24];
            d[0..8].copy_from_slice(&r.key.to_bytes());
            d[12] = (u8::from(r.all_target_ports) << 1) | u8::from(r.holder);
            // SCOPE and TYPE are reserved unless R_HOLDER is set.
            if let (true, Some(t)) = (r.holder, r.rtype) {
                d[13] = (Scope::LogicalUnit.code() << 4) | t.code();
            }
            d[18..20].copy_from_slice(&r.relative_target_port.to_be_bytes());
            d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
            body.extend(d);
            body.extend(tid);
        }
        with_header(self.generation, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_match_spc_table() {
        let c = command(PrInAction::ReadKeys, 0x1234);
        assert_eq!(c.cdb.as_bytes(), &[0x5e, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0]);
        assert_eq!(c.data, DataTransfer::FromDevice(0x1234));
        for (a, sa) in [
            (PrInAction::ReadReservation, 1),
            (PrInAction::ReportCapabilities, 2),
            (PrInAction::ReadFullStatus, 3),
        ] {
            let c = command(a, 8);
            assert_eq!(c.cdb.as_bytes(), &[0x5e, sa, 0, 0, 0, 0, 0, 0, 8, 0]);
            assert!(!c.changes_state());
        }
    }

    #[test]
    fn read_keys_from_lio() {
        // generation 7, four keys: 0xa 0xa 0xb 0xb (two nexuses each)
        let mut b = vec![0, 0, 0, 7, 0, 0, 0, 32];
        for k in [0xau64, 0xa, 0xb, 0xb] {
            b.extend_from_slice(&k.to_be_bytes());
        }
        let r = parse_read_keys(&b).unwrap();
        assert_eq!(r.generation, 7);
        assert_eq!(
            r.keys,
            vec![
                ReservationKey(0xa),
                ReservationKey(0xa),
                ReservationKey(0xb),
                ReservationKey(0xb)
            ]
        );
        assert_eq!(reissue(&b, 512), Reissue::Complete);
    }

    #[test]
    fn read_keys_truncated_asks_for_reissue() {
        // 100 keys announced, 8-byte buffer: the device truncated.
        let b = [0, 0, 0, 1, 0, 0, 3, 32];
        assert_eq!(reissue(&b, 8), Reissue::With(808));
        assert!(matches!(
            parse_read_keys(&b),
            Err(ParseError::Truncated {
                announced: 808,
                got: 8,
                ..
            })
        ));
        let huge = [0, 0, 0, 1, 0, 1, 0, 0];
        assert_eq!(reissue(&huge, 8), Reissue::TooLarge(65544));
    }

    #[test]
    fn read_keys_rejects_ragged_length_and_short_header() {
        assert!(parse_read_keys(&[0, 0, 0, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5]).is_err());
        assert!(matches!(
            parse_read_keys(&[0, 0, 0]),
            Err(ParseError::TooShort {
                need: 8,
                got: 3,
                ..
            })
        ));
        // Oversized buffer: trailing bytes past the announced length are ignored.
        let mut b = vec![0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xc];
        b.extend_from_slice(&[0xff; 40]);
        assert_eq!(parse_read_keys(&b).unwrap().keys, vec![ReservationKey(0xc)]);
    }

    #[test]
    fn read_reservation_none_and_type5() {
        let none = parse_read_reservation(&[0, 0, 0, 3, 0, 0, 0, 0]).unwrap();
        assert_eq!(none.reservation, None);
        assert_eq!(none.generation, 3);
        let mut b = vec![0, 0, 0, 4, 0, 0, 0, 16];
        b.extend_from_slice(&0xbu64.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        let r = parse_read_reservation(&b).unwrap().reservation.unwrap();
        assert_eq!(r.key, ReservationKey(0xb));
        assert_eq!(r.rtype, ReservationType::WriteExclusiveRegistrantsOnly);
        b[21] = 0x15; // scope 1 is not defined
        assert!(parse_read_reservation(&b).is_err());
        b[21] = 0x02; // type 2 is obsolete
        assert!(parse_read_reservation(&b).is_err());
        assert!(parse_read_reservation(&b[..20]).is_err());
        assert!(parse_read_reservation(&[0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn capabilities_of_lio() {
        // LIO: CRH SIP_C ATP_C PTPL_C, TMV, all six types.
        let b = [0x00, 0x08, 0x1d, 0x80, 0xea, 0x01, 0x00, 0x00];
        let c = parse_capabilities(&b).unwrap();
        assert!(!c.replace_lost_reservation);
        assert!(c.compatible_reservation_handling);
        assert!(c.specify_initiator_ports && c.all_target_ports && c.persist_through_power_loss);
        assert!(c.type_mask_valid);
        assert!(!c.persist_through_power_loss_active);
        assert_eq!(c.types, ReservationType::ALL.to_vec());
        assert_eq!(c.encode(), b);
        assert!(parse_capabilities(&b[..7]).is_err());
        assert!(parse_capabilities(&[0, 4, 0, 0, 0, 0, 0, 0]).is_err());
    }

    fn full_status_descriptor(key: u64, flags: u8, st: u8, rtpi: u16, tid: &[u8]) -> Vec<u8> {
        let mut d = key.to_be_bytes().to_vec();
        d.extend_from_slice(&[0, 0, 0, 0, flags, st, 0, 0, 0, 0]);
        d.extend_from_slice(&rtpi.to_be_bytes());
        d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(tid);
        d
    }

    #[test]
    fn an_undecodable_transport_id_is_kept_raw_and_hides_nothing() {
        let good = |isid: &str| {
            TransportId::Iscsi {
                name: "iqn.2025-01.test.rig:nodea".into(),
                isid: Some(isid.into()),
            }
            .encode()
        };
        // iSCSI format 01b (port identifier) without the ",i," separator.
        let name = b"iqn.2025-01.test.rig:nodeb\0\0";
        let mut odd = vec![0x45, 0, 0, name.len() as u8];
        odd.extend_from_slice(name);
        let mut body = full_status_descriptor(0xa, 0, 0, 1, &good("00023d000001"));
        body.extend(full_status_descriptor(0xb, 0, 0, 2, &odd));
        body.extend(full_status_descriptor(0xa, 0, 0, 2, &good("00023d000002")));
        let mut b = vec![0, 0, 0, 4];
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend(body);
        let fs = parse_full_status(&b).unwrap();
        assert_eq!(fs.registrations.len(), 3);
        assert!(
            matches!(
                &fs.registrations[1].transport_id,
                TransportId::Other { protocol_id: 5, format: 1, raw } if raw.starts_with("45")
            ),
            "{:?}",
            fs.registrations[1].transport_id
        );
        assert_eq!(fs.registrations[2].relative_target_port, 2);
    }

    #[test]
    fn full_status_with_iscsi_and_sas() {
        let iscsi = TransportId::Iscsi {
            name: "iqn.2025-01.test.rig:nodeb".into(),
            isid: Some("00023d000003".into()),
        }
        .encode();
        let sas = TransportId::Sas {
            sas_address: [0x50, 1, 0x40, 0x5b, 0xbb, 0xbb, 0xbb, 0xbb],
        }
        .encode();
        let mut body = full_status_descriptor(0xb, 0x01, 0x05, 1, &iscsi);
        body.extend(full_status_descriptor(0xb, 0x02, 0x00, 2, &sas));
        let mut b = vec![0, 0, 0, 9];
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend(body);
        let fs = parse_full_status(&b).unwrap();
        assert_eq!(fs.generation, 9);
        assert_eq!(fs.registrations.len(), 2);
        let h = &fs.registrations[0];
        assert!(h.holder && !h.all_target_ports);
        assert_eq!(
            h.rtype,
            Some(ReservationType::WriteExclusiveRegistrantsOnly)
        );
        assert_eq!(h.relative_target_port, 1);
        assert_eq!(
            h.transport_id.to_string(),
            "iscsi iqn.2025-01.test.rig:nodeb,i,0x00023d000003"
        );
        let r = &fs.registrations[1];
        assert!(!r.holder && r.all_target_ports && r.rtype.is_none());
        assert_eq!(r.transport_id.to_string(), "sas 0x5001405bbbbbbbbb");
        // Cut inside the second descriptor's TransportID.
        let cut = b.len() - 4;
        let mut t = b[..cut].to_vec();
        let l = (t.len() - 8) as u32;
        t[4..8].copy_from_slice(&l.to_be_bytes());
        assert!(matches!(
            parse_full_status(&t),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn read_keys_encode_round_trips() {
        for keys in [
            vec![],
            vec![
                ReservationKey(0xa),
                ReservationKey(0xa),
                ReservationKey(u64::MAX),
            ],
        ] {
            let rk = ReadKeys {
                generation: 0xdead_beef,
                keys,
            };
            let b = rk.encode();
            assert_eq!(b.len(), 8 + 8 * rk.keys.len());
            assert_eq!(parse_read_keys(&b).unwrap(), rk);
            assert_eq!(reissue(&b, b.len()), Reissue::Complete);
        }
    }

    #[test]
    fn read_reservation_encode_round_trips() {
        let none = ReadReservation {
            generation: 3,
            reservation: None,
        };
        assert_eq!(none.encode(), vec![0, 0, 0, 3, 0, 0, 0, 0]);
        assert_eq!(parse_read_reservation(&none.encode()).unwrap(), none);
        for rtype in ReservationType::ALL {
            let r = ReadReservation {
                generation: 9,
                reservation: Some(Reservation {
                    key: ReservationKey(0x0102_0304_0506_0708),
                    scope: Scope::LogicalUnit,
                    rtype,
                }),
            };
            let b = r.encode();
            assert_eq!(b.len(), 24);
            assert_eq!(b[21], rtype.code());
            assert_eq!(parse_read_reservation(&b).unwrap(), r);
        }
    }

    #[test]
    fn full_status_encode_round_trips() {
        let fs = FullStatus {
            generation: 12,
            registrations: vec![
                Registration {
                    key: ReservationKey(0xb),
                    all_target_ports: false,
                    holder: true,
                    rtype: Some(ReservationType::WriteExclusiveRegistrantsOnly),
                    relative_target_port: 1,
                    transport_id: TransportId::Iscsi {
                        name: "iqn.2025-01.test.rig:nodeb".into(),
                        isid: Some("00023d000003".into()),
                    },
                },
                Registration {
                    key: ReservationKey(0xc),
                    all_target_ports: true,
                    holder: false,
                    rtype: None,
                    relative_target_port: 2,
                    transport_id: TransportId::Sas {
                        sas_address: [0x50, 1, 0x40, 0x5b, 0xbb, 0xbb, 0xbb, 0xbb],
                    },
                },
            ],
        };
        let b = fs.encode();
        assert_eq!(parse_full_status(&b).unwrap(), fs);
        // Byte-compatible with the hand-built LIO layout the parser tests use.
        let iscsi = fs.registrations[0].transport_id.encode();
        let sas = fs.registrations[1].transport_id.encode();
        let mut body = full_status_descriptor(0xb, 0x01, 0x05, 1, &iscsi);
        body.extend(full_status_descriptor(0xc, 0x02, 0x00, 2, &sas));
        let mut want = vec![0, 0, 0, 12];
        want.extend_from_slice(&(body.len() as u32).to_be_bytes());
        want.extend(body);
        assert_eq!(b, want);
        let empty = FullStatus {
            generation: 0,
            registrations: vec![],
        };
        assert_eq!(parse_full_status(&empty.encode()).unwrap(), empty);
    }
}
