//! The pseudo-disk through the daemon and its FUSE file view, against a real library backup: the file is
//! the backup, writes land in the private store and never in the backup, the state survives restarts and
//! crashes, and browse gives file-level access.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::strategy::Strategy;

use tests::{json, livemount, make_ext4_disk, populate_tree, punch_hole, random_bytes, Backend, Daemon};

struct Setup {
    // Dropped in this order: the daemon before the library's store, the folder last.
    daemon: Daemon,
    _lib: tests::TestLib,
    _dir: tempfile::TempDir,
    dir: PathBuf,
    disk: PathBuf,
    tree: PathBuf,
    backup: String,
}

fn setup(disk_mib: u64, chunk: &str) -> Setup {
    setup_on(Backend::Folder, disk_mib, chunk)
}

fn setup_on(backend: Backend, disk_mib: u64, chunk: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tree = dir.join("tree");
    populate_tree(&tree, 31, 5);
    let disk = make_ext4_disk(&dir, "disk.img", &tree, disk_mib);
    let lib = tests::new_library(backend, &dir, chunk);
    let out = livemount(&lib).args(["backup", "create", "--json"]).arg(&disk).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backup = json(&out.stdout)["id"].as_str().unwrap().to_string();
    let daemon = Daemon::start(&dir, &lib);
    Setup { daemon, _lib: lib, _dir: tmp, dir, disk, tree, backup }
}

fn mount(d: &Daemon, backup: &str, extra: &[&str]) -> serde_json::Value {
    let out = d.cli().args(["mount", backup, "--json"]).args(extra).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    json(&out.stdout)
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn verify_and_restore_identical(s: &Setup) {
    tests::verify_and_restore_identical(&s.daemon.library, &s.backup, &s.disk, &s.dir);
}

#[test]
fn mount_read_write_browse_unmount_through_the_daemon() {
    mount_read_write_browse_unmount(Backend::Folder);
}

/// The same with the library in S3 (a SeaweedFS cluster): the daemon reads chunks with ranged GETs.
#[test]
fn mount_read_write_browse_unmount_of_a_backup_in_s3() {
    mount_read_write_browse_unmount(Backend::S3);
}

fn mount_read_write_browse_unmount(backend: Backend) {
    let s = setup_on(backend, 48, "64K");
    let d = &s.daemon;
    let original = std::fs::read(&s.disk).unwrap();

    // The read-only view of the backup, straight from the library.
    let backup_file = d.fuse_root().join("backups").join(&s.backup).join("disk0.img");
    let read = std::fs::read(&backup_file).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(read == original);
    let meta = std::fs::metadata(&backup_file).unwrap();
    assert_eq!(meta.len(), 48 << 20);
    assert!(meta.permissions().readonly());
    assert!(OpenOptions::new().write(true).open(&backup_file).is_err(), "the backup's file is read-only");

    // A mount: the same bytes, writable.
    let m = mount(d, &s.backup, &["--name", "e2e"]);
    let id = m["id"].as_str().unwrap().to_string();
    let path = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    assert!(std::fs::read(&path).unwrap() == original, "the mount's file is the backup, bit for bit");
    let f = open_rw(&path);
    let data = random_bytes(5, 300_000);
    f.write_all_at(&data, 12_345_678).unwrap();
    f.sync_data().unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 12_345_678).unwrap();
    assert!(back == data);
    assert!(f.write_all_at(b"x", 48 << 20).is_err(), "a disk does not grow");
    drop(f);

    let list = json(&d.cli().args(["mounts", "--json"]).output().unwrap().stdout);
    let c = &list[0]["disks"][0]["counters"];
    assert!(c["bytes_written"].as_u64().unwrap() >= 300_000, "{c}");
    assert!(c["private_blocks"].as_u64().unwrap() >= 300_000 / 4096, "{c}");

    // Browse: the backup's ext4 mounted read-only; a file compares equal to the original.
    let out = d.cli().args(["browse", &s.backup, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let b = json(&out.stdout);
    let browse_id = b["id"].as_str().unwrap().to_string();
    let fs = &b["browse"]["filesystems"][0];
    assert_eq!(fs["fstype"], "ext4");
    let root = PathBuf::from(fs["path"].as_str().unwrap());
    for rel in ["etc/hostname", "etc/app/config.txt", "var/data/blob3.bin"] {
        assert!(std::fs::read(root.join(rel)).unwrap() == std::fs::read(s.tree.join(rel)).unwrap(), "{rel}");
    }
    let out = d.cli().args(["unmount", &browse_id]).output().unwrap();
    assert!(!out.status.success(), "a browsed mount is not removed from under its file systems");
    d.cli().args(["unbrowse", &browse_id]).assert().success();
    assert!(!root.exists() || std::fs::read_dir(&root).map(|mut r| r.next().is_none()).unwrap_or(true));

    // The mounted backup cannot be forgotten from under the mount.
    let out = d.cli().args(["backup", "forget", &s.backup]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("live mount {id} (e2e)")), "{err}");

    // Unmount: stores and files gone, the hold released; the backup verifies and restores identical.
    d.cli().args(["unmount", "e2e"]).assert().success();
    let lib = dedup::Library::open(&d.library).unwrap();
    assert_eq!(lib.holds_of(&s.backup).unwrap(), Vec::<String>::new(), "unmount releases the backup");
    assert!(!d.state_dir().join("mounts").join(&id).exists(), "the mount's stores are deleted");
    assert!(!path.exists());
    let list = json(&d.cli().args(["mounts", "--json"]).output().unwrap().stdout);
    assert_eq!(list.as_array().unwrap().len(), 0);
    verify_and_restore_identical(&s);
}

#[test]
fn browsing_one_file_recalls_only_what_it_needs() {
    let s = setup(96, "64K");
    let d = &s.daemon;
    let out = d.cli().args(["browse", &s.backup, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let b = json(&out.stdout);
    let root = PathBuf::from(b["browse"]["filesystems"][0]["path"].as_str().unwrap());
    assert!(std::fs::read(root.join("etc/hostname")).unwrap() == std::fs::read(s.tree.join("etc/hostname")).unwrap());
    let info = json(&d.cli().args(["mounts", "--json"]).output().unwrap().stdout);
    let c = &info[0]["disks"][0]["counters"];
    let (recalled, total) = (c["recalled_chunks"].as_u64().unwrap(), c["chunks_total"].as_u64().unwrap());
    assert!(recalled * 10 < total, "reading one small file recalled {recalled} of {total} chunks");
    d.cli().args(["unbrowse", b["id"].as_str().unwrap()]).assert().success();
}

#[test]
fn many_o_direct_reads_in_flight_through_the_file_view_read_back_the_backup() {
    // QEMU's native AIO submits 16 O_DIRECT reads at a time (io_submit): with asynchronous direct I/O the
    // kernel hands them to the daemon together, each answered as its chunk arrives, in any order.
    let s = setup(64, "64K");
    let m = mount(&s.daemon, &s.backup, &["--read-only"]);
    let file = m["disks"][0]["fuse_path"].as_str().unwrap();
    let copy = s.dir.join("copy.img");
    let source = format!("driver=raw,file.driver=file,file.filename={file},file.aio=native,file.cache.direct=on");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-m", "16", "-W", "--image-opts", &source, "-O", "raw"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.daemon.log());
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&s.disk).unwrap(), "the file view reads back as the disk");
}

/// One step of the file-view model test: its kind (0..100, as a percentage split) and the numbers its
/// range is made of.
#[derive(Clone, Debug)]
struct Step {
    op: u64,
    off: u64,
    len: u64,
    aligned: bool,
}

/// Restarts of the daemon among `ops`.
fn restarts_of(ops: &[Step]) -> usize {
    ops.iter().filter(|s| s.op >= 98).count()
}

fn random_operations_through_the_file_view(ops: &[Step]) {
    let mut s = setup(24, "64K");
    let m = mount(&s.daemon, &s.backup, &[]);
    let path = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let mut model = std::fs::read(&s.disk).unwrap();
    let size = model.len() as u64;
    let mut f = open_rw(&path);
    let mut restarts = 0;
    for (step, st) in ops.iter().enumerate() {
        let step = step as u64;
        let off = st.off % size;
        let len = st.len % (size - off).min(200_000) + 1;
        match st.op {
            0..=39 => {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, off).unwrap();
                assert!(buf[..] == model[off as usize..(off + len) as usize], "step {step}: read {off}+{len}");
            }
            40..=74 => {
                let (off, len) = if st.aligned { (off / 4096 * 4096, (len / 4096).max(1) * 4096) } else { (off, len) };
                let len = len.min(size - off);
                let data = random_bytes(step, len as usize);
                f.write_all_at(&data, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            75..=84 => {
                punch_hole(&f, off, len);
                model[off as usize..(off + len) as usize].fill(0);
            }
            85..=97 => f.sync_data().unwrap(),
            _ => {
                drop(f);
                s.daemon.restart();
                restarts += 1;
                f = open_rw(&path);
            }
        }
    }
    assert!(restarts >= 20, "{restarts} restarts");
    assert!(std::fs::read(&path).unwrap() == model);
    drop(f);
    s.daemon.cli().args(["unmount", m["id"].as_str().unwrap()]).assert().success();
    verify_and_restore_identical(&s);
}

proptest::proptest! {
    // One run of up to 2500 steps (each case starts a daemon over a new backup); a failure shrinks to the
    // shortest sequence that still fails.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1))]

    #[test]
    fn random_operations_through_the_file_view_match_a_model_across_restarts(
        ops in proptest::collection::vec(
            (0..100u64, proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), proptest::prelude::any::<bool>())
                .prop_map(|(op, off, len, aligned)| Step { op, off, len, aligned }),
            1..=2500,
        )
    ) {
        // Only sequences that restart the daemon often enough are run (and shrunk to).
        proptest::prop_assume!(restarts_of(&ops) >= 20);
        random_operations_through_the_file_view(&ops);
    }
}

#[test]
fn flushed_writes_survive_kill_9_of_the_daemon() {
    let mut s = setup(24, "64K");
    let m = mount(&s.daemon, &s.backup, &[]);
    let path = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let mut expected = std::fs::read(&s.disk).unwrap();
    const SLOT: usize = 65536;
    let slots = expected.len() / SLOT;
    let mut total_acked = 0;
    for round in 0..10u64 {
        let f = open_rw(&path);
        // The writer: writes a slot, fsyncs every fourth write; reports what an fsync acknowledged and
        // what was written after the last acknowledgement.
        let writer = {
            let f = f.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut acked: Vec<(usize, Vec<u8>)> = Vec::new();
                let mut pending: Vec<(usize, Vec<u8>)> = Vec::new();
                for k in 0..100_000u64 {
                    let slot = ((round * 7919 + k * 104_729) % slots as u64) as usize;
                    let data = random_bytes(round * 1_000_000 + k, SLOT);
                    // A write cut off by the kill may still land: it counts as pending from the start.
                    pending.push((slot, data.clone()));
                    if f.write_all_at(&data, (slot * SLOT) as u64).is_err() {
                        break;
                    }
                    if k % 4 == 3 {
                        if f.sync_data().is_err() {
                            break;
                        }
                        acked.append(&mut pending);
                    }
                }
                (acked, pending)
            })
        };
        std::thread::sleep(Duration::from_millis(150 + round * 37));
        s.daemon.kill9();
        let (acked, pending) = writer.join().unwrap();
        drop(f);
        assert!(!acked.is_empty(), "round {round}: the writer got acknowledgements before the kill");
        total_acked += acked.len();
        let before = expected.clone();
        for (slot, data) in &acked {
            expected[slot * SLOT..(slot + 1) * SLOT].copy_from_slice(data);
        }
        s.daemon.restart();
        let now = std::fs::read(&path).unwrap();
        for slot in 0..slots {
            let got = &now[slot * SLOT..(slot + 1) * SLOT];
            let want = &expected[slot * SLOT..(slot + 1) * SLOT];
            if got == want {
                continue;
            }
            // Unacknowledged writes may or may not have landed, block by block.
            let candidates: Vec<&Vec<u8>> = pending.iter().filter(|(s2, _)| *s2 == slot).map(|(_, d)| d).collect();
            for b in 0..SLOT / 4096 {
                let r = b * 4096..(b + 1) * 4096;
                let ok = got[r.clone()] == want[r.clone()] || candidates.iter().any(|c| got[r.clone()] == c[r.clone()]);
                assert!(ok, "round {round}: slot {slot} block {b} holds data that was neither flushed nor written");
            }
            // Adopt what is there now as the new expectation for unacknowledged slots.
            expected[slot * SLOT..(slot + 1) * SLOT].copy_from_slice(got);
        }
        let _ = before;
    }
    assert!(total_acked > 40, "{total_acked} acknowledged writes were checked");
    s.daemon.cli().args(["unmount", m["id"].as_str().unwrap()]).assert().success();
    verify_and_restore_identical(&s);
}

#[test]
fn a_missing_chunk_fails_reads_with_eio_and_the_log_names_it() {
    let s = setup(24, "64K");
    let lib = dedup::Library::open(&s.daemon.library).unwrap();
    let m = lib.resolve(&s.backup).unwrap();
    let index = lib.load_index(&m, 0).unwrap();
    let mut stored = Vec::new();
    index
        .for_each(|i, e| {
            if !e.id.is_zero() {
                stored.push((i as usize, e.id));
            }
            Ok(())
        })
        .unwrap();
    let (i, gone) = stored[30];
    tests::remove_chunk(&s.daemon.library, &gone);
    let info = mount(&s.daemon, &s.backup, &[]);
    let path = PathBuf::from(info["disks"][0]["fuse_path"].as_str().unwrap());
    let f = File::open(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = f.read_exact_at(&mut buf, i as u64 * 65536).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    f.read_exact_at(&mut buf, 0).unwrap();
    let log = s.daemon.log();
    assert!(log.contains(&gone.to_hex()) && log.contains(&s.backup), "the log names the chunk and the backup: {log}");
}
