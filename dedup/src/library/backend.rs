//! Where a library keeps what is not chunks (its settings, its backups, its holds) and how the processes
//! that share it coordinate: the seam between a library in a folder (`dir.rs`) and one in S3 (`s3.rs`). The
//! chunks themselves are behind `store::ChunkStore`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Result;
use crate::store::{ChunkStore, PackName};

/// Something that lasts as long as it is held: a backup's registration, gc's lock.
pub trait Guard: Send {
    /// False once it may have lapsed without its holder knowing (a lease not renewed in time: others may
    /// have taken it for dead). What it protected must then not be relied on.
    fn is_live(&self) -> bool {
        true
    }
}

pub(crate) trait Backend: Send + Sync {
    /// The library's location as users name it (a folder, or `s3://BUCKET/PREFIX`), for messages.
    fn location(&self) -> PathBuf;

    /// The settings object (`library.json`); `None` when there is none (not a library).
    fn read_config(&self) -> Result<Option<Vec<u8>>>;

    /// Writes the settings of a new library; false when one is there already.
    fn create_config(&self, data: Vec<u8>) -> Result<bool>;

    /// The ids of the finished backups, in no particular order.
    fn backup_ids(&self) -> Result<Vec<String>>;

    /// A backup's `manifest.json`; `None` when there is no such backup.
    fn read_manifest(&self, id: &str) -> Result<Option<Vec<u8>>>;

    /// A local file holding one disk index of a finished backup (the index itself in a folder library; a
    /// copy fetched once and kept for the next opening in an S3 library: a backup never changes).
    fn index_file(&self, id: &str, index_file: &str) -> Result<PathBuf>;

    /// A new local folder where backup `id` writes its disk indexes before it is published.
    fn start_backup(&self, id: &str) -> Result<PathBuf>;

    /// Publishes a backup whose chunks are all durable: its disk indexes (`index_files` in `staging`) first,
    /// its manifest last, so that a backup is listed only once all of it is there.
    fn publish(&self, id: &str, manifest: &[u8], staging: &Path, index_files: &[String]) -> Result<()>;

    /// Drops what a backup that did not finish left in `staging`.
    fn discard(&self, staging: &Path);

    /// Removes a finished backup (its manifest first: it disappears in one step).
    fn remove_backup(&self, id: &str) -> Result<()>;

    fn write_hold(&self, holder: &str, text: &str) -> Result<()>;
    fn remove_hold(&self, holder: &str) -> Result<()>;
    /// The text of every hold.
    fn holds(&self) -> Result<Vec<String>>;

    /// Registers a backup in progress, storing its chunks in `store`, for as long as the guard lives (see
    /// `gc.rs`). Returns once the backup may look for chunks to reuse: in an S3 library, not while a gc
    /// holds the library's lock; meanwhile the backup answers any gc that condemns packs (`agree_on_sweep`).
    fn register_running(&self, id: &str, store: Arc<dyn ChunkStore>) -> Result<Box<dyn Guard>>;

    /// Taken shared around every reuse or addition of a chunk (a folder library's `chunks.lock`). `None`
    /// where the registration alone keeps gc away (S3, see `s3.rs`).
    fn chunk_lock_file(&self) -> Result<Option<std::fs::File>>;

    /// Excludes every reuse or addition of a chunk until dropped: gc's sweep, repair.
    fn lock_chunks(&self) -> Result<Box<dyn Guard>>;

    /// With the chunks locked: the time before which a container unused by finished backups may be swept,
    /// or `None` when no sweep may run now, with the number of backups in progress.
    fn sweep_cutoff(&self, gc_start: SystemTime) -> Result<(Option<SystemTime>, u64)>;

    /// With the chunks locked: removes what interrupted work left behind before `cutoff`; says how many
    /// temporary objects went.
    fn clean_up(&self, cutoff: SystemTime) -> Result<u64>;

    /// With the chunks locked, while backups run, in a library where they cannot mark what they reuse (S3):
    /// tells every backup in progress that a sweep would delete or rewrite `condemned`, and waits for each to
    /// answer which of them it uses (it reuses nothing of them in place from then on). Returns those packs,
    /// to be spared; `None` when some backup did not answer in time (then no sweep may run).
    fn agree_on_sweep(&self, _condemned: &HashSet<PackName>) -> Result<Option<HashSet<PackName>>> {
        Ok(Some(HashSet::new()))
    }
}
