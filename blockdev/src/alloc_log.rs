//! The persisted allocation map of a store: an append-only log of which units (4 KiB blocks of the private
//! store, chunks of the recall store) hold what.
//!
//! ```text
//! file header (16 bytes): magic "LMALLOC1", unit size u32, reserved u32
//! batch header (16 bytes): magic "LMBT", entry count u32, CRC32 of the entries u32, reserved u32
//! entry (16 bytes):       kind u8 (1 = data, 2 = zero), reserved [u8; 3], unit count u32, first unit u64
//! ```
//! All integers little endian. A flush appends one batch (after the store's data is synced) and syncs the
//! log. On open the batches are replayed in order; a torn or damaged batch at the end (a crash during an
//! append) is cut off: the writes it described were never acknowledged as flushed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Engine;

const FILE_MAGIC: [u8; 8] = *b"LMALLOC1";
const BATCH_MAGIC: [u8; 4] = *b"LMBT";
const HEADER_LEN: u64 = 16;
const ENTRY_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The units hold data in the store's data file.
    Data,
    /// The units read as zeros (discarded).
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub start: u64,
    pub count: u64,
}

pub struct AllocLog {
    path: PathBuf,
    file: Arc<File>,
    end: u64,
}

impl AllocLog {
    /// Opens (or creates) the log and returns the records it holds, in order.
    pub fn open(path: &Path, unit: u32) -> io::Result<(AllocLog, Vec<Record>)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        if data.is_empty() {
            let mut h = Vec::with_capacity(16);
            h.extend_from_slice(&FILE_MAGIC);
            h.extend_from_slice(&unit.to_le_bytes());
            h.extend_from_slice(&[0u8; 4]);
            file.write_all(&h)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            return Ok((AllocLog { path: path.to_path_buf(), file: Arc::new(file), end: HEADER_LEN }, Vec::new()));
        }
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
        if data.len() < HEADER_LEN as usize || data[0..8] != FILE_MAGIC {
            return Err(bad("not an allocation map"));
        }
        if u32::from_le_bytes(data[8..12].try_into().expect("4")) != unit {
            return Err(bad("unit size differs from the store's"));
        }
        let (records, valid_end) = parse_batches(&data[HEADER_LEN as usize..]);
        let end = HEADER_LEN + valid_end as u64;
        if end < data.len() as u64 {
            tracing::warn!(path = %path.display(), "cutting off a torn allocation map batch left by a crash");
            file.set_len(end)?;
            file.sync_all()?;
        }
        Ok((AllocLog { path: path.to_path_buf(), file: Arc::new(file), end }, records))
    }

    pub fn size(&self) -> u64 {
        self.end
    }

    /// Appends one batch and makes it durable. The caller has already synced the data it describes.
    pub async fn append(&mut self, engine: &Engine, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = encode_batch(records);
        let len = batch.len() as u64;
        engine.write(&self.file, self.end, batch).await?;
        engine.sync(&self.file).await?;
        self.end += len;
        Ok(())
    }

    /// Replaces the log with one holding just `records` (compaction), atomically.
    pub fn rewrite(&mut self, unit: u32, records: &[Record]) -> io::Result<()> {
        let tmp = self.path.with_extension("map.tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut out = Vec::new();
        out.extend_from_slice(&FILE_MAGIC);
        out.extend_from_slice(&unit.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        for part in records.chunks(1 << 16) {
            out.extend_from_slice(&encode_batch(part));
        }
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
        self.end = out.len() as u64;
        Ok(())
    }
}

fn encode_batch(records: &[Record]) -> Vec<u8> {
    let mut entries = Vec::with_capacity(records.len() * ENTRY_LEN);
    for r in records {
        entries.push(match r.kind {
            RecordKind::Data => 1u8,
            RecordKind::Zero => 2u8,
        });
        entries.extend_from_slice(&[0u8; 3]);
        entries.extend_from_slice(&(r.count as u32).to_le_bytes());
        entries.extend_from_slice(&r.start.to_le_bytes());
    }
    let mut out = Vec::with_capacity(16 + entries.len());
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&entries).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&entries);
    out
}

/// Parses whole, intact batches; returns the records and the length of the valid prefix.
fn parse_batches(mut data: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut valid = 0usize;
    while data.len() >= 16 && data[0..4] == BATCH_MAGIC {
        let count = u32::from_le_bytes(data[4..8].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(data[8..12].try_into().expect("4"));
        let Some(len) = count.checked_mul(ENTRY_LEN).filter(|l| 16 + l <= data.len()) else {
            break;
        };
        let entries = &data[16..16 + len];
        if crc32fast::hash(entries) != crc {
            break;
        }
        let mut batch = Vec::with_capacity(count);
        for e in entries.chunks_exact(ENTRY_LEN) {
            let kind = match e[0] {
                1 => RecordKind::Data,
                2 => RecordKind::Zero,
                _ => break,
            };
            let count = u64::from(u32::from_le_bytes(e[4..8].try_into().expect("4")));
            let start = u64::from_le_bytes(e[8..16].try_into().expect("8"));
            batch.push(Record { kind, start, count });
        }
        if batch.len() != count {
            break;
        }
        records.extend(batch);
        valid += 16 + len;
        data = &data[16 + len..];
    }
    (records, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_replay_and_torn_tail() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.map");
        let engine = Engine::start().unwrap();
        let a = [
            Record { kind: RecordKind::Data, start: 5, count: 3 },
            Record { kind: RecordKind::Zero, start: 100, count: 1 },
        ];
        let b = [Record { kind: RecordKind::Data, start: 7, count: 1 }];
        {
            let (mut log, recs) = AllocLog::open(&p, 4096).unwrap();
            assert!(recs.is_empty());
            rt.block_on(log.append(&engine, &a)).unwrap();
            rt.block_on(log.append(&engine, &b)).unwrap();
        }
        let full = std::fs::read(&p).unwrap();
        let (_, recs) = AllocLog::open(&p, 4096).unwrap();
        assert_eq!(recs, [a.as_slice(), b.as_slice()].concat());
        // Every possible torn tail of the last batch drops just that batch.
        for cut in full.len() - 32 + 1..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let (log, recs) = AllocLog::open(&p, 4096).unwrap();
            assert_eq!(recs, a.to_vec(), "cut at {cut}");
            assert_eq!(log.size() as usize, full.len() - 32);
        }
        assert!(AllocLog::open(&p, 512).is_err(), "unit size is checked");
    }
}
