//! Why bytes from a device could not be decoded.

/// A response that does not follow the SPC layout it claims to follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than the fixed header of the response.
    #[error("{what}: response is {got} bytes, shorter than its {need}-byte header")]
    TooShort {
        /// Which response.
        what: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The response's own length field says more data follows than was received.
    #[error("{what}: length field announces {announced} bytes but only {got} were received")]
    Truncated {
        /// Which response.
        what: &'static str,
        /// Total bytes the response announces (header included).
        announced: usize,
        /// Bytes received.
        got: usize,
    },
    /// A field holds a value SPC does not allow there.
    #[error("{what}: {field} has invalid value {value:#x}: {why}")]
    InvalidField {
        /// Which response.
        what: &'static str,
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What was expected.
        why: &'static str,
    },
}

/// Reads a big-endian u16 at `at`, which the caller has bounds-checked.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at`, which the caller has bounds-checked.
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a big-endian u64 at `at`, which the caller has bounds-checked.
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Fails with `TooShort` unless `b` holds at least `need` bytes.
pub(crate) fn need(what: &'static str, b: &[u8], need: usize) -> Result<(), ParseError> {
    if b.len() < need {
        return Err(ParseError::TooShort {
            what,
            got: b.len(),
            need,
        });
    }
    Ok(())
}

/// The body a header announces, or `Truncated` when the buffer holds less.
pub(crate) fn announced<'a>(
    what: &'static str,
    b: &'a [u8],
    header: usize,
    body_len: usize,
) -> Result<&'a [u8], ParseError> {
    let total = header.saturating_add(body_len);
    if b.len() < total {
        return Err(ParseError::Truncated {
            what,
            announced: total,
            got: b.len(),
        });
    }
    Ok(&b[header..total])
}

/// Hex of a byte slice, lower case, no separators.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}
