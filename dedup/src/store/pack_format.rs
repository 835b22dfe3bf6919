//! The layout of pack files and of their index files.
//!
//! A pack holds many encoded chunks one after the other, so that a library is a few thousand files rather than
//! millions, and a cold read of a chunk is one positioned read of a file that is already open.
//!
//! ```text
//! pack file <name>.pack
//! offset size  field
//! 0      8     magic "LMPACK\0\0"
//! 8      4     format version (1, little endian)
//! 12     4     reserved, zero
//! 16     ...   records: chunk id (32 bytes), then the encoded chunk (see `chunk.rs`; it says its own length)
//!
//! pack index <name>.idx: written once the pack is durable; a pack without one is unfinished work
//! offset size  field
//! 0      8     magic "LMPKIDX\0"
//! 8      4     format version (1, little endian)
//! 12     4     number of entries n
//! 16     8     length of the pack file the entries cover
//! 24     32    BLAKE3 of bytes 0..24 followed by the entries
//! 56     44*n  entries: chunk id (32), offset of the encoded chunk in the pack (8), its length (4)
//! ```
//! The id before each record makes a pack readable without its index (a lost index can be rebuilt by reading
//! the pack); the index makes opening a library a matter of reading small files.

use std::path::Path;

use crate::chunk::{self, ChunkId};
use crate::error::{Error, Result};
use crate::formats::{
    CHUNK_HEADER_LEN, CHUNK_MAGIC, PACK_FORMAT_VERSION, PACK_HEADER_LEN, PACK_INDEX_ENTRY_LEN, PACK_INDEX_HEADER_LEN,
    PACK_INDEX_MAGIC, PACK_MAGIC,
};
use crate::store::RepairStats;

/// Where one encoded chunk lies in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
}

/// The header every pack file starts with.
pub fn pack_header() -> [u8; PACK_HEADER_LEN] {
    let mut h = [0u8; PACK_HEADER_LEN];
    h[..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_FORMAT_VERSION.to_le_bytes());
    h
}

/// The contents of one pack index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackIndex {
    /// Length of the pack file when the index was written; every entry lies below it.
    pub pack_len: u64,
    pub entries: Vec<PackEntry>,
}

impl PackIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PACK_INDEX_HEADER_LEN + PACK_INDEX_ENTRY_LEN * self.entries.len());
        out.extend_from_slice(&PACK_INDEX_MAGIC);
        out.extend_from_slice(&PACK_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.pack_len.to_le_bytes());
        let mut body = Vec::with_capacity(PACK_INDEX_ENTRY_LEN * self.entries.len());
        for e in &self.entries {
            body.extend_from_slice(&e.id.0);
            body.extend_from_slice(&e.offset.to_le_bytes());
            body.extend_from_slice(&e.len.to_le_bytes());
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&out);
        hasher.update(&body);
        out.extend_from_slice(hasher.finalize().as_bytes());
        debug_assert_eq!(out.len(), PACK_INDEX_HEADER_LEN);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks an index file: its checksum, and that every entry lies inside the pack.
    pub fn decode(path: &Path, data: &[u8]) -> Result<Self> {
        let bad = |reason: &str| Error::BadFormat { path: path.to_path_buf(), reason: reason.to_string() };
        if data.len() < PACK_INDEX_HEADER_LEN || data[..8] != PACK_INDEX_MAGIC {
            return Err(bad("not a pack index (bad magic or too short)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(8) != PACK_FORMAT_VERSION {
            return Err(bad(&format!("unknown pack index version {}", u32_at(8))));
        }
        let count = u32_at(12) as usize;
        let pack_len = u64_at(16);
        let body = &data[PACK_INDEX_HEADER_LEN..];
        if body.len() != count * PACK_INDEX_ENTRY_LEN {
            return Err(bad("truncated: fewer entries than the header says"));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&data[..24]);
        hasher.update(body);
        if hasher.finalize().as_bytes()[..] != data[24..56] {
            return Err(bad("checksum does not match"));
        }
        let mut entries = Vec::with_capacity(count);
        for e in body.chunks_exact(PACK_INDEX_ENTRY_LEN) {
            let entry = PackEntry {
                id: ChunkId(e[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
                len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
            };
            if entry.offset < (PACK_HEADER_LEN + 32) as u64
                || entry.offset.checked_add(u64::from(entry.len)).is_none_or(|end| end > pack_len)
            {
                return Err(bad("an entry lies outside the pack"));
            }
            entries.push(entry);
        }
        Ok(PackIndex { pack_len, entries })
    }

    /// The index of a pack, read back from its records: each record's id, then its encoded chunk, which says its
    /// own length. A record that fails its check is left out; reading stops where no record header can be found.
    pub fn from_records(data: &[u8], stats: &mut RepairStats) -> PackIndex {
        let mut entries = Vec::new();
        let mut pos = PACK_HEADER_LEN;
        let mut plain = Vec::new();
        let record_start = 32;
        while pos + record_start + CHUNK_HEADER_LEN <= data.len() {
            let id = ChunkId(data[pos..pos + record_start].try_into().expect("32 bytes"));
            let chunk_at = pos + record_start;
            let header = &data[chunk_at..chunk_at + CHUNK_HEADER_LEN];
            if header[..4] != CHUNK_MAGIC {
                break;
            }
            let payload_len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
            let end = chunk_at + CHUNK_HEADER_LEN + payload_len;
            if end > data.len() {
                break;
            }
            if chunk::decode_verified(&id, &data[chunk_at..end], &mut plain).is_ok() {
                entries.push(PackEntry { id, offset: chunk_at as u64, len: (end - chunk_at) as u32 });
            } else {
                stats.chunks_damaged += 1;
            }
            pos = end;
        }
        stats.bytes_unreadable += (data.len() - pos.min(data.len())) as u64;
        PackIndex { pack_len: pos as u64, entries }
    }

    /// Reads and decodes an index file.
    pub fn read(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Self::decode(path, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_roundtrip_and_damage() {
        let idx = PackIndex {
            pack_len: 1000,
            entries: vec![
                PackEntry { id: ChunkId::of(b"a"), offset: 48, len: 100 },
                PackEntry { id: ChunkId::of(b"b"), offset: 180, len: 820 },
            ],
        };
        let enc = idx.encode();
        let p = Path::new("x.idx");
        assert_eq!(PackIndex::decode(p, &enc).unwrap(), idx);
        for i in [0, 9, 13, 17, 30, 60, 100, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[i] ^= 1;
            assert!(PackIndex::decode(p, &bad).is_err(), "flip at {i}");
        }
        assert!(PackIndex::decode(p, &enc[..enc.len() - 1]).is_err());
        let outside = PackIndex { pack_len: 500, entries: idx.entries.clone() };
        assert!(PackIndex::decode(p, &outside.encode()).is_err(), "entries past the pack's end are refused");
    }
}
