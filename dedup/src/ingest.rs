//! Backing disks up into the library.
//!
//! One disk is ingested as a pipeline that keeps every core busy: a reader thread reads the chunks that hold
//! data (holes and unallocated ranges are never read, all-zero chunks never stored), worker threads hash each
//! chunk, reuse it when the library has it already and otherwise compress and store it, and the calling
//! thread puts the ids in disk order. When every chunk is durable the backup's folder appears in one rename.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::chunk::{self, ChunkId};
use crate::durable::{self, AtomicFile};
use crate::error::{Error, Result};
use crate::gc::RunningBackup;
use crate::index::{DiskIndex, DiskIndexWriter, IndexEntry};
use crate::library::{now_rfc3339, Library};
use crate::lock::{self, LockKind};
use crate::manifest::{DiskManifest, IngestStats, Manifest, PartitionSummary};
use crate::source::DiskSource;
use crate::store::StoredAt;

/// One disk to back up.
pub struct DiskInput {
    /// How the user named the source (recorded in the manifest).
    pub label: String,
    pub source: Box<dyn DiskSource>,
    pub partition_table: Option<PartitionSummary>,
    /// The same disk in an earlier backup: where the source says a chunk is unchanged since then
    /// (`DiskSource::unchanged`), its id is taken from this index and nothing is read. Used only when its
    /// chunk and disk sizes are this backup's.
    pub parent: Option<DiskIndex>,
}

/// Progress of a backup: bytes of disk covered so far out of the total.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Backs up `disks` as one backup and returns its manifest.
pub fn create_backup(
    lib: &Library,
    name: Option<String>,
    disks: Vec<DiskInput>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest> {
    create_backup_from(lib, name, None, disks, progress)
}

/// Backs up `disks` as one backup whose manifest records `origin` (see `Manifest::origin`).
pub fn create_backup_from(
    lib: &Library,
    name: Option<String>,
    origin: Option<serde_json::Value>,
    disks: Vec<DiskInput>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest> {
    let started = Instant::now();
    let id = new_backup_id();
    let _running = RunningBackup::register(lib, &id)?;
    lib.store().start_marking();
    // The disk indexes are written as the disks are read, into the folder that becomes the backup's.
    let backups = lib.path("backups");
    let tmp = backups.join(format!(".tmp-{id}"));
    std::fs::create_dir(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let result = (|| {
        let total: u64 = disks.iter().map(|d| d.source.size()).sum();
        let mut done_before = 0u64;
        let mut stats = IngestStats::default();
        let mut disk_manifests = Vec::new();
        for (n, mut disk) in disks.into_iter().enumerate() {
            let size = disk.source.size();
            let report = |done: u64| progress(Progress { done: done_before + done, total });
            let index_file = format!("disk{n}.index");
            let parent = disk.parent.as_ref().filter(|p| p.chunk_size == lib.chunk_size() && p.disk_size == size);
            let (checksum, disk_stats) = ingest_disk(lib, &mut *disk.source, parent, &tmp.join(&index_file), &report)?;
            done_before += size;
            stats.add(&disk_stats);
            disk_manifests.push(DiskManifest {
                source: disk.label,
                format: disk.source.format().to_string(),
                size,
                chunk_size: lib.chunk_size(),
                chunk_count: DiskIndex::chunk_count(size, lib.chunk_size()),
                zero_chunks: disk_stats.chunks_zero,
                index_file,
                index_blake3: checksum,
                partition_table: disk.partition_table,
            });
        }
        stats.seconds = started.elapsed().as_secs_f64();
        let manifest = Manifest {
            format_version: crate::formats::LIBRARY_FORMAT_VERSION,
            id: id.clone(),
            name,
            created: now_rfc3339(),
            disks: disk_manifests,
            stats,
            origin,
        };
        commit_backup(lib, &manifest, &tmp)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Makes the backup visible: chunk names durable first, then the manifest beside the (already durable) disk
/// indexes in the temporary folder, then one rename of that folder.
fn commit_backup(lib: &Library, manifest: &Manifest, tmp: &Path) -> Result<()> {
    lib.store().sync()?;
    let backups = lib.path("backups");
    {
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        write_new_durable(&tmp.join("manifest.json"), &json)?;
        durable::sync_dir(tmp).map_err(|e| Error::io("sync folder", tmp, e))?;
        let dest = backups.join(&manifest.id);
        std::fs::rename(tmp, &dest).map_err(|e| Error::io("publish backup", &dest, e))?;
        durable::sync_dir(&backups).map_err(|e| Error::io("sync folder", &backups, e))
    }
}

fn write_new_durable(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = AtomicFile::create(path, None).map_err(|e| Error::io("create", path, e))?;
    f.write_all(data).map_err(|e| Error::io("write", path, e))?;
    f.commit_without_dir_sync().map_err(|e| Error::io("write", path, e))
}

/// Writes a backup that holds no disk of the library: a catalog entry for data kept elsewhere (a snapshot
/// backup's EBS snapshots, which `origin` names), under `id` (from `new_backup_id`, chosen before the data
/// was made so that what holds it can carry the id). Atomic like every backup.
pub fn create_catalog_entry(
    lib: &Library,
    id: &str,
    name: Option<String>,
    origin: serde_json::Value,
) -> Result<Manifest> {
    let tmp = lib.path("backups").join(format!(".tmp-{id}"));
    std::fs::create_dir(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let manifest = Manifest {
        format_version: crate::formats::LIBRARY_FORMAT_VERSION,
        id: id.to_string(),
        name,
        created: now_rfc3339(),
        disks: Vec::new(),
        stats: IngestStats::default(),
        origin: Some(origin),
    };
    let result = commit_backup(lib, &manifest, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| manifest)
}

/// A new backup id: the UTC time (sortable and readable) and a random part (unique).
pub fn new_backup_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    format!("{}-{}", now.format(fmt).expect("time formats"), &durable::random_suffix()[..6])
}

/// How far ahead of the reader the source is asked to fetch.
const READ_AHEAD: u64 = 32 << 20;

enum Outcome {
    Zero,
    Reused,
    New { plain: u64, stored: u64 },
}

struct Done {
    index: usize,
    id: ChunkId,
    /// Where the chunk is stored (none for a zero chunk).
    at: Option<StoredAt>,
    outcome: Outcome,
    /// The chunk's buffer, handed back for reuse.
    buf: Option<Vec<u8>>,
}

/// What the reader hands a worker: a chunk's bytes, or the parent's entry of a chunk the source says is
/// unchanged (the worker makes sure the library still holds it).
enum Job {
    Data(usize, Vec<u8>),
    Unchanged(usize, IndexEntry),
}

/// Ingests one disk, writing its index to `index_path` (synced); returns the index's checksum and what the
/// disk cost. `parent`: the same disk's index in an earlier backup, of the same chunk and disk size.
pub fn ingest_disk(
    lib: &Library,
    source: &mut dyn DiskSource,
    parent: Option<&DiskIndex>,
    index_path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(String, IngestStats)> {
    let chunk_size = lib.chunk_size();
    let size = source.size();
    let count = DiskIndex::chunk_count(size, chunk_size) as usize;
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        first_error.lock().expect("not poisoned").get_or_insert(e);
    };
    let (job_tx, job_rx) = bounded::<Job>(workers * 2);
    let (done_tx, done_rx) = bounded::<Done>(workers * 4);
    let (free_tx, free_rx) = bounded::<Vec<u8>>(workers * 4);

    // Written as chunks are done: memory does not grow with the disk.
    let mut index = DiskIndexWriter::create(index_path, chunk_size, size)?;
    let mut stats = IngestStats { disk_bytes: size, ..Default::default() };
    let mut done_bytes = 0u64;

    std::thread::scope(|s| {
        let reader_done_tx = done_tx.clone();
        let (fail_r, failed_r) = (&fail, &failed);
        let bytes_read = s.spawn(move || {
            let chunks = Chunks { chunk_size, count, parent };
            read_chunks(&mut *source, &chunks, &job_tx, &reader_done_tx, &free_rx, failed_r).unwrap_or_else(|e| {
                fail_r(e);
                0
            })
        });
        for _ in 0..workers {
            let (job_rx, done_tx, fail_w, failed_w) = (job_rx.clone(), done_tx.clone(), &fail, &failed);
            s.spawn(move || {
                if let Err(e) = store_chunks(lib, &job_rx, &done_tx, failed_w) {
                    fail_w(e);
                }
            });
        }
        drop((job_rx, done_tx));
        for d in done_rx.iter() {
            if !d.id.is_zero() {
                if let Err(e) = index.put(d.index as u64, &d.id, d.at.as_ref()) {
                    fail(e);
                }
            }
            match d.outcome {
                Outcome::Zero => stats.chunks_zero += 1,
                Outcome::Reused => stats.chunks_reused += 1,
                Outcome::New { plain, stored } => {
                    stats.chunks_new += 1;
                    stats.new_bytes_plain += plain;
                    stats.new_bytes_stored += stored;
                }
            }
            if let Some(buf) = d.buf {
                let _ = free_tx.try_send(buf);
            }
            let start = d.index as u64 * u64::from(chunk_size);
            done_bytes += (start + u64::from(chunk_size)).min(size) - start;
            progress(done_bytes);
        }
        stats.bytes_read = bytes_read.join().expect("reader thread does not panic");
    });
    if let Some(e) = first_error.into_inner().expect("not poisoned") {
        return Err(e);
    }
    Ok((index.finish()?, stats))
}

/// The chunks of the disk being read, and the same disk's index in an earlier backup.
struct Chunks<'a> {
    chunk_size: u32,
    count: usize,
    parent: Option<&'a DiskIndex>,
}

/// The reader: sends each chunk holding data to the workers, reports chunks without data as zero at once;
/// a chunk the source says is unchanged since the parent goes to the workers as the parent's entry,
/// unread. Returns the number of bytes read.
fn read_chunks(
    source: &mut dyn DiskSource,
    chunks: &Chunks,
    jobs: &Sender<Job>,
    done: &Sender<Done>,
    free: &Receiver<Vec<u8>>,
    failed: &AtomicBool,
) -> Result<u64> {
    let (chunk_size, count) = (chunks.chunk_size, chunks.count);
    let size = source.size();
    let mut bytes_read = 0u64;
    // The data range not yet wholly read; the source is asked for the next one as the reader passes it.
    let mut next = source.next_data(0)?;
    // Keep the source fetching ahead of the reader (a cold disk otherwise waits on every read).
    let mut hinted_to = 0u64;
    for i in 0..count {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let start = i as u64 * u64::from(chunk_size);
        let end = (start + u64::from(chunk_size)).min(size);
        if let Some(parent) = chunks.parent.filter(|_| source.unchanged(start..end)) {
            let sent = match parent.entry(i as u64)? {
                e if e.id.is_zero() => {
                    done.send(Done { index: i, id: ChunkId::ZERO, at: None, outcome: Outcome::Zero, buf: None }).is_ok()
                }
                e => jobs.send(Job::Unchanged(i, e)).is_ok(),
            };
            if !sent {
                break;
            }
            continue;
        }
        if next.as_ref().is_some_and(|r| r.end <= start) {
            next = source.next_data(start)?;
        }
        if end > hinted_to.saturating_sub(READ_AHEAD / 2) {
            let from = hinted_to.max(start);
            source.will_need(from, READ_AHEAD);
            hinted_to = from + READ_AHEAD;
        }
        let mut buf: Option<Vec<u8>> = None;
        while let Some(r) = next.clone().filter(|r| r.start < end) {
            let b = buf.get_or_insert_with(|| {
                let mut b = free.try_recv().unwrap_or_default();
                let len = (end - start) as usize;
                // A chunk wholly inside one data range is overwritten whole: its buffer need not be zeroed.
                let whole = r.start <= start && r.end >= end;
                if !whole || b.len() != len {
                    b.clear();
                    b.resize(len, 0);
                }
                b
            });
            let (from, to) = (r.start.max(start), r.end.min(end));
            source.read_exact_at(from, &mut b[(from - start) as usize..(to - start) as usize])?;
            bytes_read += to - from;
            if r.end > end {
                break; // the range goes on into the next chunk
            }
            next = source.next_data(r.end)?;
        }
        let sent = match buf {
            Some(b) => jobs.send(Job::Data(i, b)).is_ok(),
            None => {
                done.send(Done { index: i, id: ChunkId::ZERO, at: None, outcome: Outcome::Zero, buf: None }).is_ok()
            }
        };
        if !sent {
            break;
        }
    }
    Ok(bytes_read)
}

/// A worker: hash, reuse or compress and store; for a chunk unchanged since the parent, only make sure the
/// library holds it (and mark it used, as a reuse does).
fn store_chunks(lib: &Library, jobs: &Receiver<Job>, done: &Sender<Done>, failed: &AtomicBool) -> Result<()> {
    let mut compressor =
        zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL).map_err(|e| Error::io("start zstd", lib.root(), e))?;
    let mut lock_file: File = lib.chunks_lock()?;
    let mut encoded = Vec::new();
    for job in jobs.iter() {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let (index, data) = match job {
            Job::Data(index, data) => (index, data),
            Job::Unchanged(index, entry) => {
                let held = lock::lock(lock_file, LockKind::Shared)
                    .map_err(|e| Error::io("lock", lib.path("chunks.lock"), e))?;
                let touched = lib.store().touch(&entry.id);
                lock_file = held.release().map_err(|e| Error::io("unlock", lib.path("chunks.lock"), e))?;
                // The parent's chunk must still be in the library; when it is not, the backup fails
                // rather than name a chunk it does not hold.
                let at = touched?.ok_or(Error::ChunkMissing { id: entry.id })?;
                let done_chunk = Done { index, id: entry.id, at: Some(at), outcome: Outcome::Reused, buf: None };
                if done.send(done_chunk).is_err() {
                    break;
                }
                continue;
            }
        };
        let (id, at, outcome) = if chunk::is_all_zero(&data) {
            (ChunkId::ZERO, None, Outcome::Zero)
        } else {
            let id = ChunkId::of(&data);
            // Reuse-or-add happens under the shared chunk lock so that gc cannot delete the chunk in between.
            let held =
                lock::lock(lock_file, LockKind::Shared).map_err(|e| Error::io("lock", lib.path("chunks.lock"), e))?;
            let result = (|| {
                if let Some(at) = lib.store().touch(&id)? {
                    return Ok((at, Outcome::Reused));
                }
                chunk::encode_into(&data, &mut compressor, &mut encoded);
                let at = lib.store().put(&id, &encoded)?;
                Ok((at, Outcome::New { plain: data.len() as u64, stored: encoded.len() as u64 }))
            })();
            lock_file = held.release().map_err(|e| Error::io("unlock", lib.path("chunks.lock"), e))?;
            let (at, outcome) = result?;
            (id, Some(at), outcome)
        };
        if done.send(Done { index, id, at, outcome, buf: Some(data) }).is_err() {
            break;
        }
    }
    Ok(())
}
