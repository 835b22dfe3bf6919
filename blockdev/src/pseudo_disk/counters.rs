//! The counters of one pseudo-disk: updated without locks by every operation, read as a snapshot.

use super::PseudoDisk;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the latency buckets: 16 µs doubling up to about 2.1 s (18 buckets), then +Inf. Fixed
/// bounds keep recording to two atomic adds and let any number of disks be summed.
pub const LATENCY_BOUNDS_US: [u64; 18] = {
    let mut b = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        b[i] = 16 << i;
        i += 1;
    }
    b
};

/// A latency histogram updated without locks: counts per bucket (not cumulative), plus the sum.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, took: Duration) {
        let us = took.as_micros() as u64;
        let bucket = LATENCY_BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
        }
    }
}

/// A histogram read at one time: `counts[i]` operations took at most `LATENCY_BOUNDS_US[i]` µs (and more
/// than the bound before); the last count is of those that took longer than every bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub counts: Vec<u64>,
    pub sum: Duration,
}

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
    /// How long reads and writes took, from the call to the answer.
    pub read_latency: LatencyHistogram,
    pub write_latency: LatencyHistogram,
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
    /// Chunks being recalled now (the recall queue's depth).
    pub recalls_in_progress: u64,
    pub read_latency: LatencySnapshot,
    pub write_latency: LatencySnapshot,
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
            recalls_in_progress: 0,
            read_latency: self.read_latency.snapshot(),
            write_latency: self.write_latency.snapshot(),
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
        s.recalls_in_progress = self.recalling.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        s
    }
}
