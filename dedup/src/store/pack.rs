//! The pack store: encoded chunks appended to pack files of about `PACK_TARGET_BYTES`, each with an index
//! file written once the pack is durable (layout in `pack_format.rs`).
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

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::catalog::{file_stems, index_names, Catalog, Loc, Pack};
use super::pack_format::{pack_header, PackEntry, PackIndex};
use super::{ChunkLocation, ChunkStore, RepairStats, StoredChunk, SweepStats};
use crate::chunk::{self, ChunkId};
use crate::durable::{self, AtomicFile};
use crate::error::{Error, Result};
use crate::formats::{CHUNK_HEADER_LEN, CHUNK_MAGIC, PACK_HEADER_LEN, PACK_MAGIC};

/// A pack is sealed once it holds this many bytes.
const PACK_TARGET_BYTES: u64 = 16 << 20;
/// A pack is rewritten by `sweep` when at least this share of its bytes is unused (1/4).
const REWRITE_DEAD_SHARE: (u64, u64) = (1, 4);
/// Packs this process keeps open at most; the least recently opened is closed first.
const MAX_OPEN_PACKS: usize = 256;
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
    open_files: Mutex<VecDeque<Arc<Pack>>>,
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
            open_files: Mutex::new(VecDeque::new()),
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
            return Ok(f);
        }
        let file = Arc::new(File::open(&pack.path)?);
        pack.set_file(Some(file.clone()));
        let mut open = self.open_files.lock().expect("not poisoned");
        open.push_back(pack.clone());
        while open.len() > MAX_OPEN_PACKS {
            if let Some(old) = open.pop_front() {
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

/// The index of a pack, read back from its records: each record's id, then its encoded chunk, which says its
/// own length. A record that fails its check is left out; reading stops where no record header can be found.
fn index_from_records(data: &[u8], stats: &mut RepairStats) -> PackIndex {
    let mut entries = Vec::new();
    let mut pos = PACK_HEADER_LEN;
    let mut plain = Vec::new();
    let record_start = RECORD_ID_LEN as usize;
    while pos + record_start + CHUNK_HEADER_LEN <= data.len() {
        let id = ChunkId(data[pos..pos + record_start].try_into().expect("32 bytes"));
        let chunk_at = pos + record_start;
        let header = &data[chunk_at..chunk_at + CHUNK_HEADER_LEN];
        if header[..4] != CHUNK_MAGIC {
            break;
        }
        let payload_len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        let end = chunk_at + CHUNK_HEADER_LEN + payload_len;
        if end > data.len() {
            break;
        }
        if chunk::decode_verified(&id, &data[chunk_at..end], &mut plain).is_ok() {
            entries.push(PackEntry { id, offset: chunk_at as u64, len: (end - chunk_at) as u32 });
        } else {
            stats.chunks_damaged += 1;
        }
        pos = end;
    }
    stats.bytes_unreadable += (data.len() - pos.min(data.len())) as u64;
    PackIndex { pack_len: pos as u64, entries }
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
        let mut stats = SweepStats::default();
        let mut claimed: HashSet<ChunkId> = HashSet::new();
        let mut doomed: Vec<String> = Vec::new();
        // Never delete what cannot be read: a pack with a damaged index is not among these.
        for (name, index, used) in self.sealed_packs()? {
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
        // Packs never sealed by writers that died.
        for name in file_stems(&self.dir, ".pack")? {
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

    fn repair(&self) -> Result<RepairStats> {
        let mut stats = RepairStats::default();
        let mut names = file_stems(&self.dir, ".pack")?;
        names.sort();
        for name in names {
            stats.packs_checked += 1;
            let idx_path = self.index_path(&name);
            match PackIndex::read(&idx_path) {
                Ok(_) => continue,
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("rebuilding the index of pack {name}: {e}"),
            }
            let pack_path = self.pack_path(&name);
            let data = fs::read(&pack_path).map_err(|e| Error::io("read", &pack_path, e))?;
            if data.len() < PACK_HEADER_LEN || data[..8] != PACK_MAGIC {
                tracing::warn!("{} is not a pack; left alone", pack_path.display());
                continue;
            }
            let index = index_from_records(&data, &mut stats);
            if index.entries.is_empty() {
                continue; // nothing to recover: an unfinished pack that gc removes
            }
            // The same order as a seal: the pack's bytes durable before an index names them (it may be a pack a
            // writer never synced).
            File::open(&pack_path).and_then(|f| f.sync_data()).map_err(|e| Error::io("sync", &pack_path, e))?;
            let mut f =
                AtomicFile::create(&idx_path, Some(&self.tmp)).map_err(|e| Error::io("create", &idx_path, e))?;
            std::io::Write::write_all(&mut f, &index.encode()).map_err(|e| Error::io("write", &idx_path, e))?;
            f.commit().map_err(|e| Error::io("write", &idx_path, e))?;
            stats.indexes_rebuilt += 1;
            stats.chunks_recovered += index.entries.len() as u64;
        }
        self.refresh()?;
        Ok(stats)
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn encoded(n: u32) -> (ChunkId, Vec<u8>) {
        let plain: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(n + 7) >> 3) as u8).collect();
        let mut z = zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL).unwrap();
        (ChunkId::of(&plain), chunk::encode(&plain, &mut z))
    }

    fn open(dir: &Path) -> PackStore {
        PackStore::open(&dir.join("packs"), &dir.join("tmp")).unwrap()
    }

    #[test]
    fn chunks_put_by_one_store_are_read_by_another_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(dir.path());
        let reader = open(dir.path());
        let chunks: Vec<_> = (0..50).map(encoded).collect();
        for (id, enc) in &chunks[..20] {
            writer.put(id, enc).unwrap();
        }
        writer.sync().unwrap();
        // The reader scans on first use, then finds later packs when a chunk is not in its catalog.
        assert_eq!(reader.get(&chunks[3].0).unwrap(), chunks[3].1);
        for (id, enc) in &chunks[20..] {
            writer.put(id, enc).unwrap();
        }
        // Not sealed yet: the writer reads its own chunks, the reader does not see them.
        assert_eq!(writer.get(&chunks[40].0).unwrap(), chunks[40].1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(reader.get(&chunks[40].0), Err(Error::ChunkMissing { .. })));
        writer.sync().unwrap();
        for (id, enc) in &chunks {
            assert_eq!(&reader.get(id).unwrap(), enc);
            assert!(reader.touch(id).unwrap());
        }
        assert_eq!(reader.list().unwrap().len(), 50);
        assert!(!reader.touch(&ChunkId::of(b"absent")).unwrap());
    }

    #[test]
    fn writing_many_packs_keeps_few_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.pack_target = 1; // one chunk per pack
        let open_fds = || fs::read_dir("/proc/self/fd").unwrap().count();
        let before = open_fds();
        for n in 0..40 {
            let (id, enc) = encoded(n);
            s.put(&id, &enc).unwrap();
        }
        s.sync().unwrap();
        // Other tests run in parallel threads of this process: allow them a few.
        assert!(open_fds() < before + 10, "{} files open after 40 packs, {before} before", open_fds());
        let (id, enc) = encoded(7);
        assert_eq!(s.get(&id).unwrap(), enc);
    }

    #[test]
    fn a_pack_that_lost_its_index_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (id, enc) = encoded(5);
        let s = open(dir.path());
        s.put(&id, &enc).unwrap();
        s.sync().unwrap();
        let reader = open(dir.path());
        assert!(reader.get(&id).is_ok());
        // A gc removed the index and died before removing the pack.
        let loc = reader.locate(&id).unwrap().unwrap();
        fs::remove_file(&loc.index).unwrap();
        reader.start_marking();
        assert!(!reader.touch(&id).unwrap(), "the chunk must be written again");
        assert!(loc.pack.exists());
    }

    #[test]
    fn a_failed_write_fails_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let (id, enc) = encoded(6);
        s.put(&id, &enc).unwrap();
        // The open pack vanishes under the writer: sealing it fails, and so does every later sync.
        let loc = s.locate(&id).unwrap().unwrap();
        fs::remove_file(&loc.pack).unwrap();
        fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        assert!(s.sync().is_err());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        assert!(s.sync().is_err(), "chunks put before the failure are lost: sync keeps saying so");
    }

    #[test]
    fn repair_recovers_every_intact_record_and_skips_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let chunks: Vec<_> = (0..6).map(encoded).collect();
        for (id, enc) in &chunks {
            s.put(id, enc).unwrap();
        }
        s.sync().unwrap();
        let bad = s.locate(&chunks[2].0).unwrap().unwrap();
        let last = s.locate(&chunks[5].0).unwrap().unwrap();
        // One record's payload damaged, the last one cut short, and the index gone.
        let f = OpenOptions::new().write(true).open(&bad.pack).unwrap();
        f.write_all_at(&[0x5a; 8], bad.offset + u64::from(bad.len) / 2).unwrap();
        f.set_len(last.offset + 40).unwrap();
        fs::remove_file(&bad.index).unwrap();
        let stats = s.repair().unwrap();
        assert_eq!((stats.indexes_rebuilt, stats.chunks_recovered, stats.chunks_damaged), (1, 4, 1));
        let fresh = open(dir.path());
        for (n, (id, enc)) in chunks.iter().enumerate() {
            match n {
                2 | 5 => assert!(fresh.get(id).is_err(), "chunk {n} is not recovered"),
                _ => assert_eq!(&fresh.get(id).unwrap(), enc, "chunk {n}"),
            }
        }
        assert_eq!(s.repair().unwrap().indexes_rebuilt, 0, "a sound index is left as it is");
    }

    #[test]
    fn an_unsealed_pack_is_dropped_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (id, enc) = encoded(1);
        {
            let s = open(dir.path());
            s.put(&id, &enc).unwrap();
            // Dropped without sync: the pack is unfinished work.
        }
        let s = open(dir.path());
        assert!(!s.touch(&id).unwrap());
        assert_eq!(fs::read_dir(dir.path().join("packs")).unwrap().count(), 0, "the unsealed pack was removed");
        // A pack left by a writer that died (no index) goes with the next sweep once old enough.
        fs::write(dir.path().join("packs/0123456789abcdef.pack"), pack_header()).unwrap();
        let stats = s.sweep(&HashSet::new(), SystemTime::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(stats.unfinished_packs_removed, 1);
    }

    #[test]
    fn sweep_removes_dead_packs_and_rewrites_mostly_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let chunks: Vec<_> = (0..30).map(encoded).collect();
        for (id, enc) in &chunks[..10] {
            s.put(id, enc).unwrap();
        }
        s.sync().unwrap();
        for (id, enc) in &chunks[10..] {
            s.put(id, enc).unwrap();
        }
        s.sync().unwrap();
        // Pack one: all dead. Pack two: 5 of 20 kept.
        let in_use: HashSet<ChunkId> = chunks[10..15].iter().map(|c| c.0).collect();
        // A cutoff in the past keeps everything.
        let kept = s.sweep(&in_use, SystemTime::now() - Duration::from_secs(60)).unwrap();
        assert_eq!((kept.chunks_removed, kept.chunks_kept_recent), (0, 25));
        let stats = s.sweep(&in_use, SystemTime::now() + Duration::from_secs(1)).unwrap();
        assert_eq!((stats.packs_removed, stats.packs_rewritten, stats.chunks_removed), (1, 1, 25));
        let fresh = open(dir.path());
        for (id, enc) in &chunks[10..15] {
            assert_eq!(&fresh.get(id).unwrap(), enc);
            assert_eq!(&s.get(id).unwrap(), enc, "the sweeping store follows the move");
        }
        assert!(matches!(fresh.get(&chunks[0].0), Err(Error::ChunkMissing { .. })));
        assert_eq!(fresh.list().unwrap().len(), 5);
        assert_eq!(fs::read_dir(dir.path().join("packs")).unwrap().count(), 2, "one pack and its index");
    }

    #[test]
    fn damage_is_reported_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let (id, enc) = encoded(3);
        let (id2, enc2) = encoded(4);
        s.put(&id, &enc).unwrap();
        s.put(&id2, &enc2).unwrap();
        s.sync().unwrap();
        let loc = s.locate(&id).unwrap().unwrap();
        // The id before the record no longer matches: the index and the pack disagree.
        let f = OpenOptions::new().write(true).open(&loc.pack).unwrap();
        f.write_all_at(&[0xff], loc.offset - 1).unwrap();
        assert!(matches!(open(dir.path()).get(&id), Err(Error::ChunkCorrupt { .. })));
        // A truncated pack.
        f.set_len(loc.offset + 10).unwrap();
        let err = open(dir.path()).get(&id2).unwrap_err();
        assert!(matches!(err, Error::ChunkCorrupt { .. }), "{err}");
        // A damaged index: gc leaves the pack alone.
        fs::write(&loc.index, b"garbage").unwrap();
        let stats = s.sweep(&HashSet::new(), SystemTime::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(stats.chunks_removed + stats.unfinished_packs_removed, 0);
        assert!(loc.pack.exists());
    }
}
