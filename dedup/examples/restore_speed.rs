//! Restore throughput: backs up a generated image (half incompressible data, a quarter text-like, a quarter
//! zeros) once, then restores it and prints the seconds the restore took (the final fsync included).
//!
//! Usage: `cargo run --release -p dedup --example restore_speed -- WORK_DIR [MIB]` (default 1024 MiB). WORK_DIR
//! keeps the image and the library between runs, so that later runs only time the restore.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn make_image(path: &Path, mib: usize) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 1 << 20];
    for n in 0..mib {
        match n % 4 {
            0 | 1 => block.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
            2 => block.iter_mut().enumerate().for_each(|(i, b)| *b = b"restore speed "[(i + n) % 14]),
            _ => block.fill(0),
        }
        f.write_all(&block)?;
    }
    f.flush()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let work = Path::new(args.get(1).ok_or("usage: restore_speed WORK_DIR [MIB]")?);
    let mib: usize = args.get(2).map_or(Ok(1024), |s| s.parse())?;
    std::fs::create_dir_all(work)?;
    let image = work.join("image.raw");
    let lib_dir = work.join("library");
    if !lib_dir.exists() {
        make_image(&image, mib)?;
        let lib = dedup::Library::init(&lib_dir, 1 << 20)?;
        let disk = dedup::ingest::DiskInput {
            label: "image".into(),
            source: dedup::source::open(&image)?,
            partition_table: None,
            parent: None,
        };
        dedup::ingest::create_backup(&lib, Some("speed".into()), vec![disk], &|_| {})?;
    }
    let lib = Arc::new(dedup::Library::open(&lib_dir)?);
    let manifest = lib.resolve("speed")?;
    let disk = dedup::BackupDisk::open(lib, &manifest, 0)?;
    let dest = work.join("restored.raw");
    let start = Instant::now();
    dedup::restore::restore_disk(&disk, &dest, &|_| {})?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"mib\": {}, \"seconds\": {secs:.3}, \"mib_per_s\": {:.0}}}",
        disk.size() >> 20,
        (disk.size() >> 20) as f64 / secs
    );
    Ok(())
}
