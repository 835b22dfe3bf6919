//! Recalls from the source: each chunk once at a time however many readers want it (single flight: the
//! first reader leads the recall, the others wait for it and look again), and readahead of the next chunks
//! for a sequential reader.
//!
//! A recalled chunk is written to the recall store before it is marked present; the allocation change is
//! logged by the next flush, after the data file is synced, so a recall cut off midway is recalled again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{PseudoDisk, READAHEAD_CHUNKS};
use crate::alloc_log::RecordKind;
use crate::error::{Error, Result};
use crate::source::{chunk_len, SourceError};

impl PseudoDisk {
    /// Recalls chunk `chunk` into the recall store unless it is there; one recall per chunk at a time. The
    /// task that did the recall gets the chunk's bytes back (None for everyone else, and for zero chunks).
    pub(super) async fn ensure_recalled(self: &Arc<Self>, chunk: u64) -> Result<Option<Arc<Vec<u8>>>> {
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
                        let (tx, rx) = watch::channel(());
                        map.insert(chunk, rx.clone());
                        (Some(tx), rx)
                    }
                }
            };
            match leader {
                Some(tx) => {
                    // The entry goes (and the followers wake) however this ends, also when this reader's
                    // task is cancelled midway (an aborted iSCSI task, a dropped connection).
                    let _entry = RecallEntry { map: &self.recalling, chunk, tx: Some(tx) };
                    return self.recall_chunk(chunk).await;
                }
                None => {
                    // Returns when the leader drops its sender; then look again (a failed recall is tried
                    // again by the next reader, so each reader gets the error for itself).
                    let _ = rx.changed().await;
                }
            }
        }
    }

    async fn recall_chunk(&self, chunk: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let len = chunk_len(self.size, self.chunk_size as u32, chunk);
        let mut fresh = None;
        if !self.source.is_zero_chunk(chunk) {
            let source = self.source.clone();
            let data = tokio::task::spawn_blocking(move || {
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
            })?;
            // A chunk of zeros stays a hole of the sparse recall file.
            let data = if data.iter().any(|&b| b != 0) {
                self.engine
                    .write(&self.recall.data, chunk * self.chunk_size, data)
                    .await
                    .map_err(self.recall.io_err("write"))?
            } else {
                data
            };
            self.counters.bytes_recalled.fetch_add(len as u64, Ordering::Relaxed);
            // Only chunks that held data count as recalled: zero chunks read nothing from the source.
            self.counters.chunks_recalled.fetch_add(1, Ordering::Relaxed);
            fresh = Some(Arc::new(data));
        }
        self.recall.present.set_range(chunk, 1, true);
        self.recall.note(RecordKind::Data, chunk, 1);
        Ok(fresh.or_else(|| Some(Arc::new(vec![0u8; len]))))
    }

    /// On sequential access, recalls the next chunks in the background.
    pub(super) fn readahead(self: &Arc<Self>, offset: u64, len: u64) {
        let sequential = self.next_sequential.swap(offset + len, Ordering::Relaxed) == offset;
        if !sequential {
            return;
        }
        let next = (offset + len).div_ceil(self.chunk_size);
        let chunks = self.size.div_ceil(self.chunk_size);
        for chunk in next..(next + READAHEAD_CHUNKS).min(chunks) {
            if !self.recall.present.get(chunk) && !self.recalling.lock().expect("not poisoned").contains_key(&chunk) {
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.ensure_recalled(chunk).await;
                });
            }
        }
    }
}

/// A recall in progress, registered in `PseudoDisk::recalling` for as long as this value lives.
pub(super) struct RecallEntry<'a> {
    map: &'a Mutex<HashMap<u64, watch::Receiver<()>>>,
    chunk: u64,
    tx: Option<watch::Sender<()>>,
}

impl Drop for RecallEntry<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.chunk);
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
