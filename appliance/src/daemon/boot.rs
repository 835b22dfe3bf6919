//! Preparing a mount to boot a VM (the live-mount flow of the patent, figures 4 to 6): find the guest's
//! root file system on the mount's disks, mount it read-write through the FUSE file (every change lands in
//! the private store), prepare the guest to keep running from iSCSI, and unmount it again.

use std::path::{Path, PathBuf};

use image::guest::{self, PrepareOptions, Prepared};

use super::error::ApiError;
use super::loopdev;

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
            Some(r.map_err(|e| ApiError::conflict(format!("cannot prepare the guest on {device}: {e}"))))
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
