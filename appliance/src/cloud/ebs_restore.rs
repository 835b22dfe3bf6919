//! A backup restored into new EBS snapshots of an account through the EBS direct APIs
//! (`livemount backup restore ID ebs: --account A [--parent snap-…]`), with no volume: only allocated
//! blocks are sent. With a parent snapshot, the new snapshot starts as the parent (StartSnapshot's
//! ParentSnapshotId) and only the blocks that differ from it are sent: compared by chunk id, unread, when
//! the library holds a backup of that very snapshot, else by reading the parent's listed blocks.
//!
//! Each snapshot is journaled and tagged with the job until the job succeeds, then handed over (the
//! user's, untagged); a failure or a `kill -9` removes it.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ebs_backup::SnapshotOrigin;
use super::ebs_snapshot::{self, SnapshotBlocks, DEFAULT_REQUEST_BUDGET};
use super::ebs_upload::{BackupBlocks, BlockSource, BLOCK};
use super::restore::{name_tags, restore_tags};
use super::workflow::{Made, NewSnapshot, Report, Workflow};
use super::{sdk, Cloud, CloudError};

/// What `backup restore ID ebs:` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = EbsRestoreRequest)]
pub struct Request {
    pub backup: String,
    pub account: String,
    /// Only this disk (default: every disk, one snapshot each).
    #[serde(default)]
    pub disk: Option<usize>,
    /// A snapshot the new one is a child of (one disk only).
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

/// What the account got.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restored {
    pub backup: String,
    pub account: String,
    pub region: String,
    /// The disks restored, and the snapshot of each.
    pub disks: Vec<usize>,
    pub snapshots: Vec<String>,
    pub blocks_written: u64,
    pub seconds: f64,
}

pub async fn run(
    cloud: &Cloud,
    library: Arc<dedup::Library>,
    job_id: &str,
    backup: &dedup::Manifest,
    req: &Request,
    report: Arc<dyn Report>,
) -> Result<Restored, CloudError> {
    let job = Workflow::new(cloud, job_id, &req.account, req.region.as_deref()).await?;
    let mut made = Made::default();
    let result = match write(&job, library, backup, req, report.clone(), &mut made).await {
        Ok(r) => {
            report.step("handing the snapshots over");
            job.hand_over(&mut made).await.map(|()| r)
        }
        Err(e) => {
            report.step("removing what the restore made");
            Err(e)
        }
    };
    job.finish(result, &made, &job.purpose, |r: &Restored| format!("snapshots {} were made", r.snapshots.join(", ")))
        .await
}

/// The disks to restore, checked against the request.
pub fn disks_of(backup: &dedup::Manifest, req: &Request) -> Result<Vec<usize>, CloudError> {
    if backup.disks.is_empty() {
        return Err(CloudError::BadRequest(format!(
            "backup {} holds no disk in the library (a snapshot backup: its snapshots are in AWS already)",
            backup.id
        )));
    }
    let disks = match req.disk {
        Some(d) if d >= backup.disks.len() => {
            return Err(CloudError::BadRequest(format!("backup {} has no disk {d}", backup.id)))
        }
        Some(d) => vec![d],
        None => (0..backup.disks.len()).collect(),
    };
    if req.parent.is_some() && disks.len() > 1 {
        return Err(CloudError::BadRequest(format!(
            "backup {} has {} disks and a parent snapshot is the parent of one: choose it with --disk",
            backup.id,
            disks.len()
        )));
    }
    Ok(disks)
}

async fn write(
    job: &Workflow<'_>,
    library: Arc<dedup::Library>,
    backup: &dedup::Manifest,
    req: &Request,
    report: Arc<dyn Report>,
    made: &mut Made,
) -> Result<Restored, CloudError> {
    let started = Instant::now();
    let disks = disks_of(backup, req)?;
    let config = job.cloud.accounts.config(&req.account, &job.region, "ebs-restore").await?;
    let ebs = sdk::ebs(&config);
    let parent = match &req.parent {
        Some(p) => {
            report.step("reading the parent snapshot's block list");
            let info = ebs_snapshot::describe(&job.member, &req.account, p).await?;
            let blocks = SnapshotBlocks::open(ebs.clone(), &req.account, p, DEFAULT_REQUEST_BUDGET).await?;
            Some((info, Arc::new(blocks)))
        }
        None => None,
    };
    let tags: Vec<(String, String)> = restore_tags(job, &name_tags(backup))
        .iter()
        .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
        .collect();
    let total: u64 = disks.iter().map(|&d| backup.disks[d].size).sum();
    let (mut snapshots, mut blocks_written, mut done_before) = (Vec::new(), 0u64, 0u64);
    for &n in &disks {
        report.step(&format!("writing disk {n} into a snapshot through the EBS direct APIs"));
        let disk = {
            let (lib, m) = (library.clone(), backup.clone());
            tokio::task::spawn_blocking(move || dedup::BackupDisk::open(lib, &m, n))
                .await
                .map_err(|e| CloudError::Conflict(format!("opening disk {n}: {e}")))?
                .map_err(|e| CloudError::Conflict(format!("opening disk {n} of backup {}: {e}", backup.id)))?
        };
        let size = disk.size();
        let disk = Arc::new(disk);
        let (source, parent_id, size_gib): (Arc<dyn BlockSource>, _, _) = match &parent {
            Some((info, blocks)) => {
                let known = known_parent(&library, &info.snapshot_id, size)?;
                let diff = Differences {
                    ours: BackupBlocks(disk),
                    parent: blocks.clone(),
                    known,
                    runtime: tokio::runtime::Handle::current(),
                };
                (Arc::new(diff), Some(info.snapshot_id.clone()), Some(info.size_gib))
            }
            None => (Arc::new(BackupBlocks(disk)), None, None),
        };
        let progress = |done: u64, _| report.bytes(done_before + done, total);
        let new = NewSnapshot {
            disk: n,
            in_member: true,
            source,
            size_gib,
            parent: parent_id.as_deref(),
            description: format!("livemount restore of disk {n} of backup {}", backup.id),
            tags: tags.clone(),
        };
        let uploaded = job.write_snapshot(&ebs, new, &progress, made).await;
        let uploaded = uploaded?;
        blocks_written += uploaded.blocks_written;
        done_before += size;
        snapshots.push(uploaded.snapshot_id);
    }
    report.step("waiting for the snapshots to complete");
    for snap in &snapshots {
        super::images::wait_snapshot(&job.member, snap).await?;
    }
    Ok(Restored {
        backup: backup.id.clone(),
        account: req.account.clone(),
        region: job.region.clone(),
        disks,
        snapshots,
        blocks_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The disk of a library backup made from `snapshot` itself, of `size`: its chunk ids are the parent's
/// content, so comparing ids tells which blocks differ without reading the parent.
fn known_parent(
    library: &dedup::Library,
    snapshot: &str,
    size: u64,
) -> Result<Option<dedup::index::DiskIndex>, CloudError> {
    let all = library.backups().map_err(|e| CloudError::Conflict(format!("listing the library's backups: {e}")))?;
    let Some(m) = all.iter().rev().find(|m| {
        m.disks.len() == 1
            && m.disks[0].size == size
            && SnapshotOrigin::of(m).is_some_and(|o| o.snapshot_id == snapshot)
    }) else {
        return Ok(None);
    };
    library.load_index(m, 0).map(Some).map_err(|e| CloudError::Conflict(format!("reading backup {}: {e}", m.id)))
}

/// A backup disk as the blocks that differ from a parent snapshot: a block the same as the parent's is
/// not sent (`None`); one that differs is sent whole, as zeros when it is zeros now.
struct Differences {
    ours: BackupBlocks,
    parent: Arc<SnapshotBlocks>,
    /// The parent's content as a library backup, when there is one.
    known: Option<dedup::index::DiskIndex>,
    runtime: tokio::runtime::Handle,
}

impl Differences {
    /// Whether block `index` is the same in the parent, by chunk id; `None` when that cannot be told.
    fn same_by_id(&self, index: u64) -> Result<Option<bool>, String> {
        let Some(known) = &self.known else { return Ok(None) };
        let ours = self.ours.0.index();
        if known.chunk_size != ours.chunk_size {
            return Ok(None);
        }
        let cs = u64::from(ours.chunk_size);
        let start = index * BLOCK as u64;
        let end = (start + BLOCK as u64).min(ours.disk_size);
        for chunk in start / cs..end.div_ceil(cs) {
            let (a, b) =
                (ours.entry(chunk).map_err(|e| e.to_string())?, known.entry(chunk).map_err(|e| e.to_string())?);
            if a.id != b.id {
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
    }
}

impl BlockSource for Differences {
    fn size(&self) -> u64 {
        self.ours.size().max(self.parent.size())
    }

    fn name(&self) -> String {
        format!("{} against snapshot {}", self.ours.name(), self.parent.snapshot_id())
    }

    fn read_block(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
        let same = self.same_by_id(index)?;
        if same == Some(true) {
            return Ok(None);
        }
        let ours = if index * (BLOCK as u64) < self.ours.size() { self.ours.read_block(index)? } else { None };
        if same == Some(false) {
            // Known to differ: the parent need not be read.
            return Ok(Some(ours.unwrap_or_else(|| vec![0u8; BLOCK])));
        }
        let theirs = if self.parent.is_listed(index) {
            self.runtime.block_on(self.parent.read_block(index)).map_err(|e| e.to_string())?
        } else {
            None
        };
        let zeros = |b: &Option<Vec<u8>>| b.as_ref().is_none_or(|d| d.iter().all(|&x| x == 0));
        if ours == theirs || (zeros(&ours) && zeros(&theirs)) {
            return Ok(None);
        }
        Ok(Some(ours.unwrap_or_else(|| vec![0u8; BLOCK])))
    }
}
