//! Repair of the pack store: an index whose pack has gone is removed (the chunks it names are lost; the
//! library's repair says which backups they belong to), and a pack whose index is missing or damaged gets
//! its index rebuilt from its own records, each checked against its id before it is named. The chunk map is
//! then written again without the packs that have gone.
//!
//! Order on disk, the same as a seal: the pack's bytes are made durable before an index names them (the pack
//! may be one a writer never synced), then the index is written through a temporary file, fsynced and renamed
//! into place.

use std::fs::{self, File};
use std::io::ErrorKind;

use super::PackStore;
use crate::durable::AtomicFile;
use crate::error::{Error, Result};
use crate::formats::{PACK_HEADER_LEN, PACK_MAGIC};
use crate::store::catalog::file_stems;
use crate::store::pack_format::PackIndex;
use crate::store::RepairStats;

impl PackStore {
    /// `ChunkStore::repair` for the pack store; the caller holds the library's chunk lock exclusively.
    pub(super) fn repair_indexes(&self) -> Result<RepairStats> {
        let mut stats = RepairStats::default();
        self.drop_orphan_indexes(&mut stats)?;
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
            let index = PackIndex::from_records(&data, &mut stats);
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
        // A map that still covers a dropped pack would send reads there: write one without it.
        self.merge_map(true)?;
        Ok(stats)
    }

    /// Removes every index whose pack file has gone (a crash between a pack's removal and its index's, or
    /// a pack deleted by hand): it names chunks that cannot be read, and it would keep them in the catalog.
    fn drop_orphan_indexes(&self, stats: &mut RepairStats) -> Result<()> {
        let mut names = crate::store::catalog::index_names(&self.dir)?;
        names.sort();
        for name in names {
            let pack_path = self.pack_path(&name);
            match fs::symlink_metadata(&pack_path) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Ok(_) => continue,
                Err(e) => return Err(Error::io("read", &pack_path, e)),
            }
            let idx_path = self.index_path(&name);
            let chunks = PackIndex::read(&idx_path).map(|i| i.entries.len() as u64).unwrap_or(0);
            tracing::warn!("pack {name} has gone: removing its index, which names {chunks} chunks");
            match fs::remove_file(&idx_path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("remove", &idx_path, e)),
            }
            stats.indexes_dropped += 1;
            stats.chunks_dropped += chunks;
        }
        if stats.indexes_dropped > 0 {
            crate::durable::sync_dir(&self.dir).map_err(|e| Error::io("sync folder", &self.dir, e))?;
        }
        Ok(())
    }
}
