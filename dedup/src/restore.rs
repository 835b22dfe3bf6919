//! Restoring a disk of a backup to a sparse file, bit-identical to the source. Chunks are read and checked
//! by a pool of worker threads (rayon) and written in place with positioned writes; zero blocks are left as holes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::chunk::is_all_zero;
use crate::error::{Error, Result};
use crate::reader::BackupDisk;
use crate::workers;

/// Block size below which zeros are written rather than left as holes.
const HOLE_GRANULE: usize = 4096;
/// Bytes of disk restored between two starts of write-back.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Restores `disk` to `dest` (created or truncated). `progress` receives bytes done so far.
pub fn restore_disk(disk: &BackupDisk, dest: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(|e| Error::io("create", dest, e))?;
    file.set_len(disk.size()).map_err(|e| Error::io("size", dest, e))?;
    let count = disk.index().count();
    let done = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    // Twice the cores: a worker waiting for a pack read leaves its core to another.
    let pool = workers::pool(workers::cores() * 2, dest)?;
    // Chunks are handed out in disk order (par_bridge, as the hand-rolled pool before it did), so the file is
    // written nearly front to back; measured as fast as rayon's splitting of the range on a 1 GiB restore.
    // The first error stops the restore: workers take no new chunk once one has failed.
    pool.install(|| {
        (0..count).par_bridge().try_for_each_init(Vec::new, |buf, i| {
            let range = disk.index().chunk_range(i);
            if !disk.chunk_id(i)?.is_zero() {
                disk.read_chunk(i, buf)?;
                write_data_runs(&file, dest, buf, range.start)?;
                // Start the write-back of what is written so far every few MiB, so that the final fsync has
                // little left to do (one call per chunk costs more than it saves).
                let before = written.fetch_add(range.end - range.start, Ordering::Relaxed);
                if before / WRITEBACK_EVERY != (before + range.end - range.start) / WRITEBACK_EVERY {
                    // SAFETY: sync_file_range on a descriptor we own; no memory is passed. nix has no
                    // wrapper for it. A failure only leaves more for the final fsync.
                    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                }
            }
            progress(done.fetch_add(range.end - range.start, Ordering::Relaxed) + range.end - range.start);
            Ok::<(), Error>(())
        })
    })?;
    file.sync_all().map_err(|e| Error::io("sync", dest, e))
}

/// Writes each run of non-zero blocks of `buf` (the chunk at `offset`) with one call; zero blocks stay holes.
fn write_data_runs(file: &File, dest: &Path, buf: &[u8], offset: u64) -> Result<()> {
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos <= buf.len() {
        let end = (pos + HOLE_GRANULE).min(buf.len());
        let data = pos < buf.len() && !is_all_zero(&buf[pos..end]);
        match (data, run_start) {
            (true, None) => run_start = Some(pos),
            (false, Some(start)) => {
                file.write_all_at(&buf[start..pos], offset + start as u64).map_err(|e| Error::io("write", dest, e))?;
                run_start = None;
            }
            _ => {}
        }
        if pos == buf.len() {
            break;
        }
        pos = end;
    }
    Ok(())
}
