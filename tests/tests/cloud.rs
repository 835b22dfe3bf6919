//! Cloud live mounts against the local AWS stand-in (`tests/aws/standin`: moto extended as AWS documents
//! it), checked through an independent client (`tests/aws/awsq`, boto3): accounts reached by AssumeRole,
//! the iPXE image published once, a VM launched in the member account that alone may log in to its
//! mount, faults at every AWS call the mount and unmount make (retried, failing for good, and a `kill -9`
//! right after the call), and the same flow against stock moto. The boot itself (iPXE on the image's
//! disk, through instance metadata, to the live-mounted guest) is `cloud_boot.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::aws::{Standin, MEMBER, MEMBER_ROLE, SERVICE};
use tests::{json, livemount, make_ext4_disk, populate_tree, verify_and_restore_identical, Daemon};

/// A library with one small backup of an ext4 disk; gives (library, backup id, the disk).
fn small_backup(dir: &Path) -> (PathBuf, String, PathBuf) {
    let lib = dir.join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    let tree = dir.join("tree");
    populate_tree(&tree, 7, 2);
    let disk = make_ext4_disk(dir, "disk0.img", &tree, 48);
    let out = livemount(&lib).args(["backup", "create", "--json", "--name", "web01"]).arg(&disk).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (lib, json(&out.stdout)["id"].as_str().unwrap().to_string(), disk)
}

/// A daemon aimed at the stand-in, with the member account added and the iPXE image published.
fn cloud_daemon(dir: &Path, lib: &Path, standin: &Standin) -> Daemon {
    let d = Daemon::start_env(dir, lib, &["--advertise", "127.0.0.1"], &standin.env());
    d.cli().args(["cloud", "account", "add", "member", "--role-arn", MEMBER_ROLE]).assert().success();
    d
}

/// Runs the CLI; gives its JSON on success, or panics with stderr and the daemon's log.
fn ok(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli().args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "livemount {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    json(&out.stdout)
}

/// Runs the CLI expecting failure; gives stderr.
fn fails(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli().args(args).output().unwrap();
    assert!(!out.status.success(), "livemount {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn cloud_mount(d: &Daemon, backup: &str) -> Value {
    ok(d, &["mount", backup, "--boot", "--skip-prepare", "--cloud", "member"])
}

/// The instances of the member account that are not terminated, and every other resource there and in
/// the service account carrying this appliance's tag, except its iPXE image and snapshot.
fn mount_resources(standin: &Standin) -> Vec<Value> {
    let mut all = standin.resources(MEMBER, None);
    all.extend(
        standin
            .resources(SERVICE, Some("livemount:appliance"))
            .into_iter()
            .filter(|r| r["tags"].get("livemount:ipxe-content").is_none()),
    );
    all.retain(|r| r["kind"] != "image" && r["kind"] != "snapshot" || r["tags"].get("livemount:mount").is_some());
    all
}

fn no_mounts(d: &Daemon) -> bool {
    ok(d, &["mounts"]).as_array().is_some_and(|a| a.is_empty())
}

#[test]
fn a_cloud_mount_launches_one_vm_that_alone_may_log_in_and_unmount_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, disk) = small_backup(dir);
    let standin = Standin::start(&dir.join("aws"), false);
    let d = cloud_daemon(dir, &lib, &standin);

    let check = ok(&d, &["cloud", "account", "check", "member"]);
    assert_eq!(check["account_id"], MEMBER, "{check}");
    assert!(check["arn"].as_str().unwrap().contains("livemount-access"), "{check}");

    // Published once: the second run finds the image by its content and uploads nothing.
    let first = ok(&d, &["cloud", "image", "ipxe", "--share-with", "member"]);
    let puts = standin.calls("PutSnapshotBlock", SERVICE);
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 0 && puts > 0, "{first}");
    let second = ok(&d, &["cloud", "image", "ipxe", "--share-with", "member"]);
    assert_eq!(second["image_id"], first["image_id"], "one image: {first} {second}");
    assert_eq!(second["bytes_uploaded"], 0);
    assert_eq!(standin.calls("PutSnapshotBlock", SERVICE), puts, "nothing uploaded the second time");
    assert_eq!(second["shared_with"], json!([MEMBER]));
    let image_id = first["image_id"].as_str().unwrap().to_string();

    let m = cloud_mount(&d, &backup);
    let mount_id = m["id"].as_str().unwrap().to_string();
    let instance_id = m["cloud"]["instance_id"].as_str().expect("the mount shows its VM").to_string();
    assert_eq!(m["cloud"]["state"], "running", "{m}");
    assert!(m["cloud"]["console"].as_str().unwrap().contains(&instance_id));

    // The VM as AWS recorded it: in the member account, from the shared image, tagged, idempotent, and
    // told by its user-data where its mount's script is.
    let inst = standin.awsq(&["instance", MEMBER, &instance_id]);
    assert_eq!(inst["image"], image_id.as_str());
    assert_eq!(inst["tags"]["livemount:mount"], mount_id.as_str());
    assert!(inst["tags"]["livemount:appliance"].is_string());
    assert_eq!(inst["client_token"], format!("livemount-{mount_id}-instance"));
    let script_url = m["boot"]["script_url"].as_str().unwrap();
    let user_data = inst["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#!ipxe") && user_data.contains(&format!("chain {script_url}")), "{user_data}");
    assert_eq!(inst["metadata_options"]["HttpTokens"], "optional", "IMDSv1 until the script is fetched");

    // Its script carries the per-mount CHAP secret; fetching it turns IMDSv1 off on the VM.
    let script = tests::run(Command::new("curl").args(["-sf", script_url]));
    assert!(script.contains("sanboot") && script.contains("set username livemount"), "{script}");
    let secret = script.lines().find_map(|l| l.strip_prefix("set password ")).expect("a CHAP secret").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while standin.awsq(&["instance", MEMBER, &instance_id])["metadata_options"]["HttpTokens"] != "required" {
        assert!(Instant::now() < deadline, "IMDSv1 was not turned off: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Only that VM may log in: its initiator name and its secret.
    let iqn = m["iqn"].as_str().unwrap();
    let portal = m["disks"][0]["iscsi_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("iscsi://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let initiator = m["boot"]["initiator_iqn"].as_str().unwrap();
    let inq = |url: String, initiator: &str| {
        Command::new("iscsi-inq")
            .arg(format!("--initiator-name={initiator}"))
            .arg(url)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(inq(format!("iscsi://livemount%{secret}@{portal}/{iqn}/0"), initiator), "the VM's own login works");
    assert!(!inq(format!("iscsi://{portal}/{iqn}/0"), initiator), "no CHAP: refused");
    assert!(!inq(format!("iscsi://livemount%wrongwrongwrong@{portal}/{iqn}/0"), initiator), "wrong secret: refused");
    assert!(
        !inq(format!("iscsi://livemount%{secret}@{portal}/{iqn}/0"), "iqn.2026-11.io.example:other"),
        "another initiator: refused"
    );

    let listed = ok(&d, &["mounts"]);
    assert_eq!(listed[0]["cloud"]["instance_id"], instance_id.as_str(), "mounts --json shows the cloud part");

    // Unmount: the VM is terminated first, and nothing of the mount stays in either account.
    ok(&d, &["unmount", &mount_id]);
    assert_eq!(standin.awsq(&["instance", MEMBER, &instance_id])["state"], "terminated");
    assert_eq!(mount_resources(&standin), Vec::<Value>::new());
    let inv = ok(&d, &["cloud", "resources"]);
    let left = inv["resources"].as_array().unwrap();
    assert!(
        !left.is_empty() && left.iter().all(|r| r["in_use"] == true && r["purpose"]["for"] == "ipxe_image"),
        "{inv}"
    );

    // The iPXE image goes only when asked for; then the appliance holds nothing in AWS.
    ok(&d, &["cloud", "cleanup", "--images"]);
    assert_eq!(standin.resources(SERVICE, Some("livemount:appliance")), Vec::<Value>::new());
    assert_eq!(standin.resources(MEMBER, Some("livemount:appliance")), Vec::<Value>::new());
    assert!(ok(&d, &["cloud", "resources"])["resources"].as_array().unwrap().is_empty());

    // Published again after the cleanup: a new upload (not the deleted snapshot back), and gone again.
    let again = ok(&d, &["cloud", "image", "ipxe"]);
    assert!(again["bytes_uploaded"].as_u64().unwrap() > 0 && again["image_id"] != first["image_id"], "{again}");
    ok(&d, &["cloud", "cleanup", "--images"]);
    assert_eq!(standin.resources(SERVICE, Some("livemount:appliance")), Vec::<Value>::new());
    verify_and_restore_identical(&lib, &backup, &disk, dir);
}

#[test]
fn cloud_mount_errors_say_what_to_do_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, _) = small_backup(dir);
    let standin = Standin::start(&dir.join("aws"), false);
    let d = cloud_daemon(dir, &lib, &standin);
    let mount = |extra: &[&str]| {
        let mut args = vec!["mount", backup.as_str(), "--boot", "--skip-prepare"];
        args.extend_from_slice(extra);
        fails(&d, &args)
    };

    let e = mount(&["--cloud", "nobody"]);
    assert!(e.contains("no cloud account nobody") && e.contains("cloud account add"), "{e}");
    let e = mount(&["--cloud", "member"]);
    assert!(e.contains("no iPXE image in us-east-1") && e.contains("cloud image ipxe --region us-east-1"), "{e}");
    ok(&d, &["cloud", "image", "ipxe"]);
    let e = mount(&["--cloud", "member", "--region", "eu-west-1"]);
    assert!(e.contains("no iPXE image in eu-west-1"), "{e}");
    let e = mount(&["--cloud", "member", "--subnet", "subnet-0123456789abcdef0"]);
    assert!(e.contains("no subnet subnet-0123456789abcdef0 in account member"), "{e}");

    // A role that cannot be assumed: the ARN and what its trust policy needs.
    let role = "arn:aws:iam::222222222222:role/not-trusted";
    d.cli().args(["cloud", "account", "add", "other", "--role-arn", role, "--external-id", "x1"]).assert().success();
    standin.fault(json!({"action": "AssumeRole", "code": "AccessDenied", "status": 403, "times": null}));
    let e = fails(&d, &["cloud", "account", "check", "other"]);
    assert!(e.contains(role) && e.contains("trust policy") && e.contains("ExternalId"), "{e}");
    let e = mount(&["--cloud", "other"]);
    assert!(e.contains(role) && e.contains("trust policy"), "{e}");
    standin.clear_faults();

    // Bad requests are refused before anything is made.
    let e = fails(&d, &["cloud", "account", "add", "bad", "--role-arn", "arn:aws:s3:::bucket"]);
    assert!(e.contains("not a role ARN"), "{e}");
    let e = fails(&d, &["mount", &backup, "--cloud", "member"]);
    assert!(e.contains("--boot"), "{e}");

    assert!(no_mounts(&d));
    assert_eq!(mount_resources(&standin), Vec::<Value>::new());
    assert_eq!(standin.calls("RunInstances", MEMBER), 0, "no launch was tried");
}

/// Where a fault is injected: an AWS action, in the mount's or the unmount's path.
struct Step {
    action: &'static str,
    account: &'static str,
    in_unmount: bool,
}

const STEPS: &[Step] = &[
    Step { action: "DescribeImages", account: SERVICE, in_unmount: false },
    Step { action: "RunInstances", account: MEMBER, in_unmount: false },
    Step { action: "DescribeInstances", account: MEMBER, in_unmount: false },
    Step { action: "TerminateInstances", account: MEMBER, in_unmount: true },
    Step { action: "DescribeVolumes", account: MEMBER, in_unmount: true },
];

#[test]
fn every_aws_call_of_mount_and_unmount_survives_faults_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, disk) = small_backup(dir);
    let standin = Standin::start(&dir.join("aws"), false);
    let mut d = cloud_daemon(dir, &lib, &standin);
    ok(&d, &["cloud", "image", "ipxe", "--share-with", "member"]);
    let nothing_left = |d: &Daemon, what: &str| {
        assert!(no_mounts(d), "{what}: no mount is half there");
        assert_eq!(mount_resources(&standin), Vec::<Value>::new(), "{what}: nothing left in AWS");
        let inv = ok(d, &["cloud", "resources"]);
        let of_mounts: Vec<&Value> =
            inv["resources"].as_array().unwrap().iter().filter(|r| r["purpose"]["for"] == "mount").collect();
        assert!(of_mounts.is_empty(), "{what}: the journal holds nothing of mounts: {inv}");
    };

    for step in STEPS {
        let what = format!("{} fails once", step.action);
        let rule = json!({"action": step.action, "account": step.account, "nth": 1, "times": 1, "code": "InternalError", "status": 500});
        if step.in_unmount {
            let m = cloud_mount(&d, &backup);
            standin.fault(rule);
            ok(&d, &["unmount", m["id"].as_str().unwrap()]);
        } else {
            standin.fault(rule);
            let m = cloud_mount(&d, &backup);
            ok(&d, &["unmount", m["id"].as_str().unwrap()]);
        }
        assert!(
            standin.control("GET", "/standin/faults", None).to_string().contains("\"fired\":1"),
            "{what}: the fault fired"
        );
        standin.clear_faults();
        nothing_left(&d, &what);

        let what = format!("{} fails for good", step.action);
        let rule = json!({"action": step.action, "account": step.account, "code": "UnauthorizedOperation", "status": 403, "times": null});
        if step.in_unmount {
            let m = cloud_mount(&d, &backup);
            let id = m["id"].as_str().unwrap();
            standin.fault(rule);
            let e = fails(&d, &["unmount", id]);
            assert!(e.contains(step.action) && e.contains("UnauthorizedOperation"), "{what}: {e}");
            assert_eq!(
                ok(&d, &["mounts"]).as_array().unwrap().len(),
                1,
                "{what}: the mount stays until its VM is gone"
            );
            standin.clear_faults();
            ok(&d, &["unmount", id]);
        } else {
            standin.fault(rule);
            let e = fails(&d, &["mount", &backup, "--boot", "--skip-prepare", "--cloud", "member"]);
            assert!(e.contains(step.action) && e.contains("UnauthorizedOperation"), "{what}: {e}");
            standin.clear_faults();
            // The rollback could not reach AWS when the failing call is one it needs too: cleanup can.
            ok(&d, &["cloud", "cleanup"]);
        }
        nothing_left(&d, &what);

        let what = format!("kill -9 after {}", step.action);
        let kill = vec![("LIVEMOUNT_TEST_KILL_AFTER".to_string(), step.action.to_string())];
        let base = standin.env();
        let mount_id = if step.in_unmount {
            let id = cloud_mount(&d, &backup)["id"].as_str().unwrap().to_string();
            d.env = [base.clone(), kill].concat();
            d.restart();
            let _ = fails(&d, &["unmount", &id]);
            Some(id)
        } else {
            d.env = [base.clone(), kill].concat();
            d.restart();
            let _ = fails(&d, &["mount", &backup, "--boot", "--skip-prepare", "--cloud", "member"]);
            None
        };
        d.env = base;
        d.restart();
        if let Some(id) = mount_id {
            // An unmount cut off: the mount is still there, and unmounting again finishes the job.
            ok(&d, &["unmount", &id]);
        }
        ok(&d, &["cloud", "cleanup"]);
        nothing_left(&d, &what);
    }
    verify_and_restore_identical(&lib, &backup, &disk, dir);
}

#[test]
fn the_cloud_flow_runs_against_stock_moto() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, _) = small_backup(dir);
    let standin = Standin::start(&dir.join("aws"), true);
    let d = cloud_daemon(dir, &lib, &standin);
    assert_eq!(ok(&d, &["cloud", "account", "check", "member"])["account_id"], MEMBER);
    let image = ok(&d, &["cloud", "image", "ipxe", "--share-with", "member"]);
    let m = cloud_mount(&d, &backup);
    let instance_id = m["cloud"]["instance_id"].as_str().unwrap().to_string();
    let inst = standin.awsq(&["instance", MEMBER, &instance_id]);
    assert_eq!(inst["image"], image["image_id"]);
    assert_eq!(inst["tags"]["livemount:mount"], m["id"]);
    ok(&d, &["unmount", m["id"].as_str().unwrap()]);
    assert_eq!(standin.awsq(&["instance", MEMBER, &instance_id])["state"], "terminated");
    ok(&d, &["cloud", "cleanup", "--images"]);
    assert_eq!(standin.resources(SERVICE, Some("livemount:appliance")), Vec::<Value>::new());
    assert_eq!(standin.resources(MEMBER, Some("livemount:appliance")), Vec::<Value>::new());
}

#[test]
fn the_access_node_image_is_published_once_and_removed_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lib = dir.join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    let standin = Standin::start(&dir.join("aws"), false);
    let d = cloud_daemon(dir, &lib, &standin);

    // A sparse 40 MiB disk: 3 MiB of data at its start and 1 MiB at its end, zeros between.
    let disk = dir.join("appliance.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(40 << 20).unwrap();
        f.write_all_at(&tests::random_bytes(21, 3 << 20), 0).unwrap();
        f.write_all_at(&tests::random_bytes(22, 1 << 20), 39 << 20).unwrap();
    }
    let disk_arg = disk.to_str().unwrap();
    let first = ok(&d, &["cloud", "image", "publish", disk_arg, "--share-with", "member"]);
    assert_eq!(first["bytes_uploaded"], 4 << 20, "only the blocks that hold data: {first}");
    assert_eq!(standin.calls("PutSnapshotBlock", SERVICE), 8);
    assert_eq!(first["shared_with"], json!([MEMBER]));
    let again = ok(&d, &["cloud", "image", "publish", disk_arg]);
    assert_eq!(again["image_id"], first["image_id"], "the same content finds its image: {again}");
    assert_eq!(again["bytes_uploaded"], 0);
    assert_eq!(standin.calls("PutSnapshotBlock", SERVICE), 8, "nothing uploaded the second time");

    // The snapshot holds the disk, as EBS direct gives it back to another client.
    let back = dir.join("back.img");
    standin.awsq(&["read-snapshot", SERVICE, first["snapshot_id"].as_str().unwrap(), back.to_str().unwrap()]);
    let (want, got) = (std::fs::read(&disk).unwrap(), std::fs::read(&back).unwrap());
    assert!(got.len() >= want.len() && got[..want.len()] == want[..], "the snapshot reads back as the disk");
    assert!(got[want.len()..].iter().all(|&b| b == 0));

    // Tagged as this appliance's access-node image; kept by a cleanup, removed when images are asked for.
    let tagged = |standin: &Standin| standin.resources(SERVICE, Some("livemount:access-node-content"));
    let kinds: Vec<_> = tagged(&standin).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["image", "snapshot"], "{:?}", tagged(&standin));
    ok(&d, &["cloud", "cleanup"]);
    assert_eq!(tagged(&standin).len(), 2, "a plain cleanup keeps the access-node image");
    ok(&d, &["cloud", "cleanup", "--images"]);
    assert_eq!(standin.resources(SERVICE, Some("livemount:appliance")), Vec::<Value>::new());

    let e = fails(&d, &["cloud", "image", "publish", "/nonexistent/appliance.img"]);
    assert!(e.contains("not a disk image on the appliance"), "{e}");
}
