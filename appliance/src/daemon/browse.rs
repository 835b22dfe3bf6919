//! File recovery: a read-only mount's disks attached as loop devices, and each file system found on them
//! mounted read-only without journal replay.

use std::path::{Path, PathBuf};

use super::error::ApiError;
use super::loopdev;
use crate::api_types::{BrowseInfo, BrowsedFs};

/// Attaches each disk file read-only and mounts every file system found.
pub async fn browse(disk_files: &[PathBuf], root: &Path) -> Result<BrowseInfo, ApiError> {
    let mut info = BrowseInfo { loop_devices: Vec::new(), filesystems: Vec::new() };
    let result = browse_into(disk_files, root, &mut info).await;
    if let Err(e) = result {
        undo(&info).await;
        return Err(e);
    }
    if info.filesystems.is_empty() {
        undo(&info).await;
        return Err(ApiError::conflict("no mountable file system was found on the backup's disks"));
    }
    Ok(info)
}

async fn browse_into(disk_files: &[PathBuf], root: &Path, info: &mut BrowseInfo) -> Result<(), ApiError> {
    for (disk, file) in disk_files.iter().enumerate() {
        let attached = loopdev::attach(file, true).await?;
        info.loop_devices.push(attached.device.clone());
        for (partition, device) in attached.partitions {
            let Some(fstype) = loopdev::mountable_fstype(&device).await else { continue };
            let path = root.join(format!("disk{disk}p{partition}"));
            loopdev::mount(&device, &fstype, &path, true).await?;
            info.filesystems.push(BrowsedFs { disk, partition, device, fstype, path: path.display().to_string() });
        }
    }
    Ok(())
}

/// Unmounts and detaches everything a browse set up; carries on past errors so that as much as possible
/// is undone.
pub async fn undo(info: &BrowseInfo) {
    for fs in info.filesystems.iter().rev() {
        loopdev::unmount(Path::new(&fs.path)).await;
    }
    for dev in &info.loop_devices {
        loopdev::detach(dev).await;
    }
}
