//! The full feature phase over an in-memory stream, with tokio's clock under the test's control.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{session, Portal, Target};

const TARGET: &str = "iqn.2026-11.io.livemount:session-test";

/// A discovery login that goes straight to full feature phase.
fn discovery_login() -> Vec<u8> {
    login(&["InitiatorName=iqn.2026-11.io.livemount:test", "SessionType=Discovery"])
}

/// A login with these keys that goes straight to full feature phase.
fn login(pairs: &[&str]) -> Vec<u8> {
    let mut keys = Vec::new();
    for kv in pairs {
        keys.extend_from_slice(kv.as_bytes());
        keys.push(0);
    }
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43; // immediate Login Request
    bhs[1] = 0x80 | (1 << 2) | 3; // Transit, operational stage -> full feature phase
    bhs[7] = keys.len() as u8;
    bhs[8..14].copy_from_slice(&[0x40, 0, 0, 0, 0, 1]); // ISID
    let mut out = bhs.to_vec();
    out.extend_from_slice(&keys);
    out.resize(out.len().div_ceil(4) * 4, 0);
    out
}

/// Reads one PDU (no digests): its header and padded data segment.
async fn read_pdu(s: &mut DuplexStream) -> ([u8; 48], Vec<u8>) {
    let mut bhs = [0u8; 48];
    s.read_exact(&mut bhs).await.unwrap();
    let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    let mut data = vec![0u8; len.div_ceil(4) * 4];
    s.read_exact(&mut data).await.unwrap();
    (bhs, data)
}

#[tokio::test(start_paused = true)]
async fn a_pdu_half_received_when_the_idle_ping_fires_is_still_read_whole() {
    let (mut initiator, target_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(session::serve(target_side, Portal::new("127.0.0.1:3260".into())));
    initiator.write_all(&discovery_login()).await.unwrap();
    let (login, _) = read_pdu(&mut initiator).await;
    assert_eq!((login[0] & 0x3f, login[36]), (0x23, 0), "login accepted");

    // A NOP-Out, sent in two halves with the idle ping in between.
    let mut nop = [0u8; 48];
    nop[0] = 0x40; // immediate NOP-Out
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&0x1234u32.to_be_bytes()); // initiator task tag: answer me
    nop[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    initiator.write_all(&nop[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (ping, _) = read_pdu(&mut initiator).await;
    assert_eq!((ping[0] & 0x3f, &ping[16..20]), (0x20, &[0xff; 4][..]), "the target's own NOP-In ping");
    initiator.write_all(&nop[20..]).await.unwrap();
    let (answer, _) = read_pdu(&mut initiator).await;
    assert_eq!((answer[0] & 0x3f, &answer[16..20]), (0x20, &0x1234u32.to_be_bytes()[..]), "the NOP-Out answered");
    drop(initiator);
    server.await.unwrap();
}

#[tokio::test]
async fn an_initiator_that_never_reads_cannot_make_the_target_hoard_responses() {
    let (mut initiator, target_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(session::serve(target_side, Portal::new("127.0.0.1:3260".into())));
    initiator.write_all(&discovery_login()).await.unwrap();
    let _ = read_pdu(&mut initiator).await;

    // NOP-Outs with 8 KiB of ping data each: every one is answered with the same 8 KiB, which this initiator
    // never reads. The target must stop reading once its unsent answers reach its limit.
    const DATA: usize = 8192;
    let mut nop = vec![0u8; 48 + DATA];
    nop[0] = 0x40;
    nop[1] = 0x80;
    nop[5..8].copy_from_slice(&(DATA as u32).to_be_bytes()[1..]);
    nop[16..20].copy_from_slice(&1u32.to_be_bytes());
    nop[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut sent = 0usize;
    while sent < 40_000 {
        match tokio::time::timeout(Duration::from_secs(2), initiator.write_all(&nop)).await {
            Ok(r) => r.unwrap(),
            Err(_) => break, // the target has stopped reading
        }
        sent += 1;
    }
    let queued_mib = (sent * (48 + DATA)) >> 20;
    assert!(sent < 40_000 && queued_mib <= 80, "the target read {sent} pings ({queued_mib} MiB of answers queued)");
    drop(initiator);
    server.await.unwrap();
}

/// A portal with one target of one small LUN.
fn portal_with_a_disk(dir: &std::path::Path) -> std::sync::Arc<Portal> {
    use crate::engine::Engine;
    use crate::scsi::{Lun, LunSet};
    use crate::source::{Source, SourceError};
    use crate::{Options, PseudoDisk};
    struct Ones;
    impl Source for Ones {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn chunk_size(&self) -> u32 {
            65536
        }
        fn read_chunk(&self, _: u64, buf: &mut Vec<u8>) -> Result<(), SourceError> {
            buf.clear();
            buf.resize(65536, 1);
            Ok(())
        }
        fn describe(&self) -> String {
            "ones".into()
        }
    }
    let disk = PseudoDisk::open(dir, std::sync::Arc::new(Ones), Engine::start().unwrap(), Options::default()).unwrap();
    let portal = Portal::new("127.0.0.1:3260".into());
    let luns = LunSet { luns: vec![std::sync::Arc::new(Lun { disk, serial: "T".into(), naa: [0x60; 16] })] };
    portal.add_target(std::sync::Arc::new(Target { iqn: TARGET.into(), luns, chap: None, allowed_initiators: vec![] }));
    portal
}

fn max_cmd_sn(bhs: &[u8; 48]) -> u32 {
    u32::from_be_bytes(bhs[32..36].try_into().unwrap())
}

#[tokio::test]
async fn an_immediate_command_never_pulls_max_cmd_sn_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut initiator, target_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(session::serve(target_side, portal_with_a_disk(dir.path())));
    let target_name = format!("TargetName={TARGET}");
    initiator.write_all(&login(&["InitiatorName=iqn.2026-11.io.livemount:test", &target_name])).await.unwrap();
    let (answer, _) = read_pdu(&mut initiator).await;
    assert_eq!((answer[0] & 0x3f, answer[36]), (0x23, 0), "login accepted");
    let advertised = max_cmd_sn(&answer);

    // An immediate WRITE of one block without its data: it waits for Data-Out after its R2T.
    let mut write = [0u8; 48];
    write[0] = 0x40 | 0x01; // immediate SCSI Command
    write[1] = 0x80 | 0x20; // final, write
    write[16..20].copy_from_slice(&7u32.to_be_bytes());
    write[20..24].copy_from_slice(&512u32.to_be_bytes());
    write[32] = 0x2a; // WRITE(10), LBA 0
    write[39..41].copy_from_slice(&1u16.to_be_bytes());
    initiator.write_all(&write).await.unwrap();
    let (r2t, _) = read_pdu(&mut initiator).await;
    assert_eq!(r2t[0] & 0x3f, 0x31, "an R2T");

    // While it waits, a NOP-Out's answer says how far the window reaches.
    let mut nop = [0u8; 48];
    nop[0] = 0x40;
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&9u32.to_be_bytes());
    nop[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    initiator.write_all(&nop).await.unwrap();
    let (answer, _) = read_pdu(&mut initiator).await;
    assert_eq!(answer[0] & 0x3f, 0x20);
    assert_eq!(max_cmd_sn(&answer), advertised, "MaxCmdSN moved back while an immediate command waited");
    drop(initiator);
    server.await.unwrap();
}
