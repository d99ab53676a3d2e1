//! Strings of the watch cache, packed. With 100 000 VolumeAttachments the
//! cache holds 400 000 short strings whose shapes are known: UIDs are UUIDs,
//! names are `csi-<sha256 hex>`, PVs `pvc-<uuid>`, resourceVersions numbers.
//! Kept as bytes inline they need no heap block each; anything else is kept
//! as it came.

use std::fmt;

/// A string of the cache, in its most compact exact form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Packed {
    /// `<uuid>`, lowercase.
    Uuid([u8; 16]),
    /// `<prefix><uuid>` with a 4-byte prefix such as `pvc-`.
    PrefixedUuid([u8; 4], [u8; 16]),
    /// `csi-<64 lowercase hex>`: a CSI VolumeAttachment name.
    CsiName([u8; 32]),
    /// A decimal number without leading zeros.
    Number(u64),
    /// Anything else.
    Text(Box<str>),
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

fn uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let digits: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    hex_bytes::<16>(&digits)
}

impl Packed {
    /// Packs `s`; [`Packed::to_string`] gives it back exactly.
    pub fn new(s: &str) -> Packed {
        if let Some(u) = uuid(s) {
            return Packed::Uuid(u);
        }
        if s.len() == 40 && s.is_char_boundary(4) {
            if let (Ok(p), Some(u)) = (<[u8; 4]>::try_from(&s.as_bytes()[..4]), uuid(&s[4..])) {
                return Packed::PrefixedUuid(p, u);
            }
        }
        if let Some(h) = s
            .strip_prefix("csi-")
            .and_then(|h| hex_bytes::<32>(h.as_bytes()))
        {
            return Packed::CsiName(h);
        }
        if let Ok(n) = s.parse::<u64>() {
            if n.to_string() == s {
                return Packed::Number(n);
            }
        }
        Packed::Text(s.into())
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    b.iter().try_for_each(|x| write!(f, "{x:02x}"))
}

fn write_uuid(f: &mut fmt::Formatter<'_>, u: &[u8; 16]) -> fmt::Result {
    write_hex(f, &u[..4])?;
    for r in [4..6, 6..8, 8..10, 10..16] {
        f.write_str("-")?;
        write_hex(f, &u[r])?;
    }
    Ok(())
}

impl fmt::Display for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packed::Uuid(u) => write_uuid(f, u),
            Packed::PrefixedUuid(p, u) => {
                f.write_str(&String::from_utf8_lossy(p))?;
                write_uuid(f, u)
            }
            Packed::CsiName(h) => {
                f.write_str("csi-")?;
                write_hex(f, h)
            }
            Packed::Number(n) => write!(f, "{n}"),
            Packed::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}", self = self.to_string())
    }
}

impl PartialEq<str> for Packed {
    fn eq(&self, other: &str) -> bool {
        match self {
            Packed::Text(t) => &**t == other,
            _ => *self == Packed::new(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_round_trips_exactly() {
        let name = format!("csi-{}", "0123456789abcdef".repeat(4));
        for s in [
            "5f0c2a51-0000-4000-8000-00000000000a",
            "pvc-5f0c2a51-0000-4000-8000-00000000000a",
            name.as_str(),
            "50267774",
            "0123",
            "5F0C2A51-0000-4000-8000-00000000000A",
            "csi-short",
            "",
            "node-ä",
        ] {
            let p = Packed::new(s);
            assert_eq!(p.to_string(), s, "{p:?}");
            assert!(p == *s);
        }
        assert!(matches!(Packed::new(&name), Packed::CsiName(_)));
        assert!(matches!(
            Packed::new("pvc-5f0c2a51-0000-4000-8000-00000000000a"),
            Packed::PrefixedUuid(..)
        ));
        assert!(
            matches!(Packed::new("0123"), Packed::Text(_)),
            "leading zero kept as text"
        );
        assert!(std::mem::size_of::<Packed>() <= 40);
    }
}
