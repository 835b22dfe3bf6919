//! The iSCSI PDU codec (RFC 7143, section 11): a 48-byte Basic Header Segment, optional Additional Header
//! Segments, an optional header digest, a data segment padded to 4 bytes, an optional data digest.
//!
//! ```text
//! byte 0      I bit (0x40) | opcode (6 bits)
//! byte 1      F bit (0x80) | opcode-specific flags
//! bytes 2-3   opcode-specific
//! byte 4      TotalAHSLength, in 4-byte words
//! bytes 5-7   DataSegmentLength (big endian, 24 bits)
//! bytes 8-15  LUN or opcode-specific
//! bytes 16-19 Initiator Task Tag
//! bytes 20-47 opcode-specific
//! ```
//! Digests are CRC32C, stored little endian on the wire as RFC 7143 appendix A's test vectors show.
//!
//! The data segment is `Bytes`: a Data-In PDU carries a slice of the command's read buffer, shared rather
//! than copied, and goes to the socket as it is (see `writer.rs`).

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const BHS_LEN: usize = 48;

/// Opcodes of PDUs an initiator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiatorOp {
    NopOut,
    ScsiCommand,
    TaskManagement,
    Login,
    Text,
    DataOut,
    Logout,
    Snack,
    Unsupported(u8),
}

impl InitiatorOp {
    pub fn from_byte(b: u8) -> Self {
        match b & 0x3f {
            0x00 => InitiatorOp::NopOut,
            0x01 => InitiatorOp::ScsiCommand,
            0x02 => InitiatorOp::TaskManagement,
            0x03 => InitiatorOp::Login,
            0x04 => InitiatorOp::Text,
            0x05 => InitiatorOp::DataOut,
            0x06 => InitiatorOp::Logout,
            0x10 => InitiatorOp::Snack,
            other => InitiatorOp::Unsupported(other),
        }
    }
}

/// Opcodes of PDUs the target sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TargetOp {
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    Reject = 0x3f,
}

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

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

impl Pdu {
    /// A PDU with the given opcode and nothing else set.
    pub fn new(op: TargetOp) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = op as u8;
        Pdu { bhs, ahs: Vec::new(), data: Bytes::new() }
    }

    pub fn opcode(&self) -> InitiatorOp {
        InitiatorOp::from_byte(self.bhs[0])
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bhs[at..at + 4].try_into().expect("4 bytes"))
    }
    pub fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.bhs[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u64(&mut self, at: usize, v: u64) {
        self.bhs[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32(16, itt);
    }
    /// The LUN field (bytes 8-15) decoded as a single-level LUN (SAM-5 peripheral or flat addressing).
    pub fn lun(&self) -> u64 {
        decode_lun(self.u64_at(8))
    }
    pub fn data_segment_length(&self) -> usize {
        (usize::from(self.bhs[5]) << 16) | (usize::from(self.bhs[6]) << 8) | usize::from(self.bhs[7])
    }

    /// Reads one PDU. `max_data` bounds the data segment (our MaxRecvDataSegmentLength, or the login limit).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R, digests: Digests, max_data: usize) -> Result<Pdu, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        r.read_exact(&mut bhs).await?;
        let ahs_len = usize::from(bhs[4]) * 4;
        let data_len = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
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

    #[test]
    fn luns() {
        for lun in [0u64, 1, 255, 256, 1000] {
            assert_eq!(decode_lun(encode_lun(lun)), lun);
        }
    }
}
