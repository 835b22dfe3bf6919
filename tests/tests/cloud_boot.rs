//! A VM in the cloud boots from a live mount, end to end: the appliance publishes its iPXE machine image
//! to the AWS stand-in and launches an instance in the member account; QEMU then plays that instance. Its
//! disk is the image's root snapshot as EBS direct gives it back (read with boto3, not by us), its
//! instance metadata service is `tests/aws/imds` answering from what RunInstances recorded, and its
//! network is a QEMU user network laid out like EC2's link-local range (the appliance at 169.254.169.2,
//! metadata at 169.254.169.254). iPXE on that disk gets DHCP, fetches the user-data, chains to the
//! mount's script, logs in with the mount's CHAP secret and sanboots; the Debian guest runs with its root
//! on the iSCSI disk. Afterwards the instance is terminated, nothing stays in either account, and the
//! backup verifies and restores identical.

use std::time::Duration;

use serde_json::Value;
use tests::aws::{aws_dir, Standin, MEMBER, MEMBER_ROLE, SERVICE};
use tests::guest::{guest_backup, read_guest_file, run_qemu};
use tests::{json, verify_and_restore_identical, Daemon};

/// The address the instance reaches the appliance at: QEMU's host address on the guest's network.
const APPLIANCE_ADDR: &str = "169.254.169.2";

fn ok(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli().args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "livemount {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    json(&out.stdout)
}

#[test]
fn an_instance_launched_in_the_member_account_boots_the_live_mounted_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, guest, packages) = guest_backup(dir);

    let standin = Standin::start(&dir.join("aws"), false);
    let packages_arg = packages.display().to_string();
    let d = Daemon::start_env(
        dir,
        &lib,
        &["--advertise", APPLIANCE_ADDR, "--guest-packages", &packages_arg],
        &standin.env(),
    );
    d.cli().args(["cloud", "account", "add", "member", "--role-arn", MEMBER_ROLE]).assert().success();
    let image = ok(&d, &["cloud", "image", "ipxe", "--share-with", "member"]);
    let m = ok(&d, &["mount", &backup, "--boot", "--cloud", "member"]);
    let mount_id = m["id"].as_str().unwrap().to_string();
    let instance_id = m["cloud"]["instance_id"].as_str().expect("the mount shows its VM").to_string();
    let inst = standin.awsq(&["instance", MEMBER, &instance_id]);
    assert_eq!(inst["image"], image["image_id"], "launched from the shared iPXE image");

    // The instance's disk: the image's snapshot, as EBS direct gives it back.
    let root = dir.join("instance-root.img");
    let snapshot = image["snapshot_id"].as_str().unwrap();
    standin.awsq(&["read-snapshot", SERVICE, snapshot, root.to_str().unwrap()]);

    let imds_log = dir.join("imds.jsonl");
    let imds = format!(
        "{} --endpoint {} --account {MEMBER} --instance {instance_id} --log {}",
        aws_dir().join("imds").display(),
        standin.url,
        imds_log.display()
    );
    let drive = format!("file={},format=raw,if=ide", root.display());
    let netdev =
        format!("user,id=n0,net=169.254.169.0/24,host={APPLIANCE_ADDR},guestfwd=tcp:169.254.169.254:80-cmd:{imds}");
    let args: Vec<String> = ["-drive", &drive, "-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0", "-boot", "c"]
        .map(String::from)
        .to_vec();
    let boot = run_qemu(&args, Duration::from_secs(900));
    let imds_requests = std::fs::read_to_string(&imds_log).unwrap_or_default();
    let marker = boot.marker().unwrap_or_else(|| {
        panic!("no boot marker after {:?}:\n{}\nIMDS:\n{imds_requests}\n{}", boot.elapsed, boot.tail(3000), d.log())
    });
    assert!(marker.contains("tran=iscsi"), "the root file system is on the iSCSI disk: {marker}");
    assert!(boot.console.contains("livemount: iPXE on EC2"), "the image's own script ran");
    eprintln!("the instance booted to the marker in {:?}: {marker}", boot.elapsed);

    // The instance read its user-data from instance metadata; after its script was fetched, the
    // appliance required IMDSv2 tokens.
    assert!(imds_requests.contains(r#""path": "/latest/user-data", "status": 200"#), "{imds_requests}");
    let inst = standin.awsq(&["instance", MEMBER, &instance_id]);
    assert_eq!(inst["metadata_options"]["HttpTokens"], "required", "IMDSv1 is off once the script was fetched");

    // What the guest wrote is in the mount's private store, not in the backup.
    let fuse_file = std::path::PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let file = read_guest_file(&fuse_file, "/var/lib/livemount-marker");
    assert!(file.contains("booted") && file.contains("iscsi"), "marker file: {file:?}");

    ok(&d, &["unmount", &mount_id]);
    assert_eq!(standin.awsq(&["instance", MEMBER, &instance_id])["state"], "terminated");
    ok(&d, &["cloud", "cleanup", "--images"]);
    assert_eq!(standin.resources(SERVICE, Some("livemount:appliance")), Vec::<Value>::new());
    assert_eq!(standin.resources(MEMBER, Some("livemount:appliance")), Vec::<Value>::new());
    verify_and_restore_identical(&lib, &backup, &guest, dir);
}
