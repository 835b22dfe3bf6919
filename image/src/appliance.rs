//! The access-node image: a bootable Debian 12 disk with the livemount package, that comes up with the
//! daemon running and takes its settings on the first boot from a config drive or the instance metadata.
//! The work is done by two scripts carried in the binary (so an installed appliance can build the image
//! too): `debian-disk.sh` builds the Debian disk that the boot tests' sample guest is also made from, and
//! `appliance-customize.sh` turns it into an access node.

use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_DISK: &str = include_str!("debian-disk.sh");
const CUSTOMIZE: &str = include_str!("appliance-customize.sh");
/// How the Debian archive is found: the machine's own apt sources (no host name is written anywhere).
const DEBIAN_MIRROR: &str = include_str!("../../scripts/debian-mirror.sh");

#[derive(Debug, thiserror::Error)]
pub enum ApplianceImageError {
    #[error("{0} exists: remove it or name another file")]
    Exists(PathBuf),
    #[error("the package {0} does not exist (build it with packaging/build-deb.sh)")]
    NoPackage(PathBuf),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed ({status}); its output is above")]
    Step { step: &'static str, status: std::process::ExitStatus },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

pub struct ApplianceImage<'a> {
    pub out: &'a Path,
    /// The livemount package to install.
    pub deb: &'a Path,
    pub format: Format,
    /// The disk's size, as `truncate -s` takes it (e.g. "4G").
    pub size: &'a str,
    /// The Debian archive; None: the one this machine's apt sources name.
    pub mirror: Option<&'a str>,
}

impl ApplianceImage<'_> {
    /// Builds the image (as root: debootstrap, loop devices, chroot). Minutes: the packages come from the
    /// archive, cached in /var/cache/livemount-guest/debs for the next build.
    pub fn build(&self) -> Result<(), ApplianceImageError> {
        if self.out.exists() {
            return Err(ApplianceImageError::Exists(self.out.to_path_buf()));
        }
        let deb =
            std::fs::canonicalize(self.deb).map_err(|_| ApplianceImageError::NoPackage(self.deb.to_path_buf()))?;
        let parent = match self.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let scripts = ScriptDir::create(&parent.join(format!(".livemount-image-scripts.{}", std::process::id())))?;
        let debian_disk = scripts.write("debian-disk.sh", DEBIAN_DISK)?;
        let customize = scripts.write("appliance-customize.sh", CUSTOMIZE)?;
        let mirror = match self.mirror {
            Some(m) => m.to_string(),
            None => {
                let finder = scripts.write("debian-mirror.sh", DEBIAN_MIRROR)?;
                let out = run_output("finding the Debian archive", &mut Command::new(&finder))?;
                out.trim().to_string()
            }
        };
        let raw = match self.format {
            Format::Raw => self.out.to_path_buf(),
            Format::Qcow2 => parent.join(format!(".{}.raw", file_name(self.out))),
        };
        let mut build = Command::new(&debian_disk);
        build
            .arg(&raw)
            .env("DISK_SIZE", self.size)
            .env("DISK_HOSTNAME", "livemount")
            .env("DISK_MIRROR", &mirror)
            .env("DISK_CMDLINE", "net.ifnames=0")
            .env("DISK_CUSTOMIZE", &customize)
            .env("APPLIANCE_DEB", &deb);
        run("building the Debian disk", &mut build)?;
        if self.format == Format::Qcow2 {
            let converted = run(
                "converting to qcow2",
                Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(self.out),
            );
            let _ = std::fs::remove_file(&raw);
            converted?;
        }
        Ok(())
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

fn run(step: &'static str, cmd: &mut Command) -> Result<(), ApplianceImageError> {
    let status = cmd.status().map_err(|source| ApplianceImageError::Spawn { program: step, source })?;
    if !status.success() {
        return Err(ApplianceImageError::Step { step, status });
    }
    Ok(())
}

fn run_output(step: &'static str, cmd: &mut Command) -> Result<String, ApplianceImageError> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| ApplianceImageError::Spawn { program: step, source })?;
    if !out.status.success() {
        return Err(ApplianceImageError::Step { step, status: out.status });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A folder of the build's scripts, removed when the build ends however it ends.
struct ScriptDir(PathBuf);

impl ScriptDir {
    fn create(dir: &Path) -> Result<ScriptDir, ApplianceImageError> {
        std::fs::create_dir_all(dir).map_err(|source| ApplianceImageError::Io {
            op: "create",
            path: dir.into(),
            source,
        })?;
        Ok(ScriptDir(dir.to_path_buf()))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, ApplianceImageError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        let io = |source| ApplianceImageError::Io { op: "write", path: path.clone(), source };
        std::fs::write(&path, text).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        Ok(path)
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
