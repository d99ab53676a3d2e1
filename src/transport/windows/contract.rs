//! The byte layouts of Windows' persistent-reservation IOCTLs, and the
//! translation between them and the SCSI commands the engine speaks. Pure:
//! no I/O, the same on every platform (the simulation's double decodes what
//! the real backend encodes, with the class driver's checks).
//!
//! - `PERSISTENT_RESERVE_COMMAND` (ntddstor.h, 12 bytes): `Version` and
//!   `Size` (u32 each), then a union at offset 8: `PR_IN` {ServiceAction:5,
//!   Reserved:3; AllocationLength u16 at 10} or `PR_OUT` {ServiceAction:5,
//!   Reserved:3; Type:4, Scope:4; ParameterList at 10}.
//! - PR OUT's input buffer is `sizeof(PERSISTENT_RESERVE_COMMAND) +
//!   sizeof(PRO_PARAMETER_LIST)` = 36 bytes, the 24-byte SPC basic parameter
//!   list written from offset 10, and `Size` at least the buffer's length:
//!   the class driver (classpnp's `ClasspPersistentReserve`) refuses less
//!   with STATUS_INVALID_PARAMETER, and a buffer or `Size` under 12 bytes
//!   with STATUS_INFO_LENGTH_MISMATCH. It sends the 24 bytes unchanged.
//! - It takes PR IN READ KEYS and READ RESERVATION only, PR OUT service
//!   actions 0 to 6, and for RESERVE, RELEASE, PREEMPT and PREEMPT AND ABORT
//!   scope LU or element and types 1, 3, 5, 6 only: not the all-registrants
//!   types 7 and 8. A PR IN allocation length must be at least 8 and no
//!   more than the output buffer.
//! - `STORAGE_DEVICE_ID_DESCRIPTOR`: Version, Size, NumberOfIdentifiers
//!   (u32 each), then `STORAGE_IDENTIFIER`s at 12: CodeSet, Type (i32),
//!   IdentifierSize, NextOffset (u16, from the identifier's start),
//!   Association (i32), Identifier at 16. Code set, type and association
//!   carry the VPD 83h values.
//!
//! Integers of the structures are little-endian (x64); the PR parameter
//! data (keys, PRGENERATION) is the SCSI big-endian data, passed through.

use std::fmt;

use crate::scsi::{PrInAction, PrOutAction};

/// `sizeof(PERSISTENT_RESERVE_COMMAND)` on x64: the `Version`.
pub const COMMAND_SIZE: usize = 12;
/// Offset of `PR_OUT.ParameterList` (and of `PR_IN.AllocationLength`).
pub const PARAMETER_LIST_OFFSET: usize = 10;
/// `sizeof(PRO_PARAMETER_LIST)`: the SPC basic PR OUT parameter list.
pub const PARAMETER_LIST_LEN: usize = 24;
/// The PR OUT input buffer the class driver requires: the structure's size
/// plus the parameter list's (the list itself starts at offset 10).
pub const PR_OUT_BUFFER_LEN: usize = COMMAND_SIZE + PARAMETER_LIST_LEN;
/// The smallest PR IN allocation length the class driver takes.
pub const MIN_ALLOCATION: u16 = 8;
/// `sizeof(STORAGE_PROPERTY_QUERY)`.
pub const PROPERTY_QUERY_SIZE: usize = 12;
/// `StorageDeviceIdProperty`.
pub const STORAGE_DEVICE_ID_PROPERTY: i32 = 2;
/// `sizeof(STORAGE_DEVICE_ID_DESCRIPTOR)`, its `Version`.
pub const DEVICE_ID_DESCRIPTOR_SIZE: usize = 16;
/// Where the identifiers start in a `STORAGE_DEVICE_ID_DESCRIPTOR`.
const IDENTIFIERS_OFFSET: usize = 12;
/// Where the bytes start in a `STORAGE_IDENTIFIER`.
const IDENTIFIER_OFFSET: usize = 16;

/// Byte 20 of the parameter list: APTPL is bit 0; the other bits
/// (SPEC_I_PT, ALL_TG_PT) are `Reserved2` in `PRO_PARAMETER_LIST`.
const NOT_IN_PRO_PARAMETER_LIST: u8 = 0xfe;

/// A PR IN request as the IOCTL carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrInRequest {
    /// READ KEYS or READ RESERVATION (the only two the IOCTL takes).
    pub action: PrInAction,
    /// `PR_IN.AllocationLength`.
    pub allocation: u16,
}

/// A PR OUT request as the IOCTL carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrOutRequest {
    /// `PR_OUT.ServiceAction`.
    pub action: PrOutAction,
    /// `PR_OUT.Type` (low nibble of CDB byte 2).
    pub rtype: u8,
    /// `PR_OUT.Scope` (high nibble of CDB byte 2).
    pub scope: u8,
    /// The `PRO_PARAMETER_LIST`.
    pub list: [u8; PARAMETER_LIST_LEN],
}

/// Why a SCSI command cannot be expressed through the IOCTLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotExpressible(pub &'static str);

impl fmt::Display for NotExpressible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// What a SCSI command becomes on Windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `IOCTL_STORAGE_PERSISTENT_RESERVE_IN`.
    PrIn(PrInRequest),
    /// `IOCTL_STORAGE_PERSISTENT_RESERVE_OUT`.
    PrOut(PrOutRequest),
    /// `IOCTL_STORAGE_QUERY_PROPERTY(StorageDeviceIdProperty)`, standing for
    /// INQUIRY VPD 83h, cut to this allocation length.
    DeviceId(usize),
}

/// Translates a CDB (and its data-out) into the request that carries it.
pub fn request(cdb: &[u8], data_out: Option<&[u8]>) -> Result<Request, NotExpressible> {
    match cdb.first() {
        Some(0x5e) => pr_in(cdb),
        Some(0x5f) => pr_out(cdb, data_out.unwrap_or_default()),
        Some(0x12) if cdb.len() >= 5 && cdb[1] & 1 == 1 && cdb[2] == 0x83 => Ok(Request::DeviceId(
            usize::from(u16::from_be_bytes([cdb[3], cdb[4]])),
        )),
        Some(0x12) => Err(NotExpressible(
            "Windows gives a disk's identity (VPD 83h) through IOCTL_STORAGE_QUERY_PROPERTY; other INQUIRY data is not carried",
        )),
        _ => Err(NotExpressible(
            "Windows carries only PERSISTENT RESERVE IN/OUT and the VPD 83h identity to a disk (no pass-through)",
        )),
    }
}

fn pr_in(cdb: &[u8]) -> Result<Request, NotExpressible> {
    if cdb.len() < 10 {
        return Err(NotExpressible("a PERSISTENT RESERVE IN CDB is 10 bytes"));
    }
    let action =
        match cdb[1] & 0x1f {
            0 => PrInAction::ReadKeys,
            1 => PrInAction::ReadReservation,
            _ => return Err(NotExpressible(
                "IOCTL_STORAGE_PERSISTENT_RESERVE_IN carries READ KEYS and READ RESERVATION only",
            )),
        };
    Ok(Request::PrIn(PrInRequest {
        action,
        allocation: u16::from_be_bytes([cdb[7], cdb[8]]),
    }))
}

fn pr_out(cdb: &[u8], data: &[u8]) -> Result<Request, NotExpressible> {
    if cdb.len() < 10 {
        return Err(NotExpressible("a PERSISTENT RESERVE OUT CDB is 10 bytes"));
    }
    let action = carried_pr_out(cdb[1]).ok_or(NotExpressible(
        "IOCTL_STORAGE_PERSISTENT_RESERVE_OUT has no REGISTER AND MOVE or REPLACE LOST RESERVATION",
    ))?;
    let list: [u8; PARAMETER_LIST_LEN] = data.try_into().map_err(|_| {
        NotExpressible("PRO_PARAMETER_LIST is the 24-byte basic parameter list (no TransportIDs)")
    })?;
    let (rtype, scope) = (cdb[2] & 0x0f, cdb[2] >> 4);
    if typed(action) && !type_and_scope_taken(rtype, scope) {
        return Err(NotExpressible(
            "the Windows class driver takes reservation types 1, 3, 5 and 6 only (no all-registrants types), in scope LU or element",
        ));
    }
    if list[20] & NOT_IN_PRO_PARAMETER_LIST != 0 {
        return Err(NotExpressible(
            "PRO_PARAMETER_LIST has no SPEC_I_PT or ALL_TG_PT bit (MPIO registers every path itself)",
        ));
    }
    Ok(Request::PrOut(PrOutRequest {
        action,
        rtype,
        scope,
        list,
    }))
}

/// The PR OUT service action in the low five bits of `byte`, if the IOCTL
/// takes it (codes 0 to 6: not REGISTER AND MOVE, not REPLACE LOST
/// RESERVATION).
fn carried_pr_out(byte: u8) -> Option<PrOutAction> {
    let code = byte & 0x1f;
    PrOutAction::ALL
        .into_iter()
        .find(|a| *a as u8 == code)
        .filter(|a| (*a as u8) <= PrOutAction::RegisterAndIgnoreExistingKey as u8)
}

/// The service actions whose type and scope the class driver checks.
fn typed(a: PrOutAction) -> bool {
    matches!(
        a,
        PrOutAction::Reserve
            | PrOutAction::Release
            | PrOutAction::Preempt
            | PrOutAction::PreemptAndAbort
    )
}

fn type_and_scope_taken(rtype: u8, scope: u8) -> bool {
    matches!(rtype, 1 | 3 | 5 | 6) && matches!(scope, 0 | 2)
}

fn header(buf: &mut [u8], action: u8) {
    let size = buf.len() as u32;
    buf[0..4].copy_from_slice(&(COMMAND_SIZE as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&size.to_le_bytes());
    buf[8] = action & 0x1f;
}

/// The input buffer of `IOCTL_STORAGE_PERSISTENT_RESERVE_IN`.
pub fn encode_pr_in(r: &PrInRequest) -> Vec<u8> {
    let mut b = vec![0u8; COMMAND_SIZE];
    header(&mut b, r.action as u8);
    b[PARAMETER_LIST_OFFSET..PARAMETER_LIST_OFFSET + 2]
        .copy_from_slice(&r.allocation.to_le_bytes());
    b
}

/// The input buffer of `IOCTL_STORAGE_PERSISTENT_RESERVE_OUT`.
pub fn encode_pr_out(r: &PrOutRequest) -> Vec<u8> {
    let mut b = vec![0u8; PR_OUT_BUFFER_LEN];
    header(&mut b, r.action as u8);
    b[9] = (r.scope << 4) | (r.rtype & 0x0f);
    b[PARAMETER_LIST_OFFSET..PARAMETER_LIST_OFFSET + PARAMETER_LIST_LEN].copy_from_slice(&r.list);
    b
}

/// Why an input buffer is refused, as the class driver refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the structure, or `Size` smaller than it:
    /// STATUS_INFO_LENGTH_MISMATCH.
    Length,
    /// A service action, type or scope the IOCTL does not take, a PR OUT
    /// buffer or `Size` short of the parameter list, or an allocation
    /// length under 8 or over the output buffer: STATUS_INVALID_PARAMETER.
    Parameter,
}

/// The checks both IOCTLs make; `Version` is not checked. The `Size`.
fn check_header(b: &[u8]) -> Result<usize, Malformed> {
    if b.len() < COMMAND_SIZE {
        return Err(Malformed::Length);
    }
    let size = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    if size < COMMAND_SIZE {
        return Err(Malformed::Length);
    }
    Ok(size)
}

/// Decodes a PR IN input buffer (what the double receives), checking it
/// as the class driver does; `out_len` is the output buffer's size.
pub fn decode_pr_in(b: &[u8], out_len: usize) -> Result<PrInRequest, Malformed> {
    check_header(b)?;
    let action = match b[8] & 0x1f {
        0 => PrInAction::ReadKeys,
        1 => PrInAction::ReadReservation,
        _ => return Err(Malformed::Parameter),
    };
    let allocation = u16::from_le_bytes([b[10], b[11]]);
    if out_len < usize::from(allocation) || allocation < MIN_ALLOCATION {
        return Err(Malformed::Parameter);
    }
    Ok(PrInRequest { action, allocation })
}

/// Decodes a PR OUT input buffer, checking it as the class driver does.
pub fn decode_pr_out(b: &[u8]) -> Result<PrOutRequest, Malformed> {
    let size = check_header(b)?;
    let action = carried_pr_out(b[8]).ok_or(Malformed::Parameter)?;
    let (rtype, scope) = (b[9] & 0x0f, b[9] >> 4);
    if typed(action) && !type_and_scope_taken(rtype, scope) {
        return Err(Malformed::Parameter);
    }
    if b.len() < PR_OUT_BUFFER_LEN || size < b.len() {
        return Err(Malformed::Parameter);
    }
    let mut list = [0u8; PARAMETER_LIST_LEN];
    list.copy_from_slice(&b[PARAMETER_LIST_OFFSET..PARAMETER_LIST_OFFSET + PARAMETER_LIST_LEN]);
    Ok(PrOutRequest {
        action,
        rtype,
        scope,
        list,
    })
}

/// The `STORAGE_PROPERTY_QUERY` asking for the device identifiers.
pub fn device_id_query() -> [u8; PROPERTY_QUERY_SIZE] {
    let mut q = [0u8; PROPERTY_QUERY_SIZE];
    q[0..4].copy_from_slice(&STORAGE_DEVICE_ID_PROPERTY.to_le_bytes());
    // QueryType 0: PropertyStandardQuery.
    q
}

/// What was wrong with a `STORAGE_DEVICE_ID_DESCRIPTOR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed STORAGE_DEVICE_ID_DESCRIPTOR ({len} bytes): {why}")]
pub struct BadDescriptor {
    /// Bytes received.
    pub len: usize,
    /// What did not fit.
    pub why: String,
}

/// The VPD 83h page a `STORAGE_DEVICE_ID_DESCRIPTOR` stands for: each
/// `STORAGE_IDENTIFIER` becomes the designation descriptor it was read
/// from (Windows drops PROTOCOL IDENTIFIER and PIV; nothing here uses them
/// to name a LUN).
pub fn vpd83_from_device_id(b: &[u8]) -> Result<Vec<u8>, BadDescriptor> {
    let bad = |why: String| BadDescriptor { len: b.len(), why };
    let word = |i: usize| -> Result<u32, BadDescriptor> {
        b.get(i..i + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .ok_or_else(|| bad(format!("ends before offset {}", i + 4)))
    };
    let size = word(4)? as usize;
    let count = word(8)? as usize;
    let b = &b[..size.min(b.len())];
    let mut body = Vec::new();
    let mut at = IDENTIFIERS_OFFSET;
    for i in 0..count {
        let head = b
            .get(at..at + IDENTIFIER_OFFSET)
            .ok_or_else(|| bad(format!("identifier {i} at offset {at} is cut short")))?;
        let code_set = head[0] & 0x0f;
        let dtype = head[4] & 0x0f;
        let len = usize::from(u16::from_le_bytes([head[8], head[9]]));
        let next = usize::from(u16::from_le_bytes([head[10], head[11]]));
        let assoc = head[12] & 0x03;
        let id = b
            .get(at + IDENTIFIER_OFFSET..at + IDENTIFIER_OFFSET + len)
            .ok_or_else(|| bad(format!("identifier {i} announces {len} bytes past the end")))?;
        let len8 = u8::try_from(len).map_err(|_| bad(format!("identifier {i} is {len} bytes")))?;
        body.extend_from_slice(&[code_set, (assoc << 4) | dtype, 0, len8]);
        body.extend_from_slice(id);
        if i + 1 < count && next < IDENTIFIER_OFFSET + len {
            return Err(bad(format!(
                "identifier {i}'s NextOffset {next} falls inside it"
            )));
        }
        at += next;
    }
    let n = u16::try_from(body.len()).map_err(|_| bad("page longer than 64 KiB".into()))?;
    let mut page = vec![0x00, 0x83];
    page.extend_from_slice(&n.to_be_bytes());
    page.extend(body);
    Ok(page)
}

/// The designation descriptors of a VPD 83h page that name the logical
/// unit (association 0), concatenated; malformed tails are left out.
pub fn logical_unit_designators(page: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = page.get(4..).unwrap_or_default();
    while rest.len() >= 4 {
        let end = (4 + usize::from(rest[3])).min(rest.len());
        if (rest[1] >> 4) & 0x03 == 0 {
            out.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out
}

/// The `STORAGE_DEVICE_ID_DESCRIPTOR` the port driver builds from a VPD
/// 83h page (for the double; identifiers 4-byte aligned).
pub fn device_id_from_vpd83(page: &[u8]) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut count = 0u32;
    let mut rest = page.get(4..).unwrap_or_default();
    while rest.len() >= 4 {
        let len = usize::from(rest[3]).min(rest.len() - 4);
        let next = (IDENTIFIER_OFFSET + len).div_ceil(4) * 4;
        let mut one = vec![0u8; next];
        one[0..4].copy_from_slice(&i32::from(rest[0] & 0x0f).to_le_bytes());
        one[4..8].copy_from_slice(&i32::from(rest[1] & 0x0f).to_le_bytes());
        one[8..10].copy_from_slice(&(len as u16).to_le_bytes());
        one[10..12].copy_from_slice(&(next as u16).to_le_bytes());
        one[12..16].copy_from_slice(&i32::from((rest[1] >> 4) & 0x03).to_le_bytes());
        one[IDENTIFIER_OFFSET..IDENTIFIER_OFFSET + len].copy_from_slice(&rest[4..4 + len]);
        ids.extend(one);
        count += 1;
        rest = &rest[4 + len..];
    }
    let mut d = vec![0u8; IDENTIFIERS_OFFSET];
    let size = (IDENTIFIERS_OFFSET + ids.len()) as u32;
    d[0..4].copy_from_slice(&(DEVICE_ID_DESCRIPTOR_SIZE as u32).to_le_bytes());
    d[4..8].copy_from_slice(&size.to_le_bytes());
    d[8..12].copy_from_slice(&count.to_le_bytes());
    d.extend(ids);
    d
}

#[cfg(test)]
mod tests;
