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

use super::DiskSource;
use crate::error::{Error, Result};

pub struct RawFile {
    path: PathBuf,
    file: File,
    size: u64,
    /// A regular file whose holes SEEK_DATA can find; a block device (or a file system that cannot tell)
    /// is read whole.
    sparse: bool,
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
        Ok(RawFile {
            path: path.to_path_buf(),
            file,
            size,
            sparse: !is_dev,
            format: if is_dev { "block-device" } else { "raw" },
        })
    }
}

impl DiskSource for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn next_data(&mut self, from: u64) -> Result<Option<Range<u64>>> {
        if from >= self.size {
            return Ok(None);
        }
        if !self.sparse {
            return Ok(Some(from..self.size));
        }
        let fd = self.file.as_raw_fd();
        let data = match lseek(fd, from as i64, Whence::SeekData) {
            Ok(data) => data as u64,
            Err(Errno::ENXIO) => return Ok(None), // no data after `from`
            Err(_) => {
                // SEEK_DATA unsupported here: read the rest whole.
                self.sparse = false;
                return Ok(Some(from..self.size));
            }
        };
        let end = lseek(fd, data as i64, Whence::SeekHole).map(|e| e as u64).unwrap_or(self.size);
        Ok((data < self.size).then(|| data..end.min(self.size)))
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
        let mut src = RawFile::open(&p).unwrap();
        assert_eq!(src.size(), 64 << 20);
        let mut ranges = Vec::new();
        let mut at = 0;
        while let Some(r) = src.next_data(at).unwrap() {
            assert!(r.start >= at && r.end > r.start, "{r:?} from {at}");
            at = r.end;
            ranges.push(r);
        }
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(covered < 8 << 20, "the hole is not read: {ranges:?}");
        assert!(ranges.iter().any(|r| r.contains(&(8 << 20))));
    }
}
