//! Every magic number and fixed size of the on-disk library format, in one place.
//!
//! PLEASE DO NOT MODIFY the values below: libraries written with them must stay readable. A change of layout
//! gets a new version number next to the old one, and readers keep accepting the old one.

/// First four bytes of every encoded chunk (see `chunk.rs`).
pub const CHUNK_MAGIC: [u8; 4] = *b"LMCK";
/// Layout version of the chunk header (see `chunk.rs`).
pub const CHUNK_FORMAT_VERSION: u8 = 1;
/// Size of the chunk header in bytes.
pub const CHUNK_HEADER_LEN: usize = 16;

/// First eight bytes of a disk index file (see `index.rs`).
pub const INDEX_MAGIC: [u8; 8] = *b"LMINDEX\0";
/// Layout version of the disk index that holds chunk ids only (read, no longer written).
pub const INDEX_FORMAT_VERSION: u32 = 1;
/// Layout version of the disk index that also says where each chunk is stored: a record file of located
/// records, 128 to a block (see `index.rs`, `record_file.rs`, `store/located.rs`).
pub const INDEX_FORMAT_VERSION_LOCATED: u32 = 2;
/// Records per checked block of the disk index and of the chunk map.
pub const LOCATED_RECORDS_PER_BLOCK: usize = 128;
/// First eight bytes of a chunk map (see `store/chunk_map.rs`).
pub const CHUNK_MAP_MAGIC: [u8; 8] = *b"LMCHMAP\0";
/// Layout version of the chunk map.
pub const CHUNK_MAP_FORMAT_VERSION: u32 = 1;
/// Size of the disk index header in bytes.
pub const INDEX_HEADER_LEN: usize = 64;

/// Version of `library.json` and of the backup manifest JSON. Version 1 (before any release) kept one file per
/// chunk; version 2 keeps chunks in pack files. Version 1 libraries are not read.
pub const LIBRARY_FORMAT_VERSION: u32 = 2;
/// The file that marks a folder as a library and holds its settings.
pub const LIBRARY_CONFIG_FILE: &str = "library.json";

/// First eight bytes of every pack file (see `store/pack_format.rs`).
pub const PACK_MAGIC: [u8; 8] = *b"LMPACK\0\0";
/// First eight bytes of every pack index file.
pub const PACK_INDEX_MAGIC: [u8; 8] = *b"LMPKIDX\0";
/// Layout version of pack files and their index files.
pub const PACK_FORMAT_VERSION: u32 = 1;
/// Size of the pack file header in bytes.
pub const PACK_HEADER_LEN: usize = 16;
/// Size of the pack index header in bytes.
pub const PACK_INDEX_HEADER_LEN: usize = 56;
/// Size of one pack index entry: chunk id, offset, length.
pub const PACK_INDEX_ENTRY_LEN: usize = 44;

/// Smallest and largest chunk sizes a library accepts. Both are powers of two; chunks are aligned to the disk.
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// The default chunk size. Measured on a Debian root disk (`bench/library.sh`, `bench/fuse.sh`; figures in the
/// README): 64 KiB stores about 5% more than 1 MiB (less compression per chunk) but halves to quarters the
/// cold random-read latency of a live mount (0.50 ms median against 2.3 ms at 1 MiB), which is what
/// "instant" use of a backup needs, and recalls far less of a disk for a boot or a file copy.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
