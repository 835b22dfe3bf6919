//! Writing a new chunk map (`chunk_map.rs`) that covers every sealed pack: the records of the current map
//! whose packs are still there, merged with the chunks of the packs it does not cover. Those are read from
//! their indexes at most `run_chunks` chunks at a time; each such batch, sorted, becomes a run file, and one
//! pass merges the current map and the runs into the new map. Neither the merge nor any process's catalog
//! needs memory that grows with the library, and a machine that meets a large library for the first time
//! (an appliance new to an S3 library) writes its map once, not once per batch.
//!
//! Order on disk: the new map is written to a temporary file, made durable and renamed into place under the
//! next generation's name; the folder is synced before older maps go. A process that dies at any point
//! leaves a complete older or newer map, and packs that some map does not cover are found through their
//! indexes. One process merges at a time (`map.lock` beside the maps); a store that finds another merging
//! leaves it to them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use crate::chunk::ChunkId;
use crate::durable;
use crate::error::{Error, Result};
use crate::lock::{self, LockKind};
use crate::store::catalog::{map_generations, newest_map, PackIndexes};
use crate::store::chunk_map::{self, ChunkMap, MapWriter};
use crate::store::located::{PackName, StoredAt};

/// Pack indexes read in one go while batches are gathered.
const INDEX_GROUP: usize = 8;

/// The chunk maps of one store: files in `dir`, written through `tmp` (on the same file system).
pub(super) struct MapFolder<'a> {
    pub dir: &'a Path,
    pub tmp: &'a Path,
    /// Chunks held in memory at most while a map is written (`MERGE_AT`, smaller in tests).
    pub run_chunks: usize,
}

type Records<'a> = Box<dyn Iterator<Item = Result<(ChunkId, StoredAt)>> + 'a>;

impl MapFolder<'_> {
    /// Writes a new chunk map when a sealed pack is not covered or a covered pack has gone; true when this
    /// process did (or found nothing to do). With `wait`, waits for a merge another process is doing
    /// (garbage collection, which must leave a map without the packs it removed); without, returns false at
    /// once and leaves the work to that process.
    pub fn merge(&self, packs: &dyn PackIndexes, wait: bool) -> Result<bool> {
        durable::create_dir_durable(self.dir).map_err(|e| Error::io("create folder", self.dir, e))?;
        durable::create_dir_durable(self.tmp).map_err(|e| Error::io("create folder", self.tmp, e))?;
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
                Err(_) => return Ok(false),
            }
        };
        let generation = map_generations(self.dir)?.into_iter().max().unwrap_or(0) + 1;
        let mut runs = Vec::new();
        let merged = self.merge_into(packs, generation, &mut runs);
        for run in runs {
            let _ = fs::remove_file(run);
        }
        merged?;
        Ok(true)
    }

    /// Writes generation `generation`, its run files named in `runs` (for the caller to remove).
    fn merge_into(&self, packs: &dyn PackIndexes, generation: u64, runs: &mut Vec<PathBuf>) -> Result<()> {
        let on_disk = packs.sealed()?;
        let current = newest_map(self.dir)?;
        let covers = |p: &PackName| current.as_ref().is_some_and(|m| m.covers(p));
        let mut uncovered: Vec<PackName> = on_disk.iter().filter(|p| !covers(p)).copied().collect();
        uncovered.sort();
        let kept: Vec<PackName> = current
            .as_ref()
            .map(|m| m.covered().iter().filter(|p| on_disk.contains(p)).copied().collect())
            .unwrap_or_default();
        let any_gone = current.as_ref().is_some_and(|m| m.covered().len() != kept.len());
        if uncovered.is_empty() && !any_gone {
            return Ok(());
        }

        // The chunks of the uncovered packs, in sorted batches: every full batch to a run file, the last
        // one kept in memory. A pack whose index cannot be read stays uncovered: once repair rebuilds its
        // index, it is read.
        let mut newly_covered = Vec::new();
        let mut run_maps = Vec::new();
        let mut batch: Vec<(ChunkId, StoredAt)> = Vec::new();
        for group in uncovered.chunks(INDEX_GROUP) {
            for (pack, index) in packs.read(group)? {
                for e in index.entries {
                    if let Ok(offset) = u32::try_from(e.offset) {
                        batch.push((e.id, StoredAt { pack, offset, len: e.len }));
                    }
                }
                newly_covered.push(pack);
                // Checked pack by pack: a pack of tiny chunks holds 64 Ki of them.
                if batch.len() >= self.run_chunks {
                    let path = self.tmp.join(format!(".run-{generation}-{}{}", runs.len(), chunk_map::EXTENSION));
                    runs.push(path.clone());
                    run_maps.push(write_run(&path, &mut batch)?);
                }
            }
        }
        if newly_covered.is_empty() && !any_gone {
            return Ok(());
        }
        sort_first_copy(&mut batch);

        // Sources in order of precedence: a chunk stored twice keeps the current map's location, else its
        // first pack's.
        let mut sources: Vec<Records> = Vec::new();
        if let Some(map) = &current {
            sources.push(Box::new(
                map.records().filter(|r| r.as_ref().map_or(true, |(_, at)| on_disk.contains(&at.pack))),
            ));
        }
        for run in &run_maps {
            sources.push(Box::new(run.records()));
        }
        sources.push(Box::new(batch.iter().map(|&r| Ok(r))));

        let dest = self.dir.join(chunk_map::file_name(generation));
        let tmp = self.tmp.join(format!(".tmp-{}", chunk_map::file_name(generation)));
        let written = write_merged(&tmp, kept.into_iter().chain(newly_covered), sources);
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &dest).map_err(|e| Error::io("publish", &dest, e))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        durable::sync_dir(self.dir).map_err(|e| Error::io("sync folder", self.dir, e))?;
        for old in map_generations(self.dir)?.into_iter().filter(|&g| g < generation) {
            let _ = fs::remove_file(self.dir.join(chunk_map::file_name(old)));
        }
        Ok(())
    }
}

/// Sorts records by id, keeping only the first of each id (a stable sort keeps the order they came in).
fn sort_first_copy(batch: &mut Vec<(ChunkId, StoredAt)>) {
    batch.sort_by_key(|e| e.0);
    batch.dedup_by(|a, b| a.0 == b.0);
}

/// Writes `batch` (emptied) as a run: a chunk map of its own, covering the packs it names.
fn write_run(path: &Path, batch: &mut Vec<(ChunkId, StoredAt)>) -> Result<ChunkMap> {
    sort_first_copy(batch);
    let packs: HashSet<PackName> = batch.iter().map(|(_, at)| at.pack).collect();
    let mut out = MapWriter::create(path, packs)?;
    for (id, at) in batch.drain(..) {
        out.push(&id, &at)?;
    }
    out.finish()?;
    ChunkMap::open(path, 0)
}

/// Writes the records of `sources` (each in id order) into a new map at `path` covering `covered`: every id
/// once, from the first source that has it.
fn write_merged(path: &Path, covered: impl IntoIterator<Item = PackName>, mut sources: Vec<Records>) -> Result<()> {
    let mut out = MapWriter::create(path, covered)?;
    let mut heads: Vec<Option<StoredAt>> = vec![None; sources.len()];
    let mut next = BinaryHeap::new();
    for (n, source) in sources.iter_mut().enumerate() {
        if let Some((id, at)) = source.next().transpose()? {
            heads[n] = Some(at);
            next.push(Reverse((id, n)));
        }
    }
    let mut last: Option<ChunkId> = None;
    while let Some(Reverse((id, n))) = next.pop() {
        let at = heads[n].take().expect("a source in the heap has a head");
        if last != Some(id) {
            out.push(&id, &at)?;
            last = Some(id);
        }
        if let Some((id, at)) = sources[n].next().transpose()? {
            heads[n] = Some(at);
            next.push(Reverse((id, n)));
        }
    }
    out.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::store::catalog::Catalog;
    use crate::store::pack_format::{PackEntry, PackIndex};

    /// Packs as a store would list them, held in memory: what the catalog and the merge see of a store.
    #[derive(Default)]
    struct Packs(Mutex<HashMap<PackName, PackIndex>>);

    impl Packs {
        fn add(&self, pack: u8, ids: &[ChunkId]) {
            let entries =
                ids.iter().enumerate().map(|(n, id)| PackEntry { id: *id, offset: 48 + n as u64 * 100, len: 60 });
            let index = PackIndex { pack_len: 16 << 20, entries: entries.collect() };
            self.0.lock().unwrap().insert(PackName([pack; 8]), index);
        }
    }

    impl PackIndexes for Packs {
        fn sealed(&self) -> Result<HashSet<PackName>> {
            Ok(self.0.lock().unwrap().keys().copied().collect())
        }

        fn read(&self, packs: &[PackName]) -> Result<Vec<(PackName, PackIndex)>> {
            let all = self.0.lock().unwrap();
            Ok(packs.iter().filter_map(|p| Some((*p, all.get(p)?.clone()))).collect())
        }
    }

    fn ids(range: std::ops::Range<u32>) -> Vec<ChunkId> {
        range.map(|n| ChunkId::of(&n.to_le_bytes())).collect()
    }

    #[test]
    fn a_large_library_met_for_the_first_time_is_mapped_in_one_pass_with_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (maps, tmp) = (dir.path().join("maps"), dir.path().join("tmp"));
        let packs = Packs::default();
        // 40 packs of 50 chunks; pack 39 holds a copy of a chunk of pack 0.
        for p in 0..40u8 {
            packs.add(p, &ids(u32::from(p) * 50..u32::from(p) * 50 + 50));
        }
        let copy = ids(7..8)[0];
        let mut last = ids(1950..1999);
        last.push(copy);
        packs.add(39, &last);

        let mut cat = Catalog::default();
        assert!(!cat.refresh(&maps, &packs, Some(300)).unwrap(), "stops loading at the bound");
        assert!(cat.loose_chunks() < 300 + 16 * 50);
        let folder = MapFolder { dir: &maps, tmp: &tmp, run_chunks: 300 };
        assert!(folder.merge(&packs, false).unwrap());
        assert_eq!(map_generations(&maps).unwrap(), [1], "one map, written once");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "its runs are gone");
        cat.invalidate();
        assert!(cat.refresh(&maps, &packs, Some(300)).unwrap());
        assert_eq!(cat.loose_chunks(), 0);
        for (n, id) in ids(0..1999).iter().enumerate() {
            let at = cat.lookup(id).unwrap().unwrap_or_else(|| panic!("chunk {n} not found"));
            assert_eq!(at.pack, PackName([(n / 50) as u8; 8]));
        }
        assert_eq!(cat.lookup(&copy).unwrap().unwrap().pack, PackName([0; 8]), "a copy is read from the first pack");

        // Packs go (gc) and come (backups): the catalog follows at once, the next map covers the change.
        packs.0.lock().unwrap().remove(&PackName([3; 8]));
        packs.add(40, &ids(5000..5010));
        cat.invalidate();
        assert!(cat.refresh(&maps, &packs, Some(300)).unwrap());
        assert_eq!(cat.loose_chunks(), 10);
        assert_eq!(cat.lookup(&ids(150..151)[0]).unwrap(), None, "a chunk of a pack gone is not found");
        assert!(folder.merge(&packs, true).unwrap());
        assert_eq!(map_generations(&maps).unwrap(), [2]);
        cat.invalidate();
        assert!(cat.refresh(&maps, &packs, Some(300)).unwrap());
        assert_eq!(cat.loose_chunks(), 0);
        assert_eq!(cat.lookup(&ids(150..151)[0]).unwrap(), None);
        assert_eq!(cat.lookup(&ids(5005..5006)[0]).unwrap().unwrap().pack, PackName([40; 8]));
        assert_eq!(cat.lookup(&ids(200..201)[0]).unwrap().unwrap().pack, PackName([4; 8]));
        let map = newest_map(&maps).unwrap().unwrap();
        assert_eq!(map.len(), 1999 - 50 + 10);
        // Nothing new: no new map.
        assert!(folder.merge(&packs, false).unwrap());
        assert_eq!(map_generations(&maps).unwrap(), [2]);
    }
}
