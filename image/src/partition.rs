//! Reading MBR and GPT partition tables.
//!
//! MBR: the boot sector ends in 0x55 0xAA and holds four 16-byte entries at offset 446 (type byte at +4,
//! first LBA at +8, sector count at +12, little endian); logical partitions follow a chain of extended boot
//! records inside the extended partition. GPT (UEFI spec, chapter 5): a protective MBR (type 0xEE), a header
//! at LBA 1 ("EFI PART", with a CRC32 of itself) pointing to an array of entries (type GUID, unique GUID,
//! first and last LBA, attributes, UTF-16 name) with a CRC32 of its own. Sectors are 512 bytes; 4 KiB
//! sectors are tried when no GPT header is found at 512.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("cannot read the disk at offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
}

impl Scheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheme::Mbr => "mbr",
            Scheme::Gpt => "gpt",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (logical MBR partitions from 5).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    pub size: u64,
    /// "0x83" for MBR, the type GUID for GPT.
    pub type_id: String,
    pub type_name: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    pub sector_size: u32,
    pub partitions: Vec<Partition>,
}

/// Reads the partition table of a disk of `disk_size` bytes through `read_at(offset, buf)`. `Ok(None)` when
/// the disk has no partition table.
pub fn read_partition_table(
    disk_size: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<Option<PartitionTable>, PartitionError> {
    let mut read = |offset: u64, buf: &mut [u8]| -> Result<bool, PartitionError> {
        if offset + buf.len() as u64 > disk_size {
            return Ok(false);
        }
        read_at(offset, buf).map_err(|source| PartitionError::Read { offset, source })?;
        Ok(true)
    };
    let mut mbr = [0u8; 512];
    if !read(0, &mut mbr)? || mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries = mbr_entries(&mbr);
    if entries.iter().any(|e| e.kind == 0xEE) {
        for sector_size in [512u32, 4096] {
            if let Some(t) = read_gpt(sector_size, disk_size, &mut read)? {
                return Ok(Some(t));
            }
        }
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        partitions.push(mbr_partition(i as u32 + 1, e, 0));
        if matches!(e.kind, 0x05 | 0x0F | 0x85) {
            read_logical(e.lba, &mut read, &mut partitions)?;
        }
    }
    Ok(Some(PartitionTable { scheme: Scheme::Mbr, sector_size: 512, partitions }))
}

struct MbrEntry {
    kind: u8,
    lba: u64,
    sectors: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn mbr_entries(sector: &[u8; 512]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| {
            let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
            MbrEntry { kind: e[4], lba: le32(e, 8).into(), sectors: le32(e, 12).into() }
        })
        .collect()
}

fn mbr_partition(number: u32, e: &MbrEntry, base_lba: u64) -> Partition {
    Partition {
        number,
        start: (base_lba + e.lba) * 512,
        size: e.sectors * 512,
        type_id: format!("0x{:02x}", e.kind),
        type_name: mbr_type_name(e.kind).to_string(),
        name: String::new(),
    }
}

/// Reads `buf` at a byte offset of the disk; false when the range lies past the disk's end.
type ReadSectors<'a> = dyn FnMut(u64, &mut [u8]) -> Result<bool, PartitionError> + 'a;

/// Walks the chain of extended boot records; at most 128 of them, so that a looping chain ends.
fn read_logical(extended_lba: u64, read: &mut ReadSectors, out: &mut Vec<Partition>) -> Result<(), PartitionError> {
    let mut ebr_lba = extended_lba;
    for number in 5..5 + 128 {
        let mut sector = [0u8; 512];
        if !read(ebr_lba * 512, &mut sector)? || sector[510..512] != [0x55, 0xAA] {
            break;
        }
        let entries = mbr_entries(&sector);
        if entries[0].kind != 0 && entries[0].sectors != 0 {
            out.push(mbr_partition(number, &entries[0], ebr_lba));
        }
        if entries[1].kind == 0 || entries[1].lba == 0 {
            break;
        }
        ebr_lba = extended_lba + entries[1].lba;
    }
    Ok(())
}

fn read_gpt(
    sector_size: u32,
    disk_size: u64,
    read: &mut ReadSectors,
) -> Result<Option<PartitionTable>, PartitionError> {
    let ss = u64::from(sector_size);
    let mut header = vec![0u8; sector_size as usize];
    if !read(ss, &mut header)? || &header[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=sector_size as usize).contains(&header_size) {
        return Ok(None);
    }
    let mut h = header[..header_size].to_vec();
    let crc = le32(&h, 16);
    h[16..20].fill(0);
    if crc32fast::hash(&h) != crc {
        return Ok(None);
    }
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80) as usize;
    let entry_size = le32(&header, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 16384 {
        return Ok(None);
    }
    let mut entries = vec![0u8; count * entry_size];
    if !read(entries_lba * ss, &mut entries)? || crc32fast::hash(&entries) != le32(&header, 88) {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first || (last + 1) * ss > disk_size {
            continue;
        }
        let type_id = guid_string(&e[0..16]);
        let name_units: Vec<u16> =
            e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            start: first * ss,
            size: (last - first + 1) * ss,
            type_name: gpt_type_name(&type_id).to_string(),
            type_id,
            name: String::from_utf16_lossy(&name_units),
        });
    }
    Ok(Some(PartitionTable { scheme: Scheme::Gpt, sector_size, partitions }))
}

/// A GUID as text: the first three fields are stored little endian.
fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn mbr_type_name(kind: u8) -> &'static str {
    match kind {
        0x05 | 0x0F | 0x85 => "Extended",
        0x06 | 0x0E => "FAT16",
        0x07 => "NTFS/exFAT",
        0x0B | 0x0C => "FAT32",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xEE => "GPT protective",
        0xEF => "EFI System",
        0xFD => "Linux RAID",
        _ => "unknown",
    }
}

fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DD928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn table_of(image: &[u8]) -> Option<PartitionTable> {
        read_partition_table(image.len() as u64, &mut |off, buf| {
            buf.copy_from_slice(&image[off as usize..off as usize + buf.len()]);
            Ok(())
        })
        .unwrap()
    }

    /// Builds a table with sfdisk (util-linux), the tool people use, and reads it back.
    fn sfdisk(label: &str, script: &str) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().ok()?;
        let p = dir.path().join("disk.img");
        std::fs::File::create(&p).ok()?.set_len(64 << 20).ok()?;
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        use std::io::Write;
        writeln!(child.stdin.take()?, "label: {label}\n{script}").ok()?;
        assert!(child.wait().ok()?.success());
        std::fs::read(&p).ok()
    }

    #[test]
    fn gpt_from_sfdisk() {
        let Some(img) = sfdisk("gpt", "start=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649\nstart=10240, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root")
        else {
            panic!("sfdisk (fdisk package) is needed for this test");
        };
        let t = table_of(&img).unwrap();
        assert_eq!(t.scheme, Scheme::Gpt);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].start, 2048 * 512);
        assert_eq!(t.partitions[0].type_name, "BIOS boot");
        assert_eq!(t.partitions[1].type_name, "Linux filesystem");
        assert_eq!(t.partitions[1].name, "root");
    }

    #[test]
    fn mbr_with_logical_from_sfdisk() {
        let img = sfdisk("dos", "start=2048, size=20480, type=83\nstart=22528, type=5\nstart=24576, size=10240, type=82\nstart=36864, size=4096, type=83")
            .expect("sfdisk (fdisk package) is needed for this test");
        let t = table_of(&img).unwrap();
        assert_eq!(t.scheme, Scheme::Mbr);
        let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 2, 5, 6]);
        assert_eq!(t.partitions[2].start, 24576 * 512);
        assert_eq!(t.partitions[2].type_name, "Linux swap");
        assert_eq!(t.partitions[3].size, 4096 * 512);
    }

    #[test]
    fn zeros_are_no_table() {
        assert_eq!(table_of(&[0u8; 4096]), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Random bytes behind a protective MBR and a GPT signature, so that the GPT path reads them as a
        /// header and entries: whatever they say, reading gives an answer and never panics.
        #[test]
        fn garbage_is_no_panic(mut img in proptest::collection::vec(proptest::prelude::any::<u8>(), 64 * 1024)) {
            img[510] = 0x55;
            img[511] = 0xAA;
            img[446 + 4] = 0xEE;
            img[512..520].copy_from_slice(b"EFI PART");
            let _ = table_of(&img);
        }
    }
}
