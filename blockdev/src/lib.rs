//! The pseudo-disk and its exports (the iSCSI target and the FUSE file view).
//!
//! Empty for now: the pseudo-disk engine arrives with issue 3 and the iSCSI target with issue 4 (see
//! `shared/DESIGN.md`). This crate will define the `Source` trait that a pseudo-disk reads from; it knows
//! nothing of the dedup library or the cloud.
