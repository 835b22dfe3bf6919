//! Chunk stores: where the encoded chunks of a library live. The directory store is the embedded default;
//! every store keeps the same contract so that an S3 store can take its place.

mod dir;

pub use dir::DirStore;

use std::time::SystemTime;

use crate::chunk::ChunkId;
use crate::error::Result;

/// The contract of a chunk store. Chunks are immutable: the same id always holds the same bytes, so writing
/// a chunk twice (two backups at once) is harmless.
pub trait ChunkStore: Send + Sync {
    /// If the chunk is stored, marks it as used now (garbage collection keeps chunks used after it started)
    /// and returns true. Returns false when it is absent.
    fn touch(&self, id: &ChunkId) -> Result<bool>;

    /// Stores an encoded chunk durably under its id.
    fn put(&self, id: &ChunkId, encoded: &[u8]) -> Result<()>;

    /// Reads an encoded chunk; `ChunkMissing` when it is absent.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>>;

    /// Removes a chunk (garbage collection only).
    fn remove(&self, id: &ChunkId) -> Result<()>;

    /// Every stored chunk with the time it was last written or touched, and its stored size.
    fn list(&self) -> Result<Vec<StoredChunk>>;

    /// Makes every `put` so far durable, names included. Called before a manifest refers to the chunks.
    fn sync(&self) -> Result<()>;
}

#[derive(Clone, Debug)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub used: SystemTime,
    pub stored_bytes: u64,
}
