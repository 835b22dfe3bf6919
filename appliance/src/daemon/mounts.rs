//! The mount registry: creates, finds, lists, browses and removes mounts, keeps their state under the state
//! folder so that they come back after a restart, and serves their disks in the FUSE view and as iSCSI
//! targets. Booting lives in `boot`, the `backups/` listing in `backups_view`, and the API's view of a mount
//! in `api_info`.
//!
//! ```text
//! <state>/mounts/<id>/mount.json   what the mount is (backup, library, options, browse state)
//! <state>/mounts/<id>/disk<N>/     the pseudo-disk stores of disk N (private and recall)
//! <state>/browse/<id>/             mount points of a browsed mount's file systems
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blockdev::engine::Engine;
use blockdev::fuse::{DiskFile, FileView};
use blockdev::iscsi::chap::ChapConfig;
use blockdev::iscsi::{Portal, Target};
use blockdev::scsi::{Lun, LunSet};
use blockdev::{Options, PseudoDisk};
use dedup::{BackupDisk, Library};
use serde::{Deserialize, Serialize};

use super::api_info::{MountView, Reach};
use super::boot::{self, BootPlan, BootSettings, BootState};
use super::error::ApiError;
use super::{backups_view, browse};
use crate::api_types::{BootRequest, BrowseInfo, CloudRequest, MountInfo, MountRequest, TargetAccess};
use crate::cloud::instance_config::InstanceConfig;
use crate::cloud::instances::{CloudMount, CloudState};
use crate::cloud::workflow::Report;
use crate::cloud::{cleanup, ebs_snapshot, images, instances, Cloud};
use crate::library_source::LibrarySource;

mod commit;
pub use commit::{CommitOrigin, Preparation};

/// A mount as `mount.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountState {
    pub id: String,
    pub name: Option<String>,
    pub backup: String,
    pub library: PathBuf,
    pub read_only: bool,
    pub created: String,
    pub disks: usize,
    /// A mount made by `browse`: removed with its browse.
    #[serde(default)]
    pub for_browse: bool,
    #[serde(default)]
    pub browse: Option<BrowseInfo>,
    #[serde(default)]
    pub access: TargetAccess,
    #[serde(default)]
    pub boot: Option<BootState>,
    /// The VM of a cloud mount.
    #[serde(default)]
    pub cloud: Option<CloudMount>,
    /// A mount of EBS snapshots (`ebs:snap-…`, or a snapshot backup): its disks read them through the
    /// EBS direct APIs, and no library data.
    #[serde(default)]
    pub snapshots: Option<SnapshotsOfMount>,
}

/// The EBS snapshots a mount reads, disk N from the Nth, in one account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotsOfMount {
    pub snapshot_ids: Vec<String>,
    pub account: String,
    pub region: String,
}

struct Mount {
    state: Mutex<MountState>,
    disks: Vec<Arc<PseudoDisk>>,
}

/// What the manager serves mounts with.
pub struct Services {
    pub engine: Engine,
    pub view: Arc<FileView>,
    pub portal: Arc<Portal>,
    pub boot: BootSettings,
    pub cloud: Arc<Cloud>,
    pub ebs_devices: PathBuf,
    /// The chunk cache the library's readers share, when it has one.
    pub chunk_cache: Option<Arc<dedup::cache::ChunkCache>>,
}

pub struct Manager {
    portal: Arc<Portal>,
    boot: BootSettings,
    state_dir: PathBuf,
    fuse_root: PathBuf,
    library_path: PathBuf,
    library: Mutex<Option<Arc<Library>>>,
    chunk_cache: Option<Arc<dedup::cache::ChunkCache>>,
    engine: Engine,
    view: Arc<FileView>,
    mounts: tokio::sync::Mutex<BTreeMap<String, Arc<Mount>>>,
    cloud: Arc<Cloud>,
    ebs_devices: PathBuf,
    jobs: super::jobs::Jobs,
}

impl Manager {
    pub fn new(state_dir: &Path, fuse_root: &Path, library_path: &Path, with: Services) -> Arc<Manager> {
        Arc::new(Manager {
            portal: with.portal,
            boot: with.boot,
            state_dir: state_dir.to_path_buf(),
            fuse_root: fuse_root.to_path_buf(),
            library_path: library_path.to_path_buf(),
            library: Mutex::new(None),
            chunk_cache: with.chunk_cache,
            engine: with.engine,
            view: with.view,
            mounts: tokio::sync::Mutex::new(BTreeMap::new()),
            cloud: with.cloud,
            ebs_devices: with.ebs_devices,
            jobs: super::jobs::Jobs::default(),
        })
    }

    pub fn cloud(&self) -> &Cloud {
        &self.cloud
    }

    /// The ids of the mounts the daemon has.
    pub async fn mount_ids(&self) -> std::collections::BTreeSet<String> {
        self.mounts.lock().await.keys().cloned().collect()
    }

    /// The ids of the mounts, of the running jobs (and what they own), and of the library's backups: what
    /// the cloud resources in use belong to.
    pub async fn live_ids(&self) -> std::collections::BTreeSet<String> {
        let mut ids = self.mount_ids().await;
        ids.extend(self.jobs.running());
        match self.library().and_then(|l| Ok(l.backups()?)) {
            Ok(backups) => ids.extend(backups.into_iter().map(|m| m.id)),
            // A library that cannot be read must not make a snapshot backup's snapshots look unused.
            Err(e) => {
                tracing::warn!("cannot list the library's backups: {e}; keeping every backup's cloud resources");
                ids.extend(self.cloud.journal.live().into_iter().filter_map(|r| match r.purpose {
                    crate::cloud::journal::Purpose::Backup(b) => Some(b),
                    _ => None,
                }));
            }
        }
        ids
    }

    pub fn jobs(&self) -> &super::jobs::Jobs {
        &self.jobs
    }

    /// Starts a streaming backup of an instance of a member account as a job.
    pub fn start_streaming_backup(
        self: &Arc<Self>,
        req: crate::cloud::streaming_backup::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let me = self.clone();
        let job = self.jobs.start("cloud-backup", move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            let m = crate::cloud::streaming_backup::run(&me.cloud, library, &me.ebs_devices, &job.id(), &req, report)
                .await
                .map_err(|e| e.to_string())?;
            me.show_backups();
            Ok(backup_result(&m))
        });
        Ok(job.info())
    }

    /// Starts a backup of an EBS snapshot, read through EBS direct, as a job.
    pub fn start_ebs_backup(
        self: &Arc<Self>,
        req: crate::cloud::ebs_backup::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let me = self.clone();
        let job = self.jobs.start("ebs-backup", move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            let m = crate::cloud::ebs_backup::run(&me.cloud, library, &req, report).await.map_err(|e| e.to_string())?;
            me.show_backups();
            Ok(backup_result(&m))
        });
        Ok(job.info())
    }

    /// Starts a snapshot backup of an instance of a member account as a job.
    pub fn start_snapshot_backup(
        self: &Arc<Self>,
        req: crate::cloud::snapshot_backup::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let me = self.clone();
        let job = self.jobs.start("cloud-snap", move |job| async move {
            let backup_id = dedup::ingest::new_backup_id();
            job.own(&backup_id);
            let report: Arc<dyn Report> = job.clone();
            let m = crate::cloud::snapshot_backup::run(&me.cloud, library, &job.id(), &backup_id, &req, report)
                .await
                .map_err(|e| e.to_string())?;
            me.show_backups();
            Ok(backup_result(&m))
        });
        Ok(job.info())
    }

    /// Starts copying a snapshot backup into the library as a job.
    pub fn start_backup_copy(
        self: &Arc<Self>,
        req: crate::cloud::backup_copy::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let source = library.resolve(&req.backup)?;
        crate::cloud::backup_copy::snapshot_backup_config(&source)?;
        let me = self.clone();
        let job = self.jobs.start("cloud-backup-copy", move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            let devices = me.ebs_devices.clone();
            let m = crate::cloud::backup_copy::run(&me.cloud, library, &devices, &job.id(), &source, &req, report)
                .await
                .map_err(|e| e.to_string())?;
            me.show_backups();
            Ok(backup_result(&m))
        });
        Ok(job.info())
    }

    /// Starts restoring a backup into a member account as a job: as an image (EBS direct) or HotAdd.
    pub fn start_restore(
        self: &Arc<Self>,
        req: crate::cloud::restore::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let backup = library.resolve(&req.backup)?;
        crate::cloud::restore::config_of(&backup)?;
        let me = self.clone();
        let kind = if req.as_image { "cloud-restore-image" } else { "cloud-restore" };
        let job = self.jobs.start(kind, move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            let id = job.id();
            let restored = crate::cloud::restore::run(&me.cloud, library, &me.ebs_devices, &id, &backup, &req, report)
                .await
                .map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(restored).expect("plain data"))
        });
        Ok(job.info())
    }

    /// Starts restoring a backup into new EBS snapshots of an account (EBS direct) as a job.
    pub fn start_ebs_restore(
        self: &Arc<Self>,
        req: crate::cloud::ebs_restore::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let backup = library.resolve(&req.backup)?;
        crate::cloud::ebs_restore::disks_of(&backup, &req)?;
        let me = self.clone();
        let job = self.jobs.start("ebs-restore", move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            let id = job.id();
            let restored = crate::cloud::ebs_restore::run(&me.cloud, library, &id, &backup, &req, report)
                .await
                .map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(restored).expect("plain data"))
        });
        Ok(job.info())
    }

    /// Starts recovering files of a backup into a bucket as a job: the bucket is checked, the backup
    /// browsed, the files uploaded and the member account let read them; the browse ends with the job.
    pub fn start_recover_files(
        self: &Arc<Self>,
        req: crate::cloud::recover_files::Request,
    ) -> Result<super::jobs::JobInfo, ApiError> {
        let library = self.library()?;
        let backup = library.resolve(&req.backup)?;
        if backup.disks.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "backup {} holds no disks in the library (a snapshot backup): `livemount cloud backup-copy {}` copies it in first",
                backup.id, backup.id
            )));
        }
        let me = self.clone();
        let job = self.jobs.start("cloud-recover-files", move |job| async move {
            let report: Arc<dyn Report> = job.clone();
            let id = job.id();
            let target =
                crate::cloud::recover_files::prepare(&me.cloud, &backup.id, &req).await.map_err(|e| e.to_string())?;
            report.step("browsing the backup");
            let browsed = me.browse(&backup.id, None).await.map_err(|e| e.to_string())?;
            let fss = browsed.browse.clone().map(|b| b.filesystems).unwrap_or_default();
            let recovered =
                crate::cloud::recover_files::run(&me.cloud, &id, &backup.id, fss, &req, target, report).await;
            if let Err(e) = me.unbrowse(&browsed.id).await {
                tracing::warn!(job = %id, mount = %browsed.id, "ending the browse failed: {e}");
            }
            Ok(serde_json::to_value(recovered.map_err(|e| e.to_string())?).expect("plain data"))
        });
        Ok(job.info())
    }

    /// Forgets a snapshot backup: its catalog entry, then its image and snapshots in the member account.
    pub async fn forget_snapshot_backup(&self, id: &str, force: bool) -> Result<dedup::Manifest, ApiError> {
        let library = self.library()?;
        let manifest = library.resolve(id)?;
        if !InstanceConfig::of(&manifest).is_some_and(|c| c.is_snapshot_backup()) {
            return Err(ApiError::BadRequest(format!(
                "backup {} is not a snapshot backup: `livemount backup forget` forgets it",
                manifest.id
            )));
        }
        let forgotten = library.forget(&manifest.id, force)?;
        crate::cloud::snapshot_backup::remove_data(&self.cloud, &forgotten).await?;
        Ok(forgotten)
    }

    /// The library, opened on first use (it may be created after the daemon starts).
    pub fn library(&self) -> Result<Arc<Library>, ApiError> {
        let mut l = self.library.lock().expect("not poisoned");
        if let Some(lib) = &*l {
            return Ok(lib.clone());
        }
        let mut lib = Library::open(&self.library_path)?;
        if let Some(cache) = &self.chunk_cache {
            lib = lib.with_cache(cache.clone());
        }
        let lib = Arc::new(lib);
        *l = Some(lib.clone());
        Ok(lib)
    }

    /// Shows the library's backups as read-only files under `backups/`, and makes the `mounts/` folder.
    pub fn show_backups(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        backups_view::show(&self.view, move || me.upgrade()?.library().ok());
        self.view.add_dir(&["mounts"]);
    }

    fn mount_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("mounts").join(id)
    }

    fn save(&self, state: &MountState) -> Result<(), ApiError> {
        let json = serde_json::to_vec_pretty(state).expect("a mount's state is plain data and serializes");
        let path = self.mount_dir(&state.id).join("mount.json");
        dedup::durable::write_file(&path, &json).map_err(ApiError::io("write", &path))
    }

    /// What a mount's disks read: a library backup's disks, or an EBS snapshot.
    async fn sources_of(&self, state: &MountState) -> Result<Vec<Arc<dyn blockdev::Source>>, ApiError> {
        if let Some(s) = &state.snapshots {
            let config = self.cloud.accounts.config(&s.account, &s.region, "mount").await?;
            let (ec2, ebs) = (crate::cloud::sdk::ec2(&config), crate::cloud::sdk::ebs(&config));
            let mut sources: Vec<Arc<dyn blockdev::Source>> = Vec::new();
            for id in &s.snapshot_ids {
                ebs_snapshot::describe(&ec2, &s.account, id).await?;
                let budget = ebs_snapshot::DEFAULT_REQUEST_BUDGET;
                let blocks = ebs_snapshot::SnapshotBlocks::open(ebs.clone(), &s.account, id, budget).await?;
                let runtime = tokio::runtime::Handle::current();
                sources.push(Arc::new(ebs_snapshot::SnapshotSource { blocks: Arc::new(blocks), runtime }));
            }
            return Ok(sources);
        }
        let lib =
            if state.library == self.library_path { self.library()? } else { Arc::new(Library::open(&state.library)?) };
        let manifest = lib.resolve(&state.backup)?;
        let mut sources: Vec<Arc<dyn blockdev::Source>> = Vec::new();
        for d in 0..state.disks {
            sources.push(Arc::new(LibrarySource(Arc::new(BackupDisk::open(lib.clone(), &manifest, d)?))));
        }
        Ok(sources)
    }

    /// Opens the pseudo-disks of a mount over `sources` and shows them in the view.
    fn open_mount(&self, state: MountState, sources: Vec<Arc<dyn blockdev::Source>>) -> Result<Arc<Mount>, ApiError> {
        let mut disks = Vec::new();
        for (d, source) in sources.into_iter().enumerate() {
            let dir = self.mount_dir(&state.id).join(format!("disk{d}"));
            disks.push(PseudoDisk::open(&dir, source, self.engine.clone(), Options { read_only: state.read_only })?);
        }
        let mtime = backups_view::mtime_of(&state.created);
        for (d, disk) in disks.iter().enumerate() {
            self.view.add_file(
                &["mounts", &state.id, &format!("disk{d}.img")],
                Arc::new(DiskFile(disk.clone())),
                mtime,
            );
        }
        self.portal.add_target(Arc::new(target_of(&state, &disks)));
        Ok(Arc::new(Mount { state: Mutex::new(state), disks }))
    }

    /// Brings back the mounts of the state folder (after a restart). Browses cut off by a crash are undone.
    pub async fn load(&self) {
        let dir = self.state_dir.join("mounts");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path().join("mount.json");
            let state: MountState = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(err) => {
                    tracing::error!("skipping {}: {err}", path.display());
                    continue;
                }
            };
            if let Some(b) = &state.browse {
                browse::undo(b).await;
            }
            let cut_off_launch = state.cloud.as_ref().is_some_and(|c| c.state == CloudState::Launching);
            if state.for_browse || cut_off_launch {
                if cut_off_launch {
                    // Its VM may or may not exist; `reconcile_cloud` removes it by journal and tags.
                    tracing::warn!(mount = %state.id, "the daemon stopped while this mount's VM was being launched: rolling the mount back");
                    if let Ok(lib) = Library::open(&state.library) {
                        let _ = lib.release(&state.id);
                    }
                }
                let _ = blockdev::pseudo_disk::remove_stores(&e.path());
                continue;
            }
            let id = state.id.clone();
            let opened = match self.sources_of(&state).await {
                Ok(sources) => self.open_mount(MountState { browse: None, ..state }, sources),
                Err(e) => Err(e),
            };
            match opened {
                Ok(m) => {
                    tracing::info!(mount = %id, "mount restored");
                    self.mounts.lock().await.insert(id, m);
                }
                Err(err) => tracing::error!(mount = %id, "cannot restore mount: {err}"),
            }
        }
    }

    pub async fn create(&self, req: &MountRequest, for_browse: bool) -> Result<MountInfo, ApiError> {
        let lib = self.library()?;
        let (backup_id, disk_count, snapshots) = self.what_to_mount(&lib, req).await?;
        // A boot mount of a backup whose guest was prepared before mounts that prepared version instead.
        let reuse = match (&req.boot, &snapshots) {
            (Some(b), None) if !b.skip_prepare => commit::prepared_version_of(&lib, &lib.resolve(&backup_id)?)?,
            _ => None,
        };
        let (backup_id, disk_count) = match &reuse {
            Some((m, _)) => (m.id.clone(), m.disks.len()),
            None => (backup_id, disk_count),
        };
        let cloud_req = req.boot.as_ref().and_then(|b| b.cloud.clone());
        // Before anything is made: the account, the Region and its iPXE image must be there.
        let cloud_plan = match &cloud_req {
            Some(c) => {
                let region = self.cloud.accounts.region_of(&c.account, c.region.as_deref()).await?;
                let image = images::launchable_image(&self.cloud, &region, &c.account).await?;
                Some((c.clone(), region, image))
            }
            None => None,
        };
        let id = new_mount_id();
        let boot_initiator = match &reuse {
            Some((_, p)) => p.initiator_iqn.clone(),
            None => boot::initiator_iqn(&id),
        };
        let mut access = req.access.clone();
        if cloud_plan.is_some() {
            // A cloud VM reaches the appliance over a network others share: only it may log in, with
            // the CHAP secret that only its script carries.
            access = TargetAccess {
                chap: Some(("livemount".into(), crate::random::hex(8))),
                mutual_chap: None,
                allowed_initiators: vec![boot_initiator.clone()],
            };
        }
        let state = MountState {
            id: id.clone(),
            name: req.name.clone(),
            backup: backup_id.clone(),
            library: lib.root().to_path_buf(),
            read_only: req.read_only || for_browse,
            created: dedup::library::now_rfc3339(),
            disks: disk_count,
            for_browse,
            browse: None,
            access,
            boot: None,
            cloud: None,
            snapshots,
        };
        let mount_dir = self.mount_dir(&id);
        std::fs::create_dir_all(&mount_dir).map_err(ApiError::io("create", &mount_dir))?;
        // From here on, a failure undoes everything made so far.
        let undo = Unmade { manager: self, lib: &lib, id: &id, armed: true };
        // The backup may not be forgotten while the mount reads from it.
        let what = match (&req.name, for_browse) {
            (_, true) => format!("browse mount {id} of livemount serve"),
            (Some(name), false) => format!("live mount {id} ({name}) of livemount serve"),
            (None, false) => format!("live mount {id} of livemount serve"),
        };
        if state.snapshots.is_none() {
            lib.hold(&id, &backup_id, &what)?;
        }
        let sources = self.sources_of(&state).await?;
        self.save(&state)?;
        // Declared after `undo`, so dropped before it: the disks are closed before their stores go.
        let mount = self.open_mount(state, sources)?;
        tracing::info!(mount = %id, backup = %backup_id, "mounted");
        if let Some(boot) = &req.boot {
            if let Err(e) = self.make_bootable(&mount, boot, boot_initiator, reuse).await {
                tracing::warn!(mount = %id, "boot preparation failed; rolling the mount back: {e}");
                return Err(e);
            }
        }
        if let Some((c, region, image)) = &cloud_plan {
            if let Err(e) = self.launch(&mount, c, region, image).await {
                tracing::warn!(mount = %id, "launching the VM failed; rolling the mount back: {e}");
                if let Err(e2) = cleanup::remove_mount_resources(&self.cloud, &c.account, region, &id).await {
                    tracing::error!(mount = %id, "the rollback could not remove the VM (`livemount cloud cleanup` will): {e2}");
                }
                return Err(e);
            }
        }
        undo.commit();
        let info = self.info(&mount);
        self.mounts.lock().await.insert(id, mount);
        Ok(info)
    }

    /// What a mount request names: a library backup (its id and disk count), or EBS snapshots read in an
    /// account: `ebs:snap-…` with `account`, or a snapshot backup (its snapshots stay in the account the
    /// backup names).
    async fn what_to_mount(
        &self,
        lib: &Library,
        req: &MountRequest,
    ) -> Result<(String, usize, Option<SnapshotsOfMount>), ApiError> {
        if let Some(snapshot_id) = req.backup.strip_prefix("ebs:") {
            let account = req.account.clone().ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "mounting EBS snapshot {snapshot_id} needs the cloud account that reads it (--account)"
                ))
            })?;
            let region = self.cloud.accounts.region_of(&account, None).await?;
            let s = SnapshotsOfMount { snapshot_ids: vec![snapshot_id.to_string()], account, region };
            return Ok((req.backup.clone(), 1, Some(s)));
        }
        let manifest = lib.resolve(&req.backup)?;
        match InstanceConfig::of(&manifest).filter(|c| c.is_snapshot_backup()) {
            Some(c) => {
                let ids: Option<Vec<String>> = c.block_devices.iter().map(|b| b.snapshot_id.clone()).collect();
                let ids = ids.filter(|i| !i.is_empty()).ok_or_else(|| {
                    ApiError::BadRequest(format!("snapshot backup {} names no snapshot for some disk", manifest.id))
                })?;
                let s = SnapshotsOfMount { snapshot_ids: ids, account: c.account.clone(), region: c.region.clone() };
                Ok((manifest.id.clone(), s.snapshot_ids.len(), Some(s)))
            }
            None => Ok((manifest.id.clone(), manifest.disks.len(), None)),
        }
    }

    /// Prepares the mount's guest to boot from iSCSI (or takes the preparation of the backup it mounts,
    /// `prepared`), and publishes its iPXE script. A guest prepared here is committed as a backup of its
    /// own, which later boot mounts of the same backup mount instead of preparing again.
    async fn make_bootable(
        &self,
        mount: &Mount,
        req: &BootRequest,
        initiator_iqn: String,
        prepared: Option<(dedup::Manifest, commit::Preparation)>,
    ) -> Result<(), ApiError> {
        let (id, chap, backup) = {
            let s = mount.state.lock().expect("not poisoned");
            (s.id.clone(), req.cloud.as_ref().and(s.access.chap.clone()), s.backup.clone())
        };
        let files: Vec<PathBuf> = (0..mount.disks.len()).map(|d| disk_file(&self.fuse_root, &id, d)).collect();
        let work = self.state_dir.join("boot").join(&id);
        let reused = prepared.as_ref().map(|(m, p)| boot::Reused { backup: m.id.clone(), preparation: p.clone() });
        let plan = BootPlan { mac: req.mac.clone(), skip_prepare: req.skip_prepare, chap, initiator_iqn, reused };
        let mut published = boot::make_bootable(&files, &work, &self.boot, plan).await?;
        for d in &mount.disks {
            d.flush().await?;
        }
        let snapshots = mount.state.lock().expect("not poisoned").snapshots.is_some();
        if prepared.is_none() && !req.skip_prepare && !snapshots {
            let parent = self.library()?.resolve(&backup)?;
            let preparation = commit::Preparation {
                version: image::guest::PREPARATION_VERSION,
                initiator_iqn: published.initiator_iqn.clone(),
                guest_os: published.guest_os.clone(),
                changes: published.changes.clone(),
            };
            let name = Some(format!("{}, prepared for iSCSI boot", parent.name.as_deref().unwrap_or(&parent.id)));
            let report = Arc::new(commit::Unreported);
            match self.commit(&id, mount, &parent, name, Some(preparation), report).await {
                Ok(m) => published.changes.push(format!("kept as backup {} for later boot mounts", m.id)),
                // The mount is ready as it is; only the next boot mount prepares again.
                Err(e) => tracing::warn!(mount = %id, "keeping the prepared guest as a backup failed: {e}"),
            }
        }
        let state = {
            let mut s = mount.state.lock().expect("not poisoned");
            s.boot = Some(published);
            s.clone()
        };
        self.save(&state)?;
        tracing::info!(mount = %id, "guest prepared; iPXE script published");
        Ok(())
    }

    /// Launches the VM of a cloud mount. The mount is saved as launching first, so that a crash from here
    /// on is rolled back at the next start.
    async fn launch(&self, mount: &Mount, c: &CloudRequest, region: &str, image: &str) -> Result<(), ApiError> {
        let (id, token) = {
            let mut s = mount.state.lock().expect("not poisoned");
            s.cloud = Some(CloudMount {
                account: c.account.clone(),
                region: region.to_string(),
                image_id: image.to_string(),
                instance_id: None,
                private_ip: None,
                state: CloudState::Launching,
                imds_v2_only: false,
            });
            (s.id.clone(), s.boot.as_ref().map(|b| b.token.clone()).unwrap_or_default())
        };
        self.save(&mount.state.lock().expect("not poisoned").clone())?;
        let launched = instances::launch(&self.cloud, c, region, &id, image, &self.boot.script_url(&token)).await?;
        let state = {
            let mut s = mount.state.lock().expect("not poisoned");
            s.cloud = Some(launched);
            s.clone()
        };
        self.save(&state)
    }

    /// The per-mount iPXE script for a token. A cloud VM fetching it has read its user-data: IMDSv1 is
    /// turned off on it now (see `image::ipxe::ec2_script`).
    pub async fn script_by_token(self: &Arc<Self>, token: &str) -> Option<String> {
        let mounts = self.mounts.lock().await;
        let (mount, script) = mounts.values().find_map(|m| {
            let s = m.state.lock().expect("not poisoned");
            let b = s.boot.as_ref().filter(|b| b.token == token)?;
            Some((m.clone(), image::ipxe::mount_script(&boot::boot_target(&self.portal.advertise, &s.id, b))))
        })?;
        let pending = mount.state.lock().expect("not poisoned").cloud.clone().filter(|c| !c.imds_v2_only);
        if let Some(c) = pending {
            let me = self.clone();
            tokio::spawn(async move {
                match instances::require_imds_v2(&me.cloud, &c).await {
                    Ok(()) => {
                        let state = {
                            let mut s = mount.state.lock().expect("not poisoned");
                            if let Some(c) = s.cloud.as_mut() {
                                c.imds_v2_only = true;
                            }
                            s.clone()
                        };
                        let _ = me.save(&state);
                    }
                    Err(e) => tracing::warn!(mount = %state_id(&mount), "IMDSv1 stays on for the VM: {e}"),
                }
            });
        }
        Some(script)
    }

    /// After a restart: removes what the journal shows of mounts that no longer exist (a launch cut off
    /// by a crash, an unmount that could not reach AWS) and of jobs (none outlives a daemon).
    pub async fn reconcile_cloud(&self) {
        match cleanup::remove_orphans(&self.cloud, &self.live_ids().await).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "removed {n} cloud resources of jobs that died with the last daemon or of forgotten backups"
            ),
            Err(e) => tracing::warn!(
                "cannot remove the cloud resources of dead jobs yet (`livemount cloud cleanup` retries): {e}"
            ),
        }
        let live = self.mount_ids().await;
        let mut orphans = std::collections::BTreeSet::new();
        for r in self.cloud.journal.live() {
            if let crate::cloud::journal::Purpose::Mount(m) = &r.purpose {
                if !live.contains(m) {
                    orphans.insert((r.account.clone(), r.region.clone(), m.clone()));
                }
            }
        }
        for (account, region, mount) in orphans {
            match cleanup::remove_mount_resources(&self.cloud, &account, &region, &mount).await {
                Ok(()) => tracing::info!(%mount, %account, "removed the cloud resources of a mount that is gone"),
                Err(e) => {
                    tracing::warn!(%mount, %account, "cannot remove the cloud resources of a gone mount yet (`livemount cloud cleanup` retries): {e}")
                }
            }
        }
    }

    /// What the entry script gets for the machine with MAC address `mac` (see `boot::entry_script`).
    pub async fn entry_for(&self, mac: &str) -> String {
        let mounts = self.mounts.lock().await;
        let boots: Vec<(Option<String>, String)> = mounts
            .values()
            .filter_map(|m| {
                let s = m.state.lock().expect("not poisoned");
                s.boot.as_ref().map(|b| (b.mac.clone(), b.token.clone()))
            })
            .collect();
        boot::entry_script(&boots, mac, &self.boot)
    }

    fn info(&self, m: &Mount) -> MountInfo {
        let state = m.state.lock().expect("not poisoned").clone();
        let reach = Reach { fuse_root: &self.fuse_root, advertise: &self.portal.advertise, boot: &self.boot };
        MountInfo::from(MountView { state, disks: &m.disks, reach })
    }

    pub async fn list(&self) -> Vec<MountInfo> {
        self.mounts.lock().await.values().map(|m| self.info(m)).collect()
    }

    /// How many mounts there are (without making each one's answer).
    pub async fn count(&self) -> usize {
        self.mounts.lock().await.len()
    }

    /// Every disk of every mount with its counters as of now: (mount id, disk number, counters).
    pub async fn disk_counters(&self) -> Vec<(String, usize, blockdev::pseudo_disk::CounterSnapshot)> {
        let mounts = self.mounts.lock().await;
        let mut out = Vec::new();
        for (id, m) in mounts.iter() {
            out.extend(m.disks.iter().enumerate().map(|(n, d)| (id.clone(), n, d.counters())));
        }
        out
    }

    pub fn portal(&self) -> &Arc<Portal> {
        &self.portal
    }

    pub fn chunk_cache(&self) -> Option<&Arc<dedup::cache::ChunkCache>> {
        self.chunk_cache.as_ref()
    }

    /// Finds a mount by id, unique id prefix, or name.
    async fn find(&self, key: &str) -> Result<(String, Arc<Mount>), ApiError> {
        let mounts = self.mounts.lock().await;
        if let Some(m) = mounts.get(key) {
            return Ok((key.to_string(), m.clone()));
        }
        let matches: Vec<_> = mounts
            .iter()
            .filter(|(id, m)| id.starts_with(key) || m.state.lock().expect("not poisoned").name.as_deref() == Some(key))
            .collect();
        match matches.as_slice() {
            [(id, m)] => Ok(((*id).clone(), (*m).clone())),
            [] => Err(ApiError::not_found(format!("no mount {key}; `livemount mounts` lists them"))),
            _ => Err(ApiError::conflict(format!("{key} names {} mounts; give the mount id", matches.len()))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<MountInfo, ApiError> {
        let (_, m) = self.find(key).await?;
        Ok(self.info(&m))
    }

    /// Removes a mount: its files leave the view, its stores are deleted. The backup is not touched.
    pub async fn remove(&self, key: &str) -> Result<MountInfo, ApiError> {
        let (id, m) = self.find(key).await?;
        if m.state.lock().expect("not poisoned").browse.is_some() {
            return Err(ApiError::conflict(format!("mount {id} is browsed; run `livemount unbrowse {id}` first")));
        }
        let cloud = m.state.lock().expect("not poisoned").cloud.clone();
        if let Some(c) = cloud {
            // The VM goes first: while it runs, it uses the stores.
            cleanup::remove_mount_resources(&self.cloud, &c.account, &c.region, &id).await?;
            tracing::info!(mount = %id, instance = ?c.instance_id, "VM terminated");
        }
        let info = self.info(&m);
        self.mounts.lock().await.remove(&id);
        self.portal.remove_target(&iqn_of(&id));
        self.view.remove(&["mounts", &id]);
        let (library, held) = {
            let s = m.state.lock().expect("not poisoned");
            (s.library.clone(), s.snapshots.is_none())
        };
        drop(m);
        let mount_dir = self.mount_dir(&id);
        blockdev::pseudo_disk::remove_stores(&mount_dir).map_err(ApiError::io("remove", &mount_dir))?;
        if !held {
            tracing::info!(mount = %id, "unmounted");
            return Ok(info);
        }
        if let Err(e) = Library::open(&library).and_then(|lib| lib.release(&id)) {
            tracing::warn!(mount = %id, "the mount is gone but its hold on the backup stays: {e}");
        }
        tracing::info!(mount = %id, "unmounted");
        Ok(info)
    }

    /// Mounts a backup read-only and mounts its file systems for file recovery.
    pub async fn browse(&self, backup: &str, account: Option<&str>) -> Result<MountInfo, ApiError> {
        let info = self
            .create(
                &MountRequest {
                    backup: backup.to_string(),
                    name: None,
                    read_only: true,
                    access: TargetAccess::default(),
                    boot: None,
                    account: account.map(str::to_string),
                },
                true,
            )
            .await?;
        let files: Vec<PathBuf> = info.disks.iter().map(|d| PathBuf::from(&d.fuse_path)).collect();
        let root = self.state_dir.join("browse").join(&info.id);
        match browse::browse(&files, &root).await {
            Ok(b) => {
                let (_, m) = self.find(&info.id).await?;
                let state = {
                    let mut s = m.state.lock().expect("not poisoned");
                    s.browse = Some(b);
                    s.clone()
                };
                self.save(&state)?;
                Ok(self.info(&m))
            }
            Err(e) => {
                let _ = self.remove(&info.id).await;
                let _ = std::fs::remove_dir_all(&root);
                Err(e)
            }
        }
    }

    pub async fn unbrowse(&self, key: &str) -> Result<MountInfo, ApiError> {
        let (id, m) = self.find(key).await?;
        let (browse, for_browse) = {
            let s = m.state.lock().expect("not poisoned");
            (s.browse.clone(), s.for_browse)
        };
        let Some(b) = browse else {
            return Err(ApiError::conflict(format!("mount {id} is not browsed")));
        };
        browse::undo(&b).await;
        let _ = std::fs::remove_dir_all(self.state_dir.join("browse").join(&id));
        let state = {
            let mut s = m.state.lock().expect("not poisoned");
            s.browse = None;
            s.clone()
        };
        self.save(&state)?;
        if for_browse {
            self.remove(&id).await
        } else {
            Ok(self.info(&m))
        }
    }

    /// Before the daemon stops: undo browses and flush every disk.
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.mounts.lock().await.keys().cloned().collect();
        for id in ids {
            let browsed = self
                .mounts
                .lock()
                .await
                .get(&id)
                .is_some_and(|m| m.state.lock().expect("not poisoned").browse.is_some());
            if browsed {
                let _ = self.unbrowse(&id).await;
            }
        }
        for (id, m) in self.mounts.lock().await.iter() {
            for (n, d) in m.disks.iter().enumerate() {
                if let Err(e) = d.flush().await {
                    tracing::error!(mount = %id, disk = n, "flush at shutdown failed: {e}");
                }
            }
        }
    }
}

fn state_id(m: &Mount) -> String {
    m.state.lock().expect("not poisoned").id.clone()
}

/// The iSCSI name of a mount's target; the mount id in it is the unguessable part.
pub fn iqn_of(mount_id: &str) -> String {
    format!("iqn.2026-11.io.livemount:mount-{mount_id}")
}

/// The iSCSI target of a mount: one LUN per disk, each with its own serial and NAA identifier.
fn target_of(state: &MountState, disks: &[Arc<PseudoDisk>]) -> Target {
    let luns = disks
        .iter()
        .enumerate()
        .map(|(d, disk)| {
            let h = blake3::hash(format!("livemount {} disk {d}", state.id).as_bytes());
            let mut naa = [0u8; 16];
            naa.copy_from_slice(&h.as_bytes()[..16]);
            naa[0] = 0x60 | (naa[0] & 0x0f); // NAA 6: IEEE Registered Extended
            Arc::new(Lun::new(disk.clone(), format!("LM{}D{d}", &state.id[..12.min(state.id.len())]), naa))
        })
        .collect();
    let a = &state.access;
    Target::new(
        iqn_of(&state.id),
        LunSet { luns },
        a.chap.clone().map(|(user, secret)| ChapConfig { user, secret, mutual: a.mutual_chap.clone() }),
        a.allowed_initiators.clone(),
    )
}

/// A mount id: 16 random hex digits (the unguessable part of the mount's iSCSI name later).
fn new_mount_id() -> String {
    crate::random::hex(8)
}

/// Disk `d` of mount `id` as a file of the FUSE view mounted at `fuse_root`.
pub fn disk_file(fuse_root: &Path, id: &str, d: usize) -> PathBuf {
    fuse_root.join("mounts").join(id).join(format!("disk{d}.img"))
}

/// A mount being made: unless committed, dropping it undoes whatever of the mount exists (its iSCSI
/// target, its files in the view, the hold on the backup, its stores and its boot scratch folder). Each
/// step is harmless when its part was never made, so one guard covers every point of failure.
struct Unmade<'a> {
    manager: &'a Manager,
    lib: &'a Library,
    id: &'a str,
    armed: bool,
}

impl Unmade<'_> {
    /// The mount is complete: keep it.
    fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Unmade<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let m = self.manager;
        m.portal.remove_target(&iqn_of(self.id));
        m.view.remove(&["mounts", self.id]);
        let _ = self.lib.release(self.id);
        let _ = blockdev::pseudo_disk::remove_stores(&m.mount_dir(self.id));
        let _ = std::fs::remove_dir_all(m.state_dir.join("boot").join(self.id));
    }
}

/// What a job that made a backup gives its caller.
fn backup_result(m: &dedup::Manifest) -> serde_json::Value {
    serde_json::json!({ "id": m.id, "name": m.name, "stats": m.stats, "origin": m.origin })
}
