use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

const DRIVER: &str = "block.csi.example.com";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// Now, in every test.
const NOW: u64 = 1000;

fn node(name: &str, renewed_ago: u64) -> Node {
    Node {
        name: name.into(),
        ready: Ready::True,
        renewed: Some(t(NOW - renewed_ago)),
        cordoned: false,
        out_of_service: false,
        tainted_by_us: None,
        volumes_in_use: Vec::new(),
    }
}

fn att(name: &str, node: &str, pv: &str) -> Attachment {
    Attachment {
        name: name.into(),
        node: node.into(),
        driver: DRIVER.into(),
        pv: Some(pv.into()),
        created: Some(t(100)),
    }
}

fn report(c: &mut Cluster, pv: &str, node: &str, phase: Phase, message: &str) {
    c.reports.entry(pv.into()).or_default().insert(
        node.into(),
        Report {
            phase,
            message: message.into(),
        },
    );
}

fn settings() -> Settings {
    Settings::new([DRIVER.to_string()])
}

/// node-a dead for 40 s holding pv-1; node-b and node-c alive.
fn cluster() -> Cluster {
    let mut c = Cluster {
        nodes: vec![node("node-a", 40), node("node-b", 3), node("node-c", 5)],
        attachments: vec![
            att("csi-1", "node-a", "pv-1"),
            att("csi-2", "node-b", "pv-2"),
        ],
        reports: BTreeMap::new(),
    };
    report(&mut c, "pv-1", "node-a", Phase::Held, "");
    report(&mut c, "pv-2", "node-b", Phase::Held, "");
    c
}

fn run(c: &Cluster) -> Judgement {
    judge(c, &settings(), t(NOW))
}

fn refusal(c: &Cluster, node: &str) -> Option<Refusal> {
    run(c)
        .refusals
        .into_iter()
        .find(|(n, _)| n == node)
        .map(|(_, r)| r)
}

#[test]
fn a_dead_node_whose_volumes_are_all_fenced_is_tainted() {
    let j = run(&cluster());
    assert_eq!(j.dead, vec!["node-a".to_string()]);
    assert_eq!(
        j.actions,
        vec![Action::Taint {
            node: "node-a".into(),
            silent_for: Duration::from_secs(40),
            volumes: vec!["pv-1".into()],
        }]
    );
    assert!(j.refusals.is_empty(), "{:?}", j.refusals);
}

#[test]
fn within_the_grace_or_without_a_lease_a_node_is_not_dead() {
    let mut c = cluster();
    c.nodes[0].renewed = Some(t(NOW - 24));
    assert_eq!(run(&c), Judgement::default());
    c.nodes[0].renewed = Some(t(NOW - 25));
    assert_eq!(run(&c).dead, vec!["node-a".to_string()]);
    c.nodes[0].renewed = None;
    assert_eq!(run(&c), Judgement::default());
    // A renewal "in the future" (clock skew) is not silence.
    c.nodes[0].renewed = Some(t(NOW + 30));
    assert_eq!(run(&c), Judgement::default());
}

#[test]
fn a_dead_node_without_attachments_is_tainted_too() {
    let mut c = cluster();
    c.attachments.retain(|a| a.node != "node-a");
    assert!(matches!(&run(&c).actions[..], [Action::Taint { volumes, .. }] if volumes.is_empty()));
}

#[test]
fn a_registration_or_a_fence_protects_as_a_reservation_does() {
    for phase in [Phase::Registered, Phase::Fenced] {
        let mut c = cluster();
        report(&mut c, "pv-1", "node-a", phase.clone(), "");
        assert_eq!(run(&c).actions.len(), 1, "{phase:?}");
    }
}

#[test]
fn every_unprotected_case_is_refused_with_the_volume_and_why() {
    type Case = (&'static str, fn(&mut Cluster), &'static str, &'static str);
    let cases: &[Case] = &[
        (
            "graceful shutdown",
            |c| c.nodes[0].ready = Ready::NotReady { shutting_down: true },
            "shutting-down",
            "graceful shutdown",
        ),
        (
            "cordoned",
            |c| c.nodes[0].cordoned = true,
            "cordoned",
            "cordoned",
        ),
        (
            "another driver",
            |c| c.attachments[0].driver = "nfs.csi.k8s.io".into(),
            "unfenced-driver",
            "VolumeAttachment csi-1 is of driver nfs.csi.k8s.io, which csi-fencer does not fence",
        ),
        (
            "inline volume",
            |c| c.attachments[0].pv = None,
            "unprotected-volume",
            "VolumeAttachment csi-1 is not fenced: an inline volume has no VolumeReservation",
        ),
        (
            "no report",
            |c| c.reports.clear(),
            "unprotected-volume",
            "volume pv-1 (VolumeAttachment csi-1) is not fenced: the node never reported on its LUN",
        ),
        (
            "a report of another node only",
            |c| {
                c.reports.clear();
                report(c, "pv-1", "node-b", Phase::Held, "");
            },
            "unprotected-volume",
            "the node never reported on its LUN",
        ),
        (
            "error",
            |c| report(c, "pv-1", "node-a", Phase::Error, "persistent reservations not supported"),
            "unprotected-volume",
            "volume pv-1 (VolumeAttachment csi-1) is not fenced: the node's last report is error: persistent reservations not supported",
        ),
        (
            "pending",
            |c| report(c, "pv-1", "node-a", Phase::Pending, ""),
            "unprotected-volume",
            "the node's last report is pending",
        ),
        (
            "released",
            |c| report(c, "pv-1", "node-a", Phase::Released, ""),
            "unprotected-volume",
            "the node's last report is released",
        ),
    ];
    for (name, change, reason, words) in cases {
        let mut c = cluster();
        change(&mut c);
        let j = run(&c);
        assert!(j.actions.is_empty(), "{name}: {:?}", j.actions);
        let r = refusal(&c, "node-a").unwrap_or_else(|| panic!("{name}: no refusal"));
        assert_eq!(r.reason(), *reason, "{name}");
        assert!(r.to_string().contains(words), "{name}: {r}");
    }
}

#[test]
fn one_bad_volume_among_good_ones_refuses_the_node() {
    let mut c = cluster();
    c.attachments.push(att("csi-3", "node-a", "pv-3"));
    report(
        &mut c,
        "pv-3",
        "node-a",
        Phase::Error,
        "no device for WWID naa.x",
    );
    let r = refusal(&c, "node-a").expect("refused");
    assert!(r.to_string().contains("pv-3"), "{r}");
}

#[test]
fn an_ignored_driver_does_not_stop_the_taint() {
    let mut c = cluster();
    c.attachments[0].driver = "local.csi.example.com".into();
    let mut s = settings();
    s.ignored_drivers = BTreeSet::from(["local.csi.example.com".to_string()]);
    let j = judge(&c, &s, t(NOW));
    assert!(matches!(&j.actions[..], [Action::Taint { volumes, .. }] if volumes.is_empty()));
}

#[test]
fn more_than_the_unhealthy_share_dead_is_a_partition_not_a_death() {
    let mut c = cluster();
    c.nodes[1].renewed = Some(t(NOW - 60));
    report(&mut c, "pv-2", "node-b", Phase::Held, "");
    let j = run(&c);
    assert!(j.actions.is_empty(), "{:?}", j.actions);
    assert_eq!(j.refusals.len(), 2);
    for (_, r) in &j.refusals {
        assert_eq!(
            *r,
            Refusal::TooManyUnhealthy {
                dead: 2,
                total: 3,
                max_percent: 50
            }
        );
        assert!(r.to_string().contains("2 of 3 nodes look dead"), "{r}");
    }
    // One of two is exactly half: allowed.
    c.nodes.remove(2);
    c.nodes[1].renewed = Some(t(NOW));
    assert_eq!(run(&c).actions.len(), 1);
}

#[test]
fn at_most_max_concurrent_nodes_carry_the_taint() {
    let mut c = Cluster::default();
    for i in 0..8 {
        c.nodes
            .push(node(&format!("n{i}"), if i < 3 { 60 } else { 1 }));
    }
    let mut s = settings();
    s.max_concurrent = 2;
    // n0 carries our taint already: one more may be tainted now.
    c.nodes[0].tainted_by_us = Some(t(NOW - 30));
    c.nodes[0].out_of_service = true;
    let j = judge(&c, &s, t(NOW));
    assert!(matches!(&j.actions[..], [Action::Taint { node, .. }] if node == "n1"));
    assert_eq!(
        j.refusals,
        vec![(
            "n2".to_string(),
            Refusal::TooManyTainted { tainted: 2, max: 2 }
        )]
    );
}

#[test]
fn a_taint_applied_by_someone_else_is_left_alone() {
    let mut c = cluster();
    c.nodes[0].out_of_service = true;
    assert_eq!(run(&c).actions, vec![]);
    assert!(run(&c).sweep.is_empty(), "not ours: pod GC's business");
    c.nodes[0].renewed = Some(t(NOW));
    assert_eq!(run(&c).actions, vec![], "never untainted: not ours");
}

#[test]
fn a_tainted_node_stays_tainted_until_it_is_back_and_its_old_attachments_are_gone() {
    let mut c = cluster();
    let tainted = t(NOW - 100);
    c.nodes[0].tainted_by_us = Some(tainted);
    c.nodes[0].out_of_service = true;
    // Still dead: nothing to do, and no second taint; its pods may go.
    assert_eq!(run(&c).actions, vec![]);
    assert_eq!(run(&c).sweep, vec!["node-a".to_string()]);
    // Back, but Ready not yet: its pods stay.
    c.nodes[0].renewed = Some(t(NOW - 2));
    c.nodes[0].ready = Ready::NotReady {
        shutting_down: false,
    };
    assert_eq!(run(&c).actions, vec![]);
    assert!(run(&c).sweep.is_empty());
    // Ready, but an attachment from before the taint is still there.
    c.nodes[0].ready = Ready::True;
    assert_eq!(run(&c).actions, vec![]);
    // That attachment gone, a new one made after the taint: untainted.
    c.attachments[0].created = Some(t(NOW - 50));
    let untaint = vec![Action::Untaint {
        node: "node-a".into(),
    }];
    assert_eq!(run(&c).actions, untaint);
    // An attachment of unknown age counts as old.
    c.attachments[0].created = None;
    assert_eq!(run(&c).actions, vec![]);
    c.attachments.retain(|a| a.node != "node-a");
    assert_eq!(run(&c).actions, untaint);
}

#[test]
fn the_judgement_depends_on_the_cluster_alone() {
    // What a new leader sees is what the old one saw: same decisions.
    let c = cluster();
    assert_eq!(run(&c), run(&c.clone()));
    let mut shuffled = c.clone();
    shuffled.nodes.reverse();
    shuffled.attachments.reverse();
    assert_eq!(run(&c), run(&shuffled));
}

#[test]
fn the_taint_reason_names_the_silence_and_the_volumes() {
    assert_eq!(
        taint_reason(
            &Duration::from_millis(31_400),
            &["pv-1".into(), "pv-2".into()]
        ),
        "kubelet Lease not renewed for 31 s; fenced volumes: pv-1, pv-2"
    );
    assert_eq!(
        taint_reason(&Duration::from_secs(40), &[]),
        "kubelet Lease not renewed for 40 s; no attached volume"
    );
}

#[test]
fn a_volume_in_use_without_a_fenced_attachment_refuses_the_taint() {
    let csi = |d: &str, h: &str| format!("kubernetes.io/csi/{d}^{h}");
    // The volume of its attachment: accounted for.
    let mut c = cluster();
    c.nodes[0].volumes_in_use = vec![csi(DRIVER, "3600a")];
    assert_eq!(run(&c).actions.len(), 1);
    // Two in use, one attachment: the second has none (a driver that needs
    // no attach).
    c.nodes[0].volumes_in_use.push(csi(DRIVER, "3600b"));
    let r = refusal(&c, "node-a").expect("refused");
    assert_eq!(r.reason(), "unattached-volume");
    assert!(r.to_string().contains("3600b"), "{r}");
    // An in-tree iSCSI volume, a volume of a driver that is not fenced.
    for v in [
        "kubernetes.io/iscsi/10.0.0.1:3260:iqn.x:lun-0".to_string(),
        csi("nfs.csi.k8s.io", "x"),
    ] {
        let mut c = cluster();
        c.nodes[0].volumes_in_use = vec![v.clone()];
        let r = refusal(&c, "node-a").expect("refused");
        assert!(r.to_string().contains(&v), "{r}");
    }
    // An ignored driver's volume needs nothing.
    let mut c = cluster();
    c.nodes[0].volumes_in_use = vec![csi("local.csi.example.com", "x")];
    let mut s = settings();
    s.ignored_drivers = BTreeSet::from(["local.csi.example.com".to_string()]);
    assert_eq!(judge(&c, &s, t(NOW)).actions.len(), 1);
}
