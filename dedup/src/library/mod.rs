//! A library: its settings, its chunk store and its backups, in a folder of this machine (`dir.rs`, the
//! layout is described there) or in S3 (`s3.rs`), behind one seam (`backend.rs`). A library is named by
//! its folder or by `s3://BUCKET/PREFIX` wherever the commands take one.
//!
//! A backup appears in one step (a folder's rename; an S3 manifest written last) once everything it refers
//! to is durable, so a reader never sees half a backup.

mod backend;
mod dir;
mod s3;

pub(crate) use backend::Guard;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cache::ChunkCache;
use crate::chunk::{self, ChunkId};
use crate::error::{Error, Result};
use crate::formats::{LIBRARY_CONFIG_FILE, LIBRARY_FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::index::{DiskIndex, IndexEntry};
use crate::manifest::Manifest;
use crate::s3::{S3Objects, S3Url};
use crate::store::{ChunkLocation, ChunkStore, PackStore, S3PackStore, StoredAt};
use backend::Backend;

/// Chunk reads in flight for a reader of a library in S3 (a restore, a mount's recalls): with 64 KiB chunks
/// and 20 ms per request, 32 at once make about 100 MiB/s.
const REMOTE_READS_IN_FLIGHT: usize = 32;

/// Where an S3 library keeps its local copies (disk indexes) when `LIVEMOUNT_CACHE` does not say.
pub const DEFAULT_CACHE: &str = "/var/cache/livemount";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LibraryConfig {
    pub format_version: u32,
    pub chunk_size: u32,
    pub created: String,
}

pub struct Library {
    root: PathBuf,
    config: LibraryConfig,
    backend: Box<dyn Backend>,
    store: Arc<dyn ChunkStore>,
    /// The chunk cache its readers share, when it has one (`with_cache`).
    cache: Option<Arc<ChunkCache>>,
}

/// True when `root` names a library in S3 (`s3://…`) rather than a folder.
pub fn in_s3(root: &Path) -> bool {
    root.to_str().and_then(S3Url::parse).is_some()
}

/// A library's backend, and for a library in S3 the client its chunk store shares.
type Opened = (Box<dyn Backend>, Option<Arc<S3Objects>>);

/// The backend of the library named `root`: `s3://…` is a library in S3, anything else a folder.
fn backend_of(root: &Path) -> Result<Opened> {
    let Some(parsed) = root.to_str().and_then(S3Url::parse) else {
        return Ok((Box::new(dir::DirBackend::new(root)), None));
    };
    let url = parsed.map_err(|reason| Error::BadLocation { reason })?;
    let objects = Arc::new(S3Objects::connect(&url)?);
    Ok((Box::new(s3::S3Backend::new(objects.clone(), &cache_root())), Some(objects)))
}

/// Where this machine keeps its local copies of what lives elsewhere: `LIVEMOUNT_CACHE`, else
/// `DEFAULT_CACHE`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("LIVEMOUNT_CACHE").map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

impl Library {
    /// Creates a new library at `root`: a folder (which may exist but must not hold a library), or
    /// `s3://BUCKET/PREFIX` in an existing bucket.
    pub fn init(root: &Path, chunk_size: u32) -> Result<Library> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::InvalidChunkSize { size: chunk_size.into() });
        }
        let (backend, _) = backend_of(root)?;
        let config = LibraryConfig { format_version: LIBRARY_FORMAT_VERSION, chunk_size, created: now_rfc3339() };
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        if !backend.create_config(json)? {
            return Err(Error::LibraryExists { path: backend.location() });
        }
        Self::open(root)
    }

    /// Opens an existing library.
    pub fn open(root: &Path) -> Result<Library> {
        let (backend, objects) = backend_of(root)?;
        let Some(data) = backend.read_config()? else {
            return Err(Error::NotALibrary { path: backend.location() });
        };
        let config_path = backend.location().join(LIBRARY_CONFIG_FILE);
        let config: LibraryConfig = serde_json::from_slice(&data)
            .map_err(|e| Error::BadFormat { path: config_path.clone(), reason: e.to_string() })?;
        if config.format_version != LIBRARY_FORMAT_VERSION {
            return Err(Error::UnsupportedLibrary {
                path: backend.location(),
                found: config.format_version,
                supported: LIBRARY_FORMAT_VERSION,
            });
        }
        let store: Arc<dyn ChunkStore> = match objects {
            Some(objects) => {
                let local = s3::local_folder(&objects, &cache_root());
                Arc::new(S3PackStore::open(objects, &local))
            }
            None => Arc::new(PackStore::open(&root.join("packs"), &root.join("tmp"))?),
        };
        Ok(Library { root: backend.location(), config, backend, store, cache: None })
    }

    /// The library whose chunk reads go through `cache` (shared with every other reader given it).
    pub fn with_cache(mut self, cache: Arc<ChunkCache>) -> Library {
        self.cache = Some(cache);
        self
    }

    pub fn cache(&self) -> Option<&ChunkCache> {
        self.cache.as_deref()
    }

    /// The library's location: its folder, or its `s3://` URL.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True for a library in S3.
    pub fn is_remote(&self) -> bool {
        in_s3(&self.root)
    }

    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// Chunk reads a reader of this library keeps in flight: a few per core in a folder (a read is a
    /// positioned read of a local file and a decode: the cores are the limit), many in S3 (each read is a
    /// request that waits on the network; far away, the requests in flight are what set the speed).
    pub fn reads_in_flight(&self) -> usize {
        if self.is_remote() {
            REMOTE_READS_IN_FLIGHT
        } else {
            crate::workers::cores() * 2
        }
    }

    pub fn config(&self) -> &LibraryConfig {
        &self.config
    }

    pub fn store(&self) -> &dyn ChunkStore {
        &*self.store
    }

    pub(crate) fn shared_store(&self) -> Arc<dyn ChunkStore> {
        self.store.clone()
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The file whose shared lock a backup holds around each reuse or addition of chunks, where the library
    /// has one (see `gc.rs`).
    pub(crate) fn chunk_lock_file(&self) -> Result<Option<std::fs::File>> {
        self.backend.chunk_lock_file()
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
        let fetch = || match &entry.at {
            Some(at) => self.store.get_at(id, at),
            None => self.store.get(id),
        };
        let first = match &self.cache {
            Some(cache) => match self.decode(id, &cache.get_or_fetch(id, fetch)?, len, out) {
                // The cache's copy, or the one it was given, is damaged: out of the cache, and from the store.
                Err(Error::ChunkCorrupt { .. }) => {
                    cache.forget(id);
                    self.decode(id, &fetch()?, len, out)
                }
                result => result,
            },
            None => self.decode(id, &fetch()?, len, out),
        };
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

    /// `read_entry` of several entries (each with the length its chunk has on the disk), the plain bytes in
    /// the order given. Chunks at known places are fetched together, through the chunk cache when there is
    /// one, so that a far store reads neighbours with one request; a chunk that fails its check is read
    /// again alone, as `read_entry` does (another copy).
    pub fn read_entries(&self, wanted: &[(IndexEntry, usize)]) -> Vec<Result<Vec<u8>>> {
        let located: Vec<(usize, ChunkId, StoredAt)> = wanted
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| !e.id.is_zero())
            .filter_map(|(pos, (e, _))| Some((pos, e.id, e.at?)))
            .collect();
        let fetch = |asked: &[usize]| {
            let places: Vec<(ChunkId, StoredAt)> = asked.iter().map(|&k| (located[k].1, located[k].2)).collect();
            self.store.get_many_at(&places)
        };
        let stored = match &self.cache {
            Some(cache) => {
                let ids: Vec<ChunkId> = located.iter().map(|l| l.1).collect();
                cache.get_or_fetch_many(&ids, fetch)
            }
            None => fetch(&(0..located.len()).collect::<Vec<_>>()),
        };
        let mut out: Vec<Option<Result<Vec<u8>>>> = wanted.iter().map(|_| None).collect();
        for ((pos, id, _), got) in located.iter().zip(stored) {
            let (entry, len) = &wanted[*pos];
            let mut plain = Vec::with_capacity(*len);
            out[*pos] = Some(match got.and_then(|bytes| self.decode(id, &bytes, *len, &mut plain)) {
                Ok(()) => Ok(plain),
                Err(Error::ChunkCorrupt { .. }) => self.read_entry(entry, *len, &mut plain).map(|()| plain),
                Err(e) => Err(e),
            });
        }
        // Zeros, and chunks whose place the index does not know.
        for (slot, (entry, len)) in out.iter_mut().zip(wanted).filter(|(slot, _)| slot.is_none()) {
            let mut plain = Vec::with_capacity(*len);
            *slot = Some(self.read_entry(entry, *len, &mut plain).map(|()| plain));
        }
        out.into_iter().map(|r| r.expect("every entry is read")).collect()
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
        let mut out = Vec::new();
        for id in self.backend.backup_ids()? {
            match self.load_manifest(&id) {
                Ok(m) => out.push(m),
                // Forgotten between the listing and the reading.
                Err(Error::BackupNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    fn load_manifest(&self, id: &str) -> Result<Manifest> {
        let data = self.backend.read_manifest(id)?.ok_or_else(|| Error::BackupNotFound { id: id.to_string() })?;
        serde_json::from_slice(&data).map_err(|e| Error::BadFormat {
            path: self.root.join("backups").join(id).join("manifest.json"),
            reason: e.to_string(),
        })
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
        let p = self.backend.index_file(&manifest.id, &d.index_file)?;
        let index = DiskIndex::open(&p, &d.index_blake3)?;
        if index.disk_size != d.size || index.chunk_size != d.chunk_size {
            return Err(Error::BadFormat { path: p, reason: "index disagrees with manifest.json".into() });
        }
        Ok(index)
    }

    /// Records that `holder` (a mount id) uses backup `backup_id`, described by `what`, until `release`.
    pub fn hold(&self, holder: &str, backup_id: &str, what: &str) -> Result<()> {
        self.backend.write_hold(holder, &format!("{backup_id}\n{what}\n"))
    }

    /// Ends a hold (absent holds are fine: release is idempotent).
    pub fn release(&self, holder: &str) -> Result<()> {
        self.backend.remove_hold(holder)
    }

    /// What holds backup `backup_id` (the descriptions of its holds).
    pub fn holds_of(&self, backup_id: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .backend
            .holds()?
            .iter()
            .filter_map(|text| {
                let mut lines = text.lines();
                (lines.next() == Some(backup_id)).then(|| lines.next().unwrap_or("an unnamed holder").to_string())
            })
            .collect();
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
        self.backend.remove_backup(&manifest.id)?;
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
