//! The pack store: encoded chunks appended to pack files of about `PACK_TARGET_BYTES`, each with an index
//! file written once the pack is durable (layout in `pack_format.rs`). This file holds the store itself:
//! writing, sealing and reading chunks; garbage collection's sweep is in `sweep.rs`, the rebuilding of lost
//! indexes in `repair.rs`.
//!
//! Why packs: a library of millions of small chunk files is slow to write (a create and a rename per chunk),
//! slow to read cold (a folder lookup and an inode read before the data), and wastes the tail block of every
//! file. A pack is one open file; a cold chunk read is one positioned read.
//!
//! Durability: a writer appends records to its open pack, then seals it: fdatasync of the pack, then its
//! index written through a temporary file, fsynced and renamed into place. `sync` seals the open pack and
//! fsyncs the folder, so every chunk put before it is durable, names included, before a manifest refers to
//! it. A pack without an index is unfinished work: readers ignore it and `sweep` removes it.
//!
//! Concurrency: each process keeps a catalog (`catalog.rs`) of where chunks are. Two backups running at once
//! may both store a chunk neither had (each in its own pack); reads use either copy and `sweep` drops the
//! spare one.
//!
//! Garbage: `sweep` deletes packs whose chunks are all unused, and rewrites packs that are mostly unused,
//! keeping only the chunks in use. A pack used (read by a backup, or written) after the cutoff is left
//! alone whole: a backup in progress may be about to refer to any chunk of it.

mod repair;
mod sweep;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use lru::LruCache;

use super::catalog::{index_names, Catalog, Loc, Pack};
use super::pack_format::{pack_header, PackEntry, PackIndex};
use super::{ChunkLocation, ChunkStore, RepairStats, StoredChunk, SweepStats};
use crate::chunk::ChunkId;
use crate::durable::{self, AtomicFile};
use crate::error::{Error, Result};
use crate::formats::PACK_HEADER_LEN;

/// A pack is sealed once it holds this many bytes.
const PACK_TARGET_BYTES: u64 = 16 << 20;
/// Sealed packs this process keeps open at most; the least recently used is closed first.
const MAX_OPEN_PACKS: NonZeroUsize = NonZeroUsize::new(256).expect("not zero");
/// Length of the chunk id before each record.
const RECORD_ID_LEN: u64 = 32;

pub struct PackStore {
    dir: PathBuf,
    /// `PACK_TARGET_BYTES`, smaller in tests.
    pack_target: u64,
    tmp: PathBuf,
    catalog: RwLock<Catalog>,
    writer: Mutex<Option<OpenPack>>,
    /// Held while a pack is sealed, so that `sync` can wait for seals other threads started. Taken before
    /// the writer lock is released, so no full pack is ever outside both.
    sealing: Mutex<()>,
    /// A write or seal failed: chunks whose `put` succeeded are lost, so `sync` must fail from now on.
    failed: AtomicBool,
    /// The sealed packs whose file is open, by name; a pack evicted from it has its file closed.
    open_files: Mutex<LruCache<String, Arc<Pack>>>,
}

/// The pack this process is appending to.
struct OpenPack {
    no: u32,
    pack: Arc<Pack>,
    file: Arc<File>,
    len: u64,
    entries: Vec<PackEntry>,
    record: Vec<u8>,
}

impl PackStore {
    /// Opens (creating when needed) the store in `dir`; temporary files go to `tmp` on the same file system.
    /// Pack indexes are read when first needed.
    pub fn open(dir: &Path, tmp: &Path) -> Result<Self> {
        for d in [dir, tmp] {
            durable::create_dir_durable(d).map_err(|e| Error::io("create folder", d, e))?;
        }
        Ok(PackStore {
            dir: dir.to_path_buf(),
            pack_target: PACK_TARGET_BYTES,
            tmp: tmp.to_path_buf(),
            catalog: RwLock::new(Catalog::default()),
            writer: Mutex::new(None),
            sealing: Mutex::new(()),
            failed: AtomicBool::new(false),
            open_files: Mutex::new(LruCache::new(MAX_OPEN_PACKS)),
        })
    }

    fn pack_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pack"))
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.idx"))
    }

    /// Where the catalog says a chunk is, scanning the folder first when it never was.
    fn lookup(&self, id: &ChunkId) -> Result<Option<(Loc, Arc<Pack>)>> {
        {
            let cat = self.catalog.read().expect("not poisoned");
            if cat.is_scanned() {
                return Ok(cat.lookup(id));
            }
        }
        let mut cat = self.catalog.write().expect("not poisoned");
        if !cat.is_scanned() {
            cat.refresh(&self.dir)?;
        }
        Ok(cat.lookup(id))
    }

    fn refresh(&self) -> Result<()> {
        self.catalog.write().expect("not poisoned").refresh(&self.dir)
    }

    /// The pack's open file, opening it when needed.
    fn file_of(&self, pack: &Arc<Pack>) -> std::io::Result<Arc<File>> {
        if let Some(f) = pack.cached_file() {
            // A read is a use: the pack goes to the back of the queue for closing. (The open pack of this
            // process's writer is not in the cache; it keeps its file until it is sealed.)
            self.open_files.lock().expect("not poisoned").promote(&pack.name);
            return Ok(f);
        }
        let file = Arc::new(File::open(&pack.path)?);
        pack.set_file(Some(file.clone()));
        let mut open = self.open_files.lock().expect("not poisoned");
        // `push` hands back the entry it displaced: the least recently used pack when the cache is full, or
        // an entry of the same name (another thread opened this pack too, or a pack of that name that the
        // catalog has since dropped).
        if let Some((_, old)) = open.push(pack.name.clone(), pack.clone()) {
            if !Arc::ptr_eq(&old, pack) {
                old.set_file(None);
            }
        }
        Ok(file)
    }

    /// Reads the record of a chunk: the id before it must match, and the pack must hold all of it.
    fn read_record(&self, id: &ChunkId, loc: Loc, pack: &Arc<Pack>) -> std::result::Result<Vec<u8>, ReadFailure> {
        let file = self.file_of(pack).map_err(ReadFailure::Open)?;
        let mut record_id = [0u8; RECORD_ID_LEN as usize];
        let mut buf = vec![0u8; loc.len as usize];
        let wanted = record_id.len() + buf.len();
        // One read for the id and the chunk, each into its own buffer.
        let read = nix::sys::uio::preadv(
            &*file,
            &mut [std::io::IoSliceMut::new(&mut record_id), std::io::IoSliceMut::new(&mut buf)],
            (loc.offset - RECORD_ID_LEN) as i64,
        );
        match read {
            Ok(n) if n == wanted => {}
            Ok(_) => {
                // Short: the end of the file (a read of a regular file returns all it can).
                return Err(ReadFailure::Bad(Error::ChunkCorrupt {
                    id: *id,
                    reason: format!("pack {} is shorter than its index says", pack.path.display()),
                }));
            }
            Err(e) => return Err(ReadFailure::Bad(Error::io("read chunk from", &pack.path, e.into()))),
        }
        if record_id != id.0 {
            return Err(ReadFailure::Bad(Error::ChunkCorrupt {
                id: *id,
                reason: format!("pack {} holds another chunk where its index says", pack.path.display()),
            }));
        }
        Ok(buf)
    }

    /// Starts a new pack file.
    fn new_pack(&self) -> Result<OpenPack> {
        let name = durable::random_suffix();
        let path = self.pack_path(&name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create pack", &path, e))?;
        let file = Arc::new(file);
        if let Err(e) = file.write_all_at(&pack_header(), 0) {
            let _ = fs::remove_file(&path);
            return Err(Error::io("write pack", &path, e));
        }
        let pack = Pack::new(name, path, false, Some(file.clone()));
        let mut cat = self.catalog.write().expect("not poisoned");
        let no = cat.add_pack(pack);
        let pack = cat.lookup_pack(no).expect("just added");
        Ok(OpenPack { no, pack, file, len: PACK_HEADER_LEN as u64, entries: Vec::new(), record: Vec::new() })
    }

    /// Makes a pack durable and gives it its index. On failure the pack is abandoned.
    fn seal(&self, open: OpenPack, _sealing: &std::sync::MutexGuard<'_, ()>) -> Result<()> {
        let result = (|| {
            open.file.sync_data().map_err(|e| Error::io("sync pack", &open.pack.path, e))?;
            let index = PackIndex { pack_len: open.len, entries: open.entries.clone() };
            let idx_path = self.index_path(&open.pack.name);
            let mut f =
                AtomicFile::create(&idx_path, Some(&self.tmp)).map_err(|e| Error::io("create", &idx_path, e))?;
            std::io::Write::write_all(&mut f, &index.encode()).map_err(|e| Error::io("write", &idx_path, e))?;
            f.commit_without_dir_sync().map_err(|e| Error::io("write", &idx_path, e))
        })();
        match result {
            Ok(()) => {
                open.pack.mark_sealed();
                // Reads of its chunks open it through the bounded set of open files, like any pack.
                open.pack.set_file(None);
                Ok(())
            }
            Err(e) => {
                self.abandon(open);
                Err(e)
            }
        }
    }

    /// Drops an unfinished pack: its chunks are forgotten and its file removed.
    fn abandon(&self, open: OpenPack) {
        self.failed.store(true, Ordering::Release);
        self.catalog.write().expect("not poisoned").remove_pack(open.no);
        let _ = fs::remove_file(&open.pack.path);
    }

    /// Seals the open pack, waits for seals in progress, and makes the folder's names durable (always: an
    /// index another thread or process sealed may be what the caller's manifest refers to).
    fn seal_and_sync_dir(&self) -> Result<()> {
        let mut writer = self.writer.lock().expect("not poisoned");
        let sealing = self.sealing.lock().expect("not poisoned");
        if let Some(open) = writer.take() {
            drop(writer);
            self.seal(open, &sealing)?;
        } else {
            drop(writer);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::io(
                "store chunks in",
                &self.dir,
                std::io::Error::other("an earlier write of chunks failed; they were not kept"),
            ));
        }
        durable::sync_dir(&self.dir).map_err(|e| Error::io("sync folder", &self.dir, e))
    }

    /// Every pack with a readable index, by name, with the index and the time the pack was last used.
    /// A damaged index is skipped with a warning (verify reports its chunks; `repair` rebuilds it), and so is an
    /// index whose pack is gone (its chunks are missing).
    fn sealed_packs(&self) -> Result<Vec<(String, PackIndex, SystemTime)>> {
        let mut names = index_names(&self.dir)?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let index = match PackIndex::read(&self.index_path(&name)) {
                Ok(i) => i,
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!("pack {name} left alone: {e}");
                    continue;
                }
            };
            if let Ok(used) = fs::metadata(self.pack_path(&name)).and_then(|m| m.modified()) {
                out.push((name, index, used));
            }
        }
        Ok(out)
    }
}

enum ReadFailure {
    /// The pack could not be opened (it may have been removed by garbage collection).
    Open(std::io::Error),
    Bad(Error),
}

impl Drop for PackStore {
    fn drop(&mut self) {
        // A pack never sealed is unfinished work: nothing refers to its chunks.
        let open = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(open) = open {
            let _ = fs::remove_file(&open.pack.path);
        }
    }
}

impl ChunkStore for PackStore {
    fn touch(&self, id: &ChunkId) -> Result<bool> {
        let Some((loc, pack)) = self.lookup(id)? else {
            return Ok(false);
        };
        if !pack.is_sealed() || pack.touched.load(Ordering::Acquire) {
            return Ok(true);
        }
        // One mark per pack and process is enough: gc keeps a pack used after the oldest running backup
        // started (see gc.rs), and this backup started before this mark.
        match nix::sys::stat::utimensat(
            None,
            &pack.path,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        ) {
            // The mark counts only if the pack still has its index: a gc that removed the index and then
            // died (or failed to remove the pack) leaves a pack that the next sweep removes as unfinished.
            Ok(()) if self.index_path(&pack.name).exists() => {
                pack.touched.store(true, Ordering::Release);
                Ok(true)
            }
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {
                // Removed by gc since the catalog was read: the chunk must be written again.
                self.catalog.write().expect("not poisoned").remove_pack(loc.pack);
                Ok(false)
            }
            Err(e) => Err(Error::io("mark as used", &pack.path, e.into())),
        }
    }

    fn put(&self, id: &ChunkId, encoded: &[u8]) -> Result<()> {
        let mut writer = self.writer.lock().expect("not poisoned");
        if writer.is_none() {
            *writer = Some(self.new_pack()?);
        }
        let open = writer.as_mut().expect("just opened");
        open.record.clear();
        open.record.extend_from_slice(&id.0);
        open.record.extend_from_slice(encoded);
        if let Err(e) = open.file.write_all_at(&open.record, open.len) {
            let open = writer.take().expect("open");
            let path = open.pack.path.clone();
            self.abandon(open);
            return Err(Error::io("write pack", path, e));
        }
        let entry = PackEntry { id: *id, offset: open.len + RECORD_ID_LEN, len: encoded.len() as u32 };
        open.len += open.record.len() as u64;
        open.entries.push(entry);
        self.catalog
            .write()
            .expect("not poisoned")
            .insert(*id, Loc { pack: open.no, offset: entry.offset, len: entry.len });
        if open.len >= self.pack_target {
            let full = writer.take().expect("open");
            let sealing = self.sealing.lock().expect("not poisoned");
            drop(writer);
            self.seal(full, &sealing)?;
        }
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let mut refreshed = false;
        loop {
            let found = self.lookup(id)?;
            let failure = match found {
                Some((loc, pack)) => match self.read_record(id, loc, &pack) {
                    Ok(data) => return Ok(data),
                    Err(ReadFailure::Bad(e)) => return Err(e),
                    Err(ReadFailure::Open(e)) if e.kind() == ErrorKind::NotFound => Error::ChunkMissing { id: *id },
                    Err(ReadFailure::Open(e)) => return Err(Error::io("open pack", &pack.path, e)),
                },
                None => Error::ChunkMissing { id: *id },
            };
            // Another process may have added the chunk (a new backup) or moved it (gc): look again, once.
            if refreshed {
                return Err(failure);
            }
            self.refresh()?;
            refreshed = true;
        }
    }

    fn list(&self) -> Result<Vec<StoredChunk>> {
        let packs = self.sealed_packs()?;
        Ok(packs
            .iter()
            .flat_map(|(_, index, used)| {
                index.entries.iter().map(|e| StoredChunk {
                    id: e.id,
                    used: *used,
                    stored_bytes: u64::from(e.len) + RECORD_ID_LEN,
                })
            })
            .collect())
    }

    fn sync(&self) -> Result<()> {
        self.seal_and_sync_dir()
    }

    fn start_marking(&self) {
        let cat = self.catalog.read().expect("not poisoned");
        cat.for_each_pack(|p| p.touched.store(false, Ordering::Release));
    }

    fn sweep(&self, in_use: &HashSet<ChunkId>, cutoff: SystemTime) -> Result<SweepStats> {
        self.sweep_packs(in_use, cutoff)
    }

    fn repair(&self) -> Result<RepairStats> {
        self.repair_indexes()
    }

    fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        Ok(self.lookup(id)?.map(|(loc, pack)| ChunkLocation {
            index: self.index_path(&pack.name),
            pack: pack.path.clone(),
            offset: loc.offset,
            len: loc.len,
        }))
    }
}

#[cfg(test)]
mod tests;
