//! The SCSI command set of a pseudo-disk LUN (SPC-4 and SBC-3 subsets), independent of the transport.
//!
//! `COMMANDS` is the one table of what is supported: opcode (and service action), CDB length, whether the
//! command writes, and its handler. `execute` does the shared checks once (LUN present, opcode known,
//! write protection), then runs the handler. REPORT SUPPORTED OPERATION CODES answers from the same table.
//! Every failure becomes sense data (`Sense`), never a dropped command. `execute_now` is the fast path of a
//! transport: a READ the page cache can answer, done without waiting.

mod copy;
pub mod reservations;
mod sbc;
mod spc;

use std::sync::Arc;

use bytes::Bytes;

use crate::PseudoDisk;
pub use reservations::Nexus;
use reservations::{Access, Reservations};

/// Logical block size the LUNs report.
pub const BLOCK_SIZE: u64 = 512;

/// SAM status codes.
pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;

/// A sense key with its additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field, when the command defines it (COMPARE AND WRITE: where the miscompare is).
    pub info: Option<u32>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq, info: None }
    }

    /// The same sense with its INFORMATION field set (and marked valid).
    pub const fn with_info(self, info: u32) -> Sense {
        Sense { info: Some(info), ..self }
    }

    pub const INVALID_OPCODE: Sense = Sense::new(0x05, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(0x05, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(0x05, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETERS: Sense = Sense::new(0x05, 0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH: Sense = Sense::new(0x05, 0x1a, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(0x07, 0x27, 0x00);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(0x03, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(0x03, 0x0c, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(0x07, 0x27, 0x07);
    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(0x0e, 0x1d, 0x00);
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(0x04, 0x44, 0x00);
    pub const DATA_PHASE_ERROR: Sense = Sense::new(0x0b, 0x4b, 0x00);
    /// UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED: a LUN or target reset from another initiator.
    pub const RESET_OCCURRED: Sense = Sense::new(0x06, 0x29, 0x03);
    /// UNIT ATTENTION, COMMANDS CLEARED BY ANOTHER INITIATOR.
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Sense = Sense::new(0x06, 0x2f, 0x00);

    /// Fixed-format sense data (SPC-4 4.5.3), 18 bytes.
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        if let Some(info) = self.info {
            s[0] |= 0x80; // VALID: the INFORMATION field holds something
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }

    /// The sense of a pseudo-disk error: one match over every error and, for a recall, every way the source
    /// failed. Data that cannot be had (a missing or corrupt chunk) is a MEDIUM ERROR, as a bad sector
    /// would be; an I/O error of a store is a MEDIUM ERROR when the device said EIO and a HARDWARE ERROR
    /// otherwise (the target could not do the work; the medium is not known to be bad).
    pub fn of(e: &crate::Error, writing: bool) -> Sense {
        use crate::source::SourceError;
        use crate::Error;
        let medium = if writing { Sense::WRITE_ERROR } else { Sense::UNRECOVERED_READ_ERROR };
        let io = |source: &std::io::Error| match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Sense::SPACE_ALLOCATION_FAILED,
            Some(libc::EIO) | Some(libc::ENODATA) | Some(libc::EBADMSG) => medium,
            _ => Sense::INTERNAL_TARGET_FAILURE,
        };
        match e {
            Error::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
            Error::ReadOnly => Sense::WRITE_PROTECTED,
            Error::Recall { source, .. } => match source {
                SourceError::Missing { .. } | SourceError::Corrupt { .. } => Sense::UNRECOVERED_READ_ERROR,
                SourceError::Io { source, .. } => match source.raw_os_error() {
                    Some(libc::EIO) | Some(libc::ENODATA) | Some(libc::EBADMSG) => Sense::UNRECOVERED_READ_ERROR,
                    _ => Sense::INTERNAL_TARGET_FAILURE,
                },
                SourceError::Other { .. } => Sense::INTERNAL_TARGET_FAILURE,
            },
            Error::Store { source, .. } => io(source),
        }
    }
}

/// One LUN: a pseudo-disk with its identity and its reservations.
pub struct Lun {
    pub disk: Arc<PseudoDisk>,
    /// Unit serial number (VPD 0x80), unique per disk.
    pub serial: String,
    /// NAA IEEE Registered Extended designator (VPD 0x83), unique per disk.
    pub naa: [u8; 16],
    pub reservations: Reservations,
    /// Results of the copies this LUN ran (EXTENDED COPY), for RECEIVE COPY RESULTS.
    pub copies: copy::CopyResults,
}

impl Lun {
    /// A LUN of `disk`; persistent reservations kept with APTPL live in the disk's folder.
    pub fn new(disk: Arc<PseudoDisk>, serial: String, naa: [u8; 16]) -> Lun {
        let reservations = Reservations::open(Some(disk.dir()));
        Lun { disk, serial, naa, reservations, copies: Default::default() }
    }

    pub fn blocks(&self) -> u64 {
        self.disk.size() / BLOCK_SIZE
    }
}

/// The result of a command: status, data for the initiator, sense on CHECK CONDITION. The data is shared,
/// so the transport can cut it into PDUs without copying it.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    pub data: Bytes,
    pub sense: Option<Sense>,
    /// Bytes of data-out the command asked for (its transfer length), for the transport's residuals.
    pub data_out_wanted: usize,
}

impl Outcome {
    pub fn good(data: Vec<u8>) -> Outcome {
        Outcome { status: GOOD, data: data.into(), sense: None, data_out_wanted: 0 }
    }
    pub fn check(sense: Sense) -> Outcome {
        Outcome { status: CHECK_CONDITION, data: Bytes::new(), sense: Some(sense), data_out_wanted: 0 }
    }
}

/// What a handler does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    TestUnitReady,
    RequestSense,
    Inquiry,
    ReportLuns,
    ReadCapacity10,
    ReadCapacity16,
    Read,
    Write,
    WriteAndVerify,
    CompareAndWrite,
    OrWrite,
    Prefetch,
    Verify,
    WriteSame,
    Unmap,
    GetLbaStatus,
    SynchronizeCache,
    ModeSense,
    StartStopUnit,
    PreventAllowMediumRemoval,
    ReportSupportedOpcodes,
    PersistentReserveIn,
    PersistentReserveOut,
    Reserve,
    Release,
    ExtendedCopy,
    ReceiveCopyResults,
}

impl Handler {
    /// What the command does, for the conflicts a reservation makes (SPC-4 Table 68, SPC-2 Table 15).
    fn access(self) -> Access {
        use Handler::*;
        match self {
            Inquiry
            | ReportLuns
            | RequestSense
            | ReportSupportedOpcodes
            | PersistentReserveIn
            | PersistentReserveOut
            | Reserve
            | Release => Access::Always,
            TestUnitReady | ReadCapacity10 | ReadCapacity16 => Access::Status,
            Read | Verify | Prefetch | GetLbaStatus | ModeSense | ReceiveCopyResults => Access::Read,
            Write
            | WriteAndVerify
            | CompareAndWrite
            | OrWrite
            | WriteSame
            | Unmap
            | SynchronizeCache
            | StartStopUnit
            | PreventAllowMediumRemoval
            | ExtendedCopy => Access::Write,
        }
    }
}

/// One supported command.
pub struct CommandInfo {
    pub opcode: u8,
    pub service_action: Option<u8>,
    pub cdb_len: u8,
    /// Changes the medium: refused on a read-only LUN.
    pub writes: bool,
    pub handler: Handler,
}

const fn cmd(opcode: u8, service_action: Option<u8>, cdb_len: u8, writes: bool, handler: Handler) -> CommandInfo {
    CommandInfo { opcode, service_action, cdb_len, writes, handler }
}

/// Every command the target supports; everything else is ILLEGAL REQUEST, INVALID OPERATION CODE.
pub const COMMANDS: &[CommandInfo] = &[
    cmd(0x00, None, 6, false, Handler::TestUnitReady),
    cmd(0x03, None, 6, false, Handler::RequestSense),
    cmd(0x08, None, 6, false, Handler::Read),
    cmd(0x0a, None, 6, true, Handler::Write),
    cmd(0x12, None, 6, false, Handler::Inquiry),
    cmd(0x16, None, 6, false, Handler::Reserve),
    cmd(0x17, None, 6, false, Handler::Release),
    cmd(0x1a, None, 6, false, Handler::ModeSense),
    cmd(0x1b, None, 6, false, Handler::StartStopUnit),
    cmd(0x1e, None, 6, false, Handler::PreventAllowMediumRemoval),
    cmd(0x25, None, 10, false, Handler::ReadCapacity10),
    cmd(0x28, None, 10, false, Handler::Read),
    cmd(0x2a, None, 10, true, Handler::Write),
    cmd(0x2e, None, 10, true, Handler::WriteAndVerify),
    cmd(0x2f, None, 10, false, Handler::Verify),
    cmd(0x34, None, 10, false, Handler::Prefetch),
    cmd(0x35, None, 10, false, Handler::SynchronizeCache),
    cmd(0x41, None, 10, true, Handler::WriteSame),
    cmd(0x42, None, 10, true, Handler::Unmap),
    cmd(0x56, None, 10, false, Handler::Reserve),
    cmd(0x57, None, 10, false, Handler::Release),
    cmd(0x5a, None, 10, false, Handler::ModeSense),
    cmd(0x5e, None, 10, false, Handler::PersistentReserveIn),
    cmd(0x5f, None, 10, false, Handler::PersistentReserveOut),
    cmd(0x83, Some(0x00), 16, true, Handler::ExtendedCopy),
    cmd(0x84, None, 16, false, Handler::ReceiveCopyResults),
    cmd(0x88, None, 16, false, Handler::Read),
    cmd(0x89, None, 16, true, Handler::CompareAndWrite),
    cmd(0x8a, None, 16, true, Handler::Write),
    cmd(0x8b, None, 16, true, Handler::OrWrite),
    cmd(0x8e, None, 16, true, Handler::WriteAndVerify),
    cmd(0x8f, None, 16, false, Handler::Verify),
    cmd(0x90, None, 16, false, Handler::Prefetch),
    cmd(0x91, None, 16, false, Handler::SynchronizeCache),
    cmd(0x93, None, 16, true, Handler::WriteSame),
    cmd(0x9e, Some(0x10), 16, false, Handler::ReadCapacity16),
    cmd(0x9e, Some(0x12), 16, false, Handler::GetLbaStatus),
    cmd(0xa0, None, 12, false, Handler::ReportLuns),
    cmd(0xa3, Some(0x0c), 12, false, Handler::ReportSupportedOpcodes),
    cmd(0xa8, None, 12, false, Handler::Read),
    cmd(0xaa, None, 12, true, Handler::Write),
    cmd(0xae, None, 12, true, Handler::WriteAndVerify),
    cmd(0xaf, None, 12, false, Handler::Verify),
];

/// Finds the table entry of a CDB.
pub fn lookup(cdb: &[u8]) -> Option<&'static CommandInfo> {
    let opcode = *cdb.first()?;
    let sa = cdb.get(1).map(|b| b & 0x1f);
    COMMANDS.iter().find(|c| c.opcode == opcode && (c.service_action.is_none() || c.service_action == sa))
}

/// The LUNs of a target, by number; LUN 0 is always present.
pub struct LunSet {
    pub luns: Vec<Arc<Lun>>,
}

impl LunSet {
    /// The I_T nexus is gone (logout, dropped connection): what it held only while it lasted goes.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for lun in &self.luns {
            lun.reservations.nexus_lost(nexus);
        }
    }

    /// A unit attention for `nexus` on `lun` (every LUN: `None`), reported with its next command.
    pub fn unit_attention(&self, lun: Option<u64>, nexus: &Nexus, sense: Sense) {
        for (n, unit) in self.luns.iter().enumerate() {
            if lun.is_none_or(|l| l == n as u64) {
                unit.reservations.raise(nexus, sense);
            }
        }
    }

    /// LOGICAL UNIT RESET of `lun` (every LUN for a target reset: `None`).
    pub fn reset(&self, lun: Option<u64>) {
        for (n, unit) in self.luns.iter().enumerate() {
            if lun.is_none_or(|l| l == n as u64) {
                unit.reservations.reset();
            }
        }
    }
}

/// Runs one command of initiator port `nexus` on `lun` of `set`, with `data_out` the data the initiator sent
/// (owned, so that a WRITE hands it to the pseudo-disk without a copy).
pub async fn execute(set: &LunSet, nexus: &Nexus, lun: u64, cdb: &[u8], data_out: Bytes) -> Outcome {
    let Some(info) = lookup(cdb) else { return Outcome::check(Sense::INVALID_OPCODE) };
    if cdb.len() < usize::from(info.cdb_len) {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    let cdb = &cdb[..usize::from(info.cdb_len)];
    // Commands that answer for the target whatever the LUN.
    match info.handler {
        Handler::ReportLuns => return spc::report_luns(set, cdb),
        Handler::Inquiry if usize::try_from(lun).map_or(true, |l| l >= set.luns.len()) => {
            return spc::inquiry_absent_lun(cdb)
        }
        Handler::RequestSense => return spc::request_sense(cdb),
        _ => {}
    }
    let Some(unit) = usize::try_from(lun).ok().and_then(|l| set.luns.get(l)) else {
        return Outcome::check(Sense::LUN_NOT_SUPPORTED);
    };
    let reports_attention = !matches!(info.handler, Handler::Inquiry | Handler::ReportLuns | Handler::RequestSense);
    if let Some(refused) = unit.reservations.admit(nexus, info.handler.access(), reports_attention) {
        return refused;
    }
    if info.writes && unit.disk.is_read_only() {
        return Outcome::check(Sense::WRITE_PROTECTED);
    }
    match info.handler {
        Handler::TestUnitReady | Handler::StartStopUnit | Handler::PreventAllowMediumRemoval => {
            Outcome::good(Vec::new())
        }
        Handler::Inquiry => spc::inquiry(unit, cdb),
        Handler::ModeSense => spc::mode_sense(unit, cdb),
        Handler::ReportSupportedOpcodes => spc::report_supported_opcodes(cdb),
        Handler::ReadCapacity10 => sbc::read_capacity10(unit),
        Handler::ReadCapacity16 => sbc::read_capacity16(unit, cdb),
        Handler::Read => sbc::read(unit, cdb).await,
        Handler::Write => sbc::write(unit, cdb, data_out).await,
        Handler::WriteAndVerify => sbc::write_and_verify(unit, cdb, data_out).await,
        Handler::CompareAndWrite => sbc::compare_and_write(unit, cdb, data_out).await,
        Handler::OrWrite => sbc::or_write(unit, cdb, data_out).await,
        Handler::Prefetch => sbc::prefetch(unit, cdb),
        Handler::Verify => sbc::verify(unit, cdb, &data_out).await,
        Handler::WriteSame => sbc::write_same(unit, cdb, &data_out).await,
        Handler::Unmap => sbc::unmap(unit, cdb, &data_out).await,
        Handler::GetLbaStatus => sbc::get_lba_status(unit, cdb),
        Handler::SynchronizeCache => sbc::synchronize_cache(unit).await,
        Handler::ReportLuns => spc::report_luns(set, cdb),
        Handler::RequestSense => spc::request_sense(cdb),
        Handler::PersistentReserveIn => unit.reservations.persistent_reserve_in(cdb),
        Handler::PersistentReserveOut => unit.reservations.persistent_reserve_out(nexus, cdb, &data_out),
        Handler::Reserve => unit.reservations.reserve(nexus, cdb),
        Handler::Release => unit.reservations.release(nexus),
        Handler::ExtendedCopy => copy::extended_copy(set, unit, nexus, cdb, &data_out).await,
        Handler::ReceiveCopyResults => copy::receive_copy_results(unit, nexus, cdb),
    }
}

/// Runs a command at once if it can complete without waiting: a READ of data the page cache holds. None
/// for anything else (including every error, which `execute` then reports), and the caller runs `execute`.
/// READ needs none of `execute`'s target-wide checks: it is never one of the commands that answer for the
/// target, and it does not write.
/// Reads of at most `max_len` bytes (by the CDB) are answered; larger ones are left to `execute`.
pub fn execute_now(set: &LunSet, lun: u64, cdb: &[u8], max_len: usize) -> Option<Outcome> {
    let info = lookup(cdb)?;
    if info.handler != Handler::Read || cdb.len() < usize::from(info.cdb_len) {
        return None;
    }
    let unit = set.luns.get(usize::try_from(lun).ok()?)?;
    if unit.reservations.engaged() {
        return None; // `execute` checks the reservations and unit attentions
    }
    sbc::read_now(unit, &cdb[..usize::from(info.cdb_len)], max_len)
}

/// Truncates data to the CDB's allocation length.
fn truncate(mut data: Vec<u8>, alloc_len: usize) -> Outcome {
    data.truncate(alloc_len);
    Outcome::good(data)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests;
