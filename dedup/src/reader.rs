//! Random-access reads of one disk of a backup: the API a pseudo-disk recalls from.
//!
//! The chunk of an offset is found by an array lookup in the disk's index. Each chunk is read, decompressed
//! and checked against its id before a byte of it is returned: a missing or damaged chunk is an error,
//! never wrong data. `BackupDisk` is `Sync`; any number of threads may read at once.

use std::sync::Arc;

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::index::DiskIndex;
use crate::library::Library;
use crate::manifest::Manifest;

pub struct BackupDisk {
    lib: Arc<Library>,
    backup_id: String,
    disk: usize,
    index: DiskIndex,
}

impl BackupDisk {
    pub fn open(lib: Arc<Library>, manifest: &Manifest, disk: usize) -> Result<Self> {
        let index = lib.load_index(manifest, disk)?;
        Ok(BackupDisk { lib, backup_id: manifest.id.clone(), disk, index })
    }

    pub fn backup_id(&self) -> &str {
        &self.backup_id
    }

    pub fn library(&self) -> &Library {
        &self.lib
    }

    pub fn disk_number(&self) -> usize {
        self.disk
    }

    pub fn size(&self) -> u64 {
        self.index.disk_size
    }

    pub fn chunk_size(&self) -> u32 {
        self.index.chunk_size
    }

    pub fn index(&self) -> &DiskIndex {
        &self.index
    }

    /// The id of chunk `chunk` (zero for an all-zero chunk).
    pub fn chunk_id(&self, chunk: u64) -> Result<ChunkId> {
        Ok(self.index.entry(chunk)?.id)
    }

    /// Reads the whole of chunk `chunk` (shorter for the last chunk of the disk) into `out`.
    pub fn read_chunk(&self, chunk: u64, out: &mut Vec<u8>) -> Result<()> {
        let entry = self.index.entry(chunk)?;
        let range = self.index.chunk_range(chunk);
        self.lib.read_entry(&entry, (range.end - range.start) as usize, out)
    }

    /// Reads the whole of each chunk of `chunks`, the results in order: neighbours that a far store keeps
    /// together are fetched with one request (`Library::read_entries`).
    pub fn read_chunks(&self, chunks: std::ops::Range<u64>) -> Vec<Result<Vec<u8>>> {
        let mut out: Vec<Option<Result<Vec<u8>>>> = Vec::new();
        let (mut readable, mut positions) = (Vec::new(), Vec::new());
        for chunk in chunks {
            match self.index.entry(chunk) {
                Ok(entry) => {
                    let range = self.index.chunk_range(chunk);
                    positions.push(out.len());
                    readable.push((entry, (range.end - range.start) as usize));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        for (pos, read) in positions.into_iter().zip(self.lib.read_entries(&readable)) {
            out[pos] = Some(read);
        }
        out.into_iter().map(|r| r.expect("every chunk is read")).collect()
    }

    /// Reads `buf.len()` bytes at `offset`. The range must lie within the disk.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(Error::OutOfRange { offset, len, size: self.size() });
        }
        let cs = u64::from(self.index.chunk_size);
        let mut scratch = Vec::new();
        let mut pos = offset;
        let mut filled = 0usize;
        while filled < buf.len() {
            let chunk = pos / cs;
            let within = (pos % cs) as usize;
            let n = (buf.len() - filled).min(cs as usize - within);
            let dest = &mut buf[filled..filled + n];
            self.read_chunk(chunk, &mut scratch)?;
            dest.copy_from_slice(&scratch[within..within + n]);
            filled += n;
            pos += n as u64;
        }
        Ok(())
    }
}
