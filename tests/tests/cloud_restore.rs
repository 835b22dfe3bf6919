//! Restores of a streaming backup into the member account, against the local AWS stand-in: as an image
//! (snapshots written through EBS direct, registered, shared; with `--launch` an instance of it) and
//! HotAdd (volumes attached to the access node, written, snapshotted, made the member's volumes or
//! instance). Checked through the stand-in's data plane and the member's own credentials: the member's
//! volumes and snapshots hold exactly the backup's bytes; what the member got is handed over (no
//! cleanup removes it) and the service account keeps only what the member needs; a fault or a `kill -9`
//! at each AWS call leaves both accounts as they were.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tests::aws::{Standin, MEMBER, SERVICE};
use tests::fleet::{
    backup_daemon, everything, fails, job_resources, killed_after, launch_fleet, ok, until_nothing_left, Fleet,
};
use tests::{livemount, Daemon};

/// Streams a backup of the fleet's instance; gives its id and its disks restored as files.
fn backup_and_disks(d: &Daemon, lib: &Path, fleet: &Fleet, dir: &Path) -> (String, Vec<PathBuf>) {
    let job = ok(d, &["cloud", "backup", &fleet.instance, "--account", "member", "--access-node", &fleet.access_node]);
    let id = job["result"]["id"].as_str().unwrap().to_string();
    let disks: Vec<PathBuf> = (0..2)
        .map(|n| {
            let p = dir.join(format!("disk{n}.img"));
            livemount(lib).args(["backup", "restore", &id, "--disk", &n.to_string()]).arg(&p).assert().success();
            p
        })
        .collect();
    (id, disks)
}

fn restore(d: &Daemon, args: &[&str]) -> Value {
    let job = ok(d, args);
    assert_eq!(job["state"], "succeeded", "{job}");
    job["result"].clone()
}

fn same_bytes(a: &Path, b: &Path, what: &str) {
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{what}: {} is {}", a.display(), b.display());
}

fn volume_file(dir: &Path, volume: &str) -> PathBuf {
    dir.join("aws").join("volumes").join(format!("{volume}.img"))
}

/// The member instance's volumes, root first.
fn instance_volumes(standin: &Standin, instance: &str) -> Vec<String> {
    let i = standin.awsq(&["instance", MEMBER, instance]);
    let mut v: Vec<(String, String)> = i["volumes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(dev, vol)| (dev.clone(), vol.as_str().unwrap().to_string()))
        .collect();
    v.sort_by_key(|(dev, _)| (dev != "/dev/xvda", dev.clone()));
    v.into_iter().map(|(_, vol)| vol).collect()
}

/// Nothing that carries this appliance's tags, in either account: what a restore gave is the user's.
fn nothing_of_ours(standin: &Standin) {
    for acct in [MEMBER, SERVICE] {
        let ours: Vec<Value> = standin
            .resources(acct, None)
            .into_iter()
            .filter(|r| r["tags"].as_object().unwrap().keys().any(|k| k.starts_with("livemount:")))
            .collect();
        assert_eq!(ours, Vec::<Value>::new(), "account {acct}");
    }
}

#[test]
fn restores_give_the_member_exactly_the_backups_bytes_and_hand_it_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (d, lib) = backup_daemon(dir, &standin);
    let (backup, disks) = backup_and_disks(&d, &lib, &fleet, dir);
    let service_before: Vec<_> = everything(&standin).into_iter().filter(|r| r.0 == SERVICE).collect();
    let service_now = || everything(&standin).into_iter().filter(|r| r.0 == SERVICE).collect::<Vec<_>>();

    // As an image, launched: the member's instance runs with the saved configuration on the backup's bytes.
    let puts0 = standin.calls("PutSnapshotBlock", SERVICE);
    let r = restore(&d, &["cloud", "restore", &backup, "--account", "member", "--as-image", "--launch"]);
    let instance = r["instance_id"].as_str().unwrap();
    let shown = standin.awsq(&["instance", MEMBER, instance]);
    assert_eq!(shown["instance_type"], "m5.large", "{shown}");
    assert_eq!(shown["tags"]["Name"], "web01", "{shown}");
    assert_eq!(shown["image"], r["image_id"]);
    for (n, vol) in instance_volumes(&standin, instance).iter().enumerate() {
        same_bytes(&volume_file(dir, vol), &disks[n], &format!("as image, launched: disk {n}"));
    }
    let puts = standin.calls("PutSnapshotBlock", SERVICE) - puts0;
    assert!(puts > 0 && puts < 2 * 2048, "only allocated blocks are sent: {puts} of 4096");
    assert_eq!(r["bytes_written"], puts * (512 << 10));

    // As an image: the member reads the shared snapshots with its own credentials.
    let r = restore(&d, &["cloud", "restore", &backup, "--account", "member", "--as-image"]);
    assert!(r["instance_id"].is_null());
    for (n, snap) in r["snapshots"].as_array().unwrap().iter().enumerate() {
        let out = dir.join(format!("snap{n}.img"));
        standin.awsq(&["read-snapshot", MEMBER, snap.as_str().unwrap(), out.to_str().unwrap()]);
        same_bytes(&out, &disks[n], &format!("as image: snapshot {n} read by the member"));
    }
    let images_and_snaps = service_now().len() - service_before.len();
    assert_eq!(images_and_snaps, 2 * 3, "the service account keeps each image and its snapshots, for the member");

    // HotAdd: the member's new volumes; the service account keeps nothing of it.
    let kept = service_now();
    let r = restore(&d, &["cloud", "restore", &backup, "--account", "member", "--access-node", &fleet.access_node]);
    let volumes = r["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "{r}");
    for (n, vol) in volumes.iter().enumerate() {
        same_bytes(&volume_file(dir, vol.as_str().unwrap()), &disks[n], &format!("HotAdd: volume {n}"));
    }
    assert_eq!(service_now(), kept, "HotAdd leaves nothing in the service account");

    // HotAdd, launched.
    let r = restore(
        &d,
        &["cloud", "restore", &backup, "--account", "member", "--access-node", &fleet.access_node, "--launch"],
    );
    let instance = r["instance_id"].as_str().unwrap();
    for (n, vol) in instance_volumes(&standin, instance).iter().enumerate() {
        same_bytes(&volume_file(dir, vol), &disks[n], &format!("HotAdd, launched: disk {n}"));
    }
    assert_eq!(service_now(), kept, "HotAdd leaves nothing in the service account");

    // What the member got is the user's: no tag of ours, and cleanup does not touch it.
    nothing_of_ours(&standin);
    let all = everything(&standin);
    let cleaned = ok(&d, &["cloud", "cleanup"]);
    assert_eq!(cleaned["resources"], json!([]), "{cleaned}");
    assert_eq!(everything(&standin), all);

    let e = fails(&d, &["cloud", "restore", "nope", "--account", "member", "--as-image"]);
    assert!(e.contains("nope"), "{e}");
}

/// An AWS call of a restore, in the account it is made in; `undo`: made while removing too.
struct Step {
    action: &'static str,
    account: &'static str,
    undo: bool,
}

const IMAGE_STEPS: &[Step] = &[
    Step { action: "StartSnapshot", account: SERVICE, undo: false },
    Step { action: "PutSnapshotBlock", account: SERVICE, undo: false },
    Step { action: "CompleteSnapshot", account: SERVICE, undo: false },
    Step { action: "RegisterImage", account: SERVICE, undo: false },
    Step { action: "ModifyImageAttribute", account: SERVICE, undo: false },
    Step { action: "RunInstances", account: MEMBER, undo: false },
    Step { action: "DeleteTags", account: MEMBER, undo: false },
];

const HOTADD_STEPS: &[Step] = &[
    Step { action: "CreateVolume", account: SERVICE, undo: false },
    Step { action: "AttachVolume", account: SERVICE, undo: false },
    Step { action: "DetachVolume", account: SERVICE, undo: true },
    Step { action: "CreateSnapshot", account: SERVICE, undo: false },
    Step { action: "DeleteVolume", account: SERVICE, undo: true },
    Step { action: "ModifySnapshotAttribute", account: SERVICE, undo: false },
    Step { action: "CreateVolume", account: MEMBER, undo: false },
    Step { action: "DeleteSnapshot", account: SERVICE, undo: true },
];

#[test]
fn every_aws_call_of_a_restore_survives_a_failure_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), false);
    let fleet = launch_fleet(dir, &standin);
    let (mut d, lib) = backup_daemon(dir, &standin);
    let (backup, _) = backup_and_disks(&d, &lib, &fleet, dir);
    let before = everything(&standin);
    let image_args = vec!["cloud", "restore", &backup, "--account", "member", "--as-image", "--launch"];
    let hotadd_args = vec!["cloud", "restore", &backup, "--account", "member", "--access-node", &fleet.access_node];

    for (args, steps) in [(&image_args, IMAGE_STEPS), (&hotadd_args, HOTADD_STEPS)] {
        for step in steps {
            let what = format!("{:?}: {} in {} fails for good", &args[4..], step.action, step.account);
            standin.fault(json!({"action": step.action, "account": step.account, "code": "UnauthorizedOperation", "status": 403, "times": null}));
            let e = fails(&d, args);
            assert!(e.contains(step.action) && e.contains("UnauthorizedOperation"), "{what}: {e}");
            standin.clear_faults();
            if step.undo {
                assert!(e.contains("cloud cleanup"), "{what}: {e}");
                ok(&d, &["cloud", "cleanup"]);
            }
            until_nothing_left(&standin, &d, &what);
            assert_eq!(everything(&standin), before, "{what}: both accounts are as they were");

            let what = format!("{:?}: kill -9 after {}", &args[4..], step.action);
            killed_after(&mut d, &standin, step.action, args);
            until_nothing_left(&standin, &d, &what);
            assert_eq!(everything(&standin), before, "{what}: both accounts are as they were");
            assert_eq!(job_resources(&standin), Vec::<Value>::new());
        }
    }
    livemount(&lib).args(["backup", "verify"]).assert().success();
}

#[test]
fn against_stock_moto_a_restore_to_an_image_of_a_local_backup_is_handed_over() {
    // Stock moto 5.2.1 takes the EBS direct upload (its StartSnapshot makes an EC2 volume of its own for
    // the snapshot, which AWS does not) and RegisterImage; the flow completes, and what it made is the
    // user's: nothing of it carries this appliance's tags.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let standin = Standin::start(&dir.join("aws"), true);
    let (d, lib) = backup_daemon(dir, &standin);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, tests::random_bytes(3, 3 << 20)).unwrap();
    livemount(&lib).args(["backup", "create", "--name", "local"]).arg(&disk).assert().success();
    let before = everything(&standin);
    let r = restore(&d, &["cloud", "restore", "local", "--account", "member", "--as-image"]);
    let image = r["image_id"].as_str().unwrap().to_string();
    let snapshot = r["snapshots"][0].as_str().unwrap().to_string();
    assert_eq!(r["bytes_written"], 3 << 20, "the disk's six non-zero blocks: {r}");
    let mut added: Vec<(String, String)> =
        everything(&standin).into_iter().filter(|x| !before.contains(x)).map(|(_, kind, id)| (kind, id)).collect();
    added.retain(|(kind, _)| kind != "volume"); // moto's own, see above
    added.sort();
    assert_eq!(added, vec![("image".to_string(), image), ("snapshot".to_string(), snapshot)]);
    nothing_of_ours(&standin);
}
