//! What flows between a connection and its initiator, and how much of it may: the CmdSN window (ExpCmdSN,
//! and MaxCmdSN narrowed by the commands in flight) and the answer backlog (bytes queued for the writer,
//! above which the reader stops taking PDUs).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use super::login::QUEUE_DEPTH;
use super::pdu::{Pdu, BHS_LEN};

/// Bytes queued for the initiator above which the connection stops reading new PDUs until the queue drains:
/// an initiator that does not read its socket (or ignores MaxCmdSN) cannot make the daemon hoard responses.
const BACKLOG_MAX: usize = 64 << 20;

/// A PDU for the writer; `status` PDUs take the next StatSN.
pub(super) struct Out {
    pub pdu: Pdu,
    pub status: bool,
}

/// What a queued PDU counts for in the backlog.
pub(super) fn queued_size(pdu: &Pdu) -> usize {
    BHS_LEN + pdu.data.len()
}

/// What is queued for the writer and not yet written, and a wake-up for the reader waiting on it.
#[derive(Default)]
pub(super) struct Backlog {
    bytes: AtomicUsize,
    /// The writer has stopped (the connection failed): nothing will drain.
    closed: AtomicBool,
    drained: tokio::sync::Notify,
}

impl Backlog {
    /// Waits until the backlog is under its limit; false when the writer has stopped.
    pub async fn wait_room(&self) -> bool {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if self.bytes.load(Ordering::Acquire) < BACKLOG_MAX {
                return true;
            }
            drained.await;
        }
    }

    /// Counts a PDU handed to the writer.
    pub fn queued(&self, pdu: &Pdu) {
        self.bytes.fetch_add(queued_size(pdu), Ordering::AcqRel);
    }

    pub fn written(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }
}

/// Sequence numbers shared by the reader, the tasks and the writer.
pub(super) struct Numbers {
    exp_cmd_sn: AtomicU32,
    in_flight: AtomicU32,
}

impl Numbers {
    pub fn new(exp_cmd_sn: u32) -> Numbers {
        Numbers { exp_cmd_sn: AtomicU32::new(exp_cmd_sn), in_flight: AtomicU32::new(0) }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.load(Ordering::Acquire)
    }

    /// MaxCmdSN: the window shrinks with the commands in flight, so it never promises more than we take.
    pub fn max_cmd_sn(&self) -> u32 {
        let free = QUEUE_DEPTH.saturating_sub(self.in_flight.load(Ordering::Acquire));
        self.exp_cmd_sn().wrapping_add(free).wrapping_sub(1)
    }

    /// Serial number arithmetic (RFC 1982): is `sn` within [ExpCmdSN, MaxCmdSN]?
    fn in_window(&self, sn: u32) -> bool {
        let exp = self.exp_cmd_sn();
        let max = self.max_cmd_sn();
        let span = max.wrapping_sub(exp);
        span < 0x8000_0000 && sn.wrapping_sub(exp) <= span
    }

    /// Checks and advances CmdSN for a PDU. False when the command lies outside the window and must be
    /// dropped. Immediate PDUs take no CmdSN.
    pub fn accept(&self, pdu: &Pdu) -> bool {
        if pdu.immediate() {
            return true;
        }
        let sn = pdu.cmd_sn();
        if !self.in_window(sn) {
            tracing::debug!(sn, "command outside the CmdSN window dropped");
            return false;
        }
        if sn == self.exp_cmd_sn() {
            self.exp_cmd_sn.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// Counts a command as in flight until the guard is dropped (also when its task is aborted).
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// A command in flight: it narrows the window for as long as it lives.
pub(super) struct InFlight(Arc<Numbers>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
