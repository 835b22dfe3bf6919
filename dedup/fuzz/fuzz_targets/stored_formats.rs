#![no_main]
//! Every on-disk format the library reads back, on arbitrary bytes: a pack index, a disk index and an encoded
//! chunk are either accepted whole and consistent, or refused with an error; never a panic, never wrong bytes.

use std::path::Path;

use dedup::chunk::{decode_verified, ChunkId};
use dedup::index::DiskIndex;
use dedup::store::pack_format::PackIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz");
    if let Ok(index) = PackIndex::decode(path, data) {
        // Accepted: it encodes back to the same bytes, and every entry lies inside the pack.
        assert_eq!(index.encode(), data);
        assert!(index.entries.iter().all(|e| e.offset + u64::from(e.len) <= index.pack_len));
    }
    if let Ok(index) = DiskIndex::decode(path, data) {
        assert_eq!(index.encode(), data);
    }
    // A chunk decodes only to bytes that hash to its id: with the id of the plain bytes the fuzzer may have
    // produced, and with an id taken from the input itself.
    let mut out = Vec::new();
    if data.len() > 32 {
        let id = ChunkId(data[..32].try_into().unwrap());
        if decode_verified(&id, &data[32..], &mut out).is_ok() {
            assert_eq!(ChunkId::of(&out), id);
        }
    }
});
