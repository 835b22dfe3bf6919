//! The iSCSI target (RFC 7143), one module per concern: `codes` (the wire's numbers by name), `pdu` (the
//! wire codec and the header's fields), `text` (keys), `params` (negotiation rules as a table), `chap`,
//! `login` (the login phase), `session` (full feature phase of a connection: its reader and dispatch),
//! `command` (one SCSI command's data and answer), `window` (the CmdSN window and the answer backlog),
//! `writer` (outgoing PDUs batched into vectored writes), `target` (the portal: targets, access rules,
//! sessions). The SCSI command set itself lives in `crate::scsi`.
//!
//! Error recovery level 0, one connection per session. Every mount is a target; its disks are LUNs 0..n.

pub mod chap;
pub mod codes;
mod command;
pub mod login;
pub mod params;
pub mod pdu;
pub mod session;
#[cfg(test)]
mod session_tests;
pub mod stats;
pub mod target;
pub mod text;
mod window;
pub mod writer;

use std::sync::Arc;

use tokio::net::TcpListener;

pub use target::{Portal, Target};

/// Accepts connections on `listener` and serves each on its own task, until the listener fails.
pub async fn serve(listener: TcpListener, portal: Arc<Portal>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tracing::debug!(%peer, "iSCSI connection");
                tokio::spawn(session::serve(stream, portal.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!("iSCSI accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
