//! The engine thread: an io_uring with up to `DEPTH` operations in flight, fed through a channel and woken
//! by an eventfd that the ring itself reads; or, where io_uring is not allowed, plain syscalls one at a time.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use io_uring::{opcode, types, IoUring};
use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Backend, Op, Request};

/// Operations in flight at most (the ring has one more entry for the wake-up read).
const DEPTH: usize = 255;
/// user_data of the eventfd read.
const WAKE: u64 = u64::MAX;

pub(crate) struct Handle {
    tx: Option<Sender<Request>>,
    wake: Arc<EventFd>,
    backend: Backend,
    thread: Option<JoinHandle<()>>,
}

fn new_eventfd() -> io::Result<EventFd> {
    Ok(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?)
}

fn signal(fd: &EventFd) {
    // A failed wake-up cannot be reported to anyone; the counter only overflows after 2^64 - 2 wake-ups.
    let _ = fd.write(1);
}

impl Handle {
    pub fn start(try_uring: bool) -> io::Result<Handle> {
        let wake = Arc::new(new_eventfd()?);
        let ring = if try_uring {
            match IoUring::new(DEPTH as u32 + 1) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("io_uring is not available ({e}); the block engine falls back to plain syscalls");
                    None
                }
            }
        } else {
            None
        };
        let backend = if ring.is_some() { Backend::IoUring } else { Backend::Sync };
        tracing::info!(?backend, "block engine started");
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake2 = wake.clone();
        let thread = std::thread::Builder::new().name("livemount-io".into()).spawn(move || match ring {
            Some(ring) => run_ring(ring, &rx, &wake2),
            None => run_sync(&rx),
        })?;
        Ok(Handle { tx: Some(tx), wake, backend, thread: Some(thread) })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Queues a request; gives it back when the engine has stopped.
    pub fn send(&self, req: Request) -> Result<(), Request> {
        let tx = self.tx.as_ref().expect("sender lives until drop");
        tx.send(req).map_err(|e| e.0)?;
        if self.backend == Backend::IoUring {
            signal(&self.wake);
        }
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.tx.take();
        signal(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request in flight and how much of it is done (reads and writes may complete in parts).
struct InFlight {
    req: Request,
    done: usize,
}

fn run_ring(mut ring: IoUring, rx: &Receiver<Request>, wake: &EventFd) {
    let mut wake_buf = Box::new([0u8; 8]);
    let mut slots: Vec<Option<InFlight>> = (0..DEPTH).map(|_| None).collect();
    let mut free: Vec<usize> = (0..DEPTH).rev().collect();
    let mut closing = false;
    let mut wake_armed = false;
    loop {
        if !wake_armed && !closing {
            let e = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8).build().user_data(WAKE);
            // SAFETY: wake_buf is boxed and outlives the ring's use of it: the loop only returns after the
            // wake read has completed (see below).
            unsafe { push(&mut ring, &e) };
            wake_armed = true;
        }
        while !free.is_empty() && !closing {
            match rx.try_recv() {
                Ok(req) => {
                    let slot = free.pop().expect("checked non-empty");
                    slots[slot] = Some(InFlight { req, done: 0 });
                    submit_slot(&mut ring, &mut slots, slot);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closing = true,
            }
        }
        if closing && free.len() == DEPTH {
            if !wake_armed {
                return;
            }
            // Complete our own eventfd read before the ring and its buffer go away.
            signal(wake);
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::error!("io_uring submit failed: {e}");
            }
            continue;
        }
        let completions: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (user_data, res) in completions {
            if user_data == WAKE {
                wake_armed = false;
                continue;
            }
            let slot = user_data as usize;
            if complete_part(&mut slots, slot, res) {
                submit_slot(&mut ring, &mut slots, slot);
            } else {
                free.push(slot);
            }
        }
    }
}

/// Pushes one entry, submitting first when the submission queue is full.
///
/// # Safety
/// Every buffer the entry points to must stay valid until its completion is reaped.
unsafe fn push(ring: &mut IoUring, entry: &io_uring::squeue::Entry) {
    loop {
        // SAFETY: forwarded from the caller.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return;
        }
        let _ = ring.submit();
    }
}

/// Submits what remains of the request in `slot`.
fn submit_slot(ring: &mut IoUring, slots: &mut [Option<InFlight>], slot: usize) {
    let f = slots[slot].as_mut().expect("slot in use");
    let fd = types::Fd(f.req.file.as_raw_fd());
    let offset = f.req.offset + f.done as u64;
    let remaining = (f.req.buf.len() - f.done).min(1 << 30) as u32;
    let entry = match f.req.op {
        // The remainder of the buffer: done <= buf.len(), so slicing cannot fail.
        Op::Read => opcode::Read::new(fd, f.req.buf[f.done..].as_mut_ptr(), remaining).offset(offset).build(),
        Op::Write => opcode::Write::new(fd, f.req.buf[f.done..].as_ptr(), remaining).offset(offset).build(),
        Op::Sync => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        Op::Punch { len } => opcode::Fallocate::new(fd, len)
            .offset(offset)
            .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .build(),
    };
    // SAFETY: the buffer and the file belong to the request, which stays in its slot until its completion
    // is reaped in run_ring.
    unsafe { push(ring, &entry.user_data(slot as u64)) };
}

/// Accounts a completion. Returns true when the request needs another submission for its remainder.
fn complete_part(slots: &mut [Option<InFlight>], slot: usize, res: i32) -> bool {
    let f = slots[slot].as_mut().expect("slot in use");
    let result: Option<io::Result<()>> = if res == -libc::EINTR || res == -libc::EAGAIN {
        None
    } else if res < 0 {
        Some(Err(io::Error::from_raw_os_error(-res)))
    } else {
        match f.req.op {
            Op::Read | Op::Write => {
                let n = res as usize;
                if n == 0 && matches!(f.req.op, Op::Read) {
                    f.req.buf[f.done..].fill(0); // past the end of the file
                    Some(Ok(()))
                } else if n == 0 && f.done < f.req.buf.len() {
                    // (An empty write writes nothing and is done, as write_all_at of nothing is.)
                    Some(Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress")))
                } else {
                    f.done += n;
                    if f.done >= f.req.buf.len() {
                        Some(Ok(()))
                    } else {
                        None
                    }
                }
            }
            Op::Sync | Op::Punch { .. } => Some(Ok(())),
        }
    };
    match result {
        None => true,
        Some(r) => {
            let f = slots[slot].take().expect("slot in use");
            let _ = f.req.done.send((r, f.req.buf));
            false
        }
    }
}

fn run_sync(rx: &Receiver<Request>) {
    for mut req in rx.iter() {
        let r = match req.op {
            Op::Read => read_full(&req.file, &mut req.buf, req.offset),
            Op::Write => req.file.write_all_at(&req.buf, req.offset),
            Op::Sync => req.file.sync_data(),
            Op::Punch { len } => {
                let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                fallocate(req.file.as_raw_fd(), mode, req.offset as libc::off_t, len as libc::off_t)
                    .map_err(io::Error::from)
            }
        };
        let _ = req.done.send((r, req.buf));
    }
}

/// pread until the buffer is full; zeros past the end of the file.
fn read_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
