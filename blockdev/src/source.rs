//! What a pseudo-disk reads from. The appliance implements this for a backup in the dedup library (and later
//! a cloud snapshot); this crate knows nothing behind it.

use std::fmt;

/// A read-only disk cut into chunks of `chunk_size` bytes (the last one may be shorter).
pub trait Source: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn chunk_size(&self) -> u32;
    /// Reads chunk `index` whole into `buf` (resized to the chunk's length). Blocking: the pseudo-disk calls
    /// it on a blocking thread. An error means the data cannot be had; it is never replaced by other bytes.
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), SourceError>;
    /// True when the chunk is known to be all zeros without reading it. The default knows nothing.
    fn is_zero_chunk(&self, _index: u64) -> bool {
        false
    }
    /// A short description for logs ("backup 2026...-abc123 disk 0").
    fn describe(&self) -> String;
}

/// A source's failure to give a chunk, with a message that names what is wrong (missing or damaged chunk,
/// I/O error).
#[derive(Debug, Clone)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

/// Chunk index and byte length of chunk `index` of a disk.
pub fn chunk_len(size: u64, chunk_size: u32, index: u64) -> usize {
    let start = index * u64::from(chunk_size);
    ((start + u64::from(chunk_size)).min(size) - start) as usize
}
