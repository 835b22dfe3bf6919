//! Raw image files and block devices. A sparse file's holes are found with SEEK_DATA/SEEK_HOLE and never
//! read.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::unistd::{lseek, Whence};

use super::{merge_ranges, DiskSource};
use crate::error::{Error, Result};

pub struct RawFile {
    path: PathBuf,
    file: File,
    size: u64,
    ranges: Vec<Range<u64>>,
    format: &'static str,
}

impl RawFile {
    pub fn open(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Source { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        let is_dev = meta.file_type().is_block_device();
        let size = if is_dev {
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0)).map_err(|e| err(e.to_string()))?
        } else {
            meta.len()
        };
        let ranges = if is_dev { std::iter::once(0..size).collect() } else { data_ranges(&file, size) };
        Ok(RawFile {
            path: path.to_path_buf(),
            file,
            size,
            ranges,
            format: if is_dev { "block-device" } else { "raw" },
        })
    }
}

/// The data ranges of a file by SEEK_DATA/SEEK_HOLE; the whole file when the file system cannot tell.
fn data_ranges(file: &File, size: u64) -> Vec<Range<u64>> {
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(data) => data,
            Err(Errno::ENXIO) => break,                          // no data after pos
            Err(_) => return std::iter::once(0..size).collect(), // SEEK_DATA unsupported: read it all
        };
        let end = lseek(fd, data, Whence::SeekHole).unwrap_or(size as i64);
        ranges.push(data as u64..(end as u64).min(size));
        pos = end;
    }
    merge_ranges(ranges)
}

impl DiskSource for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn data_ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::Source {
            path: self.path.clone(),
            reason: format!("read of {} bytes at offset {offset}: {e}", buf.len()),
        })
    }
    fn format(&self) -> &str {
        self.format
    }
    fn will_need(&self, offset: u64, len: u64) {
        // A failure only loses the hint.
        let _ = posix_fadvise(
            self.file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn holes_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_at(&[1u8; 4096], 8 << 20).unwrap();
        (&f).flush().unwrap();
        let src = RawFile::open(&p).unwrap();
        assert_eq!(src.size(), 64 << 20);
        let covered: u64 = src.data_ranges().iter().map(|r| r.end - r.start).sum();
        assert!(covered < 8 << 20, "the hole is not read: {:?}", src.data_ranges());
        assert!(src.data_ranges().iter().any(|r| r.contains(&(8 << 20))));
    }
}
