//! The directory chunk store: `chunks/<first two hex digits>/<64 hex digits>`, 256 shard folders so that no
//! folder grows huge.
//!
//! New chunks are written to temporary files and made durable in batches: one `syncfs` makes the contents of
//! a whole batch durable, then each file is renamed to its final name. A chunk is therefore never visible
//! under its name before its bytes are on disk (the rule of `durable.rs`), at the cost of one sync per batch
//! instead of one per chunk. `sync` commits the open batch and fsyncs the shard folders that changed, so the
//! names are durable before a manifest refers to them. Uncommitted temporary files are removed on drop.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{ChunkStore, StoredChunk};
use crate::chunk::ChunkId;
use crate::durable;
use crate::error::{Error, Result};

/// A batch is committed when it holds this many chunks or bytes.
const BATCH_CHUNKS: usize = 512;
const BATCH_BYTES: usize = 64 << 20;

pub struct DirStore {
    root: PathBuf,
    tmp: PathBuf,
    dirty_shards: Vec<AtomicBool>,
    batch: Mutex<Batch>,
}

/// Chunks written to temporary files, waiting for one sync and their renames.
#[derive(Default)]
struct Batch {
    files: Vec<(PathBuf, PathBuf, u8)>,
    bytes: usize,
}

impl DirStore {
    /// Opens (creating when needed) the store under `root`; temporary files go to `tmp` on the same file
    /// system.
    pub fn open(root: &Path, tmp: &Path) -> Result<Self> {
        for dir in [root, tmp] {
            durable::create_dir_durable(dir).map_err(|e| Error::io("create folder", dir, e))?;
        }
        Ok(DirStore {
            root: root.to_path_buf(),
            tmp: tmp.to_path_buf(),
            dirty_shards: (0..256).map(|_| AtomicBool::new(false)).collect(),
            batch: Mutex::new(Batch::default()),
        })
    }

    fn shard_dir(&self, shard: u8) -> PathBuf {
        self.root.join(format!("{shard:02x}"))
    }

    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.shard_dir(id.0[0]).join(id.to_hex())
    }
}

impl DirStore {
    /// Makes the open batch durable (one syncfs), then gives its chunks their names.
    fn commit_batch(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.batch.lock().expect("not poisoned"));
        if batch.files.is_empty() {
            return Ok(());
        }
        let result = (|| {
            let dir = fs::File::open(&self.tmp).map_err(|e| Error::io("open", &self.tmp, e))?;
            // SAFETY: syncfs on a descriptor we own; no memory is passed.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(Error::io("sync chunks in", &self.tmp, std::io::Error::last_os_error()));
            }
            for (tmp, dest, shard) in &batch.files {
                fs::rename(tmp, dest).map_err(|e| Error::io("store chunk", dest, e))?;
                self.dirty_shards[*shard as usize].store(true, Ordering::Release);
            }
            Ok(())
        })();
        if result.is_err() {
            for (tmp, _, _) in &batch.files {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }
}

impl Drop for DirStore {
    fn drop(&mut self) {
        // Chunks never committed are unfinished work: nothing refers to them.
        let batch = std::mem::take(&mut *self.batch.lock().unwrap_or_else(|p| p.into_inner()));
        for (tmp, _, _) in batch.files {
            let _ = fs::remove_file(tmp);
        }
    }
}

impl ChunkStore for DirStore {
    fn touch(&self, id: &ChunkId) -> Result<bool> {
        let path = self.chunk_path(id);
        match nix::sys::stat::utimensat(
            None,
            &path,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(Error::io("mark chunk as used", path, e.into())),
        }
    }

    fn put(&self, id: &ChunkId, encoded: &[u8]) -> Result<()> {
        let path = self.chunk_path(id);
        let shard = id.0[0];
        let shard_dir = self.shard_dir(shard);
        if !shard_dir.is_dir() {
            durable::create_dir_durable(&shard_dir).map_err(|e| Error::io("create folder", &shard_dir, e))?;
        }
        let tmp = self.tmp.join(format!(".tmp-{}-{}", id.to_hex(), durable::random_suffix()));
        let written =
            fs::OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| f.write_all(encoded));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("write chunk", &path, e));
        }
        let full = {
            let mut b = self.batch.lock().expect("not poisoned");
            b.files.push((tmp, path, shard));
            b.bytes += encoded.len();
            b.files.len() >= BATCH_CHUNKS || b.bytes >= BATCH_BYTES
        };
        if full {
            self.commit_batch()?;
        }
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let path = self.chunk_path(id);
        match fs::read(&path) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::ChunkMissing { id: *id }),
            Err(e) => Err(Error::io("read chunk", path, e)),
        }
    }

    fn remove(&self, id: &ChunkId) -> Result<()> {
        let path = self.chunk_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.dirty_shards[id.0[0] as usize].store(true, Ordering::Release);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove chunk", path, e)),
        }
    }

    fn list(&self) -> Result<Vec<StoredChunk>> {
        let mut out = Vec::new();
        for shard in 0..=255u8 {
            let dir = self.shard_dir(shard);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list chunks in", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list chunks in", &dir, e))?;
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(ChunkId::from_hex) else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("stat chunk", entry.path(), e)),
                };
                out.push(StoredChunk {
                    id,
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    stored_bytes: meta.len(),
                });
            }
        }
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        self.commit_batch()?;
        for (shard, dirty) in self.dirty_shards.iter().enumerate() {
            if dirty.swap(false, Ordering::AcqRel) {
                let dir = self.shard_dir(shard as u8);
                durable::sync_dir(&dir).map_err(|e| Error::io("sync folder", dir, e))?;
            }
        }
        Ok(())
    }
}
