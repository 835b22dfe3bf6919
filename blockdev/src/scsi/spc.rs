//! Primary commands (SPC-4): INQUIRY and its VPD pages, REPORT LUNS, MODE SENSE, REQUEST SENSE, REPORT
//! SUPPORTED OPERATION CODES.

use super::{be16, be32, truncate, Lun, LunSet, Outcome, Sense, BLOCK_SIZE, COMMANDS};
use crate::iscsi::pdu::encode_lun;

const VENDOR: &[u8; 8] = b"LIVEMNT ";
const PRODUCT: &[u8; 16] = b"PSEUDO-DISK     ";
const REVISION: &[u8; 4] = b"0001";
/// Largest transfer we accept in one command, in blocks (32 MiB).
pub const MAX_TRANSFER_BLOCKS: u32 = 65536;
/// Largest UNMAP in one descriptor and in one command, in blocks.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest COMPARE AND WRITE, in blocks (the field is one byte; hypervisors use one block).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

pub fn inquiry(lun: &Lun, cdb: &[u8]) -> Outcome {
    let evpd = cdb[1] & 0x01 != 0;
    let page = cdb[2];
    let alloc = usize::from(be16(&cdb[3..5]));
    if !evpd {
        if page != 0 {
            return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
        }
        return truncate(standard_inquiry(0x00), alloc);
    }
    let body: Vec<u8> = match page {
        0x00 => vec![0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2],
        0x80 => lun.serial.as_bytes().to_vec(),
        0x83 => {
            let mut d = Vec::new();
            // NAA IEEE Registered Extended, binary, associated with the logical unit.
            d.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
            d.extend_from_slice(&lun.naa);
            let t10 = t10_designator(lun);
            d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
            d.extend_from_slice(&t10);
            d
        }
        0x86 => {
            // Extended INQUIRY data: SIMPLE tasks only (a command tagged ORDERED or HEAD OF QUEUE runs as a
            // SIMPLE one, so those are not announced); V_SUP: writes sit in a volatile cache until
            // SYNCHRONIZE CACHE or FUA.
            let mut d = vec![0u8; 60];
            d[1] = 0x01;
            d[2] = 0x01;
            d
        }
        0x8f => {
            // Third-party copy: one Supported Commands descriptor (EXTENDED COPY LID1, RECEIVE COPY RESULTS
            // COPY STATUS and OPERATING PARAMETERS), padded to a multiple of four bytes.
            let commands = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
            let mut desc = vec![0x00, 0x01, 0, 0, commands.len() as u8];
            desc.extend_from_slice(&commands);
            desc.resize(desc.len().next_multiple_of(4), 0);
            let len = (desc.len() - 4) as u16;
            desc[2..4].copy_from_slice(&len.to_be_bytes());
            desc
        }
        0xb0 => {
            let mut d = vec![0u8; 60];
            // WSNZ: a WRITE SAME of zero blocks is refused. (With zero meaning "to the end of the LUN",
            // libiscsi's WriteSame10.UnmapUntilEnd expects an UNMAP of non-zero data to read back as zeros;
            // that data is the initiator's, and is written, not dropped.)
            d[0] = 0x01;
            d[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
            d[2..4].copy_from_slice(&8u16.to_be_bytes()); // optimal granularity: 4 KiB
            d[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
            d[8..12].copy_from_slice(&2048u32.to_be_bytes()); // optimal transfer: 1 MiB
            d[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
            d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
            d[24..28].copy_from_slice(&8u32.to_be_bytes()); // optimal unmap granularity
            d[32..40].copy_from_slice(&u64::from(MAX_UNMAP_BLOCKS).to_be_bytes()); // max WRITE SAME length
            d
        }
        0xb1 => {
            let mut d = vec![0u8; 60];
            d[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
            d
        }
        0xb2 => {
            // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type: thin.
            vec![0x00, 0xe0 | 0x04, 0x02, 0x00]
        }
        _ => return Outcome::check(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut out = vec![0x00, page, 0, 0];
    out[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    truncate(out, alloc)
}

/// INQUIRY of a LUN that does not exist: peripheral qualifier 3 (SPC-4 6.6.2).
pub fn inquiry_absent_lun(cdb: &[u8]) -> Outcome {
    if cdb[1] & 0x01 != 0 {
        return Outcome::check(Sense::LUN_NOT_SUPPORTED);
    }
    truncate(standard_inquiry(0x7f), usize::from(be16(&cdb[3..5])))
}

/// The T10 vendor ID designator of a LUN (VPD 0x83): vendor, then the serial (ASCII).
pub fn t10_designator(lun: &Lun) -> Vec<u8> {
    let mut t10 = VENDOR.to_vec();
    t10.extend_from_slice(lun.serial.as_bytes());
    t10
}

fn standard_inquiry(peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; 66];
    d[0] = peripheral;
    d[2] = 0x06; // SPC-4
    d[3] = 0x02; // response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x08; // 3PC: third-party copy (EXTENDED COPY)
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI.
    for (i, v) in [0x00a0u16, 0x0460, 0x04c0, 0x0960].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

pub fn report_luns(set: &LunSet, cdb: &[u8]) -> Outcome {
    let alloc = be32(&cdb[6..10]) as usize;
    if alloc < 16 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    if cdb[2] > 2 && !(0x10..=0x12).contains(&cdb[2]) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&((set.luns.len() * 8) as u32).to_be_bytes());
    for n in 0..set.luns.len() {
        d.extend_from_slice(&encode_lun(n as u64).to_be_bytes());
    }
    truncate(d, alloc)
}

pub fn request_sense(cdb: &[u8]) -> Outcome {
    if cdb[1] & 0x01 != 0 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB); // descriptor format is not offered
    }
    // Sense is returned with each CHECK CONDITION (autosense): nothing is pending here.
    let s = Sense::new(0, 0, 0);
    truncate(s.fixed(), usize::from(cdb[4]))
}

pub fn mode_sense(lun: &Lun, cdb: &[u8]) -> Outcome {
    let ten = cdb[0] == 0x5a;
    let dbd = cdb[1] & 0x08 != 0;
    let pc = cdb[2] >> 6;
    let page = cdb[2] & 0x3f;
    let subpage = cdb[3];
    let alloc = if ten { usize::from(be16(&cdb[7..9])) } else { usize::from(cdb[4]) };
    if pc == 3 {
        return Outcome::check(Sense::new(0x05, 0x39, 0x00)); // saving parameters not supported
    }
    if subpage != 0 && subpage != 0xff {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let changeable = pc == 1;
    let caching = {
        let mut p = vec![0u8; 20];
        p[0] = 0x08;
        p[1] = 18;
        if !changeable {
            p[2] = 0x04; // WCE: writes are cached until SYNCHRONIZE CACHE or FUA
        }
        p
    };
    let control = {
        let mut p = vec![0u8; 12];
        p[0] = 0x0a;
        p[1] = 10;
        if !changeable {
            p[2] = 0x02; // GLTSD
                         // QAM 1: commands may run in any order. Task attributes are not honoured and a read answered from
                         // the page cache may pass an earlier write still waiting for its data; initiators order what
                         // depends on what (Linux sends every command SIMPLE).
            p[3] = 0x10;
            p[5] = 0x40; // TAS
            p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
        }
        p
    };
    let pages: Vec<u8> = match page {
        0x08 => caching,
        0x0a => control,
        0x3f => [caching, control].concat(),
        _ => return Outcome::check(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut block_desc = Vec::new();
    if !dbd {
        let blocks = lun.blocks().min(0xffff_ffff) as u32;
        block_desc.extend_from_slice(&blocks.to_be_bytes());
        block_desc.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes()); // density 0, block length
    }
    // Device-specific parameter: WP for read-only LUNs; DPOFUA since FUA is honoured (and DPO ignored).
    let wp = if lun.disk.is_read_only() { 0x80 } else { 0x00 } | 0x10;
    let mut out = if ten {
        let mut h = vec![0u8; 8];
        h[3] = wp;
        h[6..8].copy_from_slice(&(block_desc.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, wp, block_desc.len() as u8]
    };
    out.extend_from_slice(&block_desc);
    out.extend_from_slice(&pages);
    if ten {
        let len = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        out[0] = (out.len() - 1) as u8;
    }
    truncate(out, alloc)
}

pub fn report_supported_opcodes(cdb: &[u8]) -> Outcome {
    let options = cdb[2] & 0x07;
    let rctd = cdb[2] & 0x80 != 0;
    let alloc = be32(&cdb[6..10]) as usize;
    let opcode = cdb[3];
    let sa = be16(&cdb[4..6]);
    let timeouts = |out: &mut Vec<u8>| {
        if rctd {
            out.extend_from_slice(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
    };
    match options {
        0 => {
            let mut list = Vec::new();
            for c in COMMANDS {
                list.push(c.opcode);
                list.push(0);
                list.extend_from_slice(&u16::from(c.service_action.unwrap_or(0)).to_be_bytes());
                list.push(0);
                list.push(if c.service_action.is_some() { 0x01 } else { 0 } | if rctd { 0x02 } else { 0 });
                list.extend_from_slice(&u16::from(c.cdb_len).to_be_bytes());
                timeouts(&mut list);
            }
            let mut out = (list.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&list);
            truncate(out, alloc)
        }
        1..=3 => {
            let found = COMMANDS.iter().find(|c| {
                c.opcode == opcode
                    && match options {
                        1 => c.service_action.is_none(),
                        2 => c.service_action == Some(sa as u8) && sa < 0x20,
                        _ => c.service_action.is_none() || c.service_action == Some(sa as u8),
                    }
            });
            if options == 1 && COMMANDS.iter().any(|c| c.opcode == opcode && c.service_action.is_some()) {
                return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
            }
            if options == 2 && COMMANDS.iter().any(|c| c.opcode == opcode && c.service_action.is_none()) {
                return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
            }
            let mut out = vec![0u8, 0, 0, 0];
            match found {
                None => out[1] = 0x01, // not supported
                Some(c) => {
                    out[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    let len = usize::from(c.cdb_len);
                    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                    let mut usage = vec![0xffu8; len];
                    usage[0] = c.opcode;
                    if let Some(sa) = c.service_action {
                        usage[1] = sa | 0xe0;
                    }
                    usage[len - 1] = 0x07; // control byte: NACA and link bits are not used
                    out.extend_from_slice(&usage);
                    timeouts(&mut out);
                }
            }
            truncate(out, alloc)
        }
        _ => Outcome::check(Sense::INVALID_FIELD_IN_CDB),
    }
}
