//! The `backups/` folder of the FUSE view: every backup of the library as a folder of read-only
//! `disk<N>.img` files, listed afresh each time the folder is read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blockdev::fuse::{FileView, ViewFile};
use dedup::{BackupDisk, Library};

use crate::library_source::BackupFile;

/// Shows the backups of the library `library` gives (None while there is none) under `backups/`.
pub fn show(view: &FileView, library: impl Fn() -> Option<Arc<Library>> + Send + Sync + 'static) {
    // The open files of each backup shown, by backup id: a backup is opened once, when it first appears.
    type Opened = BTreeMap<String, Vec<Arc<dyn ViewFile>>>;
    let opened: Arc<Mutex<Opened>> = Arc::default();
    view.set_refresher(
        &["backups"],
        Arc::new(move || {
            let Some(lib) = library() else {
                return Vec::new();
            };
            let backups = match lib.backups() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cannot list backups: {e}");
                    return Vec::new();
                }
            };
            let mut opened = opened.lock().expect("not poisoned");
            // Forgotten backups leave the view, and their readers with them.
            opened.retain(|id, _| backups.iter().any(|m| &m.id == id));
            let mut out = Vec::new();
            for m in backups {
                if !opened.contains_key(&m.id) {
                    let files: Result<Vec<Arc<dyn ViewFile>>, _> = (0..m.disks.len())
                        .map(|d| {
                            BackupDisk::open(lib.clone(), &m, d)
                                .map(|disk| Arc::new(BackupFile::new(Arc::new(disk))) as Arc<dyn ViewFile>)
                        })
                        .collect();
                    match files {
                        Ok(f) => {
                            opened.insert(m.id.clone(), f);
                        }
                        Err(e) => {
                            tracing::error!("cannot open backup {}: {e}", m.id);
                            continue;
                        }
                    }
                }
                let files =
                    opened[&m.id].iter().enumerate().map(|(d, f)| (format!("disk{d}.img"), f.clone())).collect();
                out.push((m.id.clone(), files, mtime_of(&m.created)));
            }
            out
        }),
    );
}

/// The modification time the view gives an RFC 3339 creation time; now when it does not parse.
pub fn mtime_of(rfc3339: &str) -> SystemTime {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .unwrap_or_else(|_| SystemTime::now())
}
