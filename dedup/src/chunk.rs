//! Chunk ids and the stored chunk format.
//!
//! A chunk's id is the BLAKE3 hash of its plain bytes. A stored chunk is self-describing and verifiable on
//! its own:
//!
//! ```text
//! offset size  field
//! 0      4     magic "LMCK"
//! 4      1     format version (1)
//! 5      1     codec: 0 = stored plain, 1 = zstd
//! 6      2     reserved, zero
//! 8      4     plain length (little endian)
//! 12     4     payload length (little endian)
//! 16     ...   payload
//! ```
//!
//! Chunks whose bytes are all zero are never stored: the index records them with the all-zero id.

use std::fmt;

use crate::error::{Error, Result};
use crate::formats::{CHUNK_FORMAT_VERSION, CHUNK_HEADER_LEN, CHUNK_MAGIC};

/// BLAKE3 of a chunk's plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id the index uses for a chunk that is all zeros (and is not stored).
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    /// Computes the id of plain chunk bytes. The only place ids are computed.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        *self == ChunkId::ZERO
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(ChunkId(b))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// How a chunk's payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Plain,
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::Plain => 0,
            Codec::Zstd => 1,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Codec::Plain),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// True when every byte is zero. This runs on every chunk of every backup: bytes are OR-ed 64 at a time (which
/// the compiler turns into vector instructions) and the scan stops at the first block that is not zero. Measured
/// on an all-zero MiB: about 100 GB/s, against 27 GB/s for a check a u64 word at a time through `align_to`.
pub fn is_all_zero(data: &[u8]) -> bool {
    let blocks = data.chunks_exact(64);
    let tail = blocks.remainder();
    blocks.into_iter().all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0) && tail.iter().all(|&b| b == 0)
}

/// zstd level for stored chunks: level 3 compresses Debian disks about as well as restic's default while
/// keeping both cores near 400 MB/s of input.
pub const ZSTD_LEVEL: i32 = 3;

/// Encodes plain chunk bytes into the stored format (header plus zstd payload, or the plain bytes when
/// compression does not help).
pub fn encode(plain: &[u8], compressor: &mut zstd::bulk::Compressor<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(plain, compressor, &mut out);
    out
}

/// `encode` into a buffer the caller reuses from chunk to chunk (it is only cleared when it must grow).
pub fn encode_into(plain: &[u8], compressor: &mut zstd::bulk::Compressor<'_>, out: &mut Vec<u8>) {
    let needed = CHUNK_HEADER_LEN + zstd::zstd_safe::compress_bound(plain.len());
    if out.len() < needed {
        out.resize(needed, 0);
    }
    let compressed_len = compressor.compress_to_buffer(plain, &mut out[CHUNK_HEADER_LEN..needed]).ok();
    let (codec, payload_len) = match compressed_len {
        Some(n) if n < plain.len() => (Codec::Zstd, n),
        _ => {
            out[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + plain.len()].copy_from_slice(plain);
            (Codec::Plain, plain.len())
        }
    };
    out.truncate(CHUNK_HEADER_LEN + payload_len);
    write_header(&mut out[..CHUNK_HEADER_LEN], codec, plain.len(), payload_len);
}

fn write_header(h: &mut [u8], codec: Codec, plain_len: usize, payload_len: usize) {
    h[0..4].copy_from_slice(&CHUNK_MAGIC);
    h[4] = CHUNK_FORMAT_VERSION;
    h[5] = codec.to_byte();
    h[6..8].copy_from_slice(&[0, 0]);
    h[8..12].copy_from_slice(&(plain_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(payload_len as u32).to_le_bytes());
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<std::io::Result<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new());
}

/// Decodes a stored chunk into `out` (resized to the plain length) and checks that its hash is `id`.
/// Damage of any kind is `ChunkCorrupt`, never wrong bytes.
pub fn decode_verified(id: &ChunkId, stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let corrupt = |reason: String| Error::ChunkCorrupt { id: *id, reason };
    if stored.len() < CHUNK_HEADER_LEN {
        return Err(corrupt(format!("{} bytes is shorter than the chunk header", stored.len())));
    }
    if stored[0..4] != CHUNK_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    if stored[4] != CHUNK_FORMAT_VERSION {
        return Err(corrupt(format!("unknown format version {}", stored[4])));
    }
    let codec = Codec::from_byte(stored[5]).ok_or_else(|| corrupt(format!("unknown codec {}", stored[5])))?;
    let plain_len = u32::from_le_bytes(stored[8..12].try_into().expect("4 bytes")) as usize;
    let payload_len = u32::from_le_bytes(stored[12..16].try_into().expect("4 bytes")) as usize;
    let payload = &stored[CHUNK_HEADER_LEN..];
    if payload.len() != payload_len {
        return Err(corrupt(format!("payload is {} bytes, header says {payload_len}", payload.len())));
    }
    if plain_len > crate::formats::MAX_CHUNK_SIZE as usize {
        return Err(corrupt(format!("plain length {plain_len} is larger than any chunk")));
    }
    match codec {
        Codec::Plain => {
            if plain_len != payload_len {
                return Err(corrupt("plain chunk with mismatched lengths".into()));
            }
            out.clear();
            out.extend_from_slice(payload);
        }
        Codec::Zstd => {
            // Every byte is overwritten by the decompressor: a reused buffer of the right size is not cleared.
            if out.len() != plain_len {
                out.clear();
                out.resize(plain_len, 0);
            }
            // One decompression context per thread: making one per chunk costs as much as a small chunk.
            let n = DECOMPRESSOR
                .with(|d| match d.borrow_mut().as_mut() {
                    Ok(d) => d.decompress_to_buffer(payload, out.as_mut_slice()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                })
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if n != plain_len {
                return Err(corrupt(format!("decompressed to {n} bytes, header says {plain_len}")));
            }
        }
    }
    let actual = ChunkId::of(out);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn roundtrip(data: &[u8]) -> Codec {
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let stored = encode(data, &mut c);
        let id = ChunkId::of(data);
        let mut out = Vec::new();
        decode_verified(&id, &stored, &mut out).unwrap();
        assert_eq!(out, data);
        Codec::from_byte(stored[5]).unwrap()
    }

    #[test]
    fn compressible_bytes_are_stored_compressed() {
        let text: Vec<u8> = b"hello livemount ".iter().cycle().take(65536).copied().collect();
        assert_eq!(roundtrip(&text), Codec::Zstd);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn incompressible_bytes_are_stored_plain(noise in vec(any::<u8>(), 65536)) {
            prop_assert_eq!(roundtrip(&noise), Codec::Plain);
        }

        #[test]
        fn any_bytes_roundtrip(data in vec(any::<u8>(), 0..100_000)) {
            roundtrip(&data);
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let stored = encode(&data, &mut c);
        let id = ChunkId::of(&data);
        let mut out = Vec::new();
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x40;
            if i == 6 || i == 7 {
                continue; // reserved bytes carry no meaning
            }
            let r = decode_verified(&id, &bad, &mut out);
            assert!(matches!(r, Err(Error::ChunkCorrupt { .. })), "flip at byte {i} went unnoticed");
        }
        assert!(decode_verified(&id, &stored[..stored.len() - 1], &mut out).is_err());
    }

    proptest! {
        #[test]
        fn zero_detection_finds_any_non_zero_byte(len in 0usize..5000, at in any::<usize>(), byte in 1u8..) {
            let mut v = vec![0u8; len];
            prop_assert!(is_all_zero(&v));
            if len > 0 {
                v[at % len] = byte;
                prop_assert!(!is_all_zero(&v));
                prop_assert!(!is_all_zero(&v[at % len..]), "unaligned start");
            }
        }
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[0u8; 4097]));
        let mut v = vec![0u8; 4097];
        v[4096] = 1;
        assert!(!is_all_zero(&v));
        v[4096] = 0;
        v[3] = 1;
        assert!(!is_all_zero(&v));
    }
}
