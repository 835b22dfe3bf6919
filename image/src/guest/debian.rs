//! Debian and Ubuntu guests (initramfs-tools): make sure open-iscsi is there (installed offline from the
//! appliance's packages when not), name the initiator as iPXE will, log in from the iBFT in the initramfs
//! only when firmware left one (so that a local boot of the same disk does not wait for a network), keep
//! ifupdown away from the boot NIC, and add all that to the initramfs: appended to each image as one more
//! archive (`initramfs.rs`), which takes seconds and reads neither the image nor its modules where a rebuild
//! takes half a minute; an image that cannot be extended is rebuilt.

use std::path::Path;

use super::chroot::Chroot;
use super::{initramfs, io_err, ldconfig, GuestError, PrepareOptions, Prepared};

/// Sourced by open-iscsi's initramfs script (local-top/iscsi). iPXE's sanboot leaves an iBFT in memory,
/// which the iscsi_ibft module finds and shows under /sys/firmware/ibft.
const ISCSI_INITRAMFS: &str = "\
# Written by livemount: log in to the boot disk from the iBFT only when the firmware (iPXE sanboot) left one,
# so that a local boot of this disk does not wait for a network.
modprobe iscsi_ibft 2>/dev/null
if [ -d /sys/firmware/ibft/initiator ] || [ -e /sys/firmware/acpi/tables/iBFT ]; then
    ISCSI_AUTO=true
fi
";

/// Only loopback: the boot NIC carries the root file system and belongs to the initramfs; ifupdown taking
/// its address away at shutdown would cut the disk off under the running system.
const INTERFACES: &str = "\
# Written by livemount for a boot from iSCSI: the boot NIC is configured by the initramfs (from the iBFT)
# and must not be reconfigured here. The original is in interfaces.livemount-orig.
auto lo
iface lo inet loopback
";

fn has_initiator(root: &Path) -> bool {
    (root.join("usr/sbin/iscsistart").exists() || root.join("sbin/iscsistart").exists())
        && root.join("usr/share/initramfs-tools/hooks/iscsi").exists()
}

pub fn prepare(root: &Path, opts: &PrepareOptions, os: String) -> Result<Prepared, GuestError> {
    let mut done = Prepared { family: "debian".into(), os, ..Default::default() };
    let chroot = Chroot::enter(root)?;

    // The configuration first: open-iscsi's postinst keeps an initiator name that is there, and the
    // initramfs takes both files (below).
    let iscsi_dir = root.join("etc/iscsi");
    std::fs::create_dir_all(&iscsi_dir).map_err(io_err("create", &iscsi_dir))?;
    let name_file = iscsi_dir.join("initiatorname.iscsi");
    std::fs::write(&name_file, format!("InitiatorName={}\n", opts.initiator_iqn))
        .map_err(io_err("write", &name_file))?;
    done.changes.push(format!("initiator name {}", opts.initiator_iqn));
    let initramfs_conf = iscsi_dir.join("iscsi.initramfs");
    std::fs::write(&initramfs_conf, ISCSI_INITRAMFS).map_err(io_err("write", &initramfs_conf))?;
    done.changes.push("iBFT login in the initramfs when an iBFT is present".into());

    let interfaces = root.join("etc/network/interfaces");
    if let Ok(current) = std::fs::read_to_string(&interfaces) {
        if current != INTERFACES {
            let backup = root.join("etc/network/interfaces.livemount-orig");
            if !backup.exists() {
                std::fs::write(&backup, &current).map_err(io_err("write", &backup))?;
            }
            std::fs::write(&interfaces, INTERFACES).map_err(io_err("write", &interfaces))?;
            done.changes.push("ifupdown leaves the boot NIC to the initramfs".into());
        }
    }

    let images = initramfs_images(root);
    if !has_initiator(root) {
        // Its dpkg trigger would rebuild every initramfs: they are extended below instead. libc-bin's
        // trigger looks at every library of the guest: only at those its cache does not know (`ldconfig.rs`).
        without_initramfs_updates(root, || {
            ldconfig::with_cache_on_this_device(root, || install_open_iscsi(root, &chroot, opts))
        })?;
        done.installed_initiator = true;
        done.changes.push("installed open-iscsi from the appliance's packages".into());
    }
    if images.is_empty() {
        chroot.run(&["update-initramfs", "-u", "-k", "all"])?;
        done.changes.push("initramfs rebuilt".into());
    }
    for version in &images {
        match initramfs::extend(&chroot, version) {
            Ok(bytes) => done.changes.push(format!(
                "initramfs of {version} extended with the iSCSI login ({} KiB appended)",
                bytes.div_ceil(1024)
            )),
            Err(e) => {
                chroot.run(&["update-initramfs", "-u", "-k", version])?;
                done.changes.push(format!("initramfs of {version} rebuilt (it could not be extended: {e})"));
            }
        }
    }
    drop(chroot);
    Ok(done)
}

/// The kernel versions the guest has an initramfs image for (`/boot/initrd.img-<kernel version>`).
fn initramfs_images(root: &Path) -> std::collections::BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(root.join("boot")) else { return Default::default() };
    entries
        .flatten()
        .filter_map(|e| Some(e.file_name().to_string_lossy().strip_prefix("initrd.img-")?.to_string()))
        .collect()
}

/// Runs `f` with the guest's initramfs updates turned off (`update_initramfs=no`, which `update-initramfs`
/// honours), and puts the guest's setting back afterwards, whatever `f` returned.
fn without_initramfs_updates<T>(root: &Path, f: impl FnOnce() -> Result<T, GuestError>) -> Result<T, GuestError> {
    let conf = root.join("etc/initramfs-tools/update-initramfs.conf");
    let original = match std::fs::read_to_string(&conf) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", &conf)(e)),
    };
    let mut off: String = original
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with("update_initramfs="))
        .map(|l| format!("{l}\n"))
        .collect();
    off.push_str("update_initramfs=no\n");
    if let Some(dir) = conf.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    std::fs::write(&conf, off).map_err(io_err("write", &conf))?;
    let result = f();
    let restored = match &original {
        Some(text) => std::fs::write(&conf, text),
        None => std::fs::remove_file(&conf),
    };
    let value = result?;
    restored.map_err(io_err("restore", &conf))?;
    Ok(value)
}

/// Installs open-iscsi from `<packages>/debian-<major>/*.deb` (or `<packages>/*.deb`) without a network.
fn install_open_iscsi(root: &Path, chroot: &Chroot, opts: &PrepareOptions) -> Result<(), GuestError> {
    let major = super::os_release(root)
        .and_then(|r| r.into_iter().find(|(k, _)| k == "VERSION_ID").map(|(_, v)| v))
        .unwrap_or_default();
    let candidates = [opts.packages_dir.join(format!("debian-{major}")), opts.packages_dir.clone()];
    let (dir, debs) = candidates
        .iter()
        .find_map(|d| {
            let debs: Vec<_> = std::fs::read_dir(d)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect();
            debs.iter()
                .any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("open-iscsi_")))
                .then(|| (d.clone(), debs))
        })
        .ok_or_else(|| GuestError::MissingPackages { dir: candidates[0].clone() })?;
    // Packages the guest already has stay as they are: installing the appliance's copy could downgrade them.
    let debs: Vec<_> = debs.into_iter().filter(|d| !installed_in_guest(root, &package_name(d))).collect();
    let staging = root.join("var/cache/livemount-debs");
    std::fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
    let mut inside = Vec::new();
    for deb in &debs {
        let name =
            deb.file_name().expect("paths listed from a folder end in a file name").to_string_lossy().to_string();
        std::fs::copy(deb, staging.join(&name)).map_err(io_err("copy", deb))?;
        inside.push(format!("/var/cache/livemount-debs/{name}"));
    }
    // No service may start inside the guest while it is being prepared.
    let policy = root.join("usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(io_err("write", &policy))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755));
    }
    let mut args: Vec<&str> = vec!["dpkg", "-i", "--force-confdef", "--force-confold"];
    args.extend(inside.iter().map(String::as_str));
    let result = chroot.run(&args);
    if !had_policy {
        let _ = std::fs::remove_file(&policy);
    }
    let _ = std::fs::remove_dir_all(&staging);
    result.map_err(|e| match e {
        GuestError::Command { command, status, stderr } => {
            GuestError::Command { command, status, stderr: format!("{stderr} (packages from {})", dir.display()) }
        }
        other => other,
    })?;
    if !has_initiator(root) {
        return Err(GuestError::MissingPackages { dir });
    }
    Ok(())
}

/// The package name of a `.deb` file (`name_version_arch.deb`).
fn package_name(deb: &Path) -> String {
    deb.file_name().map(|n| n.to_string_lossy().split('_').next().unwrap_or("").to_string()).unwrap_or_default()
}

/// True when the guest's dpkg database lists the package as installed.
fn installed_in_guest(root: &Path, package: &str) -> bool {
    let Ok(status) = std::fs::read_to_string(root.join("var/lib/dpkg/status")) else { return false };
    status.split("\n\n").any(|stanza| {
        let mut name = false;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(p) = line.strip_prefix("Package: ") {
                name = p.trim() == package;
            }
            if let Some(st) = line.strip_prefix("Status: ") {
                installed = st.trim().ends_with(" installed");
            }
        }
        name && installed
    })
}
