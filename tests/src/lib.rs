//! Helpers for the end-to-end tests in `tests/`: the `livemount` binary, disk images built with the same
//! tools people use (sfdisk, mkfs.ext4 -d), and deterministic test data.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `livemount` binary that cargo built beside the test executable.
pub fn livemount_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let bin = dir.join("livemount");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

/// `livemount --library LIB` ready for more arguments.
pub fn livemount(lib: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(livemount_bin());
    c.arg("--library").arg(lib);
    c
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
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
            format!("line {i} of file {seed}: the quick brown fox jumps over the lazy dog\n")
                .as_bytes(),
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
        std::fs::write(
            root.join(format!("var/data/blob{i}.bin")),
            random_bytes(seed * 1000 + i as u64, 1 << 20),
        )
        .unwrap();
    }
}

/// Builds a GPT-partitioned disk image of `disk_mib` MiB with one ext4 partition starting at 1 MiB whose
/// contents come from `tree` (mkfs.ext4 -d). Returns the image path.
pub fn make_ext4_disk(dir: &Path, name: &str, tree: &Path, disk_mib: u64) -> PathBuf {
    let disk = dir.join(name);
    let part = dir.join(format!("{name}.part"));
    let part_mib = disk_mib - 2;
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(disk_mib << 20)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("--quiet")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
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
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]));
    std::fs::remove_file(&part).unwrap();
    disk
}

/// Parses a command's JSON output.
pub fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}
