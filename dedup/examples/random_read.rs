//! Cold random-read latency of a backup: what a pseudo-disk pays on a recall that nothing has cached.
//!
//! Usage: `cargo run --release -p dedup --example random_read -- LIBRARY BACKUP [READS] [SEED]`
//! Opens BACKUP (id, prefix or name) of LIBRARY, then makes READS (default 300) 4 KiB `read_at` calls at
//! 4 KiB-aligned offsets drawn at random inside chunks that hold data (all-zero chunks are answered without
//! any I/O and would flatter the figures). Before each read the kernel's page, dentry and inode caches are
//! dropped (needs root; otherwise the figures are marked warm), so every read opens and reads its chunk file
//! from the disk. Only the `read_at` call is timed. Prints one JSON object; times are in milliseconds.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const READ: u64 = 4096;

/// splitmix64: a fixed seed gives the same offsets on every run, with no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: random_read LIBRARY BACKUP [READS] [SEED]");
        std::process::exit(2);
    }
    let reads: usize = args.get(3).map_or(300, |s| s.parse().expect("READS is a number"));
    let seed: u64 = args.get(4).map_or(42, |s| s.parse().expect("SEED is a number"));

    let lib = Arc::new(dedup::Library::open(Path::new(&args[1])).unwrap_or_else(|e| {
        eprintln!("opening library {}: {e}", args[1]);
        std::process::exit(1);
    }));
    let manifest = lib.resolve(&args[2]).unwrap_or_else(|e| {
        eprintln!("finding backup {}: {e}", args[2]);
        std::process::exit(1);
    });
    let disk = dedup::BackupDisk::open(lib.clone(), &manifest, 0).unwrap_or_else(|e| {
        eprintln!("opening disk 0 of backup {}: {e}", manifest.id);
        std::process::exit(1);
    });

    let mut data_chunks: Vec<u64> = Vec::new();
    disk.index()
        .for_each(|i, e| {
            if !e.id.is_zero() {
                data_chunks.push(i);
            }
            Ok(())
        })
        .unwrap_or_else(|e| {
            eprintln!("reading the index of backup {}: {e}", manifest.id);
            std::process::exit(1);
        });
    if data_chunks.is_empty() {
        eprintln!("backup {} holds no data", manifest.id);
        std::process::exit(1);
    }

    let mut rng = Rng(seed);
    let mut buf = vec![0u8; READ as usize];
    let mut times = Vec::with_capacity(reads);
    let mut cold = true;
    for _ in 0..reads {
        let chunk = data_chunks[rng.below(data_chunks.len() as u64) as usize];
        let range = disk.index().chunk_range(chunk);
        let blocks = ((range.end - range.start) / READ).max(1);
        let offset = (range.start + rng.below(blocks) * READ).min(disk.size() - READ);
        cold &= drop_caches();
        let t = Instant::now();
        disk.read_at(offset, &mut buf).unwrap_or_else(|e| {
            eprintln!("read at {offset}: {e}");
            std::process::exit(1);
        });
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "backup": manifest.id,
            "chunk_size": disk.chunk_size(),
            "reads": reads,
            "read_bytes": READ,
            "cold": cold,
            "median_ms": percentile(&times, 50.0),
            "p99_ms": percentile(&times, 99.0),
            "mean_ms": mean,
            "max_ms": times[times.len() - 1],
        })
    );
}
