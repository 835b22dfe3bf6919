//! Garbage collection's sweep of the pack store: packs whose chunks are all unused are deleted, packs that are
//! mostly unused are rewritten with only the chunks in use, and packs left unsealed by writers that died are
//! removed.
//!
//! A pack used (read by a backup, or written) after the cutoff is left alone whole: a backup in progress may
//! be about to refer to any chunk of it. A pack with a damaged index is never among those read here, so what
//! cannot be read is never deleted.
//!
//! Order on disk: the chunks copied out of rewritten packs are sealed and the folder synced before any pack
//! goes; then each doomed pack loses its index first (a pack without an index is unfinished work, never half
//! a pack), then its file.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use super::{PackStore, RECORD_ID_LEN};
use crate::chunk::{self, ChunkId};
use crate::durable;
use crate::error::{Error, Result};
use crate::store::catalog::file_stems;
use crate::store::located::PackName;
use crate::store::pack_format::PackEntry;
use crate::store::{ChunkStore, SweepStats};

/// A pack is rewritten by `sweep` when at least this share of its bytes is unused (1/4).
const REWRITE_DEAD_SHARE: (u64, u64) = (1, 4);

impl PackStore {
    /// `ChunkStore::sweep` for the pack store; the caller holds the library's chunk lock exclusively.
    pub(super) fn sweep_packs(
        &self,
        in_use: &HashSet<ChunkId>,
        cutoff: SystemTime,
        only: Option<&HashSet<PackName>>,
    ) -> Result<SweepStats> {
        let mut stats = SweepStats::default();
        let mut claimed: HashSet<ChunkId> = HashSet::new();
        let mut doomed: Vec<String> = Vec::new();
        // Never delete what cannot be read: a pack with a damaged index is not among these.
        for (name, index, used) in self.sealed_packs()? {
            if only.is_some_and(|only| PackName::parse(&name).is_none_or(|p| !only.contains(&p))) {
                continue;
            }
            // A chunk in use is kept in the first pack that holds it; other copies are spare.
            let (live, dead): (Vec<PackEntry>, Vec<PackEntry>) =
                index.entries.iter().partition(|e| in_use.contains(&e.id) && claimed.insert(e.id));
            if used >= cutoff {
                stats.chunks_kept_recent += dead.len() as u64;
                continue;
            }
            let dead_bytes: u64 = dead.iter().map(|e| u64::from(e.len) + RECORD_ID_LEN).sum();
            if dead.is_empty() {
                continue;
            }
            let whole = live.is_empty();
            let (num, den) = REWRITE_DEAD_SHARE;
            if !whole && dead_bytes * den < index.pack_len * num {
                continue; // mostly in use: not worth rewriting yet
            }
            if !whole {
                if !self.copy_live_chunks(&name, &live)? {
                    continue;
                }
                stats.packs_rewritten += 1;
            } else {
                stats.packs_removed += 1;
            }
            stats.chunks_removed += dead.len() as u64;
            stats.bytes_removed += dead_bytes;
            doomed.push(name);
        }
        // The copies are durable before the packs they came from go.
        self.seal_and_sync_dir()?;
        for name in &doomed {
            // The index first: a pack without an index is unfinished work, never half a pack.
            let idx = self.index_path(name);
            fs::remove_file(&idx).map_err(|e| Error::io("remove", &idx, e))?;
            let _ = fs::remove_file(self.pack_path(name));
        }
        // Packs never sealed by writers that died (none while backups may be writing theirs).
        let unfinished = if only.is_some() { Vec::new() } else { file_stems(&self.dir, ".pack")? };
        for name in unfinished {
            if self.index_path(&name).exists() {
                continue;
            }
            let path = self.pack_path(&name);
            let old = fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
            if old && fs::remove_file(&path).is_ok() {
                stats.unfinished_packs_removed += 1;
            }
        }
        durable::sync_dir(&self.dir).map_err(|e| Error::io("sync folder", &self.dir, e))?;
        self.refresh()?;
        Ok(stats)
    }

    /// Copies the chunks of `index` that `keep` names into the open pack, each checked first. Returns false
    /// (and copies nothing more) when a chunk of the pack is damaged: the pack is then kept as it is.
    fn copy_live_chunks(&self, name: &str, keep: &[PackEntry]) -> Result<bool> {
        let path = self.pack_path(name);
        let file = File::open(&path).map_err(|e| Error::io("open pack", &path, e))?;
        let mut plain = Vec::new();
        let mut buf = Vec::new();
        for e in keep {
            buf.resize(e.len as usize, 0);
            if file.read_exact_at(&mut buf, e.offset).is_err()
                || chunk::decode_verified(&e.id, &buf, &mut plain).is_err()
            {
                tracing::warn!("pack {name}: chunk {} is damaged; the pack is kept as it is", e.id);
                return Ok(false);
            }
            self.put(&e.id, &buf)?;
        }
        Ok(true)
    }
}
