//! `livemount mount commit`: what a live mount holds now kept as a new version of its backup, through the
//! daemon and its FUSE file. Checked: only the chunks the mount changed are read and stored, the new
//! backup restores bit-identical to what the mount reads, it names its parent and shows its lineage, the
//! mount goes on, forgetting the parent keeps the new version whole, and a `kill -9` mid-commit leaves no
//! half backup and a library that verifies.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tests::{json, livemount, punch_hole, random_bytes, Daemon};

const CHUNK: u64 = 64 << 10;

/// A library holding one backup of a disk of random bytes (its first MiB zeros); gives the daemon, the
/// disk's file and the backup's id.
fn library_with_backup(dir: &Path, mib: usize) -> (Daemon, PathBuf, String) {
    let mut data = random_bytes(41, mib << 20);
    data[..1 << 20].fill(0);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, &data).unwrap();
    let lib = dir.join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    let out = livemount(&lib).args(["backup", "create", "--json", "--name", "v1"]).arg(&disk).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backup = json(&out.stdout)["id"].as_str().unwrap().to_string();
    (Daemon::start(dir, &lib), disk, backup)
}

fn ok(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli().args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "livemount {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    json(&out.stdout)
}

/// Commits the mount; gives the new backup (the job's result).
fn commit(d: &Daemon, mount: &str, name: &str) -> Value {
    let job = ok(d, &["mount", "commit", mount, "--name", name]);
    assert_eq!(job["state"], "succeeded", "{job}");
    job["result"].clone()
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// Restores `backup` and compares it with `want`.
fn restores_as(lib: &Path, backup: &str, want: &[u8], scratch: &Path) {
    livemount(lib).args(["backup", "verify", backup]).assert().success();
    let restored = scratch.join(format!("{backup}.img"));
    livemount(lib).args(["backup", "restore", backup]).arg(&restored).assert().success();
    assert!(std::fs::read(&restored).unwrap() == want, "backup {backup} restores as the mount read");
    std::fs::remove_file(&restored).unwrap();
}

#[test]
fn a_commit_stores_only_what_the_mount_changed_and_restores_as_the_mount_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (d, disk, v1) = library_with_backup(dir, 16);
    let lib = d.library.clone();
    let original = std::fs::read(&disk).unwrap();
    let m = ok(&d, &["mount", &v1, "--name", "work"]);
    let fuse = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());

    // Changes in chunks 20, 49 and 50 (one write across their border), 100, and a discard of chunk 200.
    let f = open_rw(&fuse);
    f.write_all_at(&random_bytes(1, 4096), 20 * CHUNK + 100).unwrap();
    f.write_all_at(&random_bytes(2, 8192), 50 * CHUNK - 4096).unwrap();
    f.write_all_at(&random_bytes(3, 4096), 100 * CHUNK).unwrap();
    punch_hole(&f, 200 * CHUNK, CHUNK);
    f.sync_all().unwrap();
    drop(f);

    let v2 = commit(&d, "work", "v2");
    let v2_id = v2["id"].as_str().unwrap().to_string();
    assert_eq!(v2["origin"]["kind"], "mount-commit", "{v2}");
    assert_eq!(v2["origin"]["parent_backup"], v1.as_str());
    assert_eq!(v2["origin"]["mount"], m["id"]);
    assert_eq!(v2["stats"]["bytes_read"], 5 * CHUNK, "only the 5 changed chunks were read: {v2}");
    assert_eq!(v2["stats"]["chunks_new"], 4, "4 new chunks stored (the discarded one is zeros): {v2}");
    let now = std::fs::read(&fuse).unwrap();
    assert!(now[200 * CHUNK as usize..201 * CHUNK as usize].iter().all(|&b| b == 0));
    restores_as(&lib, &v2_id, &now, dir);

    // The lineage shows.
    let listed =
        String::from_utf8_lossy(&livemount(&lib).args(["backup", "list"]).output().unwrap().stdout).into_owned();
    assert!(listed.lines().any(|l| l.starts_with(&v2_id) && l.contains(&format!("version of {v1}"))), "{listed}");
    let shown = String::from_utf8_lossy(&livemount(&lib).args(["backup", "show", &v2_id]).output().unwrap().stdout)
        .into_owned();
    assert!(shown.contains("committed") && shown.contains(&v1), "{shown}");

    // The mount goes on; a later commit holds every change since the mounted backup, and stores only the
    // chunk that is new since the last one.
    let f = open_rw(&fuse);
    f.write_all_at(&random_bytes(4, 4096), 150 * CHUNK + 8192).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let v3 = commit(&d, "work", "v3");
    assert_eq!(v3["stats"]["bytes_read"], 6 * CHUNK, "{v3}");
    assert_eq!(v3["stats"]["chunks_new"], 1, "{v3}");
    let v3_id = v3["id"].as_str().unwrap().to_string();
    let now = std::fs::read(&fuse).unwrap();
    restores_as(&lib, &v3_id, &now, dir);
    restores_as(&lib, &v1, &original, dir);

    // Bad input: no such mount; a read-only mount has nothing to commit.
    let out = d.cli().args(["mount", "commit", "nosuch"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    let ro = ok(&d, &["mount", &v1, "--read-only"]);
    let out = d.cli().args(["mount", "commit", ro["id"].as_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&d, &["unmount", ro["id"].as_str().unwrap()]);

    // The versions are backups like any other: the first can go, the later ones keep their chunks.
    ok(&d, &["unmount", "work"]);
    livemount(&lib).args(["backup", "forget", &v1]).assert().success();
    livemount(&lib).args(["library", "gc"]).assert().success();
    restores_as(&lib, &v3_id, &now, dir);
    livemount(&lib).args(["backup", "verify"]).assert().success();
}

#[test]
fn a_kill_9_during_a_commit_leaves_no_half_backup_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut d, _disk, v1) = library_with_backup(dir, 32);
    let lib = d.library.clone();
    let m = ok(&d, &["mount", &v1, "--name", "work"]);
    let fuse = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let f = open_rw(&fuse);
    f.write_all_at(&random_bytes(9, 8 << 20), 16 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // The daemon kills itself (SIGKILL) once the commit has read its first changed chunk.
    d.env = vec![("LIVEMOUNT_TEST_KILL_AFTER".to_string(), "mount-commit-read".to_string())];
    d.restart();
    let out = d.cli().args(["mount", "commit", "work", "--name", "v2"]).output().unwrap();
    assert!(!out.status.success(), "the commit was cut off: {}", d.log());
    assert!(d.log().contains("killing the daemon") && !d.log().contains("mount committed"), "{}", d.log());
    let backups = json(&livemount(&lib).args(["backup", "list", "--json"]).output().unwrap().stdout);
    assert_eq!(backups.as_array().unwrap().len(), 1, "no half backup is listed: {backups}");
    livemount(&lib).args(["backup", "verify"]).assert().success();

    // The mount comes back with the daemon; committing again completes.
    d.env = Vec::new();
    d.restart();
    let job = ok(&d, &["mount", "commit", "work", "--name", "v2"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let v2 = job["result"]["id"].as_str().unwrap().to_string();
    let now = std::fs::read(&fuse).unwrap();
    restores_as(&lib, &v2, &now, dir);
}
