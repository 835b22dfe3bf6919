//! Preparing a guest to keep running from iSCSI after the firmware (iPXE) hands over: the guest's own
//! initramfs must log in to the target again, from the iBFT that iPXE leaves behind.
//!
//! One module per guest family: `debian` (Debian and Ubuntu, initramfs-tools). dracut guests (RHEL, Fedora:
//! `rd.iscsi.firmware=1` and the iscsi dracut module) and Windows go beside it. Every change is made inside
//! the guest's root file system as mounted by the caller; on a live mount that lands in the private store.

mod chroot;
mod debian;
mod initramfs;
mod ldconfig;

use std::path::{Path, PathBuf};

/// The version of what `prepare` does to a guest. A prepared guest is kept as a backup of its own and
/// reused by later boot mounts of the same backup; bump this whenever the preparation changes, so that
/// guests prepared the old way are prepared again.
pub const PREPARATION_VERSION: u32 = 3;

/// What the preparation needs to know.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// The initiator name iPXE will use; the guest logs in again under the same name.
    pub initiator_iqn: String,
    /// Folder of packages the appliance provides for guests that lack the iSCSI initiator
    /// (`<dir>/debian-12/*.deb`, ...).
    pub packages_dir: PathBuf,
}

/// What was done to the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    pub family: String,
    /// PRETTY_NAME of the guest's os-release.
    pub os: String,
    pub installed_initiator: bool,
    pub changes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0} does not hold a Linux root file system (no etc/os-release)")]
    NotALinuxRoot(PathBuf),
    #[error(
        "guests of this kind ({os}) cannot be prepared yet: only Debian and Ubuntu (initramfs-tools) are supported"
    )]
    Unsupported { os: String },
    #[error("the guest lacks the iSCSI initiator (open-iscsi) and the appliance has no packages for it in {dir}: put open-iscsi and its dependencies there (see tests/fixtures/fetch-open-iscsi-debs.sh)")]
    MissingPackages { dir: PathBuf },
    #[error("`{command}` failed in the guest ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.to_path_buf();
    move |source| GuestError::Io { op, path, source }
}

/// The guest's os-release as key/value pairs.
pub fn os_release(root: &Path) -> Option<Vec<(String, String)>> {
    let text =
        ["etc/os-release", "usr/lib/os-release"].iter().find_map(|p| std::fs::read_to_string(root.join(p)).ok())?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect(),
    )
}

/// True when `root` looks like a Linux root file system.
pub fn is_linux_root(root: &Path) -> bool {
    os_release(root).is_some() && (root.join("sbin/init").exists() || root.join("usr/lib/systemd/systemd").exists())
}

/// Prepares the guest whose root file system is mounted at `root`.
pub fn prepare(root: &Path, opts: &PrepareOptions) -> Result<Prepared, GuestError> {
    let release = os_release(root).ok_or_else(|| GuestError::NotALinuxRoot(root.to_path_buf()))?;
    let get = |k: &str| release.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let os = get("PRETTY_NAME");
    let family_ids = format!("{} {}", get("ID"), get("ID_LIKE"));
    if (family_ids.contains("debian") || family_ids.contains("ubuntu"))
        && root.join("usr/sbin/update-initramfs").exists()
    {
        return debian::prepare(root, opts, os);
    }
    Err(GuestError::Unsupported { os: if os.is_empty() { get("ID") } else { os } })
}
