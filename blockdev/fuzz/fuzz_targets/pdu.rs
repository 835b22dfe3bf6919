#![no_main]
//! The PDU codec on arbitrary bytes, with and without digests: an error or a PDU, never a panic.

use blockdev::iscsi::pdu::{Digests, Pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for digests in [Digests::default(), Digests { header: true, data: true }] {
        let mut input = data;
        if let Ok(mut pdu) = rt.block_on(Pdu::read(&mut input, digests, 1 << 20)) {
            // What was read encodes back to bytes that read as the same PDU.
            let bytes = pdu.encode(digests);
            let again = rt.block_on(Pdu::read(&mut &bytes[..], digests, 1 << 20)).unwrap();
            assert_eq!(again, pdu);
        }
    }
});
