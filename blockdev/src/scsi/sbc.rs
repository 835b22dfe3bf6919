//! Block commands (SBC-3): READ and WRITE 6/10/12/16, WRITE AND VERIFY, COMPARE AND WRITE, ORWRITE, VERIFY,
//! PRE-FETCH, WRITE SAME, UNMAP, GET LBA STATUS, READ CAPACITY, SYNCHRONIZE CACHE. Blocks are 512 bytes; the
//! pseudo-disk works in bytes.

use bytes::Bytes;

use super::spc::{MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS};
use super::{be16, be32, be64, Lun, Outcome, Sense, BLOCK_SIZE};

/// LBA and block count of a 10-, 12- or 16-byte block command: they stand at the same places in every SBC
/// command of each length (READ, WRITE, VERIFY, PRE-FETCH, WRITE SAME...).
fn lba_and_blocks(cdb: &[u8]) -> (u64, u64) {
    match cdb.len() {
        10 => (u64::from(be32(&cdb[2..6])), u64::from(be16(&cdb[7..9]))),
        12 => (u64::from(be32(&cdb[2..6])), u64::from(be32(&cdb[6..10]))),
        _ => (be64(&cdb[2..10]), u64::from(be32(&cdb[10..14]))),
    }
}

/// LBA, block count and FUA of a READ or WRITE CDB of any length. None when a field is invalid.
fn rw_fields(cdb: &[u8]) -> Option<(u64, u64, bool)> {
    let fua = cdb.len() > 6 && cdb[1] & 0x08 != 0;
    let protect = cdb.len() > 6 && cdb[1] & 0xe0 != 0;
    if protect {
        return None; // no protection information on these LUNs
    }
    if cdb.len() == 6 {
        let lba = (u64::from(cdb[1] & 0x1f) << 16) | (u64::from(cdb[2]) << 8) | u64::from(cdb[3]);
        let n = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
        return Some((lba, n, false));
    }
    let (lba, blocks) = lba_and_blocks(cdb);
    Some((lba, blocks, fua))
}

/// Checks that `lba..lba+blocks` lies on the LUN; the LBA itself must exist even for a zero-length transfer.
fn in_range(lun: &Lun, lba: u64, blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.blocks() && lba < lun.blocks() => Ok(()),
        _ => Err(Sense::LBA_OUT_OF_RANGE),
    }
}

pub fn read_capacity10(lun: &Lun) -> Outcome {
    let last = lun.blocks().saturating_sub(1).min(0xffff_ffff) as u32;
    let mut d = last.to_be_bytes().to_vec();
    d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    Outcome::good(d)
}

pub fn read_capacity16(lun: &Lun, cdb: &[u8]) -> Outcome {
    let alloc = be32(&cdb[10..14]) as usize;
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lun.blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    d[13] = 3; // 8 logical blocks per 4 KiB physical block
    d[14] = 0x80 | 0x40; // LBPME (thin provisioning), LBPRZ (unmapped blocks read as zeros)
    super::truncate(d, alloc)
}

/// The byte range a READ asks for, or the outcome that answers it without reading anything (an invalid
/// CDB, or no blocks).
fn read_range(lun: &Lun, cdb: &[u8]) -> Result<(u64, usize), Outcome> {
    let Some((lba, blocks, _)) = rw_fields(cdb) else { return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB)) };
    in_range(lun, lba, blocks).map_err(Outcome::check)?;
    if blocks > u64::from(MAX_TRANSFER_BLOCKS) {
        return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB));
    }
    if blocks == 0 {
        return Err(Outcome::good(Vec::new()));
    }
    Ok((lba * BLOCK_SIZE, (blocks * BLOCK_SIZE) as usize))
}

pub async fn read(lun: &Lun, cdb: &[u8]) -> Outcome {
    let (offset, len) = match read_range(lun, cdb) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match lun.disk.read(offset, len).await {
        Ok(data) => Outcome::good(data),
        Err(e) => Outcome::check(Sense::of(&e, false)),
    }
}

/// READ without waiting: the data when the page cache holds all of it, else None (and `read` does it).
pub fn read_now(lun: &Lun, cdb: &[u8], max_len: usize) -> Option<Outcome> {
    let (offset, len) = read_range(lun, cdb).ok()?;
    if len > max_len {
        return None;
    }
    lun.disk.read_now(offset, len).map(Outcome::good)
}

pub async fn write(lun: &Lun, cdb: &[u8], data: Bytes) -> Outcome {
    let Some((lba, blocks, fua)) = rw_fields(cdb) else { return Outcome::check(Sense::INVALID_FIELD_IN_CDB) };
    write_blocks(lun, lba, blocks, fua, data).await
}

/// WRITE AND VERIFY (10/12/16): a write that is on the medium when it completes. What is written is what
/// reads back (the stores are checked files, not a medium that loses bits), so the verification, with or
/// without comparing the data (BYTCHK), is the durable write itself.
pub async fn write_and_verify(lun: &Lun, cdb: &[u8], data: Bytes) -> Outcome {
    let bytchk = (cdb[1] >> 1) & 0x03;
    if bytchk > 1 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let Some((lba, blocks, _)) = rw_fields(cdb) else { return Outcome::check(Sense::INVALID_FIELD_IN_CDB) };
    write_blocks(lun, lba, blocks, true, data).await
}

async fn write_blocks(lun: &Lun, lba: u64, blocks: u64, fua: bool, data: Bytes) -> Outcome {
    if let Err(s) = in_range(lun, lba, blocks) {
        return Outcome::check(s);
    }
    if blocks > u64::from(MAX_TRANSFER_BLOCKS) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let wanted = (blocks * BLOCK_SIZE) as usize;
    // When the initiator's expected length is short, only the whole blocks it sent are written; the
    // transport reports the rest as residual overflow (RFC 7143 11.4.5.2).
    let len = wanted.min(data.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize);
    let mut outcome = if len == 0 {
        Outcome::good(Vec::new())
    } else {
        match lun.disk.write(lba * BLOCK_SIZE, data.slice(..len), fua).await {
            Ok(()) => Outcome::good(Vec::new()),
            Err(e) => Outcome::check(Sense::of(&e, true)),
        }
    };
    outcome.data_out_wanted = wanted;
    outcome
}

/// COMPARE AND WRITE (16): the data-out holds the blocks expected, then the blocks to write. The blocks are
/// written only if they hold what was expected, with no other change of them in between (a hypervisor's
/// lock on a shared datastore, VMware's ATS, is made of this).
pub async fn compare_and_write(lun: &Lun, cdb: &[u8], data: Bytes) -> Outcome {
    if cdb[1] & 0xe0 != 0 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB); // no protection information on these LUNs
    }
    let fua = cdb[1] & 0x08 != 0;
    let (lba, blocks) = (be64(&cdb[2..10]), u64::from(cdb[13]));
    if blocks > u64::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    if let Err(s) = in_range(lun, lba, blocks) {
        return Outcome::check(s);
    }
    let half = (blocks * BLOCK_SIZE) as usize;
    let mut outcome = if data.len() != 2 * half {
        // The data-out must be exactly both halves: with more or less, which bytes are the expected ones
        // would be a guess (and zero blocks with data is a length that did not fit the CDB's one byte).
        Outcome::check(Sense::INVALID_FIELD_IN_CDB)
    } else if blocks == 0 {
        Outcome::good(Vec::new())
    } else {
        let compared = lun.disk.read_modify_write(lba * BLOCK_SIZE, half, fua, move |current| {
            let (expected, new) = (&data[..half], &data[half..2 * half]);
            match current.iter().zip(expected).position(|(a, b)| a != b) {
                Some(at) => (false, Some(at)),
                None => {
                    current.copy_from_slice(new);
                    (true, None)
                }
            }
        });
        match compared.await {
            Ok(None) => Outcome::good(Vec::new()),
            // Where the first byte that differs is, from the start of the data-out.
            Ok(Some(at)) => Outcome::check(Sense::MISCOMPARE_DURING_VERIFY.with_info(at as u32)),
            Err(e) => Outcome::check(Sense::of(&e, true)),
        }
    };
    outcome.data_out_wanted = 2 * half;
    outcome
}

/// ORWRITE (16): each byte of the blocks becomes itself OR the data-out's, with no other change of the
/// blocks in between.
pub async fn or_write(lun: &Lun, cdb: &[u8], data: Bytes) -> Outcome {
    let Some((lba, blocks, fua)) = rw_fields(cdb) else { return Outcome::check(Sense::INVALID_FIELD_IN_CDB) };
    if let Err(s) = in_range(lun, lba, blocks) {
        return Outcome::check(s);
    }
    if blocks > u64::from(MAX_TRANSFER_BLOCKS) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let len = (blocks * BLOCK_SIZE) as usize;
    let mut outcome = if blocks == 0 {
        Outcome::good(Vec::new())
    } else if data.len() < len {
        Outcome::check(Sense::INVALID_FIELD_IN_CDB)
    } else {
        let ored = lun.disk.read_modify_write(lba * BLOCK_SIZE, len, fua, move |current| {
            current.iter_mut().zip(&data[..len]).for_each(|(c, d)| *c |= d);
            (true, ())
        });
        match ored.await {
            Ok(()) => Outcome::good(Vec::new()),
            Err(e) => Outcome::check(Sense::of(&e, true)),
        }
    };
    outcome.data_out_wanted = len;
    outcome
}

/// PRE-FETCH (10/16): the blocks are recalled in the background; GOOD says that not all of them need be in
/// the cache when it returns (SBC-3 5.9), which is true whether or not IMMED is set.
pub fn prefetch(lun: &Lun, cdb: &[u8]) -> Outcome {
    let (lba, blocks) = lba_and_blocks(cdb);
    if let Err(s) = in_range(lun, lba, blocks) {
        return Outcome::check(s);
    }
    // No blocks: every block from the LBA to the end of the LUN.
    let blocks = if blocks == 0 { lun.blocks() - lba } else { blocks };
    match lun.disk.prefetch(lba * BLOCK_SIZE, blocks * BLOCK_SIZE) {
        Ok(()) => Outcome::good(Vec::new()),
        Err(e) => Outcome::check(Sense::of(&e, false)),
    }
}

pub async fn verify(lun: &Lun, cdb: &[u8], data: &[u8]) -> Outcome {
    let bytchk = (cdb[1] >> 1) & 0x03;
    if cdb[1] & 0xe0 != 0 || bytchk == 2 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let (lba, blocks) = lba_and_blocks(cdb);
    if let Err(s) = in_range(lun, lba, blocks) {
        return Outcome::check(s);
    }
    if blocks > u64::from(MAX_TRANSFER_BLOCKS) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    if blocks == 0 {
        return Outcome::good(Vec::new());
    }
    let current = match lun.disk.read(lba * BLOCK_SIZE, (blocks * BLOCK_SIZE) as usize).await {
        Ok(d) => d,
        Err(e) => return Outcome::check(Sense::of(&e, false)),
    };
    let matches = match bytchk {
        0 => true, // medium verification only: the read succeeded
        1 => data.len() >= current.len() && data[..current.len()] == current[..],
        _ => {
            data.len() >= BLOCK_SIZE as usize
                && current.chunks(BLOCK_SIZE as usize).all(|b| b == &data[..BLOCK_SIZE as usize])
        }
    };
    if matches {
        Outcome::good(Vec::new())
    } else {
        Outcome::check(Sense::MISCOMPARE_DURING_VERIFY)
    }
}

pub async fn write_same(lun: &Lun, cdb: &[u8], data: &[u8]) -> Outcome {
    let unmap = cdb[1] & 0x08 != 0;
    let ndob = cdb.len() == 16 && cdb[1] & 0x01 != 0;
    if cdb[1] & 0xe0 != 0 || cdb[1] & 0x16 != 0 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB); // protection, ANCHOR, PBDATA and LBDATA are not offered
    }
    let (lba, blocks) = lba_and_blocks(cdb);
    if blocks == 0 || blocks > u64::from(MAX_UNMAP_BLOCKS) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    if let Err(s) = in_range(lun, lba, blocks) {
        return Outcome::check(s);
    }
    let block: Vec<u8> = if ndob {
        vec![0u8; BLOCK_SIZE as usize]
    } else if data.len() == BLOCK_SIZE as usize {
        data.to_vec()
    } else {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    };
    let (offset, len) = (lba * BLOCK_SIZE, blocks * BLOCK_SIZE);
    let zero = block.iter().all(|&b| b == 0);
    let result = if zero && (unmap || ndob || len >= 4096) {
        // Zeros: deallocate (LBPRZ makes them read back as zeros) rather than store them.
        lun.disk.unmap(offset, len).await
    } else {
        let mut r = Ok(());
        let mut pos = 0u64;
        while pos < len && r.is_ok() {
            let n = (len - pos).min(1 << 20);
            let buf: Vec<u8> = block.iter().copied().cycle().take(n as usize).collect();
            r = lun.disk.write(offset + pos, Bytes::from(buf), false).await;
            pos += n;
        }
        r
    };
    match result {
        Ok(()) => Outcome::good(Vec::new()),
        Err(e) => Outcome::check(Sense::of(&e, true)),
    }
}

pub async fn unmap(lun: &Lun, cdb: &[u8], data: &[u8]) -> Outcome {
    if cdb[1] & 0x01 != 0 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB); // ANCHOR
    }
    let param_len = usize::from(be16(&cdb[7..9]));
    if param_len == 0 {
        return Outcome::good(Vec::new());
    }
    if param_len < 8 || data.len() < param_len {
        return Outcome::check(Sense::PARAMETER_LIST_LENGTH);
    }
    let data = &data[..param_len];
    let desc_len = usize::from(be16(&data[2..4]));
    if 8 + desc_len > data.len() || desc_len % 16 != 0 {
        return Outcome::check(Sense::PARAMETER_LIST_LENGTH);
    }
    let descs: Vec<(u64, u64)> =
        data[8..8 + desc_len].chunks_exact(16).map(|d| (be64(&d[0..8]), u64::from(be32(&d[8..12])))).collect();
    if descs.len() > MAX_UNMAP_DESCRIPTORS as usize {
        return Outcome::check(Sense::INVALID_FIELD_IN_PARAMETERS);
    }
    for &(lba, blocks) in &descs {
        if blocks > u64::from(MAX_UNMAP_BLOCKS) {
            return Outcome::check(Sense::INVALID_FIELD_IN_PARAMETERS);
        }
        // Zero blocks at the end of the LUN is a valid, empty descriptor.
        if lba.checked_add(blocks).is_none_or(|end| end > lun.blocks()) {
            return Outcome::check(Sense::LBA_OUT_OF_RANGE);
        }
    }
    for (lba, blocks) in descs {
        if blocks == 0 {
            continue;
        }
        if let Err(e) = lun.disk.unmap(lba * BLOCK_SIZE, blocks * BLOCK_SIZE).await {
            return Outcome::check(Sense::of(&e, true));
        }
    }
    Outcome::good(Vec::new())
}

/// GET LBA STATUS: one descriptor for the extent starting at the LBA: deallocated where the private store
/// holds discarded (zero) blocks, mapped otherwise.
pub fn get_lba_status(lun: &Lun, cdb: &[u8]) -> Outcome {
    let lba = be64(&cdb[2..10]);
    let alloc = be32(&cdb[10..14]) as usize;
    if lba >= lun.blocks() {
        return Outcome::check(Sense::LBA_OUT_OF_RANGE);
    }
    let at = lba * BLOCK_SIZE;
    let discarded = lun.disk.discarded_ranges();
    let (deallocated, end) = match discarded.iter().find(|(o, l)| at < o + l) {
        Some(&(o, l)) if o <= at => (true, o + l),
        Some(&(o, _)) => (false, o),
        None => (false, lun.disk.size()),
    };
    let first = at / BLOCK_SIZE;
    let count = (end.min(lun.disk.size()) / BLOCK_SIZE).saturating_sub(first).clamp(1, 0xffff_ffff) as u32;
    let mut d = vec![0u8; 24];
    d[0..4].copy_from_slice(&20u32.to_be_bytes());
    d[8..16].copy_from_slice(&first.to_be_bytes());
    d[16..20].copy_from_slice(&count.to_be_bytes());
    d[20] = if deallocated { 0x01 } else { 0x00 };
    super::truncate(d, alloc)
}

pub async fn synchronize_cache(lun: &Lun) -> Outcome {
    match lun.disk.flush().await {
        Ok(()) => Outcome::good(Vec::new()),
        Err(e) => Outcome::check(Sense::of(&e, true)),
    }
}
