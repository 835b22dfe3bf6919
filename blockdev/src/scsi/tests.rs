//! The command set against a pseudo-disk over an in-memory source.

use std::sync::Arc;

use super::*;
use crate::engine::Engine;
use crate::source::{chunk_len, Source, SourceError};

struct Zeros(u64);

impl Source for Zeros {
    fn size(&self) -> u64 {
        self.0
    }
    fn chunk_size(&self) -> u32 {
        65536
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        buf.clear();
        buf.resize(chunk_len(self.0, 65536, index), 0x5a);
        Ok(())
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

fn set(read_only: bool) -> (tempfile::TempDir, LunSet) {
    let dir = tempfile::tempdir().unwrap();
    let disk = crate::PseudoDisk::open(
        dir.path(),
        Arc::new(Zeros(1 << 20)),
        Engine::start().unwrap(),
        crate::Options { read_only },
    )
    .unwrap();
    let lun = Lun::new(disk, "LM0001".into(), [0x6a; 16]);
    (dir, LunSet { luns: vec![Arc::new(lun)] })
}

/// Initiator port `n` (a session of its own).
fn initiator(n: u8) -> Nexus {
    Nexus::iscsi("iqn.2026-01.test:initiator", [0x40, 0, 0, 0, 0, n])
}

fn run(set: &LunSet, lun: u64, cdb: &[u8], data: &[u8]) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(execute(set, &initiator(1), lun, cdb, Bytes::copy_from_slice(data)))
}

#[test]
fn capacity_inquiry_and_luns() {
    let (_d, s) = set(false);
    let rc = run(&s, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(rc.data[..], [0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9e;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let o = run(&s, 0, &rc16, &[]);
    assert_eq!(o.data[0..8], 2047u64.to_be_bytes());
    assert_eq!(o.data[14] & 0xc0, 0xc0, "LBPME and LBPRZ");
    let inq = run(&s, 0, &[0x12, 0, 0, 0, 96, 0], &[]);
    assert_eq!(&inq.data[8..16], b"LIVEMNT ");
    let serial = run(&s, 0, &[0x12, 1, 0x80, 0, 96, 0], &[]);
    assert_eq!(&serial.data[4..], b"LM0001");
    let absent = run(&s, 3, &[0x12, 0, 0, 0, 96, 0], &[]);
    assert_eq!(absent.data[0], 0x7f);
    assert_eq!(run(&s, 3, &[0x00; 6], &[]).sense, Some(Sense::LUN_NOT_SUPPORTED));
    let luns = run(&s, 0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(luns.data[0..4], 8u32.to_be_bytes());
}

#[test]
fn read_write_unmap_and_errors() {
    let (_d, s) = set(false);
    let read10 = |lba: u32, n: u16| {
        let mut c = vec![0x28, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&n.to_be_bytes());
        c.push(0);
        c
    };
    assert_eq!(run(&s, 0, &read10(0, 1), &[]).data, vec![0x5a; 512]);
    let mut w = read10(3, 2);
    w[0] = 0x2a;
    assert_eq!(run(&s, 0, &w, &vec![7u8; 1024]).status, GOOD);
    assert_eq!(run(&s, 0, &read10(3, 2), &[]).data, vec![7u8; 1024]);
    assert_eq!(run(&s, 0, &read10(2047, 2), &[]).sense, Some(Sense::LBA_OUT_OF_RANGE));
    assert_eq!(run(&s, 0, &[0xff; 16], &[]).sense, Some(Sense::INVALID_OPCODE));
    // UNMAP of blocks 8..16 reads zeros.
    let mut params = vec![0u8; 24];
    params[0..2].copy_from_slice(&22u16.to_be_bytes());
    params[2..4].copy_from_slice(&16u16.to_be_bytes());
    params[8..16].copy_from_slice(&8u64.to_be_bytes());
    params[16..20].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(run(&s, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &params).status, GOOD);
    assert_eq!(run(&s, 0, &read10(8, 8), &[]).data, vec![0u8; 4096]);
    let mut gls = [0u8; 16];
    gls[0] = 0x9e;
    gls[1] = 0x12;
    gls[2..10].copy_from_slice(&8u64.to_be_bytes());
    gls[13] = 24;
    let st = run(&s, 0, &gls, &[]);
    assert_eq!(st.data[20], 1, "deallocated");
    assert_eq!(st.data[16..20], 8u32.to_be_bytes());
}

#[test]
fn read_only_luns_are_write_protected() {
    let (_d, s) = set(true);
    let w = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(run(&s, 0, &w, &[0u8; 512]).sense, Some(Sense::WRITE_PROTECTED));
    let ms = run(&s, 0, &[0x1a, 0, 0x3f, 0, 255, 0], &[]);
    assert_eq!(ms.data[2] & 0x80, 0x80, "WP bit in MODE SENSE");
}

#[test]
fn report_supported_opcodes_reads_the_table() {
    let (_d, s) = set(false);
    let all = run(&s, 0, &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]);
    let len = u32::from_be_bytes(all.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, COMMANDS.len() * 8);
    let one = run(&s, 0, &[0xa3, 0x0c, 1, 0x28, 0, 0, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(one.data[1] & 0x07, 0x03);
    assert_eq!(one.data[4], 0x28);
}

/// Makes the error of one chunk.
type MakeError = fn(u64) -> SourceError;

/// A source whose every chunk fails with one kind of error.
struct Failing(MakeError);

impl Source for Failing {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn chunk_size(&self) -> u32 {
        65536
    }
    fn read_chunk(&self, index: u64, _: &mut Vec<u8>) -> Result<(), SourceError> {
        Err((self.0)(index))
    }
    fn describe(&self) -> String {
        "failing".into()
    }
}

/// Each way a source fails reaches the initiator as its own sense, and the file view as its own errno.
#[test]
fn each_source_error_kind_has_its_sense_and_errno() {
    let cases: [(MakeError, Sense, i32); 5] = [
        (|chunk| SourceError::Missing { chunk, source: "gone".into() }, Sense::UNRECOVERED_READ_ERROR, libc::EIO),
        (|chunk| SourceError::Corrupt { chunk, source: "bad".into() }, Sense::UNRECOVERED_READ_ERROR, libc::EIO),
        (
            |chunk| SourceError::Io {
                chunk,
                what: "read pack".into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            },
            Sense::UNRECOVERED_READ_ERROR,
            libc::EIO,
        ),
        (
            |chunk| SourceError::Io {
                chunk,
                what: "open pack".into(),
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            },
            Sense::INTERNAL_TARGET_FAILURE,
            libc::EACCES,
        ),
        (|chunk| SourceError::Other { chunk, source: "odd".into() }, Sense::INTERNAL_TARGET_FAILURE, libc::EIO),
    ];
    for (make, sense, errno) in cases {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::PseudoDisk::open(
            dir.path(),
            Arc::new(Failing(make)),
            Engine::start().unwrap(),
            crate::Options::default(),
        )
        .unwrap();
        let lun = Lun::new(disk.clone(), "LM0002".into(), [0x6b; 16]);
        let s = LunSet { luns: vec![Arc::new(lun)] };
        let o = run(&s, 0, &[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0], &[]);
        assert_eq!(o.status, CHECK_CONDITION);
        assert_eq!(o.sense, Some(sense), "{:?}", make(4));
        assert_eq!(sense.key == 0x03, sense == Sense::UNRECOVERED_READ_ERROR);
        let fixed = sense.fixed();
        assert_eq!((fixed[2], fixed[12], fixed[13]), (sense.key, sense.asc, sense.ascq));
        // The FUSE adapter: the same error as an errno.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let file = crate::fuse::DiskFile(disk);
        let got = rt.block_on(crate::fuse::ViewFile::read(&file, 4096, 512));
        assert_eq!(got, Err(errno), "{:?}", make(0));
    }
    assert_eq!(Sense::UNRECOVERED_READ_ERROR, Sense::new(0x03, 0x11, 0x00));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    /// Any CDB of a supported opcode, with any data-out, gets an answer, never a panic.
    #[test]
    fn garbage_cdbs_never_panic(
        opcode in 0..COMMANDS.len(),
        mut cdb in proptest::array::uniform16(proptest::prelude::any::<u8>()),
        data_len in 0usize..2048,
    ) {
        // One LUN for every case, as the commands run one after another on a real target.
        static SET: std::sync::OnceLock<(tempfile::TempDir, LunSet)> = std::sync::OnceLock::new();
        let (_, s) = SET.get_or_init(|| set(false));
        cdb[0] = COMMANDS[opcode].opcode;
        let data = vec![0u8; data_len];
        let _ = run(s, 0, &cdb, &data);
    }
}

/// A 16-byte CDB: opcode, flags, 8-byte LBA, then `tail` (bytes 10..16).
fn cdb16(opcode: u8, flags: u8, lba: u64, tail: [u8; 6]) -> Vec<u8> {
    let mut c = vec![opcode, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&tail);
    c
}

fn read_blocks(s: &LunSet, lba: u64, n: u32) -> Vec<u8> {
    let [a, b, c, d] = n.to_be_bytes();
    let o = run(s, 0, &cdb16(0x88, 0, lba, [a, b, c, d, 0, 0]), &[]);
    assert_eq!(o.status, GOOD, "{o:?}");
    o.data.to_vec()
}

#[test]
fn compare_and_write_writes_only_what_matches_and_says_where_it_did_not() {
    let (_d, s) = set(false);
    let caw = |lba: u64, blocks: u8| cdb16(0x89, 0, lba, [0, 0, 0, blocks, 0, 0]);
    // The source reads 0x5a: expecting that, two blocks become 0x11.
    let mut data = vec![0x5a; 1024];
    data.extend_from_slice(&[0x11; 1024]);
    assert_eq!(run(&s, 0, &caw(4, 2), &data).status, GOOD);
    assert_eq!(read_blocks(&s, 4, 2), vec![0x11; 1024]);
    // Expecting the old content again: the second block's byte 7 differs (offset 512 + 7 of the data-out).
    let mut stale = vec![0x11; 1024];
    stale[512 + 7] = 0x5a;
    stale.extend_from_slice(&[0x22; 1024]);
    let o = run(&s, 0, &caw(4, 2), &stale);
    let sense = o.sense.expect("check condition");
    assert_eq!((sense.key, sense.asc, sense.info), (0x0e, 0x1d, Some(519)));
    assert_eq!(sense.fixed()[3..7], 519u32.to_be_bytes(), "INFORMATION, marked valid");
    assert_eq!(sense.fixed()[0] & 0x80, 0x80);
    assert_eq!(read_blocks(&s, 4, 2), vec![0x11; 1024], "nothing written on a miscompare");
    // Too short a data-out, beyond the end, and more blocks than announced are refused.
    assert_eq!(run(&s, 0, &caw(4, 2), &[0x11; 1024]).sense, Some(Sense::INVALID_FIELD_IN_CDB));
    assert_eq!(run(&s, 0, &caw(4, 1), &[0x11; 2048]).sense, Some(Sense::INVALID_FIELD_IN_CDB), "too long");
    assert_eq!(run(&s, 0, &caw(4, 0), &[0x11; 1024]).sense, Some(Sense::INVALID_FIELD_IN_CDB), "256 blocks");
    assert_eq!(run(&s, 0, &caw(2047, 2), &[0; 2048]).sense, Some(Sense::LBA_OUT_OF_RANGE));
    let limits = run(&s, 0, &[0x12, 1, 0xb0, 0, 64, 0], &[]);
    assert_eq!(limits.data[5], super::spc::MAX_COMPARE_AND_WRITE_BLOCKS);
}

#[test]
fn compare_and_write_is_atomic_against_concurrent_writes_of_its_blocks() {
    // Many initiators take the same "lock block" with COMPARE AND WRITE from 0 to their id: exactly one wins,
    // the block holds its id, and every other one is told of the miscompare.
    let (_d, s) = set(false);
    let s = Arc::new(s);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let zero = [0u8; 512];
    rt.block_on(execute(&s, &initiator(1), 0, &cdb16(0x8a, 0, 9, [0, 0, 0, 1, 0, 0]), Bytes::copy_from_slice(&zero)));
    let outcomes = rt.block_on(async {
        let tasks: Vec<_> = (1..=16u8)
            .map(|id| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut data = vec![0u8; 512];
                    data.extend_from_slice(&[id; 512]);
                    (id, execute(&s, &initiator(1), 0, &cdb16(0x89, 0, 9, [0, 0, 0, 1, 0, 0]), Bytes::from(data)).await)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let winners: Vec<u8> = outcomes.iter().filter(|(_, o)| o.status == GOOD).map(|(id, _)| *id).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|(_, o)| o.status == GOOD || o.sense.is_some_and(|s| s.key == 0x0e)));
    assert_eq!(read_blocks(&s, 9, 1), vec![winners[0]; 512]);
}

#[test]
fn orwrite_verify12_write_and_verify_and_prefetch() {
    let (_d, s) = set(false);
    // ORWRITE: 0x5a | 0x81 = 0xdb.
    assert_eq!(run(&s, 0, &cdb16(0x8b, 0, 3, [0, 0, 0, 1, 0, 0]), &[0x81; 512]).status, GOOD);
    assert_eq!(read_blocks(&s, 3, 1), vec![0xdb; 512]);
    // WRITE AND VERIFY (12), then VERIFY (12) comparing the data: equal, then not.
    // A 12-byte CDB: opcode, flags, 4-byte LBA, 4-byte block count, then two zero bytes.
    let cdb12 = |opcode: u8, flags: u8, lba: u32, blocks: u32| {
        [[opcode, flags].as_slice(), &lba.to_be_bytes(), &blocks.to_be_bytes(), &[0, 0]].concat()
    };
    let wv12 = cdb12(0xae, 0, 5, 1);
    assert_eq!(run(&s, 0, &wv12, &[0x33; 512]).status, GOOD);
    assert_eq!(read_blocks(&s, 5, 1), vec![0x33; 512]);
    let v12 = cdb12(0xaf, 0x02, 5, 1);
    assert_eq!(run(&s, 0, &v12, &[0x33; 512]).status, GOOD);
    assert_eq!(run(&s, 0, &v12, &[0x34; 512]).sense, Some(Sense::MISCOMPARE_DURING_VERIFY));
    // PRE-FETCH (16) of the whole LUN (zero blocks: to the end) recalls its chunks in the background.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let o = execute(&s, &initiator(1), 0, &cdb16(0x90, 0, 0, [0, 0, 0, 0, 0, 0]), Bytes::new()).await;
        assert_eq!(o.status, GOOD);
        let disk = &s.luns[0].disk;
        for _ in 0..200 {
            if disk.counters().bytes_recalled >= disk.size() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(disk.counters().bytes_recalled, disk.size(), "every chunk recalled by the PRE-FETCH");
    });
    assert_eq!(run(&s, 0, &cdb16(0x90, 0, 2048, [0, 0, 0, 1, 0, 0]), &[]).sense, Some(Sense::LBA_OUT_OF_RANGE));
}

/// A command of initiator port `n` on LUN 0.
fn run_as(set: &LunSet, n: u8, cdb: &[u8], data: &[u8]) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(execute(set, &initiator(n), 0, cdb, Bytes::copy_from_slice(data)))
}

/// PERSISTENT RESERVE OUT: service action, type, the caller's key, the service action key, APTPL.
fn prout(sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut list = key.to_be_bytes().to_vec();
    list.extend_from_slice(&sa_key.to_be_bytes());
    list.extend_from_slice(&[0, 0, 0, 0, u8::from(aptpl), 0, 0, 0]);
    (cdb, list)
}

fn prin(s: &LunSet, n: u8, sa: u8) -> Vec<u8> {
    let o = run_as(s, n, &[0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(o.status, GOOD, "{o:?}");
    o.data.to_vec()
}

const CONFLICT: u8 = reservations::RESERVATION_CONFLICT;

#[test]
fn two_initiators_contend_for_a_persistent_reservation_as_spc4_says() {
    let (_d, s) = set(false);
    let out = |n: u8, sa: u8, kind: u8, key: u64, sa_key: u64| {
        let (cdb, list) = prout(sa, kind, key, sa_key, false);
        run_as(&s, n, &cdb, &list)
    };
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    // Registration: a wrong key of an unregistered port conflicts; each registers its own.
    assert_eq!(out(1, 0, 0, 0x99, 0xa).status, CONFLICT);
    assert_eq!(out(1, 0, 0, 0, 0xa).status, GOOD);
    assert_eq!(out(2, 6, 0, 0, 0xb).status, GOOD, "REGISTER AND IGNORE EXISTING KEY");
    let keys = prin(&s, 1, 0);
    assert_eq!(&keys[0..4], &2u32.to_be_bytes(), "generation: two registrations");
    assert_eq!(&keys[8..], &[0xau64.to_be_bytes(), 0xbu64.to_be_bytes()].concat()[..]);
    // Port 1 takes WRITE EXCLUSIVE: port 2 still reads, but may not write; port 1 does both.
    assert_eq!(out(1, 1, 1, 0xa, 0).status, GOOD);
    assert_eq!(out(2, 1, 1, 0xb, 0).status, CONFLICT, "another holder's reservation");
    assert_eq!(run_as(&s, 2, &read, &[]).status, GOOD);
    assert_eq!(run_as(&s, 2, &write, &[0; 512]).status, CONFLICT);
    assert_eq!(run_as(&s, 1, &write, &[7; 512]).status, GOOD);
    let r = prin(&s, 2, 1);
    assert_eq!((&r[8..16], r[21]), (&0xau64.to_be_bytes()[..], 1), "READ RESERVATION: port 1's key, type 1");
    // Port 2 preempts port 1 as EXCLUSIVE ACCESS: port 1's registration goes, and it is told so once.
    assert_eq!(out(2, 4, 3, 0xb, 0xa).status, GOOD);
    let told = run_as(&s, 1, &read, &[]);
    assert_eq!(told.sense.map(|x| (x.key, x.asc, x.ascq)), Some((0x06, 0x2a, 0x05)), "REGISTRATIONS PREEMPTED");
    assert_eq!(run_as(&s, 1, &read, &[]).status, CONFLICT, "exclusive access: no reads either");
    assert_eq!(run_as(&s, 1, &[0x12, 0, 0, 0, 36, 0], &[]).status, GOOD, "INQUIRY always");
    assert_eq!(prin(&s, 1, 0)[8..], 0xbu64.to_be_bytes());
    // A release of another type is refused; of its own type, port 1 may write again.
    assert_eq!(out(2, 2, 1, 0xb, 0).sense, Some(Sense::new(0x05, 0x26, 0x04)));
    assert_eq!(out(2, 2, 3, 0xb, 0).status, GOOD);
    assert_eq!(run_as(&s, 1, &write, &[8; 512]).status, GOOD);
    // All registrants: every registrant may write; CLEAR takes everything away and tells the others.
    assert_eq!(out(1, 0, 0, 0, 0xc).status, GOOD);
    assert_eq!(out(2, 1, 7, 0xb, 0).status, GOOD);
    assert_eq!(run_as(&s, 1, &write, &[9; 512]).status, GOOD);
    assert_eq!(run_as(&s, 3, &write, &[9; 512]).status, CONFLICT, "port 3 is not registered");
    assert_eq!(out(2, 3, 0, 0xb, 0).status, GOOD);
    let told = run_as(&s, 1, &read, &[]);
    assert_eq!(told.sense.map(|x| (x.key, x.asc, x.ascq)), Some((0x06, 0x2a, 0x03)), "RESERVATIONS PREEMPTED");
    assert_eq!(prin(&s, 1, 0)[4..8], 0u32.to_be_bytes(), "no keys left");
    assert_eq!(run_as(&s, 3, &write, &[9; 512]).status, GOOD);
}

#[test]
fn persistent_reservations_with_aptpl_come_back_with_the_lun() {
    let (_d, s) = set(false);
    let (cdb, list) = prout(0, 0, 0, 0x1234, true);
    assert_eq!(run_as(&s, 1, &cdb, &list).status, GOOD);
    let (cdb, list) = prout(1, 3, 0x1234, 0, true);
    assert_eq!(run_as(&s, 1, &cdb, &list).status, GOOD);
    // The daemon restarts: the mount's LUN is made again on the same disk.
    let disk = s.luns[0].disk.clone();
    let again = LunSet { luns: vec![Arc::new(Lun::new(disk.clone(), "LM0001".into(), [0x6a; 16]))] };
    assert_eq!(prin(&again, 2, 1)[21], 3, "the reservation came back");
    assert_eq!(run_as(&again, 2, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]).status, CONFLICT);
    let caps = prin(&again, 1, 2);
    assert_eq!((caps[2] & 0x01, caps[3] & 0x01), (1, 1), "PTPL_C and PTPL_A");
    // Without APTPL nothing is kept.
    let (cdb, list) = prout(0, 0, 0x1234, 0, false);
    assert_eq!(run_as(&again, 1, &cdb, &list).status, GOOD);
    let third = LunSet { luns: vec![Arc::new(Lun::new(disk, "LM0001".into(), [0x6a; 16]))] };
    assert_eq!(prin(&third, 1, 1)[4..8], 0u32.to_be_bytes());
    assert_eq!(run_as(&third, 2, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]).status, GOOD);
}

#[test]
fn reserve6_holds_the_lun_for_one_port_until_release_reset_or_logout() {
    let (_d, s) = set(false);
    let mode_sense = [0x1a, 0, 0x3f, 0, 0xff, 0];
    assert_eq!(run_as(&s, 1, &[0x16, 0, 0, 0, 0, 0], &[]).status, GOOD);
    assert_eq!(run_as(&s, 2, &mode_sense, &[]).status, CONFLICT);
    assert_eq!(run_as(&s, 2, &[0x16, 0, 0, 0, 0, 0], &[]).status, CONFLICT);
    assert_eq!(run_as(&s, 2, &[0x17, 0, 0, 0, 0, 0], &[]).status, GOOD, "another's RELEASE releases nothing");
    assert_eq!(run_as(&s, 2, &mode_sense, &[]).status, CONFLICT);
    assert_eq!(run_as(&s, 1, &mode_sense, &[]).status, GOOD);
    s.nexus_lost(&initiator(1));
    assert_eq!(run_as(&s, 2, &mode_sense, &[]).status, GOOD, "the holder logged out");
    assert_eq!(run_as(&s, 2, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).status, GOOD, "RESERVE(10)");
    s.reset(Some(0));
    assert_eq!(run_as(&s, 1, &mode_sense, &[]).status, GOOD, "LUN reset");
    // A persistent registration makes RESERVE conflict.
    let (cdb, list) = prout(0, 0, 0, 5, false);
    assert_eq!(run_as(&s, 1, &cdb, &list).status, GOOD);
    assert_eq!(run_as(&s, 1, &[0x16, 0, 0, 0, 0, 0], &[]).status, CONFLICT);
}

/// Two LUNs of 4 MiB over the same test source (0x5a everywhere).
fn two_luns() -> (tempfile::TempDir, LunSet) {
    let dir = tempfile::tempdir().unwrap();
    let luns = (0..2u8)
        .map(|n| {
            let sub = dir.path().join(format!("disk{n}"));
            std::fs::create_dir(&sub).unwrap();
            let disk = crate::PseudoDisk::open(
                &sub,
                Arc::new(Zeros(4 << 20)),
                Engine::start().unwrap(),
                crate::Options::default(),
            )
            .unwrap();
            Arc::new(Lun::new(disk, format!("LM000{n}"), [0x60 + n; 16]))
        })
        .collect();
    (dir, LunSet { luns })
}

/// An EXTENDED COPY parameter list: list id and usage, one identification CSCD per NAA, block-to-block
/// segments (source CSCD, destination CSCD, blocks, source LBA, destination LBA).
fn xcopy_list(list_id: u8, usage: u8, naas: &[[u8; 16]], segments: &[(u16, u16, u16, u64, u64)]) -> Vec<u8> {
    let mut l = vec![list_id, usage << 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    l[2..4].copy_from_slice(&((naas.len() * 32) as u16).to_be_bytes());
    l[8..12].copy_from_slice(&((segments.len() * 28) as u32).to_be_bytes());
    for naa in naas {
        let mut d = vec![0xe4, 0, 0, 0, 0x01, 0x03, 0, 16];
        d.extend_from_slice(naa);
        d.resize(28, 0);
        d.extend_from_slice(&[0, 0, 0x02, 0x00]); // block length 512
        l.extend_from_slice(&d);
    }
    for &(src, dst, blocks, src_lba, dst_lba) in segments {
        l.extend_from_slice(&[0x02, 0, 0, 0x18]);
        l.extend_from_slice(&src.to_be_bytes());
        l.extend_from_slice(&dst.to_be_bytes());
        l.extend_from_slice(&[0, 0]);
        l.extend_from_slice(&blocks.to_be_bytes());
        l.extend_from_slice(&src_lba.to_be_bytes());
        l.extend_from_slice(&dst_lba.to_be_bytes());
    }
    l
}

fn xcopy(s: &LunSet, list: &[u8]) -> Outcome {
    let mut cdb = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb.extend_from_slice(&(list.len() as u32).to_be_bytes());
    cdb.extend_from_slice(&[0, 0]);
    run(s, 0, &cdb, list)
}

#[test]
fn extended_copy_between_two_luns_reads_the_source_once() {
    let (_d, s) = two_luns();
    let pattern: Vec<u8> = (0..16 * 512u32).map(|i| (i / 512) as u8 + 1).collect();
    assert_eq!(run(&s, 0, &cdb16(0x8a, 0, 0, [0, 0, 0, 16, 0, 0]), &pattern).status, GOOD);
    let read_before = s.luns[0].disk.counters().bytes_read;
    let list = xcopy_list(7, 0, &[[0x60; 16], [0x61; 16]], &[(0, 1, 16, 0, 100)]);
    assert_eq!(xcopy(&s, &list).status, GOOD);
    assert_eq!(s.luns[0].disk.counters().bytes_read - read_before, 16 * 512, "the source is read once");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(rt.block_on(s.luns[1].disk.read(100 * 512, 16 * 512)).unwrap(), pattern);
    // COPY STATUS of the held list: completed, good, one segment, 8 KiB.
    let status = run(&s, 0, &[0x84, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[]);
    assert_eq!(status.data[4..12], [0x01, 0, 1, 0, 0, 0, 0x20, 0]);
    assert_eq!(
        run(&s, 0, &[0x84, 0x00, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[]).sense,
        Some(Sense::INVALID_FIELD_IN_CDB)
    );
    // OPERATING PARAMETERS: the limits the checks below run into.
    let op = run(&s, 0, &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[]);
    assert!(u32::from_be_bytes(op.data[0..4].try_into().unwrap()) >= 40);
    let (t, seg) = (be16(&op.data[8..10]) as usize, be16(&op.data[10..12]) as usize);
    let too_many_cscds = xcopy_list(1, 2, &vec![[0x60; 16]; t + 1], &[(0, 0, 1, 0, 8)]);
    assert_eq!(xcopy(&s, &too_many_cscds).sense.map(|x| (x.asc, x.ascq)), Some((0x26, 0x06)));
    let too_many_segments = xcopy_list(1, 2, &[[0x60; 16]], &vec![(0, 0, 1, 0, 8); seg + 1]);
    assert_eq!(xcopy(&s, &too_many_segments).sense.map(|x| (x.asc, x.ascq)), Some((0x26, 0x08)));
    // A LUN that is not here, and a segment past the end of its LUN: COPY ABORTED.
    let elsewhere = xcopy_list(1, 2, &[[0x60; 16], [0x99; 16]], &[(0, 1, 1, 0, 0)]);
    assert_eq!(xcopy(&s, &elsewhere).sense.map(|x| (x.key, x.asc, x.ascq)), Some((0x0a, 0x08, 0x04)));
    let beyond = xcopy_list(1, 2, &[[0x60; 16]], &[(0, 0, 16, 0, 8190)]);
    assert_eq!(xcopy(&s, &beyond).sense.map(|x| x.key), Some(0x0a));
    // A list shorter than its header says.
    assert_eq!(xcopy(&s, &list[..47]).sense, Some(Sense::PARAMETER_LIST_LENGTH));
}

#[test]
fn extended_copy_onto_an_overlapping_later_range_of_the_same_lun_copies_what_was_there() {
    let (_d, s) = two_luns();
    // 2.5 MiB, copied in three pieces, 128 KiB further on.
    let pattern: Vec<u8> = (0..5120 * 512u32).map(|i| (i / 512 % 251) as u8).collect();
    for (k, piece) in pattern.chunks(256 * 512).enumerate() {
        let lba = (k * 256) as u64;
        assert_eq!(run(&s, 0, &cdb16(0x8a, 0, lba, [0, 0, 1, 0, 0, 0]), piece).status, GOOD);
    }
    let list = xcopy_list(0, 3, &[[0x60; 16]], &[(0, 0, 5120, 0, 256)]);
    assert_eq!(xcopy(&s, &list).status, GOOD);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let copied = rt.block_on(s.luns[0].disk.read(256 * 512, 5120 * 512)).unwrap();
    assert!(copied == pattern, "the destination holds the source as it was before the copy");
}

#[test]
fn the_task_attributes_and_copy_offload_announced_are_the_ones_offered() {
    let (_d, s) = set(false);
    let pages = run(&s, 0, &[0x12, 1, 0x00, 0, 64, 0], &[]);
    assert!(pages.data[4..].contains(&0x86) && pages.data[4..].contains(&0x8f));
    let extended = run(&s, 0, &[0x12, 1, 0x86, 0, 64, 0], &[]);
    assert_eq!((extended.data[1], extended.data[5]), (0x86, 0x01), "SIMPLE tasks only");
    let standard = run(&s, 0, &[0x12, 0, 0, 0, 64, 0], &[]);
    assert_eq!(standard.data[5] & 0x08, 0x08, "3PC");
    let tpc = run(&s, 0, &[0x12, 1, 0x8f, 0, 64, 0], &[]);
    // One Supported Commands descriptor: EXTENDED COPY (LID1), RECEIVE COPY RESULTS 0 and 3.
    assert_eq!(&tpc.data[4..6], &[0x00, 0x01]);
    assert_eq!(&tpc.data[9..16], &[0x83, 1, 0x00, 0x84, 2, 0x00, 0x03]);
}
