//! Recalls from the source: each chunk once at a time however many readers want it (single flight: the
//! first reader to ask claims the recall, the others wait for it), and readahead for sequential readers.
//!
//! A recall runs detached from the readers that wait for it: a reader that gives up (an aborted iSCSI task,
//! a dropped connection) never cuts a recall off midway. At most the source's `parallel_reads` recalls run
//! at once; a blocking source reads its `read_batch` consecutive chunks in a row on one blocking thread, a
//! source that reads asynchronously is awaited on the runtime. Each chunk answers its waiters as soon as the
//! source has given it (verified: a source never gives bytes it has not checked); then a blocking thread
//! writes it to the recall store, and only after that write is the chunk marked present. The allocation
//! change is logged by the next flush, after the data file is synced. So no reader, and no reopen after a
//! crash, ever reads a recall store block that was not written whole: a recall cut off midway is recalled
//! again.
//!
//! Readahead (`readahead.rs` decides what) claims the chunks ahead of a stream the same way, at most half
//! the source's `parallel_reads` batches at once: a chunk that finds no free slot is left for the stream's
//! next read, so readahead never queues up in front of the reads that are waiting.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::PseudoDisk;
use crate::alloc_log::RecordKind;
use crate::error::{Error, Result};
use crate::source::{chunk_len, error_chain, SourceError};

/// A recall as everyone who waits for it sees it.
#[derive(Clone)]
pub(super) enum Recall {
    /// The source is being read.
    Fetching,
    /// The chunk's bytes (they may still be on their way to the recall store).
    Ready(Arc<Vec<u8>>),
    /// The source could not give the chunk: each waiter gets this error; the next reader tries again.
    Failed(Arc<SourceError>),
}

pub(super) type Recalling = watch::Receiver<Recall>;

/// What a chunk needs, as a reader finds it.
enum Claim {
    /// Readable now: from the recall store (None), or these bytes (a zero chunk).
    Ready(Option<Arc<Vec<u8>>>),
    /// Being recalled by someone else.
    Wait(Recalling),
    /// Being recalled by no one: this caller starts the recall.
    Lead(RecallEntry, Recalling),
}

/// How a wait for a recall ended.
enum Waited {
    Ready(Arc<Vec<u8>>),
    Failed(SourceError),
    /// The recall ended without an answer (its task died): ask again.
    Gone,
}

impl PseudoDisk {
    /// Makes chunks `first..=last` readable, recalling those that need it, in parallel; for each chunk None
    /// when it is in the recall store (read it there), its bytes when they are in memory (just recalled, or
    /// still on their way to the recall store; a zero chunk is the disk's one chunk of zeros, which may be
    /// longer than a short last chunk).
    pub(super) async fn recall_range(self: &Arc<Self>, first: u64, last: u64) -> Result<Vec<Option<Arc<Vec<u8>>>>> {
        let mut out = vec![None; (last - first + 1) as usize];
        let mut todo: Vec<u64> = (first..=last).collect();
        while !todo.is_empty() {
            let mut waits = Vec::new();
            let mut batch: Vec<RecallEntry> = Vec::new();
            for chunk in todo.drain(..) {
                match self.claim(chunk) {
                    Claim::Ready(data) => out[(chunk - first) as usize] = data,
                    Claim::Wait(rx) => waits.push((chunk, rx)),
                    Claim::Lead(entry, rx) => {
                        waits.push((chunk, rx));
                        if batch.last().is_some_and(|e| e.chunk + 1 != chunk) || batch.len() == self.read_batch {
                            self.start_fetch(std::mem::take(&mut batch), None);
                        }
                        batch.push(entry);
                    }
                }
            }
            if !batch.is_empty() {
                self.start_fetch(batch, None);
            }
            let results = futures_util::future::join_all(
                waits.into_iter().map(|(chunk, rx)| async move { (chunk, wait(rx).await) }),
            )
            .await;
            for (chunk, waited) in results {
                match waited {
                    Waited::Ready(data) => out[(chunk - first) as usize] = Some(data),
                    Waited::Failed(e) => {
                        return Err(Error::Recall { chunk, source_name: self.source.describe(), source: e })
                    }
                    Waited::Gone => todo.push(chunk),
                }
            }
        }
        Ok(out)
    }

    /// Finds out what chunk `chunk` needs; claims its recall when no one has.
    fn claim(self: &Arc<Self>, chunk: u64) -> Claim {
        if self.recall.present.get(chunk) {
            return Claim::Ready(None);
        }
        if self.recall_zero.get(chunk) {
            return Claim::Ready(Some(self.zeros.clone()));
        }
        if self.source.is_zero_chunk(chunk) {
            self.recall_zero.set_range(chunk, 1, true);
            return Claim::Ready(Some(self.zeros.clone()));
        }
        let mut map = self.recalling.lock().expect("not poisoned");
        // Looked at again under the lock: a recall that ended meanwhile left the chunk present or known zero.
        if self.recall.present.get(chunk) {
            return Claim::Ready(None);
        }
        if self.recall_zero.get(chunk) {
            return Claim::Ready(Some(self.zeros.clone()));
        }
        if let Some(rx) = map.get(&chunk) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(Recall::Fetching);
        map.insert(chunk, rx.clone());
        Claim::Lead(RecallEntry { disk: self.clone(), chunk, tx: Some(tx) }, rx)
    }

    /// Recalls the claimed chunks `entries` (consecutive) once a source slot is free: one blocking task
    /// reads them in a row, or, from a source that reads asynchronously, this task awaits each read.
    fn start_fetch(self: &Arc<Self>, entries: Vec<RecallEntry>, readahead_slot: Option<OwnedSemaphorePermit>) {
        let me = self.clone();
        tokio::spawn(async move {
            let slot = me.source_slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            let mut entries = entries.into_iter();
            while let Some(entry) = entries.next() {
                let chunk = entry.chunk;
                let Some(read) = me.source.read_chunk_async(chunk) else {
                    // A blocking source: this chunk and the rest of the batch on one blocking thread.
                    let batch: Vec<RecallEntry> = std::iter::once(entry).chain(entries).collect();
                    let worker = me.clone();
                    let _ = tokio::task::spawn_blocking(move || worker.read_batch_blocking(batch)).await;
                    break;
                };
                let read = std::panic::AssertUnwindSafe(read).catch_unwind().await;
                if let Some(kept) = me.answer(entry, read.unwrap_or_else(|_| Err(panicked(chunk)))) {
                    // The answer is out: keeping the chunk takes a blocking thread but no source slot.
                    let worker = me.clone();
                    tokio::task::spawn_blocking(move || worker.keep(kept));
                }
            }
            drop((slot, readahead_slot));
        });
    }

    /// Reads the claimed consecutive chunks `batch` with the source's `read_chunks`, answering each as it
    /// comes and then keeping it. A chunk the source did not give (it panicked midway) gets an error, so no
    /// reader waits for good.
    fn read_batch_blocking(&self, batch: Vec<RecallEntry>) {
        let Some(first) = batch.first().map(|e| e.chunk) else { return };
        let mut unanswered: Vec<Option<RecallEntry>> = batch.into_iter().map(Some).collect();
        let chunks = first..first + unanswered.len() as u64;
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.source.read_chunks(chunks, &mut |chunk, read| {
                let entry = chunk.checked_sub(first).and_then(|i| unanswered.get_mut(i as usize)?.take());
                if let Some(kept) = entry.and_then(|entry| self.answer(entry, read)) {
                    self.keep(kept);
                }
            })
        }));
        for entry in unanswered.into_iter().flatten() {
            let chunk = entry.chunk;
            let why = match &finished {
                Err(_) => panicked(chunk),
                Ok(()) => SourceError::Other { chunk, source: "the source did not give this chunk of a batch".into() },
            };
            self.answer(entry, Err(why));
        }
    }

    /// Answers the waiters of a claimed chunk with what the source gave. Returns the chunk to keep in the
    /// recall store, if it has data (a zero chunk is kept as known zeros, a failure not at all: the entry
    /// goes, and the chunk's next reader tries again).
    fn answer(&self, mut entry: RecallEntry, read: std::result::Result<Vec<u8>, SourceError>) -> Option<Kept> {
        let chunk = entry.chunk;
        let len = chunk_len(self.size, self.chunk_size as u32, chunk);
        let data = read.and_then(|data| {
            if data.len() == len {
                Ok(data)
            } else {
                let why = format!("the source gave {} bytes for a chunk of {len}", data.len());
                Err(SourceError::Corrupt { chunk, source: why.into() })
            }
        });
        let data = match data {
            Ok(data) => data,
            Err(e) => {
                tracing::error!(chunk, source = %self.source.describe(), "recall failed: {}", error_chain(&e));
                entry.publish(Recall::Failed(Arc::new(e)));
                return None;
            }
        };
        self.counters.bytes_recalled.fetch_add(len as u64, Ordering::Relaxed);
        // Only chunks that held data count as recalled: zero chunks read nothing from the source.
        self.counters.chunks_recalled.fetch_add(1, Ordering::Relaxed);
        if data.iter().all(|&b| b == 0) {
            // A chunk of zeros stays out of the recall store.
            self.recall_zero.set_range(chunk, 1, true);
            entry.publish(Recall::Ready(self.zeros.clone()));
            return None;
        }
        let data = Arc::new(data);
        self.counters.chunks_being_kept.fetch_add(1, Ordering::AcqRel);
        entry.publish(Recall::Ready(data.clone()));
        Some(Kept { entry, data })
    }

    /// Writes an answered chunk to the recall store and marks it present; its entry goes after that, so
    /// whoever looks next finds it there. Blocking.
    fn keep(&self, kept: Kept) {
        let Kept { entry, data } = kept;
        match self.recall.data.write_all_at(&data, entry.chunk * self.chunk_size) {
            Ok(()) => self.mark_recalled(entry.chunk),
            // Nothing is lost: the chunk is not marked present, and its next reader recalls it again.
            Err(e) => tracing::warn!(chunk = entry.chunk, "cannot keep a recalled chunk in the recall store: {e}"),
        }
        self.counters.chunks_being_kept.fetch_sub(1, Ordering::AcqRel);
        drop(entry);
    }

    fn mark_recalled(&self, chunk: u64) {
        self.recall.present.set_range(chunk, 1, true);
        self.recall.note(RecordKind::Data, chunk, 1);
    }

    /// Notes a read for readahead; when it continues a sequential stream, claims the chunks ahead of it and
    /// recalls them in the background, as many batches as the free readahead slots allow.
    pub(super) fn readahead(self: &Arc<Self>, offset: u64, len: u64) {
        // Outside a runtime (a caller's own thread) there is no one to recall ahead.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut streams = self.streams.lock().expect("not poisoned");
        let Some(ahead) = streams.on_read(offset, len, self.chunk_size, self.chunk_count()) else {
            return;
        };
        let mut reached = ahead.chunks.start;
        let mut batch: Vec<RecallEntry> = Vec::new();
        let mut slot = None;
        for chunk in ahead.chunks.clone() {
            // Only a chunk no one has recalled or is recalling needs fetching.
            let entry = match self.claim(chunk) {
                Claim::Lead(entry, _) => Some(entry),
                Claim::Ready(_) | Claim::Wait(_) => None,
            };
            let full = batch.len() == self.read_batch;
            if !batch.is_empty() && (entry.is_none() || full) {
                self.start_fetch(std::mem::take(&mut batch), slot.take());
            }
            if let Some(entry) = entry {
                if slot.is_none() {
                    match self.readahead_slots.clone().try_acquire_owned() {
                        Ok(s) => slot = Some(s),
                        Err(_) => break, // `entry` goes unfetched: this chunk waits for the stream's next read
                    }
                }
                batch.push(entry);
            }
            reached = chunk + 1;
        }
        if !batch.is_empty() {
            self.start_fetch(batch, slot.take());
        }
        streams.asked(&ahead, reached);
    }

    /// Recalls the chunks of `offset..offset + len` (at most `MAX_WINDOW` bytes of it) in the background
    /// (PRE-FETCH): a task takes a readahead slot, then claims the next consecutive chunks no one has
    /// recalled or is recalling and fetches them, until the range is done. A slot is taken before any
    /// chunk is claimed, so a read of a chunk never waits behind the prefetch's queue.
    pub(super) fn prefetch_range(self: &Arc<Self>, offset: u64, len: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut next = offset / self.chunk_size;
        let end = (offset + len.min(super::readahead::MAX_WINDOW)).div_ceil(self.chunk_size).min(self.chunk_count());
        let me = self.clone();
        runtime.spawn(async move {
            while next < end {
                let Ok(slot) = me.readahead_slots.clone().acquire_owned().await else { return };
                let mut batch: Vec<RecallEntry> = Vec::new();
                while next < end && batch.len() < me.read_batch {
                    match me.claim(next) {
                        Claim::Lead(entry, _) => batch.push(entry),
                        // Recalled or on its way: it ends a batch of consecutive chunks.
                        Claim::Ready(_) | Claim::Wait(_) if !batch.is_empty() => break,
                        Claim::Ready(_) | Claim::Wait(_) => {}
                    }
                    next += 1;
                }
                if !batch.is_empty() {
                    me.start_fetch(batch, Some(slot));
                }
            }
        });
    }
}

/// Waits for a recall's answer.
async fn wait(mut rx: Recalling) -> Waited {
    loop {
        match &*rx.borrow_and_update() {
            Recall::Ready(data) => return Waited::Ready(data.clone()),
            Recall::Failed(e) => return Waited::Failed(e.duplicate()),
            Recall::Fetching => {}
        }
        if rx.changed().await.is_err() {
            // The recall is over: its last word, if it had one, is still there.
            return match &*rx.borrow() {
                Recall::Ready(data) => Waited::Ready(data.clone()),
                Recall::Failed(e) => Waited::Failed(e.duplicate()),
                Recall::Fetching => Waited::Gone,
            };
        }
    }
}

/// An answered chunk on its way to the recall store, its entry still registered.
struct Kept {
    entry: RecallEntry,
    data: Arc<Vec<u8>>,
}

/// A source that panicked is a bug, but it must not leave the chunk's waiters waiting for ever.
fn panicked(chunk: u64) -> SourceError {
    SourceError::Other { chunk, source: "the source panicked while reading the chunk".into() }
}

/// A claimed recall, registered in `PseudoDisk::recalling` for as long as this value lives.
pub(super) struct RecallEntry {
    disk: Arc<PseudoDisk>,
    chunk: u64,
    tx: Option<watch::Sender<Recall>>,
}

impl RecallEntry {
    fn publish(&mut self, state: Recall) {
        if let Some(tx) = &self.tx {
            tx.send_replace(state);
        }
    }
}

impl Drop for RecallEntry {
    fn drop(&mut self) {
        self.disk.recalling.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.chunk);
        drop(self.tx.take()); // wakes the waiters, after the entry is gone
    }
}
