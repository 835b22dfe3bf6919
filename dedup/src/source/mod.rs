//! Where a backup's disks come from: raw image files and block devices read directly, and image formats
//! (qcow2, vmdk, vhdx, vdi) read through qemu-utils. Every source says which byte ranges hold data, so that
//! holes and unallocated space are never read.

mod nbd;
mod qemu;
mod raw;

use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};

pub use qemu::QemuImage;
pub use raw::RawFile;

/// A disk to back up.
pub trait DiskSource: Send {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Sorted, non-overlapping ranges that may hold non-zero data; everything else reads as zeros.
    fn data_ranges(&self) -> &[Range<u64>];
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// The format name recorded in the manifest ("raw", "block-device", "qcow2", ...).
    fn format(&self) -> &str;
    /// A hint that `offset..offset + len` will be read soon, so the source can start fetching it. The
    /// default does nothing.
    fn will_need(&self, _offset: u64, _len: u64) {}
}

/// Opens a source, choosing raw access or qemu by what the file is.
pub fn open(path: &Path) -> Result<Box<dyn DiskSource>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or device".to_string(),
            _ => e.to_string(),
        },
    })?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_block_device() {
        return Ok(Box::new(RawFile::open(path)?));
    }
    if !meta.is_file() {
        return Err(Error::Source { path: path.to_path_buf(), reason: "not a file or a block device".into() });
    }
    match qemu::probe_format(path)?.as_str() {
        "raw" => Ok(Box::new(RawFile::open(path)?)),
        _ => Ok(Box::new(QemuImage::open(path)?)),
    }
}

/// Merges sorted ranges that touch or overlap.
pub(crate) fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.into_iter().filter(|r| r.start < r.end) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}
