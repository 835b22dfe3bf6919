//! The ingest pipeline against sources with awkward shapes: data ranges that start and end inside chunks,
//! a disk whose size is not a multiple of the chunk size, long holes, sources that can and cannot be read by
//! several threads, and a source that fails part-way.

use std::ops::Range;
use std::sync::Arc;

use super::{create_backup, DiskInput};
use crate::error::{Error, Result};
use crate::library::Library;
use crate::reader::BackupDisk;
use crate::source::{DiskSource, SharedRead};

const CHUNK: u32 = 4096;

/// A disk in memory: its bytes, the ranges it says hold data, and an offset whose read fails.
#[derive(Clone)]
struct MemoryDisk {
    bytes: Arc<Vec<u8>>,
    data: Vec<Range<u64>>,
    shared: bool,
    fail_at: Option<u64>,
}

impl MemoryDisk {
    /// Data at odd places (a byte pattern that is never zero), zeros elsewhere; the size is not a multiple of
    /// the chunk size.
    fn new(shared: bool) -> Self {
        let size = 5 * 1024 * 1024 + 1234;
        let data = vec![100..5000, 9000..9001, 70_000..300_000, 4_000_000..4_200_000, size - 700..size];
        let mut bytes = vec![0u8; size as usize];
        for r in &data {
            for i in r.clone() {
                bytes[i as usize] = (i % 251) as u8 | 1;
            }
        }
        MemoryDisk { bytes: Arc::new(bytes), data, shared, fail_at: None }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.fail_at.is_some_and(|at| (offset..offset + buf.len() as u64).contains(&at)) {
            return Err(Error::Source { path: "memory".into(), reason: format!("read at {offset} failed") });
        }
        buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

impl SharedRead for MemoryDisk {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, buf)
    }
}

impl DiskSource for MemoryDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn next_data(&mut self, from: u64) -> Result<Option<Range<u64>>> {
        Ok(self.data.iter().find(|r| r.end > from).map(|r| r.start.max(from)..r.end))
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        // Only data ranges are ever read.
        assert!(self.data.iter().any(|r| r.start <= offset && offset + buf.len() as u64 <= r.end), "read of a hole");
        self.read(offset, buf)
    }
    fn format(&self) -> &str {
        "memory"
    }
    fn shared_reader(&self) -> Option<Arc<dyn SharedRead>> {
        self.shared.then(|| Arc::new(self.clone()) as Arc<dyn SharedRead>)
    }
}

fn back_up(lib: &Library, disk: MemoryDisk) -> Result<crate::Manifest> {
    let input = DiskInput { label: "memory".into(), source: Box::new(disk), partition_table: None, parent: None };
    create_backup(lib, None, vec![input], &|_| {})
}

#[test]
fn every_byte_comes_back_whatever_the_source_allows() {
    for shared in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let lib = Arc::new(Library::init(dir.path(), CHUNK).unwrap());
        let disk = MemoryDisk::new(shared);
        let manifest = back_up(&lib, disk.clone()).unwrap();
        let stats = &manifest.stats;
        let data_bytes: u64 = disk.data.iter().map(|r| r.end - r.start).sum();
        assert_eq!(stats.bytes_read, data_bytes, "only the data is read (shared reader: {shared})");
        let restored = BackupDisk::open(lib.clone(), &manifest, 0).unwrap();
        let mut back = vec![0xAAu8; disk.bytes.len()];
        restored.read_at(0, &mut back).unwrap();
        assert!(back == *disk.bytes, "the backup reads back as the disk (shared reader: {shared})");
        let chunks = (disk.bytes.len() as u64).div_ceil(u64::from(CHUNK));
        assert_eq!(stats.chunks_new + stats.chunks_reused + stats.chunks_zero, chunks);
    }
}

#[test]
fn a_failing_read_fails_the_backup_and_publishes_nothing() {
    for shared in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::init(dir.path(), CHUNK).unwrap();
        let mut disk = MemoryDisk::new(shared);
        disk.fail_at = Some(4_100_000);
        let err = back_up(&lib, disk).expect_err("the read fails");
        assert!(err.to_string().contains("read at"), "the source's error is told: {err}");
        assert!(lib.backups().unwrap().is_empty(), "no backup is published (shared reader: {shared})");
    }
}
