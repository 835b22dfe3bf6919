//! A library in a folder of this machine.
//!
//! ```text
//! <library>/library.json          settings (format version, chunk size); marks the folder as a library
//! <library>/packs/                the chunk store (see `store::PackStore`)
//! <library>/backups/<id>/         one folder per finished backup: manifest.json and disk<N>.index
//! <library>/running/<id>          one file per backup in progress, flock-ed by its process (see `gc.rs`)
//! <library>/holds/<holder>        one file per use of a backup that must outlive commands (a live mount):
//!                                 the backup id, then what holds it; `forget` refuses a held backup
//! <library>/tmp/                  temporary files; anything here is unfinished work
//! <library>/chunks.lock           taken shared to reuse or add a chunk, exclusive by gc while it deletes
//! ```
//! A backup folder appears in one rename once everything it refers to is durable, so a reader never sees
//! half a backup.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::backend::{Backend, Guard};
use crate::durable::{self, AtomicFile};
use crate::error::{Error, Result};
use crate::formats::LIBRARY_CONFIG_FILE;
use crate::lock::{self, LockKind};
use crate::store::ChunkStore;

pub(crate) struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    pub fn new(root: &Path) -> Self {
        DirBackend { root: root.to_path_buf() }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    fn chunks_lock_path(&self) -> PathBuf {
        self.path("chunks.lock")
    }
}

impl Backend for DirBackend {
    fn location(&self) -> PathBuf {
        self.root.clone()
    }

    fn read_config(&self) -> Result<Option<Vec<u8>>> {
        let p = self.path(LIBRARY_CONFIG_FILE);
        match fs::read(&p) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    fn create_config(&self, data: Vec<u8>) -> Result<bool> {
        let config_path = self.path(LIBRARY_CONFIG_FILE);
        if config_path.exists() {
            return Ok(false);
        }
        durable::create_dir_durable(&self.root).map_err(|e| Error::io("create library folder", &self.root, e))?;
        for sub in ["packs", "backups", "running", "tmp"] {
            let p = self.path(sub);
            durable::create_dir_durable(&p).map_err(|e| Error::io("create folder", &p, e))?;
        }
        durable::write_file(&config_path, &data).map_err(|e| Error::io("write", &config_path, e))?;
        Ok(true)
    }

    fn backup_ids(&self) -> Result<Vec<String>> {
        let dir = self.path("backups");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list backups in", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list backups in", &dir, e))?;
            match entry.file_name().to_str() {
                Some(name) if !durable::is_temp_name(name) => out.push(name.to_string()),
                _ => {}
            }
        }
        Ok(out)
    }

    fn read_manifest(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path("backups").join(id).join("manifest.json");
        match fs::read(&p) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    fn index_file(&self, id: &str, index_file: &str) -> Result<PathBuf> {
        Ok(self.path("backups").join(id).join(index_file))
    }

    fn start_backup(&self, id: &str) -> Result<PathBuf> {
        // The folder that becomes the backup's.
        let tmp = self.path("backups").join(format!(".tmp-{id}"));
        fs::create_dir(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        Ok(tmp)
    }

    fn publish(&self, id: &str, manifest: &[u8], staging: &Path, _index_files: &[String]) -> Result<()> {
        // The disk indexes are durable already; the manifest joins them, then one rename of the folder.
        let manifest_path = staging.join("manifest.json");
        let mut f = AtomicFile::create(&manifest_path, None).map_err(|e| Error::io("create", &manifest_path, e))?;
        f.write_all(manifest).map_err(|e| Error::io("write", &manifest_path, e))?;
        f.commit_without_dir_sync().map_err(|e| Error::io("write", &manifest_path, e))?;
        durable::sync_dir(staging).map_err(|e| Error::io("sync folder", staging, e))?;
        let backups = self.path("backups");
        let dest = backups.join(id);
        fs::rename(staging, &dest).map_err(|e| Error::io("publish backup", &dest, e))?;
        durable::sync_dir(&backups).map_err(|e| Error::io("sync folder", &backups, e))
    }

    fn discard(&self, staging: &Path) {
        let _ = fs::remove_dir_all(staging);
    }

    fn remove_backup(&self, id: &str) -> Result<()> {
        let backups = self.path("backups");
        let dir = backups.join(id);
        // Rename first so that the backup disappears in one step, then delete at leisure.
        let doomed = backups.join(format!(".tmp-forget-{id}"));
        fs::rename(&dir, &doomed).map_err(|e| Error::io("remove backup", &dir, e))?;
        durable::sync_dir(&backups).map_err(|e| Error::io("sync folder", &backups, e))?;
        fs::remove_dir_all(&doomed).map_err(|e| Error::io("remove", &doomed, e))
    }

    fn write_hold(&self, holder: &str, text: &str) -> Result<()> {
        let dir = self.path("holds");
        durable::create_dir_durable(&dir).map_err(|e| Error::io("create folder", &dir, e))?;
        let p = dir.join(holder);
        durable::write_file(&p, text.as_bytes()).map_err(|e| Error::io("write", &p, e))
    }

    fn remove_hold(&self, holder: &str) -> Result<()> {
        let p = self.path("holds").join(holder);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &p, e)),
        }
    }

    fn holds(&self) -> Result<Vec<String>> {
        let dir = self.path("holds");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        Ok(entries
            .flatten()
            .filter(|e| !e.file_name().to_str().is_some_and(durable::is_temp_name))
            .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
            .collect())
    }

    fn register_running(&self, id: &str, _store: Arc<dyn ChunkStore>) -> Result<Box<dyn Guard>> {
        // The entry appears under its name already locked and holding its start time: gc removes entries
        // it can lock, so an entry must never be visible unlocked.
        let tmp = self.path("tmp").join(format!(".tmp-running-{id}"));
        let path = self.path("running").join(id);
        let file = File::create(&tmp).map_err(|e| Error::io("register backup in", &tmp, e))?;
        let registered = (|| {
            let mut held = lock::lock(file, LockKind::Exclusive).map_err(|e| Error::io("lock", &tmp, e))?;
            let start = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            write!(held.file_mut(), "{}", start.as_secs()).map_err(|e| Error::io("write", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| Error::io("register backup in", &path, e))?;
            Ok(held)
        })();
        match registered {
            Ok(held) => Ok(Box::new(Registered { path, _lock: held })),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn chunk_lock_file(&self) -> Result<Option<File>> {
        let p = self.chunks_lock_path();
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p);
        f.map(Some).map_err(|e| Error::io("open", p, e))
    }

    fn lock_chunks(&self) -> Result<Box<dyn Guard>> {
        let file = self.chunk_lock_file()?.expect("a folder library has a lock file");
        let held = lock::lock(file, LockKind::Exclusive).map_err(|e| Error::io("lock", self.chunks_lock_path(), e))?;
        Ok(Box::new(held))
    }

    fn sweep_cutoff(&self, gc_start: SystemTime) -> Result<(Option<SystemTime>, u64)> {
        // Backups in progress mark every pack they reuse as used after they started, so a pack last used
        // before the oldest of them started is one they will not name.
        let (oldest, running) = self.oldest_running_start()?;
        Ok((Some(oldest.map_or(gc_start, |r| r.min(gc_start)) - TIME_MARGIN), running))
    }

    fn clean_up(&self, cutoff: SystemTime) -> Result<u64> {
        let mut removed = 0;
        // Temporary files older than the cutoff belong to no live writer.
        let tmp = self.path("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io("list", &tmp, e))?.flatten() {
            let old = entry.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < cutoff);
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        // Backup folders of interrupted commits or forgets.
        let backups = self.path("backups");
        for entry in fs::read_dir(&backups).map_err(|e| Error::io("list", &backups, e))?.flatten() {
            let name = entry.file_name();
            let is_tmp = name.to_str().is_some_and(durable::is_temp_name);
            let old = entry.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < cutoff);
            if is_tmp && old {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(removed)
    }
}

/// Margin subtracted from the cutoff: file time stamps may be coarser than the clock.
const TIME_MARGIN: Duration = Duration::from_secs(2);

impl DirBackend {
    /// The earliest start among backups in progress, and how many there are. Entries left by processes that
    /// died are removed.
    fn oldest_running_start(&self) -> Result<(Option<SystemTime>, u64)> {
        let dir = self.path("running");
        let mut oldest: Option<SystemTime> = None;
        let mut running = 0;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if let Ok(_unused) = lock::try_lock(file, LockKind::Shared).map_err(|e| Error::io("lock", &path, e))? {
                // Nobody holds it: the backup's process is gone.
                let _ = fs::remove_file(&path);
                continue;
            }
            // A live backup; its start time is in the file (or, if it is still being written, the file's time).
            let start = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .or_else(|| entry.metadata().ok().and_then(|m| m.modified().ok()))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            oldest = Some(oldest.map_or(start, |o| o.min(start)));
            running += 1;
        }
        Ok((oldest, running))
    }
}

/// A flock lasts as long as its process: it never lapses.
impl Guard for lock::Held {}

impl Guard for Registered {}

/// A backup's entry in `running/`, locked by this process, removed when dropped.
struct Registered {
    path: PathBuf,
    _lock: lock::Held,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
