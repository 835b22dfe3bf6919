//! One chunk cache on this machine's disk for every reader of a library: the live mounts and browses of a
//! daemon share it, so a chunk fetched from a far store (S3) for one mount is there for the next, and twenty
//! VMs booting from one backup fetch each chunk once.
//!
//! - **Content-addressed.** A chunk is kept encoded, as the store gave it, in `<dir>/<2 hex>/<id hex>`; the
//!   reader decodes it and checks it against its id like any stored chunk, so a damaged or half-written
//!   cache file is never data: it is dropped and the chunk fetched again.
//! - **Bounded.** At most `capacity` bytes of chunk files; beyond that the coldest go, chosen by CLOCK (a
//!   chunk read since the hand last passed it gets another round). Kept across restarts: the folder is read
//!   back when the cache is opened.
//! - **Never in the way.** A cache file that cannot be written (a full disk) is simply not kept, after some
//!   room was made; a read that the store can answer never fails because of the cache.
//! - **Single flight.** Readers that want the same missing chunk at once wait for one fetch.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::durable;
use crate::error::{Error, Result};

pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    /// Fetches under way, by chunk: later readers of the same chunk wait for the first.
    flights: Mutex<HashMap<ChunkId, Arc<Flight>>>,
    hits: AtomicU64,
    fetches: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Each kept chunk: its size, and whether it was read since the clock's hand last passed it.
    entries: HashMap<ChunkId, (u64, bool)>,
    /// The clock: kept chunks in the order the hand meets them.
    hand: VecDeque<ChunkId>,
    bytes: u64,
}

/// One fetch under way: its outcome once there (`Err` only says that it failed; each waiter then tries
/// itself, to get its own error).
#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<std::result::Result<Vec<u8>, ()>>>,
    done: Condvar,
}

/// What the cache did so far in this process.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CacheStats {
    pub hits: u64,
    /// Chunks fetched from the store (each at most once at a time, whoever asked).
    pub fetches: u64,
    /// Chunks evicted to keep within the capacity.
    pub evictions: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub capacity: u64,
}

impl ChunkCache {
    /// Opens (creating when needed) the cache in `dir`, keeping at most `capacity` bytes of chunks.
    pub fn open(dir: &Path, capacity: u64) -> Result<ChunkCache> {
        durable::create_dir_durable(dir).map_err(|e| Error::io("create folder", dir, e))?;
        let mut state = State::default();
        for shard in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            for file in files.flatten() {
                let id = file.file_name().to_str().and_then(ChunkId::from_hex);
                match (id, file.metadata()) {
                    (Some(id), Ok(meta)) if meta.is_file() => {
                        state.entries.insert(id, (meta.len(), false));
                        state.hand.push_back(id);
                        state.bytes += meta.len();
                    }
                    // Temporary files of writes that never finished, and anything else.
                    _ => {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        let cache = ChunkCache {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(state),
            flights: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        cache.make_room(0);
        Ok(cache)
    }

    fn path_of(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    pub fn stats(&self) -> CacheStats {
        let state = self.state.lock().expect("not poisoned");
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            chunks: state.entries.len() as u64,
            bytes: state.bytes,
            capacity: self.capacity,
        }
    }

    /// The encoded chunk, from the cache when it holds it, else from `fetch` (once, whoever else asks
    /// meanwhile), kept for the next reader.
    pub fn get_or_fetch(&self, id: &ChunkId, fetch: impl Fn() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        let mut got = self.get_or_fetch_many(&[*id], |_| vec![fetch()]);
        got.pop().expect("one answer for one chunk")
    }

    /// `get_or_fetch` of several chunks, the answers in the order asked. The chunks that the cache lacks and
    /// nobody else is fetching are fetched by one call of `fetch`, given their positions in `ids` and
    /// answering in that order, so that a store can read neighbours with one request. Chunks that another
    /// reader is fetching are waited for only after that: two readers each waiting for the other's chunks
    /// before fetching their own would wait for good.
    pub fn get_or_fetch_many(
        &self,
        ids: &[ChunkId],
        fetch: impl Fn(&[usize]) -> Vec<Result<Vec<u8>>>,
    ) -> Vec<Result<Vec<u8>>> {
        let mut out: Vec<Option<Result<Vec<u8>>>> = ids.iter().map(|_| None).collect();
        let mut lead = Lead { cache: self, flights: Vec::new() };
        let (mut led, mut waiting) = (Vec::new(), Vec::new());
        let mut repeats = Vec::new();
        let mut first_of: HashMap<ChunkId, usize> = HashMap::new();
        for (pos, id) in ids.iter().enumerate() {
            if let Some(&first) = first_of.get(id) {
                repeats.push((pos, first));
                continue;
            }
            first_of.insert(*id, pos);
            if let Some(data) = self.get(id) {
                out[pos] = Some(Ok(data));
                continue;
            }
            let mut flights = self.flights.lock().expect("not poisoned");
            match flights.get(id) {
                Some(f) => waiting.push((pos, f.clone())),
                None => {
                    let f = Arc::new(Flight::default());
                    flights.insert(*id, f.clone());
                    lead.flights.push((*id, f));
                    led.push(pos);
                }
            }
        }
        // A fetch that finished between this reader's look into the cache and its taking the lead has left
        // the chunk there.
        let mut to_fetch = Vec::new();
        for pos in led {
            match self.get(&ids[pos]) {
                Some(data) => out[pos] = Some(Ok(data)),
                None => to_fetch.push(pos),
            }
        }
        if !to_fetch.is_empty() {
            self.fetches.fetch_add(to_fetch.len() as u64, Ordering::Relaxed);
            let mut fetched = fetch(&to_fetch).into_iter();
            for &pos in &to_fetch {
                let got = fetched.next().unwrap_or_else(|| Err(Error::ChunkMissing { id: ids[pos] }));
                if let Ok(data) = &got {
                    if !self.state.lock().expect("not poisoned").entries.contains_key(&ids[pos]) {
                        self.insert(&ids[pos], data);
                    }
                }
                out[pos] = Some(got);
            }
        }
        lead.finish(|id| {
            let pos = first_of[id];
            out[pos].as_ref().and_then(|r| r.as_ref().ok()).cloned()
        });
        // A chunk whose fetch failed elsewhere (another reader's, or for an earlier place in this batch): this
        // reader tries it alone, to get its own error.
        let fetch_alone = |pos: usize| fetch(&[pos]).pop().unwrap_or_else(|| Err(Error::ChunkMissing { id: ids[pos] }));
        for (pos, flight) in waiting {
            let mut outcome = flight.outcome.lock().expect("not poisoned");
            while outcome.is_none() {
                outcome = flight.done.wait(outcome).expect("not poisoned");
            }
            out[pos] = Some(match &*outcome {
                Some(Ok(data)) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    Ok(data.clone())
                }
                _ => {
                    drop(outcome);
                    fetch_alone(pos)
                }
            });
        }
        for (pos, first) in repeats {
            out[pos] = Some(match &out[first] {
                Some(Ok(data)) => Ok(data.clone()),
                _ => fetch_alone(pos),
            });
        }
        out.into_iter().map(|r| r.expect("every chunk is answered")).collect()
    }

    /// The encoded chunk if the cache holds it (unchecked: the reader decodes and checks it, and calls
    /// `forget` when it fails).
    fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        {
            let mut state = self.state.lock().expect("not poisoned");
            state.entries.get_mut(id)?.1 = true;
        }
        match std::fs::read(self.path_of(id)) {
            Ok(data) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(data)
            }
            Err(_) => {
                self.forget(id);
                None
            }
        }
    }

    /// Drops a chunk (its cached copy failed its check).
    pub fn forget(&self, id: &ChunkId) {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some((size, _)) = state.entries.remove(id) {
            state.bytes -= size;
            state.hand.retain(|h| h != id);
        }
        let _ = std::fs::remove_file(self.path_of(id));
    }

    /// Keeps a chunk, making room first. Best effort: a chunk that cannot be written is not kept.
    fn insert(&self, id: &ChunkId, data: &[u8]) {
        let size = data.len() as u64;
        if size > self.capacity {
            return;
        }
        self.make_room(size);
        let path = self.path_of(id);
        let written = (|| -> std::io::Result<()> {
            let dir = path.parent().expect("in a shard folder");
            std::fs::create_dir_all(dir)?;
            // Written under a temporary name and renamed: a reader never opens half a file (not synced: a
            // file torn by a crash fails its check and is fetched again).
            let tmp = dir.join(format!(".tmp-{}", durable::random_suffix()));
            let mut f = std::fs::File::create(&tmp)?;
            let result = f.write_all(data).and_then(|()| std::fs::rename(&tmp, &path));
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })();
        match written {
            Ok(()) => {
                let mut state = self.state.lock().expect("not poisoned");
                if state.entries.insert(*id, (size, false)).is_none() {
                    state.hand.push_back(*id);
                    state.bytes += size;
                }
            }
            Err(e) => {
                tracing::debug!("chunk {id} not kept in the cache {}: {e}", self.dir.display());
                // A full disk: give some back for the next one.
                self.make_room(self.capacity / 16);
            }
        }
    }

    /// Evicts the coldest chunks until `wanted` more bytes fit under the capacity.
    fn make_room(&self, wanted: u64) {
        let mut doomed = Vec::new();
        {
            let mut state = self.state.lock().expect("not poisoned");
            while state.bytes + wanted > self.capacity {
                let Some(id) = state.hand.pop_front() else { break };
                let Some(entry) = state.entries.get_mut(&id) else { continue };
                if entry.1 {
                    // Read since the hand last came by: one more round.
                    entry.1 = false;
                    state.hand.push_back(id);
                    continue;
                }
                let (size, _) = state.entries.remove(&id).expect("present");
                state.bytes -= size;
                doomed.push(id);
            }
        }
        self.evictions.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        for id in doomed {
            let _ = std::fs::remove_file(self.path_of(&id));
        }
    }
}

/// The fetches a reader leads. Each ends with the chunk or a failure for its waiters, also when the reader
/// unwinds from a panic midway (its waiters would otherwise wait for good).
struct Lead<'a> {
    cache: &'a ChunkCache,
    flights: Vec<(ChunkId, Arc<Flight>)>,
}

impl Lead<'_> {
    /// Gives each led chunk's waiters what `outcome` says of it (`None`: the fetch failed).
    fn finish(&mut self, outcome: impl Fn(&ChunkId) -> Option<Vec<u8>>) {
        for (id, flight) in std::mem::take(&mut self.flights) {
            *flight.outcome.lock().expect("not poisoned") = Some(outcome(&id).ok_or(()));
            flight.done.notify_all();
            self.cache.flights.lock().expect("not poisoned").remove(&id);
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.finish(|_| None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n; 100])
    }

    #[test]
    fn keeps_chunks_across_opens_within_its_bound_and_evicts_the_coldest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 3000).unwrap();
        let fetched = |n: u8| move || Ok(vec![n; 1000]);
        for n in 0..3 {
            assert_eq!(cache.get_or_fetch(&id(n), fetched(n)).unwrap(), vec![n; 1000]);
        }
        // Chunk 0 is read again: the hand spares it once, and chunk 1 goes for chunk 3.
        cache.get_or_fetch(&id(0), || panic!("cached")).unwrap();
        cache.get_or_fetch(&id(3), fetched(3)).unwrap();
        let s = cache.stats();
        assert_eq!((s.chunks, s.bytes, s.fetches, s.hits), (3, 3000, 4, 1));
        drop(cache);
        let again = ChunkCache::open(dir.path(), 3000).unwrap();
        for n in [0, 2, 3] {
            assert_eq!(again.get_or_fetch(&id(n), || panic!("kept across opens")).unwrap(), vec![n; 1000]);
        }
        assert_eq!(again.get_or_fetch(&id(1), fetched(1)).unwrap(), vec![1; 1000], "fetched again");
        // A smaller bound on opening evicts down to it.
        drop(again);
        assert_eq!(ChunkCache::open(dir.path(), 1000).unwrap().stats().bytes, 1000);
    }

    #[test]
    fn readers_of_one_missing_chunk_wait_for_one_fetch_and_a_failed_fetch_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let calls = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let got = cache
                        .get_or_fetch(&id(7), || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            Ok(vec![7; 500])
                        })
                        .unwrap();
                    assert_eq!(got, vec![7; 500]);
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch for eight readers");
        let failed = cache.get_or_fetch(&id(8), || Err(Error::ChunkMissing { id: id(8) }));
        assert!(matches!(failed, Err(Error::ChunkMissing { .. })));
        assert_eq!(cache.stats().chunks, 1, "a failed fetch leaves nothing behind");
    }

    #[test]
    fn a_batch_fetches_what_is_missing_at_once_and_waits_for_another_readers_fetch_after_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        cache.get_or_fetch(&id(1), || Ok(vec![1; 10])).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let asked = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            // The first reader leads chunk 2 and holds its fetch until the second reader has fetched its own.
            let first = s.spawn(|| {
                cache.get_or_fetch_many(&[id(2)], |_| {
                    started_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                    vec![Ok(vec![2; 10])]
                })
            });
            started_rx.recv().unwrap();
            // Cached 1, 2 under way elsewhere, 3 and 4 missing, 3 asked twice: one fetch of [3, 4].
            let got = cache.get_or_fetch_many(&[id(1), id(2), id(3), id(4), id(3)], |positions| {
                asked.lock().unwrap().push(positions.to_vec());
                if positions.contains(&2) {
                    // The second reader's own chunks come before it waits: let the first one finish now.
                    release_tx.send(()).unwrap();
                }
                positions.iter().map(|&p| Ok(vec![[1, 2, 3, 4, 3][p]; 10])).collect()
            });
            let got: Vec<Vec<u8>> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got, [1, 2, 3, 4, 3].map(|n| vec![n; 10]));
            assert_eq!(first.join().unwrap()[0].as_ref().unwrap(), &vec![2; 10]);
        });
        assert_eq!(*asked.lock().unwrap(), [vec![2, 3]], "one fetch for the missing chunks, none for 2");
        assert_eq!(cache.stats().chunks, 4);
    }

    #[test]
    fn a_reader_whose_fetch_panics_leaves_no_waiter_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                cache.get_or_fetch_many(&[id(5)], |_| {
                    started_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                    panic!("a store that panics");
                })
            });
            started_rx.recv().unwrap();
            let waiter = s.spawn(|| cache.get_or_fetch(&id(5), || Ok(vec![5; 10])));
            std::thread::sleep(std::time::Duration::from_millis(100));
            release_tx.send(()).unwrap();
            assert!(leader.join().is_err());
            assert_eq!(waiter.join().unwrap().unwrap(), vec![5; 10], "the waiter fetched it itself");
        });
    }

    #[test]
    fn a_full_disk_never_fails_a_read_and_the_cache_gives_room_back() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::create_dir(&small).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&small)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a small tmpfs (the tests run as root)");
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&small);
        // A bound far above what the disk holds: the disk fills first.
        let cache = ChunkCache::open(&small, 16 << 20).unwrap();
        for n in 0..40u8 {
            let got = cache.get_or_fetch(&id(n), || Ok(vec![n; 30_000])).unwrap();
            assert_eq!(got, vec![n; 30_000], "chunk {n} is read whatever the disk");
        }
        let s = cache.stats();
        assert!(s.chunks > 0 && s.bytes <= 256 << 10, "some kept, within the disk: {s:?}");
        // What is kept is whole, and read back from the cache.
        let before = cache.stats().fetches;
        let kept: Vec<u8> = (0..40u8).filter(|n| cache.state.lock().unwrap().entries.contains_key(&id(*n))).collect();
        for n in &kept {
            assert_eq!(cache.get_or_fetch(&id(*n), || panic!("kept")).unwrap(), vec![*n; 30_000]);
        }
        assert_eq!(cache.stats().fetches, before);
    }
}
