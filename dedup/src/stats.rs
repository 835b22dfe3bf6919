//! What a library holds, in figures.

use serde::Serialize;

use crate::error::Result;
use crate::library::Library;

#[derive(Clone, Debug, Serialize)]
pub struct LibraryStats {
    pub path: String,
    pub chunk_size: u32,
    pub backups: usize,
    pub disks: usize,
    /// Sum of the sizes of every disk of every backup.
    pub logical_bytes: u64,
    /// Sum of the non-zero chunks of every disk of every backup (what a naive copy of the data would take).
    pub data_bytes: u64,
    pub stored_chunks: u64,
    /// Bytes of the stored chunks (every copy).
    pub stored_bytes: u64,
    /// data_bytes / stored_bytes: the saving of dedup and compression together.
    pub reduction_ratio: f64,
}

pub fn library_stats(lib: &Library) -> Result<LibraryStats> {
    let backups = lib.backups()?;
    let mut logical = 0u64;
    let mut data = 0u64;
    let mut disks = 0usize;
    for m in &backups {
        for (n, d) in m.disks.iter().enumerate() {
            disks += 1;
            logical += d.size;
            let index = lib.load_index(m, n)?;
            index.for_each(|i, e| {
                if !e.id.is_zero() {
                    let r = index.chunk_range(i);
                    data += r.end - r.start;
                }
                Ok(())
            })?;
        }
    }
    let chunks = lib.store().list()?;
    let stored: u64 = chunks.iter().map(|c| c.stored_bytes).sum();
    // A chunk two backups stored at once has two copies until gc drops one; it counts once here.
    let distinct: std::collections::HashSet<_> = chunks.iter().map(|c| c.id).collect();
    Ok(LibraryStats {
        path: lib.root().display().to_string(),
        chunk_size: lib.chunk_size(),
        backups: backups.len(),
        disks,
        logical_bytes: logical,
        data_bytes: data,
        stored_chunks: distinct.len() as u64,
        stored_bytes: stored,
        reduction_ratio: if stored == 0 { 0.0 } else { data as f64 / stored as f64 },
    })
}
