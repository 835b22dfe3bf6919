//! Disk files of the FUSE view as loop devices with their partitions, and the file systems on them. Every
//! step runs as a child process on tokio: the kernel's reads of a loop device come back to this daemon
//! through FUSE, so no runtime thread may block waiting for them.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::error::ApiError;

pub async fn run(cmd: &mut Command) -> Result<String, ApiError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| ApiError::Spawn { command: format!("{cmd:?}"), source })?;
    if !out.status.success() {
        return Err(ApiError::CommandFailed {
            program: format!("{:?}", cmd.as_std().get_program()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A disk file attached as a loop device, with its partitions as (number, device). A disk without a
/// partition table gives itself as partition 0.
pub struct Attached {
    pub device: String,
    pub partitions: Vec<(u32, String)>,
}

pub async fn attach(file: &Path, read_only: bool) -> Result<Attached, ApiError> {
    let mut cmd = Command::new("losetup");
    cmd.args(["--find", "--show", "--partscan"]);
    if read_only {
        cmd.arg("--read-only");
    }
    let device = run(cmd.arg(file)).await?;
    let name = device.trim_start_matches("/dev/").to_string();
    // Some kernels leave the scan to user space: partx adds the partitions the table lists.
    if partitions(&name).is_empty() {
        let _ = run(Command::new("partx").arg("--add").arg(&device)).await;
    }
    // Partitions appear in sysfs at once and as device nodes shortly after (devtmpfs).
    let mut parts: Vec<(u32, String)> = Vec::new();
    for _ in 0..50 {
        parts = partitions(&name);
        if parts.iter().all(|(_, d)| Path::new(d).exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if parts.is_empty() {
        parts.push((0, device.clone()));
    }
    Ok(Attached { device, partitions: parts })
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

/// The file system type on a device, if it is one we mount (ext2/3/4, xfs, vfat, btrfs, ...).
pub async fn mountable_fstype(device: &str) -> Option<String> {
    let t = run(Command::new("blkid").args(["-o", "value", "-s", "TYPE"]).arg(device)).await.ok()?;
    match t.as_str() {
        "" | "swap" | "LVM2_member" | "crypto_LUKS" => None,
        _ => Some(t),
    }
}

/// Mounts a file system; read-only mounts skip journal replay (nothing may be written).
pub async fn mount(device: &str, fstype: &str, path: &Path, read_only: bool) -> Result<(), ApiError> {
    let options = match (fstype, read_only) {
        ("ext2" | "ext3" | "ext4", true) => "ro,noload",
        ("xfs", true) => "ro,norecovery",
        (_, true) => "ro",
        (_, false) => "rw",
    };
    std::fs::create_dir_all(path).map_err(ApiError::io("create", path))?;
    run(Command::new("mount").args(["-t", fstype, "-o", options]).arg(device).arg(path)).await.map(|_| ())
}

/// Unmounts, lazily when something still holds the file system.
pub async fn unmount(path: &Path) {
    if let Err(e) = run(Command::new("umount").arg(path)).await {
        tracing::warn!("{e}; unmounting lazily");
        let _ = run(Command::new("umount").arg("-l").arg(path)).await;
    }
    let _ = std::fs::remove_dir(path);
}

pub async fn detach(device: &str) {
    if let Err(e) = run(Command::new("losetup").arg("-d").arg(device)).await {
        tracing::warn!("{e}");
    }
}
