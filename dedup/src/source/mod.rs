//! Where a backup's disks come from: raw image files and block devices read directly, and image formats
//! (qcow2, vmdk, vhdx, vdi) read through qemu-utils. Every source says which byte ranges hold data, so that
//! holes and unallocated space are never read.

mod nbd;
mod qemu;
mod raw;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

pub use qemu::QemuImage;
pub use raw::RawFile;

/// A disk to back up.
pub trait DiskSource: Send {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// The first range at or after `from` that may hold non-zero data, starting no earlier than `from`;
    /// `None` when everything from `from` on reads as zeros. Asked as the reader goes, so that a disk of
    /// millions of extents is never held as a list.
    fn next_data(&mut self, from: u64) -> Result<Option<Range<u64>>>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// The format name recorded in the manifest ("raw", "block-device", "qcow2", ...).
    fn format(&self) -> &str;
    /// A hint that `offset..offset + len` will be read soon, so the source can start fetching it. The
    /// default does nothing.
    fn will_need(&self, _offset: u64, _len: u64) {}
    /// True when `range` is known to hold what it held in the parent backup given with the disk
    /// (`DiskInput::parent`), so that its chunks need not be read. The default knows nothing.
    fn unchanged(&mut self, _range: Range<u64>) -> bool {
        false
    }
    /// A reader of the same disk that several threads may use at once, when the source has one: the ingest
    /// then keeps several reads in flight. The default has none.
    fn shared_reader(&self) -> Option<Arc<dyn SharedRead>> {
        None
    }
}

/// Reads of a disk that any number of threads may make at once.
pub trait SharedRead: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
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

/// Data ranges held as a sorted list of at most `MAX_RANGES` entries, whatever the disk. When one more would
/// not fit, gaps narrower than a width that doubles each time are filled in: a filled gap reads as zeros, so
/// only time is lost, never data, and only on a disk fragmented beyond what the list can hold.
pub(crate) struct BoundedRanges {
    ranges: Vec<Range<u64>>,
    fill_below: u64,
}

/// 64 Ki ranges: 1 MiB of memory.
const MAX_RANGES: usize = 64 * 1024;

impl BoundedRanges {
    /// Builds the list from ranges in any order, overlapping or touching ones merged.
    pub(crate) fn from_unsorted(mut ranges: Vec<Range<u64>>) -> Self {
        ranges.sort_by_key(|r| r.start);
        let mut list = BoundedRanges { ranges: Vec::new(), fill_below: 0 };
        for r in ranges {
            list.push(r);
        }
        list
    }

    /// Appends a range that starts at or after the start of the last one.
    fn push(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        match self.ranges.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(self.fill_below) => last.end = last.end.max(r.end),
            _ => self.ranges.push(r),
        }
        while self.ranges.len() > MAX_RANGES {
            self.fill_below = (self.fill_below * 2).max(4096);
            self.coarsen();
        }
    }

    /// Merges neighbours whose gap is narrower than `fill_below`.
    fn coarsen(&mut self) {
        let fill = self.fill_below;
        let mut kept = 0;
        for i in 1..self.ranges.len() {
            if self.ranges[i].start <= self.ranges[kept].end.saturating_add(fill) {
                self.ranges[kept].end = self.ranges[kept].end.max(self.ranges[i].end);
            } else {
                kept += 1;
                self.ranges[kept] = self.ranges[i].clone();
            }
        }
        self.ranges.truncate(kept + 1);
    }

    /// The first range at or after `from`, clipped to start no earlier than `from`.
    pub(crate) fn next_data(&self, from: u64) -> Option<Range<u64>> {
        let i = self.ranges.partition_point(|r| r.end <= from);
        self.ranges.get(i).map(|r| r.start.max(from)..r.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_are_found_from_any_offset() {
        let list = BoundedRanges::from_unsorted(vec![10..20, 0..5, 20..30, 40..50, 45..47]);
        assert_eq!(list.ranges, vec![0..5, 10..30, 40..50]);
        assert_eq!(list.next_data(0), Some(0..5));
        assert_eq!(list.next_data(5), Some(10..30));
        assert_eq!(list.next_data(12), Some(12..30));
        assert_eq!(list.next_data(30), Some(40..50));
        assert_eq!(list.next_data(50), None);
    }

    #[test]
    fn a_fragmented_disk_is_held_in_bounded_memory_and_still_covers_every_byte() {
        // Four times the ranges the list may hold: 4 KiB of data every 64 KiB.
        let data: Vec<Range<u64>> = (0..4 * MAX_RANGES as u64).map(|i| i * 65536..i * 65536 + 4096).collect();
        let list = BoundedRanges::from_unsorted(data.clone());
        assert!(list.ranges.len() <= MAX_RANGES, "{} ranges held", list.ranges.len());
        for r in &data {
            let found = list.next_data(r.start).expect("data is covered");
            assert!(found.start <= r.start && found.end >= r.end, "{r:?} not covered by {found:?}");
        }
    }
}
