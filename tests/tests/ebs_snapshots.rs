//! EBS snapshots read through the EBS direct APIs with no volume, against the local AWS stand-in
//! (512 KiB blocks, parents, changed blocks as AWS documents them): a backup reads only the blocks the
//! snapshot lists, an incremental of a child snapshot only the blocks ListChangedBlocks names (counted
//! at the stand-in), and both restore bit-identical. Bad input and a damaged answer give a clear error
//! and no backup, never wrong bytes. Restores write new snapshots through EBS direct (a child of a
//! parent: only the blocks that differ), which coldsnap downloads identical. A snapshot live-mounts and
//! browses through EBS direct with nothing made in AWS, and a Debian guest boots from a live-mounted
//! snapshot through iPXE in QEMU as on premises.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tests::aws::{Standin, MEMBER, MEMBER_ROLE};
use tests::fleet::{backup_daemon, everything, fails, job_resources, ok};
use tests::{livemount, random_bytes, Daemon};

const BLOCK: usize = 512 << 10;

/// A disk of `blocks` 512 KiB blocks, random but for every 7th block (zeros, never listed).
fn disk(seed: u64, blocks: usize) -> Vec<u8> {
    let mut d = random_bytes(seed, blocks * BLOCK);
    for b in (0..blocks).step_by(7) {
        d[b * BLOCK..(b + 1) * BLOCK].fill(0);
    }
    d
}

fn upload(standin: &Standin, file: &Path, parent: Option<(&str, &Path)>) -> String {
    let f = file.to_str().unwrap();
    let mut args = vec!["upload", MEMBER, f];
    let p;
    if let Some((snap, old)) = parent {
        p = old.to_str().unwrap().to_string();
        args.extend(["--parent", snap, "--parent-file", &p]);
    }
    standin.awsq(&args)["snapshot"].as_str().unwrap().to_string()
}

fn back_up(d: &Daemon, snapshot: &str) -> Value {
    ok(d, &["backup", "create", &format!("ebs:{snapshot}"), "--account", "member"])
}

/// Restores `backup` and checks it is `want` followed by zeros to the volume's whole GiB.
fn restores_as(lib: &Path, backup: &str, want: &[u8], scratch: &Path) {
    livemount(lib).args(["backup", "verify", backup]).assert().success();
    let out = scratch.join("restored.img");
    livemount(lib).args(["backup", "restore", backup]).arg(&out).assert().success();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 1 << 30, "the volume's size");
    assert!(got[..want.len()] == *want, "backup {backup} restores the snapshot's bytes");
    assert!(got[want.len()..].iter().all(|&b| b == 0), "and zeros past them");
    std::fs::remove_file(&out).unwrap();
}

/// Downloads `snapshot` of the member account with coldsnap (an EBS direct client written by others)
/// and checks it is `want` followed by zeros.
fn coldsnap_downloads(standin: &Standin, snapshot: &str, want: &[u8], scratch: &Path) {
    let out = scratch.join("downloaded.img");
    let _ = std::fs::remove_file(&out);
    let creds = standin.awsq(&["credentials", MEMBER]);
    let mut cmd = Command::new("coldsnap");
    cmd.args(["download", snapshot]).arg(&out).envs(standin.env());
    for (k, v) in creds.as_object().unwrap() {
        cmd.env(k, v.as_str().unwrap());
    }
    tests::run(&mut cmd);
    let got = std::fs::read(&out).unwrap();
    assert!(got[..want.len()] == *want, "coldsnap downloads {snapshot} as the backup's bytes");
    assert!(got[want.len()..].iter().all(|&b| b == 0), "and zeros past them");
    std::fs::remove_file(&out).unwrap();
}

fn restore(d: &Daemon, backup: &Value, parent: Option<&str>) -> Value {
    let id = backup["id"].as_str().unwrap();
    let mut args = vec!["backup", "restore", id, "ebs:", "--account", "member"];
    if let Some(p) = parent {
        args.extend(["--parent", p]);
    }
    ok(d, &args)
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn a_child_snapshot_backs_up_reading_only_its_changed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let standin = Standin::start(&dir.path().join("aws"), false);
    let (d, lib) = backup_daemon(dir.path(), &standin);
    let blocks = 400;
    let first = disk(5, blocks);
    let first_file = write(dir.path(), "first.img", &first);
    let snap1 = upload(&standin, &first_file, None);
    let listed = (0..blocks).filter(|b| b % 7 != 0).count() as u64;
    let before = everything(&standin);

    let full = back_up(&d, &snap1);
    assert_eq!(standin.calls("GetSnapshotBlock", MEMBER), listed, "only the listed blocks are read: {full}");
    assert_eq!(full["origin"]["blocks_read"], listed);
    assert_eq!(full["origin"]["parent_backup"], Value::Null);
    assert_eq!(full["stats"]["bytes_read"], listed * BLOCK as u64);
    restores_as(&lib, full["id"].as_str().unwrap(), &first, dir.path());

    // 1% of the blocks change: three get new bytes, one listed block becomes zeros.
    let mut second = first.clone();
    for b in [3usize, 150, 399] {
        second[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&random_bytes(100 + b as u64, BLOCK));
    }
    second[200 * BLOCK..201 * BLOCK].fill(0);
    let second_file = write(dir.path(), "second.img", &second);
    let snap2 = upload(&standin, &second_file, Some((&snap1, &first_file)));

    let reads_before = standin.calls("GetSnapshotBlock", MEMBER);
    let incremental = back_up(&d, &snap2);
    let read = standin.calls("GetSnapshotBlock", MEMBER) - reads_before;
    // The zeroed block is listed (it was written, with zeros) and read like the others.
    assert_eq!(read, 4, "only the changed blocks are read: {incremental}");
    assert_eq!(incremental["origin"]["parent_backup"], full["id"]);
    assert_eq!(incremental["origin"]["snapshot_id"], snap2.as_str());
    assert_eq!(incremental["origin"]["volume_id"], "vol-ffffffff");
    assert!(incremental["stats"]["chunks_reused"].as_u64().unwrap() > 0, "{incremental}");
    restores_as(&lib, incremental["id"].as_str().unwrap(), &second, dir.path());

    // A snapshot of another lineage is backed up in full.
    let other_file = write(dir.path(), "other.img", &disk(9, blocks));
    let snap3 = upload(&standin, &other_file, None);
    let other = back_up(&d, &snap3);
    assert_eq!(other["origin"]["parent_backup"], Value::Null, "{other}");
    assert_eq!(other["origin"]["blocks_read"], listed);
    assert_eq!(everything(&standin), before, "nothing was made in either account");

    // Restores into new snapshots of the member account, which coldsnap downloads identical.
    let restored = restore(&d, &full, None);
    assert_eq!(restored["blocks_written"], listed, "only allocated blocks are written: {restored}");
    let restored_snap = restored["snapshots"][0].as_str().unwrap().to_string();
    coldsnap_downloads(&standin, &restored_snap, &first, dir.path());
    // A child of the snapshot the full backup came from: the differences are known by chunk id.
    let reads = standin.calls("GetSnapshotBlock", MEMBER);
    let child = restore(&d, &incremental, Some(&snap1));
    assert_eq!(child["blocks_written"], 4, "only the changed blocks are written: {child}");
    assert_eq!(standin.calls("GetSnapshotBlock", MEMBER), reads, "and the parent is not read");
    coldsnap_downloads(&standin, child["snapshots"][0].as_str().unwrap(), &second, dir.path());
    // A child of a snapshot the library has no backup of: the parent's blocks are read and compared.
    let child = restore(&d, &incremental, Some(&restored_snap));
    assert_eq!(child["blocks_written"], 4, "{child}");
    coldsnap_downloads(&standin, child["snapshots"][0].as_str().unwrap(), &second, dir.path());
    assert_eq!(job_resources(&standin), Vec::<Value>::new(), "what was restored is the user's, not the job's");
    assert_eq!(ok(&d, &["cloud", "resources"])["resources"], json!([]));

    // A failed restore leaves nothing.
    let before = everything(&standin);
    standin.fault(json!({"action": "PutSnapshotBlock", "nth": 3, "times": 1, "code": "AccessDeniedException",
                         "status": 403}));
    let err = fails(&d, &["backup", "restore", full["id"].as_str().unwrap(), "ebs:", "--account", "member"]);
    assert!(err.contains("PutSnapshotBlock") && err.contains("AccessDeniedException"), "{err}");
    standin.clear_faults();
    assert_eq!(everything(&standin), before, "the failed restore's snapshot is gone");
    assert_eq!(ok(&d, &["cloud", "resources"])["resources"], json!([]));
}

#[test]
fn bad_snapshots_and_damaged_answers_give_a_clear_error_and_no_backup() {
    let dir = tempfile::tempdir().unwrap();
    let standin = Standin::start(&dir.path().join("aws"), false);
    let (d, lib) = backup_daemon(dir.path(), &standin);
    let data = disk(11, 40);
    let file = write(dir.path(), "disk.img", &data);
    let snap = upload(&standin, &file, None);
    let no_backups = |what: &str| {
        let out = livemount(&lib).args(["backup", "list", "--json"]).output().unwrap();
        assert_eq!(tests::json(&out.stdout), json!([]), "{what}: no backup is listed");
    };

    let err = fails(&d, &["backup", "create", "ebs:snap-0123456789abcdef0", "--account", "member"]);
    assert!(err.contains("has no snapshot snap-0123456789abcdef0"), "{err}");
    let err = fails(&d, &["backup", "create", &format!("ebs:{snap}")]);
    assert!(err.contains("needs --account"), "{err}");
    let pending = standin.awsq(&["upload", MEMBER, file.to_str().unwrap(), "--pending"]);
    let pending = pending["snapshot"].as_str().unwrap();
    let err = fails(&d, &["backup", "create", &format!("ebs:{pending}"), "--account", "member"]);
    assert!(err.contains("is pending") && err.contains("once it is completed"), "{err}");
    no_backups("after bad input");

    // A block damaged on the way: its checksum tells, and the backup fails naming it.
    standin.fault(json!({"action": "GetSnapshotBlock", "nth": 5, "times": 1, "corrupt": true}));
    let err = fails(&d, &["backup", "create", &format!("ebs:{snap}"), "--account", "member"]);
    assert!(err.contains("came back damaged") && err.contains(&snap), "{err}");
    standin.clear_faults();
    no_backups("after a damaged block");

    // Any other failure of a read is an error, never zeros.
    standin.fault(json!({"action": "GetSnapshotBlock", "nth": 3, "times": 1, "code": "AccessDeniedException",
                         "status": 403}));
    let err = fails(&d, &["backup", "create", &format!("ebs:{snap}"), "--account", "member"]);
    assert!(err.contains("GetSnapshotBlock") && err.contains("AccessDeniedException"), "{err}");
    standin.clear_faults();
    no_backups("after a refused read");

    // A token EBS no longer takes (expired mid-read) is renewed by listing again, throttling is waited out
    // (the SDK's backoff with jitter), and the backup is whole.
    standin.fault(json!({"action": "GetSnapshotBlock", "nth": 2, "times": 2, "code": "ValidationException",
                         "status": 400, "reason": "INVALID_BLOCK_TOKEN"}));
    standin.fault(json!({"action": "GetSnapshotBlock", "nth": 6, "times": 2, "code": "RequestThrottledException",
                         "status": 400}));
    let lists = standin.calls("ListSnapshotBlocks", MEMBER);
    let b = back_up(&d, &snap);
    // Listed once, then again for the refused tokens: the two refusals may come while one renewal is under
    // way (reads run in parallel), and one listing then serves both.
    assert!(standin.calls("ListSnapshotBlocks", MEMBER) >= lists + 2, "listed once, then again to renew the tokens");
    standin.clear_faults();
    restores_as(&lib, b["id"].as_str().unwrap(), &data, dir.path());
}

#[test]
fn a_snapshot_live_mounts_and_browses_with_nothing_made_in_aws() {
    let dir = tempfile::tempdir().unwrap();
    let standin = Standin::start(&dir.path().join("aws"), false);
    let (d, _lib) = backup_daemon(dir.path(), &standin);
    let tree = dir.path().join("tree");
    tests::populate_tree(&tree, 3, 1);
    let disk_file = tests::make_ext4_disk(dir.path(), "disk.img", &tree, 64);
    let disk = std::fs::read(&disk_file).unwrap();
    let snap = upload(&standin, &disk_file, None);
    let listed = disk.chunks(BLOCK).filter(|b| b.iter().any(|&x| x != 0)).count() as u64;
    let before = everything(&standin);

    let err = fails(&d, &["mount", &format!("ebs:{snap}")]);
    assert!(err.contains("needs the cloud account"), "{err}");
    // Block tokens that last 2 s: the mount outlives the ones it listed first and renews them.
    standin.control("POST", "/standin/settings", Some(&json!({"block_token_lifetime": 2})));
    let m = ok(&d, &["mount", &format!("ebs:{snap}"), "--account", "member"]);
    assert_eq!(m["backup"], format!("ebs:{snap}"));
    let fuse = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let mut got = vec![0u8; 1 << 30];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&fuse).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 30, "the snapshot's volume size");
        let half = disk.len() / 2;
        f.read_exact_at(&mut got[..half], 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2500));
        f.read_exact_at(&mut got[half..], half as u64).unwrap();
    }
    assert!(got[..disk.len()] == *disk, "the live-mounted snapshot reads as the disk it was made of");
    assert!(got[disk.len()..].iter().all(|&b| b == 0));
    assert_eq!(standin.calls("GetSnapshotBlock", MEMBER), listed, "each listed block recalled once, zeros never");
    assert!(standin.calls("ListSnapshotBlocks", MEMBER) >= 2, "the lapsed block tokens were renewed");
    // Writes go to the mount's own store; the snapshot is never changed by serving it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&fuse).unwrap();
        f.write_all_at(&[0x5a; 4096], 8 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let mut reread = vec![0u8; 4096];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&fuse).unwrap().read_exact_at(&mut reread, 8 << 20).unwrap();
    }
    assert_eq!(reread, vec![0x5a; 4096]);
    let back = dir.path().join("snapshot-now.img");
    standin.awsq(&["read-snapshot", MEMBER, &snap, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap()[..disk.len()] == *disk, "the snapshot is as it was");
    ok(&d, &["unmount", m["id"].as_str().unwrap()]);

    let out = d.cli().args(["browse", &format!("ebs:{snap}"), "--account", "member", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let b = tests::json(&out.stdout);
    let root = PathBuf::from(b["browse"]["filesystems"][0]["path"].as_str().unwrap());
    assert!(std::fs::read(root.join("etc/hostname")).unwrap() == std::fs::read(tree.join("etc/hostname")).unwrap());
    d.cli().args(["unbrowse", b["id"].as_str().unwrap()]).assert().success();
    assert_eq!(everything(&standin), before, "nothing was made in AWS");
    assert_eq!(ok(&d, &["mounts"]), json!([]));
}

#[test]
fn a_vm_boots_from_a_live_mounted_snapshot_through_ipxe() {
    let dir = tempfile::tempdir().unwrap();
    let (guest, packages) = tests::guest::guest_image_and_packages();
    let standin = Standin::start(&dir.path().join("aws"), false);
    let snap = upload(&standin, &guest, None);
    let before = everything(&standin);
    let lib = dir.path().join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    // QEMU's user-mode network reaches the host's 127.0.0.1 as 10.0.2.2.
    let packages_arg = packages.display().to_string();
    let extra = ["--advertise", "10.0.2.2", "--guest-packages", &packages_arg];
    let d = Daemon::start_env(dir.path(), &lib, &extra, &standin.env());
    d.cli().args(["cloud", "account", "add", "member", "--role-arn", MEMBER_ROLE]).assert().success();

    let source = format!("ebs:{snap}");
    let booted = tests::guest::boot_mount_in_qemu(&d, &lib, &source, &["--account", "member"], dir.path());
    assert!(standin.calls("GetSnapshotBlock", MEMBER) > 0, "the guest was read from the snapshot");
    ok(&d, &["unmount", &booted.mount_id]);

    // Booting and preparing the guest wrote only to the mount's store: the snapshot is as it was uploaded.
    let back = dir.path().join("snapshot-after.img");
    standin.awsq(&["read-snapshot", MEMBER, &snap, back.to_str().unwrap()]);
    let guest_len = std::fs::metadata(&guest).unwrap().len().to_string();
    let same = Command::new("cmp").args(["-n", &guest_len]).arg(&back).arg(&guest).status().unwrap().success();
    assert!(same, "the snapshot reads back as the guest image it was made of");
    assert_eq!(everything(&standin), before, "nothing was made in AWS");
    assert_eq!(ok(&d, &["mounts"]), json!([]));
}
