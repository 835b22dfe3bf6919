//! The fuser adapter of the file view. Callbacks run on fuser's session thread and never block on I/O:
//! reads, writes, syncs and discards are spawned on the tokio runtime, which replies when done.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

use super::{FileView, NodeKind, ViewFile};

const TTL: Duration = Duration::from_secs(1);
/// Largest read or write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;
/// Background requests (readahead, asynchronous direct I/O) the kernel keeps in flight to the daemon.
const MAX_BACKGROUND: u16 = 64;

struct ViewFs {
    view: Arc<FileView>,
    rt: tokio::runtime::Handle,
}

/// A mounted file view; unmounted when dropped.
pub struct MountedView {
    _session: fuser::BackgroundSession,
}

/// Mounts `view` at `mountpoint`. Needs /dev/fuse and the right to mount (root).
pub fn mount(view: Arc<FileView>, mountpoint: &Path, rt: tokio::runtime::Handle) -> std::io::Result<MountedView> {
    let options = [
        MountOption::FSName("livemount".into()),
        MountOption::Subtype("livemount".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    let session = fuser::spawn_mount2(ViewFs { view, rt }, mountpoint, &options)?;
    Ok(MountedView { _session: session })
}

impl ViewFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let t = self.view.tree.lock().expect("not poisoned");
        let node = t.nodes.get(&ino)?;
        let (kind, size, perm, nlink) = match &node.kind {
            NodeKind::Dir(children) => (FileType::Directory, 0, 0o755, 2 + children.len() as u32),
            NodeKind::File(f) => (FileType::RegularFile, f.size(), if f.writable() { 0o644 } else { 0o444 }, 1),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn file(&self, ino: u64) -> Option<Arc<dyn ViewFile>> {
        let t = self.view.tree.lock().expect("not poisoned");
        match &t.nodes.get(&ino)?.kind {
            NodeKind::File(f) => Some(f.clone()),
            NodeKind::Dir(_) => None,
        }
    }
}

impl Filesystem for ViewFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Asynchronous direct I/O: the O_DIRECT reads a program submits together (io_submit, io_uring) reach
        // the daemon together, each answered as soon as it is done; without it the kernel sends them one at a
        // time, so a queue of 16 reads is served as a queue of one. They travel as background requests: room
        // for as many as the daemon reads at once.
        if config.add_capabilities(fuser::consts::FUSE_ASYNC_DIO).is_err() {
            tracing::info!("the kernel's FUSE has no asynchronous direct I/O: O_DIRECT reads arrive one at a time");
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        self.view.refresh(parent);
        let Some(name) = name.to_str() else {
            return reply.error(libc::ENOENT);
        };
        let child = self.view.tree.lock().expect("not poisoned").child(parent, name);
        match child.and_then(|ino| self.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(libc::ENOENT);
        };
        // A disk has the size it has: truncating to any other size is refused (O_TRUNC of dd included).
        if size.is_some_and(|s| s != attr.size) {
            return reply.error(libc::EPERM);
        }
        reply.attr(&TTL, &attr)
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let Some(file) = self.file(ino) else {
            return reply.error(libc::EISDIR);
        };
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if wants_write && !file.writable() {
            return reply.error(libc::EROFS);
        }
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO)
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(file) = self.file(ino) else {
            return reply.error(libc::ENOENT);
        };
        let offset = offset.max(0) as u64;
        let len = u64::from(size).min(file.size().saturating_sub(offset)) as usize;
        if len == 0 {
            return reply.data(&[]);
        }
        self.rt.spawn(async move {
            match file.read(offset, len).await {
                Ok(data) => reply.data(&data),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(file) = self.file(ino) else {
            return reply.error(libc::ENOENT);
        };
        let offset = offset.max(0) as u64;
        if offset + data.len() as u64 > file.size() {
            return reply.error(libc::ENOSPC); // a disk does not grow
        }
        let data = data.to_vec();
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.rt.spawn(async move {
            let len = data.len() as u32;
            let mut r = file.write(offset, data).await;
            if r.is_ok() && sync {
                r = file.flush().await;
            }
            match r {
                Ok(()) => reply.written(len),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let Some(file) = self.file(ino) else {
            return reply.error(libc::ENOENT);
        };
        self.rt.spawn(async move {
            match file.flush().await {
                Ok(()) => reply.ok(),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.file(ino) else {
            return reply.error(libc::ENOENT);
        };
        let (offset, length) = (offset.max(0) as u64, length.max(0) as u64);
        if offset + length > file.size() {
            return reply.error(libc::ENOSPC);
        }
        let discard = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if !discard {
            return reply.ok(); // allocating space of a disk that has it already
        }
        self.rt.spawn(async move {
            match file.discard(offset, length).await {
                Ok(()) => reply.ok(),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        self.view.refresh(ino);
        let entries: Vec<(u64, FileType, String)> = {
            let t = self.view.tree.lock().expect("not poisoned");
            let Some(node) = t.nodes.get(&ino) else {
                return reply.error(libc::ENOENT);
            };
            let NodeKind::Dir(children) = &node.kind else {
                return reply.error(libc::ENOTDIR);
            };
            let mut v =
                vec![(ino, FileType::Directory, ".".to_string()), (node.parent, FileType::Directory, "..".to_string())];
            for (name, child) in children {
                let kind = match t.nodes.get(child).map(|n| &n.kind) {
                    Some(NodeKind::Dir(_)) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                v.push((*child, kind, name.clone()));
            }
            v
        };
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }
}
