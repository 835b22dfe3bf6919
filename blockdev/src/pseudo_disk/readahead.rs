//! Readahead: which reads belong to a sequential stream, and how far ahead of each stream the pseudo-disk
//! recalls.
//!
//! Several readers may stream at once (a guest's file copy and its page-ins, or several files through the
//! FUSE view), so streams are tracked apart: up to `STREAMS` of them, the least recently used giving way to
//! a new one. A read continues a stream when it starts near where the stream's reads have got to (an
//! initiator with many commands outstanding sends them in order, but they reach the disk a little out of
//! order). Once a stream has read `MIN_STREAM` bytes (small files and metadata never get there), each
//! continuation doubles its window (at least twice the read), up to half of what the stream has read so far
//! (what a stream overshoots when it stops) and at most `MAX_WINDOW`; a read that continues no
//! stream starts a new one with no window, so random readers recall nothing ahead. A stream that stops is
//! forgotten once newer ones take its place.
//!
//! This file only decides; `recall.rs` recalls the chunks, within the source's bound on reads in flight.

use std::ops::Range;

/// Sequential streams tracked at once.
const STREAMS: usize = 16;
/// A read this far before or after where a stream has got to (or its window, when larger) continues it.
const SLACK: u64 = 1 << 20;
/// A stream is read ahead of once it has read this much: a small file read whole, or two blocks of metadata
/// next to each other, recall nothing they do not read. (Measured on a guest's boot: streams from 256 KiB
/// on, windows of half the stream, recalled 14% of the disk's data and prepared the guest in 25 s; from
/// 1 MiB on, whole-stream windows, 16% and 31 s; from the second read on, 18% and 25 s.)
const MIN_STREAM: u64 = 256 << 10;
/// The largest window: enough to keep a far-away store's requests in flight, small enough for memory.
pub(super) const MAX_WINDOW: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    /// Where the stream began.
    start: u64,
    /// Where the stream's reads have got to (the furthest end of a read so far).
    next: u64,
    /// Bytes recalled ahead of `next`; 0 until the stream's second read.
    window: u64,
    /// The first chunk not yet asked for ahead of this stream.
    ahead_to: u64,
    /// When the stream was last used (a counter), for choosing which one gives way.
    used: u64,
    live: bool,
}

/// The streams of one pseudo-disk.
#[derive(Debug, Default)]
pub(super) struct Streams {
    slots: [Stream; STREAMS],
    clock: u64,
}

/// A stream's claim on chunks to recall ahead: `chunks`, of which the caller reports how far it got.
pub(super) struct Ahead {
    slot: usize,
    pub chunks: Range<u64>,
}

impl Streams {
    /// Notes a read of `len` bytes at `offset` of a disk of `chunk_size` chunks and `chunks` chunks; returns
    /// the chunks to recall ahead of it, if it continues a stream. The caller reports with `asked` how far it
    /// got, so that chunks it could not ask for now are asked for by the stream's next read.
    pub fn on_read(&mut self, offset: u64, len: u64, chunk_size: u64, chunks: u64) -> Option<Ahead> {
        self.clock += 1;
        let end = offset + len;
        let continues = |s: &Stream| {
            let slack = SLACK.max(s.window);
            s.live && offset + slack >= s.next && offset <= s.next + slack
        };
        let Some(slot) = self.slots.iter().position(continues) else {
            let slot = self.oldest();
            self.slots[slot] =
                Stream { start: offset, next: end, window: 0, ahead_to: 0, used: self.clock, live: true };
            return None;
        };
        let s = &mut self.slots[slot];
        s.used = self.clock;
        if end > s.next {
            // A read that moves the stream on widens its window; one behind it (out of order, or a read
            // tried again) changes nothing.
            s.next = end;
            let proven = s.next - s.start.min(s.next);
            if proven >= MIN_STREAM {
                s.window = (s.window * 2).max(2 * len).min(proven / 2).min(MAX_WINDOW);
            }
        }
        if s.window == 0 {
            return None;
        }
        let from = s.ahead_to.max(s.next.div_ceil(chunk_size));
        let to = (s.next + s.window).div_ceil(chunk_size).min(chunks);
        (from < to).then_some(Ahead { slot, chunks: from..to })
    }

    /// Reports that the chunks of `ahead` before `reached` have been asked for.
    pub fn asked(&mut self, ahead: &Ahead, reached: u64) {
        let s = &mut self.slots[ahead.slot];
        s.ahead_to = s.ahead_to.max(reached);
    }

    fn oldest(&self) -> usize {
        (0..STREAMS).min_by_key(|&i| (self.slots[i].live, self.slots[i].used)).expect("STREAMS > 0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 64 << 10;
    const CHUNKS: u64 = 1 << 20;

    fn read(s: &mut Streams, offset: u64, len: u64) -> Option<Range<u64>> {
        let ahead = s.on_read(offset, len, CHUNK, CHUNKS)?;
        s.asked(&ahead, ahead.chunks.end);
        Some(ahead.chunks)
    }

    #[test]
    fn a_sequential_reader_gets_a_window_that_grows_to_the_limit() {
        let mut s = Streams::default();
        let mib = 1 << 20;
        assert_eq!(read(&mut s, 0, mib), None, "one read is no stream yet");
        let first = read(&mut s, mib, mib).expect("the second read continues the stream");
        assert_eq!(first, 32..48, "half of what the stream has read");
        let mut last = first;
        for i in 2..200 {
            if let Some(r) = read(&mut s, i * mib, mib) {
                assert_eq!(r.start, last.end, "each chunk is asked for once");
                last = r;
            }
        }
        assert_eq!(last.end, (200 * mib + MAX_WINDOW) / CHUNK, "the window stops at its limit");
    }

    #[test]
    fn random_readers_recall_nothing_ahead() {
        let mut s = Streams::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut asked = 0;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x % (CHUNKS * CHUNK / 4096)) * 4096;
            asked += read(&mut s, offset, 4096).map_or(0, |r| r.end - r.start);
        }
        assert!(asked < 10_000 / 50, "random 4 KiB reads asked for {asked} chunks ahead");
    }

    #[test]
    fn interleaved_streams_each_keep_their_window_and_out_of_order_reads_do_not_reset_them() {
        let mut s = Streams::default();
        let (a, b) = (0, 1 << 30);
        let k = 128 << 10;
        for i in 0..8 {
            read(&mut s, a + i * k, k);
            read(&mut s, b + i * k, k);
        }
        // A read just behind stream a (answered out of order) neither starts a stream nor shrinks a's.
        assert_eq!(read(&mut s, a + 6 * k, k), None);
        let next_a = read(&mut s, a + 8 * k, k).expect("stream a goes on");
        let next_b = read(&mut s, b + 8 * k, k).expect("stream b goes on");
        assert!(next_a.end > (a + 8 * k + 4 * k) / CHUNK && next_b.end > (b + 8 * k + 4 * k) / CHUNK);
    }

    #[test]
    fn chunks_not_asked_for_are_asked_for_by_the_next_read() {
        let mut s = Streams::default();
        let k = 256 << 10;
        assert!(s.on_read(0, k, CHUNK, CHUNKS).is_none(), "one read is no stream");
        let ahead = s.on_read(k, k, CHUNK, CHUNKS).expect("a stream of 512 KiB");
        assert_eq!(ahead.chunks, 8..12, "half of what the stream has read, ahead of it");
        s.asked(&ahead, 10); // only two could be asked for
        let again = s.on_read(k, k, CHUNK, CHUNKS).expect("the same read again");
        assert_eq!(again.chunks, 10..12, "from where the last one stopped");
    }

    #[test]
    fn small_streams_are_not_read_ahead_of() {
        let mut s = Streams::default();
        assert!(s.on_read(0, 4096, CHUNK, CHUNKS).is_none());
        assert!(s.on_read(4096, 4096, CHUNK, CHUNKS).is_none(), "two blocks next to each other");
        assert!(s.on_read(8192, 128 << 10, CHUNK, CHUNKS).is_none(), "a small file read whole");
    }

    #[test]
    fn the_window_ends_at_the_disk_end() {
        let mut s = Streams::default();
        s.on_read(0, 512 << 10, CHUNK, 20);
        let ahead = s.on_read(512 << 10, 512 << 10, CHUNK, 20).expect("a stream");
        assert_eq!(ahead.chunks, 16..20);
    }
}
