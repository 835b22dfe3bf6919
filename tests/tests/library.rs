//! The dedup library end to end, through the `livemount` CLI: back up real partitioned ext4 images, restore
//! them bit-identical, back up changes incrementally, read qcow2 through qemu, detect damage, survive
//! `kill -9`, and collect garbage while backups run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tests::{json, livemount, make_ext4_disk, populate_tree, random_bytes, run, Backend, TestLib};

/// A new library with the chunk size given, on `backend`.
fn new_library(backend: Backend, dir: &Path, chunk_size: &str) -> TestLib {
    tests::new_library(backend, dir, chunk_size)
}

fn backup(lib: &Path, sources: &[&Path]) -> serde_json::Value {
    let out = livemount(lib).args(["backup", "create", "--json"]).args(sources).output().unwrap();
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    json(&out.stdout)
}

fn restore_and_compare(lib: &Path, id: &str, original: &Path) {
    let dest = original.with_extension("restored");
    livemount(lib).args(["backup", "restore", id]).arg(&dest).assert().success();
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(original).unwrap(),
        "restore of {id} differs from {}",
        original.display()
    );
    std::fs::remove_file(dest).unwrap();
}

fn verify_clean(lib: &Path) {
    let out = livemount(lib).args(["backup", "verify", "--json"]).output().unwrap();
    let report = json(&out.stdout);
    assert!(out.status.success(), "verify failed: {report}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 0);
}

fn chunk_ids(lib: &Path, id: &str) -> Vec<dedup::ChunkId> {
    let lib = dedup::Library::open(lib).unwrap();
    let m = lib.resolve(id).unwrap();
    let mut ids = Vec::new();
    lib.load_index(&m, 0)
        .unwrap()
        .for_each(|_, e| {
            ids.push(e.id);
            Ok(())
        })
        .unwrap();
    ids
}

fn backup_of_partitioned_ext4_restores_bit_identical(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 1, 6);
    let disk = make_ext4_disk(dir.path(), "disk.img", &tree, 64);
    let lib = new_library(backend, dir.path(), "64K");

    let out = backup(&lib, &[&disk]);
    let id = out["id"].as_str().unwrap().to_string();
    let stats = &out["stats"];
    assert_eq!(stats["disk_bytes"], 64 << 20);
    assert!(stats["chunks_new"].as_u64().unwrap() > 90, "the files' data was stored: {stats}");
    assert!(stats["bytes_read"].as_u64().unwrap() < 64 << 20, "holes of the sparse image are not read: {stats}");

    let show = json(&livemount(&lib).args(["backup", "show", &id, "--json"]).output().unwrap().stdout);
    let table = &show["disks"][0]["partition_table"];
    assert_eq!(table["scheme"], "gpt");
    assert_eq!(table["partitions"][0]["start"], 1 << 20);
    assert_eq!(table["partitions"][0]["type_name"], "Linux filesystem");

    let list = json(&livemount(&lib).args(["backup", "list", "--json"]).output().unwrap().stdout);
    assert_eq!(list.as_array().unwrap().len(), 1);
    restore_and_compare(&lib, &id, &disk);
    // The restored file is sparse: unused space of the disk is not written.
    verify_clean(&lib);
}

fn incremental_backup_stores_only_changed_chunks(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 2, 4);
    let disk = make_ext4_disk(dir.path(), "disk.img", &tree, 48);
    let lib = new_library(backend, dir.path(), "64K");
    let first = backup(&lib, &[&disk]);
    let first_id = first["id"].as_str().unwrap().to_string();

    // Unchanged disk: nothing new.
    let again = backup(&lib, &[&disk]);
    assert_eq!(again["stats"]["chunks_new"], 0, "{again}");
    assert_eq!(again["stats"]["new_bytes_stored"], 0);

    // Change three 4 KiB blocks inside file data, in three different chunks.
    let before = chunk_ids(&lib, &first_id);
    let data = std::fs::read(&disk).unwrap();
    let mut changed = data.clone();
    let mut touched = std::collections::BTreeSet::new();
    let mut n = 0u64;
    for (i, id) in before.iter().enumerate().filter(|(_, id)| !id.is_zero()).skip(10).step_by(7) {
        let off = i * 65536 + 8192;
        changed[off..off + 4096].copy_from_slice(&random_bytes(900 + n, 4096));
        touched.insert(i);
        n += 1;
        if n == 3 {
            let _ = id;
            break;
        }
    }
    std::fs::write(&disk, &changed).unwrap();
    let inc = backup(&lib, &[&disk]);
    assert_eq!(inc["stats"]["chunks_new"], 3, "only the three changed chunks are new: {inc}");
    let inc_id = inc["id"].as_str().unwrap();
    let after = chunk_ids(&lib, inc_id);
    let differing: std::collections::BTreeSet<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
    assert_eq!(differing, touched);

    restore_and_compare(&lib, inc_id, &disk);
    std::fs::write(&disk, &data).unwrap();
    restore_and_compare(&lib, &first_id, &disk);
}

fn qcow2_of_the_same_disk_gives_the_same_chunk_ids(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 3, 3);
    let disk = make_ext4_disk(dir.path(), "disk.img", &tree, 40);
    let qcow = dir.path().join("disk.qcow2");
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&disk).arg(&qcow));
    let lib = new_library(backend, dir.path(), "64K");
    let raw_id = backup(&lib, &[&disk])["id"].as_str().unwrap().to_string();
    let q = backup(&lib, &[&qcow]);
    let q_id = q["id"].as_str().unwrap().to_string();
    assert_eq!(chunk_ids(&lib, &raw_id), chunk_ids(&lib, &q_id));
    assert_eq!(q["stats"]["chunks_new"], 0, "the qcow2 dedups fully against the raw image: {q}");
    assert!(q["stats"]["bytes_read"].as_u64().unwrap() < 40 << 20, "unallocated clusters are not read: {q}");
    let show = json(&livemount(&lib).args(["backup", "show", &q_id, "--json"]).output().unwrap().stdout);
    assert_eq!(show["disks"][0]["format"], "qcow2");
    restore_and_compare(&lib, &q_id, &disk);

    // Two disks in one backup (a VM with a qcow2 and a raw disk) restore to one file each.
    let two = backup(&lib, &[&qcow, &disk]);
    let out = dir.path().join("two");
    livemount(&lib).args(["backup", "restore", two["id"].as_str().unwrap()]).arg(&out).assert().success();
    let original = std::fs::read(&disk).unwrap();
    assert!(std::fs::read(out.join("disk0.img")).unwrap() == original);
    assert!(std::fs::read(out.join("disk1.img")).unwrap() == original);
}

fn verify_names_corrupt_and_missing_chunks_and_reads_fail_cleanly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 4, 3);
    let disk = make_ext4_disk(dir.path(), "disk.img", &tree, 32);
    let lib_path = new_library(backend, dir.path(), "64K");
    let id = backup(&lib_path, &[&disk])["id"].as_str().unwrap().to_string();
    verify_clean(&lib_path);

    let ids = chunk_ids(&lib_path, &id);
    let (bad_index, bad) = ids.iter().enumerate().filter(|(_, c)| !c.is_zero()).nth(20).map(|(i, c)| (i, *c)).unwrap();
    let (gone_index, gone) =
        ids.iter().enumerate().filter(|(_, c)| !c.is_zero() && **c != bad).nth(40).map(|(i, c)| (i, *c)).unwrap();
    // Flip one bit in the middle of the stored chunk; remove another.
    tests::corrupt_chunk(&lib_path, &bad);
    tests::remove_chunk(&lib_path, &gone);

    let out = livemount(&lib_path).args(["backup", "verify", "--json"]).output().unwrap();
    assert!(!out.status.success(), "verify must fail");
    let report = json(&out.stdout);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{report}");
    let find = |c: &dedup::ChunkId| {
        problems.iter().find(|p| p["chunk"] == c.to_hex()).unwrap_or_else(|| panic!("{c} not named: {report}"))
    };
    assert_eq!(find(&bad)["kind"], "corrupt");
    assert_eq!(find(&gone)["kind"], "missing");
    let range = &find(&bad)["affects"][0];
    assert_eq!(range["backup"], id.as_str());
    assert_eq!(range["start"], bad_index as u64 * 65536);
    assert_eq!(range["end"], (bad_index as u64 + 1) * 65536);
    assert_eq!(find(&gone)["affects"][0]["start"], gone_index as u64 * 65536);

    // The text output names the chunk too.
    let text = livemount(&lib_path).args(["backup", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&bad.to_hex()) && text.contains("CORRUPT"), "{text}");

    // Random-access reads: the damaged chunk is an error, never wrong bytes; others read fine.
    let lib = Arc::new(dedup::Library::open(&lib_path).unwrap());
    let m = lib.resolve(&id).unwrap();
    let reader = dedup::BackupDisk::open(lib.clone(), &m, 0).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = reader.read_at(bad_index as u64 * 65536 + 100, &mut buf).unwrap_err();
    assert!(matches!(err, dedup::Error::ChunkCorrupt { .. }), "{err}");
    let err = reader.read_at(gone_index as u64 * 65536, &mut buf).unwrap_err();
    assert!(matches!(err, dedup::Error::ChunkMissing { .. }), "{err}");
    let original = std::fs::read(&disk).unwrap();
    let good = ids.iter().position(|c| !c.is_zero() && *c != bad && *c != gone).unwrap() as u64 * 65536 + 10;
    reader.read_at(good, &mut buf).unwrap();
    assert_eq!(buf[..], original[good as usize..good as usize + 4096]);

    // Restore fails with a message naming the chunk.
    let out = livemount(&lib_path).args(["backup", "restore", &id]).arg(dir.path().join("r.img")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk") && (err.contains(&bad.to_hex()) || err.contains(&gone.to_hex())), "{err}");
}

fn concurrent_reads_of_a_backup_disk(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 5, 4);
    let disk = make_ext4_disk(dir.path(), "disk.img", &tree, 32);
    let lib_path = new_library(backend, dir.path(), "64K");
    let id = backup(&lib_path, &[&disk])["id"].as_str().unwrap().to_string();
    let original = std::fs::read(&disk).unwrap();
    let lib = Arc::new(dedup::Library::open(&lib_path).unwrap());
    let reader = dedup::BackupDisk::open(lib.clone(), &lib.resolve(&id).unwrap(), 0).unwrap();
    // Each case: 8 threads at once, each making its own list of reads (offset, length up to 200 000 bytes);
    // 20 cases of up to 30 reads a thread make about as many reads as 8 threads of 300. A failing case is
    // shrunk to the fewest, shortest reads that still fail.
    let size = original.len() as u64;
    let read = (1usize..=200_000, any::<u64>()).prop_map(move |(len, at)| (at % (size - len as u64), len));
    let plan = proptest::collection::vec(proptest::collection::vec(read, 1..=30), 8);
    let mut runner = TestRunner::new(Config { cases: 20, failure_persistence: None, ..Config::default() });
    let outcome = runner.run(&plan, |plan| {
        let (reader, original) = (&reader, &original);
        std::thread::scope(|s| {
            let threads: Vec<_> = plan
                .iter()
                .map(|reads| {
                    s.spawn(move || -> Result<(), TestCaseError> {
                        for &(off, len) in reads {
                            let mut buf = vec![0u8; len];
                            reader
                                .read_at(off, &mut buf)
                                .map_err(|e| TestCaseError::fail(format!("{off}+{len}: {e}")))?;
                            prop_assert!(buf[..] == original[off as usize..off as usize + len], "read at {off}+{len}");
                        }
                        Ok(())
                    })
                })
                .collect();
            threads.into_iter().try_for_each(|t| t.join().unwrap())
        })
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let mut buf = [0u8; 10];
    assert!(matches!(reader.read_at(original.len() as u64 - 5, &mut buf), Err(dedup::Error::OutOfRange { .. })));
}

/// A raw image of incompressible data, big enough that a backup takes a while.
fn big_random_image(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(seed, mib << 20)).unwrap();
    p
}

fn count_chunks(lib: &Path) -> usize {
    tests::stored_chunk_count(lib)
}

fn kill_9_during_backup_leaves_a_clean_library_and_a_rerun_reuses_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let img = big_random_image(dir.path(), "big.img", 384, 7);
    let lib = new_library(backend, dir.path(), "64K");
    let total_chunks = 384 * 16;
    let mut killed_with = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(tests::livemount_bin())
            .arg("--library")
            .arg(&lib)
            .args(["backup", "create"])
            .arg(&img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it at a different point each round, once chunks are being written.
        let target = count_chunks(&lib) + 150 * (round + 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while count_chunks(&lib) < target && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        killed_with.push(count_chunks(&lib));
        assert!(!status.success(), "the backup was killed before it finished (round {round})");
        // No half backup is visible, and every stored chunk is whole.
        let list = json(&livemount(&lib).args(["backup", "list", "--json"]).output().unwrap().stdout);
        assert_eq!(list.as_array().unwrap().len(), 0, "no backup appears from a killed run");
        let l = dedup::Library::open(&lib).unwrap();
        for c in l.store().list().unwrap() {
            let mut out = Vec::new();
            l.read_chunk(&c.id, 65536, &mut out).unwrap_or_else(|e| panic!("stored chunk damaged after kill -9: {e}"));
        }
    }
    assert!(killed_with.windows(2).all(|w| w[0] < w[1]) && killed_with[2] < total_chunks, "{killed_with:?}");
    let done = backup(&lib, &[&img]);
    let reused = done["stats"]["chunks_reused"].as_u64().unwrap();
    assert!(reused >= killed_with[2] as u64, "the rerun reuses what was stored: {done}");
    verify_clean(&lib);
    restore_and_compare(&lib, done["id"].as_str().unwrap(), &img);
}

fn gc_while_backups_run_never_deletes_a_used_chunk(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let img = big_random_image(dir.path(), "a.img", 192, 11);
    let lib = new_library(backend, dir.path(), "64K");
    // Garbage: a backup of the same data, forgotten. Its chunks are exactly what the next backup reuses,
    // so gc and the backup race for every chunk.
    let old = backup(&lib, &[&img]);
    livemount(&lib).args(["backup", "forget", old["id"].as_str().unwrap()]).assert().success();
    // An unrelated forgotten backup whose chunks gc must remove.
    let junk = big_random_image(dir.path(), "junk.img", 16, 99);
    let junk_backup = backup(&lib, &[&junk]);
    livemount(&lib).args(["backup", "forget", junk_backup["id"].as_str().unwrap()]).assert().success();
    std::thread::sleep(Duration::from_secs(3)); // older than gc's time margin

    let mut child = Command::new(tests::livemount_bin())
        .arg("--library")
        .arg(&lib)
        .args(["backup", "create", "--json"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gc_runs = 0;
    let mut removed = 0u64;
    let mut saw_it = false;
    while child.try_wait().unwrap().is_none() || gc_runs == 0 {
        let out = livemount(&lib).args(["library", "gc", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stats = json(&out.stdout);
        removed += stats["chunks_removed"].as_u64().unwrap();
        saw_it |= stats["backups_running"].as_u64().unwrap() > 0;
        gc_runs += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = json(&out.stdout)["id"].as_str().unwrap().to_string();
    // In S3 a gc waits for the backup's answer, so it may run only once meanwhile.
    assert!(saw_it || gc_runs >= 2, "gc ran while the backup ran ({gc_runs} runs)");
    // After the backup: one more gc, then everything the backup needs is there and intact.
    let out = livemount(&lib).args(["library", "gc", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    removed += json(&out.stdout)["chunks_removed"].as_u64().unwrap();
    assert!(removed >= 256, "gc removed the unrelated garbage ({removed} chunks)");
    verify_clean(&lib);
    restore_and_compare(&lib, &id, &img);
}

fn two_backups_at_once_both_succeed(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let a = big_random_image(dir.path(), "a.img", 96, 21);
    // b shares its first half with a.
    let mut b_data = std::fs::read(&a).unwrap();
    b_data[48 << 20..].copy_from_slice(&random_bytes(22, 48 << 20));
    let b = dir.path().join("b.img");
    std::fs::write(&b, &b_data).unwrap();
    let lib = new_library(backend, dir.path(), "64K");
    let spawn = |img: &Path| {
        Command::new(tests::livemount_bin())
            .arg("--library")
            .arg(&lib)
            .args(["backup", "create", "--json"])
            .arg(img)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
    assert!(
        oa.status.success() && ob.status.success(),
        "{} {}",
        String::from_utf8_lossy(&oa.stderr),
        String::from_utf8_lossy(&ob.stderr)
    );
    verify_clean(&lib);
    restore_and_compare(&lib, json(&oa.stdout)["id"].as_str().unwrap(), &a);
    restore_and_compare(&lib, json(&ob.stdout)["id"].as_str().unwrap(), &b);
    let stats = json(&livemount(&lib).args(["library", "stats", "--json"]).output().unwrap().stdout);
    assert_eq!(stats["stored_chunks"], 144 * 16, "the shared half is stored once: {stats}");
}

fn stderr_of(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let lib = new_library(Backend::Folder, dir.path(), "1M");
    let err = stderr_of(livemount(&lib).args(["backup", "create"]).arg(dir.path().join("nope.img")));
    assert!(err.contains("nope.img") && err.contains("no such file"), "{err}");

    let err = stderr_of(livemount(&dir.path().join("elsewhere")).args(["backup", "list"]));
    assert!(err.contains("not a livemount library") && err.contains("library init"), "{err}");

    let err = stderr_of(livemount(&lib).args(["backup", "show", "20990101-000000-abcdef"]));
    assert!(err.contains("no backup 20990101-000000-abcdef"), "{err}");

    let err = stderr_of(livemount(&lib).args(["library", "init"]));
    assert!(err.contains("already holds a library"), "{err}");

    let err = stderr_of(livemount(&dir.path().join("other")).args(["library", "init", "--chunk-size", "3M"]));
    assert!(err.contains("invalid chunk size"), "{err}");

    // A truncated qcow2.
    let raw = big_random_image(dir.path(), "r.img", 8, 5);
    let qcow = dir.path().join("t.qcow2");
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow));
    let len = std::fs::metadata(&qcow).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&qcow).unwrap().set_len(len / 2).unwrap();
    let err = stderr_of(livemount(&lib).args(["backup", "create"]).arg(&qcow));
    assert!(err.contains("t.qcow2"), "{err}");
    let list = json(&livemount(&lib).args(["backup", "list", "--json"]).output().unwrap().stdout);
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn a_full_disk_fails_the_backup_and_leaves_the_library_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&mnt));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let lib = mnt.join("library");
    livemount(&lib).args(["library", "init", "--chunk-size", "64K"]).assert().success();
    let small = big_random_image(dir.path(), "small.img", 2, 1);
    let first = backup(&lib, &[&small]);
    let img = big_random_image(dir.path(), "big.img", 16, 2);
    let err = stderr_of(livemount(&lib).args(["backup", "create"]).arg(&img));
    assert!(err.contains("is full"), "{err}");
    let list = json(&livemount(&lib).args(["backup", "list", "--json"]).output().unwrap().stdout);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let tmp_left = std::fs::read_dir(lib.join("tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "no temporary file is left behind");
    verify_clean(&lib);
    livemount(&lib).args(["library", "gc"]).assert().success();
    restore_and_compare_into(&lib, first["id"].as_str().unwrap(), &small, dir.path());
}

fn restore_and_compare_into(lib: &Path, id: &str, original: &Path, dir: &Path) {
    let dest = dir.join("restored.img");
    livemount(lib).args(["backup", "restore", id]).arg(&dest).assert().success();
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(original).unwrap());
}

fn repair_rebuilds_a_damaged_pack_index_from_the_pack(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    populate_tree(&tree, 6, 3);
    let disk = make_ext4_disk(dir.path(), "disk.img", &tree, 32);
    let lib_path = new_library(backend, dir.path(), "64K");
    let id = backup(&lib_path, &[&disk])["id"].as_str().unwrap().to_string();
    let ids = chunk_ids(&lib_path, &id);
    let some = *ids.iter().find(|c| !c.is_zero()).unwrap();
    let loc = dedup::Library::open(&lib_path).unwrap().store().locate(&some).unwrap().unwrap();
    // The index of a pack is lost to a bad sector: its chunks are missing, and verify says how to recover.
    tests::overwrite_stored(&lib_path, &loc.index, b"not an index any more");
    let out = livemount(&lib_path).args(["backup", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("MISSING") && text.contains("library repair"), "{text}");

    let out = livemount(&lib_path).args(["library", "repair", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = json(&out.stdout);
    assert_eq!(stats["indexes_rebuilt"], 1, "{stats}");
    assert!(stats["chunks_recovered"].as_u64().unwrap() > 0 && stats["chunks_damaged"] == 0, "{stats}");
    verify_clean(&lib_path);
    restore_and_compare(&lib_path, &id, &disk);
}

fn repair_drops_the_index_of_a_lost_pack_and_names_what_each_backup_lost(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let disk = big_random_image(dir.path(), "disk.img", 4, 7);
    let lib_path = new_library(backend, dir.path(), "64K");
    let id = backup(&lib_path, &[&disk])["id"].as_str().unwrap().to_string();
    let ids = chunk_ids(&lib_path, &id);
    let lib = dedup::Library::open(&lib_path).unwrap();
    let loc = lib.store().locate(&ids[0]).unwrap().unwrap();
    let in_that_pack: Vec<usize> =
        (0..ids.len()).filter(|&i| lib.store().locate(&ids[i]).unwrap().is_some_and(|l| l.pack == loc.pack)).collect();
    drop(lib);
    // The pack is lost (deleted by hand, a file system that lost it); its index still names its chunks.
    tests::remove_stored(&lib_path, &loc.pack);

    let out = livemount(&lib_path).args(["library", "repair", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "lost chunks are a failure: {}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out.stdout);
    assert_eq!(report["indexes_dropped"], 1, "{report}");
    assert!(!tests::stored_exists(&lib_path, &loc.index), "the index of the lost pack is removed");
    let lost = report["lost"].as_array().unwrap();
    assert_eq!(lost.len(), in_that_pack.len(), "every chunk of the lost pack is named: {report}");
    let chunk = 64 * 1024;
    for p in lost {
        let r = &p["affects"][0];
        assert_eq!(r["backup"], id.as_str());
        let start = r["start"].as_u64().unwrap();
        assert!(in_that_pack.contains(&((start / chunk) as usize)), "{p} was not in the lost pack");
        assert_eq!(r["end"].as_u64().unwrap() - start, chunk);
    }
    let text = stdout_of(livemount(&lib_path).args(["library", "repair"]));
    assert!(text.contains(&format!("backup {id} disk 0 bytes 0..{chunk}")), "{text}");

    // The disk is still there: a new backup of it stores the lost chunks again, and the old backup is whole.
    backup(&lib_path, &[&disk]);
    let again = json(&livemount(&lib_path).args(["library", "repair", "--json"]).output().unwrap().stdout);
    assert_eq!(again["lost"].as_array().unwrap().len(), 0, "{again}");
    verify_clean(&lib_path);
    restore_and_compare(&lib_path, &id, &disk);
}

fn stdout_of(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
}

/// Each test named runs on a library in a folder (`folder::NAME`) and on one in S3 on SeaweedFS (`s3::NAME`).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod folder {
            $(#[test] fn $name() { super::$name(super::Backend::Folder) })*
        }
        mod s3 {
            $(#[test] fn $name() { super::$name(super::Backend::S3) })*
        }
    };
}

on_both_backends!(
    backup_of_partitioned_ext4_restores_bit_identical,
    incremental_backup_stores_only_changed_chunks,
    qcow2_of_the_same_disk_gives_the_same_chunk_ids,
    verify_names_corrupt_and_missing_chunks_and_reads_fail_cleanly,
    kill_9_during_backup_leaves_a_clean_library_and_a_rerun_reuses_it,
    gc_while_backups_run_never_deletes_a_used_chunk,
    two_backups_at_once_both_succeed,
    concurrent_reads_of_a_backup_disk,
    repair_rebuilds_a_damaged_pack_index_from_the_pack,
    repair_drops_the_index_of_a_lost_pack_and_names_what_each_backup_lost
);

#[test]
fn bad_s3_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let lib = new_library(Backend::S3, dir.path(), "64K");
    let at = |url: &str| livemount(Path::new(url));

    let err = stderr_of(at("s3://no-such-bucket/lib").args(["library", "init"]));
    assert!(
        err.contains("s3://no-such-bucket/") && err.contains("NoSuchBucket") && err.contains("create the bucket"),
        "{err}"
    );
    let err = stderr_of(at("s3://backups/elsewhere").args(["backup", "list"]));
    assert!(err.contains("s3://backups/elsewhere") && err.contains("not a livemount library"), "{err}");
    let err = stderr_of(at("s3://Not_A_Bucket/lib").args(["backup", "list"]));
    assert!(err.contains("not a bucket name"), "{err}");
    let err = stderr_of(livemount(&lib).args(["library", "init"]));
    assert!(err.contains("already holds a library"), "{err}");
    let err = stderr_of(livemount(&lib).env("AWS_SECRET_ACCESS_KEY", "wrong").args(["backup", "list"]));
    assert!(err.contains("s3://backups/site-a/library/") && err.contains("credentials"), "{err}");
    // No store answers at all: the error says what could not be reached (after the SDK's retries).
    let err = stderr_of(livemount(&lib).env("AWS_ENDPOINT_URL", "http://127.0.0.1:9").args(["backup", "list"]));
    assert!(err.contains("s3://backups/site-a/library/"), "{err}");
}

/// The `.map` files of an S3 library's chunk maps on the machine whose cache is `cache`.
fn local_chunk_maps(cache: &Path) -> Vec<PathBuf> {
    let maps = cache.join("s3/backups/site-a/library/maps");
    let Ok(entries) = std::fs::read_dir(&maps) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "map")).collect()
}

/// A backup into an S3 library finds the chunks it can reuse in a chunk map on the machine's own disk, built
/// from the pack indexes, instead of holding every pack index of the library in memory. Maps are written
/// after a few hundred chunks here (`LIVEMOUNT_TEST_MERGE_AT`; 256 Ki chunks by default): a machine meeting the
/// library for the first time maps it, deduplicates through the map, and a map that covers packs gc removed
/// since is never believed.
#[test]
fn backups_into_an_s3_library_deduplicate_through_each_machines_chunk_map() {
    std::env::set_var("LIVEMOUNT_TEST_MERGE_AT", "200");
    let dir = tempfile::tempdir().unwrap();
    let lib = new_library(Backend::S3, dir.path(), "64K");
    let (cache_a, cache_b) = (dir.path().join("cache"), dir.path().join("cache-b"));
    let disk = big_random_image(dir.path(), "a.img", 48, 11);
    let first = backup(&lib, &[&disk]);
    assert_eq!(first["stats"]["chunks_new"], 768, "{first}");
    assert_eq!(local_chunk_maps(&cache_a).len(), 1, "the first machine maps what it wrote");

    // A second machine, new to the library: it maps it, and its backup of the disk with three chunks changed
    // stores those three only.
    std::env::set_var("LIVEMOUNT_CACHE", &cache_b);
    let mut data = std::fs::read(&disk).unwrap();
    for (n, chunk) in [5usize, 300, 700].iter().enumerate() {
        let at = chunk * 65536 + 100;
        data[at..at + 4096].copy_from_slice(&random_bytes(500 + n as u64, 4096));
    }
    std::fs::write(&disk, &data).unwrap();
    let inc = backup(&lib, &[&disk]);
    assert_eq!(inc["stats"]["chunks_new"], 3, "{inc}");
    assert_eq!(local_chunk_maps(&cache_b).len(), 1, "the second machine mapped the library");
    restore_and_compare(&lib, inc["id"].as_str().unwrap(), &disk);

    // Another disk backed up from the second machine (whose map then covers some of its packs), forgotten
    // and collected; backed up again from that machine, every chunk is stored again (never "reused" from a
    // pack that has gone), and the library verifies. The first machine then finds the new copies.
    let other = big_random_image(dir.path(), "b.img", 24, 12);
    let gone = backup(&lib, &[&other]);
    livemount(&lib).args(["backup", "forget", gone["id"].as_str().unwrap()]).assert().success();
    let out = livemount(&lib).args(["library", "gc", "--json"]).output().unwrap();
    assert!(out.status.success(), "gc failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out.stdout)["chunks_removed"], 384, "{}", String::from_utf8_lossy(&out.stdout));
    let again = backup(&lib, &[&other]);
    assert_eq!(again["stats"]["chunks_new"], 384, "{again}");
    verify_clean(&lib);
    restore_and_compare(&lib, again["id"].as_str().unwrap(), &other);
    std::env::set_var("LIVEMOUNT_CACHE", &cache_a);
    let from_a = backup(&lib, &[&other]);
    assert_eq!(from_a["stats"]["chunks_new"], 0, "{from_a}");
    restore_and_compare(&lib, from_a["id"].as_str().unwrap(), &other);
    std::fs::write(&disk, random_bytes(11, 48 << 20)).unwrap();
    restore_and_compare(&lib, first["id"].as_str().unwrap(), &disk);
}
