//! Garbage collection, and the registry of backups in progress that keeps it safe.
//!
//! Mark and sweep by time, safe while backups run:
//! - A backup in progress registers itself in `running/<id>` (holding an exclusive flock on that file, with
//!   its start time inside) for as long as it runs, and marks the container (pack) of every chunk it reuses
//!   as used, after it started; the chunks it adds are in packs it writes.
//! - gc first reads the running registry (the oldest start time S among live entries), then marks the chunks
//!   of every finished backup, then has the store sweep unmarked chunks whose containers were last used
//!   before min(gc start, S), minus a margin for time-stamp granularity.
//! - The sweep holds `chunks.lock` exclusively; a backup reuses or adds a chunk holding it shared, so a chunk
//!   is never deleted between a backup finding it and marking it. A backup that finds a chunk gone writes it
//!   again.
//!
//! The order matters: a backup that finishes while gc runs either is still registered when gc reads the
//! registry, or its manifest is already there when gc marks.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::chunk::ChunkId;
use crate::durable;
use crate::error::{Error, Result};
use crate::library::Library;
use crate::lock::{self, LockKind};
use crate::store::SweepStats;

/// Margin subtracted from the cutoff: file time stamps may be coarser than the clock.
const TIME_MARGIN: Duration = Duration::from_secs(2);

/// A backup in progress, registered for as long as this value lives.
pub struct RunningBackup {
    path: PathBuf,
    _lock: lock::Held,
}

impl RunningBackup {
    pub fn register(lib: &Library, id: &str) -> Result<Self> {
        // The entry appears under its name already locked and holding its start time: gc removes entries
        // it can lock, so an entry must never be visible unlocked.
        let tmp = lib.path("tmp").join(format!(".tmp-running-{id}"));
        let path = lib.path("running").join(id);
        let file = fs::File::create(&tmp).map_err(|e| Error::io("register backup in", &tmp, e))?;
        let registered = (|| {
            let mut held = lock::lock(file, LockKind::Exclusive).map_err(|e| Error::io("lock", &tmp, e))?;
            let start = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            write!(held.file_mut(), "{}", start.as_secs()).map_err(|e| Error::io("write", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| Error::io("register backup in", &path, e))?;
            Ok(held)
        })();
        match registered {
            Ok(held) => Ok(RunningBackup { path, _lock: held }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

impl Drop for RunningBackup {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The earliest start among backups in progress. Entries left by processes that died are removed.
fn oldest_running_start(lib: &Library) -> Result<Option<SystemTime>> {
    let dir = lib.path("running");
    let mut oldest: Option<SystemTime> = None;
    for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
        let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if let Ok(_unused) = lock::try_lock(file, LockKind::Shared).map_err(|e| Error::io("lock", &path, e))? {
            // Nobody holds it: the backup's process is gone.
            let _ = fs::remove_file(&path);
            continue;
        }
        // A live backup; its start time is in the file (or, if it is still being written, the file's time).
        let start = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .or_else(|| entry.metadata().ok().and_then(|m| m.modified().ok()))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        oldest = Some(oldest.map_or(start, |o| o.min(start)));
    }
    Ok(oldest)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcStats {
    pub chunks_in_use: u64,
    #[serde(flatten)]
    pub sweep: SweepStats,
    pub temp_files_removed: u64,
}

/// Deletes every chunk that no finished backup uses and no running backup may still use.
pub fn collect_garbage(lib: &Library) -> Result<GcStats> {
    let gc_start = SystemTime::now();
    let running = oldest_running_start(lib)?;
    let cutoff = running.map_or(gc_start, |r| r.min(gc_start)) - TIME_MARGIN;

    let mut in_use: HashSet<ChunkId> = HashSet::new();
    for manifest in lib.backups()? {
        for disk in 0..manifest.disks.len() {
            lib.load_index(&manifest, disk)?.for_each(|_, e| {
                if !e.id.is_zero() {
                    in_use.insert(e.id);
                }
                Ok(())
            })?;
        }
    }
    let mut stats = GcStats { chunks_in_use: in_use.len() as u64, ..Default::default() };

    with_chunks_locked(lib, || {
        stats.sweep = lib.store().sweep(&in_use, cutoff)?;
        // Temporary files older than the cutoff belong to no live writer.
        let tmp = lib.path("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io("list", &tmp, e))?.flatten() {
            let old = entry.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < cutoff);
            if old && fs::remove_file(entry.path()).is_ok() {
                stats.temp_files_removed += 1;
            }
        }
        // Backup folders of interrupted commits or forgets.
        let backups = lib.path("backups");
        for entry in fs::read_dir(&backups).map_err(|e| Error::io("list", &backups, e))?.flatten() {
            let name = entry.file_name();
            let is_tmp = name.to_str().is_some_and(durable::is_temp_name);
            let old = entry.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < cutoff);
            if is_tmp && old {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    })?;
    Ok(stats)
}

/// What `library repair` did and what it could not save.
#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    #[serde(flatten)]
    pub store: crate::store::RepairStats,
    /// Chunks that finished backups use and that are nowhere in the library after the repair, each with the
    /// backups and byte ranges that lost their data.
    pub lost: Vec<crate::verify::ChunkProblem>,
}

/// Rebuilds damaged or missing pack indexes from the packs and drops indexes whose pack has gone (see
/// `ChunkStore::repair`), with the chunk lock held exclusively so that no backup adds chunks meanwhile; then
/// names what every finished backup has lost.
pub fn repair(lib: &Library) -> Result<RepairReport> {
    with_chunks_locked(lib, || {
        let store = lib.store().repair()?;
        let backups = lib.backups()?;
        let lost = crate::verify::lost_chunks(lib, &backups)?;
        Ok(RepairReport { store, lost })
    })
}

/// Runs `f` with `chunks.lock` held exclusively: no backup reuses or adds a chunk meanwhile.
fn with_chunks_locked<T>(lib: &Library, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let held = lock::lock(lib.chunks_lock()?, LockKind::Exclusive)
        .map_err(|e| Error::io("lock", lib.path("chunks.lock"), e))?;
    let result = f();
    let _ = held.release();
    result
}
