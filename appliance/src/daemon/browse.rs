//! File recovery: a read-only mount's disks attached as loop devices with partition scan, and each file
//! system found on them mounted read-only without journal replay. Every step runs as a child process on
//! tokio (the kernel's reads of the loop device come back to this daemon through FUSE, so no runtime thread
//! may block waiting for them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::error::ApiError;
use crate::api_types::{BrowseInfo, BrowsedFs};

async fn run(cmd: &mut Command) -> Result<String, ApiError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::internal(format!(
            "{:?} failed: {}",
            cmd.as_std().get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Attaches each disk file read-only with partition scan and mounts every file system found.
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
        let dev =
            run(Command::new("losetup").args(["--find", "--show", "--read-only", "--partscan"]).arg(file)).await?;
        info.loop_devices.push(dev.clone());
        let name = dev.trim_start_matches("/dev/").to_string();
        // Some kernels leave the scan to user space: partx adds the partitions the table lists.
        if partitions(&name).is_empty() {
            let _ = run(Command::new("partx").arg("--add").arg(&dev)).await;
        }
        // Partitions appear in sysfs at once and as device nodes shortly after (devtmpfs).
        let mut candidates: Vec<(u32, String)> = Vec::new();
        for _ in 0..50 {
            candidates = partitions(&name);
            if candidates.iter().all(|(_, d)| Path::new(d).exists()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if candidates.is_empty() {
            candidates.push((0, dev.clone())); // a file system on the whole disk
        }
        for (partition, device) in candidates {
            let Ok(fstype) = run(Command::new("blkid").args(["-o", "value", "-s", "TYPE"]).arg(&device)).await else {
                continue; // no file system (swap signatures, BIOS boot partitions, ...)
            };
            let options = match fstype.as_str() {
                "ext2" | "ext3" | "ext4" => "ro,noload",
                "xfs" => "ro,norecovery",
                "swap" | "LVM2_member" | "" => continue,
                _ => "ro",
            };
            let path = root.join(format!("disk{disk}p{partition}"));
            std::fs::create_dir_all(&path)?;
            run(Command::new("mount").args(["-t", &fstype, "-o", options]).arg(&device).arg(&path)).await?;
            info.filesystems.push(BrowsedFs { disk, partition, device, fstype, path: path.display().to_string() });
        }
    }
    Ok(())
}

/// Partitions of a loop device from sysfs: (number, device path).
fn partitions(loop_name: &str) -> Vec<(u32, String)> {
    let dir = Path::new("/sys/block").join(loop_name);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let part_name = e.file_name().to_string_lossy().to_string();
            if let Ok(n) = std::fs::read_to_string(e.path().join("partition")) {
                if let Ok(n) = n.trim().parse() {
                    out.push((n, format!("/dev/{part_name}")));
                }
            }
        }
    }
    out.sort();
    out
}

/// Unmounts and detaches everything a browse set up; carries on past errors so that as much as possible
/// is undone.
pub async fn undo(info: &BrowseInfo) {
    for fs in info.filesystems.iter().rev() {
        if let Err(e) = run(Command::new("umount").arg(&fs.path)).await {
            tracing::warn!("{}; unmounting lazily", e.message);
            let _ = run(Command::new("umount").arg("-l").arg(&fs.path)).await;
        }
        let _ = std::fs::remove_dir(&fs.path);
    }
    for dev in &info.loop_devices {
        if let Err(e) = run(Command::new("losetup").arg("-d").arg(dev)).await {
            tracing::warn!("{}", e.message);
        }
    }
}
