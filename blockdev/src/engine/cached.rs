//! Reads straight from the page cache, on the caller's thread.
//!
//! `preadv2` with `RWF_NOWAIT` copies what the page cache holds and never waits for the disk: when part of
//! the range is not cached it fails with EAGAIN or reads short. A read the cache can serve (every read of a
//! warm recall store) thus costs one syscall instead of a request to the engine thread and the two wake-ups
//! of its round trip. Any other read goes to the engine as before.

use std::fs::File;
use std::os::fd::AsRawFd;

/// What a try at the page cache gave.
#[derive(Debug, PartialEq, Eq)]
pub enum CachedRead {
    /// All of the range, from the page cache.
    Data(Vec<u8>),
    /// Some of the range is not cached (or the read failed): read it through the engine.
    Miss,
    /// The file system does not offer RWF_NOWAIT reads on this file: do not try again.
    Unsupported,
}

/// Reads `len` bytes at `offset` of `file` if the page cache holds all of them, without waiting for I/O.
pub fn read_cached(file: &File, offset: u64, len: usize) -> CachedRead {
    let Ok(offset) = libc::off_t::try_from(offset) else { return CachedRead::Miss };
    // Not zeroed first: the kernel fills it, and only a complete read is kept.
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: the iovec points to `len` bytes of capacity owned by `buf`, alive for the whole call; the
    // kernel only writes into it. The descriptor is owned by `file`, borrowed for the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => CachedRead::Unsupported,
            _ => CachedRead::Miss,
        };
    }
    if n as usize != len {
        return CachedRead::Miss;
    }
    // SAFETY: the kernel wrote all `len` bytes (n == len), within the capacity.
    unsafe { buf.set_len(len) };
    CachedRead::Data(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cached_data_reads_back() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..20000u32).map(|i| (i * 13) as u8).collect();
        f.write_all(&data).unwrap();
        // Just written: the page cache holds it (or the file system offers no NOWAIT reads at all).
        match read_cached(&f, 100, 10000) {
            CachedRead::Data(d) => assert_eq!(d, data[100..10100]),
            other => assert_eq!(other, CachedRead::Unsupported),
        }
        // Past the end of the file: short, never taken as data.
        assert_eq!(read_cached(&f, 19990, 20), CachedRead::Miss);
    }
}
