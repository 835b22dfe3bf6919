//! Live-mount a VM: a bootable Debian guest (built from Debian packages, without open-iscsi) is backed up,
//! mounted with --boot (the appliance installs open-iscsi offline and prepares the initramfs), and QEMU
//! boots it through the appliance's iPXE boot disk: iPXE fetches the entry script over HTTP, chains to
//! the mount's script and sanboots from the native iSCSI target; the guest's initramfs logs in again from
//! the iBFT and the guest runs to userspace with its root on the iSCSI disk, writes a marker file, prints
//! a marker on the serial console and powers off. Afterwards the backup verifies and restores identical.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tests::guest::{guest_backup, read_guest_file, run_qemu};
use tests::{json, livemount, run, Daemon};

#[test]
fn a_debian_vm_boots_from_a_live_mount_over_ipxe_and_iscsi() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, guest, packages) = guest_backup(dir);

    // QEMU's user-mode network reaches the host's 127.0.0.1 as 10.0.2.2.
    let packages_arg = packages.display().to_string();
    let daemon = Daemon::start_with(dir, &lib, &["--advertise", "10.0.2.2", "--guest-packages", &packages_arg]);
    let mac = "52:54:00:4c:4d:01";
    let out = daemon.cli().args(["mount", &backup, "--boot", "--mac", mac, "--json"]).output().unwrap();
    assert!(out.status.success(), "mount --boot: {}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let m = json(&out.stdout);
    let boot = &m["boot"];
    assert!(boot["changes"].to_string().contains("installed open-iscsi"), "{boot}");
    let script_url = boot["script_url"].as_str().unwrap();
    let entry_url = boot["entry_url"].as_str().unwrap();
    let fuse_file = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let mount_id = m["id"].as_str().unwrap().to_string();

    // The scripts as iPXE will fetch them (the host sees the HTTP server on 127.0.0.1).
    let local = |url: &str| url.replace("10.0.2.2", "127.0.0.1");
    let script = run(Command::new("curl").args(["-sf", &local(script_url)]));
    assert!(script.contains("sanboot") && script.contains(m["iqn"].as_str().unwrap()), "{script}");
    let entry = run(Command::new("curl").args(["-sf", &format!("{}?mac={mac}", local(entry_url))]));
    assert!(entry.contains(&format!("chain {script_url}")), "{entry}");

    // The boot disk a machine image would carry, with the entry script inside.
    let base = entry_url.trim_end_matches("/ipxe/entry.ipxe");
    let boot_disk = dir.join("ipxe-boot.img");
    livemount(&lib).args(["image", "ipxe-disk", "--appliance-url", base]).arg(&boot_disk).assert().success();

    let boot_drive = format!("file={},format=raw,if=ide", boot_disk.display());
    let nic = format!("virtio-net-pci,netdev=n0,mac={mac}");
    let args: Vec<String> =
        ["-drive", &boot_drive, "-netdev", "user,id=n0", "-device", &nic, "-boot", "c"].map(String::from).to_vec();
    let boot = run_qemu(&args, Duration::from_secs(900));
    let booted = boot.elapsed;
    let console = &boot.console;
    let marker = boot.marker().unwrap_or_else(|| {
        panic!("no boot marker on the console after {booted:?}:\n{}\n{}", boot.tail(3000), daemon.log())
    });
    assert!(marker.contains("tran=iscsi"), "the root file system is on the iSCSI disk: {marker}");
    assert!(console.contains("iscsistart"), "the initramfs logged in from the iBFT");
    eprintln!("booted to the marker in {booted:?}: {marker}");

    // The marker file the guest wrote is in the mount's private store, readable through the FUSE file.
    let file = read_guest_file(&fuse_file, "/var/lib/livemount-marker");
    assert!(file.contains("booted") && file.contains("iscsi"), "marker file: {file:?}");
    // ... and not in the backup.
    let pristine = read_guest_file(&guest, "/var/lib/livemount-marker");
    assert!(!pristine.contains("tran=iscsi"), "the backup's image was not written: {pristine:?}");

    daemon.cli().args(["unmount", &mount_id]).assert().success();
    livemount(&lib).args(["backup", "verify", &backup]).assert().success();
    let restored = dir.join("restored.img");
    livemount(&lib).args(["backup", "restore", &backup]).arg(&restored).assert().success();
    let same = Command::new("cmp").arg(&restored).arg(&guest).status().unwrap().success();
    assert!(same, "the backup restores identical to the original guest image");
}
