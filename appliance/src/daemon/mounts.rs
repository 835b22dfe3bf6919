//! The live-mount manager: creates, lists and removes mounts, keeps their state under the state folder so
//! that they come back after a restart, and shows their disks in the FUSE view.
//!
//! ```text
//! <state>/mounts/<id>/mount.json   what the mount is (backup, library, options, browse state)
//! <state>/mounts/<id>/disk<N>/     the pseudo-disk stores of disk N (private and recall)
//! <state>/browse/<id>/             mount points of a browsed mount's file systems
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blockdev::engine::Engine;
use blockdev::fuse::{DiskFile, FileView, ViewFile};
use blockdev::{Options, PseudoDisk};
use dedup::{BackupDisk, Library};
use serde::{Deserialize, Serialize};

use super::browse;
use super::error::ApiError;
use blockdev::iscsi::chap::ChapConfig;
use blockdev::iscsi::{Portal, Target};
use blockdev::scsi::{Lun, LunSet};

use crate::api_types::{BootInfo, BrowseInfo, DiskCounters, DiskInfo, MountInfo, MountRequest, TargetAccess};
use crate::library_source::{BackupFile, LibrarySource};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MountState {
    id: String,
    name: Option<String>,
    backup: String,
    library: PathBuf,
    read_only: bool,
    created: String,
    disks: usize,
    /// A mount made by `browse`: removed with its browse.
    #[serde(default)]
    for_browse: bool,
    #[serde(default)]
    browse: Option<BrowseInfo>,
    #[serde(default)]
    access: TargetAccess,
    #[serde(default)]
    boot: Option<BootState>,
}

/// What a boot mount publishes: the token of its script URL, and the prepared guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BootState {
    token: String,
    mac: Option<String>,
    initiator_iqn: String,
    guest_os: String,
    changes: Vec<String>,
}

/// Where the daemon's HTTP server (iPXE scripts) is reached, and where guest packages are.
pub struct BootSettings {
    pub http_base: String,
    pub packages_dir: PathBuf,
}

struct Mount {
    state: Mutex<MountState>,
    disks: Vec<Arc<PseudoDisk>>,
}

pub struct Manager {
    portal: Arc<Portal>,
    boot: BootSettings,
    state_dir: PathBuf,
    fuse_root: PathBuf,
    library_path: PathBuf,
    library: Mutex<Option<Arc<Library>>>,
    engine: Engine,
    view: Arc<FileView>,
    mounts: tokio::sync::Mutex<BTreeMap<String, Arc<Mount>>>,
}

impl Manager {
    pub fn new(
        state_dir: &Path,
        fuse_root: &Path,
        library_path: &Path,
        engine: Engine,
        view: Arc<FileView>,
        portal: Arc<Portal>,
        boot: BootSettings,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            portal,
            boot,
            state_dir: state_dir.to_path_buf(),
            fuse_root: fuse_root.to_path_buf(),
            library_path: library_path.to_path_buf(),
            library: Mutex::new(None),
            engine,
            view,
            mounts: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The library, opened on first use (it may be created after the daemon starts).
    pub fn library(&self) -> Result<Arc<Library>, ApiError> {
        let mut l = self.library.lock().expect("not poisoned");
        if let Some(lib) = &*l {
            return Ok(lib.clone());
        }
        let lib = Arc::new(Library::open(&self.library_path)?);
        *l = Some(lib.clone());
        Ok(lib)
    }

    /// Shows the library's backups as read-only files under `backups/`.
    pub fn show_backups(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        // The open files of each backup shown, by backup id.
        type Opened = BTreeMap<String, Vec<Arc<dyn ViewFile>>>;
        let opened: Arc<Mutex<Opened>> = Arc::default();
        self.view.set_refresher(
            &["backups"],
            Arc::new(move || {
                let Some(me) = me.upgrade() else {
                    return Vec::new();
                };
                let Ok(lib) = me.library() else {
                    return Vec::new();
                };
                let backups = match lib.backups() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("cannot list backups: {e}");
                        return Vec::new();
                    }
                };
                let mut opened = opened.lock().expect("not poisoned");
                // Forgotten backups leave the view, and their readers with them.
                opened.retain(|id, _| backups.iter().any(|m| &m.id == id));
                let mut out = Vec::new();
                for m in backups {
                    if !opened.contains_key(&m.id) {
                        let files: Result<Vec<Arc<dyn ViewFile>>, _> = (0..m.disks.len())
                            .map(|d| {
                                BackupDisk::open(lib.clone(), &m, d)
                                    .map(|disk| Arc::new(BackupFile::new(Arc::new(disk))) as Arc<dyn ViewFile>)
                            })
                            .collect();
                        match files {
                            Ok(f) => {
                                opened.insert(m.id.clone(), f);
                            }
                            Err(e) => {
                                tracing::error!("cannot open backup {}: {e}", m.id);
                                continue;
                            }
                        }
                    }
                    let files =
                        opened[&m.id].iter().enumerate().map(|(d, f)| (format!("disk{d}.img"), f.clone())).collect();
                    out.push((m.id.clone(), files, parse_time(&m.created)));
                }
                out
            }),
        );
        self.view.add_dir(&["mounts"]);
    }

    fn mount_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("mounts").join(id)
    }

    fn save(&self, state: &MountState) -> Result<(), ApiError> {
        let json = serde_json::to_vec_pretty(state).expect("state serializes");
        dedup::durable::write_file(&self.mount_dir(&state.id).join("mount.json"), &json)?;
        Ok(())
    }

    /// Opens the pseudo-disks of a mount and shows them in the view.
    fn open_mount(&self, state: MountState) -> Result<Arc<Mount>, ApiError> {
        let lib =
            if state.library == self.library_path { self.library()? } else { Arc::new(Library::open(&state.library)?) };
        let manifest = lib.resolve(&state.backup)?;
        let mut disks = Vec::new();
        for d in 0..state.disks {
            let source = Arc::new(LibrarySource(Arc::new(BackupDisk::open(lib.clone(), &manifest, d)?)));
            let dir = self.mount_dir(&state.id).join(format!("disk{d}"));
            disks.push(PseudoDisk::open(&dir, source, self.engine.clone(), Options { read_only: state.read_only })?);
        }
        let mtime = parse_time(&state.created);
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
            if state.for_browse {
                let _ = blockdev::pseudo_disk::remove_stores(&e.path());
                continue;
            }
            let id = state.id.clone();
            match self.open_mount(MountState { browse: None, ..state }) {
                Ok(m) => {
                    tracing::info!(mount = %id, "mount restored");
                    self.mounts.lock().await.insert(id, m);
                }
                Err(err) => tracing::error!(mount = %id, "cannot restore mount: {}", err.message),
            }
        }
    }

    pub async fn create(&self, req: &MountRequest, for_browse: bool) -> Result<MountInfo, ApiError> {
        let lib = self.library()?;
        let manifest = lib.resolve(&req.backup)?;
        let id = new_mount_id();
        let state = MountState {
            id: id.clone(),
            name: req.name.clone(),
            backup: manifest.id.clone(),
            library: lib.root().to_path_buf(),
            read_only: req.read_only || for_browse,
            created: dedup::library::now_rfc3339(),
            disks: manifest.disks.len(),
            for_browse,
            browse: None,
            access: req.access.clone(),
            boot: None,
        };
        std::fs::create_dir_all(self.mount_dir(&id))?;
        // The backup may not be forgotten while the mount reads from it.
        let what = match (&req.name, for_browse) {
            (_, true) => format!("browse mount {id} of livemount serve"),
            (Some(name), false) => format!("live mount {id} ({name}) of livemount serve"),
            (None, false) => format!("live mount {id} of livemount serve"),
        };
        let result = lib
            .hold(&id, &manifest.id, &what)
            .map_err(ApiError::from)
            .and_then(|()| self.save(&state))
            .and_then(|()| self.open_mount(state));
        let mount = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = lib.release(&id);
                self.view.remove(&["mounts", &id]);
                let _ = blockdev::pseudo_disk::remove_stores(&self.mount_dir(&id));
                return Err(e);
            }
        };
        tracing::info!(mount = %id, backup = %manifest.id, "mounted");
        if let Some(boot) = &req.boot {
            if let Err(e) = self.make_bootable(&mount, boot.mac.clone()).await {
                self.portal.remove_target(&iqn_of(&id));
                self.view.remove(&["mounts", &id]);
                drop(mount);
                let _ = lib.release(&id);
                let _ = blockdev::pseudo_disk::remove_stores(&self.mount_dir(&id));
                let _ = std::fs::remove_dir_all(self.state_dir.join("boot").join(&id));
                tracing::warn!(mount = %id, "boot preparation failed; mount rolled back: {}", e.message);
                return Err(e);
            }
        }
        let info = self.info(&mount);
        self.mounts.lock().await.insert(id, mount);
        Ok(info)
    }

    /// Prepares the mount's guest to boot from iSCSI and publishes its iPXE script.
    async fn make_bootable(&self, mount: &Mount, mac: Option<String>) -> Result<(), ApiError> {
        let id = mount.state.lock().expect("not poisoned").id.clone();
        let initiator_iqn = format!("iqn.2026-11.io.livemount:initiator-{id}");
        let files: Vec<PathBuf> = (0..mount.disks.len())
            .map(|d| self.fuse_root.join("mounts").join(&id).join(format!("disk{d}.img")))
            .collect();
        let work = self.state_dir.join("boot").join(&id);
        std::fs::create_dir_all(&work)?;
        let opts = image::guest::PrepareOptions {
            initiator_iqn: initiator_iqn.clone(),
            packages_dir: self.boot.packages_dir.clone(),
        };
        let prepared = super::boot::prepare_guest(&files, &work, opts).await?;
        let _ = std::fs::remove_dir_all(&work);
        for d in &mount.disks {
            d.flush().await?;
        }
        let state = {
            let mut s = mount.state.lock().expect("not poisoned");
            s.boot = Some(BootState {
                token: new_mount_id() + &new_mount_id(),
                mac: mac.map(|m| m.to_ascii_lowercase()),
                initiator_iqn,
                guest_os: prepared.os,
                changes: prepared.changes,
            });
            s.clone()
        };
        self.save(&state)?;
        tracing::info!(mount = %id, "guest prepared; iPXE script published");
        Ok(())
    }

    /// The per-mount iPXE script for a token.
    pub async fn script_by_token(&self, token: &str) -> Option<String> {
        let mounts = self.mounts.lock().await;
        mounts.values().find_map(|m| {
            let s = m.state.lock().expect("not poisoned");
            let b = s.boot.as_ref()?;
            (b.token == token).then(|| image::ipxe::mount_script(&self.boot_target(&s.id, b)))
        })
    }

    /// What the entry script gets for a machine: a chain to its mount's script (by MAC, or the only boot
    /// mount there is), or a script saying there is none.
    pub async fn entry_for(&self, mac: &str) -> String {
        let mac = mac.to_ascii_lowercase();
        let mounts = self.mounts.lock().await;
        let boots: Vec<(Option<String>, String)> = mounts
            .values()
            .filter_map(|m| {
                let s = m.state.lock().expect("not poisoned");
                s.boot.as_ref().map(|b| (b.mac.clone(), b.token.clone()))
            })
            .collect();
        let chosen =
            boots.iter().find(|(m, _)| m.as_deref() == Some(mac.as_str())).or_else(|| match boots.as_slice() {
                [only] if only.0.is_none() => Some(only),
                _ => None,
            });
        match chosen {
            Some((_, token)) => image::ipxe::chain_script(&self.script_url(token)),
            None => image::ipxe::no_mount_script(&mac),
        }
    }

    fn script_url(&self, token: &str) -> String {
        format!("{}/ipxe/m/{token}.ipxe", self.boot.http_base)
    }

    fn boot_target(&self, id: &str, b: &BootState) -> image::ipxe::BootTarget {
        let (server, port) = self.portal.advertise.rsplit_once(':').unwrap_or((&self.portal.advertise, "3260"));
        image::ipxe::BootTarget {
            server: server.to_string(),
            port: port.parse().unwrap_or(3260),
            lun: 0,
            target_iqn: iqn_of(id),
            initiator_iqn: b.initiator_iqn.clone(),
            keep_san: true,
        }
    }

    fn info(&self, m: &Mount) -> MountInfo {
        let s = m.state.lock().expect("not poisoned").clone();
        MountInfo {
            disks: m
                .disks
                .iter()
                .enumerate()
                .map(|(d, disk)| {
                    let c = disk.counters();
                    DiskInfo {
                        disk: d,
                        size: disk.size(),
                        fuse_path: self
                            .fuse_root
                            .join("mounts")
                            .join(&s.id)
                            .join(format!("disk{d}.img"))
                            .display()
                            .to_string(),
                        iscsi_url: format!("iscsi://{}/{}/{d}", self.portal.advertise, iqn_of(&s.id)),
                        counters: DiskCounters {
                            bytes_read: c.bytes_read,
                            bytes_written: c.bytes_written,
                            bytes_recalled: c.bytes_recalled,
                            chunks_recalled: c.chunks_recalled,
                            read_bytes_private: c.read_bytes_private,
                            read_bytes_recall: c.read_bytes_recall,
                            flushes: c.flushes,
                            private_blocks: c.private_blocks,
                            recalled_chunks: c.recalled_chunks,
                            chunks_total: disk.chunk_count(),
                        },
                    }
                })
                .collect(),
            iqn: iqn_of(&s.id),
            boot: s.boot.as_ref().map(|b| {
                let target = self.boot_target(&s.id, b);
                let script_url = self.script_url(&b.token);
                BootInfo {
                    qemu_command: format!(
                        "qemu-system-x86_64 -accel tcg -m 1024 -nographic -netdev user,id=n0,bootfile={script_url} -device virtio-net-pci,netdev=n0,disable-legacy=on{} -boot n",
                        b.mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default()
                    ),
                    script_url,
                    entry_url: format!("{}/ipxe/entry.ipxe", self.boot.http_base),
                    sanboot: image::ipxe::sanboot_uri(&target),
                    initiator_iqn: b.initiator_iqn.clone(),
                    mac: b.mac.clone(),
                    guest_os: b.guest_os.clone(),
                    changes: b.changes.clone(),
                }
            }),
            id: s.id,
            name: s.name,
            backup: s.backup,
            read_only: s.read_only,
            created: s.created,
            browse: s.browse,
        }
    }

    pub async fn list(&self) -> Vec<MountInfo> {
        self.mounts.lock().await.values().map(|m| self.info(m)).collect()
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
        let info = self.info(&m);
        self.mounts.lock().await.remove(&id);
        self.portal.remove_target(&iqn_of(&id));
        self.view.remove(&["mounts", &id]);
        let library = m.state.lock().expect("not poisoned").library.clone();
        drop(m);
        blockdev::pseudo_disk::remove_stores(&self.mount_dir(&id))?;
        if let Err(e) = Library::open(&library).and_then(|lib| lib.release(&id)) {
            tracing::warn!(mount = %id, "the mount is gone but its hold on the backup stays: {e}");
        }
        tracing::info!(mount = %id, "unmounted");
        Ok(info)
    }

    /// Mounts a backup read-only and mounts its file systems for file recovery.
    pub async fn browse(&self, backup: &str) -> Result<MountInfo, ApiError> {
        let info = self
            .create(
                &MountRequest {
                    backup: backup.to_string(),
                    name: None,
                    read_only: true,
                    access: TargetAccess::default(),
                    boot: None,
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
        for m in self.mounts.lock().await.values() {
            for d in &m.disks {
                if let Err(e) = d.flush().await {
                    tracing::error!("flush at shutdown failed: {e}");
                }
            }
        }
    }
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
            Arc::new(Lun { disk: disk.clone(), serial: format!("LM{}D{d}", &state.id[..12.min(state.id.len())]), naa })
        })
        .collect();
    let a = &state.access;
    Target {
        iqn: iqn_of(&state.id),
        luns: LunSet { luns },
        chap: a.chap.clone().map(|(user, secret)| ChapConfig { user, secret, mutual: a.mutual_chap.clone() }),
        allowed_initiators: a.allowed_initiators.clone(),
    }
}

/// A mount id: 16 random hex digits (the unguessable part of the mount's iSCSI name later).
fn new_mount_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the kernel's random source is available");
    hex::encode(b)
}

fn parse_time(rfc3339: &str) -> SystemTime {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .unwrap_or_else(|_| SystemTime::now())
}
