//! Writing a new chunk map (`chunk_map.rs`): the records of the current map whose packs are still there,
//! merged with the chunks of the packs it does not cover, read from their indexes at most `merge_at` chunks
//! at a time, so that neither the merge nor any process's catalog needs memory that grows with the library.
//!
//! Order on disk: the new map is written to a temporary file, made durable and renamed into place under the
//! next generation's name; the folder is synced before older maps go. A process that dies at any point
//! leaves a complete older or newer map, and packs that some map does not cover are found through their
//! indexes. One process merges at a time (`packs/map.lock`); a store that finds another merging leaves it to
//! them.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::path::Path;

use super::PackStore;
use crate::chunk::ChunkId;
use crate::durable;
use crate::error::{Error, Result};
use crate::lock::{self, LockKind};
use crate::store::catalog::{map_generations, newest_map, read_pack_index, sealed_pack_names};
use crate::store::chunk_map::{self, ChunkMap, MapWriter};
use crate::store::located::{PackName, StoredAt};

impl PackStore {
    /// Writes new chunk maps until every sealed pack is covered and no covered pack has gone. With `wait`,
    /// waits for a merge another process is doing (garbage collection, which must leave a map without the
    /// packs it removed); without, returns at once and leaves the work to that process.
    pub(super) fn merge_map(&self, wait: bool) -> Result<()> {
        let lock_path = self.dir.join("map.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        let lock_err = |e| Error::io("lock", &lock_path, e);
        let _held = if wait {
            lock::lock(file, LockKind::Exclusive).map_err(lock_err)?
        } else {
            match lock::try_lock(file, LockKind::Exclusive).map_err(lock_err)? {
                Ok(held) => held,
                Err(_) => return Ok(()),
            }
        };
        while self.merge_once()? {}
        let mut cat = self.catalog.write().expect("not poisoned");
        cat.invalidate();
        cat.refresh(&self.dir)
    }

    /// One new map covering the current one's live packs and a batch of uncovered ones; true when more
    /// uncovered packs are left for another round.
    fn merge_once(&self) -> Result<bool> {
        let on_disk = sealed_pack_names(&self.dir)?;
        let current = newest_map(&self.dir)?;
        let covers = |p: &PackName| current.as_ref().is_some_and(|m| m.covers(p));
        let mut uncovered: Vec<PackName> = on_disk.iter().filter(|p| !covers(p)).copied().collect();
        uncovered.sort();
        let kept: Vec<PackName> = current
            .as_ref()
            .map(|m| m.covered().iter().filter(|p| on_disk.contains(p)).copied().collect())
            .unwrap_or_default();
        let any_gone = current.as_ref().is_some_and(|m| m.covered().len() != kept.len());

        let mut batch: Vec<(ChunkId, StoredAt)> = Vec::new();
        let mut batch_packs = Vec::new();
        let mut more = false;
        for pack in uncovered {
            if batch.len() >= self.merge_at {
                more = true;
                break;
            }
            // A pack whose index cannot be read stays uncovered: once repair rebuilds its index, it is read.
            let Some(index) = read_pack_index(&self.dir, pack) else { continue };
            for e in index.entries {
                if let Ok(offset) = u32::try_from(e.offset) {
                    batch.push((e.id, StoredAt { pack, offset, len: e.len }));
                }
            }
            batch_packs.push(pack);
        }
        if batch_packs.is_empty() && !any_gone {
            return Ok(false);
        }
        // A chunk stored twice keeps one location: the first pack's.
        batch.sort_by_key(|e| e.0);
        batch.dedup_by(|a, b| a.0 == b.0);

        let generation = map_generations(&self.dir)?.into_iter().max().unwrap_or(0) + 1;
        let dest = self.dir.join(chunk_map::file_name(generation));
        let tmp = self.tmp.join(format!(".tmp-{}", chunk_map::file_name(generation)));
        let written = self.write_map(&tmp, current.as_ref(), &on_disk, kept.into_iter().chain(batch_packs), &batch);
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &dest).map_err(|e| Error::io("publish", &dest, e))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        durable::sync_dir(&self.dir).map_err(|e| Error::io("sync folder", &self.dir, e))?;
        for old in map_generations(&self.dir)?.into_iter().filter(|&g| g < generation) {
            let _ = fs::remove_file(self.dir.join(chunk_map::file_name(old)));
        }
        Ok(more)
    }

    /// Streams `current`'s records of live packs and the sorted `batch` into a new map at `path`.
    fn write_map(
        &self,
        path: &Path,
        current: Option<&ChunkMap>,
        on_disk: &HashSet<PackName>,
        covered: impl IntoIterator<Item = PackName>,
        batch: &[(ChunkId, StoredAt)],
    ) -> Result<()> {
        let mut out = MapWriter::create(path, covered)?;
        let mut next = 0;
        if let Some(map) = current {
            map.for_each(|id, at| {
                if !on_disk.contains(&at.pack) {
                    return Ok(());
                }
                while next < batch.len() && batch[next].0 < id {
                    out.push(&batch[next].0, &batch[next].1)?;
                    next += 1;
                }
                if next < batch.len() && batch[next].0 == id {
                    next += 1; // stored again in a newer pack: the map's copy is kept
                }
                out.push(&id, &at)
            })?;
        }
        for (id, at) in &batch[next..] {
            out.push(id, at)?;
        }
        out.finish()?;
        Ok(())
    }
}
