//! Buffers for direct I/O (O_DIRECT), which needs the memory, the offset and the length of every read and write
//! aligned to the device's logical block size.

/// Alignment that direct I/O needs here (the largest logical block size in use).
pub const DIRECT_ALIGN: usize = 4096;

/// True when `n` (an offset, a length or an address) suits direct I/O.
pub(crate) fn direct_aligned(n: usize) -> bool {
    n.is_multiple_of(DIRECT_ALIGN)
}

/// True when a transfer of `buf` at `offset` suits direct I/O.
pub(crate) fn suits_direct(offset: u64, buf: &[u8]) -> bool {
    direct_aligned(offset as usize) && direct_aligned(buf.len()) && direct_aligned(buf.as_ptr() as usize)
}

/// One transfer: through `direct` when there is one and the transfer `suits` it, through the page cache
/// (`transfer(None)`) otherwise, and through the page cache again when the direct one is refused after all
/// (some file systems accept O_DIRECT at open but not for every transfer). The flag says whether a direct
/// transfer was refused, so the caller can stop trying.
pub(crate) fn direct_or_cached<T>(
    direct: Option<&std::fs::File>,
    suits: bool,
    mut transfer: impl FnMut(Option<&std::fs::File>) -> std::io::Result<T>,
) -> (std::io::Result<T>, bool) {
    let Some(direct) = direct.filter(|_| suits) else { return (transfer(None), false) };
    match transfer(Some(direct)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (transfer(None), true),
        result => (result, false),
    }
}

/// A reusable buffer whose bytes start at a `DIRECT_ALIGN` boundary.
#[derive(Default)]
pub(crate) struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Makes the buffer `len` bytes long and gives them (a reused buffer keeps its old bytes).
    pub fn resize(&mut self, len: usize) -> &mut [u8] {
        if self.vec.len() < len + DIRECT_ALIGN {
            self.vec = vec![0; len + DIRECT_ALIGN];
            // The heap block does not move while the vector is not resized, so the offset stays right.
            self.start = self.vec.as_ptr().align_offset(DIRECT_ALIGN);
        }
        self.len = len;
        &mut self.vec[self.start..self.start + len]
    }

    pub fn bytes(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Empties the buffer, keeping its memory (already faulted in: refilling it costs no page faults).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `more`, keeping the bytes already there (a buffer that must grow is copied to a larger one).
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        let len = self.len;
        self.reserve(len + more.len());
        self.vec[self.start + len..self.start + len + more.len()].copy_from_slice(more);
        self.len += more.len();
    }

    /// The bytes followed by zeros up to the next `DIRECT_ALIGN` boundary: a whole direct write of them.
    pub fn padded(&mut self) -> &[u8] {
        let (len, padded) = (self.len, self.len.next_multiple_of(DIRECT_ALIGN));
        self.reserve(padded);
        self.vec[self.start + len..self.start + padded].fill(0);
        &self.vec[self.start..self.start + padded]
    }

    /// Makes room for `capacity` bytes, keeping the ones there are; it grows by an eighth at least, so that
    /// appending a record at a time copies the buffer rarely.
    pub fn reserve(&mut self, capacity: usize) {
        if self.vec.len() >= capacity + DIRECT_ALIGN {
            return;
        }
        let mut grown = AlignedBuf::default();
        grown.resize(capacity.max(self.vec.len() + self.vec.len() / 8));
        grown.vec[grown.start..grown.start + self.len].copy_from_slice(self.bytes());
        grown.len = self.len;
        *self = grown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_start_aligned_whatever_the_length() {
        let mut buf = AlignedBuf::default();
        for len in [0, 1, 4095, 4096, 65536, 100_000, 10] {
            let b = buf.resize(len);
            assert_eq!(b.len(), len);
            assert!(direct_aligned(b.as_ptr() as usize));
            b.fill(7);
            assert!(buf.bytes().iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn appending_keeps_the_bytes_and_pads_with_zeros() {
        let mut buf = AlignedBuf::default();
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let part = vec![i + 1; 1000 + usize::from(i) * 37];
            buf.extend_from_slice(&part);
            expected.extend_from_slice(&part);
            assert_eq!(buf.bytes(), &expected[..]);
            assert!(direct_aligned(buf.bytes().as_ptr() as usize));
        }
        let len = buf.len();
        let padded = buf.padded();
        assert!(direct_aligned(padded.len()) && padded.len() >= len && padded.len() < len + DIRECT_ALIGN);
        assert_eq!(&padded[..len], &expected[..]);
        assert!(padded[len..].iter().all(|&b| b == 0));
        buf.clear();
        buf.extend_from_slice(b"again");
        assert_eq!(buf.bytes(), b"again");
    }
}
