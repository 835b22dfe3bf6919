//! Streaming backups of EC2 instances of a member account against the local AWS stand-in: the member's
//! instance is made as a user has one (its disks uploaded through EBS direct, registered, launched, a
//! second volume attached; `awsq launch`, boto3), the access node is an instance of the service account,
//! and the appliance finds the attached volumes in the stand-in's device folder as it finds them under
//! `/dev/disk/by-id` on Nitro. Checked: the backup restores bit-identical to the instance's volumes, a
//! second backup stores only what changed, faults and a `kill -9` at every AWS call leave nothing in either
//! account, and the flow against stock moto fails cleanly where moto stops.

use std::path::Path;

use serde_json::{json, Value};
use tests::aws::{Standin, MEMBER, SERVICE};
use tests::fleet::{
    backup_daemon, everything, fails, job_resources, killed_after, launch_fleet, ok, restores_as_the_volumes,
    until_nothing_left, Fleet,
};
use tests::{json, livemount, random_bytes, Daemon};

fn backup_args(fleet: &Fleet) -> Vec<&str> {
    vec!["cloud", "backup", &fleet.instance, "--account", "member", "--access-node", &fleet.access_node]
}

/// Runs `cloud backup --json`; gives the finished job.
fn back_up(d: &Daemon, fleet: &Fleet) -> Value {
    let out = d.cli().args(backup_args(fleet)).arg("--json").output().unwrap();
    assert!(out.status.success(), "cloud backup failed: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let job = json(&out.stdout);
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

#[test]
fn a_streaming_backup_restores_as_the_instance_had_it_stores_only_changes_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (d, lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);
    let calls = |action: &str, account: &str| standin.calls(action, account);
    let (images0, volumes0) = (calls("CreateImage", MEMBER), calls("CreateVolume", MEMBER));

    let job = back_up(&d, &fleet);
    let first = &job["result"];
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["name"], "web01", "named after the instance's Name tag: {first}");
    let origin = &first["origin"];
    assert_eq!(origin["instance_id"], fleet.instance.as_str(), "{origin}");
    assert_eq!(origin["account"], "member");
    assert_eq!(origin["instance_type"], "m5.large");
    assert_eq!(origin["boot_mode"], "uefi");
    assert_eq!(origin["ena_support"], true);
    assert_eq!(origin["root_device_name"], "/dev/xvda");
    assert_eq!(origin["tags"]["Name"], "web01");
    assert!(origin["subnet_id"].as_str().is_some_and(|s| s.starts_with("subnet-")), "{origin}");
    let devices: Vec<&str> =
        origin["block_devices"].as_array().unwrap().iter().map(|b| b["device_name"].as_str().unwrap()).collect();
    assert_eq!(devices, ["/dev/xvda", "/dev/sdb"], "the root first: a restore boots disk 0");
    assert_eq!(origin["block_devices"][0]["volume_id"], fleet.volumes[0].1.as_str());
    restores_as_the_volumes(&lib, &id, &dir.join("aws"), &fleet, dir);

    assert_eq!(everything(&standin), before, "the job took away or left behind nothing, in either account");
    assert_eq!(job_resources(&standin), Vec::<Value>::new());
    assert_eq!(calls("CreateImage", MEMBER) - images0, 1);
    assert_eq!(calls("CreateVolume", SERVICE), 2, "one volume per disk, in the service account");
    assert_eq!(calls("CreateVolume", MEMBER) - volumes0, 0, "nothing is read in the member account");
    let jobs = ok(&d, &["cloud", "jobs"]);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");

    // The instance writes two chunks' worth; the next backup stores those alone.
    let root_volume = dir.join("aws").join("volumes").join(format!("{}.img", fleet.volumes[0].1));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&root_volume).unwrap();
        f.write_all_at(&random_bytes(99, 128 << 10), 40 << 20).unwrap();
    }
    let second = back_up(&d, &fleet)["result"].clone();
    assert_eq!(second["stats"]["chunks_new"], 2, "only the changed chunks are stored: {second}");
    assert_eq!(second["stats"]["new_bytes_plain"], 128 << 10);
    restores_as_the_volumes(&lib, second["id"].as_str().unwrap(), &dir.join("aws"), &fleet, dir);
    assert_eq!(everything(&standin), before);

    // Text output: what was made and that nothing was left.
    let out = d.cli().args(backup_args(&fleet)).arg("--no-reboot").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("nothing left in either account"), "{text}");
    let shown = livemount(&lib).args(["backup", "show", &id]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("EC2 instance {} of account member", fleet.instance)), "{shown}");
}

#[test]
fn streaming_backup_errors_say_what_to_do_and_make_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (d, _lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);

    let e = fails(&d, &["cloud", "backup", "i-0123456789abcdef0", "--account", "member", "--access-node", "x"]);
    assert!(e.contains("no instance i-0123456789abcdef0 in account member"), "{e}");
    let e = fails(&d, &["cloud", "backup", &fleet.instance, "--account", "nobody"]);
    assert!(e.contains("no cloud account nobody") && e.contains("cloud account add"), "{e}");
    // Not an EC2 instance and no access node named: the instance metadata cannot say which it is.
    let e = fails(&d, &["cloud", "backup", &fleet.instance, "--account", "member"]);
    assert!(e.contains("--access-node"), "{e}");
    let e =
        fails(&d, &["cloud", "backup", &fleet.instance, "--account", "member", "--access-node", "i-00000000000000000"]);
    assert!(e.contains("access node i-00000000000000000"), "{e}");
    assert_eq!(standin.calls("CreateImage", MEMBER), 0, "nothing was made");
    assert_eq!(everything(&standin), before);

    // A call that AWS carried out but whose answer was lost: the job sees an error, and what the call made
    // is found by the job's tag and removed all the same.
    for (action, account) in [("CreateImage", MEMBER), ("CreateVolume", SERVICE), ("AttachVolume", SERVICE)] {
        standin.fault(json!({"action": action, "account": account, "after": true, "times": null, "code": "UnauthorizedOperation", "status": 403}));
        let e = fails(&d, &backup_args(&fleet));
        assert!(e.contains(action) && !e.contains("cloud cleanup"), "{action}'s answer lost: {e}");
        standin.clear_faults();
        assert_eq!(job_resources(&standin), Vec::<Value>::new(), "{action}'s answer lost: nothing of the job is left");
        assert_eq!(everything(&standin), before, "{action}'s answer lost");
    }
}

/// An AWS call of a streaming backup, in the account it is made in; `undo`: made while removing too (when
/// it fails for good, removing fails and says so); `after_backup`: made only after the backup is stored.
struct Step {
    action: &'static str,
    account: &'static str,
    undo: bool,
    after_backup: bool,
}

const STEPS: &[Step] = &[
    Step { action: "CreateImage", account: MEMBER, undo: false, after_backup: false },
    Step { action: "DescribeImages", account: MEMBER, undo: true, after_backup: false },
    Step { action: "CreateTags", account: MEMBER, undo: false, after_backup: false },
    Step { action: "ModifyImageAttribute", account: MEMBER, undo: false, after_backup: false },
    Step { action: "ModifySnapshotAttribute", account: MEMBER, undo: false, after_backup: false },
    Step { action: "CreateVolume", account: SERVICE, undo: false, after_backup: false },
    Step { action: "AttachVolume", account: SERVICE, undo: false, after_backup: false },
    Step { action: "DetachVolume", account: SERVICE, undo: true, after_backup: true },
    Step { action: "DeleteVolume", account: SERVICE, undo: true, after_backup: true },
    Step { action: "DeregisterImage", account: MEMBER, undo: true, after_backup: true },
    Step { action: "DeleteSnapshot", account: MEMBER, undo: true, after_backup: true },
];

#[test]
fn every_aws_call_of_a_streaming_backup_survives_faults_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (mut d, lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);
    let backups = |lib: &Path| {
        let out = livemount(lib).args(["backup", "list", "--json"]).output().unwrap();
        json(&out.stdout).as_array().unwrap().len()
    };
    let mut made = 0;
    let nothing_left = |d: &Daemon, what: &str| {
        until_nothing_left(&standin, d, what);
        assert_eq!(everything(&standin), before, "{what}: both accounts are as they were");
        let inv = ok(d, &["cloud", "resources"]);
        let of_jobs: Vec<&Value> =
            inv["resources"].as_array().unwrap().iter().filter(|r| r["purpose"]["for"] == "job").collect();
        assert!(of_jobs.is_empty(), "{what}: the journal holds nothing of jobs: {inv}");
    };

    for step in STEPS {
        let what = format!("{} fails once", step.action);
        standin.fault(json!({"action": step.action, "account": step.account, "nth": 1, "times": 1, "code": "InternalError", "status": 500}));
        back_up(&d, &fleet);
        made += 1;
        let faults = standin.control("GET", "/standin/faults", None).to_string();
        assert!(faults.contains("\"fired\":1"), "{what}: the fault fired: {faults}");
        standin.clear_faults();
        nothing_left(&d, &what);

        let what = format!("{} fails for good", step.action);
        standin.fault(json!({"action": step.action, "account": step.account, "code": "UnauthorizedOperation", "status": 403, "times": null}));
        let e = fails(&d, &backup_args(&fleet));
        assert!(e.contains(step.action) && e.contains("UnauthorizedOperation"), "{what}: {e}");
        if step.undo {
            assert!(e.contains("cloud cleanup"), "{what}: says how to finish removing: {e}");
        }
        if step.after_backup {
            made += 1; // the backup itself was made before removing failed
        }
        standin.clear_faults();
        if step.undo {
            ok(&d, &["cloud", "cleanup"]);
        }
        nothing_left(&d, &what);
        assert_eq!(backups(&lib), made, "{what}: no backup is half there");

        let what = format!("kill -9 after {}", step.action);
        killed_after(&mut d, &standin, step.action, &backup_args(&fleet));
        // The restarted daemon removes what the dead job made, without being asked.
        nothing_left(&d, &what);
        livemount(&lib).args(["backup", "verify"]).assert().success();
        let job = back_up(&d, &fleet);
        made = backups(&lib);
        restores_as_the_volumes(&lib, job["result"]["id"].as_str().unwrap(), &dir.join("aws"), &fleet, dir);
        nothing_left(&d, &what);
    }
}

#[test]
fn against_stock_moto_a_streaming_backup_fails_where_moto_stops_and_leaves_nothing() {
    // moto 5.2.1 keeps each account's snapshots to itself (a snapshot shared by createVolumePermission
    // cannot be made a volume in the account it is shared with) and has no device files: the job gets as
    // far as CreateVolume in the service account, says so, and removes the image and its snapshots.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), true);
    let member = standin.awsq(&["launch", MEMBER, "--name", "web01"]);
    let node = standin.awsq(&["launch", SERVICE]);
    let (d, _lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);
    let args = [
        "cloud",
        "backup",
        member["instance"].as_str().unwrap(),
        "--account",
        "member",
        "--access-node",
        node["instance"].as_str().unwrap(),
    ];
    let e = fails(&d, &args);
    assert!(e.contains("CreateVolume") && e.contains("InvalidSnapshot.NotFound"), "{e}");
    assert_eq!(standin.calls("CreateImage", MEMBER), 1);
    assert_eq!(standin.calls("DeregisterImage", MEMBER), 1, "the image was removed");
    assert_eq!(everything(&standin), before, "nothing left in either account");
}

#[test]
fn a_streaming_backup_into_a_full_library_says_so_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    // A library on a file system far smaller than the instance's data.
    let small = dir.join("small");
    std::fs::create_dir(&small).unwrap();
    tests::run(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&small));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let lib = small.join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    let devices = dir.join("aws").join("devices");
    let d = Daemon::start_env(dir, &lib, &["--ebs-devices", devices.to_str().unwrap()], &standin.env());
    d.cli().args(["cloud", "account", "add", "member", "--role-arn", tests::aws::MEMBER_ROLE]).assert().success();
    let before = everything(&standin);

    let e = fails(&d, &backup_args(&fleet));
    assert!(e.contains("is full") && e.contains("free space"), "says the library is full and what to do: {e}");
    assert!(!e.contains("cloud cleanup"), "the undo finished: {e}");
    until_nothing_left(&standin, &d, "a full library");
    assert_eq!(everything(&standin), before, "both accounts are as they were");
    let out = livemount(&lib).args(["backup", "list", "--json"]).output().unwrap();
    assert_eq!(json(&out.stdout), json!([]), "no half backup is listed");
}
