//! Image formats that qemu reads (qcow2, vmdk, vhdx, vdi, ...): `qemu-img info` names the format,
//! `qemu-img map` gives the allocation map, and `qemu-nbd` serves the guest-visible bytes over a private
//! Unix socket that `nbd::NbdClient` reads.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::nbd::NbdClient;
use super::{BoundedRanges, DiskSource};
use crate::error::{Error, Result};

fn source_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Source { path: path.to_path_buf(), reason: reason.into() }
}

/// Runs a qemu-img subcommand with JSON output; its own error message becomes ours.
fn qemu_img_json(path: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg("--output=json")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| source_err(path, format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().trim_start_matches("qemu-img: ");
        return Err(source_err(path, format!("qemu-img cannot read it: {msg}")));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| source_err(path, format!("unexpected qemu-img output: {e}")))
}

/// The image format qemu detects for a file ("raw", "qcow2", ...).
pub fn probe_format(path: &Path) -> Result<String> {
    let info = qemu_img_json(path, &["info"])?;
    info["format"].as_str().map(str::to_string).ok_or_else(|| source_err(path, "qemu-img names no format"))
}

/// Runs `qemu-img check`: a truncated or damaged image must be refused, not read as zeros where its data
/// is gone (qemu reads clusters past the end of the file as zeros). Leaked clusters are harmless; formats
/// without a check are taken as they are.
fn check_consistent(path: &Path, format: &str) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-f", format])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| source_err(path, format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    match out.status.code() {
        Some(0) | Some(3) | Some(63) => Ok(()), // clean, only leaks, check not supported by the format
        _ => {
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let corruptions = report["corruptions"].as_u64().unwrap_or(0);
            let first_error = String::from_utf8_lossy(&out.stderr)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim_start_matches("qemu-img: ")
                .to_string();
            Err(source_err(
                path,
                format!("the {format} image is damaged or truncated ({corruptions} corruptions; {first_error}); qemu-img check shows the details"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct MapEntry {
    start: u64,
    length: u64,
    data: bool,
    #[serde(default)]
    zero: bool,
}

pub struct QemuImage {
    path: PathBuf,
    format: String,
    size: u64,
    ranges: BoundedRanges,
    nbd: NbdClient,
    server: Child,
    _socket_dir: SocketDir,
}

/// A private folder for qemu-nbd's socket, removed on drop.
struct SocketDir(PathBuf);

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl QemuImage {
    pub fn open(path: &Path) -> Result<Self> {
        let info = qemu_img_json(path, &["info"])?;
        let format = info["format"].as_str().unwrap_or("raw").to_string();
        let size = info["virtual-size"].as_u64().ok_or_else(|| source_err(path, "qemu-img gives no virtual size"))?;
        check_consistent(path, &format)?;
        let map = qemu_img_json(path, &["map", "-f", &format])?;
        let entries: Vec<MapEntry> = serde_json::from_value(map)
            .map_err(|e| source_err(path, format!("unexpected qemu-img map output: {e}")))?;
        let ranges = BoundedRanges::from_unsorted(
            entries.iter().filter(|e| e.data && !e.zero).map(|e| e.start..e.start + e.length).collect(),
        );

        let dir = std::env::temp_dir().join(format!("livemount-nbd-{}", crate::durable::random_suffix()));
        std::fs::create_dir(&dir).map_err(|e| source_err(path, format!("cannot create {}: {e}", dir.display())))?;
        let socket_dir = SocketDir(dir);
        let socket = socket_dir.0.join("nbd.sock");
        let mut server = Command::new("qemu-nbd")
            .arg("--read-only")
            .arg(format!("--format={format}"))
            .arg("--shared=1")
            .arg(format!("--socket={}", socket.display()))
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| source_err(path, format!("cannot run qemu-nbd (install qemu-utils): {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let nbd = loop {
            if let Ok(Some(status)) = server.try_wait() {
                let mut msg = String::new();
                if let Some(mut e) = server.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut msg);
                }
                return Err(source_err(path, format!("qemu-nbd exited ({status}): {}", msg.trim())));
            }
            if socket.exists() {
                match NbdClient::connect(&socket) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        let _ = server.kill();
                        return Err(source_err(path, format!("cannot connect to qemu-nbd: {e}")));
                    }
                    Err(_) => {}
                }
            } else if Instant::now() > deadline {
                let _ = server.kill();
                return Err(source_err(path, "qemu-nbd did not start within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if nbd.size() != size {
            return Err(source_err(path, format!("qemu-nbd serves {} bytes, qemu-img says {size}", nbd.size())));
        }
        Ok(QemuImage { path: path.to_path_buf(), format, size, ranges, nbd, server, _socket_dir: socket_dir })
    }
}

impl DiskSource for QemuImage {
    fn size(&self) -> u64 {
        self.size
    }
    fn next_data(&mut self, from: u64) -> Result<Option<Range<u64>>> {
        Ok(self.ranges.next_data(from))
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.nbd.read_exact_at(offset, buf).map_err(|e| {
            source_err(&self.path, format!("read of {} bytes at offset {offset} through qemu-nbd: {e}", buf.len()))
        })
    }
    fn format(&self) -> &str {
        &self.format
    }
}

impl Drop for QemuImage {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
