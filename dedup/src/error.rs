//! The library's error type: what went wrong, on which file or chunk, and the underlying cause.

use std::io;
use std::path::PathBuf;

use crate::chunk::ChunkId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path} is not a livemount library (no library.json); create one with `livemount library init`")]
    NotALibrary { path: PathBuf },

    #[error("{path} already holds a library")]
    LibraryExists { path: PathBuf },

    #[error("the file system holding {path} is full while trying to {op}; free space and run the command again (what was stored so far is kept and will be reused)")]
    NoSpace { op: String, path: PathBuf },

    #[error("cannot {op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is a library of format {found}, made by an earlier development version of livemount; this version reads format {supported} only: create a new library (`livemount library init --library NEW`) and back up into it again")]
    UnsupportedLibrary { path: PathBuf, found: u32, supported: u32 },

    #[error("{path} is damaged: {reason}")]
    BadFormat { path: PathBuf, reason: String },

    #[error("chunk {id} is missing from the library")]
    ChunkMissing { id: ChunkId },

    #[error("chunk {id} is corrupt: {reason}")]
    ChunkCorrupt { id: ChunkId, reason: String },

    #[error("no backup {id} in the library; `livemount backup list` shows the backups")]
    BackupNotFound { id: String },

    #[error("backup {id} is in use by {holders}; end that use first (`livemount unmount MOUNT` for a mount), or forget it anyway with --force")]
    BackupHeld { id: String, holders: String },

    #[error("backup id {prefix} is ambiguous: it starts {count} backups; give more of it")]
    AmbiguousBackupId { prefix: String, count: usize },

    #[error("backup {backup} has no disk {disk}")]
    DiskNotFound { backup: String, disk: usize },

    #[error("cannot read source {path}: {reason}")]
    Source { path: PathBuf, reason: String },

    #[error("invalid chunk size {size}: it must be a power of two between 4 KiB and 16 MiB")]
    InvalidChunkSize { size: u64 },

    #[error("cannot {op} {object}: {reason}")]
    Remote { op: String, object: String, reason: String },

    #[error("the library {location} is locked by a gc or repair running on {holder}; run this again once it has finished (a lock whose holder died expires within a minute)")]
    LibraryBusy { location: String, holder: String },

    #[error("{reason}")]
    BadLocation { reason: String },

    #[error("backup {id} was not published: its registration in the library lapsed (the process was stopped, or could not reach the store, for longer than its lease), so a gc elsewhere may have removed chunks it reuses; run the backup again")]
    RegistrationLapsed { id: String },

    #[error("read of {len} bytes at offset {offset} is past the end of the disk ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

impl Error {
    /// Wraps an I/O error with the operation and path, turning "no space left" into its own kind.
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let op = op.into();
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) || source.raw_os_error() == Some(libc::EDQUOT) {
            return Error::NoSpace { op, path };
        }
        Error::Io { op, path, source }
    }

    /// True when the error means the data of a chunk cannot be had (missing or corrupt), as opposed to a
    /// problem of the machine (I/O, space).
    pub fn is_bad_chunk(&self) -> bool {
        matches!(self, Error::ChunkMissing { .. } | Error::ChunkCorrupt { .. })
    }
}
