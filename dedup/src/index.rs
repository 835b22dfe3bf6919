//! The disk index: for each chunk of one disk of a backup, in disk order, its id and where it was stored, so
//! that finding the chunk of any offset is one record read and reading it needs no library-wide lookup.
//!
//! Format 2 is a record file (`record_file.rs`) of located records (`store/located.rs`), 128 to a block;
//! a live mount keeps only the block table (40 bytes per 128 chunks) and the blocks it recently read, so its
//! memory does not grow with the disk. Its metadata:
//! ```text
//! offset size  field
//! 0      4     chunk size in bytes
//! 4      8     disk size in bytes (the record count is ceil(disk size / chunk size))
//! 12     ...   pack table (see `store/located.rs`)
//! ```
//! The manifest keeps the file's root checksum. The last chunk may be shorter than the chunk size: it ends at
//! the end of the disk. A location is a hint: garbage collection may move a chunk, and the store then finds it
//! where it is now.
//!
//! Format 1 (read only): the whole file's BLAKE3 in the manifest, and
//! ```text
//! 0      8     magic "LMINDEX\0"
//! 8      4     format version (1, little endian)
//! 12     4     chunk size in bytes
//! 16     8     disk size in bytes
//! 24     8     number of chunks = ceil(disk size / chunk size)
//! 32     32    BLAKE3 of bytes 0..32 followed by the id array
//! 64     32*n  chunk ids in disk order; all zeros for a chunk that is all zeros (not stored)
//! ```

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::formats::{
    INDEX_FORMAT_VERSION, INDEX_FORMAT_VERSION_LOCATED, INDEX_HEADER_LEN, INDEX_MAGIC, LOCATED_RECORDS_PER_BLOCK,
};
use crate::record_file::{Kind, RecordFile, RecordWriter};
use crate::store::located::{self, PackName, PackTable, StoredAt, RECORD_LEN};

/// The record file kind of format 2.
const KIND: Kind = Kind {
    magic: INDEX_MAGIC,
    version: INDEX_FORMAT_VERSION_LOCATED,
    record_len: RECORD_LEN,
    per_block: LOCATED_RECORDS_PER_BLOCK,
};
/// Blocks of records an open index keeps checked in memory (about 5.5 KiB each).
const CACHED_BLOCKS: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// One chunk of a disk: its id (zero for an all-zero chunk) and where it was stored, when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub at: Option<StoredAt>,
}

pub struct DiskIndex {
    pub chunk_size: u32,
    pub disk_size: u64,
    body: Body,
}

enum Body {
    /// Format 1: every id in memory.
    Whole(Vec<ChunkId>),
    /// Format 2: the record file, read a block at a time.
    Records(Box<Records>),
}

struct Records {
    file: RecordFile,
    packs: Vec<PackName>,
    /// Blocks recently read, checked.
    cache: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

impl DiskIndex {
    pub fn chunk_count(disk_size: u64, chunk_size: u32) -> u64 {
        disk_size.div_ceil(u64::from(chunk_size))
    }

    pub fn count(&self) -> u64 {
        Self::chunk_count(self.disk_size, self.chunk_size)
    }

    /// Byte range of chunk `i` on the disk.
    pub fn chunk_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = i * u64::from(self.chunk_size);
        start..(start + u64::from(self.chunk_size)).min(self.disk_size)
    }

    /// Opens the index at `path`, checked against `checksum` (hex, from the manifest).
    pub fn open(path: &Path, checksum: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadFormat { path: path.to_path_buf(), reason: reason.to_string() };
        let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut head = [0u8; 12];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).map_err(|e| Error::io("read", path, e))?;
        if u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) == INDEX_FORMAT_VERSION {
            let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
            if blake3::hash(&data).to_hex().as_str() != checksum {
                return Err(bad("index does not match its checksum in manifest.json"));
            }
            return decode_v1(path, &data);
        }
        let root: [u8; 32] = hex::decode(checksum)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("manifest.json holds no valid checksum for it"))?;
        let file = RecordFile::from_file(file, path, KIND, Some(&root))?;
        let meta = file.meta();
        let truncated = || bad("truncated metadata");
        let chunk_size = u32::from_le_bytes(meta.get(..4).ok_or_else(truncated)?.try_into().expect("4 bytes"));
        let disk_size = u64::from_le_bytes(meta.get(4..12).ok_or_else(truncated)?.try_into().expect("8 bytes"));
        let (packs, _) = located::decode_pack_table(&meta[12..]).ok_or_else(truncated)?;
        if !chunk_size.is_power_of_two() || file.count() != Self::chunk_count(disk_size, chunk_size) {
            return Err(bad("chunk size, disk size and chunk count disagree"));
        }
        Ok(DiskIndex {
            chunk_size,
            disk_size,
            body: Body::Records(Box::new(Records { file, packs, cache: Mutex::new(LruCache::new(CACHED_BLOCKS)) })),
        })
    }

    /// Chunk `i`.
    pub fn entry(&self, i: u64) -> Result<IndexEntry> {
        if i >= self.count() {
            return Err(Error::OutOfRange {
                offset: i * u64::from(self.chunk_size),
                len: u64::from(self.chunk_size),
                size: self.disk_size,
            });
        }
        match &self.body {
            Body::Whole(ids) => Ok(IndexEntry { id: ids[i as usize], at: None }),
            Body::Records(r) => {
                let Records { file, packs, cache } = &**r;
                let (b, within) = (i / file.per_block() as u64, (i % file.per_block() as u64) as usize);
                let cached = cache.lock().expect("not poisoned").get(&b).cloned();
                let block = match cached {
                    Some(block) => block,
                    None => {
                        let block = Arc::new(file.read_block(b)?);
                        cache.lock().expect("not poisoned").put(b, block.clone());
                        block
                    }
                };
                Ok(entry_of(packs, &block[within * RECORD_LEN..(within + 1) * RECORD_LEN]))
            }
        }
    }

    /// Every chunk in disk order, read block by block (none of it kept).
    pub fn for_each(&self, mut f: impl FnMut(u64, IndexEntry) -> Result<()>) -> Result<()> {
        match &self.body {
            Body::Whole(ids) => {
                for (i, id) in ids.iter().enumerate() {
                    f(i as u64, IndexEntry { id: *id, at: None })?;
                }
            }
            Body::Records(r) => {
                let Records { file, packs, .. } = &**r;
                let mut i = 0u64;
                for b in 0..file.block_count() {
                    for r in file.read_block(b)?.chunks_exact(RECORD_LEN) {
                        f(i, entry_of(packs, r))?;
                        i += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

fn entry_of(packs: &[PackName], record: &[u8]) -> IndexEntry {
    let (id, at) = located::decode(record);
    IndexEntry { id, at: located::resolve(packs, at) }
}

fn decode_v1(path: &Path, data: &[u8]) -> Result<DiskIndex> {
    let bad = |reason: &str| Error::BadFormat { path: path.to_path_buf(), reason: reason.to_string() };
    if data.len() < INDEX_HEADER_LEN || data[0..8] != INDEX_MAGIC {
        return Err(bad("not a disk index (bad magic or too short)"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    let chunk_size = u32_at(12);
    let disk_size = u64_at(16);
    let count = u64_at(24);
    if !chunk_size.is_power_of_two() || count != DiskIndex::chunk_count(disk_size, chunk_size) {
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
    let ids = body.chunks_exact(32).map(|c| ChunkId(c.try_into().expect("32 bytes"))).collect();
    Ok(DiskIndex { chunk_size, disk_size, body: Body::Whole(ids) })
}

/// Writes the index of a disk being backed up, chunk by chunk in any order; chunks never put are all-zero.
pub struct DiskIndexWriter {
    writer: RecordWriter,
    packs: PackTable,
    chunk_size: u32,
    disk_size: u64,
}

impl DiskIndexWriter {
    pub fn create(path: &Path, chunk_size: u32, disk_size: u64) -> Result<Self> {
        Ok(DiskIndexWriter {
            writer: RecordWriter::create(path, KIND)?,
            packs: PackTable::default(),
            chunk_size,
            disk_size,
        })
    }

    pub fn put(&mut self, i: u64, id: &ChunkId, at: Option<&StoredAt>) -> Result<()> {
        let record = located::encode(id, at.map(|at| self.packs.locate(at)));
        self.writer.put(i, &record)
    }

    /// Ends and syncs the file; returns the checksum the manifest keeps (hex).
    pub fn finish(self) -> Result<String> {
        let mut meta = Vec::new();
        meta.extend_from_slice(&self.chunk_size.to_le_bytes());
        meta.extend_from_slice(&self.disk_size.to_le_bytes());
        self.packs.encode_into(&mut meta);
        let count = DiskIndex::chunk_count(self.disk_size, self.chunk_size);
        Ok(hex::encode(self.writer.finish(count, &meta)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk0.index");
        let at = StoredAt { pack: PackName([9; 8]), offset: 48, len: 100 };
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut w = DiskIndexWriter::create(&p, 65536, 300 * 65536 + 10).unwrap();
        w.put(200, &b, None).unwrap();
        w.put(0, &a, Some(&at)).unwrap();
        let sum = w.finish().unwrap();
        let idx = DiskIndex::open(&p, &sum).unwrap();
        assert_eq!(idx.count(), 301);
        assert_eq!(idx.entry(0).unwrap(), IndexEntry { id: a, at: Some(at) });
        assert_eq!(idx.entry(1).unwrap(), IndexEntry { id: ChunkId::ZERO, at: None });
        assert_eq!(idx.entry(200).unwrap(), IndexEntry { id: b, at: None });
        assert!(idx.entry(301).is_err());
        assert_eq!(idx.chunk_range(300), 300 * 65536..300 * 65536 + 10);
        let mut stored = 0;
        idx.for_each(|_, e| {
            stored += u32::from(!e.id.is_zero());
            Ok(())
        })
        .unwrap();
        assert_eq!(stored, 2);
        assert!(DiskIndex::open(&p, &"00".repeat(32)).is_err(), "another checksum is refused");
    }

    #[test]
    fn format_1_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk0.index");
        let ids = [ChunkId::of(b"a"), ChunkId::ZERO];
        let mut data = Vec::new();
        data.extend_from_slice(&INDEX_MAGIC);
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&65536u32.to_le_bytes());
        data.extend_from_slice(&(65536u64 + 5).to_le_bytes());
        data.extend_from_slice(&2u64.to_le_bytes());
        let mut h = blake3::Hasher::new();
        h.update(&data);
        ids.iter().for_each(|id| {
            h.update(&id.0);
        });
        data.extend_from_slice(h.finalize().as_bytes());
        ids.iter().for_each(|id| data.extend_from_slice(&id.0));
        std::fs::write(&p, &data).unwrap();
        let idx = DiskIndex::open(&p, blake3::hash(&data).to_hex().as_str()).unwrap();
        assert_eq!(idx.entry(0).unwrap(), IndexEntry { id: ids[0], at: None });
        assert_eq!(idx.count(), 2);
        data[70] ^= 1;
        std::fs::write(&p, &data).unwrap();
        assert!(DiskIndex::open(&p, blake3::hash(&data).to_hex().as_str()).is_err());
    }
}
