//! Tests of the pack store: reads across stores, the bound on open files, durability failures, repair and
//! sweep.

use super::*;
use crate::chunk;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn encoded(n: u32) -> (ChunkId, Vec<u8>) {
    let plain: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(n + 7) >> 3) as u8).collect();
    let mut z = zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL).unwrap();
    (ChunkId::of(&plain), chunk::encode(&plain, &mut z))
}

fn open(dir: &Path) -> PackStore {
    PackStore::open(&dir.join("packs"), &dir.join("tmp")).unwrap()
}

#[test]
fn chunks_put_by_one_store_are_read_by_another_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let writer = open(dir.path());
    let reader = open(dir.path());
    let chunks: Vec<_> = (0..50).map(encoded).collect();
    for (id, enc) in &chunks[..20] {
        writer.put(id, enc).unwrap();
    }
    writer.sync().unwrap();
    // The reader scans on first use, then finds later packs when a chunk is not in its catalog.
    assert_eq!(reader.get(&chunks[3].0).unwrap(), chunks[3].1);
    for (id, enc) in &chunks[20..] {
        writer.put(id, enc).unwrap();
    }
    // Not sealed yet: the writer reads its own chunks, the reader does not see them.
    assert_eq!(writer.get(&chunks[40].0).unwrap(), chunks[40].1);
    std::thread::sleep(Duration::from_millis(60));
    assert!(matches!(reader.get(&chunks[40].0), Err(Error::ChunkMissing { .. })));
    writer.sync().unwrap();
    for (id, enc) in &chunks {
        assert_eq!(&reader.get(id).unwrap(), enc);
        assert!(reader.touch(id).unwrap().is_some());
    }
    assert_eq!(reader.list().unwrap().len(), 50);
    assert!(reader.touch(&ChunkId::of(b"absent")).unwrap().is_none());
}

#[test]
fn writing_many_packs_keeps_few_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.pack_target = 1; // one chunk per pack
    let open_fds = || fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_fds();
    for n in 0..40 {
        let (id, enc) = encoded(n);
        s.put(&id, &enc).unwrap();
    }
    s.sync().unwrap();
    // Other tests run in parallel threads of this process: allow them a few.
    assert!(open_fds() < before + 10, "{} files open after 40 packs, {before} before", open_fds());
    let (id, enc) = encoded(7);
    assert_eq!(s.get(&id).unwrap(), enc);
}

#[test]
fn a_pack_that_lost_its_index_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (id, enc) = encoded(5);
    let s = open(dir.path());
    s.put(&id, &enc).unwrap();
    s.sync().unwrap();
    let reader = open(dir.path());
    assert!(reader.get(&id).is_ok());
    // A gc removed the index and died before removing the pack.
    let loc = reader.locate(&id).unwrap().unwrap();
    fs::remove_file(&loc.index).unwrap();
    reader.start_marking();
    assert!(reader.touch(&id).unwrap().is_none(), "the chunk must be written again");
    assert!(loc.pack.exists());
}

#[test]
fn a_failed_write_fails_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (id, enc) = encoded(6);
    s.put(&id, &enc).unwrap();
    // Something stands where the open pack's file goes: sealing it fails, and so does every later sync.
    let loc = s.locate(&id).unwrap().unwrap();
    assert!(!loc.pack.exists(), "an open pack is in memory until its seal");
    fs::create_dir(&loc.pack).unwrap();
    assert!(s.sync().is_err());
    fs::remove_dir(&loc.pack).unwrap();
    assert!(s.sync().is_err(), "chunks put before the failure are lost: sync keeps saying so");
    assert!(matches!(s.get(&id), Err(Error::ChunkMissing { .. })), "the abandoned pack's chunks are gone");
}

#[test]
fn repair_recovers_every_intact_record_and_skips_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let chunks: Vec<_> = (0..6).map(encoded).collect();
    for (id, enc) in &chunks {
        s.put(id, enc).unwrap();
    }
    s.sync().unwrap();
    let bad = s.locate(&chunks[2].0).unwrap().unwrap();
    let last = s.locate(&chunks[5].0).unwrap().unwrap();
    // One record's payload damaged, the last one cut short, and the index gone.
    let f = OpenOptions::new().write(true).open(&bad.pack).unwrap();
    f.write_all_at(&[0x5a; 8], bad.offset + u64::from(bad.len) / 2).unwrap();
    f.set_len(last.offset + 40).unwrap();
    fs::remove_file(&bad.index).unwrap();
    let stats = s.repair().unwrap();
    assert_eq!((stats.indexes_rebuilt, stats.chunks_recovered, stats.chunks_damaged), (1, 4, 1));
    let fresh = open(dir.path());
    for (n, (id, enc)) in chunks.iter().enumerate() {
        match n {
            2 | 5 => assert!(fresh.get(id).is_err(), "chunk {n} is not recovered"),
            _ => assert_eq!(&fresh.get(id).unwrap(), enc, "chunk {n}"),
        }
    }
    assert_eq!(s.repair().unwrap().indexes_rebuilt, 0, "a sound index is left as it is");
}

#[test]
fn an_unsealed_pack_is_dropped_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let (id, enc) = encoded(1);
    {
        let s = open(dir.path());
        s.put(&id, &enc).unwrap();
        // Dropped without sync: the pack is unfinished work.
    }
    let s = open(dir.path());
    assert!(s.touch(&id).unwrap().is_none());
    assert_eq!(fs::read_dir(dir.path().join("packs")).unwrap().count(), 0, "the unsealed pack was removed");
    // A pack left by a writer that died (no index) goes with the next sweep once old enough.
    fs::write(dir.path().join("packs/0123456789abcdef.pack"), pack_header()).unwrap();
    let stats = s.sweep(&HashSet::new(), SystemTime::now() + Duration::from_secs(1), None).unwrap();
    assert_eq!(stats.unfinished_packs_removed, 1);
}

#[test]
fn sweep_removes_dead_packs_and_rewrites_mostly_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let chunks: Vec<_> = (0..30).map(encoded).collect();
    for (id, enc) in &chunks[..10] {
        s.put(id, enc).unwrap();
    }
    s.sync().unwrap();
    for (id, enc) in &chunks[10..] {
        s.put(id, enc).unwrap();
    }
    s.sync().unwrap();
    // Pack one: all dead. Pack two: 5 of 20 kept.
    let in_use: HashSet<ChunkId> = chunks[10..15].iter().map(|c| c.0).collect();
    // A cutoff in the past keeps everything.
    let kept = s.sweep(&in_use, SystemTime::now() - Duration::from_secs(60), None).unwrap();
    assert_eq!((kept.chunks_removed, kept.chunks_kept_recent), (0, 25));
    let stats = s.sweep(&in_use, SystemTime::now() + Duration::from_secs(1), None).unwrap();
    assert_eq!((stats.packs_removed, stats.packs_rewritten, stats.chunks_removed), (1, 1, 25));
    let fresh = open(dir.path());
    for (id, enc) in &chunks[10..15] {
        assert_eq!(&fresh.get(id).unwrap(), enc);
        assert_eq!(&s.get(id).unwrap(), enc, "the sweeping store follows the move");
    }
    assert!(matches!(fresh.get(&chunks[0].0), Err(Error::ChunkMissing { .. })));
    assert_eq!(fresh.list().unwrap().len(), 5);
    let files = |ext: &str| {
        let names = fs::read_dir(dir.path().join("packs")).unwrap().map(|e| e.unwrap().file_name());
        names.filter(|n| n.to_str().unwrap().ends_with(ext)).count()
    };
    assert_eq!((files(".pack"), files(".idx")), (1, 1), "one pack and its index");
    assert_eq!(files(".map"), 1, "one chunk map, covering what the sweep left");
}

#[test]
fn damage_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (id, enc) = encoded(3);
    let (id2, enc2) = encoded(4);
    s.put(&id, &enc).unwrap();
    s.put(&id2, &enc2).unwrap();
    s.sync().unwrap();
    let loc = s.locate(&id).unwrap().unwrap();
    // The id before the record no longer matches: the index and the pack disagree.
    let f = OpenOptions::new().write(true).open(&loc.pack).unwrap();
    f.write_all_at(&[0xff], loc.offset - 1).unwrap();
    assert!(matches!(open(dir.path()).get(&id), Err(Error::ChunkCorrupt { .. })));
    // A truncated pack.
    f.set_len(loc.offset + 10).unwrap();
    let err = open(dir.path()).get(&id2).unwrap_err();
    assert!(matches!(err, Error::ChunkCorrupt { .. }), "{err}");
    // A damaged index: gc leaves the pack alone.
    fs::write(&loc.index, b"garbage").unwrap();
    let stats = s.sweep(&HashSet::new(), SystemTime::now() + Duration::from_secs(1), None).unwrap();
    assert_eq!(stats.chunks_removed + stats.unfinished_packs_removed, 0);
    assert!(loc.pack.exists());
}

#[test]
fn chunks_read_back_while_their_packs_are_written_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.pack_target = 100_000; // a pack of one or two chunks: many seals at once
    let chunks: Vec<_> = (0..40).map(encoded).collect();
    for (n, (id, enc)) in chunks.iter().enumerate() {
        s.put(id, enc).unwrap();
        // Every chunk so far reads back, whether its pack is open, being sealed or sealed.
        for (id, enc) in &chunks[n.saturating_sub(6)..=n] {
            assert_eq!(&s.get(id).unwrap(), enc);
        }
    }
    s.sync().unwrap();
    // Each pack file is exactly as long as its index says (the padding of its direct write is gone).
    let other = open(dir.path());
    for (id, enc) in &chunks {
        assert_eq!(&other.get(id).unwrap(), enc);
        let loc = other.locate(id).unwrap().unwrap();
        let index = PackIndex::read(&loc.index).unwrap();
        assert_eq!(fs::metadata(&loc.pack).unwrap().len(), index.pack_len);
    }
}

#[test]
fn the_least_recently_used_pack_is_closed_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.pack_target = 1; // one chunk per pack
    s.open_files.lock().unwrap().resize(NonZeroUsize::new(3).unwrap());
    let chunks: Vec<_> = (0..6).map(encoded).collect();
    for (id, enc) in &chunks {
        s.put(id, enc).unwrap();
    }
    s.sync().unwrap();
    let pack_of = |n: usize| s.lookup(&chunks[n].0).unwrap().unwrap().1;
    let has_file = |n: usize| pack_of(n).cached_file().is_some();
    // Sealed packs start closed; reading opens them through the cache of 3.
    assert!((0..6).all(|n| !has_file(n)));
    for n in [0, 1, 2] {
        assert_eq!(s.get(&chunks[n].0).unwrap(), chunks[n].1);
    }
    // Pack 0 is used again, so pack 1 is the least recently used when pack 3 is opened.
    s.get(&chunks[0].0).unwrap();
    s.get(&chunks[3].0).unwrap();
    assert_eq!((0..6).map(has_file).collect::<Vec<_>>(), [true, false, true, true, false, false]);
    s.get(&chunks[4].0).unwrap();
    assert_eq!((0..6).map(has_file).collect::<Vec<_>>(), [true, false, false, true, true, false]);
    assert_eq!(s.open_files.lock().unwrap().len(), 3);
}

#[test]
fn chunk_maps_keep_memory_bounded_and_follow_gc() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.pack_target = 1; // one chunk per pack
    s.merge_at = 8;
    let chunks: Vec<_> = (0..60).map(encoded).collect();
    let mut at = Vec::new();
    for (id, enc) in &chunks {
        at.push(s.put(id, enc).unwrap());
        let loose = s.catalog.read().unwrap().loose_chunks();
        // The packs being sealed are not in a map yet: their chunks stay in memory until they are.
        let bound = 8 + super::seal::MAX_RUNNING + 1;
        assert!(loose <= bound, "{loose} chunks held in memory with a merge at 8");
    }
    s.sync().unwrap();
    let maps = super::super::catalog::map_generations(&s.dir).unwrap();
    assert_eq!(maps.len(), 1, "older maps go once a newer one is in place: {maps:?}");
    // Another process finds every chunk, most through the map, and keeps few in memory.
    let mut reader = open(dir.path());
    reader.merge_at = 8;
    for (id, enc) in &chunks {
        assert_eq!(&reader.get(id).unwrap(), enc);
        assert!(reader.touch(id).unwrap().is_some());
    }
    assert!(reader.catalog.read().unwrap().loose_chunks() <= 8);
    // gc keeps the first ten: the map then covers those packs only; a location from before still reads.
    let in_use: HashSet<ChunkId> = chunks[..10].iter().map(|c| c.0).collect();
    let stats = s.sweep(&in_use, SystemTime::now() + Duration::from_secs(1), None).unwrap();
    assert_eq!(stats.chunks_removed, 50);
    let fresh = open(dir.path());
    for (n, (id, enc)) in chunks[..10].iter().enumerate() {
        assert_eq!(&fresh.get_at(id, &at[n]).unwrap(), enc);
        assert_eq!(&reader.get(id).unwrap(), enc);
    }
    assert!(matches!(fresh.get(&chunks[30].0), Err(Error::ChunkMissing { .. })));
    assert!(matches!(fresh.get_at(&chunks[30].0, &at[30]), Err(Error::ChunkMissing { .. })));
    reader.start_marking(); // as the next backup does
    assert!(reader.touch(&chunks[30].0).unwrap().is_none(), "a removed chunk is not reused");
}

#[test]
fn a_location_that_moved_is_found_where_the_chunk_is_now() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let chunks: Vec<_> = (0..8).map(encoded).collect();
    let at: Vec<StoredAt> = chunks.iter().map(|(id, enc)| s.put(id, enc).unwrap()).collect();
    s.sync().unwrap();
    // Most of the pack is dead: the sweep rewrites it, so the kept chunks move to a new pack.
    let in_use: HashSet<ChunkId> = [chunks[5].0].into_iter().collect();
    let stats = s.sweep(&in_use, SystemTime::now() + Duration::from_secs(1), None).unwrap();
    assert_eq!(stats.packs_rewritten, 1);
    let fresh = open(dir.path());
    assert_eq!(fresh.get_at(&chunks[5].0, &at[5]).unwrap(), chunks[5].1);
    // A location that names another chunk's record is not believed either.
    let wrong = StoredAt { offset: at[5].offset, ..at[5] };
    assert_eq!(fresh.get_at(&chunks[5].0, &StoredAt { pack: PackName([0; 8]), ..wrong }).unwrap(), chunks[5].1);
}
