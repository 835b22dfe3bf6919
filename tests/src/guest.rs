//! The bootable Debian guest of the boot tests (built from Debian packages on first use and cached), and
//! QEMU runs that collect the serial console.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{json, livemount, run, Daemon};

const GUEST_CACHE: &str = "/var/cache/livemount-guest";

/// The guest prints this on its serial console once it runs from the iSCSI disk.
pub const BOOT_MARKER: &str = "LIVEMOUNT-BOOT-MARKER";

fn fixtures() -> PathBuf {
    crate::tests_dir().join("fixtures")
}

/// The cached guest image and the folder of guest packages (open-iscsi for Debian 12) the daemon takes.
pub fn guest_image_and_packages() -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(GUEST_CACHE).unwrap();
    // Tests that need the guest start together in several processes: one builds, the others wait for it
    // (two debootstraps at once share, and fight over, the package cache). The lock goes with the file.
    let lock = std::fs::File::create(Path::new(GUEST_CACHE).join(".build.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "lock {GUEST_CACHE}/.build.lock");
    let image = Path::new(GUEST_CACHE).join("bookworm.img");
    run(Command::new(fixtures().join("make-guest-image.sh")).arg(&image));
    let debs = Path::new(GUEST_CACHE).join("guest-packages/debian-12");
    if !debs.join(".complete").exists() {
        std::fs::create_dir_all(&debs).unwrap();
        run(Command::new(fixtures().join("fetch-open-iscsi-debs.sh")).arg(&debs));
        std::fs::write(debs.join(".complete"), b"").unwrap();
    }
    (image, debs.parent().unwrap().to_path_buf())
}

/// Reads a file from the guest's ext4 root (partition at 1 MiB) in a disk image file, without mounting.
pub fn read_guest_file(disk: &Path, path: &str) -> String {
    let dev = run(Command::new("losetup").args(["--find", "--show", "--read-only", "--offset", "1048576"]).arg(disk));
    let dev = dev.trim().to_string();
    let out = Command::new("debugfs").args(["-R", &format!("cat {path}")]).arg(&dev).output().unwrap();
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a QEMU run printed on its serial console, and how long it ran.
pub struct ConsoleRun {
    pub console: String,
    pub elapsed: Duration,
}

impl ConsoleRun {
    /// The line with the guest's boot marker.
    pub fn marker(&self) -> Option<String> {
        self.console.lines().find(|l| l.contains(BOOT_MARKER)).map(str::to_string)
    }

    /// The last `n` characters of the console, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let chars: Vec<char> = self.console.chars().collect();
        chars[chars.len().saturating_sub(n)..].iter().collect()
    }
}

/// Runs `qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot ARGS` until it exits (the guest
/// powers off) or `deadline` passes, and gives its console.
pub fn run_qemu(args: &[String], deadline: Duration) -> ConsoleRun {
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (qemu-system-x86 from bookworm-backports) is installed");
    let mut stdout = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    loop {
        if qemu.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > deadline {
            let _ = qemu.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = qemu.wait();
    let console = reader.join().unwrap();
    ConsoleRun { console, elapsed: started.elapsed() }
}

/// A fresh library in `dir` holding one backup (named "guest") of the cached guest image; gives the
/// library, the backup id, the guest image and the guest packages' folder.
pub fn guest_backup(dir: &Path) -> (PathBuf, String, PathBuf, PathBuf) {
    let (guest, packages) = guest_image_and_packages();
    let lib = dir.join("library");
    crate::livemount(&lib).args(["library", "init"]).assert().success();
    let out =
        crate::livemount(&lib).args(["backup", "create", "--json", "--name", "guest"]).arg(&guest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let backup = crate::json(&out.stdout)["id"].as_str().unwrap().to_string();
    (lib, backup, guest, packages)
}

/// What a guest booted through the appliance left: the mount's first FUSE file (its disk as the guest
/// left it) and the QEMU run.
pub struct BootedMount {
    pub mount_id: String,
    pub fuse_file: PathBuf,
    pub run: ConsoleRun,
}

/// The MAC address of the QEMU machine the boot tests start.
pub const MAC: &str = "52:54:00:4c:4d:01";

/// Mounts `source` with `--boot` (plus `extra` mount options) for the QEMU machine of `boot_in_qemu`;
/// gives the mount as `mount --json` shows it.
pub fn boot_mount(daemon: &Daemon, source: &str, extra: &[&str]) -> serde_json::Value {
    let out = daemon.cli().args(["mount", source, "--boot", "--mac", MAC, "--json"]).args(extra).output().unwrap();
    assert!(out.status.success(), "mount --boot: {}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let m = json(&out.stdout);
    assert!(m["boot"]["changes"].to_string().contains("installed open-iscsi"), "{}", m["boot"]);
    m
}

/// Mounts `source` with `--boot` and boots it in QEMU (`boot_in_qemu`).
pub fn boot_mount_in_qemu(daemon: &Daemon, library: &Path, source: &str, extra: &[&str], dir: &Path) -> BootedMount {
    let m = boot_mount(daemon, source, extra);
    boot_in_qemu(daemon, library, &m, dir)
}

/// Checks the iPXE scripts the appliance publishes for boot mount `m` and boots QEMU from a boot disk made
/// by `livemount image ipxe-disk`, as a machine on premises would: iPXE fetches the entry script, chains to
/// the mount's script and sanboots from the iSCSI target. The guest must reach its marker with its root
/// file system on iSCSI, after the initramfs logged in again from the iBFT. The daemon must advertise
/// 10.0.2.2 (the host as QEMU's user network sees it).
pub fn boot_in_qemu(daemon: &Daemon, library: &Path, m: &serde_json::Value, dir: &Path) -> BootedMount {
    let mac = MAC;
    let boot = &m["boot"];
    let script_url = boot["script_url"].as_str().unwrap();
    let entry_url = boot["entry_url"].as_str().unwrap();

    // The scripts as iPXE will fetch them (the host sees the HTTP server on 127.0.0.1).
    let local = |url: &str| url.replace("10.0.2.2", "127.0.0.1");
    let script = run(Command::new("curl").args(["-sf", &local(script_url)]));
    assert!(script.contains("sanboot") && script.contains(m["iqn"].as_str().unwrap()), "{script}");
    let entry = run(Command::new("curl").args(["-sf", &format!("{}?mac={mac}", local(entry_url))]));
    assert!(entry.contains(&format!("chain {script_url}")), "{entry}");

    // The boot disk a machine image would carry, with the entry script inside.
    let base = entry_url.trim_end_matches("/ipxe/entry.ipxe");
    let boot_disk = dir.join("ipxe-boot.img");
    livemount(library).args(["image", "ipxe-disk", "--appliance-url", base]).arg(&boot_disk).assert().success();

    let boot_drive = format!("file={},format=raw,if=ide", boot_disk.display());
    let nic = format!("virtio-net-pci,netdev=n0,mac={mac}");
    let args: Vec<String> =
        ["-drive", &boot_drive, "-netdev", "user,id=n0", "-device", &nic, "-boot", "c"].map(String::from).to_vec();
    let booted = run_qemu(&args, Duration::from_secs(900));
    let marker = booted.marker().unwrap_or_else(|| {
        panic!("no boot marker on the console after {:?}:\n{}\n{}", booted.elapsed, booted.tail(3000), daemon.log())
    });
    assert!(marker.contains("tran=iscsi"), "the root file system is on the iSCSI disk: {marker}");
    assert!(booted.console.contains("iscsistart"), "the initramfs logged in from the iBFT");
    eprintln!("booted to the marker in {:?}: {marker}", booted.elapsed);

    // The marker file the guest wrote is in the mount's private store, readable through the FUSE file.
    let fuse_file = PathBuf::from(m["disks"][0]["fuse_path"].as_str().unwrap());
    let file = read_guest_file(&fuse_file, "/var/lib/livemount-marker");
    assert!(file.contains("booted") && file.contains("iscsi"), "marker file: {file:?}");
    BootedMount { mount_id: m["id"].as_str().unwrap().to_string(), fuse_file, run: booted }
}
