//! ldconfig's auxiliary cache (`/var/cache/ldconfig/aux-cache`) while packages are installed in a guest.
//!
//! Installing a library runs libc-bin's `ldconfig` trigger, which looks at every library of the guest. It
//! reads a library only when the auxiliary cache has no entry for it, and an entry names its file by device,
//! inode, change time and size. The guest's file system is the same on the live mount, but the device
//! number is the live mount's (a loop device's partition), so every entry misses and ldconfig reads every
//! library of the guest: measured on a Debian 12 guest, 107 libraries and 28 MiB recalled, a quarter of
//! all a first preparation recalled. So for the installation the entries of the guest's root file system are
//! keyed to the device it is mounted from now, and afterwards back to the device they named: ldconfig then
//! reads exactly what it would have read on the guest's own disk, and the guest keeps a cache for its own
//! disk. Only the device is changed, never what an entry says about its library; a file whose inode,
//! change time or size differ still misses and is read.
//!
//! The cache is a cache: a file of a layout this does not know is left alone (ldconfig then reads every
//! library, as it would without this), and so is one whose entries do not name this file system or one
//! with entries of the live mount's device already (two entries of one id make ldconfig abort).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{io_err, GuestError};

/// The magic strings of the layouts known here: glibc 2.x up to 2.32 ("1.0") and from 2.33 on ("2.0",
/// without the OS version). Both have a 32-byte header (magic, number of entries, length of the string
/// table) and 48-byte entries starting with the file's id (inode, change time, size, device: 64 bits
/// each, in the machine's byte order), followed by the string table.
const MAGICS: [&[u8]; 2] = [b"glibc-ld.so.auxcache-1.0", b"glibc-ld.so.auxcache-2.0"];
const HEADER: usize = 32;
const ENTRY: usize = 48;
/// Where the device is within an entry.
const DEV_AT: usize = 24;

/// Library folders of a Debian guest, relative to its root; one library ldconfig knows is enough to tell
/// which device the cache names the root file system by.
const LIBRARY_DIRS: [&str; 4] = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib", "lib"];

/// Runs `f` with the guest's ldconfig cache keyed to the device its root is mounted from, and keys it back
/// afterwards, whatever `f` returned.
pub fn with_cache_on_this_device<T>(root: &Path, f: impl FnOnce() -> Result<T, GuestError>) -> Result<T, GuestError> {
    let Some(keyed) = Rekeyed::key_to_this_device(root)? else { return f() };
    let result = f();
    let restored = keyed.key_back();
    let value = result?;
    restored?;
    Ok(value)
}

/// A cache keyed to the device the root is mounted from: what it was, what was written.
struct Rekeyed {
    path: PathBuf,
    original: Vec<u8>,
    written: Vec<u8>,
    /// The device the cache named the root file system by, and the one it is mounted from now.
    from: u64,
    to: u64,
}

impl Rekeyed {
    fn key_to_this_device(root: &Path) -> Result<Option<Rekeyed>, GuestError> {
        let path = root.join("var/cache/ldconfig/aux-cache");
        let Ok(original) = std::fs::read(&path) else { return Ok(None) };
        let Some(entries) = entries(&original) else { return Ok(None) };
        let to = std::fs::metadata(root).map_err(io_err("stat", root))?.dev();
        let Some(from) = device_of_root(root, &original, entries) else { return Ok(None) };
        if from == to {
            return Ok(None);
        }
        let Some(written) = rekeyed(&original, entries, from, to) else { return Ok(None) };
        std::fs::write(&path, &written).map_err(io_err("write", &path))?;
        Ok(Some(Rekeyed { path, original, written, from, to }))
    }

    /// Puts the cache back to the device it named: as it was when nothing rewrote it, and otherwise
    /// (ldconfig ran and wrote what it found, all of it on this file system) with every entry of the
    /// device it is mounted from now keyed to the device of before.
    fn key_back(self) -> Result<(), GuestError> {
        let now = match std::fs::read(&self.path) {
            Ok(now) => now,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        let back = if now == self.written {
            self.original
        } else {
            let Some(back) = entries(&now).and_then(|n| rekeyed(&now, n, self.to, self.from)) else { return Ok(()) };
            back
        };
        std::fs::write(&self.path, back).map_err(io_err("write", &self.path))
    }
}

/// The number of entries of a cache of a known layout whose length adds up.
fn entries(cache: &[u8]) -> Option<usize> {
    let magic = MAGICS.iter().find(|m| cache.starts_with(m))?;
    let word = |at: usize| cache.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    let (count, strings) = (word(magic.len())? as usize, word(magic.len() + 4)? as usize);
    (HEADER + count.checked_mul(ENTRY)? + strings == cache.len()).then_some(count)
}

fn id(cache: &[u8], entry: usize) -> [u64; 4] {
    let at = HEADER + entry * ENTRY;
    std::array::from_fn(|i| u64::from_ne_bytes(cache[at + 8 * i..at + 8 * i + 8].try_into().expect("8 bytes")))
}

/// The device the cache names the root file system by: that of an entry describing a library of the root
/// as it is now (same inode, change time and size).
fn device_of_root(root: &Path, cache: &[u8], entries: usize) -> Option<u64> {
    let known: std::collections::HashMap<[u64; 3], u64> =
        (0..entries).map(|e| id(cache, e)).map(|[ino, ctime, size, dev]| ([ino, ctime, size], dev)).collect();
    LIBRARY_DIRS.iter().filter_map(|dir| std::fs::read_dir(root.join(dir)).ok()).flatten().flatten().find_map(|f| {
        let m = f.metadata().ok().filter(|m| m.is_file())?;
        known.get(&[m.ino(), m.ctime() as u64, m.size()]).copied()
    })
}

/// The cache with every entry of device `from` keyed to device `to`; none when an entry names `to`
/// already (ldconfig aborts on two entries with one id).
fn rekeyed(cache: &[u8], entries: usize, from: u64, to: u64) -> Option<Vec<u8>> {
    if (0..entries).any(|e| id(cache, e)[3] == to) {
        return None;
    }
    let mut out = cache.to_vec();
    for e in (0..entries).filter(|&e| id(cache, e)[3] == from) {
        let at = HEADER + e * ENTRY + DEV_AT;
        out[at..at + 8].copy_from_slice(&to.to_ne_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(magic: &[u8], ids: &[[u64; 4]]) -> Vec<u8> {
        let strings = b"\0libx.so.1\0";
        let mut c = magic.to_vec();
        c.extend((ids.len() as u32).to_ne_bytes());
        c.extend((strings.len() as u32).to_ne_bytes());
        for id in ids {
            for v in id {
                c.extend(v.to_ne_bytes());
            }
            c.extend([0u8; 16]);
        }
        c.extend(strings);
        c
    }

    #[test]
    fn only_known_layouts_whose_length_adds_up_are_read() {
        let ids = [[1, 2, 3, 4], [5, 6, 7, 4]];
        assert_eq!(entries(&cache(MAGICS[1], &ids)), Some(2));
        assert_eq!(entries(&cache(MAGICS[0], &ids)), Some(2));
        assert_eq!(entries(&cache(b"glibc-ld.so.auxcache-9.0", &ids)), None);
        let mut short = cache(MAGICS[1], &ids);
        short.pop();
        assert_eq!(entries(&short), None);
        assert_eq!(entries(b"glibc-ld.so.auxcache-2.0"), None);
    }

    #[test]
    fn a_cache_is_keyed_to_this_device_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(root.join("var/cache/ldconfig")).unwrap();
        std::fs::write(lib.join("libx.so.1"), b"ELF").unwrap();
        let m = std::fs::metadata(lib.join("libx.so.1")).unwrap();
        let here = m.dev();
        let elsewhere = here ^ 0x5a5a;
        // One entry of the library as it is, one of a library that changed since; a third device's entry.
        let ids =
            [[m.ino(), m.ctime() as u64, 3, elsewhere], [m.ino() + 1, 9, 9, elsewhere], [m.ino(), 1, 1, elsewhere ^ 1]];
        let original = cache(MAGICS[1], &ids);
        let path = root.join("var/cache/ldconfig/aux-cache");
        std::fs::write(&path, &original).unwrap();

        let seen = with_cache_on_this_device(root, || {
            let during = std::fs::read(&path).unwrap();
            Ok((0..3).map(|e| id(&during, e)[3]).collect::<Vec<_>>())
        })
        .unwrap();
        assert_eq!(seen, [here, here, elsewhere ^ 1], "the root's device's entries are keyed to this device");
        assert_eq!(std::fs::read(&path).unwrap(), original, "untouched meanwhile: put back as it was");

        // ldconfig rewrote it meanwhile (one more library): its entries of this device go back to the old one.
        with_cache_on_this_device(root, || {
            std::fs::write(&path, cache(MAGICS[1], &[[m.ino(), m.ctime() as u64, 3, here], [77, 1, 1, here]]))
                .map_err(io_err("write", &path))
        })
        .unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!([id(&after, 0)[3], id(&after, 1)[3]], [elsewhere, elsewhere]);
    }

    #[test]
    fn a_cache_naming_no_library_of_the_root_or_naming_this_device_already_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let lib = root.join("usr/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(root.join("var/cache/ldconfig")).unwrap();
        std::fs::write(lib.join("libx.so.1"), b"ELF").unwrap();
        let m = std::fs::metadata(lib.join("libx.so.1")).unwrap();
        let path = root.join("var/cache/ldconfig/aux-cache");
        let foreign = cache(MAGICS[1], &[[1, 2, 3, 4]]);
        let this_device_too = cache(MAGICS[1], &[[m.ino(), m.ctime() as u64, 3, 4], [9, 9, 9, m.dev()]]);
        for original in [foreign, this_device_too] {
            std::fs::write(&path, &original).unwrap();
            with_cache_on_this_device(root, || {
                assert_eq!(std::fs::read(&path).unwrap(), original);
                Ok(())
            })
            .unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), original);
        }
    }
}
