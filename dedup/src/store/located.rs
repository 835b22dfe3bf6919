//! Where a chunk is stored, as a fixed-size record: the records of a backup's disk index and of the chunk map
//! (`chunk_map.rs`), and the table of pack names those records number their packs by.
//!
//! ```text
//! record (44 bytes)
//! offset size  field
//! 0      32    chunk id; all zeros for an all-zero chunk (not stored, the rest of the record is zero too)
//! 32     4     pack: number in the file's pack table, or 0xffffffff when the location is not known
//! 36     4     offset of the encoded chunk in the pack
//! 40     4     length of the encoded chunk
//!
//! pack table (in the file's metadata)
//! 0      4     number of packs p
//! 4      8*p   pack names, 8 bytes each (a pack's file name is these bytes in hex)
//! ```

use std::collections::HashMap;
use std::fmt;

use crate::chunk::ChunkId;

/// Bytes of one record.
pub const RECORD_LEN: usize = 44;
/// The pack number of a record whose location is not known.
const NO_PACK: u32 = u32::MAX;

/// The name of a pack: 8 random bytes, 16 hex digits in file names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackName(pub [u8; 8]);

impl PackName {
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("the kernel's random source is available");
        PackName(b)
    }

    /// The name of a pack file without its extension; `None` for a name this library did not give.
    pub fn parse(stem: &str) -> Option<Self> {
        let bytes = hex::decode(stem).ok()?;
        Some(PackName(bytes.try_into().ok()?))
    }
}

impl fmt::Display for PackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pack {self}")
    }
}

/// Where an encoded chunk lies: its pack, its offset there and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredAt {
    pub pack: PackName,
    pub offset: u32,
    pub len: u32,
}

/// Encodes a record. `at` carries the pack's number in the file's table.
pub fn encode(id: &ChunkId, at: Option<(u32, u32, u32)>) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    if id.is_zero() {
        return r;
    }
    r[..32].copy_from_slice(&id.0);
    let (pack, offset, len) = at.unwrap_or((NO_PACK, 0, 0));
    r[32..36].copy_from_slice(&pack.to_le_bytes());
    r[36..40].copy_from_slice(&offset.to_le_bytes());
    r[40..44].copy_from_slice(&len.to_le_bytes());
    r
}

/// Decodes a record: the id, and (pack number, offset, length) when the location is known.
pub fn decode(r: &[u8]) -> (ChunkId, Option<(u32, u32, u32)>) {
    let id = ChunkId(r[..32].try_into().expect("32 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().expect("4 bytes"));
    let pack = u32_at(32);
    if id.is_zero() || pack == NO_PACK {
        return (id, None);
    }
    (id, Some((pack, u32_at(36), u32_at(40))))
}

/// The packs a file's records refer to, numbered in the order first seen.
#[derive(Default)]
pub struct PackTable {
    names: Vec<PackName>,
    numbers: HashMap<PackName, u32>,
}

impl PackTable {
    /// The number of `name`, given it when it is new.
    pub fn number(&mut self, name: PackName) -> u32 {
        *self.numbers.entry(name).or_insert_with(|| {
            self.names.push(name);
            (self.names.len() - 1) as u32
        })
    }

    /// A record's location for `at`.
    pub fn locate(&mut self, at: &StoredAt) -> (u32, u32, u32) {
        (self.number(at.pack), at.offset, at.len)
    }

    pub fn names(&self) -> &[PackName] {
        &self.names
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.names.len() as u32).to_le_bytes());
        for n in &self.names {
            out.extend_from_slice(&n.0);
        }
    }
}

/// Decodes a pack table from the start of `data`; returns it and the bytes after it, `None` when truncated.
pub fn decode_pack_table(data: &[u8]) -> Option<(Vec<PackName>, &[u8])> {
    let count = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(count.checked_mul(8)?)?;
    let names = data.get(4..end)?.chunks_exact(8).map(|c| PackName(c.try_into().expect("8 bytes"))).collect();
    Some((names, &data[end..]))
}

/// The location a decoded record names, through its file's pack table; `None` when the record names no
/// location or a pack the table does not have.
pub fn resolve(packs: &[PackName], at: Option<(u32, u32, u32)>) -> Option<StoredAt> {
    let (pack, offset, len) = at?;
    Some(StoredAt { pack: *packs.get(pack as usize)?, offset, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_tables_round_trip() {
        let mut t = PackTable::default();
        let (a, b) = (PackName([1; 8]), PackName([2; 8]));
        assert_eq!((t.number(a), t.number(b), t.number(a)), (0, 1, 0));
        let id = ChunkId::of(b"x");
        let r = encode(&id, Some(t.locate(&StoredAt { pack: b, offset: 48, len: 900 })));
        let (got, at) = decode(&r);
        assert_eq!(got, id);
        let mut meta = Vec::new();
        t.encode_into(&mut meta);
        meta.extend_from_slice(b"rest");
        let (names, rest) = decode_pack_table(&meta).unwrap();
        assert_eq!(rest, b"rest");
        assert_eq!(resolve(&names, at), Some(StoredAt { pack: b, offset: 48, len: 900 }));
        assert_eq!(decode(&encode(&id, None)), (id, None));
        assert_eq!(decode(&encode(&ChunkId::ZERO, Some((0, 1, 2)))), (ChunkId::ZERO, None));
        assert!(decode_pack_table(&meta[..7]).is_none());
        assert_eq!(PackName::parse(&a.to_string()), Some(a));
        assert_eq!(PackName::parse("not-hex"), None);
    }
}
