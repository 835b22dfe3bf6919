//! `livemount library init|stats|gc`.

use clap::Subcommand;
use dedup::formats::DEFAULT_CHUNK_SIZE;
use dedup::Library;

use crate::cli::Cli;
use crate::output::{self, print_json, size};

#[derive(Debug, Subcommand)]
pub enum LibraryCmd {
    /// Create a new library at --library (LIVEMOUNT_LIBRARY, or the default folder): a folder, or
    /// s3://BUCKET/PREFIX in an existing bucket (credentials, region and endpoint from the AWS SDK's default
    /// chain, e.g. AWS_ENDPOINT_URL for an S3-compatible store).
    Init {
        /// Chunk size: a power of two from 4K to 16M. Larger chunks read faster cold, smaller ones dedup
        /// better; the default was chosen by measurement (see the README).
        #[arg(long, value_parser = output::parse_size)]
        chunk_size: Option<u64>,
    },
    /// Show what the library holds and how much dedup and compression save.
    Stats,
    /// Delete chunks that no backup uses. Safe while backups run (in an S3 library it then waits for a
    /// later run: backups of other appliances cannot mark what they reuse).
    Gc,
    /// Rebuild damaged or missing pack indexes from the packs themselves (every chunk checked).
    Repair,
}

pub fn run(cli: &Cli, cmd: &LibraryCmd) -> anyhow::Result<i32> {
    match cmd {
        LibraryCmd::Init { chunk_size } => {
            let cs = chunk_size.unwrap_or(u64::from(DEFAULT_CHUNK_SIZE));
            let cs = u32::try_from(cs).map_err(|_| dedup::Error::InvalidChunkSize { size: cs })?;
            let lib = Library::init(&cli.library, cs)?;
            if cli.json {
                print_json(&serde_json::json!({ "path": lib.root(), "chunk_size": lib.chunk_size() }));
            } else {
                println!("created library {} (chunk size {})", lib.root().display(), size(cs.into()));
            }
        }
        LibraryCmd::Stats => {
            let lib = super::open_library(cli)?;
            let s = dedup::stats::library_stats(&lib)?;
            if cli.json {
                print_json(&s);
            } else {
                println!("library      {}", s.path);
                println!("chunk size   {}", size(s.chunk_size.into()));
                println!("backups      {} ({} disks)", s.backups, s.disks);
                println!("disk bytes   {}", size(s.logical_bytes));
                println!("data bytes   {} (non-zero chunks of every disk)", size(s.data_bytes));
                println!("stored       {} in {} chunks", size(s.stored_bytes), s.stored_chunks);
                println!("reduction    {:.2}x (dedup and compression)", s.reduction_ratio);
            }
        }
        LibraryCmd::Repair => {
            let lib = super::open_library(cli)?;
            let report = dedup::gc::repair(&lib)?;
            if cli.json {
                print_json(&report);
            } else {
                let s = &report.store;
                println!(
                    "checked {} packs: rebuilt {} indexes ({} chunks recovered); {} damaged chunks and {} left out",
                    s.packs_checked,
                    s.indexes_rebuilt,
                    s.chunks_recovered,
                    s.chunks_damaged,
                    size(s.bytes_unreadable)
                );
                if s.indexes_dropped > 0 {
                    println!(
                        "removed {} indexes whose pack has gone ({} chunks named nowhere else are lost)",
                        s.indexes_dropped, s.chunks_dropped
                    );
                }
                for p in &report.lost {
                    println!("LOST chunk {}", p.chunk);
                    for r in &p.affects {
                        println!("  backup {} disk {} bytes {}..{} read as an error", r.backup, r.disk, r.start, r.end);
                    }
                }
                if report.lost.is_empty() {
                    println!("every finished backup has all its chunks");
                } else {
                    println!(
                        "{} chunks are lost: the backups above cannot be restored whole; `backup create` of the \
                         same disk stores them again if it still has them",
                        report.lost.len()
                    );
                }
            }
            return Ok(if report.lost.is_empty() { 0 } else { 1 });
        }
        LibraryCmd::Gc => {
            let lib = super::open_library(cli)?;
            let s = dedup::gc::collect_garbage(&lib)?;
            if cli.json {
                print_json(&s);
            } else if !s.swept {
                println!(
                    "{} chunks in use; nothing removed: of {} backups in progress on appliances sharing this \
                     library, some did not answer in time (see the log; run gc again)",
                    s.chunks_in_use, s.backups_running
                );
            } else {
                let w = &s.sweep;
                println!(
                    "removed {} chunks ({}): {} packs deleted, {} rewritten; {} chunks in use, {} unused kept in \
                     packs used recently",
                    w.chunks_removed,
                    size(w.bytes_removed),
                    w.packs_removed,
                    w.packs_rewritten,
                    s.chunks_in_use,
                    w.chunks_kept_recent
                );
                if s.packs_spared > 0 {
                    println!(
                        "{} packs left whole for the {} backups in progress that use them",
                        s.packs_spared, s.backups_running
                    );
                }
            }
        }
    }
    Ok(0)
}
