//! The pack store: encoded chunks appended to pack files of about `PACK_TARGET_BYTES`, each with an index
//! file written once the pack is durable (layout in `pack_format.rs`). This file holds the store itself:
//! writing, sealing and reading chunks; garbage collection's sweep is in `sweep.rs`, the rebuilding of lost
//! indexes in `repair.rs`.
//!
//! Why packs: a library of millions of small chunk files is slow to write (a create and a rename per chunk),
//! slow to read cold (a folder lookup and an inode read before the data), and wastes the tail block of every
//! file. A pack is one open file; a cold chunk read is one positioned read.
//!
//! Durability: a writer appends records to its open pack, built in memory, then seals it: the pack written
//! to its file and made durable, then its index written through a temporary file, fsynced and renamed into
//! place (`seal.rs`). `sync` seals the open pack and
//! fsyncs the folder, so every chunk put before it is durable, names included, before a manifest refers to
//! it. A pack without an index is unfinished work: readers ignore it and `sweep` removes it.
//!
//! Where chunks are: the library's chunk map (`chunk_map.rs`, kept up to date by `store/merge.rs`) and the indexes of
//! the packs it does not cover yet, through each process's catalog (`catalog.rs`). A backup's disk index also
//! records where each of its chunks was stored, so that a live mount reads a chunk without looking it up.
//!
//! Concurrency: two backups running at once may both store a chunk neither had (each in its own pack); reads
//! use either copy and `sweep` drops the spare one.
//!
//! Garbage: `sweep` deletes packs whose chunks are all unused, and rewrites packs that are mostly unused,
//! keeping only the chunks in use. A pack used (read by a backup, or written) after the cutoff is left
//! alone whole: a backup in progress may be about to refer to any chunk of it.

mod repair;
mod seal;
mod sweep;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use lru::LruCache;

use super::catalog::{Catalog, FolderPacks, Pack, MERGE_AT};
use super::located::{PackName, StoredAt};
use super::merge::MapFolder;
use super::pack_format::{pack_header, PackEntry, PackIndex};
use super::{ChunkLocation, ChunkStore, RepairStats, StoredChunk, SweepStats};
use crate::aligned::AlignedBuf;
use crate::chunk::ChunkId;
use crate::durable;
use crate::error::{Error, Result};
use crate::formats::PACK_HEADER_LEN;
use seal::Sealing;

/// A pack is sealed once it holds this many bytes...
const PACK_TARGET_BYTES: u64 = 16 << 20;
/// ... or this many chunks: a writer keeps the entries of its open pack in memory, and chunks that compress
/// to a few bytes would otherwise put a quarter of a million of them in one pack (measured with
/// `bench/memory.sh`: the peak memory of a backup grew with the disk until this bound).
const PACK_MAX_CHUNKS: usize = 64 * 1024;
/// Room beyond `PACK_TARGET_BYTES` that a pack's memory starts with: its last record (at most a chunk's
/// encoding, a little more than the chunk) goes past the target.
const PACK_SLACK: usize = 1 << 20;
/// Sealed packs this process keeps open at most; the least recently used is closed first.
const MAX_OPEN_PACKS: NonZeroUsize = NonZeroUsize::new(256).expect("not zero");
/// Length of the chunk id before each record.
const RECORD_ID_LEN: u64 = 32;

pub struct PackStore {
    dir: PathBuf,
    /// `PACK_TARGET_BYTES`, smaller in tests.
    pack_target: u64,
    /// `MERGE_AT`, smaller in tests.
    merge_at: usize,
    tmp: PathBuf,
    catalog: RwLock<Catalog>,
    /// The packs this process has dealt with, by name: their open files and marks.
    packs: Mutex<HashMap<PackName, Arc<Pack>>>,
    writer: Mutex<Option<OpenPack>>,
    /// The memory of packs sealed, for the next packs: refilled, it costs no page faults.
    spare_buffers: Mutex<Vec<AlignedBuf>>,
    /// Full packs being sealed, oldest first (`seal.rs`). A full pack enters it before the writer lock is
    /// released, so no full pack is ever outside both; seals are finished with this lock held, so a `sync`
    /// also waits for the seals another thread is finishing.
    sealing: Mutex<VecDeque<Sealing>>,
    /// A write or seal failed: chunks whose `put` succeeded are lost, so `sync` must fail from now on.
    failed: AtomicBool,
    /// This process has stored chunks (it then also keeps the chunk map up to date).
    writes: AtomicBool,
    /// The sealed packs whose file is open, by name; a pack evicted from it has its file closed.
    open_files: Mutex<LruCache<PackName, Arc<Pack>>>,
}

/// The pack this process is appending to (its bytes in `Pack::append`'s memory).
struct OpenPack {
    pack: Arc<Pack>,
    entries: Vec<PackEntry>,
}

impl PackStore {
    /// Opens (creating when needed) the store in `dir`; temporary files go to `tmp` on the same file system.
    /// What says where chunks are is read when first needed.
    pub fn open(dir: &Path, tmp: &Path) -> Result<Self> {
        for d in [dir, tmp] {
            durable::create_dir_durable(d).map_err(|e| Error::io("create folder", d, e))?;
        }
        Ok(PackStore {
            dir: dir.to_path_buf(),
            pack_target: PACK_TARGET_BYTES,
            merge_at: MERGE_AT,
            tmp: tmp.to_path_buf(),
            catalog: RwLock::new(Catalog::default()),
            packs: Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
            spare_buffers: Mutex::new(Vec::new()),
            sealing: Mutex::new(VecDeque::new()),
            failed: AtomicBool::new(false),
            writes: AtomicBool::new(false),
            open_files: Mutex::new(LruCache::new(MAX_OPEN_PACKS)),
        })
    }

    fn pack_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pack"))
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.idx"))
    }

    /// The pack of that name, as this process knows it (a sealed pack when first met).
    fn pack(&self, name: PackName) -> Arc<Pack> {
        let mut packs = self.packs.lock().expect("not poisoned");
        packs.entry(name).or_insert_with(|| Arc::new(Pack::sealed(name, self.pack_path(&name.to_string())))).clone()
    }

    /// Where the catalog says a chunk is, scanning the folder first when it never was.
    fn lookup(&self, id: &ChunkId) -> Result<Option<(StoredAt, Arc<Pack>)>> {
        let found = {
            let cat = self.catalog.read().expect("not poisoned");
            if cat.is_scanned() {
                Some(cat.lookup(id)?)
            } else {
                None
            }
        };
        let at = match found {
            Some(at) => at,
            None => {
                self.refresh()?;
                self.catalog.read().expect("not poisoned").lookup(id)?
            }
        };
        Ok(at.map(|at| (at, self.pack(at.pack))))
    }

    /// Brings the catalog up to date with the folder, and, in a process that stores chunks, writes a new
    /// chunk map when too many chunks are outside the one there is. (A process that only reads, such as a
    /// daemon serving mounts, never writes to the library; the writers keep what it holds small.)
    fn refresh(&self) -> Result<()> {
        let loose = {
            let mut cat = self.catalog.write().expect("not poisoned");
            cat.refresh(&self.dir, &FolderPacks(&self.dir), None)?;
            cat.loose_chunks()
        };
        if loose >= self.merge_at && self.writes.load(Ordering::Acquire) {
            self.merge_map(false)?;
        }
        Ok(())
    }

    /// Forgets a pack that has gone from the folder.
    fn forget_pack(&self, name: PackName) {
        self.catalog.write().expect("not poisoned").remove_pack(name);
        if let Some(pack) = self.packs.lock().expect("not poisoned").remove(&name) {
            pack.set_file(None);
        }
        self.open_files.lock().expect("not poisoned").pop(&name);
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
        // an entry of the same name (another thread opened this pack too, or a pack of that name that has
        // since been forgotten).
        if let Some((_, old)) = open.push(pack.name, pack.clone()) {
            if !Arc::ptr_eq(&old, pack) {
                old.set_file(None);
            }
        }
        Ok(file)
    }

    /// Reads the record of a chunk: the id before it must match, and the pack must hold all of it.
    fn read_record(&self, id: &ChunkId, at: StoredAt, pack: &Arc<Pack>) -> std::result::Result<Vec<u8>, ReadFailure> {
        let mut record_id = [0u8; RECORD_ID_LEN as usize];
        let mut buf = vec![0u8; at.len as usize];
        let wanted = record_id.len() + buf.len();
        let Some(start) = u64::from(at.offset).checked_sub(RECORD_ID_LEN) else {
            return Err(ReadFailure::Elsewhere);
        };
        // A chunk of a pack this process is still writing is read from memory.
        match pack.read_unwritten(start as usize, &mut [&mut record_id, &mut buf]) {
            Some(true) if record_id == id.0 => return Ok(buf),
            Some(true) => return Err(ReadFailure::Elsewhere),
            Some(false) => return Err(ReadFailure::Short),
            None => {}
        }
        let file = self.file_of(pack).map_err(ReadFailure::Open)?;
        // One read for the id and the chunk, each into its own buffer.
        let read = nix::sys::uio::preadv(
            &*file,
            &mut [std::io::IoSliceMut::new(&mut record_id), std::io::IoSliceMut::new(&mut buf)],
            start as i64,
        );
        match read {
            Ok(n) if n == wanted => {}
            // Short: the end of the file (a read of a regular file returns all it can).
            Ok(_) => return Err(ReadFailure::Short),
            Err(e) => return Err(ReadFailure::Bad(Error::io("read chunk from", &pack.path, e.into()))),
        }
        if record_id != id.0 {
            return Err(ReadFailure::Elsewhere);
        }
        Ok(buf)
    }

    /// Starts a new pack, in memory until its seal.
    fn new_pack(&self) -> OpenPack {
        let name = PackName::random();
        let mut bytes = self.spare_buffers.lock().expect("not poisoned").pop().unwrap_or_default();
        bytes.clear();
        // Room for a full pack at once: growing it record by record would copy it over and over, and leave
        // the allocator with freed blocks of every size.
        bytes.reserve(self.pack_target as usize + PACK_SLACK);
        bytes.extend_from_slice(&pack_header());
        let pack = Arc::new(Pack::unwritten(name, self.pack_path(&name.to_string()), bytes));
        self.packs.lock().expect("not poisoned").insert(name, pack.clone());
        OpenPack { pack, entries: Vec::new() }
    }

    /// Starts sealing a full pack (on a thread of its own).
    fn start_seal(&self, open: OpenPack) -> Sealing {
        let name = open.pack.name.to_string();
        Sealing::start(open, self.index_path(&name), self.tmp.clone())
    }

    /// Waits for a seal and makes its outcome known: the pack is sealed, or it is abandoned.
    fn finish_seal(&self, sealing: Sealing) -> Result<()> {
        let (pack, result) = sealing.wait();
        match result {
            Ok(()) => {
                pack.mark_sealed();
                self.catalog.write().expect("not poisoned").sealed(pack.name);
                // Reads of its chunks open it through the bounded set of open files, like any pack.
                if let Some(bytes) = pack.take_unwritten() {
                    let mut spare = self.spare_buffers.lock().expect("not poisoned");
                    if spare.len() <= seal::MAX_RUNNING {
                        spare.push(bytes);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.abandon(&pack);
                Err(e)
            }
        }
    }

    /// Drops an unfinished pack: its chunks are forgotten and its file removed.
    fn abandon(&self, pack: &Pack) {
        self.failed.store(true, Ordering::Release);
        self.forget_pack(pack.name);
        let _ = fs::remove_file(&pack.path);
    }

    /// Seals the open pack, waits for seals in progress, and makes the folder's names durable (always: an
    /// index another thread or process sealed may be what the caller's manifest refers to).
    fn seal_and_sync_dir(&self) -> Result<()> {
        let mut writer = self.writer.lock().expect("not poisoned");
        let mut sealing = self.sealing.lock().expect("not poisoned");
        if let Some(open) = writer.take() {
            sealing.push_back(self.start_seal(open));
        }
        drop(writer);
        let mut first_error = None;
        for running in sealing.drain(..) {
            if let Err(e) = self.finish_seal(running) {
                first_error.get_or_insert(e);
            }
        }
        drop(sealing);
        if let Some(e) = first_error {
            return Err(e);
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

    /// Writes a new chunk map that covers every sealed pack and no pack that has gone (see `MapFolder::merge`
    /// for `wait`), then takes it.
    fn merge_map(&self, wait: bool) -> Result<()> {
        let maps = MapFolder { dir: &self.dir, tmp: &self.tmp, run_chunks: self.merge_at };
        if maps.merge(&FolderPacks(&self.dir), wait)? {
            let mut cat = self.catalog.write().expect("not poisoned");
            cat.invalidate();
            cat.refresh(&self.dir, &FolderPacks(&self.dir), None)?;
        }
        Ok(())
    }

    /// Writes a new chunk map when this process holds too many chunks outside the current one.
    fn merge_if_due(&self) -> Result<()> {
        if self.catalog.read().expect("not poisoned").loose_chunks() >= self.merge_at {
            self.merge_map(false)?;
        }
        Ok(())
    }

    /// Every pack with a readable index, by name, with the index and the time the pack was last used.
    /// A damaged index is skipped with a warning (verify reports its chunks; `repair` rebuilds it), and so is an
    /// index whose pack is gone (its chunks are missing).
    fn sealed_packs(&self) -> Result<Vec<(String, PackIndex, SystemTime)>> {
        let mut names = super::catalog::index_names(&self.dir)?;
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

    /// Reads a chunk where the catalog says it is, looking again once (after a refresh) when it is not there.
    fn get_found(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let mut refreshed = false;
        loop {
            let failure = match self.lookup(id)? {
                Some((at, pack)) => match self.read_record(id, at, &pack) {
                    Ok(data) => return Ok(data),
                    Err(ReadFailure::Bad(e)) => return Err(e),
                    Err(ReadFailure::Open(e)) if e.kind() == ErrorKind::NotFound => {
                        self.forget_pack(at.pack);
                        Error::ChunkMissing { id: *id }
                    }
                    Err(ReadFailure::Open(e)) => return Err(Error::io("open pack", &pack.path, e)),
                    Err(ReadFailure::Short) => Error::ChunkCorrupt {
                        id: *id,
                        reason: format!("pack {} is shorter than its index says", pack.path.display()),
                    },
                    Err(ReadFailure::Elsewhere) => Error::ChunkCorrupt {
                        id: *id,
                        reason: format!("pack {} holds another chunk where its index says", pack.path.display()),
                    },
                },
                None => Error::ChunkMissing { id: *id },
            };
            // Another process may have added the chunk (a new backup) or moved it (gc): look again, once.
            if refreshed || matches!(failure, Error::ChunkCorrupt { .. }) {
                return Err(failure);
            }
            self.catalog.write().expect("not poisoned").invalidate();
            self.refresh()?;
            refreshed = true;
        }
    }
}

enum ReadFailure {
    /// The pack could not be opened (it may have been removed by garbage collection).
    Open(std::io::Error),
    /// The pack ends before the record does.
    Short,
    /// Another record is where the chunk was said to be (a location from before a rewrite).
    Elsewhere,
    Bad(Error),
}

impl Drop for PackStore {
    fn drop(&mut self) {
        // A pack never sealed is unfinished work, never written: nothing refers to its chunks.
        drop(self.writer.lock().unwrap_or_else(|p| p.into_inner()).take());
        // Seals still running finish (their packs are whole); nothing is left writing after the store.
        for running in self.sealing.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = running.wait();
        }
    }
}

impl ChunkStore for PackStore {
    fn touch(&self, id: &ChunkId) -> Result<Option<StoredAt>> {
        let Some((at, pack)) = self.lookup(id)? else {
            return Ok(None);
        };
        if !pack.is_sealed() || pack.touched.load(Ordering::Acquire) {
            return Ok(Some(at));
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
            Ok(()) if self.index_path(&pack.name.to_string()).exists() => {
                pack.touched.store(true, Ordering::Release);
                Ok(Some(at))
            }
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {
                // Removed by gc since the catalog was read: the chunk must be written again.
                self.forget_pack(at.pack);
                Ok(None)
            }
            Err(e) => Err(Error::io("mark as used", &pack.path, e.into())),
        }
    }

    fn put(&self, id: &ChunkId, encoded: &[u8]) -> Result<StoredAt> {
        self.writes.store(true, Ordering::Release);
        let mut writer = self.writer.lock().expect("not poisoned");
        let open = writer.get_or_insert_with(|| self.new_pack());
        let len = open.entries.last().map_or(PACK_HEADER_LEN as u64, |e| e.offset + u64::from(e.len));
        // A pack is sealed at a few MiB, so its offsets always fit the 32 bits a location has.
        let Some(offset) = u32::try_from(len + RECORD_ID_LEN).ok().filter(|_| len < u64::from(u32::MAX) / 2) else {
            let open = writer.take().expect("open");
            self.abandon(&open.pack);
            return Err(Error::io(
                "write pack",
                &open.pack.path,
                std::io::Error::other("the pack has grown past 2 GiB"),
            ));
        };
        let at = StoredAt { pack: open.pack.name, offset, len: encoded.len() as u32 };
        // A copy into memory: cheap enough under the lock (the file is written whole by the seal).
        open.pack.append(&[&id.0, encoded]);
        open.entries.push(PackEntry { id: *id, offset: u64::from(at.offset), len: at.len });
        // Known before the pack can be sealed, so that its seal finds every chunk of it in the catalog.
        self.catalog.write().expect("not poisoned").insert(*id, at);
        let full = len + RECORD_ID_LEN + u64::from(at.len) >= self.pack_target || open.entries.len() >= PACK_MAX_CHUNKS;
        if !full {
            return Ok(at);
        }
        let full = writer.take().expect("open");
        let mut sealing = self.sealing.lock().expect("not poisoned");
        sealing.push_back(self.start_seal(full));
        drop(writer);
        // Seals that are done are finished now; the oldest is waited for when too many are running.
        while sealing.front().is_some_and(|s| s.is_finished() || sealing.len() > seal::MAX_RUNNING) {
            let done = sealing.pop_front().expect("checked");
            self.finish_seal(done)?;
        }
        drop(sealing);
        self.merge_if_due()?;
        Ok(at)
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.get_found(id)
    }

    fn get_at(&self, id: &ChunkId, at: &StoredAt) -> Result<Vec<u8>> {
        let pack = self.pack(at.pack);
        match self.read_record(id, *at, &pack) {
            Ok(data) => Ok(data),
            Err(ReadFailure::Bad(e)) => Err(e),
            // Not where the backup's index says any more (gc rewrote or removed the pack, or the location is
            // from a damaged index): wherever the store says it is now.
            Err(ReadFailure::Open(e)) if e.kind() == ErrorKind::NotFound => {
                self.forget_pack(at.pack);
                self.get_found(id)
            }
            Err(ReadFailure::Open(e)) => Err(Error::io("open pack", &pack.path, e)),
            Err(ReadFailure::Short | ReadFailure::Elsewhere) => self.get_found(id),
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
        for p in self.packs.lock().expect("not poisoned").values() {
            p.touched.store(false, Ordering::Release);
        }
    }

    fn sweep(
        &self,
        in_use: &HashSet<ChunkId>,
        cutoff: SystemTime,
        only: Option<&HashSet<PackName>>,
    ) -> Result<SweepStats> {
        let stats = self.sweep_packs(in_use, cutoff, only)?;
        // The map then covers what the sweep left, and nothing it removed.
        self.merge_map(true)?;
        Ok(stats)
    }

    fn repair(&self) -> Result<RepairStats> {
        self.repair_indexes()
    }

    fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        Ok(self.lookup(id)?.map(|(at, pack)| ChunkLocation {
            index: self.index_path(&pack.name.to_string()),
            pack: pack.path.clone(),
            offset: u64::from(at.offset),
            len: at.len,
        }))
    }
}

#[cfg(test)]
mod tests;
