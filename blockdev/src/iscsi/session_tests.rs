//! The full feature phase over an in-memory stream, with tokio's clock under the test's control.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};

use super::pdu::{flag, Digests, InitiatorOp, Pdu, RejectReason, TargetOp, RESERVED_TAG};
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
    let mut pdu = Pdu::request(InitiatorOp::Login, true);
    pdu.set_login_stages(1, Some(3)); // Transit, operational stage -> full feature phase
    pdu.set_isid([0x40, 0, 0, 0, 0, 1]);
    pdu.data = keys.into();
    pdu.encode(Digests::default())
}

/// Reads one PDU the target sent (no digests).
async fn read_pdu(s: &mut DuplexStream) -> Pdu {
    Pdu::read(s, Digests::default(), 1 << 24).await.unwrap()
}

/// A NOP-Out that asks for an answer (its ITT is not the reserved tag).
fn nop_out(itt: u32) -> Pdu {
    let mut nop = Pdu::request(InitiatorOp::NopOut, true);
    nop.set_flags(flag::FINAL);
    nop.set_itt(itt);
    nop.set_ttt(RESERVED_TAG);
    nop
}

/// Checks that `pdu` is a login response of success.
fn assert_logged_in(pdu: &Pdu) {
    assert_eq!((pdu.target_opcode(), pdu.login_status()), (TargetOp::LoginResponse, (0, 0)), "login accepted");
}

#[tokio::test(start_paused = true)]
async fn a_pdu_half_received_when_the_idle_ping_fires_is_still_read_whole() {
    let (mut initiator, target_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(session::serve(target_side, Portal::new("127.0.0.1:3260".into())));
    initiator.write_all(&discovery_login()).await.unwrap();
    assert_logged_in(&read_pdu(&mut initiator).await);

    // A NOP-Out, sent in two halves with the idle ping in between.
    let nop = nop_out(0x1234).encode(Digests::default());
    initiator.write_all(&nop[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let ping = read_pdu(&mut initiator).await;
    assert_eq!((ping.target_opcode(), ping.itt()), (TargetOp::NopIn, RESERVED_TAG), "the target's own NOP-In ping");
    initiator.write_all(&nop[20..]).await.unwrap();
    let answer = read_pdu(&mut initiator).await;
    assert_eq!((answer.target_opcode(), answer.itt()), (TargetOp::NopIn, 0x1234), "the NOP-Out answered");
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
    let mut nop = nop_out(1);
    nop.data = vec![0u8; DATA].into();
    let nop = nop.encode(Digests::default());
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
    let luns = LunSet { luns: vec![std::sync::Arc::new(Lun::new(disk, "T".into(), [0x60; 16]))] };
    portal.add_target(std::sync::Arc::new(Target::new(TARGET.into(), luns, None, vec![])));
    portal
}

#[tokio::test]
async fn an_immediate_command_never_pulls_max_cmd_sn_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut initiator, target_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(session::serve(target_side, portal_with_a_disk(dir.path())));
    let target_name = format!("TargetName={TARGET}");
    initiator.write_all(&login(&["InitiatorName=iqn.2026-11.io.livemount:test", &target_name])).await.unwrap();
    let answer = read_pdu(&mut initiator).await;
    assert_logged_in(&answer);
    let advertised = answer.max_cmd_sn();

    // An immediate WRITE of one block without its data: it waits for Data-Out after its R2T.
    let mut write = Pdu::request(InitiatorOp::ScsiCommand, true);
    write.set_flags(flag::FINAL | flag::WRITE);
    write.set_itt(7);
    write.set_expected_length(512);
    write.set_cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]); // WRITE(10) of one block at LBA 0
    initiator.write_all(&write.encode(Digests::default())).await.unwrap();
    assert_eq!(read_pdu(&mut initiator).await.target_opcode(), TargetOp::R2t, "an R2T");

    // While it waits, a NOP-Out's answer says how far the window reaches.
    initiator.write_all(&nop_out(9).encode(Digests::default())).await.unwrap();
    let answer = read_pdu(&mut initiator).await;
    assert_eq!(answer.target_opcode(), TargetOp::NopIn);
    assert_eq!(answer.max_cmd_sn(), advertised, "MaxCmdSN moved back while an immediate command waited");
    drop(initiator);
    server.await.unwrap();
}

/// A Login Request in full feature phase is a protocol error (RFC 7143 section 11.17.1, reason 0x04; 0x0b
/// is the deprecated Negotiation Reset): it is rejected with its header echoed, and the connection ends.
#[tokio::test]
async fn a_login_in_full_feature_phase_is_rejected_as_a_protocol_error() {
    let (mut initiator, target_side) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(session::serve(target_side, Portal::new("127.0.0.1:3260".into())));
    initiator.write_all(&discovery_login()).await.unwrap();
    assert_logged_in(&read_pdu(&mut initiator).await);

    let again = discovery_login();
    initiator.write_all(&again).await.unwrap();
    let reject = read_pdu(&mut initiator).await;
    assert_eq!(reject.target_opcode(), TargetOp::Reject);
    assert_eq!(reject.reject_reason(), RejectReason::ProtocolError);
    assert_eq!(reject.reject_reason().code(), 0x04);
    assert_eq!(reject.itt(), RESERVED_TAG);
    assert_eq!(&reject.data[..], &again[..48], "the rejected header is echoed back");
    server.await.unwrap();
}
