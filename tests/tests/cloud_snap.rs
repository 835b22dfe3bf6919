//! Snapshot backups (an image of the member's instance that stays in the member account, and a catalog
//! entry without data) and backup copies (the snapshots read into the library through EBS direct with
//! nothing made, or through volumes attached to the access node), against the local AWS stand-in.
//! Checked: the snapshot backup holds exactly the image and snapshots it names, kept through cleanup and
//! restarts and gone when it is forgotten; its copy, either way, has the same chunks as a streaming backup
//! of the instance and restores as its volumes; faults and a `kill -9` at every AWS call of either leave
//! nothing and no half backup; EBS direct refused falls back to volumes; against stock moto the copy
//! stops where moto does.

use std::path::Path;

use serde_json::{json, Value};
use tests::aws::{Standin, MEMBER, SERVICE};
use tests::fleet::{
    backup_daemon, everything, fails, job_resources, killed_after, launch_fleet, ok, restores_as_the_volumes,
    until_nothing_left, Fleet,
};
use tests::{json, livemount, Daemon};

fn snap(d: &Daemon, fleet: &Fleet) -> Value {
    let job = ok(d, &["cloud", "snap", &fleet.instance, "--account", "member"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    job["result"].clone()
}

/// `cloud backup-copy` of `backup`, reading `via` EBS direct, volumes or whichever works (auto).
fn copy_args<'a>(backup: &'a str, fleet: &'a Fleet, via: &'a str) -> Vec<&'a str> {
    vec!["cloud", "backup-copy", backup, "--access-node", &fleet.access_node, "--via", via]
}

fn copy(d: &Daemon, backup: &str, fleet: &Fleet, via: &str) -> Value {
    let job = ok(d, &copy_args(backup, fleet, via));
    assert_eq!(job["state"], "succeeded", "{job}");
    job["result"].clone()
}

/// The resources of either account that hold backup `id`'s data.
fn of_backup(standin: &Standin, id: &str) -> Vec<Value> {
    [MEMBER, SERVICE].iter().flat_map(|acct| standin.resources(acct, Some(&format!("livemount:backup={id}")))).collect()
}

/// Whether any of a snapshot backup's snapshots is still shared with the service account.
fn shared_with_service(standin: &Standin, snapshots: &[String]) -> bool {
    snapshots.iter().any(|s| standin.awsq(&["shared", MEMBER, s]).as_array().unwrap().iter().any(|a| a == SERVICE))
}

/// Waits (a restarted daemon takes a dead job's shares back in the background) until no snapshot is shared.
fn until_unshared(standin: &Standin, snapshots: &[String], what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while shared_with_service(standin, snapshots) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the snapshots are still shared with the service account"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The snapshot of each disk, as a snapshot backup's origin names them.
fn snapshot_ids(origin: &Value) -> Vec<String> {
    origin["block_devices"].as_array().unwrap().iter().map(|b| b["snapshot_id"].as_str().unwrap().to_string()).collect()
}

fn manifests(lib: &Path) -> Vec<Value> {
    let out = livemount(lib).args(["backup", "list", "--json"]).output().unwrap();
    json(&out.stdout).as_array().unwrap().clone()
}

fn manifest(lib: &Path, id: &str) -> Value {
    manifests(lib).into_iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("no backup {id}"))
}

#[test]
fn a_snapshot_backup_stays_in_the_member_account_and_its_copy_is_the_streaming_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (mut d, lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);
    let streaming =
        ok(&d, &["cloud", "backup", &fleet.instance, "--account", "member", "--access-node", &fleet.access_node]);
    let streaming = streaming["result"]["id"].as_str().unwrap().to_string();
    let volumes_before = standin.calls("CreateVolume", SERVICE);

    let snapped = snap(&d, &fleet);
    let id = snapped["id"].as_str().unwrap().to_string();
    let origin = &snapped["origin"];
    assert_eq!(origin["kind"], "ec2-snapshots", "{origin}");
    assert_eq!(origin["instance_id"], fleet.instance.as_str());
    let image = origin["image_id"].as_str().unwrap().to_string();
    let snapshots = snapshot_ids(origin);
    assert_eq!(snapshots.len(), 2, "one snapshot per volume: {origin}");
    assert_eq!(origin["block_devices"][0]["device_name"], "/dev/xvda", "the root first");
    assert_eq!(standin.calls("CreateVolume", SERVICE), volumes_before, "no data is copied");

    // Exactly the image and its snapshots were added, in the member account, carrying the backup's id.
    let mut held: Vec<String> =
        of_backup(&standin, &id).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    held.sort();
    let mut expected = snapshots.clone();
    expected.push(image.clone());
    expected.sort();
    assert_eq!(held, expected);
    let now = everything(&standin);
    let added: Vec<_> = now.iter().filter(|r| !before.contains(r)).collect();
    assert!(added.iter().all(|(acct, _, _)| acct == MEMBER) && added.len() == 3, "{added:?}");
    assert_eq!(job_resources(&standin), Vec::<Value>::new(), "nothing of the job itself is left");

    // The catalog knows it; what needs data says where the data is.
    assert_eq!(manifest(&lib, &id)["disks"].as_array().unwrap().len(), 0);
    let shown = livemount(&lib).args(["backup", "show", &id]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("snapshot backup of EC2 instance") && shown.contains(&snapshots[1]), "{shown}");
    let listed =
        String::from_utf8_lossy(&livemount(&lib).args(["backup", "list"]).output().unwrap().stdout).into_owned();
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.ends_with("snapshots")), "{listed}");
    let e = livemount(&lib).args(["backup", "restore", &id]).arg(dir.join("x.img")).output().unwrap();
    let e = String::from_utf8_lossy(&e.stderr);
    assert!(e.contains("snapshot backup") && e.contains("cloud backup-copy"), "{e}");
    // It mounts as it is: its disks read the member's snapshots through EBS direct, and nothing is made.
    let m = ok(&d, &["mount", &id, "--read-only"]);
    for (n, (dev, vol)) in fleet.volumes.iter().enumerate() {
        let fuse = std::path::PathBuf::from(m["disks"][n]["fuse_path"].as_str().unwrap());
        let volume = dir.join("aws").join("volumes").join(format!("{vol}.img"));
        assert!(std::fs::read(&fuse).unwrap() == std::fs::read(&volume).unwrap(), "mounted disk {n} is {dev}");
    }
    assert!(standin.calls("GetSnapshotBlock", MEMBER) > 0, "read in the member account");
    ok(&d, &["unmount", m["id"].as_str().unwrap()]);
    assert_eq!(everything(&standin), now, "the mount made nothing in AWS");
    livemount(&lib).args(["backup", "verify"]).assert().success();

    // Kept by cleanup and across a restart: the library lists the backup.
    let cleaned = ok(&d, &["cloud", "cleanup"]);
    assert_eq!(cleaned["resources"], json!([]), "{cleaned}");
    d.restart();
    ok(&d, &["cloud", "cleanup"]);
    assert_eq!(of_backup(&standin, &id).len(), 3, "the snapshot backup's data is still there");

    // The copy reads the same chunks as the streaming backup: by default through EBS direct, sharing and
    // making nothing; through volumes it removes after when asked.
    let same_chunks_as_streaming = |copied: &Value| {
        let copy_id = copied["id"].as_str().unwrap().to_string();
        assert_eq!(copied["stats"]["chunks_new"], 0, "every chunk was stored by the streaming backup: {copied}");
        assert_eq!(copied["origin"]["kind"], "ec2-instance");
        assert_eq!(copied["origin"]["copy_of"], id.as_str());
        let (c, s) = (manifest(&lib, &copy_id), manifest(&lib, &streaming));
        for n in 0..2 {
            assert_eq!(
                c["disks"][n]["index_blake3"], s["disks"][n]["index_blake3"],
                "disk {n}: the same chunks in the same places"
            );
        }
        restores_as_the_volumes(&lib, &copy_id, &dir.join("aws"), &fleet, dir);
        copy_id
    };
    let (modify0, volumes0, reads0) = (
        standin.calls("ModifySnapshotAttribute", MEMBER),
        standin.calls("CreateVolume", SERVICE),
        standin.calls("GetSnapshotBlock", MEMBER),
    );
    let copied = copy(&d, &id, &fleet, "auto");
    assert!(standin.calls("GetSnapshotBlock", MEMBER) > reads0, "read through EBS direct");
    assert_eq!(standin.calls("ModifySnapshotAttribute", MEMBER), modify0, "nothing shared");
    assert_eq!(standin.calls("CreateVolume", SERVICE), volumes0, "no volume made");
    let direct_id = same_chunks_as_streaming(&copied);
    assert_eq!(everything(&standin), now, "the copy made nothing in either account");
    ok(&d, &["backup", "forget", &direct_id]);

    let copied = copy(&d, &id, &fleet, "volumes");
    let copy_id = same_chunks_as_streaming(&copied);
    assert_eq!(standin.calls("CreateVolume", SERVICE) - volumes0, 2, "one volume per disk");
    assert_eq!(standin.calls("ModifySnapshotAttribute", MEMBER) - modify0, 4, "shared, and the share taken back");
    assert!(!shared_with_service(&standin, &snapshots), "the share was taken back");
    assert_eq!(everything(&standin), now, "the copy left nothing in either account");

    // Forgetting it removes the image and snapshots in the member account.
    let out = d.cli().args(["backup", "forget", &id]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&image));
    assert!(!manifests(&lib).iter().any(|m| m["id"] == id.as_str()));
    assert_eq!(everything(&standin), before, "both accounts are as they were");
    let e = fails(&d, &copy_args(&id, &fleet, "auto"));
    assert!(e.contains(&format!("no backup {id}")) || e.contains("not found") || e.contains(&id), "{e}");
    let e = fails(&d, &copy_args(&copy_id, &fleet, "auto"));
    assert!(e.contains("is not a snapshot backup"), "{e}");
}

/// An AWS call of a snapshot backup or a backup copy, in the account it is made in; `undo`: made while
/// removing too (when it fails for good, removing fails and says so).
struct Step {
    action: &'static str,
    account: &'static str,
    undo: bool,
}

const SNAP_STEPS: &[Step] = &[
    Step { action: "CreateImage", account: MEMBER, undo: false },
    Step { action: "DescribeImages", account: MEMBER, undo: true },
    Step { action: "CreateTags", account: MEMBER, undo: false },
];

/// The calls of a copy through volumes.
const COPY_STEPS: &[Step] = &[
    Step { action: "ModifySnapshotAttribute", account: MEMBER, undo: false },
    Step { action: "CreateVolume", account: SERVICE, undo: false },
    Step { action: "AttachVolume", account: SERVICE, undo: false },
    Step { action: "DetachVolume", account: SERVICE, undo: true },
    Step { action: "DeleteVolume", account: SERVICE, undo: true },
];

/// The calls of a copy through EBS direct (nothing to undo: it makes nothing).
const DIRECT_COPY_STEPS: &[Step] = &[
    Step { action: "ListSnapshotBlocks", account: MEMBER, undo: false },
    Step { action: "GetSnapshotBlock", account: MEMBER, undo: false },
];

fn fired_once(standin: &Standin, what: &str) {
    let faults = standin.control("GET", "/standin/faults", None).to_string();
    assert!(faults.contains("\"fired\":1"), "{what}: the fault fired: {faults}");
}

#[test]
fn every_aws_call_of_a_snapshot_backup_and_a_copy_survives_faults_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (mut d, lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);
    let fault = |step: &Step, rule: Value| {
        let mut r = json!({"action": step.action, "account": step.account});
        r.as_object_mut().unwrap().extend(rule.as_object().unwrap().clone());
        standin.fault(r);
    };

    // Snapshot backups: a failure or a kill leaves neither the image nor a catalog entry.
    for step in SNAP_STEPS {
        let what = format!("snap: {} fails once", step.action);
        fault(step, json!({"nth": 1, "times": 1, "code": "InternalError", "status": 500}));
        let id = snap(&d, &fleet)["id"].as_str().unwrap().to_string();
        fired_once(&standin, &what);
        standin.clear_faults();
        assert_eq!(of_backup(&standin, &id).len(), 3, "{what}");
        ok(&d, &["backup", "forget", &id]);
        assert_eq!(everything(&standin), before, "{what}");

        let what = format!("snap: {} fails for good", step.action);
        fault(step, json!({"code": "UnauthorizedOperation", "status": 403, "times": null}));
        let e = fails(&d, &["cloud", "snap", &fleet.instance, "--account", "member"]);
        assert!(e.contains(step.action) && e.contains("UnauthorizedOperation"), "{what}: {e}");
        standin.clear_faults();
        if step.undo {
            assert!(e.contains("cloud cleanup"), "{what}: says how to finish removing: {e}");
            ok(&d, &["cloud", "cleanup"]);
        }
        assert_eq!(everything(&standin), before, "{what}");
        assert_eq!(manifests(&lib).len(), 0, "{what}: no catalog entry");

        let what = format!("snap: kill -9 after {}", step.action);
        killed_after(&mut d, &standin, step.action, &["cloud", "snap", &fleet.instance, "--account", "member"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while everything(&standin) != before {
            assert!(std::time::Instant::now() < deadline, "{what}: left {:?}\n{}", everything(&standin), d.log());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(manifests(&lib).len(), 0, "{what}: no catalog entry");
    }

    // Backup copies of one snapshot backup: the snapshot backup is untouched whatever happens.
    let snapped = snap(&d, &fleet);
    let id = snapped["id"].as_str().unwrap().to_string();
    let snapshots = snapshot_ids(&snapped["origin"]);
    let with_snap = everything(&standin);
    let copies = |lib: &Path| manifests(lib).iter().filter(|m| m["origin"]["kind"] == "ec2-instance").count();
    let mut made = 0;
    for step in COPY_STEPS {
        let what = format!("copy: {} fails once", step.action);
        fault(step, json!({"nth": 1, "times": 1, "code": "InternalError", "status": 500}));
        copy(&d, &id, &fleet, "volumes");
        made += 1;
        fired_once(&standin, &what);
        standin.clear_faults();
        until_nothing_left(&standin, &d, &what);
        assert_eq!(everything(&standin), with_snap, "{what}");
        until_unshared(&standin, &snapshots, &what);

        let what = format!("copy: {} fails for good", step.action);
        fault(step, json!({"code": "UnauthorizedOperation", "status": 403, "times": null}));
        let e = fails(&d, &copy_args(&id, &fleet, "volumes"));
        assert!(e.contains(step.action) && e.contains("UnauthorizedOperation"), "{what}: {e}");
        standin.clear_faults();
        if step.undo {
            assert!(e.contains("cloud cleanup"), "{what}: {e}");
            made += 1; // the copy was stored before removing failed
            ok(&d, &["cloud", "cleanup"]);
        }
        until_nothing_left(&standin, &d, &what);
        assert_eq!(everything(&standin), with_snap, "{what}");
        until_unshared(&standin, &snapshots, &what);
        assert_eq!(copies(&lib), made, "{what}: no half backup");

        let what = format!("copy: kill -9 after {}", step.action);
        killed_after(&mut d, &standin, step.action, &copy_args(&id, &fleet, "volumes"));
        until_nothing_left(&standin, &d, &what);
        assert_eq!(everything(&standin), with_snap, "{what}");
        until_unshared(&standin, &snapshots, &what);
        livemount(&lib).args(["backup", "verify"]).assert().success();
        let again = copy(&d, &id, &fleet, "volumes");
        restores_as_the_volumes(&lib, again["id"].as_str().unwrap(), &dir.join("aws"), &fleet, dir);
        made = copies(&lib);
    }

    // Through EBS direct: a call that fails once is retried; one that fails for good fails the copy,
    // which makes nothing and stores no half backup; a kill -9 leaves no half backup either.
    for step in DIRECT_COPY_STEPS {
        let what = format!("direct copy: {} fails once", step.action);
        fault(step, json!({"nth": 1, "times": 1, "code": "InternalServerException", "status": 500}));
        copy(&d, &id, &fleet, "ebs-direct");
        made += 1;
        fired_once(&standin, &what);
        standin.clear_faults();
        assert_eq!(everything(&standin), with_snap, "{what}");

        let what = format!("direct copy: {} fails for good", step.action);
        fault(step, json!({"code": "InternalServerException", "status": 500, "times": null}));
        let e = fails(&d, &copy_args(&id, &fleet, "auto"));
        assert!(e.contains(step.action) && e.contains("InternalServerException"), "{what}: {e}");
        standin.clear_faults();
        assert_eq!(everything(&standin), with_snap, "{what}");
        assert_eq!(copies(&lib), made, "{what}: no half backup");

        let what = format!("direct copy: kill -9 after {}", step.action);
        killed_after(&mut d, &standin, step.action, &copy_args(&id, &fleet, "ebs-direct"));
        assert_eq!(everything(&standin), with_snap, "{what}");
        assert_eq!(copies(&lib), made, "{what}: no half backup");
        livemount(&lib).args(["backup", "verify"]).assert().success();
    }
    // A role that may not read through EBS direct: the copy goes through volumes, unless EBS direct was
    // asked for.
    let refused = json!({"action": "ListSnapshotBlocks", "account": MEMBER, "code": "AccessDeniedException",
                         "status": 403, "times": null});
    standin.fault(refused);
    let e = fails(&d, &copy_args(&id, &fleet, "ebs-direct"));
    assert!(e.contains("ListSnapshotBlocks") && e.contains("AccessDeniedException"), "{e}");
    let volumes0 = standin.calls("CreateVolume", SERVICE);
    let again = copy(&d, &id, &fleet, "auto");
    standin.clear_faults();
    assert_eq!(standin.calls("CreateVolume", SERVICE) - volumes0, 2, "read through volumes");
    restores_as_the_volumes(&lib, again["id"].as_str().unwrap(), &dir.join("aws"), &fleet, dir);
    until_unshared(&standin, &snapshots, "fallback to volumes");
    assert_eq!(everything(&standin), with_snap, "fallback to volumes");
    ok(&d, &["backup", "forget", &id]);
    assert_eq!(everything(&standin), before);
}

#[test]
fn against_stock_moto_a_snapshot_backup_works_and_its_copy_stops_where_moto_does() {
    // moto 5.2.1 keeps each account's snapshots to itself: the copy gets as far as CreateVolume in the
    // service account, says so, and leaves the snapshot backup as it was.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), true);
    let member = standin.awsq(&["launch", MEMBER, "--name", "web01"]);
    let node = standin.awsq(&["launch", SERVICE]);
    let (d, lib) = backup_daemon(dir, &standin);
    let before = everything(&standin);
    let instance = member["instance"].as_str().unwrap();
    let job = ok(&d, &["cloud", "snap", instance, "--account", "member"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["result"]["id"].as_str().unwrap().to_string();
    let with_snap = everything(&standin);
    assert!(with_snap.len() > before.len(), "the image and its snapshots are kept");
    let node = node["instance"].as_str().unwrap();
    let e = fails(&d, &["cloud", "backup-copy", &id, "--access-node", node, "--via", "volumes"]);
    assert!(e.contains("CreateVolume") && e.contains("InvalidSnapshot.NotFound"), "{e}");
    assert_eq!(everything(&standin), with_snap, "the copy left nothing");
    let e = fails(&d, &["cloud", "backup-copy", &id, "--access-node", node]);
    assert!(e.contains("ListSnapshotBlocks"), "{e}");
    assert_eq!(everything(&standin), with_snap, "the copy left nothing");
    ok(&d, &["backup", "forget", &id]);
    assert_eq!(everything(&standin), before, "nothing left in either account");
    assert_eq!(manifests(&lib).len(), 0);
}
