//! What one core of this machine can do on real data: BLAKE3 hashing and zstd compression at the library's level.
//! These are the ceilings of ingest (hash every chunk, compress the new ones) and of cold reads (decompress).
//!
//! Usage: `cargo run --release -p dedup --example limits -- IMAGE [SAMPLE_MIB]`
//! Reads up to SAMPLE_MIB (default 256) of non-zero 1 MiB blocks spread over IMAGE, then times, on this thread
//! only: `blake3::hash`, `zstd::bulk` compression at `dedup::chunk::ZSTD_LEVEL`, and decompression.
//! Prints one JSON object.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const BLOCK: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: limits IMAGE [SAMPLE_MIB]");
        std::process::exit(2);
    }
    let sample_mib: usize = args.get(2).map_or(256, |s| s.parse().expect("SAMPLE_MIB is a number"));
    let file = File::open(&args[1]).expect("open the image");
    let size = file.metadata().expect("stat the image").len();

    // Spread the sample over the whole image (every k-th block), so it is not just the start of the file system.
    let blocks = (size / BLOCK as u64) as usize;
    let mut nonzero = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    for b in 0..blocks {
        let n = file.read_at(&mut buf, (b * BLOCK) as u64).expect("read the image");
        if !dedup::chunk::is_all_zero(&buf[..n]) {
            nonzero.push(b);
        }
    }
    let step = (nonzero.len() / sample_mib).max(1);
    let mut sample: Vec<Vec<u8>> = Vec::new();
    for &b in nonzero.iter().step_by(step).take(sample_mib) {
        let mut v = vec![0u8; BLOCK];
        file.read_at(&mut v, (b * BLOCK) as u64).expect("read the image");
        sample.push(v);
    }
    let bytes: usize = sample.iter().map(Vec::len).sum();
    if bytes == 0 {
        eprintln!("no non-zero data in {}", args[1]);
        std::process::exit(1);
    }

    // Best of three rounds: the machine is shared and noisy; the ceiling is what matters here.
    let mut hash_s = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut acc = 0u8;
        for block in &sample {
            acc ^= blake3::hash(block).as_bytes()[0];
        }
        std::hint::black_box(acc);
        hash_s = hash_s.min(t.elapsed().as_secs_f64());
    }

    let mut comp = zstd::bulk::Compressor::new(dedup::chunk::ZSTD_LEVEL).expect("zstd compressor");
    let mut compressed = Vec::with_capacity(sample.len());
    let mut zstd_s = f64::MAX;
    for round in 0..2 {
        let t = Instant::now();
        let mut out = Vec::with_capacity(sample.len());
        for block in &sample {
            out.push(comp.compress(block).expect("compress"));
        }
        zstd_s = zstd_s.min(t.elapsed().as_secs_f64());
        if round == 0 {
            compressed = out;
        }
    }
    let compressed_bytes: usize = compressed.iter().map(Vec::len).sum();

    let mut dec = zstd::bulk::Decompressor::new().expect("zstd decompressor");
    let mut unzstd_s = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for c in &compressed {
            std::hint::black_box(dec.decompress(c, BLOCK).expect("decompress"));
        }
        unzstd_s = unzstd_s.min(t.elapsed().as_secs_f64());
    }

    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "{}",
        serde_json::json!({
            "sample_bytes": bytes,
            "zstd_level": dedup::chunk::ZSTD_LEVEL,
            "blake3_mib_s": mib / hash_s,
            "zstd_compress_mib_s": mib / zstd_s,
            "zstd_decompress_mib_s": mib / unzstd_s,
            "zstd_ratio": bytes as f64 / compressed_bytes as f64,
        })
    );
}
