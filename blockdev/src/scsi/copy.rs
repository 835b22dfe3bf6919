//! Copy offload inside the target: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18; the LID1
//! forms of SPC-3). A hypervisor moves or clones a virtual disk with them without the data crossing the
//! network: the target reads each source range once and writes it to the destination, between any LUNs of
//! the same target (the LUNs of one mount).
//!
//! Offered: identification CSCD descriptors (0xE4, naming a LUN by the NAA or T10 vendor designator of its
//! VPD page 0x83) and block-to-block segment descriptors (0x02); no inline or held data. Copies run to their
//! end before the command completes, so their status is always final when RECEIVE COPY RESULTS asks.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::reservations::Nexus;
use super::{be16, be32, be64, truncate, Lun, LunSet, Outcome, Sense, BLOCK_SIZE};

/// CSCD descriptors one command may name.
const MAX_CSCD_DESCRIPTORS: u16 = 4;
/// Segment descriptors one command may hold.
const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
/// Bytes of CSCD and segment descriptors one command may hold.
const MAX_DESCRIPTOR_LIST_BYTES: u32 = 1024;
/// The most blocks one block-to-block segment names (its field is 16 bits), in bytes.
const MAX_SEGMENT_BYTES: u32 = 0xffff * BLOCK_SIZE as u32;
/// Bytes a copy moves at a time: the memory one copy holds.
const COPY_PIECE: u64 = 1 << 20;

const IDENTIFICATION_CSCD: u8 = 0xe4;
const BLOCK_TO_BLOCK: u8 = 0x02;
const CSCD_LEN: usize = 32;
const HEADER_LEN: usize = 16;

/// ILLEGAL REQUEST sense of a bad parameter list (SPC-4 Table 49).
const TOO_MANY_CSCDS: Sense = Sense::new(0x05, 0x26, 0x06);
const UNSUPPORTED_CSCD_TYPE: Sense = Sense::new(0x05, 0x26, 0x07);
const TOO_MANY_SEGMENTS: Sense = Sense::new(0x05, 0x26, 0x08);
const UNSUPPORTED_SEGMENT_TYPE: Sense = Sense::new(0x05, 0x26, 0x09);
const INLINE_DATA_EXCEEDED: Sense = Sense::new(0x05, 0x26, 0x0b);
/// COPY ABORTED: a copy target that is not a LUN of this target.
const UNREACHABLE_COPY_TARGET: Sense = Sense::new(0x0a, 0x08, 0x04);
/// COPY ABORTED, with no more said (a segment beyond the end of its LUN).
const COPY_ABORTED: Sense = Sense::new(0x0a, 0x00, 0x00);

/// How a copy ended, for RECEIVE COPY RESULTS COPY STATUS.
#[derive(Clone, Copy, Debug)]
struct CopyStatus {
    good: bool,
    segments_processed: u16,
    bytes_copied: u32,
}

/// The results a LUN holds for the copies it ran, by initiator port and list identifier.
#[derive(Default)]
pub struct CopyResults {
    held: Mutex<HashMap<(Nexus, u8), CopyStatus>>,
}

/// One block-to-block segment.
struct Segment {
    source: u16,
    destination: u16,
    blocks: u64,
    source_lba: u64,
    destination_lba: u64,
}

/// EXTENDED COPY (LID1) received by `lun`.
pub async fn extended_copy(set: &LunSet, lun: &Lun, nexus: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
    let list_len = be32(&cdb[10..14]) as usize;
    if list_len == 0 {
        return Outcome::good(Vec::new()); // nothing to copy
    }
    if list_len < HEADER_LEN || data.len() < list_len {
        return Outcome::check(Sense::PARAMETER_LIST_LENGTH);
    }
    let list = &data[..list_len];
    let (list_id, usage) = (list[0], (list[1] >> 3) & 0x03);
    let cscd_len = usize::from(be16(&list[2..4]));
    let segments_len = be32(&list[8..12]) as usize;
    let inline_len = be32(&list[12..16]) as usize;
    // Lengths first: a list longer than it says, or than the limit, is a length error whatever it holds.
    if HEADER_LEN + cscd_len + segments_len + inline_len > list_len
        || cscd_len + segments_len > MAX_DESCRIPTOR_LIST_BYTES as usize
    {
        return Outcome::check(Sense::PARAMETER_LIST_LENGTH);
    }
    if inline_len > 0 {
        return Outcome::check(INLINE_DATA_EXCEEDED);
    }
    // LIST ID USAGE: 00b hold the results, 10b do not, 11b no list identifier (it must be zero).
    if usage == 0x01 || (usage == 0x03 && list_id != 0) {
        return Outcome::check(Sense::INVALID_FIELD_IN_PARAMETERS);
    }
    if cscd_len % CSCD_LEN != 0 {
        return Outcome::check(Sense::PARAMETER_LIST_LENGTH);
    }
    if cscd_len / CSCD_LEN > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Outcome::check(TOO_MANY_CSCDS);
    }
    let cscds = &list[HEADER_LEN..HEADER_LEN + cscd_len];
    let mut targets: Vec<Option<&Lun>> = Vec::new();
    for d in cscds.chunks_exact(CSCD_LEN) {
        if d[0] != IDENTIFICATION_CSCD || d[1] & 0x1f != 0 {
            return Outcome::check(UNSUPPORTED_CSCD_TYPE); // only block devices named by an identifier
        }
        // NUL: a null device, which this copy manager does not offer.
        let named = if d[1] & 0x20 != 0 { None } else { find_lun(set, &d[4..28]) };
        targets.push(named);
    }
    let segments = match parse_segments(&list[HEADER_LEN + cscd_len..HEADER_LEN + cscd_len + segments_len]) {
        Ok(s) => s,
        Err(sense) => return Outcome::check(sense),
    };

    let status = run_segments(&targets, &segments).await;
    if usage == 0x00 {
        let held = CopyStatus { good: status.is_ok(), ..status.unwrap_or_else(|(_, s)| s) };
        lun.copies.held.lock().expect("not poisoned").insert((nexus.clone(), list_id), held);
    }
    match status {
        Ok(_) => Outcome::good(Vec::new()),
        Err((sense, _)) => Outcome::check(sense),
    }
}

/// The LUN of `set` that a CSCD's designation descriptor (24 bytes: code set, association and type,
/// reserved, length, designator) names, as its VPD page 0x83 does.
fn find_lun<'a>(set: &'a LunSet, designation: &[u8]) -> Option<&'a Lun> {
    let (kind, len) = (designation[1] & 0x0f, usize::from(designation[3]));
    let designator = designation.get(4..4 + len)?;
    set.luns.iter().map(|l| l.as_ref()).find(|l| match kind {
        0x03 => designator == l.naa,
        0x01 => designator == super::spc::t10_designator(l).as_slice(),
        _ => false,
    })
}

/// The segment descriptors, walked by their type and length.
fn parse_segments(mut list: &[u8]) -> Result<Vec<Segment>, Sense> {
    let mut segments = Vec::new();
    while !list.is_empty() {
        if list.len() < 4 {
            return Err(Sense::PARAMETER_LIST_LENGTH);
        }
        let len = 4 + usize::from(be16(&list[2..4]));
        if segments.len() == usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(TOO_MANY_SEGMENTS);
        }
        if list[0] != BLOCK_TO_BLOCK {
            return Err(UNSUPPORTED_SEGMENT_TYPE);
        }
        if len != 28 || list.len() < len {
            return Err(Sense::PARAMETER_LIST_LENGTH);
        }
        let d = &list[..len];
        if d[1] & 0x03 != 0 {
            return Err(Sense::INVALID_FIELD_IN_PARAMETERS); // DC and CAT are not offered
        }
        segments.push(Segment {
            source: be16(&d[4..6]),
            destination: be16(&d[6..8]),
            blocks: u64::from(be16(&d[10..12])),
            source_lba: be64(&d[12..20]),
            destination_lba: be64(&d[20..28]),
        });
        list = &list[len..];
    }
    Ok(segments)
}

/// Runs the segments in order; stops at the first that fails, with its sense and what was done before it.
async fn run_segments(targets: &[Option<&Lun>], segments: &[Segment]) -> Result<CopyStatus, (Sense, CopyStatus)> {
    let mut done = CopyStatus { good: true, segments_processed: 0, bytes_copied: 0 };
    for s in segments {
        let lun_of = |index: u16| targets.get(usize::from(index)).copied().flatten();
        let (Some(source), Some(destination)) = (lun_of(s.source), lun_of(s.destination)) else {
            return Err((UNREACHABLE_COPY_TARGET, done));
        };
        let fits = |lun: &Lun, lba: u64| lba.checked_add(s.blocks).is_some_and(|end| end <= lun.blocks());
        if !fits(source, s.source_lba) || !fits(destination, s.destination_lba) {
            return Err((COPY_ABORTED, done));
        }
        copy_blocks(source, s.source_lba, destination, s.destination_lba, s.blocks).await.map_err(|e| {
            // The failure's own sense, under COPY ABORTED.
            let cause = Sense::of(&e, true);
            (Sense::new(0x0a, cause.asc, cause.ascq), done)
        })?;
        done.segments_processed += 1;
        done.bytes_copied = done.bytes_copied.saturating_add((s.blocks * BLOCK_SIZE) as u32);
    }
    Ok(done)
}

/// Copies `blocks` blocks a piece at a time, each piece read once and written once. When source and
/// destination overlap on the same disk with the destination after the source, the pieces go from the end,
/// so that no piece is overwritten before it is read.
async fn copy_blocks(source: &Lun, from: u64, destination: &Lun, to: u64, blocks: u64) -> crate::Result<()> {
    let (start, end, len) = (from * BLOCK_SIZE, to * BLOCK_SIZE, blocks * BLOCK_SIZE);
    let backwards = std::sync::Arc::ptr_eq(&source.disk, &destination.disk) && end > start && end < start + len;
    let pieces = len.div_ceil(COPY_PIECE);
    for n in 0..pieces {
        let k = if backwards { pieces - 1 - n } else { n };
        let offset = k * COPY_PIECE;
        let size = COPY_PIECE.min(len - offset) as usize;
        let data = source.disk.read(start + offset, size).await?;
        destination.disk.write(end + offset, Bytes::from(data), false).await?;
    }
    Ok(())
}

/// RECEIVE COPY RESULTS (LID1): COPY STATUS of a held list identifier, and the copy manager's OPERATING
/// PARAMETERS.
pub fn receive_copy_results(lun: &Lun, nexus: &Nexus, cdb: &[u8]) -> Outcome {
    let alloc = be32(&cdb[10..14]) as usize;
    let data = match cdb[1] & 0x1f {
        0x00 => {
            let held = lun.copies.held.lock().expect("not poisoned").get(&(nexus.clone(), cdb[2])).copied();
            let Some(status) = held else { return Outcome::check(Sense::INVALID_FIELD_IN_CDB) };
            let mut d = vec![0u8; 12];
            d[0..4].copy_from_slice(&8u32.to_be_bytes());
            d[4] = if status.good { 0x01 } else { 0x02 }; // completed, good or with an error
            d[5..7].copy_from_slice(&status.segments_processed.to_be_bytes());
            d[7] = 0x00; // transfer count in bytes
            d[8..12].copy_from_slice(&status.bytes_copied.to_be_bytes());
            d
        }
        0x03 => {
            let implemented = [BLOCK_TO_BLOCK, IDENTIFICATION_CSCD];
            let mut d = vec![0u8; 44];
            d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
            d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_BYTES.to_be_bytes());
            d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
            // No inline or held data, no stream devices; one copy at a time per command.
            d[34..36].copy_from_slice(&1u16.to_be_bytes());
            d[36] = 1;
            d[37] = BLOCK_SIZE.trailing_zeros() as u8; // data segment granularity, log2
            d[43] = implemented.len() as u8;
            d.extend_from_slice(&implemented);
            let available = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&available.to_be_bytes());
            d
        }
        _ => return Outcome::check(Sense::INVALID_FIELD_IN_CDB),
    };
    truncate(data, alloc)
}
