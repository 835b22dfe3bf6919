//! The pack store in S3: the same packs and pack indexes as the folder's store (`pack_format.rs`), as
//! objects `packs/<name>.pack` and `packs/<name>.idx`.
//!
//! - A pack is built in memory and uploaded whole once full (in parts, several at a time: `S3Objects::put`);
//!   its index is written only after the pack's upload has completed, so an index never names a chunk that
//!   is not there. A pack without an index is unfinished work that gc removes.
//! - A cold chunk read is one ranged GET of its pack: the record's id and the encoded chunk, checked against
//!   each other before the chunk is used.
//! - Where chunks are: a backup's disk index records it (a mount reads without any lookup); for the rest
//!   (a backup deciding what to reuse, a location gone stale after gc), a chunk map on this machine's disk
//!   built from the pack indexes (the folder store's catalog and maps, `catalog.rs`, `merge.rs`), with the
//!   chunks of packs it does not cover yet in memory. The map is this machine's own cache, written by any
//!   process that finds too many chunks outside it: memory stays bounded however large the library is.
//! - Nothing marks a reused pack as used (objects have no times to set): a backup in progress remembers
//!   the packs it used, and a gc that would delete or rewrite some asks it first (`avoid`, `gc.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::catalog::{Catalog, PackIndexes, MERGE_AT};
use super::located::{PackName, StoredAt};
use super::merge::MapFolder;
use super::pack_format::{pack_header, PackEntry, PackIndex};
use super::{ChunkLocation, ChunkStore, RepairStats, StoredChunk, SweepStats};
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::formats::{PACK_HEADER_LEN, PACK_MAGIC};
use crate::s3::{ObjectInfo, S3Objects};

/// A pack is uploaded once it holds this many bytes (one ranged GET reads a chunk, so a pack's size costs
/// reads nothing; it sets the number of objects and of requests to write them).
const PACK_TARGET_BYTES: usize = 16 << 20;
/// ... or this many chunks (see the folder store's `PACK_MAX_CHUNKS`).
const PACK_MAX_CHUNKS: usize = 64 * 1024;
/// Packs uploading at once at most; each holds its bytes in memory until uploaded.
const MAX_UPLOADS: usize = 4;
/// Pack indexes read at once when the catalog is loaded.
const INDEX_READERS: usize = 8;
/// Length of the chunk id before each record.
const RECORD_ID_LEN: u64 = 32;
/// Records of one pack this close together are read with one ranged GET: the bytes between them cost less
/// than another request (far away a request costs tens of milliseconds; 256 KiB takes a few).
const SPAN_MAX_GAP: u64 = 256 << 10;
/// ... as long as that GET stays this short (the reader holds it whole until its records are cut out).
const SPAN_MAX_BYTES: u64 = 8 << 20;
/// A pack is rewritten by `sweep` when at least this share of its bytes is unused (1/4), as in a folder.
const REWRITE_DEAD_SHARE: (u64, u64) = (1, 4);

pub struct S3PackStore {
    objects: Arc<S3Objects>,
    /// This machine's chunk maps of the library, and their temporary files.
    maps: PathBuf,
    tmp: PathBuf,
    /// `MERGE_AT`, smaller in tests.
    merge_at: usize,
    catalog: RwLock<Catalog>,
    writer: Mutex<Option<OpenPack>>,
    /// Packs uploading, oldest first; their bytes answer reads of their chunks until their index is written.
    uploads: Mutex<VecDeque<Upload>>,
    /// An upload failed: chunks whose `put` succeeded are lost, so `sync` fails from now on.
    failed: AtomicBool,
    /// The packs this process has used, and those a gc has condemned (see `avoid`).
    uses: Mutex<PackUses>,
}

#[derive(Default)]
struct PackUses {
    /// Packs a chunk was reused from, or written to, by this process.
    used: HashSet<PackName>,
    /// Packs a gc condemned while this process backed up: nothing of them is reused in place, also once
    /// that gc is over (the catalog may still name those it removed).
    avoided: HashSet<PackName>,
}

/// A pack a sweep deletes, or rewrites with `live` only.
struct Doomed {
    name: String,
    live: Vec<PackEntry>,
}

struct OpenPack {
    name: PackName,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

struct Upload {
    name: PackName,
    bytes: bytes::Bytes,
    work: JoinHandle<Result<()>>,
}

fn pack_object(name: &str) -> String {
    format!("packs/{name}.pack")
}

fn index_object(name: &str) -> String {
    format!("packs/{name}.idx")
}

impl S3PackStore {
    /// The store of the library in `objects`; `local` is this machine's folder for it (its chunk maps).
    pub fn open(objects: Arc<S3Objects>, local: &Path) -> Self {
        S3PackStore {
            objects,
            maps: local.join("maps"),
            tmp: local.join("tmp"),
            merge_at: test_merge_at().unwrap_or(MERGE_AT),
            catalog: RwLock::new(Catalog::default()),
            writer: Mutex::new(None),
            uploads: Mutex::new(VecDeque::new()),
            failed: AtomicBool::new(false),
            uses: Mutex::new(PackUses::default()),
        }
    }

    fn url_of(&self, name: &str) -> PathBuf {
        PathBuf::from(self.objects.url().object_url(name))
    }

    /// Where a chunk is, learning where chunks are first when it never has.
    fn lookup(&self, id: &ChunkId) -> Result<Option<StoredAt>> {
        if !self.catalog.read().expect("not poisoned").is_scanned() {
            self.refresh()?;
        }
        self.catalog.read().expect("not poisoned").lookup(id)
    }

    /// Brings the catalog up to date with the bucket: the chunks of packs that the local map does not cover
    /// are loaded into memory up to `merge_at`; past that, a new map covering them is written first.
    fn refresh(&self) -> Result<()> {
        let packs = S3Packs(self);
        for _ in 0..3 {
            let (complete, loose) = {
                let mut cat = self.catalog.write().expect("not poisoned");
                let complete = cat.refresh(&self.maps, &packs, Some(self.merge_at))?;
                (complete, cat.loose_chunks())
            };
            if complete && loose < self.merge_at {
                return Ok(());
            }
            // Another process of this machine writing the map leaves what was loaded as the best there is.
            if !self.merge_map(!complete)? && complete {
                return Ok(());
            }
        }
        // Packs arrive faster than maps are written: hold the rest in memory for now.
        self.catalog.write().expect("not poisoned").refresh(&self.maps, &packs, None)?;
        Ok(())
    }

    /// Writes a new local chunk map covering every sealed pack (see `MapFolder::merge` for `wait`); the next
    /// refresh takes it. True when this process did.
    fn merge_map(&self, wait: bool) -> Result<bool> {
        let maps = MapFolder { dir: &self.maps, tmp: &self.tmp, run_chunks: self.merge_at };
        let merged = maps.merge(&S3Packs(self), wait)?;
        if merged {
            self.catalog.write().expect("not poisoned").invalidate();
        }
        Ok(merged)
    }

    /// After an upload: a new map when too many chunks are held outside the current one.
    fn merge_if_due(&self) -> Result<()> {
        if self.catalog.read().expect("not poisoned").loose_chunks() >= self.merge_at {
            self.merge_map(false)?;
            self.refresh()?;
        }
        Ok(())
    }

    /// The indexes of `packs`, read several at a time. A damaged index is passed over with a warning (verify
    /// names its chunks; repair rebuilds it); one removed since the listing, silently.
    fn read_indexes(&self, packs: &[PackName]) -> Result<Vec<(PackName, PackIndex)>> {
        let next = Mutex::new(packs.iter());
        let found = Mutex::new(Vec::with_capacity(packs.len()));
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..INDEX_READERS.min(packs.len()))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while let Some(&pack) = next.lock().expect("not poisoned").next() {
                            if let Some(index) = self.read_index(&pack.to_string())? {
                                found.lock().expect("not poisoned").push((pack, index));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            readers.into_iter().try_for_each(|r| r.join().expect("an index reader panicked"))
        })?;
        Ok(found.into_inner().expect("not poisoned"))
    }

    fn read_index(&self, name: &str) -> Result<Option<PackIndex>> {
        let object = index_object(name);
        let Some(data) = self.objects.get(&object)? else { return Ok(None) };
        match PackIndex::decode(&self.url_of(&object), &data) {
            Ok(index) => Ok(Some(index)),
            Err(e) => {
                tracing::warn!("ignoring pack {name}: {e}");
                Ok(None)
            }
        }
    }

    /// The record at `at` if its pack is still in this process's memory (being filled or uploaded).
    fn read_in_memory(&self, at: &StoredAt) -> Option<Vec<u8>> {
        let start = u64::from(at.offset).checked_sub(RECORD_ID_LEN)? as usize;
        let end = at.offset as usize + at.len as usize;
        if let Some(open) = self.writer.lock().expect("not poisoned").as_ref().filter(|o| o.name == at.pack) {
            return open.bytes.get(start..end).map(<[u8]>::to_vec);
        }
        let uploads = self.uploads.lock().expect("not poisoned");
        uploads.iter().find(|u| u.name == at.pack).and_then(|u| u.bytes.get(start..end).map(<[u8]>::to_vec))
    }

    /// Reads the record of a chunk with one ranged GET: the id before it must match.
    fn read_record(&self, id: &ChunkId, at: &StoredAt) -> Result<Option<Vec<u8>>> {
        let record = match self.read_in_memory(at) {
            Some(r) => Some(r),
            None => {
                let Some(start) = u64::from(at.offset).checked_sub(RECORD_ID_LEN) else { return Ok(None) };
                let object = pack_object(&at.pack.to_string());
                self.objects.get_range(&object, start, RECORD_ID_LEN + u64::from(at.len))?
            }
        };
        Ok(record.and_then(|r| chunk_of_record(&r, id, at)))
    }

    /// Reads a chunk wherever the catalog says, reading the indexes again once when it is not there.
    fn get_found(&self, id: &ChunkId) -> Result<Vec<u8>> {
        for refreshed in [false, true] {
            if refreshed {
                self.refresh()?;
            }
            if let Some(at) = self.lookup(id)? {
                if let Some(data) = self.read_record(id, &at)? {
                    return Ok(data);
                }
                if refreshed {
                    let pack = self.url_of(&pack_object(&at.pack.to_string()));
                    return Err(Error::ChunkCorrupt {
                        id: *id,
                        reason: format!("{} does not hold it where its index says", pack.display()),
                    });
                }
            }
        }
        Err(Error::ChunkMissing { id: *id })
    }

    /// Starts uploading a full pack: the pack, then its index.
    fn start_upload(&self, open: OpenPack) -> Upload {
        let OpenPack { name, bytes, entries } = open;
        // Shared, not copied, with the upload: reads of its chunks are answered from it meanwhile.
        let bytes = bytes::Bytes::from(bytes);
        let (objects, data) = (self.objects.clone(), bytes.clone());
        let work = std::thread::Builder::new()
            .name("upload-pack".into())
            .spawn(move || {
                let name = name.to_string();
                let pack_len = data.len() as u64;
                objects.put(&pack_object(&name), data)?;
                let index = PackIndex { pack_len, entries };
                objects.put(&index_object(&name), index.encode())
            })
            .expect("a thread for an upload starts");
        Upload { name, bytes, work }
    }

    /// Waits for an upload; a failed one loses its chunks (and fails `sync` from now on).
    fn finish_upload(&self, upload: Upload) -> Result<()> {
        let result = upload.work.join().unwrap_or_else(|_| {
            Err(Error::Remote {
                op: "upload".into(),
                object: self.objects.url().object_url(&pack_object(&upload.name.to_string())),
                reason: "the upload thread panicked".into(),
            })
        });
        let mut cat = self.catalog.write().expect("not poisoned");
        if result.is_ok() {
            cat.sealed(upload.name);
        } else {
            self.failed.store(true, Ordering::Release);
            cat.remove_pack(upload.name);
        }
        result
    }

    /// Uploads the open pack and waits for every upload.
    fn upload_all(&self) -> Result<()> {
        // The writer's lock before the uploads', as in `put`.
        let mut writer = self.writer.lock().expect("not poisoned");
        let mut uploads = self.uploads.lock().expect("not poisoned");
        if let Some(open) = writer.take() {
            uploads.push_back(self.start_upload(open));
        }
        drop(writer);
        let mut first_error = None;
        while let Some(u) = uploads.pop_front() {
            if let Err(e) = self.finish_upload(u) {
                first_error.get_or_insert(e);
            }
        }
        drop(uploads);
        if let Some(e) = first_error {
            return Err(e);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Remote {
                op: "store chunks in".into(),
                object: self.objects.url().to_string(),
                reason: "an earlier upload of chunks failed; they were not kept".into(),
            });
        }
        Ok(())
    }

    /// What a sweep would do: the packs to delete (no chunk of theirs in use) or rewrite (mostly unused:
    /// their chunks in use are copied first), with its figures. With `only`, no other pack.
    fn plan_sweep(
        &self,
        in_use: &HashSet<ChunkId>,
        cutoff: SystemTime,
        only: Option<&HashSet<PackName>>,
    ) -> Result<(Vec<Doomed>, SweepStats)> {
        let mut stats = SweepStats::default();
        let mut claimed: HashSet<ChunkId> = HashSet::new();
        let mut doomed = Vec::new();
        for (name, index, written) in self.sealed_packs()? {
            // A chunk in use is kept in the first pack that holds it; other copies are spare. (Every pack
            // claims its chunks, also one left alone: a copy there is kept.)
            let (live, dead): (Vec<PackEntry>, Vec<PackEntry>) =
                index.entries.iter().partition(|e| in_use.contains(&e.id) && claimed.insert(e.id));
            if dead.is_empty() || only.is_some_and(|only| PackName::parse(&name).is_none_or(|p| !only.contains(&p))) {
                continue;
            }
            if written >= cutoff {
                stats.chunks_kept_recent += dead.len() as u64;
                continue;
            }
            let dead_bytes: u64 = dead.iter().map(|e| u64::from(e.len) + RECORD_ID_LEN).sum();
            let (num, den) = REWRITE_DEAD_SHARE;
            if !live.is_empty() && dead_bytes * den < index.pack_len * num {
                continue; // mostly in use: not worth rewriting yet
            }
            if live.is_empty() {
                stats.packs_removed += 1;
            } else {
                stats.packs_rewritten += 1;
            }
            stats.chunks_removed += dead.len() as u64;
            stats.bytes_removed += dead_bytes;
            doomed.push(Doomed { name, live });
        }
        Ok((doomed, stats))
    }

    /// Every pack with a readable index, with its index and the time its pack was written.
    fn sealed_packs(&self) -> Result<Vec<(String, PackIndex, SystemTime)>> {
        let listed = self.objects.list("packs/")?;
        let written: HashMap<&str, &ObjectInfo> =
            listed.iter().filter_map(|o| Some((o.name.strip_prefix("packs/")?.strip_suffix(".pack")?, o))).collect();
        let names: Vec<PackName> = sealed_names(&listed).into_iter().collect();
        let mut out = Vec::new();
        for (pack, index) in self.read_indexes(&names)? {
            let name = pack.to_string();
            if let Some(o) = written.get(name.as_str()) {
                out.push((name, index, o.modified));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The encoded chunk of a record read from where `at` says, if the record is whole and is `id`'s.
fn chunk_of_record(record: &[u8], id: &ChunkId, at: &StoredAt) -> Option<Vec<u8>> {
    let (record_id, chunk) = record.split_at_checked(RECORD_ID_LEN as usize)?;
    (record_id == id.0 && chunk.len() == at.len as usize).then(|| chunk.to_vec())
}

/// The chunks of `wanted` (by position) grouped into spans of one pack whose records lie close enough to be
/// read with one request (`SPAN_MAX_GAP`, `SPAN_MAX_BYTES`), each span in pack order. A chunk whose location
/// cannot hold a record (an offset inside the pack's header) is a span of its own.
fn spans(wanted: &[(ChunkId, StoredAt)]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by_key(|&i| (wanted[i].1.pack, wanted[i].1.offset));
    let mut spans: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let at = &wanted[i].1;
        let joins = |span: &Vec<usize>| {
            let (start, end) = span_bounds(wanted, span);
            let first = &wanted[span[0]].1;
            let Some(record_start) = u64::from(at.offset).checked_sub(RECORD_ID_LEN) else { return false };
            first.pack == at.pack
                && u64::from(first.offset) >= RECORD_ID_LEN
                && record_start >= start
                && record_start <= end + SPAN_MAX_GAP
                && u64::from(at.offset) + u64::from(at.len) - start <= SPAN_MAX_BYTES
        };
        match spans.last_mut() {
            Some(span) if joins(span) => span.push(i),
            _ => spans.push(vec![i]),
        }
    }
    spans
}

/// The bytes of its pack a span covers: from the first record's id to the end of the last chunk.
fn span_bounds(wanted: &[(ChunkId, StoredAt)], span: &[usize]) -> (u64, u64) {
    let start = span.iter().map(|&i| u64::from(wanted[i].1.offset).saturating_sub(RECORD_ID_LEN)).min();
    let end = span.iter().map(|&i| u64::from(wanted[i].1.offset) + u64::from(wanted[i].1.len)).max();
    (start.unwrap_or(0), end.unwrap_or(0))
}

/// The packs in a listing of `packs/` that have both their pack and their index: the only ones whose chunks
/// may be used. An index alone names chunks that are nowhere: a writer frozen past its lease can write it
/// after a gc removed its pack as unfinished (the writer then publishes nothing, but its index stays until
/// the next gc, and a backup deduplicating against it would lose those chunks).
fn sealed_names(listed: &[ObjectInfo]) -> HashSet<PackName> {
    let named = |suffix: &str| -> HashSet<PackName> {
        listed.iter().filter_map(|o| PackName::parse(o.name.strip_prefix("packs/")?.strip_suffix(suffix)?)).collect()
    };
    named(".idx").intersection(&named(".pack")).copied().collect()
}

/// `MERGE_AT` as a test sets it (`LIVEMOUNT_TEST_MERGE_AT`), to see maps written without millions of chunks.
fn test_merge_at() -> Option<usize> {
    std::env::var("LIVEMOUNT_TEST_MERGE_AT").ok()?.parse().ok().filter(|&n| n > 0)
}

/// The packs of the bucket, for the catalog and the map's merge.
struct S3Packs<'a>(&'a S3PackStore);

impl PackIndexes for S3Packs<'_> {
    fn sealed(&self) -> Result<HashSet<PackName>> {
        Ok(sealed_names(&self.0.objects.list("packs/")?))
    }

    fn read(&self, packs: &[PackName]) -> Result<Vec<(PackName, PackIndex)>> {
        self.0.read_indexes(packs)
    }
}

impl Drop for S3PackStore {
    fn drop(&mut self) {
        // Uploads under way finish (their packs are whole); an open pack never uploaded is simply dropped.
        for u in self.uploads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = u.work.join();
        }
    }
}

impl ChunkStore for S3PackStore {
    fn touch(&self, id: &ChunkId) -> Result<Option<StoredAt>> {
        let Some(at) = self.lookup(id)? else { return Ok(None) };
        {
            // Checked and recorded at once: `avoid` reports every use made before it.
            let mut uses = self.uses.lock().expect("not poisoned");
            if !uses.avoided.contains(&at.pack) {
                uses.used.insert(at.pack);
                return Ok(Some(at));
            }
        }
        // In a pack a gc is about to delete or rewrite: a copy in a pack of this process's own instead.
        match self.get_at(id, &at) {
            Ok(encoded) => self.put(id, &encoded).map(Some),
            Err(Error::ChunkMissing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, id: &ChunkId, encoded: &[u8]) -> Result<StoredAt> {
        let mut writer = self.writer.lock().expect("not poisoned");
        let open = writer.get_or_insert_with(|| {
            let mut bytes = Vec::with_capacity(PACK_TARGET_BYTES + (1 << 20));
            bytes.extend_from_slice(&pack_header());
            let name = PackName::random();
            self.uses.lock().expect("not poisoned").used.insert(name);
            OpenPack { name, bytes, entries: Vec::new() }
        });
        let offset = open.bytes.len() as u64 + RECORD_ID_LEN;
        let at = StoredAt { pack: open.name, offset: offset as u32, len: encoded.len() as u32 };
        open.bytes.extend_from_slice(&id.0);
        open.bytes.extend_from_slice(encoded);
        open.entries.push(PackEntry { id: *id, offset, len: at.len });
        // Known at once (a later chunk of this backup reuses it); its pack counts as loaded once uploaded.
        self.catalog.write().expect("not poisoned").insert(*id, at);
        if open.bytes.len() < PACK_TARGET_BYTES && open.entries.len() < PACK_MAX_CHUNKS {
            return Ok(at);
        }
        let full = writer.take().expect("open");
        let mut uploads = self.uploads.lock().expect("not poisoned");
        uploads.push_back(self.start_upload(full));
        drop(writer);
        while uploads.front().is_some_and(|u| u.work.is_finished() || uploads.len() > MAX_UPLOADS) {
            let done = uploads.pop_front().expect("checked");
            self.finish_upload(done)?;
        }
        drop(uploads);
        self.merge_if_due()?;
        Ok(at)
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.get_found(id)
    }

    fn get_at(&self, id: &ChunkId, at: &StoredAt) -> Result<Vec<u8>> {
        match self.read_record(id, at)? {
            Some(data) => Ok(data),
            // Not where the backup's index says any more (gc rewrote or removed the pack): wherever it is now.
            None => self.get_found(id),
        }
    }

    fn get_many_at(&self, wanted: &[(ChunkId, StoredAt)]) -> Vec<Result<Vec<u8>>> {
        let mut out: Vec<Option<Result<Vec<u8>>>> = wanted.iter().map(|_| None).collect();
        for span in spans(wanted) {
            let (start, end) = span_bounds(wanted, &span);
            let first = &wanted[span[0]].1;
            // A lone record, or a pack still in this process's memory: `get_at` reads it as it is.
            if span.len() == 1 || self.read_in_memory(first).is_some() {
                for i in span {
                    out[i] = Some(self.get_at(&wanted[i].0, &wanted[i].1));
                }
                continue;
            }
            let object = pack_object(&first.pack.to_string());
            match self.objects.get_range(&object, start, end - start) {
                Ok(Some(data)) => {
                    for i in span {
                        let (id, at) = &wanted[i];
                        let record = (u64::from(at.offset) - RECORD_ID_LEN - start) as usize
                            ..(u64::from(at.offset) + u64::from(at.len) - start) as usize;
                        out[i] = Some(match data.get(record).and_then(|r| chunk_of_record(r, id, at)) {
                            Some(chunk) => Ok(chunk),
                            // Not there any more (or the pack is short): as one read would find it.
                            None => self.get_at(id, at),
                        });
                    }
                }
                // The pack has gone (gc moved its chunks): each wherever it is now.
                Ok(None) => {
                    for i in span {
                        out[i] = Some(self.get_at(&wanted[i].0, &wanted[i].1));
                    }
                }
                // The request failed (after the client's retries): every chunk of the span gets the error,
                // rather than as many more requests to a store that is not answering.
                Err(e) => {
                    let reason = e.to_string();
                    let mut first_error = Some(e);
                    for i in span {
                        out[i] = Some(Err(first_error.take().unwrap_or_else(|| Error::Remote {
                            op: "read".into(),
                            object: self.objects.url().object_url(&object),
                            reason: reason.clone(),
                        })));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.expect("every chunk asked for is in one span")).collect()
    }

    fn list(&self) -> Result<Vec<StoredChunk>> {
        Ok(self
            .sealed_packs()?
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

    fn start_marking(&self) {
        // Look at the bucket again when first needed: a gc may have removed packs since.
        self.catalog.write().expect("not poisoned").invalidate();
    }

    fn sync(&self) -> Result<()> {
        self.upload_all()?;
        // The packs just uploaded are mapped now rather than by the next process to look.
        self.merge_if_due()
    }

    fn sweep(
        &self,
        in_use: &HashSet<ChunkId>,
        cutoff: SystemTime,
        only: Option<&HashSet<PackName>>,
    ) -> Result<SweepStats> {
        let (doomed, mut stats) = self.plan_sweep(in_use, cutoff, only)?;
        let mut gone = Vec::new();
        for Doomed { name, live } in doomed {
            if !live.is_empty() {
                let object = pack_object(&name);
                let Some(data) = self.objects.get(&object)? else { continue };
                for e in &live {
                    let Some(encoded) = data.get(e.offset as usize..(e.offset + u64::from(e.len)) as usize) else {
                        continue;
                    };
                    self.put(&e.id, encoded)?;
                }
            }
            gone.push(name);
        }
        // The copies are uploaded and indexed before the packs they came from go.
        self.upload_all()?;
        for name in &gone {
            // The index first: a pack without an index is unfinished work, never half a pack.
            self.objects.delete(&index_object(name))?;
            self.objects.delete(&pack_object(name))?;
        }
        // Packs never indexed, left by writers that died, and indexes left without their pack (see
        // `sealed_names`); none while backups run (a pack of theirs may be between its upload and its index's).
        let listed = if only.is_some() { Vec::new() } else { self.objects.list("packs/")? };
        let named = |suffix: &str| -> HashSet<&str> {
            listed.iter().filter_map(|o| o.name.strip_prefix("packs/")?.strip_suffix(suffix)).collect()
        };
        let (indexed, packed) = (named(".idx"), named(".pack"));
        for o in listed.iter().filter(|o| o.modified < cutoff) {
            let Some(name) = o.name.strip_prefix("packs/") else { continue };
            if name.strip_suffix(".pack").is_some_and(|n| !indexed.contains(n)) {
                self.objects.delete(&o.name)?;
                stats.unfinished_packs_removed += 1;
            } else if name.strip_suffix(".idx").is_some_and(|n| !packed.contains(n)) {
                self.objects.delete(&o.name)?;
                stats.orphan_indexes_removed += 1;
            }
        }
        self.catalog.write().expect("not poisoned").invalidate();
        Ok(stats)
    }

    fn condemned(&self, in_use: &HashSet<ChunkId>, cutoff: SystemTime) -> Result<HashSet<PackName>> {
        let (doomed, _) = self.plan_sweep(in_use, cutoff, None)?;
        Ok(doomed.iter().filter_map(|d| PackName::parse(&d.name)).collect())
    }

    fn avoid(&self, packs: HashSet<PackName>) -> HashSet<PackName> {
        let mut uses = self.uses.lock().expect("not poisoned");
        let used = uses.used.intersection(&packs).copied().collect();
        uses.avoided.extend(packs);
        used
    }

    fn repair(&self) -> Result<RepairStats> {
        let mut stats = RepairStats::default();
        let listed = self.objects.list("packs/")?;
        let packs: HashSet<&str> =
            listed.iter().filter_map(|o| o.name.strip_prefix("packs/")?.strip_suffix(".pack")).collect();
        // An index whose pack has gone names chunks that cannot be read.
        for o in &listed {
            let Some(name) = o.name.strip_prefix("packs/").and_then(|n| n.strip_suffix(".idx")) else { continue };
            if packs.contains(name) {
                continue;
            }
            let chunks = self.read_index(name)?.map_or(0, |i| i.entries.len() as u64);
            tracing::warn!("pack {name} has gone: removing its index, which names {chunks} chunks");
            self.objects.delete(&o.name)?;
            stats.indexes_dropped += 1;
            stats.chunks_dropped += chunks;
        }
        let mut names: Vec<&str> = packs.into_iter().collect();
        names.sort_unstable();
        for name in names {
            stats.packs_checked += 1;
            if self.read_index(name)?.is_some() {
                continue;
            }
            let object = pack_object(name);
            let Some(data) = self.objects.get(&object)? else { continue };
            if data.len() < PACK_HEADER_LEN || data[..8] != PACK_MAGIC {
                tracing::warn!("{} is not a pack; left alone", self.url_of(&object).display());
                continue;
            }
            let index = PackIndex::from_records(&data, &mut stats);
            if index.entries.is_empty() {
                continue; // nothing to recover: an unfinished pack that gc removes
            }
            self.objects.put(&index_object(name), index.encode())?;
            stats.indexes_rebuilt += 1;
            stats.chunks_recovered += index.entries.len() as u64;
        }
        *self.catalog.write().expect("not poisoned") = Catalog::default();
        Ok(stats)
    }

    fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        Ok(self.lookup(id)?.map(|at| {
            let name = at.pack.to_string();
            ChunkLocation {
                pack: self.url_of(&pack_object(&name)),
                index: self.url_of(&index_object(&name)),
                offset: u64::from(at.offset),
                len: at.len,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pack: u8, offset: u32, len: u32) -> (ChunkId, StoredAt) {
        (ChunkId::of(&offset.to_le_bytes()), StoredAt { pack: PackName([pack; 8]), offset, len })
    }

    #[test]
    fn neighbours_in_one_pack_make_one_span_and_distance_or_another_pack_start_a_new_one() {
        let wanted = [
            at(1, 100_032, 1000), // after the next one in the pack
            at(1, 64, 30_000),
            at(2, 64, 500),               // another pack
            at(1, 101_032 + 300_000, 10), // more than SPAN_MAX_GAP after the first span
            at(1, 8, 4),                  // cannot hold a record (inside the header)
            at(3, 64, 5 << 20),           // together they would pass SPAN_MAX_BYTES
            at(3, 64 + (5 << 20) + 32, 5 << 20),
        ];
        assert_eq!(spans(&wanted), vec![vec![4], vec![1, 0], vec![3], vec![2], vec![5], vec![6]]);
        assert_eq!(span_bounds(&wanted, &[1, 0]), (32, 101_032));
    }
}
