//! Outgoing PDUs gathered into batches, each sent with as few vectored writes as the socket allows.
//!
//! A batch keeps the small parts of its PDUs (headers, short data segments, padding, digests) together in
//! one buffer, and the large data segments (Data-In of a read) by reference: the read buffer is never
//! copied on its way to the socket, and many PDUs cost one `writev` rather than a write each.

use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::pdu::{Digests, Pdu};

/// Data segments up to this size are copied next to their header: cheaper than one more iovec.
const INLINE_DATA: usize = 1024;
/// iovecs handed to one `writev` (well under IOV_MAX).
const IOVECS_PER_WRITE: usize = 64;
/// A batch this large is sent before more PDUs are added to it.
const BATCH_BYTES: usize = 4 << 20;
const BATCH_PIECES: usize = 256;

/// One part of the batch, in wire order.
enum Piece {
    /// A range of `Batch::small`.
    Small(Range<usize>),
    /// A data segment, shared with whoever produced it.
    Data(Bytes),
}

/// PDUs ready to go out, in order.
#[derive(Default)]
pub struct Batch {
    small: Vec<u8>,
    pieces: Vec<Piece>,
    bytes: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// True when the batch should be sent before it takes more.
    pub fn is_full(&self) -> bool {
        self.bytes >= BATCH_BYTES || self.pieces.len() >= BATCH_PIECES
    }

    /// Appends one PDU (its length fields are set here).
    pub fn push(&mut self, pdu: &mut Pdu, digests: Digests) {
        let start = self.small.len();
        pdu.encode_header(&mut self.small, digests);
        let (trailer, n) = pdu.data_trailer(digests);
        if pdu.data.len() <= INLINE_DATA {
            self.small.extend_from_slice(&pdu.data);
            self.small.extend_from_slice(&trailer[..n]);
            self.push_small(start);
        } else {
            self.push_small(start);
            self.bytes += pdu.data.len();
            self.pieces.push(Piece::Data(pdu.data.clone()));
            let start = self.small.len();
            self.small.extend_from_slice(&trailer[..n]);
            self.push_small(start);
        }
    }

    /// Records `small[start..]` as the next piece, joined to the previous piece when that one ends there.
    fn push_small(&mut self, start: usize) {
        let end = self.small.len();
        if start == end {
            return;
        }
        self.bytes += end - start;
        if let Some(Piece::Small(r)) = self.pieces.last_mut() {
            if r.end == start {
                r.end = end;
                return;
            }
        }
        self.pieces.push(Piece::Small(start..end));
    }

    fn piece(&self, i: usize) -> &[u8] {
        match &self.pieces[i] {
            Piece::Small(r) => &self.small[r.clone()],
            Piece::Data(b) => b,
        }
    }

    /// Writes the whole batch and empties it (keeping its buffers for the next one).
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        // Position in the batch: piece index and bytes of it already written.
        let (mut index, mut offset) = (0usize, 0usize);
        while index < self.pieces.len() {
            let mut slices = Vec::with_capacity(IOVECS_PER_WRITE);
            slices.push(IoSlice::new(&self.piece(index)[offset..]));
            for i in index + 1..self.pieces.len().min(index + IOVECS_PER_WRITE) {
                slices.push(IoSlice::new(self.piece(i)));
            }
            let mut n = w.write_vectored(&slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let left = self.piece(index).len() - offset;
                if n < left {
                    offset += n;
                    break;
                }
                n -= left;
                index += 1;
                offset = 0;
            }
        }
        self.small.clear();
        self.pieces.clear();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::TargetOp;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most `step` bytes per write, vectored or not: every partial-write path of `write_to`.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A batch puts on the wire exactly the PDUs' encodings, one after the other, whatever the digests,
    /// the data lengths (inline, shared, padded) and however little the writer takes at a time.
    #[test]
    fn batch_is_the_concatenation_of_encodings() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for digests in [Digests::default(), Digests { header: true, data: true }] {
            for step in [1usize, 7, 100, 4096, usize::MAX] {
                let mut batch = Batch::default();
                let mut expect = Vec::new();
                for (k, len) in [0usize, 1, 5, 1024, 1025, 4099, 262_144, 3].into_iter().enumerate() {
                    let mut p = Pdu::new(TargetOp::DataIn);
                    p.set_itt(k as u32);
                    p.data = (0..len).map(|i| (i * 7 + k) as u8).collect::<Vec<u8>>().into();
                    batch.push(&mut p, digests);
                    expect.extend_from_slice(&p.encode(digests));
                }
                let mut w = Trickle { got: Vec::new(), step };
                rt.block_on(batch.write_to(&mut w)).unwrap();
                assert!(w.got == expect, "digests {digests:?} step {step}");
                assert!(batch.is_empty());
            }
        }
    }
}
