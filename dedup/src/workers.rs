//! The worker pools of restore and verify: rayon pools of a set size, one per call, so that a restore's
//! threads never wait behind another caller's work in rayon's global pool.

use std::path::Path;

use crate::error::{Error, Result};

/// The cores available to this process (2 when that cannot be told).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// A pool of `threads` workers for work on `path` (named in the error when the threads cannot be started).
pub(crate) fn pool(threads: usize, path: &Path) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|n| format!("dedup-worker-{n}"))
        .build()
        .map_err(|e| Error::io("start worker threads for", path, std::io::Error::other(e)))
}
