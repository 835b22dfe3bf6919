//! The ingest's reader: walks the disk chunk by chunk and hands the workers spans of consecutive chunks that
//! hold data, each read into one buffer; reports chunks without data as zero at once, many to a message; and
//! hands over the parent's entry of a chunk the source says is unchanged, unread.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::pipeline::{Done, DoneChunk, Job};
use crate::aligned::AlignedBuf;
use crate::error::Result;
use crate::index::DiskIndex;
use crate::source::DiskSource;

/// Bytes of consecutive chunks read and handed over at once (at least one chunk).
const SPAN_BYTES: usize = 4 << 20;
/// How far ahead of the reader the source is asked to fetch.
const READ_AHEAD: u64 = 32 << 20;
/// Chunks without data reported in one message, at most.
const ZERO_RUN: usize = 4096;

/// Chunks of a span.
fn span_chunks(chunk_size: u32) -> usize {
    (SPAN_BYTES / chunk_size as usize).max(1)
}

/// Bytes of a span.
pub(super) fn span_bytes(chunk_size: u32) -> usize {
    span_chunks(chunk_size) * chunk_size as usize
}

/// The disk being read, the same disk's index in an earlier backup, and where the reader's work goes.
pub(super) struct Reading<'a> {
    pub chunk_size: u32,
    pub count: usize,
    pub parent: Option<&'a DiskIndex>,
    pub jobs: &'a Sender<Job>,
    pub done: &'a Sender<Done>,
    /// Buffers the workers are done with.
    pub free: &'a Receiver<AlignedBuf>,
}

/// What the reader did.
#[derive(Default)]
pub(super) struct ReadStats {
    pub bytes: u64,
    /// Seconds reading the source, and waiting for the workers to take a span (summed over the threads
    /// reading).
    pub reading: f64,
    pub waiting: f64,
}

impl ReadStats {
    fn add(&mut self, other: &ReadStats) {
        self.bytes += other.bytes;
        self.reading += other.reading;
        self.waiting += other.waiting;
    }
}

/// Threads reading at once from a source that allows it (`DiskSource::shared_reader`). Measured on the corpus
/// image with direct 4 MiB reads: one read at a time left the workers waiting 0.25 s of a 2.8 s first backup
/// in stretches of well-compressible data, where the disk and not the cores sets the pace.
const READ_THREADS: usize = 2;

/// Reads the disk. Stops early when `failed` is set or the workers are gone.
pub(super) fn read_disk(source: &mut dyn DiskSource, reading: &Reading, failed: &AtomicBool) -> Result<ReadStats> {
    let Some(shared) = source.shared_reader() else {
        let mut stats = ReadStats::default();
        let mut read_here = |source: &mut dyn DiskSource, plan: SpanPlan| {
            read_and_hand_over(&mut |o, b| source.read_exact_at(o, b), plan, reading, &mut stats)
        };
        plan_disk(source, reading, failed, &mut read_here)?;
        return Ok(stats);
    };
    let (plans_tx, plans_rx) = bounded::<SpanPlan>(READ_THREADS);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..READ_THREADS)
            .map(|_| {
                let (plans, shared) = (plans_rx.clone(), shared.clone());
                s.spawn(move || {
                    let mut stats = ReadStats::default();
                    for plan in plans.iter() {
                        let handed =
                            read_and_hand_over(&mut |o, b| shared.read_exact_at(o, b), plan, reading, &mut stats);
                        match handed {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                    Ok(stats)
                })
            })
            .collect();
        drop(plans_rx);
        let planned = plan_disk(source, reading, failed, &mut |_, plan| Ok(plans_tx.send(plan).is_ok()));
        drop(plans_tx);
        let mut stats = ReadStats::default();
        let mut first_error = planned.err();
        for reader in readers {
            match reader.join().expect("reader threads do not panic") {
                Ok(s) => stats.add(&s),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(stats), Err)
    })
}

/// A span of chunks that hold data, and where in it the data is.
struct SpanPlan {
    first: usize,
    span: Range<u64>,
    data: Vec<Range<u64>>,
}

/// Walks the disk: hands each span of chunks with data to `read` (which says whether it was taken), reports
/// chunks without data and chunks unchanged since the parent itself.
fn plan_disk(
    source: &mut dyn DiskSource,
    reading: &Reading,
    failed: &AtomicBool,
    read: &mut dyn FnMut(&mut dyn DiskSource, SpanPlan) -> Result<bool>,
) -> Result<()> {
    let size = source.size();
    let chunk_size = u64::from(reading.chunk_size);
    let chunk = |k: usize| {
        let start = k as u64 * chunk_size;
        start..(start + chunk_size).min(size)
    };
    let mut data = DataCursor::default();
    // Keep the source fetching ahead of the reader (a cold disk otherwise waits on every read).
    let mut hinted_to = 0u64;
    let mut i = 0;
    while i < reading.count {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let unchanged = |source: &mut dyn DiskSource, k: usize| reading.parent.is_some() && source.unchanged(chunk(k));
        if unchanged(source, i) {
            let entry = reading.parent.expect("unchanged only with a parent").entry(i as u64)?;
            let sent = if entry.id.is_zero() {
                reading.done.send(Done { chunks: vec![DoneChunk::zero(i)], buf: None }).is_ok()
            } else {
                reading.jobs.send(Job::Unchanged(i, entry)).is_ok()
            };
            if !sent {
                break;
            }
            i += 1;
            continue;
        }
        let has_data = |source: &mut dyn DiskSource, data: &mut DataCursor, k: usize| -> Result<bool> {
            let c = chunk(k);
            Ok(data.at(source, c.start)?.is_some_and(|r| r.start < c.end))
        };
        // The chunks from here on that hold data (a span, read at once) or that do not (a run of zeros).
        let with_data = has_data(source, &mut data, i)?;
        let most = if with_data { span_chunks(reading.chunk_size) } else { ZERO_RUN };
        let mut j = i + 1;
        while j < reading.count && j - i < most && !unchanged(source, j) && has_data(source, &mut data, j)? == with_data
        {
            j += 1;
        }
        let sent = if with_data {
            let span = chunk(i).start..chunk(j - 1).end;
            if span.end > hinted_to.saturating_sub(READ_AHEAD / 2) {
                let from = hinted_to.max(span.start);
                source.will_need(from, READ_AHEAD);
                hinted_to = from + READ_AHEAD;
            }
            let data = data_in(source, &mut data, &span)?;
            read(source, SpanPlan { first: i, span, data })?
        } else {
            reading.done.send(Done { chunks: (i..j).map(DoneChunk::zero).collect(), buf: None }).is_ok()
        };
        if !sent {
            break;
        }
        i = j;
    }
    Ok(())
}

/// The data ranges within `span`, clipped to it.
fn data_in(source: &mut dyn DiskSource, data: &mut DataCursor, span: &Range<u64>) -> Result<Vec<Range<u64>>> {
    let mut found = Vec::new();
    let mut pos = span.start;
    while pos < span.end {
        let Some(r) = data.at(source, pos)?.filter(|r| r.start < span.end) else { break };
        pos = r.end.min(span.end);
        found.push(r.start..pos);
    }
    Ok(found)
}

/// Reads a span into a buffer (its data ranges with `read_at`, zeros elsewhere) and hands it to the workers;
/// says whether they took it.
fn read_and_hand_over(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    plan: SpanPlan,
    reading: &Reading,
    stats: &mut ReadStats,
) -> Result<bool> {
    let SpanPlan { first, span, data } = plan;
    let mut buf = reading.free.try_recv().unwrap_or_default();
    let bytes = buf.resize((span.end - span.start) as usize);
    let at = |pos: u64| (pos - span.start) as usize;
    let started = Instant::now();
    // A reused buffer keeps its old bytes: every byte is either read or zeroed.
    let mut filled = span.start;
    for r in &data {
        bytes[at(filled)..at(r.start)].fill(0);
        read_at(r.start, &mut bytes[at(r.start)..at(r.end)])?;
        stats.bytes += r.end - r.start;
        filled = r.end;
    }
    bytes[at(filled)..].fill(0);
    let read = started.elapsed().as_secs_f64();
    stats.reading += read;
    let taken = reading.jobs.send(Job::Span { first, buf }).is_ok();
    stats.waiting += started.elapsed().as_secs_f64() - read;
    Ok(taken)
}

/// Where the source's data is, asked as the reader goes (a disk of millions of extents is never held as a
/// list): the answer of the last question stays good for every position between where it was asked and the
/// end of the range it found.
#[derive(Default)]
struct DataCursor {
    asked: Option<u64>,
    found: Option<Range<u64>>,
}

impl DataCursor {
    /// The first data range at or after `pos`, starting no earlier than `pos`; `None` when the rest is zeros.
    fn at(&mut self, source: &mut dyn DiskSource, pos: u64) -> Result<Option<Range<u64>>> {
        let good = self.asked.is_some_and(|asked| asked <= pos) && self.found.as_ref().is_none_or(|r| r.end > pos);
        if !good {
            self.found = source.next_data(pos)?;
            self.asked = Some(pos);
        }
        Ok(self.found.clone().map(|r| r.start.max(pos)..r.end))
    }
}
