//! A backup of an EBS snapshot read through the EBS direct APIs, with nothing made in AWS
//! (`livemount backup create ebs:snap-… --account A`): only the blocks ListSnapshotBlocks lists are read.
//! Incremental forever: when the library holds a backup of an older snapshot of the same volume (same
//! owner, Region and volume; for snapshots written through EBS direct, which all name `vol-ffffffff`,
//! the same size) and EBS says the two are of one lineage, ListChangedBlocks between them names the only
//! blocks read; every other chunk's id comes from that backup's index, unread.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::ebs_snapshot::{self, SnapshotBlocks, SnapshotInfo, DEFAULT_REQUEST_BUDGET};
use super::ebs_upload::BLOCK;
use super::workflow::Report;
use super::{sdk, Cloud, CloudError};

/// What `backup create ebs:…` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = EbsBackupRequest)]
pub struct Request {
    pub snapshot: String,
    pub account: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// GetSnapshotBlock calls in flight at once.
    #[serde(default)]
    pub requests_in_flight: Option<usize>,
}

/// The manifest's `origin` of a backup made from a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotOrigin {
    /// Always `ebs-snapshot`.
    pub kind: String,
    pub snapshot_id: String,
    pub volume_id: String,
    /// The snapshot's owner (an account id) and Region.
    pub owner: String,
    pub region: String,
    /// The name of the cloud account it was read through.
    pub account: String,
    pub size_gib: u64,
    /// The backup whose chunks the unchanged blocks kept, and how many blocks were read.
    #[serde(default)]
    pub parent_backup: Option<String>,
    pub blocks_read: u64,
}

pub const ORIGIN_KIND: &str = "ebs-snapshot";

impl SnapshotOrigin {
    pub fn of(manifest: &dedup::Manifest) -> Option<SnapshotOrigin> {
        Self::from_value(manifest.origin.as_ref()?)
    }

    pub fn from_value(origin: &serde_json::Value) -> Option<SnapshotOrigin> {
        (origin.get("kind")?.as_str()? == ORIGIN_KIND).then(|| serde_json::from_value(origin.clone()).ok())?
    }

    /// Whether `other` came from an earlier snapshot of the same volume.
    fn same_volume(&self, info: &SnapshotInfo, region: &str) -> bool {
        let placeholder = info.volume_id == "vol-ffffffff";
        self.owner == info.owner
            && self.region == region
            && self.volume_id == info.volume_id
            && self.snapshot_id != info.snapshot_id
            && (!placeholder || self.size_gib == info.size_gib)
    }
}

/// Backs the snapshot up; gives the new backup's manifest.
pub async fn run(
    cloud: &Cloud,
    library: Arc<dedup::Library>,
    req: &Request,
    report: Arc<dyn Report>,
) -> Result<dedup::Manifest, CloudError> {
    let region = cloud.accounts.region_of(&req.account, req.region.as_deref()).await?;
    let config = cloud.accounts.config(&req.account, &region, "ebs-backup").await?;
    report.step("looking up the snapshot");
    let info = ebs_snapshot::describe(&sdk::ec2(&config), &req.account, &req.snapshot).await?;
    let budget = req.requests_in_flight.unwrap_or(DEFAULT_REQUEST_BUDGET);
    report.step("listing the snapshot's blocks");
    let blocks = Arc::new(SnapshotBlocks::open(sdk::ebs(&config), &req.account, &req.snapshot, budget).await?);
    let parent = find_parent(&library, &info, &region, &blocks).await?;
    let mut origin = SnapshotOrigin {
        kind: ORIGIN_KIND.to_string(),
        snapshot_id: info.snapshot_id.clone(),
        volume_id: info.volume_id.clone(),
        owner: info.owner.clone(),
        region,
        account: req.account.clone(),
        size_gib: info.size_gib,
        parent_backup: parent.as_ref().map(|(m, _)| m.id.clone()),
        blocks_read: 0,
    };
    origin.blocks_read = match &parent {
        Some((_, changed)) => changed.iter().filter(|b| blocks.is_listed(**b)).count() as u64,
        None => blocks.listed_count() as u64,
    };
    report.step(&match &parent {
        Some((m, changed)) => format!("reading the {} blocks changed since backup {}", changed.len(), m.id),
        None => format!("reading the {} blocks the snapshot holds", blocks.listed_count()),
    });
    let label = format!("ebs:{} ({} of account {})", info.snapshot_id, info.volume_id, req.account);
    let name = req.name.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (parent_index, changed) = match parent {
            Some((m, changed)) => (Some(library.load_index(&m, 0)?), Some(changed)),
            None => (None, None),
        };
        let mut source: Box<dyn dedup::source::DiskSource> = Box::new(SnapshotDisk::new(blocks, runtime, changed));
        let partition_table = crate::partitions::summarize(&mut *source).ok().flatten();
        let disk = dedup::ingest::DiskInput { label, source, partition_table, parent: parent_index };
        let origin = serde_json::to_value(&origin).expect("plain data");
        dedup::ingest::create_backup_from(&library, name, Some(origin), vec![disk], &|p| report.bytes(p.done, p.total))
    })
    .await
    .map_err(|e| CloudError::Conflict(format!("the backup's worker stopped: {e}")))?
    .map_err(|e| CloudError::Conflict(format!("backing up snapshot {} failed: {e}", req.snapshot)))
}

/// The newest backup of an older snapshot of the same volume that EBS says is of this one's lineage,
/// with the blocks changed since; `None` when there is none (a full backup).
async fn find_parent(
    library: &dedup::Library,
    info: &SnapshotInfo,
    region: &str,
    blocks: &SnapshotBlocks,
) -> Result<Option<(dedup::Manifest, BTreeSet<u64>)>, CloudError> {
    let all = library.backups().map_err(|e| CloudError::Conflict(format!("listing the library's backups: {e}")))?;
    let candidates = all.into_iter().rev().filter(|m| {
        m.disks.len() == 1
            && m.disks[0].size == blocks.size()
            && SnapshotOrigin::of(m).is_some_and(|o| o.same_volume(info, region))
    });
    // The newest few: an older backup of an unrelated lineage is not worth a call each.
    for m in candidates.take(3) {
        let older = SnapshotOrigin::of(&m).expect("filtered").snapshot_id;
        match blocks.changed_since(&older).await {
            Ok(Some(changed)) => return Ok(Some((m, changed))),
            Ok(None) => continue,
            // The older snapshot may be gone (deleted after its backup): a full backup is still right.
            Err(e) if e.code() == Some("ResourceNotFoundException") => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// One block being read: its bytes, or `None` for zeros.
type BlockFetch = JoinHandle<Result<Option<Vec<u8>>, CloudError>>;

/// Blocks fetched ahead of the reader at most (32 MiB).
const FETCH_AHEAD: usize = 64;

/// A snapshot as a disk to back up: data ranges are the listed blocks, reads come from blocks fetched
/// ahead (`will_need`), and with a parent only the changed blocks are fetched at all.
pub struct SnapshotDisk {
    blocks: Arc<SnapshotBlocks>,
    runtime: tokio::runtime::Handle,
    /// With a parent backup: the blocks changed since its snapshot.
    changed: Option<BTreeSet<u64>>,
    fetching: Mutex<HashMap<u64, BlockFetch>>,
    /// The block read last, for reads of its other parts.
    current: Option<(u64, Option<Vec<u8>>)>,
}

impl SnapshotDisk {
    pub fn new(blocks: Arc<SnapshotBlocks>, runtime: tokio::runtime::Handle, changed: Option<BTreeSet<u64>>) -> Self {
        SnapshotDisk { blocks, runtime, changed, fetching: Mutex::new(HashMap::new()), current: None }
    }

    fn wanted(&self, block: u64) -> bool {
        self.blocks.is_listed(block) && self.changed.as_ref().is_none_or(|c| c.contains(&block))
    }

    fn fetch(&self, block: u64) -> BlockFetch {
        let blocks = self.blocks.clone();
        self.runtime.spawn(async move { blocks.read_block(block).await })
    }

    fn block(&mut self, block: u64) -> dedup::Result<&Option<Vec<u8>>> {
        if self.current.as_ref().is_none_or(|(b, _)| *b != block) {
            let pending = {
                let mut fetching = self.fetching.lock().expect("not poisoned");
                let pending = fetching.remove(&block);
                // The reader moves forward: what it passed is not needed any more.
                fetching.retain(|b, h| {
                    if *b < block {
                        h.abort();
                    }
                    *b > block
                });
                pending
            };
            let handle = pending.unwrap_or_else(|| self.fetch(block));
            let data = self
                .runtime
                .block_on(handle)
                .map_err(|e| CloudError::Conflict(format!("a block read stopped: {e}")))
                .and_then(|r| r)
                .map_err(|e| dedup::Error::Source {
                    path: format!("ebs:{}", self.blocks.snapshot_id()).into(),
                    reason: e.to_string(),
                })?;
            self.current = Some((block, data));
        }
        Ok(&self.current.as_ref().expect("just set").1)
    }
}

impl dedup::source::DiskSource for SnapshotDisk {
    fn size(&self) -> u64 {
        self.blocks.size()
    }

    fn next_data(&mut self, from: u64) -> dedup::Result<Option<Range<u64>>> {
        let size = self.blocks.size();
        Ok(self.blocks.next_listed_run(from / BLOCK as u64).map(|(first, len)| {
            let start = (first * BLOCK as u64).max(from);
            start..((first + len) * BLOCK as u64).min(size)
        }))
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> dedup::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, within) = (pos / BLOCK as u64, (pos % BLOCK as u64) as usize);
            let n = (buf.len() - done).min(BLOCK - within);
            match self.block(block)? {
                Some(data) => buf[done..done + n].copy_from_slice(&data[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn format(&self) -> &str {
        "ebs-snapshot"
    }

    fn will_need(&self, offset: u64, len: u64) {
        let first = offset / BLOCK as u64;
        let last = (offset + len).min(self.blocks.size()).div_ceil(BLOCK as u64);
        let mut fetching = self.fetching.lock().expect("not poisoned");
        for b in first..last {
            if fetching.len() >= FETCH_AHEAD {
                break;
            }
            let current = self.current.as_ref().is_some_and(|(c, _)| *c == b);
            if !current && !fetching.contains_key(&b) && self.wanted(b) {
                fetching.insert(b, self.fetch(b));
            }
        }
    }

    fn unchanged(&mut self, range: Range<u64>) -> bool {
        let Some(changed) = &self.changed else { return false };
        if range.is_empty() {
            return false;
        }
        let (first, last) = (range.start / BLOCK as u64, (range.end - 1) / BLOCK as u64);
        changed.range(first..=last).next().is_none()
    }
}

impl Drop for SnapshotDisk {
    fn drop(&mut self) {
        for (_, h) in self.fetching.lock().expect("not poisoned").drain() {
            h.abort();
        }
    }
}
