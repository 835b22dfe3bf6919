//! Booting a VM from a mount (the live-mount flow of the patent, figures 4 to 6). Preparing: find the
//! guest's root file system on the mount's disks, mount it read-write through the FUSE file (every change
//! lands in the private store), prepare the guest to keep running from iSCSI, and unmount it again.
//! Publishing: the per-mount iPXE script behind an unguessable token, and the entry script that chains a
//! machine to its mount's script.

use std::path::{Path, PathBuf};

use image::guest::{self, PrepareOptions, Prepared};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::loopdev;
use super::mounts::iqn_of;

/// Where the daemon's HTTP server (iPXE scripts) is reached, and where guest packages are.
pub struct BootSettings {
    pub http_base: String,
    pub packages_dir: PathBuf,
}

impl BootSettings {
    /// The URL of the per-mount script behind `token`.
    pub fn script_url(&self, token: &str) -> String {
        format!("{}/ipxe/m/{token}.ipxe", self.http_base)
    }

    /// The URL of the fixed entry script.
    pub fn entry_url(&self) -> String {
        format!("{}/ipxe/entry.ipxe", self.http_base)
    }
}

/// What a boot mount publishes: the token of its script URL, and the prepared guest. Kept in mount.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootState {
    pub token: String,
    pub mac: Option<String>,
    pub initiator_iqn: String,
    pub guest_os: String,
    pub changes: Vec<String>,
    /// CHAP user and secret the script logs in with (cloud mounts: generated per mount).
    #[serde(default)]
    pub chap: Option<(String, String)>,
}

/// The initiator name the guest of mount `mount_id` is prepared with and iPXE logs in as.
pub fn initiator_iqn(mount_id: &str) -> String {
    format!("iqn.2026-11.io.livemount:initiator-{mount_id}")
}

/// How a boot mount is made bootable.
pub struct BootPlan {
    pub mac: Option<String>,
    /// The guest already boots from iSCSI: nothing is changed in it.
    pub skip_prepare: bool,
    pub chap: Option<(String, String)>,
    /// The initiator name the guest is prepared with (or was, when `reused`) and iPXE logs in as.
    pub initiator_iqn: String,
    /// The mounted backup holds a guest prepared before: nothing is changed in it.
    pub reused: Option<Reused>,
}

/// A preparation made before, kept in backup `backup`.
pub struct Reused {
    pub backup: String,
    pub preparation: super::mounts::Preparation,
}

/// Prepares the guest on a mount's disk files to boot from iSCSI, using `work` as scratch space (unless
/// it was prepared before or needs no preparation), and gives what to publish for it. The caller flushes
/// the disks and keeps the state.
pub async fn make_bootable(
    disk_files: &[PathBuf],
    work: &Path,
    settings: &BootSettings,
    plan: BootPlan,
) -> Result<BootState, ApiError> {
    let initiator_iqn = plan.initiator_iqn;
    let (os, changes) = if let Some(r) = plan.reused {
        let mut changes = r.preparation.changes;
        changes.push(format!("prepared before: mounted as backup {}, nothing prepared again", r.backup));
        (r.preparation.guest_os, changes)
    } else if plan.skip_prepare {
        ("not prepared (--skip-prepare)".to_string(), Vec::new())
    } else {
        std::fs::create_dir_all(work).map_err(ApiError::io("create", work))?;
        let opts = PrepareOptions { initiator_iqn: initiator_iqn.clone(), packages_dir: settings.packages_dir.clone() };
        let prepared = prepare_guest(disk_files, work, opts).await?;
        let _ = std::fs::remove_dir_all(work);
        (prepared.os, prepared.changes)
    };
    Ok(BootState {
        token: new_token(),
        mac: plan.mac.map(|m| m.to_ascii_lowercase()),
        initiator_iqn,
        guest_os: os,
        changes,
        chap: plan.chap,
    })
}

/// The iSCSI boot disk of a boot mount as iPXE is told it: LUN 0 of the mount's target at the portal's
/// advertised address (`host:port`, port 3260 when it has none).
pub fn boot_target(advertise: &str, mount_id: &str, b: &BootState) -> image::ipxe::BootTarget {
    let (server, port) = advertise.rsplit_once(':').unwrap_or((advertise, "3260"));
    image::ipxe::BootTarget {
        server: server.to_string(),
        port: port.parse().unwrap_or(3260),
        lun: 0,
        target_iqn: iqn_of(mount_id),
        initiator_iqn: b.initiator_iqn.clone(),
        keep_san: true,
        chap: b.chap.clone(),
    }
}

/// What the entry script gets for a machine, given the boot mounts as (MAC, token): a chain to its mount's
/// script (by MAC, or the only boot mount there is when that one names no MAC), or a script saying there
/// is none.
pub fn entry_script(boots: &[(Option<String>, String)], mac: &str, settings: &BootSettings) -> String {
    let mac = mac.to_ascii_lowercase();
    let chosen = boots.iter().find(|(m, _)| m.as_deref() == Some(mac.as_str())).or_else(|| match boots {
        [only] if only.0.is_none() => Some(only),
        _ => None,
    });
    match chosen {
        Some((_, token)) => image::ipxe::chain_script(&settings.script_url(token)),
        None => image::ipxe::no_mount_script(&mac),
    }
}

/// A script token: 32 random hex digits, the unguessable part of the script's URL.
fn new_token() -> String {
    crate::random::hex(16)
}

/// Prepares the guest found on `disk_files`. `work` is a folder for the temporary mount point.
pub async fn prepare_guest(disk_files: &[PathBuf], work: &Path, opts: PrepareOptions) -> Result<Prepared, ApiError> {
    for file in disk_files {
        let attached = loopdev::attach(file, false).await?;
        let result = prepare_on(&attached, work, &opts).await;
        loopdev::detach(&attached.device).await;
        match result {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict("no Linux root file system was found on the backup's disks, so the guest cannot be prepared to boot (LVM volumes are not searched yet)"))
}

async fn prepare_on(
    attached: &loopdev::Attached,
    work: &Path,
    opts: &PrepareOptions,
) -> Result<Option<Prepared>, ApiError> {
    for (_, device) in &attached.partitions {
        let Some(fstype) = loopdev::mountable_fstype(device).await else { continue };
        if !matches!(fstype.as_str(), "ext4" | "ext3" | "ext2" | "xfs" | "btrfs") {
            continue;
        }
        let root = work.join("root");
        loopdev::mount(device, &fstype, &root, false).await?;
        let result = if guest::is_linux_root(&root) {
            let (root2, opts2) = (root.clone(), opts.clone());
            let r = tokio::task::spawn_blocking(move || guest::prepare(&root2, &opts2))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Some(r.map_err(|source| ApiError::Guest { device: device.clone(), source }))
        } else {
            None
        };
        // Everything the preparation wrote reaches the pseudo-disk before the VM may boot.
        let _ = loopdev::run(tokio::process::Command::new("sync").arg("-f").arg(&root)).await;
        loopdev::unmount(&root).await;
        if let Some(r) = result {
            return r.map(Some);
        }
    }
    Ok(None)
}
