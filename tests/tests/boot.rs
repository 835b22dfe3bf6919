//! Live-mount a VM: a bootable Debian guest (built from Debian packages, without open-iscsi) is backed up,
//! mounted with --boot (the appliance installs open-iscsi offline and prepares the initramfs), and QEMU
//! boots it through the appliance's iPXE boot disk: iPXE fetches the entry script over HTTP, chains to
//! the mount's script and sanboots from the native iSCSI target; the guest's initramfs logs in again from
//! the iBFT and the guest runs to userspace with its root on the iSCSI disk, writes a marker file, prints
//! a marker on the serial console and powers off. Afterwards the backup verifies and restores identical.

use std::process::Command;

use tests::guest::{boot_mount_in_qemu, guest_backup, read_guest_file};
use tests::{livemount, Daemon};

#[test]
fn a_debian_vm_boots_from_a_live_mount_over_ipxe_and_iscsi() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, guest, packages) = guest_backup(dir);

    // QEMU's user-mode network reaches the host's 127.0.0.1 as 10.0.2.2.
    let packages_arg = packages.display().to_string();
    let daemon = Daemon::start_with(dir, &lib, &["--advertise", "10.0.2.2", "--guest-packages", &packages_arg]);
    let booted = boot_mount_in_qemu(&daemon, &lib, &backup, &[], dir);
    // The guest's marker file is in the mount's private store, not in the backup.
    let pristine = read_guest_file(&guest, "/var/lib/livemount-marker");
    assert!(!pristine.contains("tran=iscsi"), "the backup's image was not written: {pristine:?}");

    daemon.cli().args(["unmount", &booted.mount_id]).assert().success();
    livemount(&lib).args(["backup", "verify", &backup]).assert().success();
    let restored = dir.join("restored.img");
    livemount(&lib).args(["backup", "restore", &backup]).arg(&restored).assert().success();
    let same = Command::new("cmp").arg(&restored).arg(&guest).status().unwrap().success();
    assert!(same, "the backup restores identical to the original guest image");
}
