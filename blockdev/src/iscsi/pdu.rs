//! The iSCSI PDU codec (RFC 7143, section 11): a 48-byte Basic Header Segment, optional Additional Header
//! Segments, an optional header digest, a data segment padded to 4 bytes, an optional data digest; and the
//! BHS fields by name. No other file reads or writes the header by offset: the layout lives here only.
//!
//! ```text
//! byte 0      I bit (0x40) | opcode (6 bits)
//! byte 1      F bit (0x80) | opcode-specific flags (R/W of a command, O/U/S of Data-In, T/C/CSG/NSG of login,
//!             the function of a task management request)
//! byte 2      Reject reason, task management response, SCSI response; login: version max (request)
//! byte 3      SCSI status (SCSI response, Data-In with S); login: version min (request), active (response)
//! byte 4      TotalAHSLength, in 4-byte words
//! bytes 5-7   DataSegmentLength (big endian, 24 bits)
//! bytes 8-15  LUN; login: ISID (8-13) and TSIH (14-15)
//! bytes 16-19 Initiator Task Tag
//! bytes 20-23 SCSI command: expected data transfer length; task management: referenced task tag;
//!             NOP, Text, Data-In/Out, R2T: target transfer tag
//! bytes 24-27 CmdSN (initiator to target), StatSN (target to initiator)
//! bytes 28-31 ExpStatSN (initiator to target), ExpCmdSN (target to initiator)
//! bytes 32-35 MaxCmdSN (target to initiator); a SCSI command's CDB starts here
//! bytes 36-39 DataSN (Data-In/Out), R2TSN (R2T), ExpDataSN (SCSI response); login response: status
//!             class (36) and detail (37)
//! bytes 40-43 buffer offset (Data-In/Out, R2T)
//! bytes 44-47 residual count (Data-In, SCSI response), desired data transfer length (R2T);
//!             bytes 32-47 of a SCSI command are its 16-byte CDB
//! ```
//! Digests are CRC32C, stored little endian on the wire as RFC 7143 appendix A's test vectors show.
//!
//! The data segment is `Bytes`: a Data-In PDU carries a slice of the command's read buffer, shared rather
//! than copied, and goes to the socket as it is (see `writer.rs`).

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const BHS_LEN: usize = 48;
/// The tag that means "none" (ITT of unsolicited target PDUs, TTT of PDUs that want no answer).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

pub use super::codes::{
    flag, CommandResponse, InitiatorOp, RejectReason, Residual, TargetOp, TmfFunction, TmfResponse,
};

/// Why a PDU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest was wrong: the header is intact, so the PDU can be rejected and the connection kept.
    #[error("data digest mismatch")]
    DataDigest(Box<Pdu>),
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Bytes,
}

/// Digests in use on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |crc, p| crc32c::crc32c_append(crc, p))
}

fn data_segment_length(bhs: &[u8; BHS_LEN]) -> usize {
    (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

impl Pdu {
    /// A PDU with the given opcode and nothing else set.
    pub fn new(op: TargetOp) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = op.code();
        Pdu { bhs, ahs: Vec::new(), data: Bytes::new() }
    }

    /// A request as an initiator sends it (for tests that play the initiator).
    pub fn request(op: InitiatorOp, immediate: bool) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = op.code() | if immediate { flag::IMMEDIATE } else { 0 };
        Pdu { bhs, ahs: Vec::new(), data: Bytes::new() }
    }

    // Raw access, private: the rest of the target goes through the named fields below.
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.bhs[at], self.bhs[at + 1], self.bhs[at + 2], self.bhs[at + 3]])
    }
    fn set_u16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    // Byte 0.
    pub fn opcode(&self) -> InitiatorOp {
        InitiatorOp::from_byte(self.bhs[0])
    }
    /// The opcode read as one the target sends (for PDUs on their way out).
    pub fn target_opcode(&self) -> TargetOp {
        TargetOp::from_byte(self.bhs[0])
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & flag::IMMEDIATE != 0
    }

    // Byte 1.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, flags: u8) {
        self.bhs[1] = flags;
    }
    /// Sets more bits of byte 1, keeping those already set.
    pub fn add_flags(&mut self, flags: u8) {
        self.bhs[1] |= flags;
    }
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & flag::FINAL != 0
    }
    /// SCSI command: R, the command reads.
    pub fn reads(&self) -> bool {
        self.bhs[1] & flag::READ != 0
    }
    /// SCSI command: W, the command writes.
    pub fn writes(&self) -> bool {
        self.bhs[1] & flag::WRITE != 0
    }
    /// Task management request: the function.
    pub fn tmf_function(&self) -> TmfFunction {
        TmfFunction::from_byte(self.bhs[1])
    }
    /// Login: T, the initiator wants to move to the next stage.
    pub fn transit(&self) -> bool {
        self.bhs[1] & flag::TRANSIT != 0
    }
    /// Login: C, more text follows.
    pub fn continues(&self) -> bool {
        self.bhs[1] & flag::CONTINUE != 0
    }
    /// Login: the current stage code (CSG).
    pub fn current_stage(&self) -> u8 {
        (self.bhs[1] >> flag::CSG_SHIFT) & flag::STAGE_MASK
    }
    /// Login: the next stage code (NSG), meaningful with T.
    pub fn next_stage(&self) -> u8 {
        self.bhs[1] & flag::STAGE_MASK
    }
    /// Login response: the stage codes and T (set with `next`, which is then the next stage).
    pub fn set_login_stages(&mut self, current: u8, next: Option<u8>) {
        let mut b = (current & flag::STAGE_MASK) << flag::CSG_SHIFT;
        if let Some(n) = next {
            b |= flag::TRANSIT | (n & flag::STAGE_MASK);
        }
        self.bhs[1] = b;
    }
    /// Data-In and SCSI response: the O or U bit and the residual count.
    pub fn set_residual(&mut self, residual: Residual) {
        let (bit, count) = match residual {
            Residual::None => (0, 0),
            Residual::Overflow(n) => (flag::OVERFLOW, n),
            Residual::Underflow(n) => (flag::UNDERFLOW, n),
        };
        self.bhs[1] = (self.bhs[1] & !(flag::OVERFLOW | flag::UNDERFLOW)) | bit;
        self.set_u32(44, count);
    }
    pub fn residual(&self) -> Residual {
        let count = self.u32_at(44);
        if self.bhs[1] & flag::OVERFLOW != 0 {
            Residual::Overflow(count)
        } else if self.bhs[1] & flag::UNDERFLOW != 0 {
            Residual::Underflow(count)
        } else {
            Residual::None
        }
    }

    // Bytes 2 and 3.
    pub fn reject_reason(&self) -> RejectReason {
        RejectReason::from_byte(self.bhs[2])
    }
    pub fn set_reject_reason(&mut self, reason: RejectReason) {
        self.bhs[2] = reason.code();
    }
    pub fn tmf_response(&self) -> TmfResponse {
        TmfResponse::from_byte(self.bhs[2])
    }
    pub fn set_tmf_response(&mut self, response: TmfResponse) {
        self.bhs[2] = response.code();
    }
    pub fn command_response(&self) -> CommandResponse {
        CommandResponse::from_byte(self.bhs[2])
    }
    pub fn set_command_response(&mut self, response: CommandResponse) {
        self.bhs[2] = response.code();
    }
    /// SCSI response, or Data-In with the S bit.
    pub fn scsi_status(&self) -> u8 {
        self.bhs[3]
    }
    pub fn set_scsi_status(&mut self, status: u8) {
        self.bhs[3] = status;
    }
    /// Login request: the highest and lowest protocol versions the initiator speaks.
    pub fn version_max_min(&self) -> (u8, u8) {
        (self.bhs[2], self.bhs[3])
    }

    // Bytes 4-7 are set by `encode_header` from `ahs` and `data`.
    pub fn data_segment_length(&self) -> usize {
        data_segment_length(&self.bhs)
    }

    // Bytes 8-15.
    /// The LUN field (bytes 8-15) decoded as a single-level LUN (SAM-5 peripheral or flat addressing).
    pub fn lun(&self) -> u64 {
        decode_lun(self.lun_field())
    }
    /// The LUN field as it is on the wire (echoed in answers).
    pub fn lun_field(&self) -> u64 {
        u64::from_be_bytes([
            self.bhs[8],
            self.bhs[9],
            self.bhs[10],
            self.bhs[11],
            self.bhs[12],
            self.bhs[13],
            self.bhs[14],
            self.bhs[15],
        ])
    }
    pub fn set_lun_field(&mut self, raw: u64) {
        self.bhs[8..16].copy_from_slice(&raw.to_be_bytes());
    }
    /// Login: the initiator's part of the session identifier.
    pub fn isid(&self) -> [u8; 6] {
        [self.bhs[8], self.bhs[9], self.bhs[10], self.bhs[11], self.bhs[12], self.bhs[13]]
    }
    pub fn set_isid(&mut self, isid: [u8; 6]) {
        self.bhs[8..14].copy_from_slice(&isid);
    }
    /// Login: the target's part of the session identifier (0 in a request for a new session).
    pub fn tsih(&self) -> u16 {
        self.u16_at(14)
    }
    pub fn set_tsih(&mut self, tsih: u16) {
        self.set_u16(14, tsih);
    }

    // Bytes 16-19.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32(16, itt);
    }

    // Bytes 20-23, by opcode.
    /// SCSI command: the expected data transfer length.
    pub fn expected_length(&self) -> u32 {
        self.u32_at(20)
    }
    pub fn set_expected_length(&mut self, len: u32) {
        self.set_u32(20, len);
    }
    /// NOP, Text, Data-In/Out, R2T: the target transfer tag.
    pub fn ttt(&self) -> u32 {
        self.u32_at(20)
    }
    pub fn set_ttt(&mut self, ttt: u32) {
        self.set_u32(20, ttt);
    }
    /// Task management: the ITT of the task to abort.
    pub fn referenced_task_tag(&self) -> u32 {
        self.u32_at(20)
    }

    // Bytes 24-31: initiator to target.
    pub fn cmd_sn(&self) -> u32 {
        self.u32_at(24)
    }
    pub fn set_cmd_sn(&mut self, sn: u32) {
        self.set_u32(24, sn);
    }
    pub fn exp_stat_sn(&self) -> u32 {
        self.u32_at(28)
    }

    // Bytes 24-35: target to initiator.
    pub fn stat_sn(&self) -> u32 {
        self.u32_at(24)
    }
    pub fn set_stat_sn(&mut self, sn: u32) {
        self.set_u32(24, sn);
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        self.u32_at(28)
    }
    pub fn set_exp_cmd_sn(&mut self, sn: u32) {
        self.set_u32(28, sn);
    }
    pub fn max_cmd_sn(&self) -> u32 {
        self.u32_at(32)
    }
    pub fn set_max_cmd_sn(&mut self, sn: u32) {
        self.set_u32(32, sn);
    }

    // Bytes 32-47 of a SCSI command.
    pub fn cdb(&self) -> &[u8] {
        &self.bhs[32..48]
    }
    pub fn set_cdb(&mut self, cdb: &[u8]) {
        let n = cdb.len().min(16);
        self.bhs[32..32 + n].copy_from_slice(&cdb[..n]);
    }

    // Bytes 36-47, by opcode.
    /// Data-In/Out: the PDU's number in its sequence.
    pub fn data_sn(&self) -> u32 {
        self.u32_at(36)
    }
    pub fn set_data_sn(&mut self, sn: u32) {
        self.set_u32(36, sn);
    }
    /// R2T: the R2T's number within its command.
    pub fn set_r2t_sn(&mut self, sn: u32) {
        self.set_u32(36, sn);
    }
    /// SCSI response: the number of Data-In PDUs sent before it.
    pub fn set_exp_data_sn(&mut self, sn: u32) {
        self.set_u32(36, sn);
    }
    /// Data-In/Out, R2T: where the PDU's data sits in the command's buffer.
    pub fn buffer_offset(&self) -> u32 {
        self.u32_at(40)
    }
    pub fn set_buffer_offset(&mut self, offset: u32) {
        self.set_u32(40, offset);
    }
    /// R2T: how many bytes the initiator is to send.
    pub fn set_desired_length(&mut self, len: u32) {
        self.set_u32(44, len);
    }
    /// Login response: status class and detail.
    pub fn login_status(&self) -> (u8, u8) {
        (self.bhs[36], self.bhs[37])
    }
    pub fn set_login_status(&mut self, class: u8, detail: u8) {
        self.bhs[36] = class;
        self.bhs[37] = detail;
    }

    /// Reads one PDU. `max_data` bounds the data segment (our MaxRecvDataSegmentLength, or the login limit).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R, digests: Digests, max_data: usize) -> Result<Pdu, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        r.read_exact(&mut bhs).await?;
        let ahs_len = usize::from(bhs[4]) * 4;
        let data_len = data_segment_length(&bhs);
        if data_len > max_data {
            return Err(PduError::TooLong { len: data_len, max: max_data });
        }
        let mut ahs = vec![0u8; ahs_len];
        r.read_exact(&mut ahs).await?;
        if digests.header {
            let mut d = [0u8; 4];
            r.read_exact(&mut d).await?;
            if u32::from_le_bytes(d) != crc32c(&[&bhs, &ahs]) {
                return Err(PduError::HeaderDigest);
            }
        }
        let mut data = vec![0u8; data_len + pad4(data_len)];
        r.read_exact(&mut data).await?;
        let mut bad_data = false;
        if digests.data && data_len > 0 {
            let mut d = [0u8; 4];
            r.read_exact(&mut d).await?;
            bad_data = u32::from_le_bytes(d) != crc32c(&[&data]);
        }
        data.truncate(data_len);
        let pdu = Pdu { bhs, ahs, data: data.into() };
        if bad_data {
            return Err(PduError::DataDigest(Box::new(pdu)));
        }
        Ok(pdu)
    }

    /// Sets the length fields and appends the header segment (BHS, AHS, header digest) to `out`. The data
    /// segment follows it on the wire, then `data_trailer`.
    pub fn encode_header(&mut self, out: &mut Vec<u8>, digests: Digests) {
        self.bhs[4] = (self.ahs.len() / 4) as u8;
        let len = self.data.len();
        self.bhs[5] = (len >> 16) as u8;
        self.bhs[6] = (len >> 8) as u8;
        self.bhs[7] = len as u8;
        out.extend_from_slice(&self.bhs);
        out.extend_from_slice(&self.ahs);
        if digests.header {
            out.extend_from_slice(&crc32c(&[&self.bhs, &self.ahs]).to_le_bytes());
        }
    }

    /// What follows the data segment on the wire: its padding to 4 bytes and its digest (nothing when the
    /// segment is empty). Returned as a buffer and the length used of it.
    pub fn data_trailer(&self, digests: Digests) -> ([u8; 7], usize) {
        let mut t = [0u8; 7];
        let len = self.data.len();
        if len == 0 {
            return (t, 0);
        }
        let pad = pad4(len);
        if digests.data {
            let crc = crc32c(&[&self.data, &t[..pad]]);
            t[pad..pad + 4].copy_from_slice(&crc.to_le_bytes());
            (t, pad + 4)
        } else {
            (t, pad)
        }
    }

    /// Encodes the PDU for the wire (setting its length fields).
    pub fn encode(&mut self, digests: Digests) -> Vec<u8> {
        let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + 4 + self.data.len() + 7);
        self.encode_header(&mut out, digests);
        out.extend_from_slice(&self.data);
        let (trailer, n) = self.data_trailer(digests);
        out.extend_from_slice(&trailer[..n]);
        out
    }

    /// Writes the PDU in one piece. For the login phase, whose PDUs are small; full feature phase batches
    /// its PDUs in `writer.rs`.
    pub async fn write<W: AsyncWrite + Unpin>(&mut self, w: &mut W, digests: Digests) -> io::Result<()> {
        w.write_all(&self.encode(digests)).await
    }
}

/// Decodes the 8-byte LUN field: peripheral device addressing (00b) and flat space addressing (01b).
pub fn decode_lun(raw: u64) -> u64 {
    let first = (raw >> 48) as u16;
    match first >> 14 {
        0 => u64::from(first & 0xff),
        1 => u64::from(first & 0x3fff),
        _ => u64::MAX,
    }
}

/// Encodes a LUN for REPORT LUNS and PDUs: peripheral addressing below 256, flat addressing above.
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7143 appendix A.4: CRC32C test vectors.
    #[test]
    fn crc32c_vectors_of_the_rfc() {
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8a9136aa);
        assert_eq!(crc32c(&[&[0xffu8; 32]]), 0x62a8ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&[&inc]), 0x46dd794e);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&[&dec]), 0x113fdb5c);
        // The RFC shows the bytes on the wire: little endian.
        assert_eq!(crc32c(&[&[0u8; 32]]).to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn roundtrip_with_digests_and_padding() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for digests in [Digests::default(), Digests { header: true, data: true }] {
            let mut p = Pdu::new(TargetOp::DataIn);
            p.set_itt(0x1234);
            p.data = vec![7u8; 13].into();
            let bytes = p.encode(digests);
            let got = rt.block_on(Pdu::read(&mut &bytes[..], digests, 1 << 20)).unwrap();
            assert_eq!(got, p);
            let mut bad = bytes.clone();
            bad[BHS_LEN + if digests.header { 4 } else { 0 } + 2] ^= 1;
            let r = rt.block_on(Pdu::read(&mut &bad[..], digests, 1 << 20));
            if digests.data {
                assert!(matches!(r, Err(PduError::DataDigest(_))));
            }
            let mut bad = bytes.clone();
            bad[20] ^= 1;
            let r = rt.block_on(Pdu::read(&mut &bad[..], digests, 1 << 20));
            if digests.header {
                assert!(matches!(r, Err(PduError::HeaderDigest)));
            }
        }
    }

    #[test]
    fn limits_and_truncation() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut p = Pdu::new(TargetOp::DataIn);
        p.data = vec![1u8; 1000].into();
        let bytes = p.encode(Digests::default());
        assert!(matches!(
            rt.block_on(Pdu::read(&mut &bytes[..], Digests::default(), 999)),
            Err(PduError::TooLong { .. })
        ));
        for cut in [0, 10, 47, 48, 100] {
            assert!(rt.block_on(Pdu::read(&mut &bytes[..cut], Digests::default(), 1 << 20)).is_err());
        }
    }

    /// The named fields land at the offsets of RFC 7143 section 11 (the layout at the top of this file).
    #[test]
    fn named_fields_sit_where_the_rfc_puts_them() {
        let be = |p: &Pdu, at: usize| u32::from_be_bytes(p.bhs[at..at + 4].try_into().unwrap());
        let mut p = Pdu::new(TargetOp::DataIn);
        p.set_flags(flag::FINAL | flag::STATUS);
        p.set_itt(1);
        p.set_ttt(2);
        p.set_stat_sn(3);
        p.set_exp_cmd_sn(4);
        p.set_max_cmd_sn(5);
        p.set_data_sn(6);
        p.set_buffer_offset(7);
        p.set_residual(Residual::Underflow(8));
        p.set_scsi_status(0x02);
        assert_eq!(p.bhs[0], 0x25);
        assert_eq!(p.bhs[1], 0x80 | 0x01 | 0x02);
        assert_eq!(p.bhs[3], 0x02);
        let fields: Vec<u32> = [16, 20, 24, 28, 32, 36, 40, 44].iter().map(|&at| be(&p, at)).collect();
        assert_eq!(fields, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.residual(), Residual::Underflow(8));
        p.set_residual(Residual::Overflow(9));
        assert_eq!((p.bhs[1] & 0x06, be(&p, 44)), (0x04, 9), "O replaces U");

        let mut r = Pdu::new(TargetOp::Reject);
        r.set_reject_reason(RejectReason::ProtocolError);
        assert_eq!((r.bhs[0], r.bhs[2]), (0x3f, 0x04));

        let mut login = Pdu::request(InitiatorOp::Login, true);
        login.set_login_stages(1, Some(3));
        login.set_isid([1, 2, 3, 4, 5, 6]);
        login.set_tsih(0x0708);
        login.set_cmd_sn(9);
        assert_eq!((login.bhs[0], login.bhs[1]), (0x43, 0x80 | 0x04 | 0x03));
        assert_eq!(&login.bhs[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(login.transit() && !login.continues() && login.immediate());
        assert_eq!((login.current_stage(), login.next_stage(), login.cmd_sn()), (1, 3, 9));
        login.set_login_status(2, 1);
        assert_eq!(&login.bhs[36..38], &[2, 1]);

        let mut cmd = Pdu::request(InitiatorOp::ScsiCommand, false);
        cmd.set_flags(flag::FINAL | flag::READ);
        cmd.set_expected_length(512);
        cmd.set_cdb(&[0x28, 0, 0, 0, 0, 1]);
        cmd.set_lun_field(encode_lun(3));
        assert!(cmd.reads() && !cmd.writes() && !cmd.immediate());
        assert_eq!((be(&cmd, 20), cmd.bhs[32], cmd.bhs[37], cmd.lun()), (512, 0x28, 1, 3));
        assert_eq!(cmd.cdb().len(), 16);
    }

    #[test]
    fn luns() {
        for lun in [0u64, 1, 255, 256, 1000] {
            assert_eq!(decode_lun(encode_lun(lun)), lun);
        }
    }
}
