//! What a pack store process knows of where chunks are: the newest chunk map (on disk, read a block at a
//! time) and, in memory, the chunks of the packs that map does not cover yet (packs sealed since, and this
//! process's own). The in-memory part stays small because a store that sees it grow past `MERGE_AT` chunks
//! writes a new map that covers those packs (`pack/merge.rs`).
//!
//! The same catalog serves both stores: where packs and their indexes are comes from a `PackIndexes` (the
//! folder of a folder store, the objects of an S3 store); the maps are files in a folder (the library's own
//! for a folder store, this machine's cache for an S3 store).
//!
//! Refreshed from the store when a chunk is not found (another process may have added a backup) or a pack
//! has gone (garbage collection may have rewritten it).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::chunk_map::{self, ChunkMap};
use super::located::{PackName, StoredAt};
use super::pack_format::PackIndex;
use crate::aligned::AlignedBuf;
use crate::chunk::ChunkId;
use crate::error::{Error, Result};

/// Chunks kept in memory, outside a map, before a new map is written.
pub(super) const MERGE_AT: usize = 256 * 1024;
/// Pack indexes read in one go by a refresh that may stop at a bound on what it holds.
const INDEX_GROUP: usize = 8;

/// Where a catalog learns which packs are sealed and what their indexes say.
pub(super) trait PackIndexes: Sync {
    /// The sealed packs: those whose chunks may be used.
    fn sealed(&self) -> Result<HashSet<PackName>>;
    /// The indexes of `packs` that can be read. A pack gone since the listing, or whose index is damaged, is
    /// left out: its chunks stay unknown (reads of them say so, verify names them, repair rebuilds it).
    fn read(&self, packs: &[PackName]) -> Result<Vec<(PackName, PackIndex)>>;
    /// Something that changes whenever the set of packs does, when that is cheap to know (a folder's time):
    /// a catalog skips its scan while it is unchanged. `None`: always scan.
    fn version(&self) -> Result<Option<SystemTime>> {
        Ok(None)
    }
}

/// The packs of a folder store: `<name>.pack` with `<name>.idx` beside it (an index is written only once its
/// pack is durable, so an index names a sealed pack).
pub(super) struct FolderPacks<'a>(pub &'a Path);

impl PackIndexes for FolderPacks<'_> {
    fn sealed(&self) -> Result<HashSet<PackName>> {
        sealed_pack_names(self.0)
    }

    fn read(&self, packs: &[PackName]) -> Result<Vec<(PackName, PackIndex)>> {
        Ok(packs.iter().filter_map(|&p| Some((p, read_pack_index(self.0, p)?))).collect())
    }

    fn version(&self) -> Result<Option<SystemTime>> {
        let dir = self.0;
        std::fs::metadata(dir).and_then(|m| m.modified()).map(Some).map_err(|e| Error::io("read folder", dir, e))
    }
}

/// One pack file known to this process.
pub(super) struct Pack {
    pub name: PackName,
    pub path: PathBuf,
    /// True when the pack's index is on disk (false: this process is still writing it).
    sealed: AtomicBool,
    /// Set once this process has marked the pack as used (see `PackStore::touch`).
    pub touched: AtomicBool,
    file: Mutex<Option<Arc<File>>>,
    /// The bytes of a pack this process is writing, until its file holds them durably (`pack/seal.rs`):
    /// reads of its chunks are answered from here meanwhile.
    unwritten: RwLock<Option<AlignedBuf>>,
}

impl Pack {
    /// A pack sealed by some process, found in the folder.
    pub fn sealed(name: PackName, path: PathBuf) -> Self {
        Self::new(name, path, true, None)
    }

    /// A pack this process is starting to write, its bytes (the header first) in `bytes`.
    pub fn unwritten(name: PackName, path: PathBuf, bytes: AlignedBuf) -> Self {
        Self::new(name, path, false, Some(bytes))
    }

    fn new(name: PackName, path: PathBuf, sealed: bool, unwritten: Option<AlignedBuf>) -> Self {
        Pack {
            name,
            path,
            sealed: AtomicBool::new(sealed),
            touched: AtomicBool::new(false),
            file: Mutex::new(None),
            unwritten: RwLock::new(unwritten),
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn mark_sealed(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// The pack's open file, if this process has one.
    pub fn cached_file(&self) -> Option<Arc<File>> {
        self.file.lock().expect("not poisoned").clone()
    }

    pub fn set_file(&self, file: Option<Arc<File>>) {
        *self.file.lock().expect("not poisoned") = file;
    }

    /// Appends to the bytes of a pack being written.
    pub fn append(&self, parts: &[&[u8]]) {
        let mut unwritten = self.unwritten.write().expect("not poisoned");
        let bytes = unwritten.as_mut().expect("only a pack being written grows");
        for part in parts {
            bytes.extend_from_slice(part);
        }
    }

    /// The bytes of a pack being written, padded for a direct write: `f(padded bytes, length)`. (Reads of
    /// its chunks wait meanwhile; they are rare: this process's own chunks, read back before their seal.)
    pub fn with_unwritten<T>(&self, f: impl FnOnce(&[u8], u64) -> T) -> Option<T> {
        let mut unwritten = self.unwritten.write().expect("not poisoned");
        let bytes = unwritten.as_mut()?;
        let len = bytes.len() as u64;
        Some(f(bytes.padded(), len))
    }

    /// Reads `out.len()` bytes at `offset` of a pack being written: `None` when its file holds them.
    /// `Some(false)` when the pack ends before.
    pub fn read_unwritten(&self, offset: usize, out: &mut [&mut [u8]]) -> Option<bool> {
        let unwritten = self.unwritten.read().expect("not poisoned");
        let bytes = unwritten.as_ref()?.bytes();
        let mut at = offset;
        for part in out.iter_mut() {
            let Some(src) = bytes.get(at..at + part.len()) else { return Some(false) };
            part.copy_from_slice(src);
            at += part.len();
        }
        Some(true)
    }

    /// Once its file holds its bytes durably: the memory they took, for the next pack.
    pub fn take_unwritten(&self) -> Option<AlignedBuf> {
        self.unwritten.write().expect("not poisoned").take()
    }
}

#[derive(Default)]
pub(super) struct Catalog {
    /// The newest chunk map seen.
    map: Option<Arc<ChunkMap>>,
    /// Chunks of packs the map does not cover.
    chunks: HashMap<ChunkId, StoredAt>,
    /// Sealed packs whose chunks are in `chunks`.
    loaded: HashSet<PackName>,
    /// Packs the map covers that have gone from the folder: what it says of them is stale.
    gone: HashSet<PackName>,
    /// The store's version (`PackIndexes::version`) at the last complete scan, and when that scan started.
    last_scan: Option<(Option<SystemTime>, SystemTime)>,
}

impl Catalog {
    pub fn is_scanned(&self) -> bool {
        self.last_scan.is_some()
    }

    /// Makes the next `refresh` scan the folder even if its time has not changed.
    pub fn invalidate(&mut self) {
        self.last_scan = None;
    }

    /// Chunks held in memory (outside the map).
    pub fn loose_chunks(&self) -> usize {
        self.chunks.len()
    }

    pub fn lookup(&self, id: &ChunkId) -> Result<Option<StoredAt>> {
        if let Some(at) = self.chunks.get(id) {
            return Ok(Some(*at));
        }
        let Some(map) = &self.map else { return Ok(None) };
        Ok(map.lookup(id)?.filter(|at| !self.gone.contains(&at.pack)))
    }

    /// Records where a chunk this process stored is; a newer location replaces an older one.
    pub fn insert(&mut self, id: ChunkId, at: StoredAt) {
        self.chunks.insert(id, at);
    }

    /// Records that this process sealed `pack`: its chunks are known, and go when it goes.
    pub fn sealed(&mut self, pack: PackName) {
        self.loaded.insert(pack);
    }

    /// Forgets a pack and every chunk located in it.
    pub fn remove_pack(&mut self, pack: PackName) {
        self.loaded.remove(&pack);
        self.chunks.retain(|_, at| at.pack != pack);
        if self.map.as_ref().is_some_and(|m| m.covers(&pack)) {
            self.gone.insert(pack);
        }
    }

    /// Brings the catalog up to date with the store: takes the newest map in `maps`, loads the index of every
    /// pack it does not cover, forgets packs that have gone. With a `limit`, stops loading indexes once that
    /// many chunks are in memory and returns false (the caller writes a map that covers them, then refreshes
    /// again); true when every sealed pack is known. Skips the scan when the store says it has not changed
    /// since the last complete one.
    pub fn refresh(&mut self, maps: &Path, packs: &dyn PackIndexes, limit: Option<usize>) -> Result<bool> {
        let scan_start = SystemTime::now();
        let version = packs.version()?;
        if let (Some(now), Some((Some(seen), scanned_at))) = (version, self.last_scan) {
            // File times may be coarser than the clock (a second on some file systems): trust an unchanged
            // time only when the last scan started well after it.
            if now == seen && scanned_at > seen + Duration::from_secs(2) {
                return Ok(true);
            }
        }
        self.last_scan = None;
        let on_disk = packs.sealed()?;
        if let Some(map) = newest_map(maps)? {
            if self.map.as_ref().is_none_or(|m| m.generation() < map.generation()) {
                // What the new map covers leaves memory (this process's unsealed pack is never covered).
                self.chunks.retain(|_, at| !map.covers(&at.pack));
                self.loaded.retain(|p| !map.covers(p));
                self.map = Some(Arc::new(map));
            }
        }
        self.gone = match &self.map {
            Some(m) => m.covered().iter().filter(|p| !on_disk.contains(p)).copied().collect(),
            None => HashSet::new(),
        };
        let vanished: Vec<PackName> = self.loaded.iter().filter(|p| !on_disk.contains(p)).copied().collect();
        if !vanished.is_empty() {
            let vanished: HashSet<PackName> = vanished.into_iter().collect();
            self.chunks.retain(|_, at| !vanished.contains(&at.pack));
            self.loaded.retain(|p| !vanished.contains(p));
        }
        let mut new: Vec<PackName> = on_disk
            .iter()
            .filter(|p| !self.loaded.contains(p) && !self.map.as_ref().is_some_and(|m| m.covers(p)))
            .copied()
            .collect();
        new.sort();
        let group = if limit.is_some() { INDEX_GROUP } else { new.len().max(1) };
        for packs_read in new.chunks(group) {
            for (pack, index) in packs.read(packs_read)? {
                // Checked pack by pack: a pack of tiny chunks holds 64 Ki of them.
                if limit.is_some_and(|l| self.chunks.len() >= l) {
                    return Ok(false);
                }
                for e in index.entries {
                    let Ok(offset) = u32::try_from(e.offset) else { continue };
                    // A chunk stored twice (two backups wrote it at once) is read from the first pack found.
                    self.chunks.entry(e.id).or_insert(StoredAt { pack, offset, len: e.len });
                }
                self.loaded.insert(pack);
            }
        }
        self.last_scan = Some((version, scan_start));
        Ok(true)
    }
}

/// The index of `pack`; `None` when it is gone (removed since the listing) or damaged (its chunks stay
/// unknown, reads of them say so, verify names them, repair rebuilds it).
pub(super) fn read_pack_index(dir: &Path, pack: PackName) -> Option<PackIndex> {
    match PackIndex::read(&dir.join(format!("{pack}.idx"))) {
        Ok(i) => Some(i),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("ignoring pack {pack}: {e}");
            None
        }
    }
}

/// The packs in `dir` that have an index file.
pub(super) fn sealed_pack_names(dir: &Path) -> Result<HashSet<PackName>> {
    Ok(index_names(dir)?.iter().filter_map(|n| PackName::parse(n)).collect())
}

/// The newest readable chunk map in `dir`, if there is one. A map removed between the listing and the
/// opening (a newer one replaced it) or damaged is passed over for the one before it: chunks it alone
/// covers are then found in their packs' indexes.
pub(super) fn newest_map(dir: &Path) -> Result<Option<ChunkMap>> {
    let mut generations = map_generations(dir)?;
    generations.sort_unstable_by(|a, b| b.cmp(a));
    for generation in generations {
        match ChunkMap::open(&dir.join(chunk_map::file_name(generation)), generation) {
            Ok(m) => return Ok(Some(m)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => tracing::warn!("passing over chunk map {generation}: {e}"),
        }
    }
    Ok(None)
}

/// The generations of the chunk maps in `dir` (none when it does not exist yet: an S3 store's folder of maps
/// is made by its first merge).
pub(super) fn map_generations(dir: &Path) -> Result<Vec<u64>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(file_stems(dir, chunk_map::EXTENSION)?.iter().filter_map(|s| chunk_map::parse_generation(s)).collect())
}

/// The names (without extension) of the packs in `dir` that have an index file.
pub(super) fn index_names(dir: &Path) -> Result<Vec<String>> {
    file_stems(dir, ".idx")
}

/// The names, without `extension`, of the files in `dir` that end with it (temporary files left out).
pub(super) fn file_stems(dir: &Path, extension: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list packs in", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list packs in", dir, e))?;
        if let Some(stem) = entry.file_name().to_str().and_then(|n| n.strip_suffix(extension)) {
            if !stem.starts_with('.') {
                out.push(stem.to_string());
            }
        }
    }
    Ok(out)
}
