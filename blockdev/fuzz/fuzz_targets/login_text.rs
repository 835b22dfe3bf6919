#![no_main]
//! Text keys and the negotiation rules on arbitrary input.

use std::collections::BTreeMap;

use blockdev::iscsi::params::{negotiate, SessionParams};
use blockdev::iscsi::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = text::parse(data) {
        let mut params = SessionParams::default();
        let mut info = BTreeMap::new();
        let answer = negotiate(&keys, &mut params, &mut info);
        assert!(params.first_burst_length <= params.max_burst_length);
        assert!(params.max_send_dsl >= 512);
        let _ = text::encode(&answer);
    }
});
