//! What this machine can do at best with one disk image, the limits a backup of it is judged against
//! (`bench/library.sh` runs this in the same run as the backups, after dropping the page cache):
//!
//! - `read_s`: reading the image's allocated bytes cold, in large sequential reads into memory faulted in
//!   beforehand, direct where the file system allows (holes are found with SEEK_DATA and never read, as a
//!   backup does);
//! - `hash_s`: BLAKE3 (and the all-zero check) over every chunk of those bytes, on all cores at once;
//! - `hash_codec_s`: the same plus the library's stored-chunk encoding (`chunk::encode_into`, zstd at
//!   `chunk::ZSTD_LEVEL`) of every non-zero chunk, on all cores at once;
//! - single-core BLAKE3, zstd compression and decompression speeds on a sample, for the report.
//!
//! An ingest of the whole image can go no faster than the slower of `read_s` and `hash_codec_s` (every chunk
//! of a first backup is new); an incremental one no faster than the slower of `read_s` and `hash_s` (almost
//! every chunk is already stored).
//!
//! Usage: `limits IMAGE [CHUNK_SIZE_BYTES]` (default 65536). The allocated bytes are held in memory. Prints one
//! JSON object.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dedup::aligned::DIRECT_ALIGN;
use dedup::chunk::{self, ChunkId};
use dedup::source::{DiskSource, RawFile};

/// Size of one read: large enough that the read is the disk's sequential speed.
const READ_SIZE: u64 = 8 << 20;
/// Sample of the single-core figures.
const SAMPLE_BYTES: usize = 256 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: limits IMAGE [CHUNK_SIZE_BYTES]");
        std::process::exit(2);
    }
    let chunk_size: u64 = args.get(2).map_or(65536, |s| s.parse().expect("CHUNK_SIZE_BYTES is a number"));
    let mut source = RawFile::open(std::path::Path::new(&args[1])).unwrap_or_else(|e| fail(&e.to_string()));

    let ranges = data_ranges(&mut source);
    let allocated: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    if allocated == 0 {
        fail(&format!("no data in {}", args[1]));
    }
    // Every page of the buffer is faulted in before the clock starts: the read is the disk's, not the
    // memory allocator's. The bytes start at a page boundary so that the reads are direct, as a backup's are.
    let mut buffer = vec![1u8; allocated as usize + DIRECT_ALIGN];
    let start = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    let held = &mut buffer[start..start + allocated as usize];
    let t = Instant::now();
    let mut at = 0usize;
    for r in &ranges {
        let mut offset = r.start;
        while offset < r.end {
            let n = (r.end - offset).min(READ_SIZE) as usize;
            source.read_exact_at(offset, &mut held[at..at + n]).unwrap_or_else(|e| fail(&e.to_string()));
            offset += n as u64;
            at += n;
        }
    }
    let read_s = t.elapsed().as_secs_f64();

    let pieces = chunk_pieces(&ranges, chunk_size, held);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Best of two rounds each: the ceiling is what the machine can do, not what a noisy moment allowed.
    let (hash_s, _) = best_of(2, || on_all_cores(&pieces, cores, false));
    let (hash_codec_s, stored_bytes) = best_of(2, || on_all_cores(&pieces, cores, true));

    let single = single_core(&pieces);
    let mib = |bytes: f64, s: f64| bytes / (1 << 20) as f64 / s;
    println!(
        "{}",
        serde_json::json!({
            "image": args[1],
            "chunk_size": chunk_size,
            "allocated_bytes": allocated,
            "cores": cores,
            "read_s": read_s,
            "read_mib_s": mib(allocated as f64, read_s),
            "hash_s": hash_s,
            "hash_codec_s": hash_codec_s,
            "stored_bytes": stored_bytes,
            "zstd_level": chunk::ZSTD_LEVEL,
            "sample_bytes": single.bytes,
            "blake3_mib_s": mib(single.bytes as f64, single.hash_s),
            "zstd_compress_mib_s": mib(single.bytes as f64, single.compress_s),
            "zstd_decompress_mib_s": mib(single.bytes as f64, single.decompress_s),
            "zstd_ratio": single.bytes as f64 / single.compressed_bytes as f64,
        })
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("limits: {msg}");
    std::process::exit(1);
}

/// The image's data ranges, as a backup finds them.
fn data_ranges(source: &mut RawFile) -> Vec<std::ops::Range<u64>> {
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(r) = source.next_data(from).unwrap_or_else(|e| fail(&e.to_string())) {
        from = r.end;
        ranges.push(r);
    }
    ranges
}

/// The held bytes cut where the disk's chunk boundaries fall.
fn chunk_pieces<'a>(ranges: &[std::ops::Range<u64>], chunk_size: u64, held: &'a [u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut at = 0usize;
    for r in ranges {
        let mut offset = r.start;
        while offset < r.end {
            let end = ((offset / chunk_size + 1) * chunk_size).min(r.end);
            let n = (end - offset) as usize;
            pieces.push(&held[at..at + n]);
            at += n;
            offset = end;
        }
    }
    pieces
}

fn best_of(rounds: usize, mut run: impl FnMut() -> (f64, u64)) -> (f64, u64) {
    (0..rounds).map(|_| run()).fold((f64::MAX, 0), |best, r| if r.0 < best.0 { r } else { best })
}

/// Hashes (and, with `encode`, encodes) every piece on `cores` threads taking the next piece as they go;
/// returns the seconds taken and the encoded bytes.
fn on_all_cores(pieces: &[&[u8]], cores: usize, encode: bool) -> (f64, u64) {
    let next = AtomicUsize::new(0);
    let stored = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| {
                let mut compressor = zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL).expect("zstd compressor");
                let mut out = Vec::new();
                let mut acc = 0u8;
                let mut bytes = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(piece) = pieces.get(i) else { break };
                    if chunk::is_all_zero(piece) {
                        continue;
                    }
                    acc ^= ChunkId::of(piece).0[0];
                    if encode {
                        chunk::encode_into(piece, &mut compressor, &mut out);
                        bytes += out.len();
                    }
                }
                std::hint::black_box(acc);
                stored.fetch_add(bytes, Ordering::Relaxed);
            });
        }
    });
    (t.elapsed().as_secs_f64(), stored.into_inner() as u64)
}

struct SingleCore {
    bytes: usize,
    compressed_bytes: usize,
    hash_s: f64,
    compress_s: f64,
    decompress_s: f64,
}

/// Single-core speeds on pieces spread over the whole image (best of three rounds).
fn single_core(pieces: &[&[u8]]) -> SingleCore {
    let nonzero: Vec<&[u8]> = pieces.iter().copied().filter(|p| !chunk::is_all_zero(p)).collect();
    let total: usize = nonzero.iter().map(|p| p.len()).sum();
    let step = (total / SAMPLE_BYTES).max(1);
    let sample: Vec<&[u8]> = nonzero.into_iter().step_by(step).collect();
    let bytes: usize = sample.iter().map(|p| p.len()).sum();
    let timed = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let hash_s = timed(&mut || {
        std::hint::black_box(sample.iter().fold(0u8, |acc, p| acc ^ ChunkId::of(p).0[0]));
    });
    let mut compressor = zstd::bulk::Compressor::new(chunk::ZSTD_LEVEL).expect("zstd compressor");
    let mut compressed: Vec<Vec<u8>> = Vec::new();
    let compress_s = timed(&mut || {
        compressed = sample.iter().map(|p| compressor.compress(p).expect("compress")).collect();
    });
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd decompressor");
    let decompress_s = timed(&mut || {
        for (c, p) in compressed.iter().zip(&sample) {
            std::hint::black_box(decompressor.decompress(c, p.len()).expect("decompress"));
        }
    });
    SingleCore { bytes, compressed_bytes: compressed.iter().map(Vec::len).sum(), hash_s, compress_s, decompress_s }
}
