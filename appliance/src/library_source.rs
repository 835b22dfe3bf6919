//! Adapts a disk of a library backup to what `blockdev` reads: the `Source` a pseudo-disk recalls from, and
//! a read-only file of the FUSE view straight from the library.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use blockdev::fuse::{BoxFuture, ViewFile};
use blockdev::{Source, SourceError};
use dedup::BackupDisk;

/// A backup disk as a pseudo-disk's source.
pub struct LibrarySource(pub Arc<BackupDisk>);

impl Source for LibrarySource {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn chunk_size(&self) -> u32 {
        self.0.chunk_size()
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        self.0.read_chunk(index, buf).map_err(|e| source_error(index, e))
    }
    fn read_chunks(&self, chunks: std::ops::Range<u64>, done: &mut dyn FnMut(u64, Result<Vec<u8>, SourceError>)) {
        // In a folder a chunk is a positioned read: each is answered as soon as it is read.
        if !self.0.library().is_remote() {
            return blockdev::source::read_one_by_one(self, chunks, done);
        }
        let first = chunks.start;
        for (chunk, read) in (first..).zip(self.0.read_chunks(chunks)) {
            done(chunk, read.map_err(|e| source_error(chunk, e)));
        }
    }
    fn is_zero_chunk(&self, index: u64) -> bool {
        // An index that cannot be read says "not zero": the read then reports why.
        self.0.chunk_id(index).is_ok_and(|id| id.is_zero())
    }
    fn parallel_reads(&self) -> usize {
        if self.0.library().is_remote() {
            return self.0.library().reads_in_flight();
        }
        // A chunk read is one positioned read and a decode: CPU-bound once the file is cached, so a few per
        // core keep the disk and the cores busy (3 per core left the 2-core machine 10% idle during a cold
        // sequential pass, 2 per core 11-14%).
        std::thread::available_parallelism().map_or(6, |n| (3 * n.get()).max(6))
    }
    fn read_batch(&self) -> usize {
        // In S3 a request costs a round trip whatever its size, and the chunks of a batch that lie together
        // in a pack come with one ranged GET: 1 MiB of the disk per task (about half that stored).
        if self.0.library().is_remote() {
            return ((1 << 20) / self.0.chunk_size() as usize).max(1);
        }
        // A chunk takes tens of microseconds to read and check, about what handing it to a thread costs:
        // about 512 KiB of chunks per task.
        ((512 << 10) / self.0.chunk_size() as usize).max(1)
    }
    fn describe(&self) -> String {
        format!("backup {} disk {}", self.0.backup_id(), self.0.disk_number())
    }
}

/// The kind of a library's failure to give a chunk, with the library's error as its cause.
fn source_error(chunk: u64, e: dedup::Error) -> SourceError {
    match e {
        dedup::Error::ChunkMissing { .. } => SourceError::Missing { chunk, source: Box::new(e) },
        dedup::Error::ChunkCorrupt { .. } | dedup::Error::BadFormat { .. } => {
            SourceError::Corrupt { chunk, source: Box::new(e) }
        }
        dedup::Error::Io { op, path, source } => {
            SourceError::Io { chunk, what: format!("{op} {}", path.display()), source }
        }
        // A full disk while reading is no medium fault of the chunk; keep its errno for the initiator.
        dedup::Error::NoSpace { op, path } => SourceError::Io {
            chunk,
            what: format!("{op} {}", path.display()),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        },
        other => SourceError::Other { chunk, source: Box::new(other) },
    }
}

/// Chunks kept decoded per file of the read-only view (least recently used go first), so that a reader
/// decodes each chunk once while it works in a region.
const CACHED_CHUNKS: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// A backup disk as a read-only file of the FUSE view (`backups/<id>/disk<N>.img`).
pub struct BackupFile(Arc<Cached>);

struct Cached {
    disk: Arc<BackupDisk>,
    chunks: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

impl BackupFile {
    pub fn new(disk: Arc<BackupDisk>) -> Self {
        BackupFile(Arc::new(Cached { disk, chunks: Mutex::new(LruCache::new(CACHED_CHUNKS)) }))
    }
}

impl Cached {
    fn chunk(&self, index: u64) -> Result<Arc<Vec<u8>>, dedup::Error> {
        if let Some(hit) = self.chunks.lock().expect("not poisoned").get(&index) {
            return Ok(hit.clone());
        }
        let mut buf = Vec::new();
        self.disk.read_chunk(index, &mut buf)?;
        let data = Arc::new(buf);
        // At capacity, the least recently used chunk goes.
        self.chunks.lock().expect("not poisoned").put(index, data.clone());
        Ok(data)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, dedup::Error> {
        let cs = u64::from(self.disk.chunk_size());
        let mut out = Vec::with_capacity(len);
        let mut pos = offset;
        let end = offset + len as u64;
        while pos < end {
            let index = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((end - pos) as usize).min(cs as usize - within);
            let chunk = self.chunk(index)?;
            out.extend_from_slice(&chunk[within..within + n]);
            pos += n as u64;
        }
        Ok(out)
    }
}

impl ViewFile for BackupFile {
    fn size(&self) -> u64 {
        self.0.disk.size()
    }
    fn writable(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, len: usize) -> BoxFuture<Result<Vec<u8>, i32>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let disk = inner.disk.clone();
            tokio::task::spawn_blocking(move || inner.read(offset, len)).await.map_err(|_| libc::EIO)?.map_err(|e| {
                tracing::error!("read of backup {} disk {} failed: {e}", disk.backup_id(), disk.disk_number());
                libc::EIO
            })
        })
    }
}
