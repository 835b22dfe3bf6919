//! `livemount backup create|list|show|restore|verify|forget`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use dedup::ingest::{self, DiskInput};
use dedup::{BackupDisk, Manifest};

use crate::cli::Cli;
use crate::cloud::instance_config::InstanceConfig;
use crate::output::{self, print_json, size};

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back up one or more disks (raw images, block devices, qcow2/vmdk/vhdx/vdi images) as one backup,
    /// or an EBS snapshot (`ebs:snap-…`, with `--account`) through the EBS direct APIs.
    Create {
        /// The disks of the machine, in order; or one `ebs:snap-…`.
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        /// A name to find the backup by.
        #[arg(long)]
        name: Option<String>,
        /// With `ebs:snap-…`: the cloud account the snapshot is read in (`livemount cloud account list`).
        #[arg(long)]
        account: Option<String>,
        /// With `ebs:snap-…`: the Region (default: the account's).
        #[arg(long)]
        region: Option<String>,
        /// With `ebs:snap-…`: GetSnapshotBlock calls in flight at once.
        #[arg(long)]
        requests_in_flight: Option<usize>,
    },
    /// List the backups, oldest first.
    List,
    /// Show a backup: its disks, partitions and figures.
    Show {
        /// Backup id, unique id prefix, or name.
        id: String,
    },
    /// Write a backup's disks back out as sparse raw files, bit-identical to the sources.
    Restore {
        /// Backup id, unique id prefix, or name.
        id: String,
        /// The file to write (one disk), a folder to write disk<N>.img files into (several disks), or
        /// `ebs:` for new EBS snapshots written through the EBS direct APIs (with `--account`).
        dest: PathBuf,
        /// Restore only this disk (numbered from 0) into DEST.
        #[arg(long)]
        disk: Option<usize>,
        /// With `ebs:`: the cloud account that gets the snapshots.
        #[arg(long)]
        account: Option<String>,
        /// With `ebs:`: a snapshot the new one is a child of; only the blocks that differ are written.
        #[arg(long)]
        parent: Option<String>,
        /// With `ebs:`: the Region (default: the account's).
        #[arg(long)]
        region: Option<String>,
    },
    /// Re-read and re-hash every chunk that backups use; name each missing or corrupt chunk.
    Verify {
        /// Verify only this backup (default: all).
        id: Option<String>,
    },
    /// Remove a backup (its chunks go at the next `library gc` if nothing else uses them).
    Forget {
        /// Backup id, unique id prefix, or name.
        id: String,
        /// Forget it even while a live mount uses it (the mount's reads of chunks that gc then removes fail).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cli: &Cli, cmd: &BackupCmd) -> anyhow::Result<i32> {
    let lib = Arc::new(super::open_library(cli)?);
    match cmd {
        BackupCmd::Create { sources, name, account, region, requests_in_flight } => match ebs_snapshot_of(sources)? {
            Some(snapshot) => {
                let req = crate::cloud::ebs_backup::Request {
                    snapshot,
                    account: account.clone().context("backing up an EBS snapshot needs --account ACCOUNT")?,
                    name: name.clone(),
                    region: region.clone(),
                    requests_in_flight: *requests_in_flight,
                };
                create_from_snapshot(cli, &req)
            }
            None if account.is_some() || region.is_some() => {
                anyhow::bail!("--account and --region are for an EBS snapshot source (ebs:snap-…)")
            }
            None => create(cli, &lib, sources, name.clone()),
        },
        BackupCmd::List => {
            let all = lib.backups()?;
            if cli.json {
                print_json(&all);
            } else if all.is_empty() {
                println!("no backups in {}", lib.root().display());
            } else {
                println!("{:<23} {:<20} {:<20} {:>5} {:>10}  KIND", "ID", "NAME", "CREATED", "DISKS", "SIZE");
                for m in &all {
                    let (disks, total, kind) = match snapshot_backup(m) {
                        Some(c) => {
                            let gib: u64 = c.block_devices.iter().map(|b| b.size_gib.max(0) as u64).sum();
                            (c.block_devices.len(), gib << 30, "snapshots".to_string())
                        }
                        None => {
                            // A committed mount shows its lineage: the backup it is a new version of.
                            let kind = match crate::daemon::CommitOrigin::of(m) {
                                Some(o) => format!("library, version of {}", o.parent_backup),
                                None => "library".to_string(),
                            };
                            (m.disks.len(), m.disks.iter().map(|d| d.size).sum(), kind)
                        }
                    };
                    println!(
                        "{:<23} {:<20} {:<20} {:>5} {:>10}  {kind}",
                        m.id,
                        m.name.as_deref().unwrap_or("-"),
                        &m.created[..19.min(m.created.len())],
                        disks,
                        size(total)
                    );
                }
            }
            Ok(0)
        }
        BackupCmd::Show { id } => {
            let m = lib.resolve(id)?;
            if cli.json {
                print_json(&m);
            } else {
                show(&m);
            }
            Ok(0)
        }
        BackupCmd::Restore { id, dest, disk, account, parent, region } => {
            if dest.as_os_str() == "ebs:" {
                let req = crate::cloud::ebs_restore::Request {
                    backup: lib.resolve(id)?.id,
                    account: account.clone().context("restoring into EBS snapshots needs --account ACCOUNT")?,
                    disk: *disk,
                    parent: parent.clone(),
                    region: region.clone(),
                };
                return restore_to_snapshots(cli, &req);
            }
            if account.is_some() || parent.is_some() || region.is_some() {
                anyhow::bail!("--account, --parent and --region are for a restore into EBS snapshots (ebs:)");
            }
            restore(cli, &lib, id, dest, *disk)
        }
        BackupCmd::Verify { id } => verify(cli, &lib, id.as_deref()),
        BackupCmd::Forget { id, force } => {
            let m = lib.resolve(id)?;
            if let Some(c) = snapshot_backup(&m) {
                return forget_snapshot_backup(cli, &m, &c, *force);
            }
            let m = lib.forget(&m.id, *force)?;
            if cli.json {
                print_json(&serde_json::json!({ "forgotten": m.id }));
            } else {
                println!("forgot backup {}; run `livemount library gc` to free its unused chunks", m.id);
            }
            Ok(0)
        }
    }
}

/// The snapshot id of an `ebs:snap-…` source, which must then be the only one.
fn ebs_snapshot_of(sources: &[PathBuf]) -> anyhow::Result<Option<String>> {
    let snapshots: Vec<&str> = sources.iter().filter_map(|s| s.to_str().and_then(|s| s.strip_prefix("ebs:"))).collect();
    match snapshots.as_slice() {
        [] => Ok(None),
        [s] if sources.len() == 1 && s.starts_with("snap-") => Ok(Some(s.to_string())),
        [s] if sources.len() == 1 => anyhow::bail!("ebs:{s} names no snapshot: write ebs:snap-…"),
        _ => anyhow::bail!("an EBS snapshot is backed up on its own: give one ebs:snap-… and no other source"),
    }
}

/// A backup of an EBS snapshot, made by the daemon (it holds the accounts and the SDK's credentials).
fn create_from_snapshot(cli: &Cli, req: &crate::cloud::ebs_backup::Request) -> anyhow::Result<i32> {
    let client = crate::client::Client::new(cli)?;
    let job: crate::daemon::JobInfo = client.post("/v1/cloud/ebs-backups", req)?;
    let job = super::cloud::follow(cli, &client, job, "backup")?;
    let Some(result) = job.result.filter(|_| job.state == "succeeded") else {
        eprintln!("livemount: backup of {} failed: {}", req.snapshot, job.error.unwrap_or(job.state));
        return Ok(1);
    };
    if cli.json {
        print_json(&result);
        return Ok(0);
    }
    let stats: dedup::manifest::IngestStats =
        serde_json::from_value(result["stats"].clone()).context("reading the daemon's answer")?;
    print_created(result["id"].as_str().unwrap_or("?"), &stats);
    if let Some(o) = crate::cloud::ebs_backup::SnapshotOrigin::from_value(&result["origin"]) {
        match &o.parent_backup {
            Some(p) => println!("  {} changed block(s) read; the rest kept from backup {p}", o.blocks_read),
            None => println!("  {} block(s) read; a full backup", o.blocks_read),
        }
    }
    Ok(0)
}

fn create(cli: &Cli, lib: &dedup::Library, sources: &[PathBuf], name: Option<String>) -> anyhow::Result<i32> {
    let mut disks = Vec::new();
    for path in sources {
        let mut source = dedup::source::open(path)?;
        let partition_table = crate::partitions::summarize(&mut *source)
            .with_context(|| format!("reading the partition table of {}", path.display()))?;
        disks.push(DiskInput { label: path.display().to_string(), source, partition_table, parent: None });
    }
    let total = disks.iter().map(|d| d.source.size()).sum();
    let bar = output::byte_bar(total, cli.json, "backup");
    let m = ingest::create_backup(lib, name, disks, &|p| bar.set_position(p.done))?;
    bar.finish_and_clear();
    if cli.json {
        print_json(&serde_json::json!({ "id": m.id, "name": m.name, "stats": m.stats }));
    } else {
        print_created(&m.id, &m.stats);
    }
    Ok(0)
}

fn print_created(id: &str, s: &dedup::manifest::IngestStats) {
    println!("backup {id} created");
    println!(
        "  read {} of {} in {:.1} s; stored {} new ({} chunks new, {} reused, {} zero)",
        size(s.bytes_read),
        size(s.disk_bytes),
        s.seconds,
        size(s.new_bytes_stored),
        s.chunks_new,
        s.chunks_reused,
        s.chunks_zero
    );
}

/// One line of where a backup's disks came from: the instance a cloud backup was made of.
/// The instance configuration of a snapshot backup (its data in EBS snapshots, not in the library).
fn snapshot_backup(m: &Manifest) -> Option<InstanceConfig> {
    InstanceConfig::of(m).filter(|c| c.is_snapshot_backup())
}

/// A snapshot backup is forgotten by the daemon, which holds the accounts: it removes the image and
/// snapshots in the member account too.
fn forget_snapshot_backup(cli: &Cli, m: &Manifest, c: &InstanceConfig, force: bool) -> anyhow::Result<i32> {
    let client = crate::client::Client::new(cli)?;
    let path = format!("/v1/cloud/snapshot-backups/{}{}", m.id, if force { "?force=true" } else { "" });
    let out: serde_json::Value = client.delete(&path).with_context(|| {
        format!(
            "forgetting snapshot backup {} deregisters image {} and deletes its snapshots in account {}, which the daemon does",
            m.id,
            c.image_id.as_deref().unwrap_or("?"),
            c.account
        )
    })?;
    if cli.json {
        print_json(&out);
    } else {
        println!(
            "forgot snapshot backup {}; image {} and its snapshots removed from account {}",
            m.id,
            c.image_id.as_deref().unwrap_or("?"),
            c.account
        );
    }
    Ok(0)
}

fn describe_origin(origin: &serde_json::Value) -> String {
    let field = |k: &str| origin.get(k).and_then(|v| v.as_str()).unwrap_or("-");
    match field("kind") {
        "ec2-snapshots" => format!(
            "snapshot backup of EC2 instance {} of account {} ({}), {}: image {} with {} EBS snapshots, kept in that account",
            field("instance_id"),
            field("account"),
            field("region"),
            field("instance_type"),
            field("image_id"),
            origin.get("block_devices").and_then(|b| b.as_array()).map_or(0, |b| b.len())
        ),
        "ec2-instance" => format!(
            "EC2 instance {} of account {} ({}), {}, {} EBS volumes",
            field("instance_id"),
            field("account"),
            field("region"),
            field("instance_type"),
            origin.get("block_devices").and_then(|b| b.as_array()).map_or(0, |b| b.len())
        ),
        "mount-commit" => format!(
            "live mount {} committed: a new version of backup {}, sharing its unchanged chunks",
            field("mount"),
            field("parent_backup")
        ),
        other => other.to_string(),
    }
}

fn show(m: &Manifest) {
    println!("backup   {}", m.id);
    println!("name     {}", m.name.as_deref().unwrap_or("-"));
    println!("created  {}", m.created);
    if let Some(origin) = &m.origin {
        println!("origin   {}", describe_origin(origin));
    }
    if let Some(c) = snapshot_backup(m) {
        for (n, b) in c.block_devices.iter().enumerate() {
            println!(
                "disk {n}   {} of {} ({} GiB): snapshot {}",
                b.device_name,
                b.volume_id,
                b.size_gib,
                b.snapshot_id.as_deref().unwrap_or("?")
            );
        }
    }
    for (n, d) in m.disks.iter().enumerate() {
        println!(
            "disk {n}   {} ({}, {}), {} chunks of {}, {} zero",
            d.source,
            d.format,
            size(d.size),
            d.chunk_count,
            size(d.chunk_size.into()),
            d.zero_chunks
        );
        match &d.partition_table {
            None => println!("         no partition table"),
            Some(t) => {
                println!("         {} partition table", t.scheme);
                for p in &t.partitions {
                    println!(
                        "         {:>3}  start {:>12}  size {:>10}  {}",
                        p.number,
                        p.start,
                        size(p.size),
                        p.type_name
                    );
                }
            }
        }
    }
    let s = &m.stats;
    println!(
        "stats    read {}, stored {} new, {} chunks new, {} reused, {:.1} s",
        size(s.bytes_read),
        size(s.new_bytes_stored),
        s.chunks_new,
        s.chunks_reused,
        s.seconds
    );
}

fn restore(
    cli: &Cli,
    lib: &Arc<dedup::Library>,
    id: &str,
    dest: &std::path::Path,
    only: Option<usize>,
) -> anyhow::Result<i32> {
    let m = lib.resolve(id)?;
    if let Some(c) = snapshot_backup(&m) {
        anyhow::bail!(
            "backup {} is a snapshot backup: its data is in EBS snapshots of account {}, not in the library; `livemount cloud backup-copy {}` copies it in",
            m.id,
            c.account,
            m.id
        );
    }
    let disks: Vec<usize> = match only {
        Some(d) if d >= m.disks.len() => {
            return Err(dedup::Error::DiskNotFound { backup: m.id.clone(), disk: d }.into())
        }
        Some(d) => vec![d],
        None => (0..m.disks.len()).collect(),
    };
    let targets: Vec<PathBuf> = if disks.len() == 1 {
        vec![dest.to_path_buf()]
    } else {
        std::fs::create_dir_all(dest).with_context(|| format!("creating folder {}", dest.display()))?;
        disks.iter().map(|d| dest.join(format!("disk{d}.img"))).collect()
    };
    let mut written = Vec::new();
    for (d, target) in disks.iter().zip(&targets) {
        let disk = BackupDisk::open(lib.clone(), &m, *d)?;
        let bar = output::byte_bar(disk.size(), cli.json, &format!("disk {d}"));
        dedup::restore::restore_disk(&disk, target, &|done| bar.set_position(done))
            .with_context(|| format!("restoring disk {d} of backup {} to {}", m.id, target.display()))?;
        bar.finish_and_clear();
        written.push(serde_json::json!({ "disk": d, "path": target, "size": disk.size() }));
        if !cli.json {
            println!("restored disk {d} ({}) to {}", size(disk.size()), target.display());
        }
    }
    if cli.json {
        print_json(&serde_json::json!({ "id": m.id, "disks": written }));
    }
    Ok(0)
}

/// A restore into EBS snapshots, made by the daemon (it holds the accounts and the SDK's credentials).
fn restore_to_snapshots(cli: &Cli, req: &crate::cloud::ebs_restore::Request) -> anyhow::Result<i32> {
    let client = crate::client::Client::new(cli)?;
    let job: crate::daemon::JobInfo = client.post("/v1/cloud/ebs-restores", req)?;
    let job = super::cloud::follow(cli, &client, job, "restore")?;
    let Some(result) = job.result.filter(|_| job.state == "succeeded") else {
        eprintln!("livemount: restore of backup {} failed: {}", req.backup, job.error.unwrap_or(job.state));
        return Ok(1);
    };
    if cli.json {
        print_json(&result);
        return Ok(0);
    }
    let r: crate::cloud::ebs_restore::Restored =
        serde_json::from_value(result).context("reading the daemon's answer")?;
    for (n, s) in r.disks.iter().zip(&r.snapshots) {
        println!("restored disk {n} of backup {} into snapshot {s} of account {} ({})", r.backup, r.account, r.region);
    }
    println!("  {} block(s) written in {:.1} s", r.blocks_written, r.seconds);
    Ok(0)
}

fn verify(cli: &Cli, lib: &dedup::Library, id: Option<&str>) -> anyhow::Result<i32> {
    let backups = match id {
        Some(id) => vec![lib.resolve(id)?],
        None => lib.backups()?,
    };
    let bar = output::count_bar(0, cli.json, "verify");
    let report = dedup::verify::verify(lib, &backups, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if cli.json {
        print_json(&report);
    } else {
        for p in &report.problems {
            println!("{} chunk {}: {}", p.kind.to_uppercase(), p.chunk, p.reason);
            for r in &p.affects {
                println!("  affects backup {} disk {} bytes {}..{}", r.backup, r.disk, r.start, r.end);
            }
        }
        if report.is_clean() {
            println!(
                "verified {} backups: {} chunks ({}) all intact",
                report.backups,
                report.chunks_checked,
                size(report.bytes_checked)
            );
        } else {
            println!("verify FAILED: {} of {} chunks missing or corrupt", report.problems.len(), report.chunks_checked);
            if report.problems.iter().any(|p| p.kind == "missing") {
                println!(
                    "missing chunks may still be in their packs with a damaged index: `livemount library repair` \
                     rebuilds indexes from the packs, then verify again"
                );
            }
        }
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}
