//! Helpers for the end-to-end tests in `tests/`: the `livemount` binary, disk images built with the same
//! tools people use (sfdisk, mkfs.ext4 -d), and deterministic test data.

pub mod aws;
pub mod fleet;
pub mod guest;
pub mod initiator;
pub mod relay;
pub mod seaweed;

use std::path::{Path, PathBuf};
use std::process::Command;

/// This crate's folder (`tests/`), where the fixtures and the AWS stand-in are. Taken at run time (cargo and
/// nextest set it for every test): a test binary built from another checkout of the project that cargo
/// takes as fresh (a target folder shared with CI's clone) must still find this checkout's files.
pub fn tests_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The `livemount` binary that cargo built beside the test executable.
pub fn livemount_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let bin = dir.join("livemount");
    assert!(bin.exists(), "{} is missing: build the workspace (cargo build --workspace) first", bin.display());
    bin
}

/// The Debian package of the binary this test run was built with (the debug build in CI), built into `out`
/// by `packaging/build-deb.sh`.
pub fn build_package(out: &Path) -> PathBuf {
    let bin = livemount_bin();
    let profile_dir = bin.parent().unwrap();
    let target = profile_dir.parent().unwrap();
    let profile = if profile_dir.ends_with("release") { "release" } else { "dev" };
    let repo = tests_dir().parent().expect("tests/ is in the repository").to_path_buf();
    let stdout = run(Command::new(repo.join("packaging/build-deb.sh"))
        .args(["--profile", profile, "--no-build"])
        .arg(out)
        .env("CARGO_TARGET_DIR", target));
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "build-deb.sh printed {stdout:?}, not a package");
    deb
}

/// `livemount --library LIB` ready for more arguments.
pub fn livemount(lib: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(livemount_bin());
    c.arg("--library").arg(lib);
    c
}

/// Where a test's library is.
#[derive(Clone, Copy)]
pub enum Backend {
    Folder,
    /// A bucket of a SeaweedFS cluster of this test's own (master, three volume servers, filer with S3).
    S3,
}

/// A test's library: its location (a folder or `s3://…`) and what serves it.
pub struct TestLib {
    pub location: PathBuf,
    pub store: Option<seaweed::SeaweedFs>,
}

impl std::ops::Deref for TestLib {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.location
    }
}

impl AsRef<std::ffi::OsStr> for TestLib {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.location.as_os_str()
    }
}

/// A new library with the chunk size given, in a temporary folder or in S3. For S3 the test process's own
/// environment aims the AWS SDK at the cluster (the commands it runs inherit it; nextest runs every test in
/// a process of its own).
pub fn new_library(backend: Backend, dir: &Path, chunk_size: &str) -> TestLib {
    let (location, store) = match backend {
        Backend::Folder => (dir.join("library"), None),
        Backend::S3 => {
            let store = seaweed::SeaweedFs::start();
            store.create_bucket("backups");
            for (k, v) in store.env() {
                std::env::set_var(k, v);
            }
            std::env::set_var("LIVEMOUNT_CACHE", dir.join("cache"));
            (PathBuf::from("s3://backups/site-a/library"), Some(store))
        }
    };
    livemount(&location).args(["library", "init", "--chunk-size", chunk_size]).assert().success();
    TestLib { location, store }
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible like real media files.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible text, different for each seed.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i} of file {seed}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Fills a folder with a small tree of files: text, binary and a nested folder.
pub fn populate_tree(root: &Path, seed: u64, random_mib: usize) {
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::create_dir_all(root.join("var/data")).unwrap();
    std::fs::write(root.join("etc/hostname"), format!("guest-{seed}\n")).unwrap();
    std::fs::write(root.join("etc/app/config.txt"), text_bytes(seed, 200_000)).unwrap();
    for i in 0..random_mib {
        std::fs::write(root.join(format!("var/data/blob{i}.bin")), random_bytes(seed * 1000 + i as u64, 1 << 20))
            .unwrap();
    }
}

/// Builds a GPT-partitioned disk image of `disk_mib` MiB with one ext4 partition starting at 1 MiB whose
/// contents come from `tree` (mkfs.ext4 -d). Returns the image path.
pub fn make_ext4_disk(dir: &Path, name: &str, tree: &Path, disk_mib: u64) -> PathBuf {
    let disk = dir.join(name);
    let part = dir.join(format!("{name}.part"));
    let part_mib = disk_mib - 2;
    std::fs::File::create(&disk).unwrap().set_len(disk_mib << 20).unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.arg("--quiet").arg(&disk).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = sfdisk.spawn().expect("sfdisk (package fdisk) is installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            "label: gpt\nstart=2048, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root",
            part_mib * 2048
        )
        .unwrap();
    }
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(&part)
        .arg(format!("{part_mib}M")));
    run(Command::new("dd").arg(format!("if={}", part.display())).arg(format!("of={}", disk.display())).args([
        "bs=1M",
        "seek=1",
        "conv=notrunc,sparse",
        "status=none",
    ]));
    std::fs::remove_file(&part).unwrap();
    disk
}

/// Parses a command's JSON output.
pub fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// Runs a curl command made with `-w "\n%{http_code}"`: (HTTP status, body).
pub fn curl_answer(c: &mut Command) -> (u16, String) {
    let out = c.output().expect("curl is installed");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("the status after the body");
    (code.trim().parse().expect("an HTTP status"), body.to_string())
}

/// GET `path` of a daemon's remote API at `addr` with curl (a TLS client of its own), trusting the daemon's
/// self-signed certificate, with `token` when given: (HTTP status, body).
pub fn remote_get(daemon: &Daemon, addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "--cacert"])
        .arg(daemon.state_dir().join("tls/cert.pem"))
        .arg(format!("https://{addr}{path}"));
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    curl_answer(&mut c)
}

/// A `livemount serve` daemon in a test folder (its own state, FUSE root and API socket), stopped with
/// SIGTERM when dropped.
pub struct Daemon {
    pub dir: PathBuf,
    pub library: PathBuf,
    extra: Vec<String>,
    /// Environment of the daemon process (e.g. where AWS is).
    pub env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl Daemon {
    pub fn start(dir: &Path, library: &Path) -> Daemon {
        Self::start_with(dir, library, &[])
    }

    /// Starts the daemon with more `serve` options (e.g. `--advertise 10.0.2.2` for QEMU guests).
    pub fn start_with(dir: &Path, library: &Path, extra: &[&str]) -> Daemon {
        Self::start_env(dir, library, extra, &[])
    }

    /// Starts the daemon with more `serve` options and environment variables.
    pub fn start_env(dir: &Path, library: &Path, extra: &[&str], env: &[(String, String)]) -> Daemon {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut d =
            Daemon { dir: dir.to_path_buf(), library: library.to_path_buf(), extra, env: env.to_vec(), child: None };
        d.restart();
        d
    }

    pub fn fuse_root(&self) -> PathBuf {
        self.dir.join("fs")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn api(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// `livemount` aimed at this daemon and its library, with the daemon's environment.
    pub fn cli(&self) -> assert_cmd::Command {
        let mut c = livemount(&self.library);
        c.arg("--api").arg(self.api()).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Starts the daemon (again) and waits until its API answers.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        let child = Command::new(livemount_bin())
            .arg("--library")
            .arg(&self.library)
            .arg("--api")
            .arg(self.api())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--fuse-root")
            .arg(self.fuse_root())
            .arg("--portal")
            .arg("127.0.0.1:0")
            .arg("--http")
            .arg("127.0.0.1:0")
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("livemount serve starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ok = self.api().exists()
                && self.cli().args(["mounts", "--json"]).output().map(|o| o.status.success()).unwrap_or(false);
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({status}): {}", self.log());
            }
            assert!(std::time::Instant::now() < deadline, "the daemon did not come up: {}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stops the daemon cleanly (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the daemon did not stop on SIGTERM: {}", self.log());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // A crashed daemon leaves its FUSE mount behind; detach it so the test folder can go.
        let _ = Command::new("umount").arg("-l").arg(self.fuse_root()).status();
    }
}

/// Checks what every live-mount test ends with: the backup still verifies and restores bit-identical to the
/// disk it was made from (serving it never wrote to it).
pub fn verify_and_restore_identical(library: &Path, backup: &str, original: &Path, scratch: &Path) {
    livemount(library).args(["backup", "verify", backup]).assert().success();
    let restored = scratch.join("restored.img");
    livemount(library).args(["backup", "restore", backup]).arg(&restored).assert().success();
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(original).unwrap(), "the backup is unchanged");
}

/// Damages one stored chunk of a library as a failing disk would: one bit flipped in the middle of its
/// encoded bytes in its pack.
pub fn corrupt_chunk(library: &Path, id: &dedup::ChunkId) {
    use std::os::unix::fs::FileExt;
    let lib = dedup::Library::open(library).unwrap();
    let loc = lib.store().locate(id).unwrap().expect("the chunk is stored");
    let at = loc.offset + u64::from(loc.len) / 2;
    if let Some((objects, pack)) = s3_object(library, &loc.pack) {
        let mut data = objects.get(&pack).unwrap().expect("the pack object exists");
        data[at as usize] ^= 0x10;
        objects.put(&pack, data).unwrap();
        return;
    }
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&loc.pack).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

/// For a library in S3: a client of its bucket and the name (under the library's prefix) of the object that
/// `url` (as `ChunkLocation` gives it) is.
pub fn s3_object(library: &Path, url: &Path) -> Option<(dedup::s3::S3Objects, String)> {
    let lib_url = dedup::s3::S3Url::parse(library.to_str()?)?.unwrap();
    let name = url.to_str()?.strip_prefix(&lib_url.object_url(""))?.to_string();
    Some((dedup::s3::S3Objects::connect(&lib_url).unwrap(), name))
}

/// Makes one chunk go missing from a library: its entry leaves the index of its pack (the index is written
/// again with a valid checksum, so only that chunk is lost).
pub fn remove_chunk(library: &Path, id: &dedup::ChunkId) {
    use dedup::store::pack_format::PackIndex;
    let lib = dedup::Library::open(library).unwrap();
    let loc = lib.store().locate(id).unwrap().expect("the chunk is stored");
    let record = (loc.offset - 32) as usize..(loc.offset + u64::from(loc.len)) as usize;
    if let (Some((objects, index_name)), Some((_, pack_name))) =
        (s3_object(library, &loc.index), s3_object(library, &loc.pack))
    {
        let data = objects.get(&index_name).unwrap().unwrap();
        let mut index = PackIndex::decode(&loc.index, &data).unwrap();
        index.entries.retain(|e| e.id != *id);
        objects.put(&index_name, index.encode()).unwrap();
        let mut pack = objects.get(&pack_name).unwrap().unwrap();
        pack[record].fill(0);
        objects.put(&pack_name, pack).unwrap();
        return;
    }
    let mut index = PackIndex::read(&loc.index).unwrap();
    index.entries.retain(|e| e.id != *id);
    std::fs::write(&loc.index, index.encode()).unwrap();
    // The record goes from the pack too: a backup's index knows where it was and would read it there.
    use std::os::unix::fs::FileExt;
    let pack = std::fs::OpenOptions::new().write(true).open(&loc.pack).unwrap();
    pack.write_all_at(&vec![0u8; record.len()], record.start as u64).unwrap();
}

/// Replaces a file of a library in a folder, or an object of one in S3 (`path` as `ChunkLocation` names it).
pub fn overwrite_stored(library: &Path, path: &Path, data: &[u8]) {
    match s3_object(library, path) {
        Some((objects, name)) => objects.put(&name, data.to_vec()).unwrap(),
        None => std::fs::write(path, data).unwrap(),
    }
}

/// Removes a file of a library in a folder, or an object of one in S3.
pub fn remove_stored(library: &Path, path: &Path) {
    match s3_object(library, path) {
        Some((objects, name)) => objects.delete(&name).unwrap(),
        None => std::fs::remove_file(path).unwrap(),
    }
}

/// Whether a file of a library in a folder, or an object of one in S3, exists.
pub fn stored_exists(library: &Path, path: &Path) -> bool {
    match s3_object(library, path) {
        Some((objects, name)) => objects.get(&name).unwrap().is_some(),
        None => path.exists(),
    }
}

/// How many distinct chunks a library holds.
pub fn stored_chunk_count(library: &Path) -> usize {
    let lib = dedup::Library::open(library).unwrap();
    let ids: std::collections::HashSet<_> = lib.store().list().unwrap().into_iter().map(|c| c.id).collect();
    ids.len()
}

/// Discards `len` bytes at `offset` of an open file (FALLOC_FL_PUNCH_HOLE, size kept), as a guest's TRIM
/// reaches a live mount's FUSE file.
pub fn punch_hole(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    assert_eq!(r, 0, "punch hole: {}", std::io::Error::last_os_error());
}
