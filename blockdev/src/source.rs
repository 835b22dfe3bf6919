//! What a pseudo-disk reads from. The appliance implements this for a backup in the dedup library (and later
//! a cloud snapshot); this crate knows nothing behind it.

use std::future::Future;
use std::pin::Pin;

/// A boxed future that can move between threads.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A read-only disk cut into chunks of `chunk_size` bytes (the last one may be shorter).
pub trait Source: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn chunk_size(&self) -> u32;
    /// Reads chunk `index` whole into `buf` (resized to the chunk's length). Blocking: the pseudo-disk calls
    /// it on a blocking thread. An error means the data cannot be had; it is never replaced by other bytes.
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), SourceError>;
    /// Reads the consecutive chunks `chunks` (as many as `read_batch` at most), giving each to `done` (in any
    /// order) as soon as it is read. The default reads them one after another with `read_chunk`; a source
    /// that can fetch neighbouring chunks with one request (a far store) overrides it. Every chunk is given
    /// exactly once.
    fn read_chunks(&self, chunks: std::ops::Range<u64>, done: &mut dyn FnMut(u64, Result<Vec<u8>, SourceError>)) {
        read_one_by_one(self, chunks, done);
    }
    /// For a source whose reads wait on the network: the read of chunk `index` (its whole bytes, as
    /// `read_chunk` gives them) as a future the pseudo-disk runs on its runtime, so that many are in flight
    /// without a thread each and an answer reaches its reader without a hop between threads. None (the
    /// default): `read_chunk` runs on a blocking thread.
    fn read_chunk_async(&self, _index: u64) -> Option<BoxFuture<Result<Vec<u8>, SourceError>>> {
        None
    }
    /// True when the chunk is known to be all zeros without reading it. The default knows nothing.
    fn is_zero_chunk(&self, _index: u64) -> bool {
        false
    }
    /// How many chunk reads at once keep this source busy without crowding out the reads that are waiting:
    /// a few for a store whose reads cost CPU (decoding), dozens for one whose reads cost a round trip. It
    /// bounds the readahead in flight (and with it the memory readahead holds).
    fn parallel_reads(&self) -> usize {
        4
    }
    /// How many consecutive chunks one task reads in a row (readahead, and a read of several chunks), with
    /// `read_chunks`: several for a source whose reads take microseconds (each task costs a switch between
    /// threads, which would cost more than the read) or that fetches neighbours with one request; one for a
    /// source whose every chunk is a request of its own (they should overlap).
    fn read_batch(&self) -> usize {
        1
    }
    /// A short description for logs ("backup 2026...-abc123 disk 0").
    fn describe(&self) -> String;
}

/// `Source::read_chunks` as a source without requests that fetch several chunks does it: one `read_chunk`
/// after another, each chunk given as soon as it is read.
pub fn read_one_by_one<S: Source + ?Sized>(
    source: &S,
    chunks: std::ops::Range<u64>,
    done: &mut dyn FnMut(u64, Result<Vec<u8>, SourceError>),
) {
    for chunk in chunks {
        let mut buf = Vec::with_capacity(source.chunk_size() as usize);
        let read = source.read_chunk(chunk, &mut buf).map(|()| buf);
        done(chunk, read);
    }
}

/// Any error a source wraps as the cause of its failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A source's failure to give a chunk, by what went wrong, with the cause kept as the error's source. The
/// kind decides what an initiator is told: a missing or corrupt chunk is a medium error, an I/O error of
/// the source's store keeps its errno.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The chunk is not where the source keeps it (deleted from the library, never stored).
    #[error("chunk {chunk} is missing: {source}")]
    Missing {
        chunk: u64,
        #[source]
        source: BoxError,
    },
    /// The chunk is there but its bytes are damaged (checksum, decoding or length wrong).
    #[error("chunk {chunk} is corrupt: {source}")]
    Corrupt {
        chunk: u64,
        #[source]
        source: BoxError,
    },
    /// Reading the source's store failed; `what` names the operation and file.
    #[error("reading chunk {chunk} failed: cannot {what}: {source}")]
    Io {
        chunk: u64,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else (the reading task died, an unexpected answer).
    #[error("chunk {chunk} cannot be read: {source}")]
    Other {
        chunk: u64,
        #[source]
        source: BoxError,
    },
}

/// Chunk index and byte length of chunk `index` of a disk.
pub fn chunk_len(size: u64, chunk_size: u32, index: u64) -> usize {
    let start = index * u64::from(chunk_size);
    ((start + u64::from(chunk_size)).min(size) - start) as usize
}

impl SourceError {
    /// The same failure again, for another reader of the same recall: the same kind, chunk and errno, with
    /// the causes kept as text.
    pub(crate) fn duplicate(&self) -> SourceError {
        let text = |e: &BoxError| -> BoxError { error_chain(e.as_ref()).into() };
        match self {
            SourceError::Missing { chunk, source } => SourceError::Missing { chunk: *chunk, source: text(source) },
            SourceError::Corrupt { chunk, source } => SourceError::Corrupt { chunk: *chunk, source: text(source) },
            SourceError::Other { chunk, source } => SourceError::Other { chunk: *chunk, source: text(source) },
            SourceError::Io { chunk, what, source } => SourceError::Io {
                chunk: *chunk,
                what: what.clone(),
                source: match source.raw_os_error() {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::new(source.kind(), error_chain(source)),
                },
            },
        }
    }
}

/// An error with its causes, for a log line: "a: b: c" (each cause once, also where a message repeats it).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_keeps_the_kind_the_chunk_the_errno_and_the_causes() {
        let io = SourceError::Io {
            chunk: 7,
            what: "read pack 3".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        match io.duplicate() {
            SourceError::Io { chunk: 7, what, source } => {
                assert_eq!(what, "read pack 3");
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
            }
            other => panic!("{other:?}"),
        }
        let inner: BoxError = Box::new(std::io::Error::other("checksum mismatch"));
        let corrupt = SourceError::Corrupt { chunk: 9, source: inner };
        let copy = corrupt.duplicate();
        assert!(matches!(copy, SourceError::Corrupt { chunk: 9, .. }));
        assert_eq!(copy.to_string(), corrupt.to_string());
    }
}
