//! The two stores of a pseudo-disk (private and recall), each a sparse data file laid out like the disk
//! plus its allocation map; and the compaction of a map log that has grown large, done when the disk opens.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{PseudoDisk, BLOCK, COMPACT_OVER};
use crate::alloc_log::{AllocLog, Record, RecordKind};
use crate::bitmap::Bitmap;
use crate::engine::{self, CachedRead};
use crate::error::{Error, Result};

/// One store: a sparse data file and its allocation map.
pub(super) struct Store {
    pub(super) name: &'static str,
    pub(super) data: Arc<File>,
    pub(super) log: tokio::sync::Mutex<AllocLog>,
    /// Allocation changes made since the last flush, to be logged by the next one.
    pub(super) pending: Mutex<Vec<Record>>,
    /// Unit is present in this store.
    pub(super) present: Bitmap,
    /// The file system lets reads try the page cache without waiting (`engine::read_cached`).
    cached_reads: AtomicBool,
}

impl Store {
    pub(super) fn open(
        dir: &Path,
        name: &'static str,
        unit: u32,
        units: u64,
        disk_size: u64,
    ) -> Result<(Store, Vec<Record>)> {
        let err = |op: &'static str| move |source| Error::Store { op, store: name, source };
        let path = dir.join(format!("{name}.data"));
        let open = |flags: i32| {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().read(true).write(true).create(true).truncate(false).custom_flags(flags).open(&path)
        };
        // No access-time updates: a read answered from the page cache must not start a journal transaction.
        // O_NOATIME needs the file's owner (or CAP_FOWNER); anyone else opens it plainly.
        let data = match open(libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
            other => other,
        }
        .map_err(err("open"))?;
        data.set_len(disk_size).map_err(err("size"))?;
        let (log, records) = AllocLog::open(&dir.join(format!("{name}.map")), unit).map_err(err("open map"))?;
        let present = Bitmap::new(units);
        Ok((
            Store {
                name,
                data: Arc::new(data),
                log: tokio::sync::Mutex::new(log),
                pending: Mutex::new(Vec::new()),
                present,
                cached_reads: AtomicBool::new(true),
            },
            records,
        ))
    }

    pub(super) fn note(&self, kind: RecordKind, start: u64, count: u64) {
        let mut p = self.pending.lock().expect("not poisoned");
        if let Some(last) = p.last_mut() {
            if last.kind == kind && last.start + last.count == start && last.count + count <= u64::from(u32::MAX) {
                last.count += count;
                return;
            }
        }
        p.push(Record { kind, start, count });
    }

    /// Reads from the page cache if it holds all of the range; None when it does not (or cannot tell).
    pub(super) fn read_cached(&self, pos: u64, len: usize) -> Option<Vec<u8>> {
        if !self.cached_reads.load(Ordering::Relaxed) {
            return None;
        }
        match engine::read_cached(&self.data, pos, len) {
            CachedRead::Data(d) => Some(d),
            CachedRead::Miss => None,
            CachedRead::Unsupported => {
                tracing::info!(store = self.name, "no RWF_NOWAIT reads here: every read goes through the engine");
                self.cached_reads.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    pub(super) fn io_err(&self, op: &'static str) -> impl Fn(std::io::Error) -> Error + '_ {
        move |source| Error::Store { op, store: self.name, source }
    }
}

impl PseudoDisk {
    /// Rewrites a map log that has grown large as the runs of its bitmap.
    pub(super) fn compact_maps(&self) -> Result<()> {
        let mut log = self.private.log.try_lock().expect("no one else has the disk yet");
        if log.size() > COMPACT_OVER {
            let mut records = Vec::new();
            for (start, count) in self.private.present.runs() {
                for b in start..start + count {
                    let kind = if self.private_zero.get(b) { RecordKind::Zero } else { RecordKind::Data };
                    match records.last_mut() {
                        Some(Record { kind: k, start: s, count: c }) if *k == kind && *s + *c == b => *c += 1,
                        _ => records.push(Record { kind, start: b, count: 1 }),
                    }
                }
            }
            log.rewrite(BLOCK as u32, &records).map_err(self.private.io_err("compact map"))?;
        }
        let mut log = self.recall.log.try_lock().expect("no one else has the disk yet");
        if log.size() > COMPACT_OVER {
            let records: Vec<Record> = self
                .recall
                .present
                .runs()
                .into_iter()
                .map(|(start, count)| Record { kind: RecordKind::Data, start, count })
                .collect();
            log.rewrite(self.chunk_size as u32, &records).map_err(self.recall.io_err("compact map"))?;
        }
        Ok(())
    }
}

/// Deletes a pseudo-disk's stores (unmount).
pub fn remove_stores(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
