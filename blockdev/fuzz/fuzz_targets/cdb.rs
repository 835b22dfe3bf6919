#![no_main]
//! The SCSI command set on arbitrary CDBs and data-out: sense data, never a panic.

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data.len().min(16);
    let (cdb, out) = data.split_at(split);
    let lun = u64::from(data[0] & 1);
    let nexus = blockdev::scsi::Nexus::iscsi("iqn.2026-01.fuzz:initiator", [0x40, 0, 0, 0, 0, u8::from(data[0] & 2 != 0)]);
    let outcome = common::runtime().block_on(blockdev::scsi::execute(
        common::luns(),
        &nexus,
        lun,
        cdb,
        bytes::Bytes::copy_from_slice(out),
    ));
    let conflict = outcome.status == blockdev::scsi::reservations::RESERVATION_CONFLICT;
    assert!(outcome.status == blockdev::scsi::GOOD || outcome.sense.is_some() || conflict);
});
