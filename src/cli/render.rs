//! Text renderings of PR IN answers, shared by `pr` and `inspect`.

use std::fmt::Write;

use csi_fencer::scsi::{Capabilities, FullStatus, ReadKeys, ReadReservation, ReservationKey};

/// READ KEYS as lines: generation, then keys with how many nexuses carry each.
pub fn keys(k: &ReadKeys) -> String {
    let mut s = format!("PR generation 0x{:x}, ", k.generation);
    if k.keys.is_empty() {
        s.push_str("no registered keys");
        return s;
    }
    let _ = write!(s, "{} registration(s):", k.keys.len());
    for (key, n) in count_keys(&k.keys) {
        let _ = write!(
            s,
            "\n  {key}  ({n} I_T nexus{})",
            if n == 1 { "" } else { "es" }
        );
    }
    s
}

/// Distinct keys in first-seen order with their counts.
pub fn count_keys(keys: &[ReservationKey]) -> Vec<(ReservationKey, usize)> {
    let mut out: Vec<(ReservationKey, usize)> = Vec::new();
    for k in keys {
        match out.iter_mut().find(|(x, _)| x == k) {
            Some((_, n)) => *n += 1,
            None => out.push((*k, 1)),
        }
    }
    out
}

/// READ RESERVATION in one line.
pub fn reservation(r: &ReadReservation) -> String {
    match &r.reservation {
        None => format!("PR generation 0x{:x}, no reservation", r.generation),
        Some(res) if res.rtype.all_registrants() => format!(
            "PR generation 0x{:x}, reserved: {} (every registrant holds it), key field {}",
            r.generation, res.rtype, res.key
        ),
        Some(res) => format!(
            "PR generation 0x{:x}, reserved by key {}: {}",
            r.generation, res.key, res.rtype
        ),
    }
}

/// REPORT CAPABILITIES as a few lines.
pub fn capabilities(c: &Capabilities) -> String {
    let flag = |b: bool| if b { "yes" } else { "no" };
    let types = if c.type_mask_valid {
        c.types
            .iter()
            .map(|t| format!("{} ({})", t.short_name(), t.code()))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        "not reported (type mask not valid)".into()
    };
    format!(
        "replace lost reservation (RLR_C): {}\n\
         compatible reservation handling (CRH): {}\n\
         specify initiator ports (SIP_C): {}\n\
         all target ports (ATP_C): {}\n\
         persist through power loss (PTPL_C): {}, active (PTPL_A): {}\n\
         allow commands: {}\n\
         types: {}",
        flag(c.replace_lost_reservation),
        flag(c.compatible_reservation_handling),
        flag(c.specify_initiator_ports),
        flag(c.all_target_ports),
        flag(c.persist_through_power_loss),
        flag(c.persist_through_power_loss_active),
        c.allow_commands,
        types
    )
}

/// READ FULL STATUS: one line per registration.
pub fn full_status(f: &FullStatus) -> String {
    let mut s = format!(
        "PR generation 0x{:x}, {} registration(s)",
        f.generation,
        f.registrations.len()
    );
    for r in &f.registrations {
        let port = if r.all_target_ports {
            "all target ports".to_string()
        } else {
            format!("rel port {}", r.relative_target_port)
        };
        let holder = match r.rtype {
            Some(t) if r.holder => format!("  HOLDER {}", t.short_name()),
            _ => String::new(),
        };
        let _ = write!(s, "\n  {}  {port:<17} {}{holder}", r.key, r.transport_id);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_fencer::scsi::{Reservation, ReservationType, Scope};

    #[test]
    fn keys_are_grouped_by_nexus_count() {
        let k = ReadKeys {
            generation: 0x10,
            keys: vec![
                ReservationKey(0xa),
                ReservationKey(0xa),
                ReservationKey(0xb),
            ],
        };
        let s = keys(&k);
        assert!(
            s.starts_with("PR generation 0x10, 3 registration(s):"),
            "{s}"
        );
        assert!(s.contains("0x000000000000000a  (2 I_T nexuses)"), "{s}");
        assert!(s.contains("0x000000000000000b  (1 I_T nexus)"), "{s}");
    }

    #[test]
    fn reservation_lines() {
        let r = ReadReservation {
            generation: 2,
            reservation: Some(Reservation {
                key: ReservationKey(0xb),
                scope: Scope::LogicalUnit,
                rtype: ReservationType::WriteExclusiveRegistrantsOnly,
            }),
        };
        assert_eq!(
            reservation(&r),
            "PR generation 0x2, reserved by key 0x000000000000000b: write-exclusive-registrants-only (5)"
        );
    }
}
