//! Sealing a full pack off the writer's path: its fdatasync and the writing of its index run on a thread of
//! their own, so the worker that filled the pack goes on compressing. Measured on a 1.4 GiB first backup
//! (strace -T): about 40 seals of 16 MiB packs blocked the workers for 0.54 s of a 3.8 s ingest on 2 cores.
//!
//! The store keeps the seals it started in order (`PackStore::sealing`) and finishes them (marks the pack
//! sealed, or abandons it on failure) when they are done, when too many are running, and always in `sync`,
//! which therefore returns only once every pack filled before it is durable and indexed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::OpenPack;
use crate::durable::AtomicFile;
use crate::error::{Error, Result};
use crate::store::catalog::Pack;
use crate::store::pack_format::{PackEntry, PackIndex};

/// Seals running at once at most: a writer that fills packs faster than the disk takes them waits for the
/// oldest, so no more than this many full packs' worth of dirty pages build up. Measured on the corpus's first
/// backup (2 cores, the source's reads competing for the same disk): at most 4 left the workers waiting 0.32 s
/// for seals, at most 16 only 7 ms.
pub(super) const MAX_RUNNING: usize = 16;

/// A pack being sealed.
pub(super) struct Sealing {
    pub pack: Arc<Pack>,
    work: Work,
}

enum Work {
    Running(JoinHandle<Result<()>>),
    /// No thread could be started: the seal failed.
    Done(Result<()>),
}

impl Sealing {
    /// Starts making `open` durable and then writing its index (through a temporary file in `tmp`).
    pub fn start(open: OpenPack, index_path: PathBuf, tmp: PathBuf) -> Sealing {
        let OpenPack { pack, file, len, entries, writes } = open;
        let pack_path = pack.path.clone();
        let work = std::thread::Builder::new()
            .name("seal-pack".into())
            .spawn(move || {
                // Every record reserved in the pack is written first (or failed to be).
                let _all_written = writes.gate.write().expect("not poisoned");
                if writes.failed.load(Ordering::Acquire) {
                    return Err(Error::io("seal", &pack_path, std::io::Error::other("a record could not be written")));
                }
                seal(&file, &pack_path, len, entries, &index_path, &tmp)
            })
            .map_or_else(|e| Work::Done(Err(Error::io("start a thread to seal", &pack.path, e))), Work::Running);
        Sealing { pack, work }
    }

    pub fn is_finished(&self) -> bool {
        match &self.work {
            Work::Running(handle) => handle.is_finished(),
            Work::Done(_) => true,
        }
    }

    /// Waits for the seal and says how it went.
    pub fn wait(self) -> (Arc<Pack>, Result<()>) {
        let result = match self.work {
            Work::Running(handle) => handle.join().unwrap_or_else(|_| {
                Err(Error::io("seal pack", &self.pack.path, std::io::Error::other("the sealing thread panicked")))
            }),
            Work::Done(result) => result,
        };
        (self.pack, result)
    }
}

/// The pack's bytes durable first, then its index written durably beside it: an index never names a chunk a
/// crash could lose.
fn seal(file: &File, pack_path: &Path, len: u64, entries: Vec<PackEntry>, index_path: &Path, tmp: &Path) -> Result<()> {
    file.sync_data().map_err(|e| Error::io("sync pack", pack_path, e))?;
    let index = PackIndex { pack_len: len, entries };
    let mut f = AtomicFile::create(index_path, Some(tmp)).map_err(|e| Error::io("create", index_path, e))?;
    std::io::Write::write_all(&mut f, &index.encode()).map_err(|e| Error::io("write", index_path, e))?;
    f.commit_without_dir_sync().map_err(|e| Error::io("write", index_path, e))
}
