//! The one helper for every durable write of the library: write a temporary file, fsync it, rename it into
//! place, fsync the folder. A crash at any moment leaves either the old state or the new one, never half a
//! file under its final name. The temporary file is removed when the writer is dropped before `commit`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file being written under a temporary name in the same folder as its final name.
pub struct AtomicFile {
    file: Option<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
}

impl AtomicFile {
    /// Starts writing `final_path` through a temporary file beside it (or in `tmp_dir` when given; it must be
    /// on the same file system).
    pub fn create(final_path: &Path, tmp_dir: Option<&Path>) -> io::Result<Self> {
        let dir = match tmp_dir {
            Some(d) => d.to_path_buf(),
            None => final_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
        };
        let name = final_path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp_path = dir.join(format!(".tmp-{}-{}", name, random_suffix()));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp_path)?;
        Ok(AtomicFile { file: Some(file), tmp_path, final_path: final_path.to_path_buf() })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    /// Makes the contents durable, then gives the file its final name. The caller fsyncs the folder (see
    /// `sync_dir`) before anything that refers to the file is written, so several renames can share one
    /// folder fsync.
    pub fn commit_without_dir_sync(mut self) -> io::Result<()> {
        let file = self.file.take().expect("file is present until commit");
        file.sync_data()?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path)?;
        Ok(())
    }

    /// Makes the contents durable, gives the file its final name and makes the name durable.
    pub fn commit(self) -> io::Result<()> {
        let parent = self.final_path.parent().map(Path::to_path_buf);
        self.commit_without_dir_sync()?;
        if let Some(parent) = parent {
            sync_dir(&parent)?;
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Writes `data` to `path` atomically and durably.
pub fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::create(path, None)?;
    f.write_all(data)?;
    f.commit()
}

/// Makes the names in a folder (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a folder (and its parents) and makes its name durable in its parent.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    // A relative one-component path has "" as its parent: that is the current folder.
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// A random suffix that keeps temporary names of concurrent writers apart.
pub fn random_suffix() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the kernel's random source is available");
    hex::encode(b)
}

/// True for the names `AtomicFile` gives its temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(".tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        {
            let mut f = AtomicFile::create(&p, None).unwrap();
            f.write_all(b"three").unwrap();
            // dropped without commit
        }
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind: {names:?}");
    }
}
