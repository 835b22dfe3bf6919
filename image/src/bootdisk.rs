//! The iPXE boot disk: a small disk image that boots iPXE (Debian's `ipxe` package, `ipxe.lkrn`) with the
//! appliance's entry script, so that one image boots every live mount (the entry script asks the appliance
//! which mount the machine gets). A cloud machine image is made from it.
//!
//! Layout: an MBR (syslinux's boot code) and one active FAT16 partition holding SYSLINUX, `ipxe.lkrn` and
//! `entry.ipxe`. SYSLINUX loads ipxe.lkrn as a Linux kernel with the script as its initrd; iPXE runs an
//! initrd script as its embedded script. Built without loop devices or mounts (mtools and
//! `syslinux --offset` work on the image file), so it needs no privileges.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the image and where its partition starts.
const DISK_BYTES: u64 = 32 << 20;
const PART_START_SECTOR: u64 = 2048;
/// The modification time of the files the disk is built with (2026-11-01), for reproducible disks.
const FIXED_MTIME: u64 = 1_793_491_200;
/// The MBR disk signature (sfdisk would pick a random one): "LMOU".
const DISK_ID: u32 = 0x4c4d_4f55;

#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    #[error("{what} is missing: install the Debian packages ipxe, syslinux, syslinux-common, mtools and dosfstools")]
    Missing { what: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run(cmd: &mut Command) -> Result<(), BootDiskError> {
    // mtools (under syslinux and mcopy) stamps what it writes with the current time unless told otherwise.
    cmd.env("SOURCE_DATE_EPOCH", FIXED_MTIME.to_string());
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| BootDiskError::Missing { what: format!("{command} ({e})") })?;
    if !out.status.success() {
        return Err(BootDiskError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Writes the boot disk to `out`, with `entry_script` (see `ipxe::entry_script`) as iPXE's script.
pub fn build(out: &Path, entry_script: &str) -> Result<(), BootDiskError> {
    let lkrn = first_existing(&["/usr/lib/ipxe/ipxe.lkrn", "/boot/ipxe.lkrn"])
        .ok_or_else(|| BootDiskError::Missing { what: "ipxe.lkrn (package ipxe)".into() })?;
    let mbr = first_existing(&["/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin"])
        .ok_or_else(|| BootDiskError::Missing { what: "mbr.bin (package syslinux-common)".into() })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootDiskError::Io { path, source }
    };
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::File::create(&tmp).and_then(|f| f.set_len(DISK_BYTES)).map_err(io(&tmp))?;
    let result = (|| {
        // One active FAT16 partition from sector 2048 to the end.
        let mut sfdisk = Command::new("sfdisk");
        sfdisk.arg("--quiet").arg(&tmp).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = sfdisk.spawn().map_err(|_| BootDiskError::Missing { what: "sfdisk (package fdisk)".into() })?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            writeln!(stdin, "label: dos\nlabel-id: {DISK_ID:#010x}\nstart={PART_START_SECTOR}, type=6, bootable")
                .map_err(io(&tmp))?;
        }
        if !child.wait().map_err(io(&tmp))?.success() {
            return Err(BootDiskError::Command {
                command: "sfdisk".into(),
                stderr: "could not write the partition table".into(),
            });
        }
        // syslinux's MBR boot code (the first 440 bytes; the partition table after it stays).
        let code = std::fs::read(&mbr).map_err(io(&mbr))?;
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&tmp).map_err(io(&tmp))?;
            f.write_all_at(&code[..440.min(code.len())], 0).map_err(io(&tmp))?;
        }
        let offset = PART_START_SECTOR * 512;
        let sectors = (DISK_BYTES - offset) / 512;
        run(Command::new("mkfs.fat")
            // No random volume id or creation time: the same inputs give the same disk, byte for byte
            // (the cloud image is found again by the hash of its content).
            .args(["-F", "16", "-n", "LIVEMOUNT", "--invariant", "--offset", &PART_START_SECTOR.to_string()])
            .arg(&tmp)
            .arg((sectors / 2).to_string()))?;
        run(Command::new("syslinux").args(["--install", "--offset", &offset.to_string()]).arg(&tmp))?;
        let dir = tempfile_dir()?;
        let cfg = dir.join("syslinux.cfg");
        std::fs::write(
            &cfg,
            "DEFAULT livemount\nPROMPT 0\nTIMEOUT 0\nLABEL livemount\n  KERNEL ipxe.lkrn\n  INITRD entry.ipxe\n",
        )
        .map_err(io(&cfg))?;
        let script = dir.join("entry.ipxe");
        std::fs::write(&script, entry_script).map_err(io(&script))?;
        let image_at = format!("{}@@{offset}", tmp.display());
        let fixed = std::time::UNIX_EPOCH + std::time::Duration::from_secs(FIXED_MTIME);
        for file in [cfg.as_path(), script.as_path()] {
            std::fs::File::options().write(true).open(file).and_then(|f| f.set_modified(fixed)).map_err(io(file))?;
        }
        for file in [cfg.as_path(), script.as_path(), lkrn.as_path()] {
            // -m: the files keep their own times, not the time of the copy.
            run(Command::new("mcopy").args(["-o", "-m", "-i", &image_at]).arg(file).arg("::/"))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, out).map_err(io(out)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn tempfile_dir() -> Result<PathBuf, BootDiskError> {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    let dir = std::env::temp_dir()
        .join(format!("livemount-bootdisk-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()));
    std::fs::create_dir_all(&dir).map_err(|source| BootDiskError::Io { path: dir.clone(), source })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cloud image is found again by the hash of this disk, so two builds of the same script, at
    /// different times, must be the same bytes (FAT keeps times in 2 s steps, hence the pause).
    #[test]
    fn same_script_builds_the_same_disk() {
        let dir = std::env::temp_dir().join(format!("livemount-bootdisk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a.img"), dir.join("b.img"), dir.join("c.img"));
        build(&a, "#!ipxe\necho one\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        build(&b, "#!ipxe\necho one\n").unwrap();
        build(&c, "#!ipxe\necho two\n").unwrap();
        let (a, b, c) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), std::fs::read(&c).unwrap());
        assert_eq!(a.len() as u64, DISK_BYTES);
        assert!(a == b, "two builds of one script differ");
        assert!(a != c, "a different script gave the same disk");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
