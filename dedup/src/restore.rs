//! Restoring a disk of a backup to a sparse file, bit-identical to the source. Chunks are read and checked
//! by worker threads and written in place with positioned writes; zero blocks are left as holes.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::chunk::is_all_zero;
use crate::error::{Error, Result};
use crate::reader::BackupDisk;

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
    let count = disk.index().chunks.len();
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    // Twice the cores: a worker waiting for a pack read leaves its core to another.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) * 2;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || first_error.lock().expect("not poisoned").is_some() {
                        break;
                    }
                    let range = disk.index().chunk_range(i);
                    let result = (|| {
                        if disk.index().chunks[i].is_zero() {
                            return Ok(());
                        }
                        disk.read_chunk(i, &mut buf)?;
                        // Write each run of non-zero blocks with one call; zero blocks stay holes.
                        let mut run_start: Option<usize> = None;
                        let mut pos = 0;
                        while pos <= buf.len() {
                            let end = (pos + HOLE_GRANULE).min(buf.len());
                            let data = pos < buf.len() && !is_all_zero(&buf[pos..end]);
                            match (data, run_start) {
                                (true, None) => run_start = Some(pos),
                                (false, Some(start)) => {
                                    file.write_all_at(&buf[start..pos], range.start + start as u64)
                                        .map_err(|e| Error::io("write", dest, e))?;
                                    run_start = None;
                                }
                                _ => {}
                            }
                            if pos == buf.len() {
                                break;
                            }
                            pos = end;
                        }
                        // Start the write-back of what is written so far every few MiB, so that the final
                        // fsync has little left to do (one call per chunk costs more than it saves).
                        let before = written.fetch_add(range.end - range.start, Ordering::Relaxed);
                        if before / WRITEBACK_EVERY != (before + range.end - range.start) / WRITEBACK_EVERY {
                            // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
                            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                        }
                        Ok(())
                    })();
                    if let Err(e) = result {
                        first_error.lock().expect("not poisoned").get_or_insert(e);
                        break;
                    }
                    progress(done.fetch_add(range.end - range.start, Ordering::Relaxed) + range.end - range.start);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("not poisoned") {
        return Err(e);
    }
    file.sync_all().map_err(|e| Error::io("sync", dest, e))
}
