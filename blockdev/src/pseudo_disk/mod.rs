//! The pseudo-disk: a backed-up disk served as a live, writable disk.
//!
//! Two stores sit in the pseudo-disk's folder, each a sparse data file laid out like the disk plus an
//! allocation map (`alloc_log.rs`):
//! - the **private store** (`private.data`, `private.map`) holds every write, tracked per 4 KiB block; a
//!   block is either absent (read from below), data, or zero (discarded);
//! - the **recall store** (`recall.data`, `recall.map`) holds the chunks recalled from the source, tracked
//!   per source chunk.
//!
//! A read takes each block from the private store, else from the recall store, else recalls its chunk once
//! (concurrent readers of one chunk wait for the same recall; the chunks of one read are recalled in
//! parallel) and answers from the recalled bytes while they are written to the recall store behind it. A
//! sequential reader has the chunks ahead of it recalled before it asks (`readahead.rs`). A write smaller
//! than its block first reads the rest of the block from below. The source is never written.
//!
//! Durability: a flush syncs each data file that changed since the last flush (every change notes an
//! allocation record before it is acknowledged), then appends those records to the maps and syncs them. After a crash the maps name only data that was synced, so every write
//! acknowledged before a completed flush reads back, and a recall cut off midway is recalled again rather
//! than served.
//!
//! Locking: every write and unmap holds the write stripes of the blocks it changes (taken in one order, so
//! no two changes wait for each other) until its store operations have completed, even when its caller is
//! cancelled; a flush runs one at a time under `flush_lock` and takes each store's pending records before
//! it syncs that store's data file, so it logs only changes whose data the sync covers. Recalls take no
//! stripe: the recall store is written only by the one leader of each chunk's recall (`recall.rs`), and a
//! chunk is marked present only once its write has completed.
//!
//! Files: this one has the read, write, unmap and flush API; `stores.rs` the stores and the compaction of
//! their maps; `recall.rs` the single-flight recall and the readahead tasks; `readahead.rs` the detection
//! of sequential streams and their windows; `counters.rs` the counters.

mod counters;
mod readahead;
mod recall;
mod stores;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::alloc_log::RecordKind;
use crate::bitmap::Bitmap;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::source::Source;
use counters::Counters;
use readahead::Streams;
use recall::Recalling;
use stores::Store;

pub use stores::remove_stores;

/// The private store's unit.
pub const BLOCK: u64 = 4096;
/// Stripes of the lock that orders overlapping changes of the private store (by 4 KiB block).
const WRITE_STRIPES: usize = 1024;
/// A map log larger than this is compacted when the pseudo-disk opens.
const COMPACT_OVER: u64 = 4 << 20;

pub use counters::{CounterSnapshot, LatencySnapshot, LATENCY_BOUNDS_US};

/// Writes held back by `PseudoDisk::hold_writes`; they go on when this is dropped.
pub struct WritesHeld {
    _guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

/// Options of a pseudo-disk.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub read_only: bool,
}

pub struct PseudoDisk {
    dir: PathBuf,
    source: Arc<dyn Source>,
    engine: Engine,
    size: u64,
    chunk_size: u64,
    read_only: bool,
    private: Store,
    /// Private blocks that read as zeros (discarded); meaningful only where `private.present` is set.
    private_zero: Bitmap,
    recall: Store,
    /// Chunks known to be all zeros: they read as zeros without the recall store (whose holes would cost a
    /// page-cache fill to read). In memory only: after a reopen they are found again without reading the
    /// source (`Source::is_zero_chunk`).
    recall_zero: Bitmap,
    /// Recalls in progress, until their chunk is in the recall store or the recall failed.
    recalling: Mutex<HashMap<u64, Recalling>>,
    /// Held by every write and unmap for the blocks it changes, until its store operations have completed.
    write_stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
    flush_lock: tokio::sync::Mutex<()>,
    /// The sequential streams of reads, for readahead.
    streams: Mutex<Streams>,
    /// Readahead recalls in flight at most: half the source's `parallel_reads` (at least one), so that readers
    /// always find slots of their own.
    readahead_slots: Arc<Semaphore>,
    /// Reads of the source in flight at most, for readers and readahead together (`parallel_reads`).
    source_slots: Arc<Semaphore>,
    /// Consecutive chunks one recall task reads in a row (the source's `read_batch`).
    read_batch: usize,
    /// One chunk of zeros: the answer for every zero chunk (a read takes only its part of it).
    zeros: Arc<Vec<u8>>,
    counters: Counters,
}

impl PseudoDisk {
    /// Opens the pseudo-disk kept in `dir` (created when new) over `source`.
    pub fn open(dir: &Path, source: Arc<dyn Source>, engine: Engine, options: Options) -> Result<Arc<PseudoDisk>> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Store {
            op: "create folder",
            store: "private",
            source,
        })?;
        let size = source.size();
        let chunk_size = u64::from(source.chunk_size());
        let blocks = size.div_ceil(BLOCK);
        let chunks = size.div_ceil(chunk_size);
        let (private, private_records) = Store::open(dir, "private", BLOCK as u32, blocks, size)?;
        let (recall, recall_records) = Store::open(dir, "recall", source.chunk_size(), chunks, size)?;
        let private_zero = Bitmap::new(blocks);
        for r in &private_records {
            private.present.set_range(r.start, r.count, true);
            private_zero.set_range(r.start, r.count, r.kind == RecordKind::Zero);
        }
        for r in &recall_records {
            recall.present.set_range(r.start, r.count, true);
        }
        let parallel_reads = source.parallel_reads().max(1);
        let read_batch = source.read_batch().max(1);
        let disk = PseudoDisk {
            dir: dir.to_path_buf(),
            source,
            engine,
            size,
            chunk_size,
            read_only: options.read_only,
            private,
            private_zero,
            recall,
            recall_zero: Bitmap::new(chunks),
            recalling: Mutex::new(HashMap::new()),
            write_stripes: (0..WRITE_STRIPES).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect(),
            flush_lock: tokio::sync::Mutex::new(()),
            streams: Mutex::new(Streams::default()),
            readahead_slots: Arc::new(Semaphore::new(parallel_reads.div_ceil(2))),
            source_slots: Arc::new(Semaphore::new(parallel_reads)),
            read_batch,
            zeros: Arc::new(vec![0u8; chunk_size as usize]),
            counters: Counters::default(),
        };
        disk.compact_maps()?;
        Ok(Arc::new(disk))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunks of the source (the recall store's units).
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size: self.size }),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(self: &Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>> {
        let started = Instant::now();
        // Readahead is asked for before the read waits, in the order reads arrive.
        if let Some(data) = self.read_now(offset, len) {
            return Ok(data);
        }
        let result = self.read_waiting(offset, len).await;
        self.counters.read_latency.record(started.elapsed());
        result
    }

    /// The part of `read` that may wait: for the private or recall store's disk, or for recalls.
    async fn read_waiting(self: &Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_range(offset, len as u64)?;
        let end = offset + len as u64;
        let (layer, run_end) = self.run_at(offset, end);
        // The common case, one run for the whole request: the run's own buffer is the answer.
        let out = if run_end == end && len > 0 {
            self.read_run(layer, offset, len).await?
        } else {
            let mut out = vec![0u8; len];
            self.read_into(offset, &mut out).await?;
            out
        };
        self.counters.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Reads `len` bytes at `offset` if that can be done at once, without waiting: the range is one run of
    /// one layer, nothing of it needs a recall, and the page cache holds it. None otherwise (also for a bad
    /// range): `read` then does the work. This is the whole read path of a warm disk.
    pub fn read_now(self: &Arc<Self>, offset: u64, len: usize) -> Option<Vec<u8>> {
        let started = Instant::now();
        let data = self.read_at_once(offset, len)?;
        self.counters.read_latency.record(started.elapsed());
        Some(data)
    }

    fn read_at_once(self: &Arc<Self>, offset: u64, len: usize) -> Option<Vec<u8>> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.size && len > 0)?;
        // Noted once per read even when `read` follows: a read that does not move a stream on changes nothing.
        self.readahead(offset, len as u64);
        let (layer, run_end) = self.run_at(offset, end);
        if run_end != end {
            return None;
        }
        let data = match layer {
            Layer::Zero => vec![0u8; len],
            Layer::Private => {
                let d = self.private.read_cached(offset, len)?;
                self.counters.read_bytes_private.fetch_add(len as u64, Ordering::Relaxed);
                d
            }
            Layer::Below => {
                let (first, last) = (offset / self.chunk_size, (end - 1) / self.chunk_size);
                if !(first..=last).all(|c| self.recall.present.get(c)) {
                    return None;
                }
                let d = self.recall.read_cached(offset, len)?;
                self.counters.read_bytes_recall.fetch_add(len as u64, Ordering::Relaxed);
                d
            }
        };
        self.counters.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
        Some(data)
    }

    /// The layer that holds the block at `pos`, and where the run of blocks from that layer ends (at most
    /// `end`).
    fn run_at(&self, pos: u64, end: u64) -> (Layer, u64) {
        let layer = self.layer_of(pos / BLOCK);
        let mut run_end = ((pos / BLOCK + 1) * BLOCK).min(end);
        while run_end < end && self.layer_of(run_end / BLOCK) == layer {
            run_end = ((run_end / BLOCK + 1) * BLOCK).min(end);
        }
        (layer, run_end)
    }

    /// Fills `out` from `offset`: each run of blocks from the layer that holds it.
    async fn read_into(self: &Arc<Self>, offset: u64, out: &mut [u8]) -> Result<()> {
        let end = offset + out.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (layer, run_end) = self.run_at(pos, end);
            let dest = &mut out[(pos - offset) as usize..(run_end - offset) as usize];
            if layer == Layer::Zero {
                dest.fill(0);
            } else {
                let data = self.read_run(layer, pos, dest.len()).await?;
                dest.copy_from_slice(&data);
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Reads one run of blocks that all come from `layer`. Below the private store, the run's chunks are
    /// recalled first (in parallel, each once); what is in the recall store is read from there, a run of
    /// chunks in one operation, and what is still in memory (just recalled) is copied from there.
    async fn read_run(self: &Arc<Self>, layer: Layer, pos: u64, len: usize) -> Result<Vec<u8>> {
        match layer {
            Layer::Zero => Ok(vec![0u8; len]),
            Layer::Private => {
                let data = self.engine.read(&self.private.data, pos, len).await.map_err(self.private.io_err("read"))?;
                self.counters.read_bytes_private.fetch_add(len as u64, Ordering::Relaxed);
                Ok(data)
            }
            Layer::Below => {
                let (first, last) = (pos / self.chunk_size, (pos + len as u64 - 1) / self.chunk_size);
                let recalled = self.recall_range(first, last).await?;
                self.counters.read_bytes_recall.fetch_add(len as u64, Ordering::Relaxed);
                let in_memory = |pos: u64| recalled[(pos / self.chunk_size - first) as usize].as_ref();
                let end = pos + len as u64;
                let mut out = Vec::with_capacity(len);
                let mut at = pos;
                while at < end {
                    let chunk_end = ((at / self.chunk_size + 1) * self.chunk_size).min(end);
                    if let Some(data) = in_memory(at) {
                        let within = (at % self.chunk_size) as usize;
                        out.extend_from_slice(&data[within..within + (chunk_end - at) as usize]);
                        at = chunk_end;
                    } else {
                        let mut run_end = chunk_end;
                        while run_end < end && in_memory(run_end).is_none() {
                            run_end = (run_end + self.chunk_size).min(end);
                        }
                        let data = self
                            .engine
                            .read(&self.recall.data, at, (run_end - at) as usize)
                            .await
                            .map_err(self.recall.io_err("read"))?;
                        if out.is_empty() && run_end == end {
                            return Ok(data); // the whole run in the recall store: its buffer is the answer
                        }
                        out.extend_from_slice(&data);
                        at = run_end;
                    }
                }
                Ok(out)
            }
        }
    }

    fn layer_of(&self, block: u64) -> Layer {
        if self.private.present.get(block) {
            if self.private_zero.get(block) {
                Layer::Zero
            } else {
                Layer::Private
            }
        } else if self.recall_zero.get(block * BLOCK / self.chunk_size) {
            Layer::Zero
        } else {
            Layer::Below
        }
    }

    /// Writes `data` at `offset` into the private store. With `fua`, the write is durable on return.
    /// The buffer is taken as it is: a write of whole blocks reaches the engine without a copy.
    pub async fn write(self: &Arc<Self>, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let end = offset + data.len() as u64;
        self.change(offset, end, move |me| async move { me.write_locked(offset, data).await }).await?;
        if fua {
            self.flush().await?;
        }
        self.counters.write_latency.record(started.elapsed());
        Ok(())
    }

    /// PRE-FETCH: starts recalling `offset..offset + len` in the background (as much as the readahead
    /// bounds allow now); later reads of it find it recalled or on its way.
    pub fn prefetch(self: &Arc<Self>, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.prefetch_range(offset, len);
        Ok(())
    }

    /// Reads `len` bytes at `offset`, hands them to `edit`, and writes them back when `edit` says so (its
    /// first result), all as one change: no other write or discard of those blocks comes between the read
    /// and the write (COMPARE AND WRITE, ORWRITE). Returns `edit`'s second result. With `fua`, a write is
    /// durable on return.
    pub async fn read_modify_write<T, F>(self: &Arc<Self>, offset: u64, len: usize, fua: bool, edit: F) -> Result<T>
    where
        F: FnOnce(&mut [u8]) -> (bool, T) + Send + 'static,
        T: Send + 'static,
    {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(edit(&mut []).1); // no blocks to lock, read or write
        }
        let (wrote, result) = self
            .change(offset, offset + len as u64, move |me| async move {
                let mut data = vec![0u8; len];
                me.read_into(offset, &mut data).await?;
                let (write, result) = edit(&mut data);
                if write {
                    me.write_locked(offset, Bytes::from(data)).await?;
                }
                Ok((write, result))
            })
            .await?;
        if wrote && fua {
            self.flush().await?;
        }
        Ok(result)
    }

    /// Runs a change of the private store to its end, with the blocks it changes locked until its store
    /// operations have completed, even when the caller is cancelled (an aborted iSCSI task, a dropped
    /// connection): an operation already handed to the engine must not land after a later change of the same
    /// blocks, so that later change waits for it.
    async fn change<F, Fut, T>(self: &Arc<Self>, offset: u64, end: u64, body: F) -> Result<T>
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let mut stripes: Vec<usize> = if last - first + 1 >= WRITE_STRIPES as u64 {
            (0..WRITE_STRIPES).collect()
        } else {
            (first..=last).map(|b| (b % WRITE_STRIPES as u64) as usize).collect()
        };
        // One order for everyone: no two changes wait for each other.
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.write_stripes[stripe].clone().lock_owned().await);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let result = body(me).await;
            drop(guards);
            result
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::Store { op: "write", store: "private", source: std::io::Error::other(e.to_string()) })
        })
    }

    /// `write` with its blocks already locked.
    async fn write_locked(self: &Arc<Self>, offset: u64, mut data: Bytes) -> Result<()> {
        let len = data.len();
        let end = offset + len as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let block_start = block * BLOCK;
            let block_end = (block_start + BLOCK).min(self.size);
            if pos == block_start && end >= block_end {
                // A run of whole blocks.
                let run_end = if end == self.size { end } else { end / BLOCK * BLOCK };
                // The common case, the whole write one run of whole blocks, hands its buffer over as it is
                // (a Bytes that owns its whole buffer becomes a Vec without a copy); a run cut out of a
                // larger write is copied.
                let piece = if pos == offset && run_end == end {
                    Vec::from(std::mem::take(&mut data))
                } else {
                    data[(pos - offset) as usize..(run_end - offset) as usize].to_vec()
                };
                self.engine.write(&self.private.data, pos, piece).await.map_err(self.private.io_err("write"))?;
                self.mark_private(block, (run_end - pos).div_ceil(BLOCK), RecordKind::Data);
                pos = run_end;
            } else {
                // Part of a block: merge with the block as it reads now.
                let piece_end = end.min(block_end);
                let mut whole = vec![0u8; (block_end - block_start) as usize];
                self.read_into(block_start, &mut whole).await?;
                whole[(pos - block_start) as usize..(piece_end - block_start) as usize]
                    .copy_from_slice(&data[(pos - offset) as usize..(piece_end - offset) as usize]);
                self.engine
                    .write(&self.private.data, block_start, whole)
                    .await
                    .map_err(self.private.io_err("write"))?;
                self.mark_private(block, 1, RecordKind::Data);
                pos = piece_end;
            }
        }
        self.counters.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn mark_private(&self, block: u64, count: u64, kind: RecordKind) {
        self.private_zero.set_range(block, count, kind == RecordKind::Zero);
        self.private.present.set_range(block, count, true);
        self.private.note(kind, block, count);
    }

    /// Discards `len` bytes at `offset`: they read as zeros from now on. Whole blocks are marked zero in the
    /// private store (and their space freed); partial blocks at the edges are written with zeros.
    pub async fn unmap(self: &Arc<Self>, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.change(offset, offset + len, move |me| async move { me.unmap_locked(offset, len).await }).await
    }

    /// `unmap` with its blocks already locked.
    async fn unmap_locked(self: &Arc<Self>, offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let first_whole = offset.div_ceil(BLOCK);
        let last_whole = if end == self.size { self.size.div_ceil(BLOCK) } else { end / BLOCK };
        if first_whole >= last_whole {
            return self.write_locked(offset, Bytes::from(vec![0u8; len as usize])).await;
        }
        let head_end = first_whole * BLOCK;
        if offset < head_end {
            self.write_locked(offset, Bytes::from(vec![0u8; (head_end - offset) as usize])).await?;
        }
        let (start, count) = (first_whole, last_whole - first_whole);
        self.mark_private(start, count, RecordKind::Zero);
        self.engine
            .punch_hole(&self.private.data, start * BLOCK, (count * BLOCK).min(self.size - start * BLOCK))
            .await
            .map_err(self.private.io_err("discard"))?;
        let tail_start = (last_whole * BLOCK).min(self.size);
        if tail_start < end {
            self.write_locked(tail_start, Bytes::from(vec![0u8; (end - tail_start) as usize])).await?;
        }
        Ok(())
    }

    /// Holds every write and unmap back until the guard is dropped (they wait; reads go on), once the
    /// changes already running have completed: the disk's content stays as it is while the guard lives,
    /// as a commit of the disk into a backup needs.
    pub async fn hold_writes(&self) -> WritesHeld {
        let mut guards = Vec::with_capacity(WRITE_STRIPES);
        // In stripe order, as every change takes them: no change and no hold wait for each other.
        for stripe in &self.write_stripes {
            guards.push(stripe.clone().lock_owned().await);
        }
        WritesHeld { _guards: guards }
    }

    /// Whether anything of `offset..offset + len` was written or discarded since the pseudo-disk was
    /// made: where it was not, the disk reads as its source.
    pub fn changed(&self, offset: u64, len: u64) -> bool {
        if len == 0 || offset >= self.size {
            return false;
        }
        let (first, last) = (offset / BLOCK, (offset + len - 1).min(self.size - 1) / BLOCK);
        self.private.present.any_in(first, last - first + 1)
    }

    /// Makes every write acknowledged so far durable.
    pub async fn flush(&self) -> Result<()> {
        let _one_at_a_time = self.flush_lock.lock().await;
        for store in [&self.private, &self.recall] {
            let records = std::mem::take(&mut *store.pending.lock().expect("not poisoned"));
            // Every change of a store notes a record before it is acknowledged (a write of the private
            // store, a recall kept in the recall store): a store without records has nothing to make
            // durable, and its sync (most of a flush's cost) is skipped.
            if records.is_empty() {
                continue;
            }
            self.engine.sync(&store.data).await.map_err(store.io_err("sync"))?;
            let mut log = store.log.lock().await;
            if let Err(e) = log.append(&self.engine, &records).await {
                // Keep the records for the next flush.
                store.pending.lock().expect("not poisoned").splice(0..0, records);
                return Err(store.io_err("sync map")(e));
            }
        }
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Which ranges of the disk the private store says are zeros or discarded, as (offset, length): what
    /// GET LBA STATUS reports as deallocated.
    pub fn discarded_ranges(&self) -> Vec<(u64, u64)> {
        self.private
            .present
            .runs()
            .into_iter()
            .flat_map(|(s, c)| (s..s + c).filter(|&b| self.private_zero.get(b)))
            .fold(Vec::<(u64, u64)>::new(), |mut acc, b| {
                match acc.last_mut() {
                    Some((s, l)) if *s + *l == b * BLOCK => *l += BLOCK,
                    _ => acc.push((b * BLOCK, BLOCK)),
                }
                acc
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Private,
    Zero,
    Below,
}

#[cfg(test)]
#[path = "../pseudo_disk_tests.rs"]
mod tests;
