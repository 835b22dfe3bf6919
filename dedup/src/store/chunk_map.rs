//! The chunk map: where every chunk of a store is, sorted by id, in one record file (`record_file.rs`) of
//! located records (`located.rs`), so that finding a chunk among millions costs one checked block read and
//! no memory that grows with the library: a process keeps only the file's block table (40 bytes per 128
//! chunks) and its pack table.
//!
//! A map covers the packs of its pack table; chunks of newer packs are found in their own pack indexes until
//! a later map covers them too (see `pack/merge.rs`). Maps are numbered by generation, `<generation>.map`,
//! and never rewritten: a new generation is written beside the old one, which then goes.

use std::path::Path;

use super::located::{self, PackName, PackTable, StoredAt, RECORD_LEN};
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::formats::{CHUNK_MAP_FORMAT_VERSION, CHUNK_MAP_MAGIC, LOCATED_RECORDS_PER_BLOCK};
use crate::record_file::{Kind, RecordFile, RecordWriter};

pub const KIND: Kind = Kind {
    magic: CHUNK_MAP_MAGIC,
    version: CHUNK_MAP_FORMAT_VERSION,
    record_len: RECORD_LEN,
    per_block: LOCATED_RECORDS_PER_BLOCK,
};

/// File name extension of chunk maps.
pub const EXTENSION: &str = ".map";

/// The file name of generation `generation`.
pub fn file_name(generation: u64) -> String {
    format!("{generation:020}{EXTENSION}")
}

/// The generation a map file's stem names.
pub fn parse_generation(stem: &str) -> Option<u64> {
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

pub struct ChunkMap {
    file: RecordFile,
    generation: u64,
    /// Pack table: record numbers to names.
    packs: Vec<PackName>,
    /// The same names, sorted, to answer "is this pack covered".
    covered: Vec<PackName>,
}

impl ChunkMap {
    pub fn open(path: &Path, generation: u64) -> Result<Self> {
        let file = RecordFile::open(path, KIND, None)?;
        let packs = located::decode_pack_table(file.meta())
            .map(|(p, _)| p)
            .ok_or_else(|| Error::BadFormat { path: path.to_path_buf(), reason: "truncated pack table".into() })?;
        let mut covered = packs.clone();
        covered.sort_unstable();
        Ok(ChunkMap { file, generation, packs, covered })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The packs this map covers, sorted.
    pub fn covered(&self) -> &[PackName] {
        &self.covered
    }

    pub fn covers(&self, pack: &PackName) -> bool {
        self.covered.binary_search(pack).is_ok()
    }

    pub fn len(&self) -> u64 {
        self.file.count()
    }

    pub fn is_empty(&self) -> bool {
        self.file.count() == 0
    }

    /// Where the map says `id` is.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<StoredAt>> {
        let key: [u8; 8] = id.0[..8].try_into().expect("8 bytes");
        let blocks = self.file.block_count();
        // The last block whose first key is below the id's may hold it, and so may the blocks after it
        // that start with the same key (ids that share their first 8 bytes, in theory).
        let first = partition_point(blocks, |b| self.file.block_key(b) < key).saturating_sub(1);
        let mut b = first;
        while b < blocks && (b == first || self.file.block_key(b) == key) {
            let block = self.file.read_block(b)?;
            let records: Vec<&[u8]> = block.chunks_exact(RECORD_LEN).collect();
            if let Ok(i) = records.binary_search_by(|r| r[..32].cmp(&id.0[..])) {
                return Ok(located::resolve(&self.packs, located::decode(records[i]).1));
            }
            b += 1;
        }
        Ok(None)
    }

    /// Every record, in id order, read a block at a time: the id, and where it is.
    pub fn records(&self) -> impl Iterator<Item = Result<(ChunkId, StoredAt)>> + '_ {
        (0..self.file.block_count()).flat_map(move |b| {
            let records: Vec<Result<(ChunkId, StoredAt)>> = match self.file.read_block(b) {
                Ok(block) => block
                    .chunks_exact(RECORD_LEN)
                    .filter_map(|r| {
                        let (id, at) = located::decode(r);
                        Some(Ok((id, located::resolve(&self.packs, at)?)))
                    })
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            records
        })
    }
}

/// The smallest `b` in `0..n` for which `below(b)` is false (`below` is true then false along `0..n`).
fn partition_point(n: u64, below: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Writes a chunk map from records given in increasing id order (each id once).
pub struct MapWriter {
    writer: RecordWriter,
    packs: PackTable,
    count: u64,
    last: Option<ChunkId>,
}

impl MapWriter {
    /// A map at `path` that covers `packs` (whether or not a record names them).
    pub fn create(path: &Path, packs: impl IntoIterator<Item = PackName>) -> Result<Self> {
        let mut table = PackTable::default();
        for p in packs {
            table.number(p);
        }
        Ok(MapWriter { writer: RecordWriter::create(path, KIND)?, packs: table, count: 0, last: None })
    }

    pub fn push(&mut self, id: &ChunkId, at: &StoredAt) -> Result<()> {
        debug_assert!(self.last.is_none_or(|l| l < *id), "records in increasing id order");
        self.last = Some(*id);
        let record = located::encode(id, Some(self.packs.locate(at)));
        self.writer.put(self.count, &record)?;
        self.count += 1;
        Ok(())
    }

    /// Ends the file and makes it durable (the caller renames it into place).
    pub fn finish(self) -> Result<u64> {
        let mut meta = Vec::new();
        self.packs.encode_into(&mut meta);
        self.writer.finish(self.count, &meta)?;
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_found_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(file_name(1));
        let packs = [PackName([1; 8]), PackName([2; 8]), PackName([3; 8])];
        let mut ids: Vec<ChunkId> = (0..1000u32).map(|n| ChunkId::of(&n.to_le_bytes())).collect();
        ids.sort();
        let mut w = MapWriter::create(&p, packs).unwrap();
        for (n, id) in ids.iter().enumerate() {
            w.push(id, &StoredAt { pack: packs[n % 2], offset: n as u32, len: 7 }).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 1000);
        let map = ChunkMap::open(&p, 1).unwrap();
        assert!(map.covers(&packs[2]), "a pack without records is covered too");
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(map.lookup(id).unwrap(), Some(StoredAt { pack: packs[n % 2], offset: n as u32, len: 7 }));
        }
        assert_eq!(map.lookup(&ChunkId::of(b"absent")).unwrap(), None);
        assert_eq!(map.lookup(&ChunkId([0xff; 32])).unwrap(), None);
        let read: Vec<ChunkId> = map.records().map(|r| r.unwrap().0).collect();
        assert_eq!(read, ids);
        assert_eq!(parse_generation(p.file_stem().unwrap().to_str().unwrap()), Some(1));
    }
}
