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
//!
//! In an S3 library a backup cannot mark a pack (objects have no times to set): gc holds the library's lock
//! throughout, and while backups run it first agrees with them on what the sweep may remove (see
//! `library/s3.rs`): they stop reusing the packs it would delete or rewrite, the packs they used already are
//! spared, and the manifests published meanwhile are read again before the sweep.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::library::{Guard, Library};
use crate::store::{PackName, SweepStats};

/// A backup in progress, registered for as long as this value lives.
pub struct RunningBackup {
    registered: Box<dyn Guard>,
}

impl RunningBackup {
    pub fn register(lib: &Library, id: &str) -> Result<Self> {
        Ok(RunningBackup { registered: lib.backend().register_running(id, lib.shared_store())? })
    }

    /// Fails once the registration may have lapsed (see `Guard::is_live`): a gc may then have removed
    /// chunks this backup reuses, so it must not be published.
    pub fn check(&self, id: &str) -> Result<()> {
        if self.registered.is_live() {
            return Ok(());
        }
        Err(Error::RegistrationLapsed { id: id.to_string() })
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcStats {
    pub chunks_in_use: u64,
    /// Backups in progress when gc looked. In an S3 library the sweep waits for each to answer; `swept` is
    /// false when one did not.
    pub backups_running: u64,
    /// Packs the sweep left whole because a backup in progress uses them (S3).
    pub packs_spared: u64,
    pub swept: bool,
    #[serde(flatten)]
    pub sweep: SweepStats,
    pub temp_files_removed: u64,
}

/// Deletes every chunk that no finished backup uses and no running backup may still use.
pub fn collect_garbage(lib: &Library) -> Result<GcStats> {
    let gc_start = SystemTime::now();
    // In an S3 library the lock comes before anything is read (see `library/s3.rs`); in a folder the
    // registry is read first and the lock is taken only around the sweep, so that backups wait less.
    let early_lock = if lib.is_remote() { Some(lib.backend().lock_chunks()?) } else { None };
    let (cutoff, running) = lib.backend().sweep_cutoff(gc_start)?;

    let mut in_use = chunks_in_use(lib)?;
    let mut stats = GcStats { chunks_in_use: in_use.len() as u64, backups_running: running, ..Default::default() };
    let Some(cutoff) = cutoff else { return Ok(stats) };
    with_chunks_locked(lib, early_lock, || {
        // Backups in progress in a library where they cannot mark what they reuse: only what they agree to.
        let only = if lib.is_remote() && running > 0 {
            let condemned = lib.store().condemned(&in_use, cutoff)?;
            let spared = if condemned.is_empty() {
                HashSet::new()
            } else {
                match lib.backend().agree_on_sweep(&condemned)? {
                    Some(spared) => spared,
                    None => return Ok(()),
                }
            };
            in_use = chunks_in_use(lib)?;
            stats.chunks_in_use = in_use.len() as u64;
            stats.packs_spared = condemned.intersection(&spared).count() as u64;
            Some(condemned.difference(&spared).copied().collect::<HashSet<PackName>>())
        } else {
            None
        };
        stats.swept = true;
        stats.sweep = lib.store().sweep(&in_use, cutoff, only.as_ref())?;
        if only.is_none() {
            stats.temp_files_removed = lib.backend().clean_up(cutoff)?;
        }
        Ok(())
    })?;
    Ok(stats)
}

/// Every chunk a finished backup names.
fn chunks_in_use(lib: &Library) -> Result<HashSet<ChunkId>> {
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
    Ok(in_use)
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
    with_chunks_locked(lib, None, || {
        let store = lib.store().repair()?;
        let backups = lib.backups()?;
        let lost = crate::verify::lost_chunks(lib, &backups)?;
        Ok(RepairReport { store, lost })
    })
}

/// Runs `f` with the library's chunks locked (`held`, or taken now): no backup reuses or adds a chunk
/// meanwhile.
fn with_chunks_locked<T>(lib: &Library, held: Option<Box<dyn Guard>>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let held = match held {
        Some(h) => h,
        None => lib.backend().lock_chunks()?,
    };
    let result = f();
    drop(held);
    result
}
