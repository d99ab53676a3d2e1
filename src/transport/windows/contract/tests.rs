use std::mem::{offset_of, size_of};

use windows_sys::Win32::System::Ioctl::{
    StorageDeviceIdProperty, PERSISTENT_RESERVE_COMMAND, PERSISTENT_RESERVE_COMMAND_0_0,
    PERSISTENT_RESERVE_COMMAND_0_1, STORAGE_DEVICE_ID_DESCRIPTOR, STORAGE_IDENTIFIER,
    STORAGE_PROPERTY_QUERY,
};

use super::*;
use crate::scsi::{inquiry, prin, BasicParams, PrOut, ReservationKey, ReservationType};

/// The offsets this module writes at, against Microsoft's own definitions
/// of the structures (windows-sys, generated from the Windows metadata).
#[test]
fn the_layouts_are_the_documented_structures() {
    assert_eq!(size_of::<PERSISTENT_RESERVE_COMMAND>(), COMMAND_SIZE);
    let union_at = offset_of!(PERSISTENT_RESERVE_COMMAND, Anonymous);
    assert_eq!(union_at, 8);
    assert_eq!(
        union_at + offset_of!(PERSISTENT_RESERVE_COMMAND_0_0, AllocationLength),
        PARAMETER_LIST_OFFSET
    );
    assert_eq!(
        union_at + offset_of!(PERSISTENT_RESERVE_COMMAND_0_1, ParameterList),
        PARAMETER_LIST_OFFSET
    );
    assert_eq!(
        union_at + offset_of!(PERSISTENT_RESERVE_COMMAND_0_1, _bitfield2),
        9
    );
    assert_eq!(size_of::<STORAGE_PROPERTY_QUERY>(), PROPERTY_QUERY_SIZE);
    assert_eq!(StorageDeviceIdProperty, STORAGE_DEVICE_ID_PROPERTY);
    assert_eq!(
        size_of::<STORAGE_DEVICE_ID_DESCRIPTOR>(),
        DEVICE_ID_DESCRIPTOR_SIZE
    );
    assert_eq!(
        offset_of!(STORAGE_DEVICE_ID_DESCRIPTOR, Identifiers),
        IDENTIFIERS_OFFSET
    );
    assert_eq!(offset_of!(STORAGE_IDENTIFIER, Type), 4);
    assert_eq!(offset_of!(STORAGE_IDENTIFIER, IdentifierSize), 8);
    assert_eq!(offset_of!(STORAGE_IDENTIFIER, NextOffset), 10);
    assert_eq!(offset_of!(STORAGE_IDENTIFIER, Association), 12);
    assert_eq!(
        offset_of!(STORAGE_IDENTIFIER, Identifier),
        IDENTIFIER_OFFSET
    );
}

fn key(k: u64) -> ReservationKey {
    ReservationKey(k)
}

fn request_of(p: PrOut) -> Result<Request, NotExpressible> {
    use crate::scsi::DataTransfer;
    let c = p.command();
    let out = match &c.data {
        DataTransfer::ToDevice(d) => Some(d.clone()),
        _ => None,
    };
    request(c.cdb.as_bytes(), out.as_deref())
}

#[test]
fn a_register_is_the_documented_bytes() {
    let Ok(Request::PrOut(r)) = request_of(PrOut::Register(BasicParams {
        key: key(0x0102_0304_0506_0708),
        sa_key: key(0x1112_1314_1516_1718),
        ..Default::default()
    })) else {
        panic!("REGISTER is carried");
    };
    let b = encode_pr_out(&r);
    let mut want = vec![12, 0, 0, 0, 36, 0, 0, 0, 0x00, 0x00];
    want.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    want.extend([0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
    want.extend([0; 8]); // scope-specific address, APTPL byte, reserved, obsolete
    want.extend([0; 2]); // the rest of the 36 bytes
    assert_eq!(b, want);
    assert_eq!(b.len(), PR_OUT_BUFFER_LEN);
}

#[test]
fn a_preempt_carries_type_and_scope_and_a_pr_in_its_allocation_length() {
    let Ok(Request::PrOut(r)) = request_of(PrOut::Preempt {
        key: key(1),
        victim: key(2),
        rtype: ReservationType::WriteExclusiveRegistrantsOnly,
        abort: true,
    }) else {
        panic!("PREEMPT AND ABORT is carried");
    };
    let b = encode_pr_out(&r);
    assert_eq!(b[8], 5, "PREEMPT AND ABORT");
    assert_eq!(
        b[9], 0x05,
        "scope LU (0) in the high nibble, type 5 in the low"
    );
    let c = prin::command(PrInAction::ReadKeys, 0x1234);
    let Ok(Request::PrIn(r)) = request(c.cdb.as_bytes(), None) else {
        panic!("READ KEYS is carried");
    };
    assert_eq!(
        encode_pr_in(&r),
        vec![12, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0x34, 0x12]
    );
}

#[test]
fn every_carried_command_decodes_as_the_class_driver_reads_it() {
    for action in [PrInAction::ReadKeys, PrInAction::ReadReservation] {
        let r = PrInRequest {
            action,
            allocation: 512,
        };
        assert_eq!(decode_pr_in(&encode_pr_in(&r), 512), Ok(r));
    }
    for (action, rtype) in [
        (PrOutAction::Register, 0),
        (PrOutAction::Reserve, 5),
        (PrOutAction::Release, 1),
        (PrOutAction::Clear, 0),
        (PrOutAction::Preempt, 3),
        (PrOutAction::PreemptAndAbort, 6),
        (PrOutAction::RegisterAndIgnoreExistingKey, 0),
    ] {
        let mut list = [0u8; PARAMETER_LIST_LEN];
        list[7] = 9;
        list[20] = 1; // APTPL
        let r = PrOutRequest {
            action,
            rtype,
            scope: 0,
            list,
        };
        assert_eq!(decode_pr_out(&encode_pr_out(&r)), Ok(r), "{action:?}");
    }
}

#[test]
fn the_class_driver_refuses_what_it_documents() {
    let good = encode_pr_out(&PrOutRequest {
        action: PrOutAction::Reserve,
        rtype: 5,
        scope: 0,
        list: [0; PARAMETER_LIST_LEN],
    });
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        decode_pr_out(&b)
    };
    assert_eq!(with(&|b| b.truncate(11)), Err(Malformed::Length));
    assert_eq!(with(&|b| b[4] = 11), Err(Malformed::Length), "Size < 12");
    assert_eq!(
        with(&|b| b.truncate(34)),
        Err(Malformed::Parameter),
        "list cut"
    );
    assert_eq!(
        with(&|b| b[4] = 35),
        Err(Malformed::Parameter),
        "Size < length"
    );
    assert_eq!(
        with(&|b| b[8] = 7),
        Err(Malformed::Parameter),
        "REGISTER AND MOVE"
    );
    assert_eq!(
        with(&|b| b[9] = 7),
        Err(Malformed::Parameter),
        "WE all registrants"
    );
    assert_eq!(with(&|b| b[9] = 0x15), Err(Malformed::Parameter), "scope 1");
    assert!(with(&|b| b[0] = 99).is_ok(), "Version is not checked");
    let rk = encode_pr_in(&PrInRequest {
        action: PrInAction::ReadKeys,
        allocation: 8,
    });
    assert!(decode_pr_in(&rk, 8).is_ok());
    assert_eq!(
        decode_pr_in(&rk, 7),
        Err(Malformed::Parameter),
        "output < allocation"
    );
    let mut rc = rk.clone();
    rc[8] = 2;
    assert_eq!(
        decode_pr_in(&rc, 8),
        Err(Malformed::Parameter),
        "REPORT CAPABILITIES"
    );
    let mut small = rk;
    small[10] = 7;
    assert_eq!(
        decode_pr_in(&small, 8),
        Err(Malformed::Parameter),
        "allocation < 8"
    );
}

#[test]
fn what_the_ioctls_cannot_carry_is_refused_before_anything_is_sent() {
    let not = |r: Result<Request, NotExpressible>| match r {
        Err(NotExpressible(why)) => why,
        Ok(r) => panic!("carried: {r:?}"),
    };
    let rc = prin::command(PrInAction::ReportCapabilities, 8);
    assert!(not(request(rc.cdb.as_bytes(), None)).contains("READ KEYS and READ RESERVATION only"));
    let rfs = prin::command(PrInAction::ReadFullStatus, 8192);
    assert!(not(request(rfs.cdb.as_bytes(), None)).contains("only"));
    let all_tg_pt = PrOut::Register(BasicParams {
        sa_key: key(1),
        all_tg_pt: true,
        ..Default::default()
    });
    assert!(not(request_of(all_tg_pt)).contains("ALL_TG_PT"));
    let wear = PrOut::Reserve {
        key: key(1),
        rtype: ReservationType::WriteExclusiveAllRegistrants,
    };
    assert!(not(request_of(wear)).contains("all-registrants"));
    let tur = crate::scsi::cdb::test_unit_ready();
    assert!(not(request(tur.cdb.as_bytes(), None)).contains("no pass-through"));
    let std_inquiry = inquiry::standard_command(96);
    assert!(not(request(std_inquiry.cdb.as_bytes(), None)).contains("VPD 83h"));
    let vpd = inquiry::vpd_command(inquiry::page::DEVICE_ID, 300);
    assert_eq!(
        request(vpd.cdb.as_bytes(), None),
        Ok(Request::DeviceId(300))
    );
}

/// A VPD 83h page as LIO sends it: NAA, T10 vendor ID, relative port.
fn page() -> Vec<u8> {
    let mut d = vec![0x01, 0x03, 0x00, 0x10];
    d.extend([
        0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0x51, 1, 2, 3, 4, 5, 6, 7, 8,
    ]);
    d.extend([0x02, 0x01, 0x00, 0x0a]);
    d.extend(b"LIO-ORG ab");
    d.extend([0x61, 0x94, 0x00, 0x04, 0, 0, 0, 2]);
    let mut p = vec![0x00, 0x83, 0x00, d.len() as u8];
    p.extend(d);
    p
}

#[test]
fn the_identity_windows_gives_is_the_vpd_page_it_was_read_from() {
    let desc = device_id_from_vpd83(&page());
    // Three identifiers, each 4-byte aligned, NextOffset from its start.
    assert_eq!(u32::from_le_bytes(desc[8..12].try_into().unwrap()), 3);
    assert_eq!(u16::from_le_bytes([desc[12 + 10], desc[12 + 11]]), 32);
    let back = vpd83_from_device_id(&desc).unwrap();
    // PROTOCOL IDENTIFIER and PIV are not in STORAGE_IDENTIFIER: clear them.
    let mut want = page();
    want[4 + 16 + 4 + 4 + 10] &= 0x0f;
    want[4 + 16 + 4 + 4 + 10 + 1] &= 0x7f;
    assert_eq!(back, want);
    let ds = inquiry::parse_device_id(&back).unwrap();
    assert_eq!(
        crate::scsi::Wwid::from_designations(&ds).map(|w| w.to_string()),
        Some("naa.60014050000000510102030405060708".into())
    );
}

#[test]
fn a_malformed_identity_is_an_error_that_says_where() {
    let desc = device_id_from_vpd83(&page());
    let err = |b: &[u8]| vpd83_from_device_id(b).unwrap_err().to_string();
    assert!(
        err(&desc[..6]).contains("ends before offset 8"),
        "{}",
        err(&desc[..6])
    );
    let mut many = desc.clone();
    many[8] = 9;
    assert!(err(&many).contains("identifier 3"), "{}", err(&many));
    let mut long = desc.clone();
    long[12 + 8] = 200;
    assert!(err(&long).contains("past the end"), "{}", err(&long));
    let mut inside = desc;
    inside[12 + 10] = 4;
    assert!(err(&inside).contains("falls inside it"), "{}", err(&inside));
}

proptest::proptest! {
    #[test]
    fn no_descriptor_makes_the_decoder_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = vpd83_from_device_id(&b);
        let _ = decode_pr_in(&b, 512);
        let _ = decode_pr_out(&b);
    }
}
