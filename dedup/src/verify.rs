//! Verify: re-read and re-hash every chunk that backups use, and name each missing or corrupt chunk with the
//! byte ranges of the disks it affects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::chunk::{self, ChunkId};
use crate::error::{Error, Result};
use crate::library::Library;
use crate::manifest::Manifest;
use crate::workers;

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub backups: usize,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<ChunkProblem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ChunkProblem {
    pub chunk: String,
    /// "missing" or "corrupt".
    pub kind: String,
    pub reason: String,
    pub affects: Vec<AffectedRange>,
}

/// Bytes `start..end` of disk `disk` of backup `backup` depend on the chunk.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AffectedRange {
    pub backup: String,
    pub disk: usize,
    pub start: u64,
    pub end: u64,
}

/// The chunks `backups` use that the store no longer has, each with the byte ranges it leaves without data.
/// Only asks where each chunk is (nothing is read), and holds only what is missing: cheap enough for repair.
pub fn lost_chunks(lib: &Library, backups: &[Manifest]) -> Result<Vec<ChunkProblem>> {
    let mut lost: HashMap<ChunkId, Vec<AffectedRange>> = HashMap::new();
    for m in backups {
        for disk in 0..m.disks.len() {
            let index = lib.load_index(m, disk)?;
            index.for_each(|i, e| {
                if e.id.is_zero() || (!lost.contains_key(&e.id) && lib.store().locate(&e.id)?.is_some()) {
                    return Ok(());
                }
                add_use(lost.entry(e.id).or_default(), &m.id, disk, index.chunk_range(i));
                Ok(())
            })?;
        }
    }
    let mut problems: Vec<ChunkProblem> = lost
        .into_iter()
        .map(|(id, affects)| ChunkProblem {
            chunk: id.to_hex(),
            kind: "missing".to_string(),
            reason: Error::ChunkMissing { id }.to_string(),
            affects,
        })
        .collect();
    sort_by_first_use(&mut problems);
    Ok(problems)
}

/// Adds a use of a chunk, extending the last range when it continues it.
fn add_use(list: &mut Vec<AffectedRange>, backup: &str, disk: usize, r: std::ops::Range<u64>) {
    match list.last_mut() {
        Some(last) if last.backup == backup && last.disk == disk && last.end == r.start => last.end = r.end,
        _ => list.push(AffectedRange { backup: backup.to_string(), disk, start: r.start, end: r.end }),
    }
}

/// Orders problems by the first backup, disk and offset each affects.
fn sort_by_first_use(problems: &mut [ChunkProblem]) {
    problems.sort_by(|a, b| {
        a.affects
            .first()
            .map(|r| (&r.backup, r.disk, r.start))
            .cmp(&b.affects.first().map(|r| (&r.backup, r.disk, r.start)))
    });
}

/// Checks every chunk used by `backups`. `progress` gets (chunks done, chunks total).
pub fn verify(lib: &Library, backups: &[Manifest], progress: &(dyn Fn(u64, u64) + Sync)) -> Result<VerifyReport> {
    // Where each chunk is used: (backup, disk, chunk number, chunk byte range).
    let mut uses: HashMap<ChunkId, Vec<AffectedRange>> = HashMap::new();
    for m in backups {
        for disk in 0..m.disks.len() {
            let index = lib.load_index(m, disk)?;
            index.for_each(|i, e| {
                if e.id.is_zero() {
                    return Ok(());
                }
                add_use(uses.entry(e.id).or_default(), &m.id, disk, index.chunk_range(i));
                Ok(())
            })?;
        }
    }
    let ids: Vec<ChunkId> = uses.keys().copied().collect();
    let total = ids.len() as u64;
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let problems: Mutex<Vec<(ChunkId, Error)>> = Mutex::new(Vec::new());
    // A worker per core in a folder (decoding is the work); in S3 each waits on one request at a time, so
    // as many as the library keeps in flight.
    let threads = if lib.is_remote() { lib.reads_in_flight() } else { workers::cores() };
    let pool = workers::pool(threads, lib.root())?;
    // A bad chunk is a finding; any other error (the store cannot be read) stops the verify.
    pool.install(|| {
        ids.par_iter().try_for_each_init(Vec::new, |buf, id| {
            match lib.store().get(id).and_then(|stored| chunk::decode_verified(id, &stored, buf)) {
                Ok(()) => {
                    bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                }
                Err(e) if e.is_bad_chunk() => problems.lock().expect("not poisoned").push((*id, e)),
                Err(e) => return Err(e),
            }
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok(())
        })
    })?;
    let mut problems: Vec<ChunkProblem> = problems
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .map(|(id, e)| ChunkProblem {
            chunk: id.to_hex(),
            kind: if matches!(e, Error::ChunkMissing { .. }) { "missing" } else { "corrupt" }.to_string(),
            reason: e.to_string(),
            affects: uses.remove(&id).unwrap_or_default(),
        })
        .collect();
    sort_by_first_use(&mut problems);
    Ok(VerifyReport { backups: backups.len(), chunks_checked: total, bytes_checked: bytes.into_inner(), problems })
}
