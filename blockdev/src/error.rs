//! Errors of the pseudo-disk, with the errno a file view returns for each (`scsi::Sense::of` gives the SCSI
//! sense).

use std::io;

use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op} of the {store} store failed: {source}")]
    Store {
        op: &'static str,
        store: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot recall chunk {chunk} of {source_name}: {source}")]
    Recall {
        chunk: u64,
        source_name: String,
        #[source]
        source: SourceError,
    },

    #[error("{len} bytes at offset {offset} lie beyond the end of the disk ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    #[error("the disk is read-only")]
    ReadOnly,
}

impl Error {
    /// The errno a file view returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Store { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Recall { source, .. } => match source {
                SourceError::Missing { .. } | SourceError::Corrupt { .. } | SourceError::Other { .. } => libc::EIO,
                SourceError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            },
            Error::OutOfRange { .. } => libc::EINVAL,
            Error::ReadOnly => libc::EROFS,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
