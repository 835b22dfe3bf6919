//! Model-based tests of the pseudo-disk: random reads, writes (aligned and not), unmaps, flushes and
//! reopenings, checked after every step against a plain in-memory copy of the expected disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::Engine;
use crate::pseudo_disk::{Options, PseudoDisk};
use crate::source::{chunk_len, Source, SourceError};

/// A source in memory that counts its reads and can be told to fail a chunk.
struct MemSource {
    data: Vec<u8>,
    chunk_size: u32,
    reads: AtomicU64,
    bad_chunk: Option<u64>,
}

impl Source for MemSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        if Some(index) == self.bad_chunk {
            return Err(SourceError::Corrupt { chunk: index, source: "checksum mismatch".into() });
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1)); // let concurrent readers pile up
        let start = (index * u64::from(self.chunk_size)) as usize;
        buf.clear();
        buf.extend_from_slice(&self.data[start..start + chunk_len(self.size(), self.chunk_size, index)]);
        Ok(())
    }
    fn parallel_reads(&self) -> usize {
        16 // readahead gets 8 of them: room to run ahead of a reader whose every read waits 1 ms
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn source(size: usize, chunk: u32, bad: Option<u64>) -> Arc<MemSource> {
    let mut data = pattern(size, 77);
    // Some all-zero chunks, as real disks have.
    data[chunk as usize * 2..chunk as usize * 3].fill(0);
    Arc::new(MemSource { data, chunk_size: chunk, reads: AtomicU64::new(0), bad_chunk: bad })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One step of the model test: what it does, and numbers its ranges are made of.
#[derive(Clone, Debug)]
struct Step {
    op: u64,
    off: u64,
    len: u64,
    aligned: bool,
    fua: bool,
}

fn steps(n: usize) -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        (0..100u64, any::<u64>(), any::<u64>(), any::<bool>(), 0..10u64)
            .prop_map(|(op, off, len, aligned, fua)| Step { op, off, len, aligned, fua: fua == 0 }),
        1..=n,
    )
}

/// Runs `ops` against a fresh disk and the model; true when the disk ended different from its source.
fn random_operations_match_the_model(ops: &[Step]) -> bool {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let size = 3 * 65536 * 16 + 12345; // not a multiple of the block size; room for streams of over a MiB
    let src = source(size, 65536, None);
    let engine = Engine::start().unwrap();
    let mut model = src.data.clone();
    let mut disk = PseudoDisk::open(dir.path(), src.clone(), engine.clone(), Options::default()).unwrap();
    rt.block_on(async {
        for (step, s) in ops.iter().enumerate() {
            let off = s.off % size as u64;
            let max = (size as u64 - off).min(70000);
            let len = if max == 0 { 0 } else { s.len % max + 1 };
            match s.op {
                0..=29 => {
                    let got = disk.read(off, len as usize).await.unwrap();
                    assert!(got[..] == model[off as usize..(off + len) as usize], "step {step}: read {off}+{len}");
                }
                30..=39 => {
                    // A sequential reader (of over a MiB when its reads are large): readahead recalls ahead of
                    // it, and answers come before the recall store is written.
                    let mut at = off;
                    while at < (off + 24 * len).min(size as u64) {
                        let n = len.min(size as u64 - at);
                        let got = disk.read(at, n as usize).await.unwrap();
                        assert!(got[..] == model[at as usize..(at + n) as usize], "step {step}: read {at}+{n}");
                        at += n;
                    }
                }
                40..=74 => {
                    let (off, len) =
                        if s.aligned { (off / 4096 * 4096, (len / 4096).max(1) * 4096) } else { (off, len) };
                    let len = len.min(size as u64 - off);
                    let data = pattern(len as usize, step as u64);
                    disk.write(off, data.clone().into(), s.fua).await.unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                75..=84 => {
                    disk.unmap(off, len).await.unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                85..=92 => disk.flush().await.unwrap(),
                _ => {
                    // Restart: a clean reopen keeps what was flushed; an unflushed write may or may not
                    // survive, so flush first to keep the model exact.
                    disk.flush().await.unwrap();
                    drop(disk);
                    disk = PseudoDisk::open(dir.path(), src.clone(), engine.clone(), Options::default()).unwrap();
                }
            }
        }
        let all = disk.read(0, size).await.unwrap();
        assert!(all == model);
    });
    src.data.iter().zip(&model).any(|(a, b)| a != b)
}

proptest::proptest! {
    // Three runs of up to 1000 steps: about the 3000 steps of one run before, with shrinking to the
    // shortest failing sequence when one fails.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3))]

    /// Random reads, writes (aligned and not), unmaps, flushes and reopenings, checked after every step.
    #[test]
    fn random_operations_match_the_model_across_reopens(ops in steps(1000)) {
        random_operations_match_the_model(&ops);
    }
}

/// The model test writes something: its writes are not lost on the way.
#[test]
fn the_model_test_writes() {
    let ops: Vec<Step> =
        (0..20).map(|k| Step { op: 50, off: k * 9000, len: 5000, aligned: k % 2 == 0, fua: false }).collect();
    assert!(random_operations_match_the_model(&ops), "the test wrote something");
}

#[test]
fn concurrent_readers_share_one_recall_per_chunk() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(80 * 65536, 65536, None);
    let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
    rt.block_on(async {
        // The same read again and again at four places far apart: no stream for readahead to follow.
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let d = disk.clone();
                tokio::spawn(async move { d.read((i % 4) * 20 * 65536 + 100, 4096).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // The answers came before the recall store writes; the chunks count as kept once those are done.
        for _ in 0..1000 {
            if disk.counters().recalled_chunks == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    assert_eq!(src.reads.load(Ordering::SeqCst), 4, "each of the four chunks is recalled exactly once");
    let c = disk.counters();
    assert_eq!(c.chunks_recalled, 4);
    assert_eq!(c.recalled_chunks, 4);
}

#[test]
fn a_failing_chunk_is_an_error_not_data_and_other_chunks_still_read() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(4 * 65536, 65536, Some(1));
    let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
    rt.block_on(async {
        let err = disk.read(65536 + 10, 100).await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(err.to_string().contains("chunk 1"), "{err}");
        assert_eq!(disk.read(0, 4096).await.unwrap()[..], src.data[..4096]);
        // Not marked as recalled: a later read tries again and fails again.
        assert!(disk.read(65536, 1).await.is_err());
        // A write over the whole bad chunk makes it readable from the private store.
        disk.write(65536, vec![7u8; 65536].into(), false).await.unwrap();
        assert_eq!(disk.read(65536 + 10, 100).await.unwrap(), vec![7u8; 100]);
    });
}

/// Every reader waiting for a recall that fails gets the failure (as a medium error, with the chunk named),
/// none of them hangs or gets bytes, and a read of the good chunk next to it is answered.
#[test]
fn every_waiter_of_a_failed_recall_gets_the_error() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(4 * 65536, 65536, Some(1));
    let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
    rt.block_on(async {
        let readers: Vec<_> = (0..8u64)
            .map(|i| {
                let d = disk.clone();
                tokio::spawn(async move { d.read(65536 + i * 4096, 4096).await })
            })
            .collect();
        // One read across the bad chunk and its good neighbour fails whole.
        assert!(disk.read(65536 - 4096, 8192).await.is_err());
        for r in readers {
            let err = tokio::time::timeout(std::time::Duration::from_secs(10), r).await.unwrap().unwrap().unwrap_err();
            assert_eq!(err.errno(), libc::EIO);
            assert!(err.to_string().contains("chunk 1") && err.to_string().contains("checksum"), "{err}");
        }
        assert_eq!(disk.read(0, 4096).await.unwrap()[..], src.data[..4096]);
    });
}

/// A sequential reader finds the chunks ahead of it recalled (or on their way) before it asks; a random
/// reader of the same number of chunks has nothing recalled beyond what it read.
#[test]
fn a_sequential_reader_is_read_ahead_of_and_a_random_one_is_not() {
    let rt = rt();
    let chunks = 1024u64;
    let recalled_after = |offsets: Vec<u64>| {
        let dir = tempfile::tempdir().unwrap();
        let src = source((chunks * 65536) as usize, 65536, None);
        let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
        rt.block_on(async {
            for &at in &offsets {
                let got = disk.read(at, 65536).await.unwrap();
                assert!(got[..] == src.data[at as usize..at as usize + 65536]);
            }
            // Let the readahead in flight land.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        });
        disk.counters().chunks_recalled
    };
    let sequential = recalled_after((0..32).map(|c| c * 65536).collect());
    // How far ahead depends on how fast the source answers under the machine's load; that it went ahead
    // at all is what a sequential reader must see.
    assert!(sequential > 32, "32 sequential chunks read, {sequential} recalled: readahead went ahead");
    // 331 apart modulo 1024: no read lands within a MiB of where an earlier one ended.
    let random = recalled_after((0..32).map(|c| (c * 331 % chunks) * 65536).collect());
    assert!(random <= 32, "32 scattered chunks read, {random} recalled");
}

#[test]
fn read_only_disks_refuse_writes_and_the_source_is_never_written() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(4 * 65536, 65536, None);
    let disk =
        PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options { read_only: true }).unwrap();
    rt.block_on(async {
        assert_eq!(disk.write(0, vec![1].into(), false).await.unwrap_err().errno(), libc::EROFS);
        assert!(disk.read(4 * 65536 - 1, 2).await.is_err(), "reads past the end fail");
    });
}

#[test]
fn unflushed_state_after_a_crash_is_either_old_or_new_and_flushed_state_is_exact() {
    // A crash is simulated by copying the store files while the disk is open (what a kill -9 leaves on
    // disk) and opening the copy.
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(4 * 65536, 65536, None);
    let engine = Engine::start().unwrap();
    let disk = PseudoDisk::open(&dir.path().join("d"), src.clone(), engine.clone(), Options::default()).unwrap();
    rt.block_on(async {
        disk.write(100, vec![1u8; 5000].into(), false).await.unwrap();
        disk.flush().await.unwrap();
        disk.write(70000, vec![2u8; 100].into(), false).await.unwrap(); // not flushed
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for f in ["private.data", "private.map", "recall.data", "recall.map"] {
            std::fs::copy(dir.path().join("d").join(f), copy.join(f)).unwrap();
        }
        let after = PseudoDisk::open(&copy, src.clone(), engine.clone(), Options::default()).unwrap();
        assert_eq!(after.read(100, 5000).await.unwrap(), vec![1u8; 5000]);
        let maybe = after.read(70000, 100).await.unwrap();
        assert!(maybe == vec![2u8; 100] || maybe[..] == src.data[70000..70100]);
    });
}

/// A crash (the store files copied while the disk is open: maps first, as a kill -9 leaves them at one
/// instant, since a map record is written only after its data) in the middle of readahead and of recall store
/// writes behind early answers: the copy never serves a chunk that was not written whole.
#[test]
fn a_crash_during_readahead_never_leaves_a_half_recalled_chunk_readable() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let chunks = 96;
    let src = source(chunks * 65536, 65536, None);
    let engine = Engine::start().unwrap();
    let disk = PseudoDisk::open(&dir.path().join("d"), src.clone(), engine.clone(), Options::default()).unwrap();
    rt.block_on(async {
        for (round, at) in (0..chunks as u64 * 65536).step_by(128 << 10).enumerate() {
            let got = disk.read(at, 128 << 10).await.unwrap();
            assert!(got[..] == src.data[at as usize..at as usize + (128 << 10)], "read at {at}");
            if round % 3 == 0 {
                disk.flush().await.unwrap();
            }
            if round % 4 == 1 {
                let copy = dir.path().join(format!("crash{round}"));
                std::fs::create_dir(&copy).unwrap();
                for f in ["private.map", "recall.map", "private.data", "recall.data"] {
                    std::fs::copy(dir.path().join("d").join(f), copy.join(f)).unwrap();
                }
                let after = PseudoDisk::open(&copy, src.clone(), engine.clone(), Options::default()).unwrap();
                let kept = after.counters().recalled_chunks;
                assert!(after.read(0, src.data.len()).await.unwrap() == src.data, "crash copy {round}");
                assert!(kept > 0 || round < 4, "copy {round} kept recalled chunks ({kept})");
            }
        }
    });
    assert!(disk.counters().chunks_recalled >= chunks as u64 / 2, "readahead and reads recalled the disk");
}

#[test]
fn a_cancelled_recall_does_not_wedge_its_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(4 * 65536, 65536, None);
    let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
    // Each runtime is dropped right after its read started: the recall is cancelled midway.
    for _ in 0..5 {
        let rt = rt();
        let d = disk.clone();
        rt.block_on(async move {
            let t = tokio::spawn(async move { d.read(65536, 4096).await });
            tokio::task::yield_now().await;
            t.abort();
        });
        drop(rt);
    }
    let rt = rt();
    let got =
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), disk.read(65536, 4096)).await });
    assert_eq!(got.expect("the read finishes").unwrap()[..], src.data[65536..65536 + 4096]);
}

/// The read that does not wait answers only what needs no recall, and answers it as `read` does: recalled
/// data, private data, discarded blocks. A range not yet recalled, or across layers, is left to `read`.
#[test]
fn reads_without_waiting_only_where_nothing_must_be_recalled() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(4 * 65536, 65536, None);
    let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
    // Where the file system offers no RWF_NOWAIT reads, every answer is None (and `read` does the work).
    let probe = std::fs::File::open(dir.path().join("recall.data")).unwrap();
    let cached = crate::engine::read_cached(&probe, 0, 4096) != crate::engine::CachedRead::Unsupported;
    let now = |offset: u64, len: usize| disk.read_now(offset, len);
    assert_eq!(now(4096, 4096), None, "chunk 0 is not recalled yet");
    rt.block_on(async {
        assert_eq!(disk.read(0, 4096).await.unwrap(), src.data[..4096]);
        disk.write(65536 + 8192, vec![9u8; 4096].into(), false).await.unwrap();
        disk.unmap(65536 + 16384, 8192).await.unwrap();
    });
    assert_eq!(src.reads.load(Ordering::SeqCst), 1);
    assert_eq!(now(60000, 8192), None, "runs into chunk 1, not recalled");
    assert_eq!(now(65536 + 8192 - 512, 1024), None, "across the recall and private layers");
    assert_eq!(now(3 * 65536, 70000), None, "past the end");
    if cached {
        assert_eq!(now(512, 8192).as_deref(), Some(&src.data[512..512 + 8192]));
        assert_eq!(now(65536 + 8192, 4096).as_deref(), Some(&[9u8; 4096][..]));
        assert_eq!(now(65536 + 16384, 8192).as_deref(), Some(&[0u8; 8192][..]));
    }
    assert_eq!(src.reads.load(Ordering::SeqCst), 1, "the source is never read");
}

/// An aborted write (an iSCSI ABORT TASK, a dropped connection) whose store operations are already in flight
/// must not land after a later write of the same blocks: the later write waits for it.
#[test]
fn a_cancelled_write_never_lands_after_a_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 << 20;
    let src = source(size, 65536, None);
    let disk = PseudoDisk::open(dir.path(), src, Engine::start().unwrap(), Options::default()).unwrap();
    let rt = rt();
    rt.block_on(async {
        for round in 0..40u64 {
            let big = vec![round as u8 + 1; 8 << 20];
            let d = disk.clone();
            let t = tokio::spawn(async move { d.write(0, big.into(), false).await });
            // Cancel it at a different moment each round, often while its data is being written.
            for _ in 0..round % 8 {
                tokio::task::yield_now().await;
            }
            std::thread::sleep(std::time::Duration::from_micros(50 * (round % 5)));
            t.abort();
            // A later partial write inside the big one's range, then a read of it.
            let at = 10 * crate::pseudo_disk::BLOCK + 100 + round;
            disk.write(at, bytes::Bytes::from_static(b"later"), false).await.unwrap();
            let got = disk.read(at, 5).await.unwrap();
            assert_eq!(&got[..], b"later", "round {round}: the cancelled write landed over the later one");
        }
    });
}

#[test]
fn held_writes_wait_and_changed_ranges_are_known() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let src = source(8 * 65536, 65536, None);
    let disk = PseudoDisk::open(dir.path(), src.clone(), Engine::start().unwrap(), Options::default()).unwrap();
    rt.block_on(async {
        assert!(!disk.changed(0, 8 * 65536), "nothing written yet");
        disk.write(65536 + 100, vec![7; 10].into(), false).await.unwrap();
        disk.unmap(5 * 65536, 65536).await.unwrap();
        assert!(disk.changed(65536, 65536) && disk.changed(65536 + 4000, 1), "the written block");
        assert!(!disk.changed(65536 + 4096, 65536 - 4096), "the rest of that chunk");
        assert!(disk.changed(5 * 65536, 65536), "a discard is a change");
        assert!(!disk.changed(0, 65536) && !disk.changed(7 * 65536, 65536) && !disk.changed(8 * 65536, 10));

        // While writes are held, a write waits; reads go on; it lands once they are let go.
        let held = disk.hold_writes().await;
        let writer = {
            let disk = disk.clone();
            tokio::spawn(async move { disk.write(0, vec![9; 4096].into(), false).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!writer.is_finished(), "the write waits while writes are held");
        assert_eq!(disk.read(0, 4096).await.unwrap(), src.data[..4096], "reads go on");
        drop(held);
        writer.await.unwrap().unwrap();
        assert_eq!(disk.read(0, 4096).await.unwrap(), vec![9; 4096]);
        assert!(disk.changed(0, 1));
    });
}
