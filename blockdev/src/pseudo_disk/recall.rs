//! Recalls from the source: each chunk once at a time however many readers want it (single flight: the
//! first reader leads the recall, the others wait for it), and readahead for sequential readers.
//!
//! A recalled chunk answers its readers as soon as the source has given it (verified: a source never gives
//! bytes it has not checked). Its bytes stay in memory, shared with every reader that comes for the chunk,
//! while a task writes them to the recall store; only then is the chunk marked present, and the allocation
//! change is logged by the next flush, after the data file is synced. So no reader, and no reopen after a
//! crash, ever reads a recall store block that was not written whole: a recall cut off midway is recalled
//! again.
//!
//! Readahead (`readahead.rs` decides what) runs in background tasks, at most half the source's
//! `parallel_reads` at once: a chunk that finds no free slot is left for the stream's next read, so readahead
//! never queues up in front of the reads that are waiting.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::PseudoDisk;
use crate::alloc_log::RecordKind;
use crate::error::{Error, Result};
use crate::source::{chunk_len, SourceError};

/// A recall in progress, as its followers see it: None while the source is read, then the chunk's bytes
/// while they are written to the recall store.
pub(super) type Recalling = watch::Receiver<Option<Arc<Vec<u8>>>>;

impl PseudoDisk {
    /// Makes chunk `chunk` readable: None when it is in the recall store (read it there), its bytes when
    /// they are in memory (just recalled, or still being written to the recall store; a zero chunk is the
    /// disk's one chunk of zeros, which may be longer than a short last chunk). One recall per chunk at a time.
    pub(super) async fn recalled(self: &Arc<Self>, chunk: u64) -> Result<Option<Arc<Vec<u8>>>> {
        loop {
            if self.recall.present.get(chunk) {
                return Ok(None);
            }
            let (leader, mut rx) = {
                let mut map = self.recalling.lock().expect("not poisoned");
                if self.recall.present.get(chunk) {
                    return Ok(None);
                }
                match map.get(&chunk) {
                    Some(rx) => (None, rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(chunk, rx.clone());
                        (Some(tx), rx)
                    }
                }
            };
            if let Some(tx) = leader {
                // The entry goes (and the followers wake) however this ends, also when this reader's task is
                // cancelled midway (an aborted iSCSI task, a dropped connection).
                let entry = RecallEntry { disk: self.clone(), chunk, tx: Some(tx) };
                return self.recall_chunk(chunk, entry).await.map(Some);
            }
            // Wait for the bytes, or for the leader to finish (the chunk is present then) or fail (the next
            // reader tries again, so each reader gets the error for itself).
            loop {
                if let Some(data) = rx.borrow_and_update().clone() {
                    return Ok(Some(data));
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
    }

    /// Reads chunk `chunk` from the source, publishes its bytes to the followers, and has them written to
    /// the recall store behind the answer.
    async fn recall_chunk(self: &Arc<Self>, chunk: u64, mut entry: RecallEntry) -> Result<Arc<Vec<u8>>> {
        let len = chunk_len(self.size, self.chunk_size as u32, chunk);
        if self.source.is_zero_chunk(chunk) {
            self.mark_recalled(chunk);
            return Ok(self.zeros.clone());
        }
        let data = self.read_source(chunk, len).await?;
        self.counters.bytes_recalled.fetch_add(len as u64, Ordering::Relaxed);
        // Only chunks that held data count as recalled: zero chunks read nothing from the source.
        self.counters.chunks_recalled.fetch_add(1, Ordering::Relaxed);
        if data.iter().all(|&b| b == 0) {
            // A chunk of zeros stays a hole of the sparse recall file.
            self.mark_recalled(chunk);
            return Ok(self.zeros.clone());
        }
        let shared = Arc::new(data);
        entry.publish(shared.clone());
        let store_copy = Vec::clone(&shared);
        let me = self.clone();
        self.counters.chunks_being_kept.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            match me.engine.write(&me.recall.data, chunk * me.chunk_size, store_copy).await {
                Ok(_) => me.mark_recalled(chunk),
                // Nothing is lost: the chunk is not marked present, and its next reader recalls it again.
                Err(e) => tracing::warn!(chunk, "cannot keep a recalled chunk in the recall store: {e}"),
            }
            me.counters.chunks_being_kept.fetch_sub(1, Ordering::AcqRel);
            drop(entry); // after the chunk is present: a follower that wakes finds it
        });
        Ok(shared)
    }

    /// The chunk's bytes from the source, on a blocking thread; exactly `len` of them or an error. At most
    /// the source's `parallel_reads` run at once, readers and readahead alike, in the order they asked: more
    /// would only add threads that wait for the same cores or the same connection.
    async fn read_source(&self, chunk: u64, len: usize) -> Result<Vec<u8>> {
        let source = self.source.clone();
        let _slot = self.source_slots.acquire().await.expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(len);
            source.read_chunk(chunk, &mut buf).map(|()| buf)
        })
        .await
        .map_err(|e| SourceError::Other { chunk, source: Box::new(e) })
        .and_then(|r| r)
        .and_then(|data| {
            if data.len() == len {
                Ok(data)
            } else {
                let why = format!("the source gave {} bytes for a chunk of {len}", data.len());
                Err(SourceError::Corrupt { chunk, source: why.into() })
            }
        })
        .map_err(|e| {
            tracing::error!(chunk, source = %self.source.describe(), "recall failed: {}", chain(&e));
            Error::Recall { chunk, source_name: self.source.describe(), source: e }
        })
    }

    fn mark_recalled(&self, chunk: u64) {
        self.recall.present.set_range(chunk, 1, true);
        self.recall.note(RecordKind::Data, chunk, 1);
    }

    /// Notes a read for readahead; when it continues a sequential stream, recalls the chunks ahead of it in
    /// the background, as many as the source's free slots allow.
    pub(super) fn readahead(self: &Arc<Self>, offset: u64, len: u64) {
        // Outside a runtime (a caller's own thread) there is no one to recall ahead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut streams = self.streams.lock().expect("not poisoned");
        let Some(ahead) = streams.on_read(offset, len, self.chunk_size, self.chunk_count()) else {
            return;
        };
        let mut reached = ahead.chunks.start;
        for chunk in ahead.chunks.clone() {
            let busy =
                self.recall.present.get(chunk) || self.recalling.lock().expect("not poisoned").contains_key(&chunk);
            if !busy {
                let Ok(slot) = self.readahead_slots.clone().try_acquire_owned() else {
                    break;
                };
                let me = self.clone();
                runtime.spawn(async move {
                    let _ = me.recalled(chunk).await;
                    drop(slot);
                });
            }
            reached = chunk + 1;
        }
        streams.asked(&ahead, reached);
    }
}

/// A recall in progress, registered in `PseudoDisk::recalling` for as long as this value lives.
pub(super) struct RecallEntry {
    disk: Arc<PseudoDisk>,
    chunk: u64,
    tx: Option<watch::Sender<Option<Arc<Vec<u8>>>>>,
}

impl RecallEntry {
    fn publish(&mut self, data: Arc<Vec<u8>>) {
        if let Some(tx) = &self.tx {
            tx.send_replace(Some(data));
        }
    }
}

impl Drop for RecallEntry {
    fn drop(&mut self) {
        self.disk.recalling.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.chunk);
        drop(self.tx.take()); // wakes the followers, after the entry is gone
    }
}

/// An error with its causes, for the log: "a: b: c" (each cause once, also where a message repeats it).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
