//! The PR core against a real SCSI target: LIO over iSCSI in the VM rig, with
//! sg_persist (sg3_utils) as an independent cross-check.
//!
//! Run with `make test-vm` (all) or `make test-vm TEST=failover` (one).

// Linux only: SG_IO, sysfs and dm-multipath in the VM rig.
#![cfg(unix)]

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use csi_fencer::scsi::{ReservationType, TransportId, Wwid};
use csi_fencer::transport::sgio::SgIo;
use csi_fencer::transport::ScsiPath;

const VOL0: Lun = Lun("VOL0");
const SLOW: Lun = Lun("SLOW");
const NOPR: Lun = Lun("NOPR");
const T: Duration = Duration::from_secs(20);

fn p(path: &std::path::Path) -> &str {
    path.to_str().expect("device paths are UTF-8")
}

fn hex(k: csi_fencer::scsi::ReservationKey) -> String {
    format!("{:#x}", k.0)
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn every_pr_in_action_parses_real_lio_answers() {
    reset_lun(VOL0);
    let a1 = VOL0.sd("A1");
    fencer_ok(&["pr", p(&a1), "register-ignore", "--sa-key", &hex(key_a())]);
    fencer_ok(&[
        "pr",
        p(&a1),
        "reserve",
        "--key",
        &hex(key_a()),
        "--type",
        "we-ro",
    ]);
    for path in PATHS {
        let mut s = ScsiPath::new(&SgIo, VOL0.sd(path), T);
        let keys = s.read_keys().expect("READ KEYS");
        assert_eq!(keys.keys, vec![key_a()], "keys via {path}");
        let r = s.read_reservation().expect("READ RESERVATION");
        let res = r.reservation.expect("reserved");
        assert_eq!(
            (res.key, res.rtype),
            (key_a(), ReservationType::WriteExclusiveRegistrantsOnly)
        );
        assert_eq!(
            r.generation, keys.generation,
            "RESERVE does not bump the generation"
        );
        let caps = s.capabilities().expect("REPORT CAPABILITIES");
        assert!(caps.type_mask_valid && caps.types.len() == 6, "{caps:?}");
        let fs = s.full_status().expect("READ FULL STATUS");
        assert_eq!(fs.registrations.len(), 1);
        let reg = &fs.registrations[0];
        assert!(reg.holder);
        match &reg.transport_id {
            TransportId::Iscsi {
                name,
                isid: Some(isid),
            } => {
                assert_eq!(name, &env("RIG_NODE_A_INITIATOR"));
                assert_eq!(isid.len(), 12, "ISID is 6 bytes: {isid}");
            }
            other => panic!("expected an iSCSI port TransportID, got {other:?}"),
        }
    }
}

/// The value sg_persist prints after "(LABEL):" in --report-capabilities.
fn sg_cap(text: &str, label: &str) -> bool {
    let line = text
        .lines()
        .find(|l| l.contains(&format!("({label})")))
        .unwrap_or_else(|| panic!("sg_persist did not print {label}:\n{text}"));
    line.trim().ends_with('1')
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn report_capabilities_matches_sg_persist() {
    for path in PATHS {
        let dev = VOL0.sd(path);
        let (code, text) = sg_persist(&["--in", "--report-capabilities", p(&dev)]);
        assert_eq!(code, 0, "{text}");
        let v = fencer_ok(&["pr", p(&dev), "capabilities"]);
        let c = &v["paths"][0]["result"];
        for (label, field) in [
            ("RLR_C", "replace_lost_reservation"),
            ("CRH", "compatible_reservation_handling"),
            ("SIP_C", "specify_initiator_ports"),
            ("ATP_C", "all_target_ports"),
            ("PTPL_C", "persist_through_power_loss"),
            ("TMV", "type_mask_valid"),
            ("PTPL_A", "persist_through_power_loss_active"),
        ] {
            assert_eq!(
                c[field].as_bool(),
                Some(sg_cap(&text, label)),
                "{label} on {path}: {c:#}"
            );
        }
        let types = c["types"].as_array().expect("types").len();
        let sg_types = text
            .lines()
            .filter(|l| l.contains("Exclusive") && l.trim().ends_with(": 1"))
            .count();
        assert_eq!(types, sg_types, "supported types on {path}:\n{text}");
    }
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn keys_registered_by_csi_fencer_are_read_back_by_sg_persist_on_each_path() {
    for (i, path) in PATHS.iter().enumerate() {
        reset_lun(VOL0);
        let key = 0xc0ffee00 + i as u64;
        fencer_ok(&[
            "pr",
            p(&VOL0.sd(path)),
            "register",
            "--sa-key",
            &format!("{key:#x}"),
        ]);
        for other in PATHS {
            assert_eq!(
                sg_read_keys(&VOL0.sd(other)),
                vec![key],
                "registered via {path}, read via {other}"
            );
        }
        // The registration belongs to that path's I_T nexus: the initiator of its node.
        let (_, text) = sg_persist(&["--in", "--read-full-status", p(&VOL0.sd("B2"))]);
        let initiator = env(if path.starts_with('A') {
            "RIG_NODE_A_INITIATOR"
        } else {
            "RIG_NODE_B_INITIATOR"
        });
        assert!(
            text.contains(&initiator),
            "full status after registering via {path}:\n{text}"
        );
    }
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn keys_registered_by_sg_persist_are_read_back_by_csi_fencer_on_each_path() {
    for (i, path) in PATHS.iter().enumerate() {
        reset_lun(VOL0);
        let key = 0xbeef00 + i as u64;
        let (code, text) = sg_persist(&[
            "--out",
            "--register",
            "--param-sark",
            &format!("{key:#x}"),
            p(&VOL0.sd(path)),
        ]);
        assert_eq!(code, 0, "{text}");
        for other in PATHS {
            let v = fencer_ok(&["pr", p(&VOL0.sd(other)), "read-keys"]);
            let keys = v["paths"][0]["result"]["keys"]
                .as_array()
                .expect("keys")
                .clone();
            assert_eq!(
                keys,
                vec![serde_json::json!(format!("0x{key:016x}"))],
                "via {other}"
            );
        }
    }
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn failover_preempt_fences_node_a_on_every_path() {
    reset_lun(VOL0);
    let (ka, kb) = (hex(key_a()), hex(key_b()));
    let (dm_a, dm_b) = (VOL0.dm("A"), VOL0.dm("B"));
    // A registers through its map on both paths and reserves type 5.
    let v = fencer_ok(&[
        "pr",
        "--all-paths",
        p(&dm_a),
        "register-ignore",
        "--sa-key",
        &ka,
    ]);
    assert_eq!(v["paths"].as_array().map(Vec::len), Some(2), "{v:#}");
    fencer_ok(&["pr", p(&dm_a), "reserve", "--key", &ka, "--type", "5"]);
    // B registers on both of its paths: A's and B's writes both work now.
    fencer_ok(&[
        "pr",
        "--all-paths",
        p(&dm_b),
        "register-ignore",
        "--sa-key",
        &kb,
    ]);
    assert_eq!(sg_read_keys(&VOL0.sd("B1")).len(), 4);
    direct_write(&dm_a, 0, 4096, 0xaa).expect("A writes while it holds the reservation");
    direct_write(&dm_b, 4096, 4096, 0xbb).expect("B (registrant) writes under type 5");

    // B preempts A.
    fencer_ok(&[
        "pr",
        p(&VOL0.sd("B1")),
        "preempt",
        "--key",
        &kb,
        "--sa-key",
        &ka,
        "--type",
        "we-ro",
    ]);
    let v = fencer_ok(&["pr", p(&VOL0.sd("B2")), "read-reservation"]);
    assert_eq!(
        s(&v, "/paths/0/result/reservation/key"),
        format!("0x{:016x}", key_b().0)
    );
    assert_eq!(sg_read_keys(&VOL0.sd("B2")), vec![key_b().0, key_b().0]);

    // A's next command on each path sees UNIT ATTENTION 2A/05, by name.
    for path in ["A1", "A2"] {
        let v = fencer_ok(&["pr", p(&VOL0.sg(path)), "read-keys"]);
        let ua = &v["paths"][0]["unit_attentions"][0];
        assert_eq!(ua["key"], "UNIT ATTENTION", "{path}: {v:#}");
        assert_eq!(
            (ua["asc"].as_u64(), ua["ascq"].as_u64()),
            (Some(0x2a), Some(0x05)),
            "{path}: {v:#}"
        );
        assert_eq!(ua["description"], "registrations preempted");
        let text = String::from_utf8_lossy(&fencer(&["pr", p(&VOL0.sd(path)), "read-keys"]).stdout)
            .into_owned();
        assert!(
            !text.contains("UNIT ATTENTION"),
            "the UA is consumed once: {text}"
        );
    }
    // A's writes fail, through its map and through a path; B's succeed.
    assert_conflict(direct_write(&dm_a, 0, 4096, 0xa1), "A via its dm map");
    assert_conflict(direct_write(&VOL0.sd("A2"), 0, 4096, 0xa2), "A via path A2");
    direct_write(&dm_b, 0, 4096, 0xb1).expect("B holds the reservation now");
    // A PR OUT from A with its old key is refused too.
    let (code, v) = fencer_json(&[
        "pr",
        p(&VOL0.sd("A1")),
        "register",
        "--key",
        &ka,
        "--sa-key",
        &ka,
    ]);
    assert_eq!(code, 24, "{v:#}");
    assert_eq!(s(&v, "/paths/0/error/kind"), "reservation_conflict");
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn vpd83_is_identical_through_every_path_and_both_maps() {
    let expect: Wwid = VOL0.wwid().parse().expect("rig WWID parses");
    let mut devs = VOL0.all_sd();
    devs.push(VOL0.dm("A"));
    devs.push(VOL0.dm("B"));
    let mut ports = Vec::new();
    for d in &devs {
        let ds = ScsiPath::new(&SgIo, d, T).device_id().expect("VPD 83h");
        assert_eq!(
            Wwid::from_designations(&ds).as_ref(),
            Some(&expect),
            "{}",
            d.display()
        );
        ports.push(ds.iter().find_map(|x| match x.designator {
            csi_fencer::scsi::Designator::RelativeTargetPort { port } => Some(port),
            _ => None,
        }));
    }
    // Two TPGs: A1/B1 share one relative port, A2/B2 the other.
    assert_eq!(ports[0], ports[2]);
    assert_eq!(ports[1], ports[3]);
    assert_ne!(ports[0], ports[1]);
    // inspect agrees: every path of A's map matches, WWID as the rig wrote it.
    let v = fencer_ok(&["inspect", p(&VOL0.dm("A"))]);
    assert_eq!(s(&v, "/wwid"), VOL0.wwid());
    let paths = v["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2);
    assert!(paths.iter().all(|x| x["identity_matches"] == true), "{v:#}");
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn lun_without_pr_support_is_reported_clearly() {
    let dev = NOPR.sd("A1");
    let (code, v) = fencer_json(&["pr", p(&dev), "read-keys"]);
    assert_eq!(code, 9, "{v:#}");
    assert_eq!(s(&v, "/paths/0/error/kind"), "unsupported");
    assert!(
        s(&v, "/paths/0/error/message").contains("persistent reservations not supported"),
        "{v:#}"
    );
    let (code, v) = fencer_json(&["pr", p(&dev), "register-ignore", "--sa-key", "0xa"]);
    assert_eq!(code, 9, "{v:#}");
    let out = fencer(&["pr", p(&dev), "read-reservation"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(p(&dev)) && err.contains("not supported"),
        "{err}"
    );
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn missing_and_non_scsi_devices_give_clear_errors() {
    let (code, v) = fencer_json(&["pr", "/dev/sdzz", "read-keys"]);
    assert_eq!(code, 15, "{v:#}");
    assert!(
        s(&v, "/error").contains("/dev/sdzz: no such device"),
        "{v:#}"
    );
    for dev in ["/dev/null", "/dev/ram0"] {
        let (code, v) = fencer_json(&["pr", dev, "read-keys"]);
        assert_eq!(code, 15, "{dev}: {v:#}");
        let msg = v.to_string();
        assert!(msg.contains("not a SCSI device"), "{dev}: {msg}");
    }
    let (code, v) = fencer_json(&["inspect", "/dev/ram0"]);
    assert_eq!(code, 15, "{v:#}");
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn registering_through_a_map_needs_all_paths_and_changes_nothing_without() {
    reset_lun(VOL0);
    let out = fencer(&["pr", p(&VOL0.dm("A")), "register-ignore", "--sa-key", "0xa"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--all-paths") && err.contains("multipath map"),
        "{err}"
    );
    assert!(
        sg_read_keys(&VOL0.sd("A1")).is_empty(),
        "a refused command registered something"
    );
    // Unregister on every path with REGISTER --sa-key 0.
    let ka = hex(key_a());
    fencer_ok(&[
        "pr",
        "--all-paths",
        p(&VOL0.dm("A")),
        "register-ignore",
        "--sa-key",
        &ka,
    ]);
    assert_eq!(sg_read_keys(&VOL0.sd("B1")).len(), 2);
    fencer_ok(&[
        "pr",
        "--all-paths",
        p(&VOL0.dm("A")),
        "register",
        "--key",
        &ka,
        "--sa-key",
        "0",
    ]);
    assert!(sg_read_keys(&VOL0.sd("B1")).is_empty());
}

/// A writer that keeps O_DIRECT writes of `fill` going until one fails.
fn writer(
    dev: PathBuf,
    offset: u64,
    fill: u8,
) -> thread::JoinHandle<(usize, Option<i32>, Instant)> {
    thread::spawn(move || {
        let mut ok = 0;
        loop {
            match direct_write(&dev, offset, 65536, fill) {
                Ok(()) => ok += 1,
                Err(e) => return (ok, e.raw_os_error(), Instant::now()),
            }
            if ok > 400 {
                return (ok, None, Instant::now());
            }
        }
    })
}

#[test]
#[ignore = "runs in the VM rig: make test-vm"]
fn preempt_and_abort_aborts_the_victims_queued_writes_over_iscsi() {
    reset_lun(SLOW);
    let (ka, kb) = (hex(key_a()), hex(key_b()));
    fencer_ok(&[
        "pr",
        "--all-paths",
        p(&SLOW.dm("A")),
        "register-ignore",
        "--sa-key",
        &ka,
    ]);
    fencer_ok(&[
        "pr",
        p(&SLOW.dm("A")),
        "reserve",
        "--key",
        &ka,
        "--type",
        "we-ro",
    ]);
    fencer_ok(&[
        "pr",
        "--all-paths",
        p(&SLOW.dm("B")),
        "register-ignore",
        "--sa-key",
        &kb,
    ]);
    // A keeps writes in flight on its first path: each one sits 200 ms in dm-delay.
    let a1 = SLOW.sd("A1");
    let writers: Vec<_> = (0..4)
        .map(|i| writer(a1.clone(), i * 65536, 0xaa))
        .collect();
    let sd_name = a1
        .file_name()
        .and_then(|n| n.to_str())
        .expect("sd name")
        .to_string();
    // Sample until the writers have I/O queued (each write sits 200 ms in dm-delay).
    let in_flight = || -> (u64, String) {
        let text =
            std::fs::read_to_string(format!("/sys/block/{sd_name}/inflight")).unwrap_or_default();
        let w = text
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        (w, text)
    };
    let t0 = Instant::now();
    let (mut writes_in_flight, mut inflight) = in_flight();
    while writes_in_flight == 0 && t0.elapsed() < Duration::from_secs(5) {
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "a writer of A ended before the preempt"
        );
        thread::sleep(Duration::from_millis(50));
        (writes_in_flight, inflight) = in_flight();
    }
    assert!(
        writes_in_flight > 0,
        "A should have writes in flight before the preempt: {inflight}"
    );

    fencer_ok(&[
        "pr",
        p(&SLOW.sd("B1")),
        "preempt-abort",
        "--key",
        &kb,
        "--sa-key",
        &ka,
        "--type",
        "5",
    ]);
    // B writes its pattern over everything A was writing, right after fencing.
    direct_write(&SLOW.sd("B1"), 0, 4 * 65536, 0xbb).expect("B writes after fencing A");
    for w in writers {
        let (_, errno, _) = w.join().expect("writer thread");
        assert!(
            matches!(errno, Some(e) if e == EBADE || e == nix::libc::EIO),
            "A's writer ended with {errno:?}, expected EBADE/EIO"
        );
    }
    let data = direct_read(&SLOW.sd("B2"), 0, 4 * 65536).expect("read back");
    let stray = data.iter().filter(|&&b| b != 0xbb).count();
    assert_eq!(
        stray, 0,
        "{stray} bytes of A's writes landed after B's fence returned"
    );
    assert_eq!(sg_read_keys(&SLOW.sd("B1")), vec![key_b().0, key_b().0]);
}
