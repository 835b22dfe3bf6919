//! The directory chunk store: `chunks/<first two hex digits>/<64 hex digits>`, 256 shard folders so that no
//! folder grows huge. New chunks are written through `durable::AtomicFile` (contents fsynced before the
//! rename); the shard folders touched since the last `sync` are fsynced there, once each.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use super::{ChunkStore, StoredChunk};
use crate::chunk::ChunkId;
use crate::durable::{self, AtomicFile};
use crate::error::{Error, Result};

pub struct DirStore {
    root: PathBuf,
    tmp: PathBuf,
    dirty_shards: Vec<AtomicBool>,
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
        })
    }

    fn shard_dir(&self, shard: u8) -> PathBuf {
        self.root.join(format!("{shard:02x}"))
    }

    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.shard_dir(id.0[0]).join(id.to_hex())
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
            durable::create_dir_durable(&shard_dir)
                .map_err(|e| Error::io("create folder", &shard_dir, e))?;
        }
        let mut f = AtomicFile::create(&path, Some(&self.tmp))
            .map_err(|e| Error::io("create chunk", &path, e))?;
        f.write_all(encoded)
            .map_err(|e| Error::io("write chunk", &path, e))?;
        f.commit_without_dir_sync()
            .map_err(|e| Error::io("store chunk", &path, e))?;
        self.dirty_shards[shard as usize].store(true, Ordering::Release);
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
        for (shard, dirty) in self.dirty_shards.iter().enumerate() {
            if dirty.swap(false, Ordering::AcqRel) {
                let dir = self.shard_dir(shard as u8);
                durable::sync_dir(&dir).map_err(|e| Error::io("sync folder", dir, e))?;
            }
        }
        Ok(())
    }
}
