//! Live-mount a VM: a bootable Debian guest (built from Debian packages, without open-iscsi) is backed up,
//! mounted with --boot (the appliance installs open-iscsi offline and prepares the initramfs, then keeps the
//! prepared guest as a backup of its own), and a second boot mount of the same backup mounts that prepared
//! version without preparing again. QEMU boots it through the appliance's iPXE boot disk: iPXE fetches the
//! entry script over HTTP, chains to the mount's script and sanboots from the native iSCSI target; the
//! guest's initramfs logs in again from the iBFT and the guest runs to userspace with its root on the iSCSI
//! disk, writes a marker file, prints a marker on the serial console and powers off. The prepared version,
//! restored to a local disk, boots from it too. Afterwards the backup verifies and restores identical.

use std::process::Command;

use tests::guest::{boot_in_qemu, boot_mount, guest_backup, read_guest_file};
use tests::{json, livemount, Daemon};

#[test]
fn a_debian_vm_boots_from_a_live_mount_over_ipxe_and_iscsi() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, guest, packages) = guest_backup(dir);

    // QEMU's user-mode network reaches the host's 127.0.0.1 as 10.0.2.2.
    let packages_arg = packages.display().to_string();
    let daemon = Daemon::start_with(dir, &lib, &["--advertise", "10.0.2.2", "--guest-packages", &packages_arg]);

    // The first boot mount prepares the guest and keeps the prepared guest as a new version of the backup.
    let first = boot_mount(&daemon, &backup, &[]);
    let changes = first["boot"]["changes"].to_string();
    // The initramfs is extended with the iSCSI login, not rebuilt (a rebuild recalls every module of it).
    assert!(changes.contains("extended with the iSCSI login") && changes.contains("kept as backup"), "{changes}");
    assert_eq!(first["backup"], backup.as_str());
    daemon.cli().args(["unmount", first["id"].as_str().unwrap()]).assert().success();
    let listed = json(&livemount(&lib).args(["backup", "list", "--json"]).output().unwrap().stdout);
    let prepared = listed.as_array().unwrap().iter().find(|m| m["id"] != backup.as_str()).expect("a prepared version");
    let prepared_id = prepared["id"].as_str().unwrap().to_string();
    assert_eq!(prepared["origin"]["parent_backup"], backup.as_str(), "{prepared}");
    assert_eq!(prepared["origin"]["preparation"]["version"], 3, "{prepared}"); // image::guest::PREPARATION_VERSION

    // A second boot mount of the same backup mounts the prepared version: nothing is prepared or recalled.
    let second = boot_mount(&daemon, &backup, &[]);
    assert_eq!(second["backup"], prepared_id.as_str(), "the prepared version is mounted");
    assert!(second["boot"]["changes"].to_string().contains("nothing prepared again"), "{}", second["boot"]);
    let mounts = json(&daemon.cli().args(["mounts", "--json"]).output().unwrap().stdout);
    let counters = &mounts[0]["disks"][0]["counters"];
    assert_eq!(counters["bytes_recalled"], 0, "ready without reading the guest: {counters}");
    assert_eq!(counters["bytes_written"], 0, "ready without writing the guest: {counters}");

    // It boots.
    let booted = boot_in_qemu(&daemon, &lib, &second, dir);
    // The guest's marker file is in the mount's private store, not in either backup.
    for b in [&backup, &prepared_id] {
        let restored = dir.join("restored.img");
        livemount(&lib).args(["backup", "restore", b]).arg(&restored).assert().success();
        let pristine = read_guest_file(&restored, "/var/lib/livemount-marker");
        assert!(!pristine.contains("tran=iscsi"), "backup {b} was not written: {pristine:?}");
        std::fs::remove_file(&restored).unwrap();
    }

    // The prepared guest moved off the live mount onto a local disk still boots from it: its initramfs
    // keeps the storage drivers, and logs in to nothing without an iBFT.
    let local = dir.join("prepared-local.img");
    livemount(&lib).args(["backup", "restore", &prepared_id]).arg(&local).assert().success();
    let drive = format!("file={},format=raw,if=virtio", local.display());
    let args: Vec<String> = ["-drive", &drive, "-nic", "none", "-boot", "c"].map(String::from).to_vec();
    let run = tests::guest::run_qemu(&args, std::time::Duration::from_secs(900));
    let marker = run.marker().unwrap_or_else(|| panic!("no boot marker from the local disk:\n{}", run.tail(3000)));
    assert!(marker.contains("root=/dev/vda") && !marker.contains("tran=iscsi"), "booted from the local disk: {marker}");
    std::fs::remove_file(&local).unwrap();

    daemon.cli().args(["unmount", &booted.mount_id]).assert().success();
    livemount(&lib).args(["backup", "verify"]).assert().success();
    let restored = dir.join("restored.img");
    livemount(&lib).args(["backup", "restore", &backup]).arg(&restored).assert().success();
    let same = Command::new("cmp").arg(&restored).arg(&guest).status().unwrap().success();
    assert!(same, "the backup restores identical to the original guest image");
}
