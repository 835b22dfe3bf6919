//! Every magic number and fixed size of the on-disk library format, in one place.
//!
//! PLEASE DO NOT MODIFY the values below: libraries written with them must stay readable. A change of layout
//! gets a new version number next to the old one, and readers keep accepting the old one.

/// First four bytes of every stored chunk file.
pub const CHUNK_MAGIC: [u8; 4] = *b"LMCK";
/// Layout version of the chunk header (see `chunk.rs`).
pub const CHUNK_FORMAT_VERSION: u8 = 1;
/// Size of the chunk header in bytes.
pub const CHUNK_HEADER_LEN: usize = 16;

/// First eight bytes of a disk index file (see `index.rs`).
pub const INDEX_MAGIC: [u8; 8] = *b"LMINDEX\0";
/// Layout version of the disk index.
pub const INDEX_FORMAT_VERSION: u32 = 1;
/// Size of the disk index header in bytes.
pub const INDEX_HEADER_LEN: usize = 64;

/// Version of `library.json` and of the backup manifest JSON.
pub const LIBRARY_FORMAT_VERSION: u32 = 1;
/// The file that marks a folder as a library and holds its settings.
pub const LIBRARY_CONFIG_FILE: &str = "library.json";

/// Smallest and largest chunk sizes a library accepts. Both are powers of two; chunks are aligned to the disk.
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// The default chunk size. Measured on a Debian root disk (`bench/library.sh`, `bench/fuse.sh`; figures in the
/// README): 64 KiB stores about 5% more than 1 MiB (less compression per chunk) but halves to quarters the
/// cold random-read latency of a live mount (0.50 ms median against 2.3 ms at 1 MiB), which is what
/// "instant" use of a backup needs, and recalls far less of a disk for a boot or a file copy.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
