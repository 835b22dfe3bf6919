//! Committing a live mount as a new version of its backup (`livemount mount commit`, a job): a backup
//! whose disks hold what the mount's disks hold now. Only the chunks the mount wrote or discarded are read
//! (through the pseudo-disk, so a chunk written in part reads the rest from the backup) and stored; every
//! other chunk keeps the mounted backup's id unread (`DiskSource::unchanged` with the parent's index).
//!
//! Consistency: the mount's writes are held back for the commit's length (they wait; reads go on), after
//! a flush of what was written before, so the backup is the disks at one moment, as a crash would have
//! left them; writes made while it runs land after it and go into the next commit. The backup appears
//! whole or not at all (the library's atomic ingest), also after a `kill -9`.

use std::ops::Range;
use std::sync::Arc;

use blockdev::PseudoDisk;
use dedup::source::DiskSource;
use serde::{Deserialize, Serialize};

use super::{backup_result, Manager, Mount};
use crate::cloud::workflow::Report;
use crate::daemon::error::ApiError;
use crate::daemon::jobs::JobInfo;

/// The manifest's `origin` of a backup committed from a mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommitOrigin {
    /// Always `mount-commit`.
    pub kind: String,
    /// The backup the mount served: the chunks the mount did not change are its.
    pub parent_backup: String,
    /// The mount the content came from.
    pub mount: String,
    /// The guest preparation for an iSCSI boot that the commit holds, when it was made to keep one.
    #[serde(default)]
    pub preparation: Option<Preparation>,
}

/// A guest preparation kept in a committed backup, for later boot mounts of the same backup to reuse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Preparation {
    /// `image::guest::PREPARATION_VERSION` of the preparation.
    pub version: u32,
    /// The initiator name the guest logs in again with; iPXE must log in under the same.
    pub initiator_iqn: String,
    pub guest_os: String,
    /// What the preparation changed in the guest.
    pub changes: Vec<String>,
}

/// The backup holding `backup`'s guest prepared by this version of the preparation: the backup itself
/// when it is one, else the newest committed from a mount of it to keep a preparation; `None` when there
/// is none (the guest must be prepared).
pub fn prepared_version_of(
    lib: &dedup::Library,
    backup: &dedup::Manifest,
) -> Result<Option<(dedup::Manifest, Preparation)>, ApiError> {
    let current = |m: &dedup::Manifest| {
        CommitOrigin::of(m).and_then(|o| o.preparation).filter(|p| p.version == image::guest::PREPARATION_VERSION)
    };
    if let Some(p) = current(backup) {
        return Ok(Some((backup.clone(), p)));
    }
    let derived = lib.backups()?.into_iter().rev().find_map(|m| {
        let parent_is = CommitOrigin::of(&m).is_some_and(|o| o.parent_backup == backup.id);
        let p = current(&m).filter(|_| parent_is)?;
        Some((m, p))
    });
    Ok(derived)
}

pub const ORIGIN_KIND: &str = "mount-commit";

impl CommitOrigin {
    pub fn of(manifest: &dedup::Manifest) -> Option<CommitOrigin> {
        let origin = manifest.origin.as_ref()?;
        (origin.get("kind")?.as_str()? == ORIGIN_KIND).then(|| serde_json::from_value(origin.clone()).ok())?
    }
}

impl Manager {
    /// Starts committing mount `key` (id, unique prefix or name) as a new backup named `name`, as a job.
    pub async fn start_commit(self: &Arc<Self>, key: &str, name: Option<String>) -> Result<JobInfo, ApiError> {
        let (id, mount) = self.find(key).await?;
        let (backup, from_snapshots, read_only) = {
            let s = mount.state.lock().expect("not poisoned");
            (s.backup.clone(), s.snapshots.is_some(), s.read_only)
        };
        if from_snapshots {
            return Err(ApiError::BadRequest(format!(
                "mount {id} serves EBS snapshots, not a library backup: `livemount backup create ebs:…` backs a snapshot up"
            )));
        }
        if read_only {
            return Err(ApiError::BadRequest(format!(
                "mount {id} is read-only: it holds exactly backup {backup}, there is nothing to commit"
            )));
        }
        let parent = self.library()?.resolve(&backup)?;
        let me = self.clone();
        let job = self.jobs.start("mount-commit", move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            report.step(&format!("committing mount {id} as a new version of backup {}", parent.id));
            let m = me.commit(&id, &mount, &parent, name, None, report).await.map_err(|e| e.to_string())?;
            me.show_backups();
            Ok(backup_result(&m))
        });
        Ok(job.info())
    }

    /// Commits `mount` (of backup `parent`) as a new backup, recording the guest `preparation` it holds
    /// when there is one; gives its manifest.
    pub(super) async fn commit(
        &self,
        id: &str,
        mount: &Mount,
        parent: &dedup::Manifest,
        name: Option<String>,
        preparation: Option<Preparation>,
        report: Arc<dyn Report>,
    ) -> Result<dedup::Manifest, ApiError> {
        let lib = self.library()?;
        if parent.disks.len() != mount.disks.len() {
            return Err(ApiError::conflict(format!(
                "mount {id} has {} disks and backup {} has {}",
                mount.disks.len(),
                parent.id,
                parent.disks.len()
            )));
        }
        // From here until the backup is made, the disks stay as they are.
        let mut held = Vec::new();
        for d in &mount.disks {
            held.push(d.hold_writes().await);
        }
        for d in &mount.disks {
            d.flush().await?;
        }
        let origin = CommitOrigin {
            kind: ORIGIN_KIND.into(),
            parent_backup: parent.id.clone(),
            mount: id.to_string(),
            preparation,
        };
        let origin = serde_json::to_value(&origin).expect("plain data");
        let parent_id = parent.id.clone();
        let (disks, parent, runtime) = (mount.disks.clone(), parent.clone(), tokio::runtime::Handle::current());
        let made = tokio::task::spawn_blocking(move || {
            let mut inputs = Vec::new();
            for (n, disk) in disks.into_iter().enumerate() {
                let index = lib.load_index(&parent, n)?;
                let mut source = MountedDisk { disk, runtime: runtime.clone(), kill_after_read: false };
                let partition_table = crate::partitions::summarize(&mut source).ok().flatten();
                // Armed for the ingest's reads only.
                source.kill_after_read = crate::crash_hook::armed_at(KILL_AFTER_READ);
                let source: Box<dyn DiskSource> = Box::new(source);
                let label = parent.disks[n].source.clone();
                inputs.push(dedup::ingest::DiskInput { label, source, partition_table, parent: Some(index) });
            }
            dedup::ingest::create_backup_from(&lib, name, Some(origin), inputs, &|p| report.bytes(p.done, p.total))
        })
        .await
        .map_err(|e| ApiError::internal(format!("the commit's worker stopped: {e}")))??;
        drop(held);
        tracing::info!(mount = %id, backup = %made.id, parent = %parent_id, "mount committed");
        Ok(made)
    }
}

/// A report that goes nowhere: a commit made as part of another request shows no progress of its own.
pub(super) struct Unreported;

impl Report for Unreported {
    fn step(&self, _: &str) {}
    fn bytes(&self, _: u64, _: u64) {}
}

/// A mounted disk as the library's source: its content as the mount serves it, and which chunks the mount
/// left as the backup had them.
struct MountedDisk {
    disk: Arc<PseudoDisk>,
    runtime: tokio::runtime::Handle,
    /// For crash tests (`LIVEMOUNT_TEST_KILL_AFTER=mount-commit-read`): the daemon kills itself with
    /// SIGKILL once the commit has read a changed chunk, cutting the commit off midway.
    kill_after_read: bool,
}

const KILL_AFTER_READ: &str = "mount-commit-read";

impl DiskSource for MountedDisk {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    fn next_data(&mut self, from: u64) -> dedup::Result<Option<Range<u64>>> {
        // Asked only for chunks the mount changed (the others are `unchanged`): read them whole.
        Ok((from < self.disk.size()).then(|| from..self.disk.size()))
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> dedup::Result<()> {
        // Called on the ingest's reader thread, outside the runtime: waiting for the read is its job.
        let data = self.runtime.block_on(self.disk.read(offset, buf.len())).map_err(|e| dedup::Error::Source {
            path: self.disk.dir().to_path_buf(),
            reason: format!("reading the mounted disk at offset {offset}: {e}"),
        })?;
        buf.copy_from_slice(&data);
        if self.kill_after_read {
            crate::crash_hook::kill(KILL_AFTER_READ);
        }
        Ok(())
    }

    fn format(&self) -> &str {
        "live-mount"
    }

    fn unchanged(&mut self, range: Range<u64>) -> bool {
        !self.disk.changed(range.start, range.end - range.start)
    }
}
