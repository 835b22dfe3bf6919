//! The disk index: the ordered chunk ids of one disk of a backup, in a small binary file so that finding the
//! chunk of any offset is an array lookup.
//!
//! ```text
//! offset size  field
//! 0      8     magic "LMINDEX\0"
//! 8      4     format version (1, little endian)
//! 12     4     chunk size in bytes
//! 16     8     disk size in bytes
//! 24     8     number of chunks = ceil(disk size / chunk size)
//! 32     32    BLAKE3 of bytes 0..32 followed by the id array
//! 64     32*n  chunk ids in disk order; all zeros for a chunk that is all zeros (not stored)
//! ```
//! The last chunk may be shorter than the chunk size: it ends at the end of the disk.

use std::path::Path;

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::formats::{INDEX_FORMAT_VERSION, INDEX_HEADER_LEN, INDEX_MAGIC};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskIndex {
    pub chunk_size: u32,
    pub disk_size: u64,
    pub chunks: Vec<ChunkId>,
}

impl DiskIndex {
    pub fn chunk_count(disk_size: u64, chunk_size: u32) -> u64 {
        disk_size.div_ceil(u64::from(chunk_size))
    }

    /// Byte range of chunk `i` on the disk.
    pub fn chunk_range(&self, i: usize) -> std::ops::Range<u64> {
        let start = i as u64 * u64::from(self.chunk_size);
        start..(start + u64::from(self.chunk_size)).min(self.disk_size)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + 32 * self.chunks.len());
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        let mut hasher = blake3::Hasher::new();
        hasher.update(&out[..32]);
        for id in &self.chunks {
            hasher.update(&id.0);
        }
        out.extend_from_slice(hasher.finalize().as_bytes());
        debug_assert_eq!(out.len(), INDEX_HEADER_LEN);
        for id in &self.chunks {
            out.extend_from_slice(&id.0);
        }
        out
    }

    pub fn decode(path: &Path, data: &[u8]) -> Result<Self> {
        let bad = |reason: &str| Error::BadFormat { path: path.to_path_buf(), reason: reason.to_string() };
        if data.len() < INDEX_HEADER_LEN || data[0..8] != INDEX_MAGIC {
            return Err(bad("not a disk index (bad magic or too short)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(8) != INDEX_FORMAT_VERSION {
            return Err(bad(&format!("unknown index version {}", u32_at(8))));
        }
        let chunk_size = u32_at(12);
        let disk_size = u64_at(16);
        let count = u64_at(24);
        if !chunk_size.is_power_of_two() || count != Self::chunk_count(disk_size, chunk_size) {
            return Err(bad("chunk size, disk size and chunk count disagree"));
        }
        let body = &data[INDEX_HEADER_LEN..];
        if count.checked_mul(32) != Some(body.len() as u64) {
            return Err(bad("truncated: fewer chunk ids than the header says"));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&data[..32]);
        hasher.update(body);
        if hasher.finalize().as_bytes()[..] != data[32..64] {
            return Err(bad("checksum does not match"));
        }
        let chunks = body.chunks_exact(32).map(|c| ChunkId(c.try_into().expect("32 bytes"))).collect();
        Ok(DiskIndex { chunk_size, disk_size, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let idx = DiskIndex {
            chunk_size: 65536,
            disk_size: 3 * 65536 + 10,
            chunks: vec![ChunkId::of(b"a"), ChunkId::ZERO, ChunkId::of(b"b"), ChunkId::of(b"c")],
        };
        let enc = idx.encode();
        let p = Path::new("disk0.index");
        assert_eq!(DiskIndex::decode(p, &enc).unwrap(), idx);
        assert_eq!(idx.chunk_range(3), 3 * 65536..3 * 65536 + 10);
        for i in [0, 9, 13, 17, 25, 40, 70, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[i] ^= 1;
            assert!(DiskIndex::decode(p, &bad).is_err(), "flip at {i}");
        }
        assert!(DiskIndex::decode(p, &enc[..enc.len() - 32]).is_err());
    }
}
