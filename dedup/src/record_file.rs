//! Files of fixed-size records that are read one block at a time, each block checked on its own, so that a
//! reader needs neither the whole file in memory nor a pass over it before the first record: opening reads a
//! small table, a record read is one positioned read of its block. The disk index of a backup and the
//! library's chunk map are such files.
//!
//! ```text
//! offset        size   field
//! 0             8      magic (says what kind of file it is)
//! 8             4      layout version of that kind (little endian, as every number)
//! 12            4      record length r
//! 16            4      records per block b
//! 20            4      length m of the metadata at the end
//! 24            8      number of records n
//! 32            32     root: BLAKE3 of bytes 0..32, the block table and the metadata
//! 64            r*n    the records
//! 64+r*n        40*k   block table, k = ceil(n/b): BLAKE3 of the block's bytes (32), then the first 8 bytes
//!                      of its first record (sorted files find a record's block by them without reading)
//! 64+r*n+40*k   m      metadata: what the kind of file says about itself
//! ```
//! The root is what others keep to check the file (a manifest keeps the root of each disk index), so a file
//! is checked in full by its header, table and metadata, and each block by its entry in the table.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes before the first record.
pub const HEADER_LEN: u64 = 64;
/// Bytes of one entry of the block table.
const TABLE_ENTRY_LEN: usize = 40;
/// A writer's buffer of consecutive records, written in one call once it holds this much.
const WRITE_BUFFER: usize = 1 << 20;

/// What kind of record file, and the shape of its records.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub magic: [u8; 8],
    pub version: u32,
    pub record_len: usize,
    pub per_block: usize,
}

impl Kind {
    fn block_len(&self) -> usize {
        self.record_len * self.per_block
    }
}

/// Writes a record file: records by number in any order (runs of consecutive records are written in one
/// call), then `finish` with the count and the metadata. Records never written read as zeros.
pub struct RecordWriter {
    file: File,
    path: PathBuf,
    kind: Kind,
    /// Records `buffer_start..` not written yet.
    buffer: Vec<u8>,
    buffer_start: u64,
}

impl RecordWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, kind: Kind) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        Ok(RecordWriter { file, path: path.to_path_buf(), kind, buffer: Vec::new(), buffer_start: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts record number `n`.
    pub fn put(&mut self, n: u64, record: &[u8]) -> Result<()> {
        debug_assert_eq!(record.len(), self.kind.record_len);
        let next = self.buffer_start + (self.buffer.len() / self.kind.record_len) as u64;
        if self.buffer.is_empty() {
            self.buffer_start = n;
        } else if n != next || self.buffer.len() >= WRITE_BUFFER {
            self.flush()?;
            self.buffer_start = n;
        }
        self.buffer.extend_from_slice(record);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buffer.is_empty() {
            let at = HEADER_LEN + self.buffer_start * self.kind.record_len as u64;
            self.file.write_all_at(&self.buffer, at).map_err(|e| Error::io("write", &self.path, e))?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Ends the file at `count` records with `meta` after them, makes it durable (fdatasync) and returns its
    /// root. The records are read back block by block for their checksums: the file is in the page cache, and
    /// a writer that puts records out of order needs no memory for blocks it has not finished.
    pub fn finish(mut self, count: u64, meta: &[u8]) -> Result<[u8; 32]> {
        self.flush()?;
        let kind = self.kind;
        let records_end = HEADER_LEN + count * kind.record_len as u64;
        self.file.set_len(records_end).map_err(|e| Error::io("size", &self.path, e))?;
        let blocks = count.div_ceil(kind.per_block as u64);
        let mut table = Vec::with_capacity(blocks as usize * TABLE_ENTRY_LEN);
        let mut block = vec![0u8; kind.block_len()];
        for b in 0..blocks {
            let start = HEADER_LEN + b * kind.block_len() as u64;
            let len = (records_end - start).min(kind.block_len() as u64) as usize;
            self.file.read_exact_at(&mut block[..len], start).map_err(|e| Error::io("read back", &self.path, e))?;
            table.extend_from_slice(blake3::hash(&block[..len]).as_bytes());
            table.extend_from_slice(&block[..8]);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&kind.magic);
        header[8..12].copy_from_slice(&kind.version.to_le_bytes());
        header[12..16].copy_from_slice(&(kind.record_len as u32).to_le_bytes());
        header[16..20].copy_from_slice(&(kind.per_block as u32).to_le_bytes());
        header[20..24].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        header[24..32].copy_from_slice(&count.to_le_bytes());
        let root = root_of(&header[..32], &table, meta);
        header[32..].copy_from_slice(&root);
        let mut trailer = table;
        trailer.extend_from_slice(meta);
        let io = |e| Error::io("write", &self.path, e);
        self.file.write_all_at(&trailer, records_end).map_err(io)?;
        self.file.write_all_at(&header, 0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        Ok(root)
    }
}

fn root_of(header: &[u8], table: &[u8], meta: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(header);
    h.update(table);
    h.update(meta);
    *h.finalize().as_bytes()
}

/// An open record file, checked: its header, block table and metadata agree with its root.
pub struct RecordFile {
    file: File,
    path: PathBuf,
    kind: Kind,
    count: u64,
    root: [u8; 32],
    table: Vec<u8>,
    meta: Vec<u8>,
}

impl RecordFile {
    /// Opens `path`, which must be of `kind` and, when `expected_root` is given, have that root.
    pub fn open(path: &Path, kind: Kind, expected_root: Option<&[u8; 32]>) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        Self::from_file(file, path, kind, expected_root)
    }

    pub fn from_file(file: File, path: &Path, kind: Kind, expected_root: Option<&[u8; 32]>) -> Result<Self> {
        let bad = |reason: &str| Error::BadFormat { path: path.to_path_buf(), reason: reason.to_string() };
        let mut header = [0u8; HEADER_LEN as usize];
        if !read_full(&file, &mut header, 0).map_err(|e| Error::io("read", path, e))? {
            return Err(bad("too short"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
        if header[..8] != kind.magic {
            return Err(bad("not the kind of file expected here (bad magic)"));
        }
        if u32_at(8) != kind.version {
            return Err(bad(&format!("unknown layout version {}", u32_at(8))));
        }
        if u32_at(12) as usize != kind.record_len || u32_at(16) as usize != kind.per_block {
            return Err(bad("record or block length is not this version's"));
        }
        let meta_len = u32_at(20) as usize;
        let count = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
        let blocks = count.div_ceil(kind.per_block as u64);
        let records_end = count
            .checked_mul(kind.record_len as u64)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or_else(|| bad("record count out of range"))?;
        let trailer_len = blocks as usize * TABLE_ENTRY_LEN + meta_len;
        let file_len = file.metadata().map_err(|e| Error::io("read", path, e))?.len();
        if records_end.checked_add(trailer_len as u64) != Some(file_len) {
            return Err(bad("length does not match its header (truncated or extended)"));
        }
        let mut trailer = vec![0u8; trailer_len];
        file.read_exact_at(&mut trailer, records_end).map_err(|e| Error::io("read", path, e))?;
        let root: [u8; 32] = header[32..].try_into().expect("32 bytes");
        // The trailer is the table followed by the metadata: hashed as one.
        if root_of(&header[..32], &trailer, &[]) != root {
            return Err(bad("checksum does not match"));
        }
        if let Some(expected) = expected_root {
            if *expected != root {
                return Err(bad("not the file its manifest names (root checksum differs)"));
            }
        }
        let meta = trailer.split_off(blocks as usize * TABLE_ENTRY_LEN);
        Ok(RecordFile { file, path: path.to_path_buf(), kind, count, root, table: trailer, meta })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn root(&self) -> &[u8; 32] {
        &self.root
    }

    pub fn meta(&self) -> &[u8] {
        &self.meta
    }

    pub fn per_block(&self) -> usize {
        self.kind.per_block
    }

    pub fn record_len(&self) -> usize {
        self.kind.record_len
    }

    pub fn block_count(&self) -> u64 {
        self.count.div_ceil(self.kind.per_block as u64)
    }

    /// The first 8 bytes of block `b`'s first record, from the table (no read).
    pub fn block_key(&self, b: u64) -> [u8; 8] {
        let at = b as usize * TABLE_ENTRY_LEN + 32;
        self.table[at..at + 8].try_into().expect("8 bytes")
    }

    /// Reads block `b` (its records, `per_block` of them but fewer in the last block), checked against the table.
    pub fn read_block(&self, b: u64) -> Result<Vec<u8>> {
        if b >= self.block_count() {
            return Err(Error::BadFormat { path: self.path.clone(), reason: format!("no block {b}") });
        }
        let start = HEADER_LEN + b * self.kind.block_len() as u64;
        let records_end = HEADER_LEN + self.count * self.kind.record_len as u64;
        let len = (records_end - start).min(self.kind.block_len() as u64) as usize;
        let mut block = vec![0u8; len];
        self.file.read_exact_at(&mut block, start).map_err(|e| Error::io("read", &self.path, e))?;
        let at = b as usize * TABLE_ENTRY_LEN;
        if blake3::hash(&block).as_bytes()[..] != self.table[at..at + 32] {
            return Err(Error::BadFormat { path: self.path.clone(), reason: format!("block {b} is damaged") });
        }
        Ok(block)
    }
}

/// Reads all of `buf` at `offset`; false when the file ends first.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind { magic: *b"LMTEST\0\0", version: 1, record_len: 12, per_block: 4 };

    fn record(n: u64) -> [u8; 12] {
        let mut r = [0u8; 12];
        r[..8].copy_from_slice(&(n * 7 + 1).to_be_bytes());
        r
    }

    #[test]
    fn records_written_out_of_order_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut w = RecordWriter::create(&p, KIND).unwrap();
        for n in [3u64, 4, 5, 0, 1, 9] {
            w.put(n, &record(n)).unwrap();
        }
        let root = w.finish(11, b"meta").unwrap();
        let f = RecordFile::open(&p, KIND, Some(&root)).unwrap();
        assert_eq!((f.count(), f.block_count(), f.meta()), (11, 3, &b"meta"[..]));
        let b1 = f.read_block(1).unwrap();
        assert_eq!(&b1[..12], &record(4));
        assert_eq!(&b1[12..24], &record(5));
        assert_eq!(&b1[24..36], &[0u8; 12], "a record never put reads as zeros");
        assert_eq!(f.read_block(2).unwrap().len(), 3 * 12, "the last block is short");
        assert_eq!(f.block_key(0), record(0)[..8]);
        assert!(RecordFile::open(&p, KIND, Some(&[0; 32])).is_err(), "another root is refused");
    }

    #[test]
    fn every_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut w = RecordWriter::create(&p, KIND).unwrap();
        for n in 0..10 {
            w.put(n, &record(n)).unwrap();
        }
        w.finish(10, b"xy").unwrap();
        let good = std::fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&p, &bad).unwrap();
            let found = match RecordFile::open(&p, KIND, None) {
                Err(_) => true,
                Ok(f) => (0..f.block_count()).any(|b| f.read_block(b).is_err()),
            };
            assert!(found, "a flip at byte {i} goes unnoticed");
        }
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(RecordFile::open(&p, KIND, None).is_err(), "a truncated file is refused");
    }
}
