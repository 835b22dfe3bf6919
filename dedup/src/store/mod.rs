//! Chunk stores: where the encoded chunks of a library live. The pack store in a folder is the embedded
//! default; every store keeps the same contract so that an S3 store can take its place.

mod catalog;
pub mod chunk_map;
pub mod located;
mod merge;
mod pack;
pub mod pack_format;
mod s3_packs;

pub use located::{PackName, StoredAt};
pub use pack::PackStore;
pub use s3_packs::S3PackStore;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use crate::chunk::ChunkId;
use crate::error::Result;

/// The contract of a chunk store. Chunks are immutable: the same id always holds the same bytes, so writing
/// a chunk twice (two backups at once) is harmless.
pub trait ChunkStore: Send + Sync {
    /// If the chunk is stored, marks it as used now (garbage collection keeps chunks used after it started)
    /// and says where it is. `None` when it is absent.
    fn touch(&self, id: &ChunkId) -> Result<Option<StoredAt>>;

    /// Stores an encoded chunk under its id and says where. It is durable once `sync` returns.
    fn put(&self, id: &ChunkId, encoded: &[u8]) -> Result<StoredAt>;

    /// Reads an encoded chunk; `ChunkMissing` when it is absent.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>>;

    /// Reads an encoded chunk from where a backup's index says it was stored, without looking it up; when it
    /// is no longer there (garbage collection moved it), wherever the store says it is now.
    fn get_at(&self, id: &ChunkId, at: &StoredAt) -> Result<Vec<u8>>;

    /// `get_at` of several chunks, the results in the order asked. A store where a request costs more than
    /// its bytes (S3) reads neighbouring records of one pack with one request.
    fn get_many_at(&self, wanted: &[(ChunkId, StoredAt)]) -> Vec<Result<Vec<u8>>> {
        wanted.iter().map(|(id, at)| self.get_at(id, at)).collect()
    }

    /// Every stored copy of every chunk, with the time its container was last written or used, and its
    /// stored size.
    fn list(&self) -> Result<Vec<StoredChunk>>;

    /// Called when a backup starts: marks made earlier in this process (by an earlier backup) do not count
    /// for it, so every container it reuses is marked again after its start.
    fn start_marking(&self);

    /// Makes every `put` so far durable, names included. Called before a manifest refers to the chunks.
    fn sync(&self) -> Result<()>;

    /// Garbage collection's sweep: removes stored chunks that are not `in_use`, leaving alone everything
    /// used or written at or after `cutoff`. With `only`, deletes or rewrites none but those packs, and leaves
    /// work that looks unfinished alone (backups are running: see `condemned`). Called with the library's
    /// chunk lock held exclusively.
    fn sweep(
        &self,
        in_use: &HashSet<ChunkId>,
        cutoff: SystemTime,
        only: Option<&HashSet<PackName>>,
    ) -> Result<SweepStats>;

    /// The packs a sweep with `in_use` and `cutoff` would delete or rewrite now: what a gc tells backups in
    /// progress in a store where they cannot mark what they reuse (S3, see `gc.rs`).
    fn condemned(&self, _in_use: &HashSet<ChunkId>, _cutoff: SystemTime) -> Result<HashSet<PackName>> {
        Ok(HashSet::new())
    }

    /// In a backup in progress, when a gc has condemned `packs`: from now on nothing of them is reused in
    /// place (a chunk found there is copied into a pack of this process's own). Returns those of them this
    /// process has already used (reused a chunk from, or written): the gc keeps them whole. For as long as
    /// the process lives: what it knows of where chunks are may still name a pack the gc removed.
    fn avoid(&self, _packs: HashSet<PackName>) -> HashSet<PackName> {
        HashSet::new()
    }

    /// Rebuilds what says where chunks are (a pack's index) from the stored chunks themselves, wherever it is
    /// missing or damaged. Every chunk recovered is checked against its id first. Called with the library's
    /// chunk lock held exclusively.
    fn repair(&self) -> Result<RepairStats>;

    /// Where a chunk's bytes are, for diagnostics and repair tools; `None` when it is not stored.
    fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>>;
}

#[derive(Clone, Debug)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub used: SystemTime,
    pub stored_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct ChunkLocation {
    /// The pack file holding the chunk, and the index file that says where.
    pub pack: PathBuf,
    pub index: PathBuf,
    /// Offset and length of the encoded chunk in the pack.
    pub offset: u64,
    pub len: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepStats {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    /// Unused chunks left in containers used after the cutoff.
    pub chunks_kept_recent: u64,
    pub packs_removed: u64,
    /// Packs rewritten without their unused chunks.
    pub packs_rewritten: u64,
    /// Packs left by writers that died before sealing them.
    pub unfinished_packs_removed: u64,
    /// Pack indexes whose pack had gone (written late by a writer frozen past its lease): they named
    /// chunks that were nowhere.
    pub orphan_indexes_removed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairStats {
    pub packs_checked: u64,
    /// Indexes whose pack has gone, removed: they named chunks that are no longer anywhere.
    pub indexes_dropped: u64,
    pub chunks_dropped: u64,
    /// Indexes written again from their packs' records.
    pub indexes_rebuilt: u64,
    pub chunks_recovered: u64,
    /// Records that failed their check (left out of the rebuilt index) and bytes after the last readable one.
    pub chunks_damaged: u64,
    pub bytes_unreadable: u64,
}
