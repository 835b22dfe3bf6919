//! The in-memory catalog of a pack store: which pack holds each chunk, and where in it.
//!
//! Built from the pack index files when first needed, extended by this process's own writes, and refreshed
//! from the folder when a chunk is not found (another process may have added a backup) or a pack has gone
//! (garbage collection may have rewritten it).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::pack_format::PackIndex;
use crate::chunk::ChunkId;
use crate::error::{Error, Result};

/// One pack file known to this process.
pub(super) struct Pack {
    pub name: String,
    pub path: PathBuf,
    /// True when the pack's index is on disk (false: this process is still writing it).
    sealed: AtomicBool,
    /// Set once this process has marked the pack as used (see `PackStore::touch`).
    pub touched: AtomicBool,
    file: Mutex<Option<Arc<File>>>,
}

impl Pack {
    pub fn new(name: String, path: PathBuf, sealed: bool, file: Option<Arc<File>>) -> Self {
        Pack { name, path, sealed: AtomicBool::new(sealed), touched: AtomicBool::new(false), file: Mutex::new(file) }
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
}

/// Where a chunk lies: pack number in the catalog, offset and length of the encoded chunk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

#[derive(Default)]
pub(super) struct Catalog {
    /// Packs by number; `None` once a pack has gone.
    packs: Vec<Option<Arc<Pack>>>,
    by_name: HashMap<String, u32>,
    chunks: HashMap<ChunkId, Loc>,
    /// The folder's modification time at the last scan, and when that scan started.
    last_scan: Option<(SystemTime, SystemTime)>,
}

impl Catalog {
    pub fn is_scanned(&self) -> bool {
        self.last_scan.is_some()
    }

    pub fn lookup(&self, id: &ChunkId) -> Option<(Loc, Arc<Pack>)> {
        let loc = *self.chunks.get(id)?;
        let pack = self.packs.get(loc.pack as usize)?.clone()?;
        Some((loc, pack))
    }

    pub fn lookup_pack(&self, no: u32) -> Option<Arc<Pack>> {
        self.packs.get(no as usize)?.clone()
    }

    /// Registers a pack and returns its number.
    pub fn add_pack(&mut self, pack: Pack) -> u32 {
        let no = self.packs.len() as u32;
        self.by_name.insert(pack.name.clone(), no);
        self.packs.push(Some(Arc::new(pack)));
        no
    }

    /// Records where a chunk is; a newer location replaces an older one (the older pack may be going).
    pub fn insert(&mut self, id: ChunkId, loc: Loc) {
        self.chunks.insert(id, loc);
    }

    pub fn for_each_pack(&self, mut f: impl FnMut(&Pack)) {
        self.packs.iter().flatten().for_each(|p| f(p));
    }

    /// Forgets a pack and every chunk located in it (closing its file: it may be deleted).
    pub fn remove_pack(&mut self, no: u32) {
        if let Some(Some(pack)) = self.packs.get(no as usize) {
            self.by_name.remove(&pack.name);
            pack.set_file(None);
        }
        if let Some(slot) = self.packs.get_mut(no as usize) {
            *slot = None;
        }
        self.chunks.retain(|_, loc| loc.pack != no);
    }

    pub fn pack_number(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Brings the catalog up to date with the folder: loads the index of every pack not known yet, forgets
    /// packs whose index has gone (and finds their chunks again in the packs that remain). Skips the scan
    /// when the folder has not changed since the last one.
    pub fn refresh(&mut self, dir: &Path) -> Result<()> {
        let scan_start = SystemTime::now();
        let dir_mtime =
            std::fs::metadata(dir).and_then(|m| m.modified()).map_err(|e| Error::io("read folder", dir, e))?;
        if let Some((mtime, scanned_at)) = self.last_scan {
            // File times may be coarser than the clock (a second on some file systems): trust an unchanged
            // time only when the last scan started well after it.
            if mtime == dir_mtime && scanned_at > dir_mtime + Duration::from_secs(2) {
                return Ok(());
            }
        }
        let on_disk: HashSet<String> = index_names(dir)?.into_iter().collect();
        let gone: Vec<u32> = self
            .packs
            .iter()
            .enumerate()
            .filter_map(|(no, p)| p.as_ref().filter(|p| p.is_sealed() && !on_disk.contains(&p.name)).map(|_| no as u32))
            .collect();
        for &no in &gone {
            self.remove_pack(no);
        }
        let mut names: Vec<&String> = on_disk.iter().collect();
        names.sort();
        for name in names {
            let known = self.pack_number(name);
            if known.is_some() && gone.is_empty() {
                continue;
            }
            let idx_path = dir.join(format!("{name}.idx"));
            let index = match PackIndex::read(&idx_path) {
                Ok(i) => i,
                // Removed since the listing (gc), or damaged: its chunks stay unknown, and reads of them say
                // so; verify names them.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!("ignoring pack {name}: {e}");
                    continue;
                }
            };
            let no = match known {
                Some(no) => no,
                None => self.add_pack(Pack::new(name.clone(), dir.join(format!("{name}.pack")), true, None)),
            };
            for e in index.entries {
                // A chunk stored twice (two backups wrote it at once) is read from the first pack found.
                self.chunks.entry(e.id).or_insert(Loc { pack: no, offset: e.offset, len: e.len });
            }
        }
        self.last_scan = Some((dir_mtime, scan_start));
        Ok(())
    }
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
