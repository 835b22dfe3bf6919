//! The counters of one pseudo-disk: updated without locks by every operation, read as a snapshot.

use super::PseudoDisk;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one pseudo-disk, read at any time.
#[derive(Default)]
pub struct Counters {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_recalled: AtomicU64,
    pub chunks_recalled: AtomicU64,
    pub read_bytes_private: AtomicU64,
    pub read_bytes_recall: AtomicU64,
    pub flushes: AtomicU64,
    /// Recalled chunks whose write to the recall store is under way (they were answered from memory).
    pub chunks_being_kept: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_recalled: u64,
    pub chunks_recalled: u64,
    pub read_bytes_private: u64,
    pub read_bytes_recall: u64,
    pub flushes: u64,
    /// Blocks held by the private store now, and chunks recalled: held by the recall store (or being written
    /// to it), or known to be zeros.
    pub private_blocks: u64,
    pub recalled_chunks: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            bytes_recalled: l(&self.bytes_recalled),
            chunks_recalled: l(&self.chunks_recalled),
            read_bytes_private: l(&self.read_bytes_private),
            read_bytes_recall: l(&self.read_bytes_recall),
            flushes: l(&self.flushes),
            private_blocks: 0,
            recalled_chunks: 0,
        }
    }
}

impl PseudoDisk {
    pub fn counters(&self) -> CounterSnapshot {
        let mut s = self.counters.snapshot();
        s.private_blocks = self.private.present.count_ones();
        // Read before the bitmap: a write that completes in between is counted at most twice, never missed,
        // and the sum is capped at the disk's chunks.
        let being_kept = self.counters.chunks_being_kept.load(Ordering::Acquire);
        let held = self.recall.present.count_ones() + self.recall_zero.count_ones();
        s.recalled_chunks = (held + being_kept).min(self.chunk_count());
        s
    }
}
