//! A library on disk: its settings, its chunk store and its backups.
//!
//! ```text
//! <library>/library.json          settings (format version, chunk size); marks the folder as a library
//! <library>/packs/<name>.pack     encoded chunks, many to a pack file (see `store::PackStore`)
//! <library>/packs/<name>.idx      where each chunk of the pack is; written once the pack is durable
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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkId};
use crate::durable;
use crate::error::{Error, Result};
use crate::formats::{LIBRARY_CONFIG_FILE, LIBRARY_FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::index::{DiskIndex, IndexEntry};
use crate::manifest::Manifest;
use crate::store::{ChunkLocation, ChunkStore, PackStore};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LibraryConfig {
    pub format_version: u32,
    pub chunk_size: u32,
    pub created: String,
}

pub struct Library {
    root: PathBuf,
    config: LibraryConfig,
    store: Arc<dyn ChunkStore>,
}

impl Library {
    /// Creates a new directory library at `root` (the folder may exist but must not hold a library).
    pub fn init(root: &Path, chunk_size: u32) -> Result<Library> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::InvalidChunkSize { size: chunk_size.into() });
        }
        let config_path = root.join(LIBRARY_CONFIG_FILE);
        if config_path.exists() {
            return Err(Error::LibraryExists { path: root.to_path_buf() });
        }
        durable::create_dir_durable(root).map_err(|e| Error::io("create library folder", root, e))?;
        for sub in ["packs", "backups", "running", "tmp"] {
            let p = root.join(sub);
            durable::create_dir_durable(&p).map_err(|e| Error::io("create folder", &p, e))?;
        }
        let config = LibraryConfig { format_version: LIBRARY_FORMAT_VERSION, chunk_size, created: now_rfc3339() };
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        durable::write_file(&config_path, &json).map_err(|e| Error::io("write", &config_path, e))?;
        Self::open(root)
    }

    /// Opens an existing library.
    pub fn open(root: &Path) -> Result<Library> {
        let config_path = root.join(LIBRARY_CONFIG_FILE);
        let data = match fs::read(&config_path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotALibrary { path: root.to_path_buf() })
            }
            Err(e) => return Err(Error::io("read", config_path, e)),
        };
        let config: LibraryConfig = serde_json::from_slice(&data)
            .map_err(|e| Error::BadFormat { path: config_path.clone(), reason: e.to_string() })?;
        if config.format_version != LIBRARY_FORMAT_VERSION {
            return Err(Error::UnsupportedLibrary {
                path: root.to_path_buf(),
                found: config.format_version,
                supported: LIBRARY_FORMAT_VERSION,
            });
        }
        let store = PackStore::open(&root.join("packs"), &root.join("tmp"))?;
        Ok(Library { root: root.to_path_buf(), config, store: Arc::new(store) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    pub fn config(&self) -> &LibraryConfig {
        &self.config
    }

    pub fn store(&self) -> &dyn ChunkStore {
        &*self.store
    }

    pub(crate) fn path(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// The lock that separates chunk reuse from chunk deletion (see `gc.rs`).
    pub(crate) fn chunks_lock(&self) -> Result<File> {
        let p = self.path("chunks.lock");
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| Error::io("open", p, e))
    }

    /// Reads one chunk's plain bytes into `out`, verified against its id. The all-zero id gives zeros of
    /// `len` bytes.
    pub fn read_chunk(&self, id: &ChunkId, len: usize, out: &mut Vec<u8>) -> Result<()> {
        self.read_entry(&IndexEntry { id: *id, at: None }, len, out)
    }

    /// Reads the chunk of a disk index entry, from where the entry says it was stored when it says so. A copy
    /// there that fails its check is reported, and another copy the store knows of is read instead.
    pub fn read_entry(&self, entry: &IndexEntry, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let id = &entry.id;
        if id.is_zero() {
            out.clear();
            out.resize(len, 0);
            return Ok(());
        }
        let stored = match &entry.at {
            Some(at) => self.store.get_at(id, at)?,
            None => self.store.get(id)?,
        };
        let first = self.decode(id, &stored, len, out);
        match (first, &entry.at) {
            (Err(e @ Error::ChunkCorrupt { .. }), Some(at)) => {
                let pack = at.pack.to_string();
                let same = |l: &ChunkLocation| {
                    l.offset == u64::from(at.offset) && l.pack.file_stem().and_then(|s| s.to_str()) == Some(&pack)
                };
                let Some(other) = self.store.locate(id)?.filter(|l| !same(l)) else { return Err(e) };
                tracing::warn!("{e} (in pack {}); reading the copy in {}", at.pack, other.pack.display());
                let stored = self.store.get(id)?;
                self.decode(id, &stored, len, out)
            }
            (result, _) => result,
        }
    }

    fn decode(&self, id: &ChunkId, stored: &[u8], len: usize, out: &mut Vec<u8>) -> Result<()> {
        chunk::decode_verified(id, stored, out)?;
        if out.len() != len {
            return Err(Error::ChunkCorrupt {
                id: *id,
                reason: format!("holds {} bytes where the disk needs {len}", out.len()),
            });
        }
        Ok(())
    }

    /// Every finished backup, oldest first.
    pub fn backups(&self) -> Result<Vec<Manifest>> {
        let dir = self.path("backups");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list backups in", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list backups in", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if durable::is_temp_name(name) {
                continue;
            }
            out.push(self.load_manifest(name)?);
        }
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    fn load_manifest(&self, id: &str) -> Result<Manifest> {
        let p = self.path("backups").join(id).join("manifest.json");
        let data = fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BackupNotFound { id: id.to_string() },
            _ => Error::io("read", &p, e),
        })?;
        serde_json::from_slice(&data).map_err(|e| Error::BadFormat { path: p, reason: e.to_string() })
    }

    /// Finds a backup by its id, a unique prefix of its id, or its name (the newest backup of that name).
    pub fn resolve(&self, id_or_name: &str) -> Result<Manifest> {
        let all = self.backups()?;
        if let Some(m) = all.iter().find(|m| m.id == id_or_name) {
            return Ok(m.clone());
        }
        let by_prefix: Vec<_> = all.iter().filter(|m| m.id.starts_with(id_or_name)).collect();
        match by_prefix.len() {
            1 => return Ok(by_prefix[0].clone()),
            0 => {}
            count => return Err(Error::AmbiguousBackupId { prefix: id_or_name.to_string(), count }),
        }
        all.iter()
            .rev()
            .find(|m| m.name.as_deref() == Some(id_or_name))
            .cloned()
            .ok_or_else(|| Error::BackupNotFound { id: id_or_name.to_string() })
    }

    /// Opens the chunk index of one disk of a backup, checked against the manifest.
    pub fn load_index(&self, manifest: &Manifest, disk: usize) -> Result<DiskIndex> {
        let d = manifest.disks.get(disk).ok_or_else(|| Error::DiskNotFound { backup: manifest.id.clone(), disk })?;
        let p = self.path("backups").join(&manifest.id).join(&d.index_file);
        let index = DiskIndex::open(&p, &d.index_blake3)?;
        if index.disk_size != d.size || index.chunk_size != d.chunk_size {
            return Err(Error::BadFormat { path: p, reason: "index disagrees with manifest.json".into() });
        }
        Ok(index)
    }

    /// Records that `holder` (a mount id) uses backup `backup_id`, described by `what`, until `release`.
    pub fn hold(&self, holder: &str, backup_id: &str, what: &str) -> Result<()> {
        let dir = self.path("holds");
        durable::create_dir_durable(&dir).map_err(|e| Error::io("create folder", &dir, e))?;
        let p = dir.join(holder);
        durable::write_file(&p, format!("{backup_id}\n{what}\n").as_bytes()).map_err(|e| Error::io("write", &p, e))
    }

    /// Ends a hold (absent holds are fine: release is idempotent).
    pub fn release(&self, holder: &str) -> Result<()> {
        let p = self.path("holds").join(holder);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &p, e)),
        }
    }

    /// What holds backup `backup_id` (the descriptions of its holds).
    pub fn holds_of(&self, backup_id: &str) -> Result<Vec<String>> {
        let dir = self.path("holds");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(durable::is_temp_name) {
                continue;
            }
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let mut lines = text.lines();
            if lines.next() == Some(backup_id) {
                out.push(lines.next().unwrap_or("an unnamed holder").to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a backup from the library. Its chunks stay until `gc` finds them unused. A backup in use (a
    /// live mount holds it) is refused unless `force`.
    pub fn forget(&self, id: &str, force: bool) -> Result<Manifest> {
        let manifest = self.resolve(id)?;
        let holders = self.holds_of(&manifest.id)?;
        if !holders.is_empty() && !force {
            return Err(Error::BackupHeld { id: manifest.id.clone(), holders: holders.join(", ") });
        }
        let backups = self.path("backups");
        let dir = backups.join(&manifest.id);
        // Rename first so that the backup disappears in one step, then delete at leisure.
        let doomed = backups.join(format!(".tmp-forget-{}", manifest.id));
        fs::rename(&dir, &doomed).map_err(|e| Error::io("remove backup", &dir, e))?;
        durable::sync_dir(&backups).map_err(|e| Error::io("sync folder", &backups, e))?;
        fs::remove_dir_all(&doomed).map_err(|e| Error::io("remove", &doomed, e))?;
        Ok(manifest)
    }
}

/// The current time as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("time formats")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_damaged_copy_is_passed_over_for_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::init(&dir.path().join("lib"), 65536).unwrap();
        let plain: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let id = ChunkId::of(&plain);
        let mut z = zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL).unwrap();
        let encoded = chunk::encode(&plain, &mut z);
        // Two copies, as two backups running at once store them, each in its own pack.
        let first = lib.store().put(&id, &encoded).unwrap();
        lib.store().sync().unwrap();
        let second = lib.store().put(&id, &encoded).unwrap();
        lib.store().sync().unwrap();
        assert_ne!(first.pack, second.pack);
        let pack = lib.root().join("packs").join(format!("{}.pack", first.pack));
        let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.write_all_at(b"damage", u64::from(first.offset) + 40).unwrap();
        let mut out = Vec::new();
        lib.read_entry(&IndexEntry { id, at: Some(first) }, plain.len(), &mut out).unwrap();
        assert_eq!(out, plain, "the good copy is read");
        // With no other copy, the damage is an error, never data.
        let only = IndexEntry { id, at: Some(second) };
        std::fs::OpenOptions::new()
            .write(true)
            .open(lib.root().join("packs").join(format!("{}.pack", second.pack)))
            .unwrap()
            .write_all_at(b"damage", u64::from(second.offset) + 40)
            .unwrap();
        assert!(matches!(lib.read_entry(&only, plain.len(), &mut out), Err(Error::ChunkCorrupt { .. })));
    }
}
