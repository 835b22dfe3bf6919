//! The FUSE file view: disk images as files, so that `dd`, `cmp`, `losetup -P` and `mount` work on them.
//!
//! `FileView` is a small tree of folders and disk files that the appliance fills (`backups/<id>/disk0.img`,
//! `mounts/<id>/disk0.img`); `fs.rs` serves it through the kernel's FUSE with fuser. A file is anything that
//! implements `ViewFile`: a pseudo-disk (read-write), or a backup disk read straight from the library
//! (read-only). Files are opened in direct I/O mode: every read and write reaches the pseudo-disk, so the
//! iSCSI target and the file view always see the same bytes.

mod fs;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use fs::{mount, MountedView};

/// A boxed future, as the file view's async operations return.
pub use crate::source::BoxFuture;

/// A disk image file of the view. Errors are errno values.
pub trait ViewFile: Send + Sync {
    fn size(&self) -> u64;
    fn writable(&self) -> bool;
    fn read(&self, offset: u64, len: usize) -> BoxFuture<Result<Vec<u8>, i32>>;
    fn write(&self, _offset: u64, _data: Vec<u8>) -> BoxFuture<Result<(), i32>> {
        Box::pin(async { Err(libc::EROFS) })
    }
    fn flush(&self) -> BoxFuture<Result<(), i32>> {
        Box::pin(async { Ok(()) })
    }
    /// Deallocates a range: it reads as zeros afterwards.
    fn discard(&self, _offset: u64, _len: u64) -> BoxFuture<Result<(), i32>> {
        Box::pin(async { Err(libc::EROFS) })
    }
}

/// `PseudoDisk`'s operations take `Arc<Self>`; the view holds pseudo-disks through this wrapper.
pub struct DiskFile(pub Arc<crate::PseudoDisk>);

impl ViewFile for DiskFile {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn writable(&self) -> bool {
        !self.0.is_read_only()
    }
    fn read(&self, offset: u64, len: usize) -> BoxFuture<Result<Vec<u8>, i32>> {
        let d = self.0.clone();
        Box::pin(async move { d.read(offset, len).await.map_err(|e| e.errno()) })
    }
    fn write(&self, offset: u64, data: Vec<u8>) -> BoxFuture<Result<(), i32>> {
        let d = self.0.clone();
        // The view's buffer becomes the write's without a copy.
        Box::pin(async move { d.write(offset, bytes::Bytes::from(data), false).await.map_err(|e| e.errno()) })
    }
    fn flush(&self) -> BoxFuture<Result<(), i32>> {
        let d = self.0.clone();
        Box::pin(async move { d.flush().await.map_err(|e| e.errno()) })
    }
    fn discard(&self, offset: u64, len: u64) -> BoxFuture<Result<(), i32>> {
        let d = self.0.clone();
        Box::pin(async move { d.unmap(offset, len).await.map_err(|e| e.errno()) })
    }
}

/// Lists the children of a refreshed folder: (name, files in it, time stamp).
pub type Refresher = Arc<dyn Fn() -> Vec<(String, Vec<(String, Arc<dyn ViewFile>)>, SystemTime)> + Send + Sync>;

pub(crate) enum NodeKind {
    Dir(BTreeMap<String, u64>),
    File(Arc<dyn ViewFile>),
}

pub(crate) struct Node {
    pub parent: u64,
    pub kind: NodeKind,
    pub mtime: SystemTime,
}

pub const ROOT_INO: u64 = 1;
/// How often a refreshed folder is listed again at most.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The tree the view shows.
pub struct FileView {
    pub(crate) tree: Mutex<Tree>,
}

pub(crate) struct Tree {
    pub nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    refreshers: BTreeMap<u64, (Refresher, Option<Instant>)>,
}

impl FileView {
    pub fn new() -> Arc<FileView> {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT_INO,
            Node { parent: ROOT_INO, kind: NodeKind::Dir(BTreeMap::new()), mtime: SystemTime::now() },
        );
        Arc::new(FileView { tree: Mutex::new(Tree { nodes, next_ino: ROOT_INO + 1, refreshers: BTreeMap::new() }) })
    }

    /// Adds a file at `path` (folders are created as needed).
    pub fn add_file(&self, path: &[&str], file: Arc<dyn ViewFile>, mtime: SystemTime) {
        let mut t = self.tree.lock().expect("not poisoned");
        let (name, dirs) = path.split_last().expect("a path has a name");
        let parent = t.make_dirs(dirs, mtime);
        t.insert(parent, name, NodeKind::File(file), mtime);
    }

    /// Creates a folder (and its parents).
    pub fn add_dir(&self, path: &[&str]) -> u64 {
        self.tree.lock().expect("not poisoned").make_dirs(path, SystemTime::now())
    }

    /// Removes the entry at `path` with everything below it.
    pub fn remove(&self, path: &[&str]) {
        let mut t = self.tree.lock().expect("not poisoned");
        if let Some(ino) = t.resolve(path) {
            t.remove_ino(ino);
        }
    }

    /// Makes the folder at `path` mirror what `refresher` lists, looked up again at most once a second.
    pub fn set_refresher(&self, path: &[&str], refresher: Refresher) {
        let mut t = self.tree.lock().expect("not poisoned");
        let ino = t.make_dirs(path, SystemTime::now());
        t.refreshers.insert(ino, (refresher, None));
    }

    /// Brings a refreshed folder up to date (called before lookups and listings in it).
    pub(crate) fn refresh(&self, dir: u64) {
        let refresher = {
            let mut t = self.tree.lock().expect("not poisoned");
            match t.refreshers.get_mut(&dir) {
                Some((r, last)) if last.is_none_or(|l| l.elapsed() >= REFRESH_EVERY) => {
                    *last = Some(Instant::now());
                    r.clone()
                }
                _ => return,
            }
        };
        let listing = refresher(); // outside the lock: it may read the library
        let mut t = self.tree.lock().expect("not poisoned");
        let existing: Vec<(String, u64)> = match t.nodes.get(&dir) {
            Some(Node { kind: NodeKind::Dir(children), .. }) => children.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            _ => return,
        };
        for (name, ino) in &existing {
            if !listing.iter().any(|(n, _, _)| n == name) {
                t.remove_ino(*ino);
            }
        }
        for (name, files, mtime) in listing {
            if existing.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let sub = t.insert(dir, &name, NodeKind::Dir(BTreeMap::new()), mtime);
            for (file_name, file) in files {
                t.insert(sub, &file_name, NodeKind::File(file), mtime);
            }
        }
    }
}

impl Tree {
    fn insert(&mut self, parent: u64, name: &str, kind: NodeKind, mtime: SystemTime) -> u64 {
        if let Some(old) = self.child(parent, name) {
            self.remove_ino(old);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node { parent, kind, mtime });
        if let Some(Node { kind: NodeKind::Dir(children), .. }) = self.nodes.get_mut(&parent) {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    fn make_dirs(&mut self, path: &[&str], mtime: SystemTime) -> u64 {
        let mut cur = ROOT_INO;
        for name in path {
            cur = match self.child(cur, name) {
                Some(ino) if matches!(self.nodes[&ino].kind, NodeKind::Dir(_)) => ino,
                _ => self.insert(cur, name, NodeKind::Dir(BTreeMap::new()), mtime),
            };
        }
        cur
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.nodes.get(&parent)?.kind {
            NodeKind::Dir(children) => children.get(name).copied(),
            NodeKind::File(_) => None,
        }
    }

    fn resolve(&self, path: &[&str]) -> Option<u64> {
        path.iter().try_fold(ROOT_INO, |cur, name| self.child(cur, name))
    }

    fn remove_ino(&mut self, ino: u64) {
        let Some(node) = self.nodes.remove(&ino) else {
            return;
        };
        if let NodeKind::Dir(children) = &node.kind {
            for child in children.values() {
                self.remove_ino(*child);
            }
        }
        self.refreshers.remove(&ino);
        if let Some(Node { kind: NodeKind::Dir(children), .. }) = self.nodes.get_mut(&node.parent) {
            children.retain(|_, v| *v != ino);
        }
    }
}
