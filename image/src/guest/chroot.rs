//! Running commands inside the guest: /proc, /sys and /dev bound into its root for the duration, undone
//! on drop (lazily if something still holds them).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::GuestError;

pub struct Chroot {
    root: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Chroot {
    pub fn enter(root: &Path) -> Result<Chroot, GuestError> {
        let mut c = Chroot { root: root.to_path_buf(), mounted: Vec::new() };
        for (src, fstype) in [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "")] {
            let target = root.join(src.trim_start_matches('/'));
            std::fs::create_dir_all(&target).map_err(super::io_err("create", &target))?;
            let mut cmd = Command::new("mount");
            if fstype.is_empty() {
                cmd.arg("--bind").arg(src);
            } else {
                cmd.args(["-t", fstype, fstype]);
            }
            run(cmd.arg(&target))?;
            c.mounted.push(target);
        }
        // Scratch space in memory: mkinitramfs builds its image under /var/tmp, and those hundreds of MiB
        // would otherwise land in the mount's private store although they are deleted at once.
        for scratch in ["tmp", "var/tmp"] {
            let target = root.join(scratch);
            if target.is_dir() {
                run(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=1777", "tmpfs"]).arg(&target))?;
                c.mounted.push(target);
            }
        }
        Ok(c)
    }

    /// Runs a command in the guest with a plain environment.
    pub fn run(&self, args: &[&str]) -> Result<String, GuestError> {
        run(&mut self.command(args))
    }

    /// Like `run`, but an exit with status `code` gives `None`: how a script in the guest says that it
    /// does not apply.
    pub fn run_unless(&self, code: i32, args: &[&str]) -> Result<Option<String>, GuestError> {
        let mut cmd = self.command(args);
        let (command, out) = output(&mut cmd)?;
        if out.status.code() == Some(code) {
            return Ok(None);
        }
        checked(command, out).map(Some)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LANG", "C");
        cmd
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let ok = Command::new("umount").arg(m).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

pub fn run(cmd: &mut Command) -> Result<String, GuestError> {
    let (command, out) = output(cmd)?;
    checked(command, out)
}

/// Runs `cmd` to its end: its description (for errors) and its output.
fn output(cmd: &mut Command) -> Result<(String, std::process::Output), GuestError> {
    let command = format!("{cmd:?}");
    let out = cmd.stdin(std::process::Stdio::null()).output().map_err(|e| GuestError::Command {
        command: command.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    Ok((command, out))
}

/// The standard output of a command that succeeded; the tail of its standard error otherwise.
fn checked(command: String, out: std::process::Output) -> Result<String, GuestError> {
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(GuestError::Command {
            command,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
