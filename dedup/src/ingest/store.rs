//! The ingest's workers: hash each chunk of a span, reuse it when the library has it already, otherwise
//! compress and store it; for a chunk unchanged since the parent, only make sure the library still holds it
//! (and mark it used, as a reuse does).

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::pipeline::{Done, DoneChunk, Job, Outcome};
use crate::chunk::{self, ChunkId};
use crate::error::{Error, Result};
use crate::index::IndexEntry;
use crate::library::Library;
use crate::lock::{self, LockKind};
use crate::manifest::IngestTimes;

/// One worker: runs until the reader is done or something failed; says where its time went.
pub(super) fn store_chunks(
    lib: &Library,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    failed: &AtomicBool,
) -> Result<IngestTimes> {
    let mut worker = Worker {
        lib,
        compressor: zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL)
            .map_err(|e| Error::io("start zstd", lib.root(), e))?,
        encoded: Vec::new(),
        lock_file: lib.chunk_lock_file()?,
        times: IngestTimes::default(),
    };
    loop {
        let waiting = Instant::now();
        let Ok(job) = jobs.recv() else { break };
        worker.times.workers_waiting += waiting.elapsed().as_secs_f64();
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let finished = match job {
            Job::Span { first, buf } => {
                let chunks = worker.under_chunk_lock(|w| w.store_span(first, buf.bytes()))?;
                Done { chunks, buf: Some(buf) }
            }
            Job::Unchanged(index, entry) => {
                let chunk = worker.under_chunk_lock(|w| w.keep_unchanged(index, &entry))?;
                Done { chunks: vec![chunk], buf: None }
            }
        };
        if done.send(finished).is_err() {
            break;
        }
    }
    Ok(worker.times)
}

struct Worker<'a> {
    lib: &'a Library,
    compressor: zstd::bulk::Compressor<'static>,
    /// The encoding of the chunk being stored, reused from chunk to chunk.
    encoded: Vec<u8>,
    /// The library's chunk lock file, handed to the lock while it is held; `None` in a library where the
    /// backup's registration alone keeps gc away (S3).
    lock_file: Option<File>,
    times: IngestTimes,
}

impl Worker<'_> {
    /// Runs `f` under the shared chunk lock, so that gc cannot delete a chunk between the moment it is found
    /// to be stored and the moment the index names it. Taken once per span: two system calls per chunk were
    /// measurable.
    fn under_chunk_lock<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let lock_path = || self.lib.root().join("chunks.lock");
        let Some(file) = self.lock_file.take() else { return f(self) };
        let held = lock::lock(file, LockKind::Shared).map_err(|e| Error::io("lock", lock_path(), e))?;
        let result = f(self);
        self.lock_file = Some(held.release().map_err(|e| Error::io("unlock", lock_path(), e))?);
        result
    }

    /// Hashes, reuses or stores each chunk of a span that starts at chunk `first`.
    fn store_span(&mut self, first: usize, span: &[u8]) -> Result<Vec<DoneChunk>> {
        let chunk_size = self.lib.chunk_size() as usize;
        span.chunks(chunk_size).enumerate().map(|(k, data)| self.store_chunk(first + k, data)).collect()
    }

    fn store_chunk(&mut self, index: usize, data: &[u8]) -> Result<DoneChunk> {
        let mut clock = Clock::start();
        if chunk::is_all_zero(data) {
            self.times.hash += clock.lap();
            return Ok(DoneChunk::zero(index));
        }
        let id = ChunkId::of(data);
        self.times.hash += clock.lap();
        let store = self.lib.store();
        let found = store.touch(&id)?;
        self.times.store += clock.lap();
        if let Some(at) = found {
            return Ok(DoneChunk { index, id, at: Some(at), outcome: Outcome::Reused });
        }
        chunk::encode_into(data, &mut self.compressor, &mut self.encoded);
        self.times.compress += clock.lap();
        let at = store.put(&id, &self.encoded)?;
        self.times.store += clock.lap();
        let outcome = Outcome::New { plain: data.len() as u64, stored: self.encoded.len() as u64 };
        Ok(DoneChunk { index, id, at: Some(at), outcome })
    }

    /// The parent's chunk must still be in the library; when it is not, the backup fails rather than name a
    /// chunk it does not hold.
    fn keep_unchanged(&mut self, index: usize, entry: &IndexEntry) -> Result<DoneChunk> {
        let mut clock = Clock::start();
        let found = self.lib.store().touch(&entry.id);
        self.times.store += clock.lap();
        let at = found?.ok_or(Error::ChunkMissing { id: entry.id })?;
        Ok(DoneChunk { index, id: entry.id, at: Some(at), outcome: Outcome::Reused })
    }
}

/// Seconds between laps.
struct Clock(Instant);

impl Clock {
    fn start() -> Self {
        Clock(Instant::now())
    }

    /// Seconds since the start or the last lap.
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let s = (now - self.0).as_secs_f64();
        self.0 = now;
        s
    }
}
