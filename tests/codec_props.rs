//! Property tests of the SCSI codec: every builder/parser pair round-trips,
//! and every parser of device data returns (never panics) on arbitrary bytes.

use proptest::prelude::*;

use csi_fencer::scsi::{
    inquiry, prin, prout, BasicParams, Capabilities, MoveParams, PrOut, ReservationKey,
    ReservationType, Sense, SenseKey, TransportId, Wwid,
};

fn any_key() -> impl Strategy<Value = ReservationKey> {
    prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()].prop_map(ReservationKey)
}

fn any_type() -> impl Strategy<Value = ReservationType> {
    prop::sample::select(ReservationType::ALL.to_vec())
}

fn any_tid() -> impl Strategy<Value = TransportId> {
    prop_oneof![
        any::<[u8; 8]>().prop_map(|a| TransportId::Sas { sas_address: a }),
        any::<[u8; 8]>().prop_map(|n| TransportId::FibreChannel { n_port_name: n }),
        any::<[u8; 8]>().prop_map(|e| TransportId::Sbp { eui64: e }),
        any::<[u8; 16]>().prop_map(|p| TransportId::Srp { port_id: p }),
        (
            "iqn\\.[0-9]{4}-[0-9]{2}\\.[a-z.]{1,20}:[a-z0-9-]{1,30}",
            prop::option::of("[0-9a-f]{12}")
        )
            .prop_map(|(name, isid)| TransportId::Iscsi { name, isid }),
    ]
}

fn any_basic() -> impl Strategy<Value = BasicParams> {
    (
        any_key(),
        any_key(),
        prop::collection::vec(any_tid(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(key, sa_key, spec_i_pt, all_tg_pt, aptpl)| BasicParams {
            key,
            sa_key,
            spec_i_pt,
            all_tg_pt,
            aptpl,
        })
}

fn any_prout() -> impl Strategy<Value = PrOut> {
    prop_oneof![
        any_basic().prop_map(PrOut::Register),
        any_basic().prop_map(PrOut::RegisterAndIgnore),
        (any_key(), any_type()).prop_map(|(key, rtype)| PrOut::Reserve { key, rtype }),
        (any_key(), any_type()).prop_map(|(key, rtype)| PrOut::Release { key, rtype }),
        any_key().prop_map(|key| PrOut::Clear { key }),
        (any_key(), any_key(), any_type(), any::<bool>()).prop_map(
            |(key, victim, rtype, abort)| PrOut::Preempt {
                key,
                victim,
                rtype,
                abort
            }
        ),
        (any_key(), any_type())
            .prop_map(|(key, rtype)| PrOut::ReplaceLostReservation { key, rtype }),
        (
            any_type(),
            any_key(),
            any_key(),
            any::<bool>(),
            any::<bool>(),
            any::<u16>(),
            any_tid()
        )
            .prop_map(|(rtype, key, sa_key, unregister, aptpl, rtp, tid)| {
                PrOut::RegisterAndMove {
                    rtype,
                    params: MoveParams {
                        key,
                        sa_key,
                        unregister,
                        aptpl,
                        relative_target_port: rtp,
                        transport_id: tid,
                    },
                }
            }),
    ]
}

/// READ KEYS parameter data as a device would send it.
fn encode_keys(generation: u32, keys: &[ReservationKey]) -> Vec<u8> {
    let mut b = generation.to_be_bytes().to_vec();
    b.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
    for k in keys {
        b.extend_from_slice(&k.to_bytes());
    }
    b
}

proptest! {
    #[test]
    fn prout_round_trips(p in any_prout()) {
        let c = p.command();
        let csi_fencer::scsi::DataTransfer::ToDevice(list) = &c.data else {
            return Err(TestCaseError::fail("PR OUT without data"));
        };
        prop_assert_eq!(c.cdb.as_bytes()[5..9].to_vec(), (list.len() as u32).to_be_bytes().to_vec());
        prop_assert_eq!(prout::parse(c.cdb.as_bytes(), list).unwrap(), p);
    }

    #[test]
    fn transport_ids_round_trip(t in any_tid()) {
        let b = t.encode();
        let (back, len) = TransportId::parse(&b).unwrap();
        prop_assert_eq!(len, b.len());
        prop_assert_eq!(back, t);
    }

    #[test]
    fn read_keys_round_trip(generation in any::<u32>(), keys in prop::collection::vec(any_key(), 0..100)) {
        let b = encode_keys(generation, &keys);
        let r = prin::parse_read_keys(&b).unwrap();
        prop_assert_eq!(r.generation, generation);
        prop_assert_eq!(r.keys, keys);
        prop_assert_eq!(prin::reissue(&b, b.len()), prin::Reissue::Complete);
    }

    #[test]
    fn truncated_read_keys_asks_for_exactly_what_it_announced(n in 1usize..200, cut in 0usize..8) {
        let keys: Vec<_> = (0..n as u64).map(ReservationKey).collect();
        let b = encode_keys(1, &keys);
        let short = &b[..8 + cut];
        prop_assert_eq!(prin::reissue(short, 8 + cut), prin::Reissue::With(b.len() as u16));
    }

    #[test]
    fn capabilities_round_trip(flags in any::<[bool; 7]>(), allow in 0u8..8, types in prop::sample::subsequence(ReservationType::ALL.to_vec(), 0..=6)) {
        let c = Capabilities {
            replace_lost_reservation: flags[0],
            compatible_reservation_handling: flags[1],
            specify_initiator_ports: flags[2],
            all_target_ports: flags[3],
            persist_through_power_loss: flags[4],
            type_mask_valid: flags[5],
            allow_commands: allow,
            persist_through_power_loss_active: flags[6],
            types,
        };
        prop_assert_eq!(prin::parse_capabilities(&c.encode()).unwrap(), c);
    }

    #[test]
    fn full_status_round_trip(regs in prop::collection::vec((any_key(), any::<bool>(), any::<bool>(), any_type(), any::<u16>(), any_tid()), 0..8)) {
        let mut body = Vec::new();
        for (key, holder, atp, rtype, rtp, tid) in &regs {
            let t = tid.encode();
            body.extend_from_slice(&key.to_bytes());
            body.extend_from_slice(&[0, 0, 0, 0, (u8::from(*atp) << 1) | u8::from(*holder)]);
            body.push(if *holder { rtype.code() } else { 0 });
            body.extend_from_slice(&[0, 0, 0, 0]);
            body.extend_from_slice(&rtp.to_be_bytes());
            body.extend_from_slice(&(t.len() as u32).to_be_bytes());
            body.extend(t);
        }
        let mut b = 5u32.to_be_bytes().to_vec();
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend(body);
        let fs = prin::parse_full_status(&b).unwrap();
        prop_assert_eq!(fs.registrations.len(), regs.len());
        for (r, (key, holder, atp, rtype, rtp, tid)) in fs.registrations.iter().zip(&regs) {
            prop_assert_eq!(r.key, *key);
            prop_assert_eq!(r.holder, *holder);
            prop_assert_eq!(r.all_target_ports, *atp);
            prop_assert_eq!(r.rtype, holder.then_some(*rtype));
            prop_assert_eq!(r.relative_target_port, *rtp);
            prop_assert_eq!(&r.transport_id, tid);
        }
    }

    #[test]
    fn sense_round_trips_in_both_formats(key in 0u8..16, asc in any::<u8>(), ascq in any::<u8>()) {
        let k = SenseKey::from_nibble(key);
        for raw in [Sense::fixed(k, asc, ascq), Sense::descriptor(k, asc, ascq)] {
            let s = Sense::parse(&raw).unwrap();
            prop_assert_eq!((s.key, s.asc, s.ascq), (k, asc, ascq));
        }
    }

    #[test]
    fn wwid_text_forms_round_trip(naa in prop::collection::vec(any::<u8>(), 16..=16), eui in prop::collection::vec(any::<u8>(), 8..=8)) {
        for w in [Wwid::Naa(naa.clone()), Wwid::Eui64(eui.clone())] {
            prop_assert_eq!(w.to_string().parse::<Wwid>().unwrap(), w.clone());
            prop_assert_eq!(w.multipath_form().parse::<Wwid>().unwrap(), w);
        }
    }

    #[test]
    fn device_parsers_never_panic(b in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = prin::parse_read_keys(&b);
        let _ = prin::parse_read_reservation(&b);
        let _ = prin::parse_capabilities(&b);
        let _ = prin::parse_full_status(&b);
        let _ = prin::reissue(&b, 512);
        let _ = inquiry::parse_standard(&b);
        let _ = inquiry::parse_supported_pages(&b);
        let _ = inquiry::parse_serial(&b);
        let _ = inquiry::parse_device_id(&b);
        let _ = Sense::parse(&b);
        let _ = TransportId::parse(&b);
        let _ = prout::parse_basic(&b);
        let _ = prout::parse_move(&b);
        if b.len() >= 10 {
            let _ = prout::parse(&b[..10], &b[10..]);
        }
    }

    #[test]
    fn vpd_pages_with_a_valid_header_and_random_body_never_panic(page in prop::sample::select(vec![0u8, 0x80, 0x83]), body in prop::collection::vec(any::<u8>(), 0..300), claim in any::<u16>()) {
        let mut b = vec![0, page];
        b.extend_from_slice(&claim.to_be_bytes());
        b.extend(body);
        let _ = inquiry::parse_device_id(&b);
        let _ = inquiry::parse_serial(&b);
        let _ = inquiry::parse_supported_pages(&b);
    }

    #[test]
    fn text_parsers_never_panic(s in "\\PC{0,40}") {
        let _ = s.parse::<Wwid>();
        let _ = s.parse::<ReservationKey>();
        let _ = s.parse::<ReservationType>();
        let _ = s.parse::<TransportId>();
    }
}
