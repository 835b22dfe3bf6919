//! A member account's EC2 instance and the service account's access node in the AWS stand-in, and a
//! daemon that knows both accounts: what the tests of the account workflows start from, and what they
//! check (both accounts as they were, nothing of a job left, a backup that restores as the volumes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aws::{Standin, MEMBER, MEMBER_ROLE, SERVICE};
use crate::{json, livemount, make_ext4_disk, populate_tree, random_bytes, Daemon};

/// The member's instance and the access node, as `awsq launch` printed them.
pub struct Fleet {
    pub instance: String,
    pub access_node: String,
    /// The instance's volumes, root first: (device name, volume id).
    pub volumes: Vec<(String, String)>,
}

/// A member instance with an ext4 root disk and a second disk of random data, and an access node.
pub fn launch_fleet(dir: &Path, standin: &Standin) -> Fleet {
    let tree = dir.join("tree");
    populate_tree(&tree, 11, 2);
    let root = make_ext4_disk(dir, "root.img", &tree, 48);
    let data = dir.join("data.img");
    std::fs::write(&data, random_bytes(5, 3 << 20)).unwrap();
    let (root_s, data_s) = (root.to_str().unwrap(), data.to_str().unwrap());
    let member = standin.awsq(&["launch", MEMBER, "--disk", root_s, "--disk", data_s, "--name", "web01"]);
    let node = standin.awsq(&["launch", SERVICE, "--name", "access-node"]);
    let mut volumes: Vec<(String, String)> = member["volumes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(dev, vol)| (dev.clone(), vol.as_str().unwrap().to_string()))
        .collect();
    volumes.sort_by_key(|(dev, _)| (dev != "/dev/xvda", dev.clone()));
    Fleet {
        instance: member["instance"].as_str().unwrap().into(),
        access_node: node["instance"].as_str().unwrap().into(),
        volumes,
    }
}

pub fn backup_daemon(dir: &Path, standin: &Standin) -> (Daemon, PathBuf) {
    let lib = dir.join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    let devices = dir.join("aws").join("devices");
    let d = Daemon::start_env(dir, &lib, &["--ebs-devices", devices.to_str().unwrap()], &standin.env());
    d.cli().args(["cloud", "account", "add", "member", "--role-arn", MEMBER_ROLE]).assert().success();
    (d, lib)
}

/// What is in both accounts, by kind and id, without tags (a job's tags differ; what matters is that
/// nothing is added or lost).
pub fn everything(standin: &Standin) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = [MEMBER, SERVICE]
        .iter()
        .flat_map(|acct| {
            standin.resources(acct, None).into_iter().map(move |r| {
                (acct.to_string(), r["kind"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string())
            })
        })
        .collect();
    all.sort();
    all
}

/// The resources of either account that carry a job's tag.
pub fn job_resources(standin: &Standin) -> Vec<Value> {
    [MEMBER, SERVICE]
        .iter()
        .flat_map(|acct| standin.resources(acct, None))
        .filter(|r| r["tags"].get("livemount:job").is_some())
        .collect()
}

pub fn fails(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli().args(args).output().unwrap();
    assert!(!out.status.success(), "livemount {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn ok(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli().args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "livemount {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    json(&out.stdout)
}

/// Restores every disk of `backup` and compares it with the volume files of the instance.
pub fn restores_as_the_volumes(lib: &Path, backup: &str, standin_data: &Path, fleet: &Fleet, scratch: &Path) {
    livemount(lib).args(["backup", "verify", backup]).assert().success();
    for (n, (dev, vol)) in fleet.volumes.iter().enumerate() {
        let restored = scratch.join(format!("restored{n}.img"));
        livemount(lib).args(["backup", "restore", backup, "--disk", &n.to_string()]).arg(&restored).assert().success();
        let volume = standin_data.join("volumes").join(format!("{vol}.img"));
        assert!(
            std::fs::read(&restored).unwrap() == std::fs::read(&volume).unwrap(),
            "disk {n} of backup {backup} is the instance's {dev} ({vol})"
        );
        std::fs::remove_file(&restored).unwrap();
    }
}

/// Waits (a restarted daemon removes a dead job's resources in the background) until neither account
/// holds anything of a job.
pub fn until_nothing_left(standin: &Standin, d: &Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !job_resources(standin).is_empty() {
        assert!(Instant::now() < deadline, "{what}: left behind {:?}\n{}", job_resources(standin), d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `args` against a daemon that kills itself (SIGKILL) right after the AWS call `action` succeeded,
/// then starts it again as it was: the crash a job must recover from.
pub fn killed_after(d: &mut Daemon, standin: &Standin, action: &str, args: &[&str]) {
    let base = standin.env();
    d.env = [base.clone(), vec![("LIVEMOUNT_TEST_KILL_AFTER".to_string(), action.to_string())]].concat();
    d.restart();
    let _ = fails(d, args);
    d.env = base;
    d.restart();
}
