//! The block engine: positioned reads, writes, data syncs and hole punches on the store files, run on a
//! dedicated thread and awaited from async code.
//!
//! The thread drives an io_uring (`ring.rs`). io_uring is probed once when the engine starts; where the
//! kernel refuses it (old kernels, seccomp), the same thread serves requests with plain syscalls instead,
//! and the choice is logged. Buffers are owned by the request while it is in flight and handed back with
//! the result, so a caller that stops waiting can never leave the kernel writing into freed memory.
//!
//! Reads the page cache can serve at once skip the thread: `read_cached` (`cached.rs`) tries them on the
//! caller's thread first.

mod cached;
mod ring;

pub use cached::{read_cached, CachedRead};

use std::fs::File;
use std::io;
use std::sync::Arc;

use tokio::sync::oneshot;

/// What an operation does.
#[derive(Debug)]
pub(crate) enum Op {
    /// Fill the buffer from `offset`; bytes past the end of the file read as zeros.
    Read,
    /// Write the whole buffer at `offset`.
    Write,
    /// fdatasync.
    Sync,
    /// Deallocate `len` bytes at `offset` (they read back as zeros).
    Punch { len: u64 },
}

/// One request to the engine thread.
pub(crate) struct Request {
    pub op: Op,
    pub file: Arc<File>,
    pub offset: u64,
    pub buf: Vec<u8>,
    pub done: oneshot::Sender<(io::Result<()>, Vec<u8>)>,
}

/// Which backend the engine thread uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Sync,
}

/// A handle to the engine thread; cheap to clone. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<ring::Handle>,
}

impl Engine {
    /// Starts the engine thread, on io_uring when the kernel allows it.
    pub fn start() -> io::Result<Engine> {
        Ok(Engine { inner: Arc::new(ring::Handle::start(true)?) })
    }

    /// Starts an engine on plain syscalls (the fallback; also used to check io_uring against it).
    pub fn start_sync() -> io::Result<Engine> {
        Ok(Engine { inner: Arc::new(ring::Handle::start(false)?) })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend()
    }

    async fn submit(&self, op: Op, file: &Arc<File>, offset: u64, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (tx, rx) = oneshot::channel();
        let req = Request { op, file: file.clone(), offset, buf, done: tx };
        if let Err(req) = self.inner.send(req) {
            return (Err(io::Error::other("the block engine has stopped")), req.buf);
        }
        rx.await.unwrap_or_else(|_| (Err(io::Error::other("the block engine dropped a request")), Vec::new()))
    }

    /// Reads `len` bytes at `offset` into a new buffer.
    pub async fn read(&self, file: &Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let (r, buf) = self.submit(Op::Read, file, offset, vec![0u8; len]).await;
        r.map(|()| buf)
    }

    /// Writes `buf` at `offset`; gives the buffer back.
    pub async fn write(&self, file: &Arc<File>, offset: u64, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let (r, buf) = self.submit(Op::Write, file, offset, buf).await;
        r.map(|()| buf)
    }

    /// Makes the file's written data durable (fdatasync).
    pub async fn sync(&self, file: &Arc<File>) -> io::Result<()> {
        self.submit(Op::Sync, file, 0, Vec::new()).await.0
    }

    /// Deallocates a range of the file (it reads back as zeros).
    pub async fn punch_hole(&self, file: &Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        self.submit(Op::Punch { len }, file, offset, Vec::new()).await.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    proptest::proptest! {
        // Two runs of up to 400 operations, as one run of 400 before; a failure shrinks to the fewest.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2))]

        /// The same random operations through io_uring and through plain syscalls give identical files.
        #[test]
        fn io_uring_and_sync_backends_agree(ops in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..=400)) {
            backends_agree(&ops);
        }
    }

    fn backends_agree(ops: &[u64]) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let open = |name: &str| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.path().join(name))
                    .unwrap();
                f.set_len(1 << 20).unwrap();
                Arc::new(f)
            };
            let (fa, fb) = (open("a"), open("b"));
            let (ea, eb) = (Engine::start().unwrap(), Engine::start_sync().unwrap());
            assert_eq!(ea.backend(), Backend::IoUring, "io_uring is usable on this kernel");
            for (i, &x) in ops.iter().enumerate() {
                let i = i as u64;
                let off = (x >> 20) % (1 << 20);
                let len = ((x >> 8) % 20000).min((1 << 20) - off) as usize;
                match i % 5 {
                    0..=2 => {
                        let data: Vec<u8> = (0..len).map(|k| (k as u64 ^ i) as u8).collect();
                        let (a, b) = tokio::join!(ea.write(&fa, off, data.clone()), eb.write(&fb, off, data));
                        a.unwrap();
                        b.unwrap();
                    }
                    3 => {
                        let (a, b) = tokio::join!(ea.read(&fa, off, len), eb.read(&fb, off, len));
                        assert_eq!(a.unwrap(), b.unwrap());
                    }
                    _ => {
                        let (a, b) =
                            tokio::join!(ea.punch_hole(&fa, off & !4095, 8192), eb.punch_hole(&fb, off & !4095, 8192));
                        a.unwrap();
                        b.unwrap();
                    }
                }
            }
            ea.sync(&fa).await.unwrap();
            // Many reads in flight at once.
            let tasks: Vec<_> = (0..64u64)
                .map(|k| {
                    let (e, f) = (ea.clone(), fa.clone());
                    tokio::spawn(async move { e.read(&f, k * 4096, 4096).await })
                })
                .collect();
            for (k, t) in tasks.into_iter().enumerate() {
                let mut expect = vec![0u8; 4096];
                fb.read_exact_at(&mut expect, k as u64 * 4096).unwrap();
                assert_eq!(t.await.unwrap().unwrap(), expect);
            }
            // Reading past the end of the file gives zeros.
            assert_eq!(ea.read(&fa, (1 << 20) - 10, 20).await.unwrap()[10..], [0u8; 10]);
        });
    }
}
