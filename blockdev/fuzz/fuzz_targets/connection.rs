#![no_main]
//! A whole connection: a valid login, then arbitrary bytes in full feature phase. The session must end
//! (the input runs out) without a panic or a hang.

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn login_pdu() -> Vec<u8> {
    let mut keys = Vec::new();
    for kv in ["InitiatorName=iqn.2026-11.io.livemount:fuzzer", &format!("TargetName={}", common::TARGET)] {
        keys.extend_from_slice(kv.as_bytes());
        keys.push(0);
    }
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43;
    bhs[1] = 0x80 | (1 << 2) | 3;
    bhs[7] = keys.len() as u8;
    bhs[8] = 0x40;
    let mut out = bhs.to_vec();
    out.extend_from_slice(&keys);
    out.resize(out.len().div_ceil(4) * 4, 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = login_pdu();
    input.extend_from_slice(data);
    let stream = tokio::io::join(std::io::Cursor::new(input), tokio::io::sink());
    common::runtime().block_on(async {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), blockdev::iscsi::session::serve(stream, common::portal())).await;
    });
});
