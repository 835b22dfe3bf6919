//! The Debian package as a user meets it. `packaging/build-deb.sh` builds it from the build the tests already
//! made; apt installs it into a clean Debian 12 (debootstrap minbase, in a chroot: no systemd runs there);
//! what the package promises is checked: the binary runs, the configuration is a conffile that parses, the
//! unit is installed and enabled, the man pages, completions and guest packages are there. Then
//! `apt-get remove` and `apt-get purge` must take all of that away, and leave the library (backups) and the
//! daemon's state where they were.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tests::{json, run, tests_dir};

/// The pristine minbase root, as a tarball kept between runs: debootstrap takes minutes, unpacking seconds.
const ROOT_CACHE: &str = "/var/cache/livemount/package-test";
const SUITE: &str = "bookworm";

fn repo() -> PathBuf {
    tests_dir().parent().expect("tests/ is in the repository").to_path_buf()
}

/// The mount points at or under `path` (field 5 of /proc/self/mountinfo, where a space is `\040`).
fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")))
        .filter(|p| p.starts_with(path))
        .collect()
}

/// A scratch folder that may get mounts under it (a chroot's /proc, debootstrap's own): dropped, it
/// unmounts them, deepest first, and removes the folder only when nothing is mounted there any more, so
/// that a removal never walks into a mounted file system.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(parent: &Path, prefix: &str) -> Scratch {
        std::fs::create_dir_all(parent).unwrap();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent).unwrap();
        Scratch { path: dir.keep() }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut points = mounts_under(&self.path);
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &points {
            let done = Command::new("umount").arg(p).status().is_ok_and(|s| s.success());
            if !done {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        let left = mounts_under(&self.path);
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            eprintln!("leaving {} in place: still mounted there: {left:?}", self.path.display());
        }
    }
}

/// Holds an exclusive flock on `path` while alive (two test processes must not debootstrap at once).
struct Lock {
    _file: std::fs::File,
}

impl Lock {
    fn take(path: &Path) -> Lock {
        let file = std::fs::File::create(path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0, "lock {}", path.display());
        Lock { _file: file }
    }
}

/// The tarball of a fresh `debootstrap --variant=minbase bookworm`, made on first use from the Debian mirror
/// this machine's apt uses.
fn pristine_root() -> PathBuf {
    let cache = Path::new(ROOT_CACHE);
    std::fs::create_dir_all(cache).unwrap();
    let _lock = Lock::take(&cache.join(".lock"));
    let tarball = cache.join(format!("{SUITE}-minbase.tar.zst"));
    if tarball.exists() {
        return tarball;
    }
    let mirror = run(&mut Command::new(repo().join("scripts/debian-mirror.sh"))).trim().to_string();
    let work = Scratch::new(cache, "debootstrap-");
    let root = work.path.join("root");
    let started = Instant::now();
    run(Command::new("debootstrap").args(["--variant=minbase", SUITE]).arg(&root).arg(&mirror));
    eprintln!("debootstrap {SUITE} minbase: {:.0?}", started.elapsed());
    // What debootstrap downloaded is in the tarball already: no need to keep it twice.
    let archives = root.join("var/cache/apt/archives");
    for entry in std::fs::read_dir(&archives).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let partial = cache.join(format!(".{SUITE}-minbase.tar.zst.partial"));
    run(Command::new("tar")
        .args(["--zstd", "--numeric-owner", "--xattrs", "-cpf"])
        .arg(&partial)
        .arg("-C")
        .arg(&root)
        .arg("."));
    std::fs::rename(&partial, &tarball).unwrap();
    tarball
}

/// A command run inside `root` with a clean environment (the test's own LIVEMOUNT_* must not leak in).
fn in_root(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// `dpkg-query`'s status of the livemount package in `root` ("" when dpkg knows nothing of it).
fn package_status(root: &Path) -> String {
    let out = in_root(root, &["dpkg-query", "-W", "-f=${Status}", "livemount"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[test]
fn the_package_installs_into_a_clean_debian_12_and_purge_keeps_the_library() {
    let started = Instant::now();
    let scratch = Scratch::new(&std::env::temp_dir(), "livemount-package-");
    let deb = tests::build_package(&scratch.path.join("out"));
    eprintln!("package {} built: {:.0?}", deb.display(), started.elapsed());

    let tarball = pristine_root();
    let root = scratch.path.join("root");
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar").args(["--zstd", "--numeric-owner", "--xattrs", "-xpf"]).arg(&tarball).arg("-C").arg(&root));
    // debootstrap made /dev's nodes (null, zero, random...) in the root, which is all apt and dpkg use, so
    // the host's /dev is not bound in. No /run/systemd/system in the root: as in a container, the
    // maintainer scripts enable the unit (symlinks) and start nothing.
    assert!(root.join("dev/null").exists(), "debootstrap left no /dev/null in the root");
    assert!(!root.join("run/systemd/system").exists());
    run(Command::new("mount").args(["-t", "proc", "proc"]).arg(root.join("proc")));
    std::fs::copy(&deb, root.join("tmp").join(deb.file_name().unwrap())).unwrap();
    eprintln!("clean root ready: {:.0?}", started.elapsed());

    // apt, as a user would; offline: the Depends must all be in minbase (Recommends are left out here, and
    // there are no package lists in the root to fetch them from).
    let in_tmp = format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());
    run(&mut in_root(&root, &["apt-get", "install", "-y", "--no-install-recommends", &in_tmp]));
    assert_eq!(package_status(&root), "install ok installed");
    eprintln!("installed: {:.0?}", started.elapsed());

    // The binary runs.
    let version = run(&mut in_root(&root, &["livemount", "--version"]));
    assert!(version.starts_with("livemount "), "livemount --version: {version:?}");

    // The configuration: a conffile that is TOML, with the packaged paths and the remote API off.
    let config = root.join("etc/livemount/livemount.toml");
    assert!(config.is_file(), "no {}", config.display());
    let conffiles = run(&mut in_root(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "livemount"]));
    assert!(conffiles.contains("/etc/livemount/livemount.toml"), "not a conffile: {conffiles:?}");
    let parsed = json(
        run(Command::new("python3")
            .args(["-c", "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))"])
            .arg(&config))
        .as_bytes(),
    );
    assert_eq!(parsed["library"], "/var/lib/livemount/library");
    assert_eq!(parsed["state_dir"], "/var/lib/livemount");
    assert_eq!(parsed["guest_packages"], "/usr/share/livemount/guest-packages");
    assert!(parsed.get("remote_api").is_none(), "the remote API must be off by default: {parsed}");
    // The daemon's own reader takes it too (it refuses unknown keys and bad values): `serve` reads the file
    // first and then stops at the missing /dev/fuse, which the root has none of, so nothing is served (and
    // in a network namespace of its own nothing could be).
    assert!(!root.join("dev/fuse").exists());
    let serve = Command::new("unshare")
        .args(["--net", "chroot"])
        .arg(&root)
        .args(["timeout", "60", "livemount", "serve", "--config", "/etc/livemount/livemount.toml"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&serve.stderr);
    assert!(
        !serve.status.success() && said.contains("/dev/fuse") && !said.contains("configuration"),
        "serve --config with the packaged file: {:?}, {said}",
        serve.status
    );

    // The unit: installed, pointing at the packaged binary and configuration, enabled by deb-systemd-helper.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/livemount.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/livemount serve --config /etc/livemount/livemount.toml\n"));
    let wants = root.join("etc/systemd/system/multi-user.target.wants/livemount.service");
    let link = std::fs::read_link(&wants).unwrap_or_else(|e| panic!("{} is no symlink: {e}", wants.display()));
    assert!(root.join(link.strip_prefix("/").unwrap()).is_file(), "{} -> {}: no unit", wants.display(), link.display());
    // deb-systemd-helper's own record of the symlinks it made, which purge reads to remove them.
    assert!(
        root.join("var/lib/systemd/deb-systemd-helper-enabled/livemount.service.dsh-also").is_file(),
        "deb-systemd-helper has no record of enabling livemount.service"
    );
    assert!(root.join("usr/lib/tmpfiles.d/livemount.conf").is_file());

    // Man pages (compressed, one per subcommand too) and completions for the three shells.
    for page in ["livemount.1.gz", "livemount-serve.1.gz", "livemount-mount.1.gz"] {
        let path = root.join("usr/share/man/man1").join(page);
        assert!(path.is_file(), "no man page {page}");
        let text = run(Command::new("zcat").arg(&path));
        assert!(text.contains(".TH"), "{page} is no man page: {}", &text[..text.len().min(200)]);
    }
    for completion in [
        "usr/share/bash-completion/completions/livemount",
        "usr/share/zsh/vendor-completions/_livemount",
        "usr/share/fish/vendor_completions.d/livemount.fish",
    ] {
        let text = std::fs::read_to_string(root.join(completion)).unwrap_or_default();
        assert!(text.contains("livemount"), "{completion} is missing or empty");
    }
    assert!(root.join("usr/share/doc/livemount/README.md").is_file());

    // The guest packages: Debian packages, open-iscsi and its library among them.
    let guest = root.join("usr/share/livemount/guest-packages/debian-12");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&guest).unwrap_or_else(|e| panic!("{}: {e}", guest.display())).flatten() {
        names.push(run(Command::new("dpkg-deb").args(["-f"]).arg(entry.path()).arg("Package")).trim().to_string());
    }
    for wanted in ["open-iscsi", "libopeniscsiusr"] {
        assert!(names.iter().any(|n| n == wanted), "no {wanted} among the guest packages {names:?}");
    }

    // The user's data: the default library, which the install made ready for backups, the daemon's state,
    // and the chunk cache.
    let library_json = root.join("var/lib/livemount/library/library.json");
    let library_before = std::fs::read(&library_json).unwrap_or_else(|e| panic!("install made no library: {e}"));
    run(&mut in_root(&root, &["livemount", "--library", "/var/lib/livemount/library", "library", "stats"]));
    let state = root.join("var/lib/livemount/mounts/state-of-a-mount.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, b"{}").unwrap();
    let chunks = root.join("var/cache/livemount/chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    std::fs::write(chunks.join("a-chunk"), b"chunk").unwrap();

    // Remove: the program goes, the configuration stays (dpkg's way), the unit is masked.
    run(&mut in_root(&root, &["apt-get", "remove", "-y", "livemount"]));
    assert_eq!(package_status(&root), "deinstall ok config-files");
    assert!(!exists(&root.join("usr/bin/livemount")), "remove left the binary");
    assert!(config.is_file(), "remove took the configuration (only purge may)");

    // Purge: everything of the package goes, the library and the state stay.
    run(&mut in_root(&root, &["apt-get", "purge", "-y", "livemount"]));
    assert_eq!(package_status(&root), "", "dpkg still knows the package after purge");
    for gone in [
        "usr/bin/livemount",
        "etc/livemount",
        "usr/lib/systemd/system/livemount.service",
        "etc/systemd/system/multi-user.target.wants/livemount.service",
        "etc/systemd/system/livemount.service",
        "usr/lib/tmpfiles.d/livemount.conf",
        "usr/share/livemount",
        "usr/share/man/man1/livemount.1.gz",
        "usr/share/bash-completion/completions/livemount",
        "usr/share/doc/livemount",
        "var/cache/livemount/chunks",
    ] {
        assert!(!exists(&root.join(gone)), "purge left /{gone}");
    }
    let library_after = std::fs::read(&library_json).unwrap_or_else(|e| panic!("purge took the library: {e}"));
    assert_eq!(library_after, library_before, "purge changed the library");
    assert!(state.is_file(), "purge took the daemon's state");
    eprintln!("removed and purged: {:.0?}", started.elapsed());
}
