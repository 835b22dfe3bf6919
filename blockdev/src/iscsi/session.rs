//! Full feature phase of one connection (RFC 7143, sections 4 and 11): the connection's reader and its
//! dispatch of PDUs (SCSI commands, Data-Out to the command waiting for it, NOP-Out/NOP-In, task
//! management, text (SendTargets) and logout), Rejects, and the writer task. One command's data and answer
//! are `command.rs`; the CmdSN window and the answer backlog are `window.rs`.
//!
//! The connection reader dispatches PDUs and never waits on the disk. A READ whose data the page cache
//! holds (a warm disk) is answered by the reader itself, at once: no task, no trip to the engine thread.
//! Every other SCSI command runs as its own task. A single writer task sends every outgoing PDU, stamping
//! StatSN, ExpCmdSN and MaxCmdSN at the moment it goes out, so that the numbers always follow the order on
//! the wire; it sends whatever has queued up in one batch (`writer.rs`).

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use super::command::TaskContext;
use super::login::{Session, SessionType};
use super::params::OUR_MAX_RECV_DSL;
use super::pdu::{
    flag, Digests, InitiatorOp, Pdu, PduError, RejectReason, TargetOp, TmfFunction, TmfResponse, RESERVED_TAG,
};
use super::target::{Portal, Target};
use super::text;
use super::window::{queued_size, Backlog, Numbers, Out};
use super::writer::Batch;
use crate::scsi;
use crate::scsi::Nexus;

/// How long a connection may be idle before the target sends a NOP-In ping. Initiators that never answer
/// are tolerated: the ping only keeps the connection's state visible in traces and middleboxes.
const PING_EVERY: Duration = Duration::from_secs(30);
/// The largest read (by its expected length and by its CDB) the connection's reader answers itself; a larger
/// one runs as a task, so that copying it does not hold up the commands queued behind it.
const INLINE_READ_MAX: usize = 1 << 20;

struct Connection {
    portal: Arc<Portal>,
    target: Option<Arc<Target>>,
    kind: SessionType,
    initiator: String,
    numbers: Arc<Numbers>,
    /// What the command tasks share with the reader.
    ctx: Arc<TaskContext>,
}

/// Serves one connection: login, then full feature phase until logout or disconnect.
pub async fn serve<S>(stream: S, portal: Arc<Portal>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = stream;
    let session = match super::login::login(&mut stream, &portal).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("login ended: {e}");
            return;
        }
    };
    let tsih = session.tsih;
    // Every line the session logs names its target (whose IQN carries the mount's id) and initiator.
    let target = session.target.as_ref().map(|t| t.iqn.clone()).unwrap_or_else(|| "discovery".to_string());
    let span = tracing::info_span!("iscsi", %target, initiator = %session.initiator);
    tracing::Instrument::instrument(run(stream, session, portal.clone()), span).await;
    portal.end_session(tsih);
}

async fn run<S>(stream: S, session: Session, portal: Arc<Portal>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Session { kind, initiator, isid, target, params, exp_cmd_sn, stat_sn, mut stop, .. } = session;
    let nexus = Nexus::iscsi(&initiator, isid);
    let digests = Digests { header: params.header_digest, data: params.data_digest };
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let numbers = Arc::new(Numbers::new(exp_cmd_sn));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    let writer = tokio::spawn(write_loop(wr, out_rx, digests, stat_sn, numbers.clone(), backlog.clone()));
    let ctx = Arc::new(TaskContext {
        out: out_tx,
        backlog,
        params,
        transfers: Mutex::default(),
        tasks: Mutex::default(),
        next_ttt: AtomicU32::new(1),
        nexus,
        stats: portal.stats.clone(),
    });
    if let Some(t) = &target {
        t.joined(&ctx);
    }
    let conn = Connection { portal, target, kind, initiator, numbers, ctx };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        if !conn.ctx.backlog.wait_room().await {
            break;
        }
        // The read of one PDU lives across pings: dropping it midway would lose the bytes it has taken from
        // the stream, and with them the connection's place in it.
        let read = Pdu::read(&mut rd, digests, OUR_MAX_RECV_DSL as usize);
        tokio::pin!(read);
        let pdu = loop {
            tokio::select! {
                r = &mut read => break Some(r),
                _ = stop.changed() => break None,
                _ = ping.tick() => conn.ping(),
            }
        };
        let Some(pdu) = pdu else {
            tracing::info!(initiator = %conn.initiator, "session ended by the target (reinstated or removed)");
            break;
        };
        ping.reset();
        let pdu = match pdu {
            Ok(p) => p,
            Err(PduError::DataDigest(p)) => {
                tracing::warn!("data digest error; rejecting the PDU");
                conn.reject(&p, RejectReason::DataDigestError);
                continue;
            }
            Err(e) => {
                tracing::debug!(initiator = %conn.initiator, "connection closed: {e}");
                break;
            }
        };
        if !conn.dispatch(pdu) {
            break;
        }
    }
    conn.ctx.abort_where(|_, _| true);
    // The I_T nexus ends with the session: what the initiator port held only while it lasted goes.
    if let Some(t) = &conn.target {
        t.luns.nexus_lost(&conn.ctx.nexus);
    }
    drop(conn);
    let _ = writer.await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    digests: Digests,
    mut stat_sn: u32,
    numbers: Arc<Numbers>,
    backlog: Arc<Backlog>,
) {
    use tokio::io::AsyncWriteExt;
    // However the writer ends, a reader waiting for the backlog to drain must not wait forever.
    struct CloseOnExit(Arc<Backlog>);
    impl Drop for CloseOnExit {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseOnExit(backlog.clone());
    let mut batch = Batch::default();
    while let Some(first) = rx.recv().await {
        let mut batch_bytes = 0usize;
        let mut next = Some(first);
        let mut logout = false;
        // Everything queued goes out in one batch (up to its limit).
        while let Some(Out { mut pdu, status }) = next {
            pdu.set_stat_sn(stat_sn);
            if status {
                stat_sn = stat_sn.wrapping_add(1);
            }
            pdu.set_exp_cmd_sn(numbers.exp_cmd_sn());
            pdu.set_max_cmd_sn(numbers.max_cmd_sn());
            batch_bytes += queued_size(&pdu);
            batch.push(&mut pdu, digests);
            logout = pdu.target_opcode() == TargetOp::LogoutResponse;
            if logout || batch.is_full() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if batch.write_to(&mut wr).await.is_err() {
            return;
        }
        backlog.written(batch_bytes);
        if logout {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

impl Connection {
    fn send(&self, pdu: Pdu, status: bool) {
        self.ctx.send(pdu, status);
    }

    /// Rejects a PDU (section 11.17): the reason, and the rejected PDU's header as the data segment.
    fn reject(&self, bad: &Pdu, reason: RejectReason) {
        let mut r = Pdu::new(TargetOp::Reject);
        r.set_flags(flag::FINAL);
        r.set_reject_reason(reason);
        r.set_itt(RESERVED_TAG);
        r.data = Bytes::copy_from_slice(&bad.bhs);
        self.send(r, true);
    }

    fn ping(&self) {
        let mut p = Pdu::new(TargetOp::NopIn);
        p.set_flags(flag::FINAL);
        p.set_itt(RESERVED_TAG);
        // The top bit keeps the ping's tags apart from those of R2Ts.
        p.set_ttt(self.ctx.next_ttt() | 0x8000_0000);
        self.send(p, false);
    }

    /// Checks and advances CmdSN. False when the command lies outside the window and must be dropped.
    fn accept_cmd_sn(&self, pdu: &Pdu) -> bool {
        self.numbers.accept(pdu)
    }

    /// Handles one PDU. False when the connection must close.
    fn dispatch(&self, pdu: Pdu) -> bool {
        match pdu.opcode() {
            InitiatorOp::NopOut => {
                if !self.accept_cmd_sn(&pdu) {
                    return true;
                }
                if pdu.itt() != RESERVED_TAG {
                    let mut r = Pdu::new(TargetOp::NopIn);
                    r.set_flags(flag::FINAL);
                    r.set_lun_field(pdu.lun_field());
                    r.set_itt(pdu.itt());
                    r.set_ttt(RESERVED_TAG);
                    r.data = pdu.data;
                    self.send(r, true);
                }
                true
            }
            InitiatorOp::ScsiCommand => {
                if self.kind == SessionType::Discovery {
                    self.reject(&pdu, RejectReason::ProtocolError);
                    return true;
                }
                if self.accept_cmd_sn(&pdu) {
                    self.start_command(pdu);
                }
                true
            }
            InitiatorOp::DataOut => {
                let tx = self.ctx.transfers.lock().expect("not poisoned").get(&pdu.itt()).cloned();
                match tx {
                    Some(tx) => {
                        let _ = tx.send(pdu);
                    }
                    None => self.reject(&pdu, RejectReason::InvalidPduField),
                }
                true
            }
            InitiatorOp::TaskManagement => {
                if self.accept_cmd_sn(&pdu) {
                    self.task_management(&pdu);
                }
                true
            }
            InitiatorOp::Text => {
                if self.accept_cmd_sn(&pdu) {
                    self.text(&pdu);
                }
                true
            }
            InitiatorOp::Logout => {
                let _ = self.accept_cmd_sn(&pdu);
                let mut r = Pdu::new(TargetOp::LogoutResponse);
                r.set_flags(flag::FINAL);
                r.set_itt(pdu.itt());
                self.send(r, true);
                tracing::info!(initiator = %self.initiator, "logout");
                false
            }
            InitiatorOp::Login => {
                // A login in full feature phase breaks the protocol (and the connection ends).
                self.reject(&pdu, RejectReason::ProtocolError);
                false
            }
            InitiatorOp::Snack | InitiatorOp::Unsupported(_) => {
                self.reject(&pdu, RejectReason::ProtocolError);
                true
            }
        }
    }

    fn text(&self, pdu: &Pdu) {
        let mut r = Pdu::new(TargetOp::TextResponse);
        r.set_flags(flag::FINAL);
        r.set_itt(pdu.itt());
        r.set_ttt(RESERVED_TAG);
        let keys = text::parse(&pdu.data).unwrap_or_default();
        let mut answer = Vec::new();
        for (k, v) in keys {
            if k == "SendTargets" {
                let targets: Vec<Arc<Target>> = match (self.kind, v.as_str()) {
                    (SessionType::Discovery, "All") => self.portal.visible_targets(&self.initiator),
                    (SessionType::Discovery, name) => {
                        self.portal.visible_targets(&self.initiator).into_iter().filter(|t| t.iqn == name).collect()
                    }
                    (SessionType::Normal, _) => self.target.iter().cloned().collect(),
                };
                for t in targets {
                    answer.push(("TargetName".to_string(), t.iqn.clone()));
                    answer.push(("TargetAddress".to_string(), format!("{},1", self.portal.advertise)));
                }
            } else {
                answer.push((k, "NotUnderstood".to_string()));
            }
        }
        r.data = text::encode(&answer).into();
        self.send(r, true);
    }

    fn task_management(&self, pdu: &Pdu) {
        let function = pdu.tmf_function();
        let lun = pdu.lun();
        let lun_exists = self.target.as_ref().is_some_and(|t| (lun as usize) < t.luns.luns.len());
        // The tasks of every session of the target on `lun`: each other session's initiator port is told by a
        // unit attention, since its aborted tasks answer nothing (SAM-5 7.6, 7.10; TAS is 0).
        let across_sessions = |lun: Option<u64>, told: scsi::Sense| {
            let Some(target) = &self.target else { return };
            for session in target.sessions() {
                let aborted = session.abort_where(|_, l| lun.is_none_or(|lun| l == lun));
                let other = session.nexus != self.ctx.nexus;
                if other && (aborted > 0 || told != scsi::Sense::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR) {
                    target.luns.unit_attention(lun, &session.nexus, told);
                }
            }
        };
        use TmfFunction::*;
        let response = match function {
            AbortTask => {
                let reference = pdu.referenced_task_tag();
                self.ctx.abort_where(|itt, _| itt == reference);
                TmfResponse::FunctionComplete
            }
            AbortTaskSet | ClearTaskSet | LogicalUnitReset if !lun_exists => TmfResponse::LunDoesNotExist,
            // This I_T nexus's tasks only.
            AbortTaskSet => {
                self.ctx.abort_where(|_, l| l == lun);
                TmfResponse::FunctionComplete
            }
            // The task set is shared by every I_T nexus (the LUN's task set is one).
            ClearTaskSet => {
                across_sessions(Some(lun), scsi::Sense::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR);
                TmfResponse::FunctionComplete
            }
            LogicalUnitReset => {
                across_sessions(Some(lun), scsi::Sense::RESET_OCCURRED);
                if let Some(t) = &self.target {
                    t.luns.reset(Some(lun));
                }
                TmfResponse::FunctionComplete
            }
            TargetWarmReset | TargetColdReset => {
                across_sessions(None, scsi::Sense::RESET_OCCURRED);
                if let Some(t) = &self.target {
                    t.luns.reset(None);
                }
                TmfResponse::FunctionComplete
            }
            ClearAca => TmfResponse::FunctionComplete, // ACA is never established here
            TaskReassign => TmfResponse::ReassignmentNotSupported, // needs error recovery level 2
            Unsupported(_) => TmfResponse::FunctionNotSupported,
        };
        let mut r = Pdu::new(TargetOp::TaskManagementResponse);
        r.set_flags(flag::FINAL);
        r.set_tmf_response(response);
        r.set_itt(pdu.itt());
        self.send(r, true);
    }

    fn start_command(&self, pdu: Pdu) {
        let Some(target) = self.target.clone() else { return };
        let itt = pdu.itt();
        let writes = pdu.writes();
        if !pdu.ahs.is_empty() || (writes && !pdu.data.is_empty() && !self.ctx.params.immediate_data) {
            // Extended CDBs are not offered; immediate data must have been agreed.
            self.reject(&pdu, RejectReason::InvalidPduField);
            return;
        }
        let edtl = pdu.expected_length() as usize;
        if !writes && edtl <= INLINE_READ_MAX {
            // The fast path: a read the page cache can answer is answered now, without a task.
            if let Some(outcome) = scsi::execute_now(&target.luns, pdu.lun(), pdu.cdb(), INLINE_READ_MAX) {
                self.ctx.respond(&pdu, outcome);
                return;
            }
        }
        // Only commands that took a CmdSN narrow the window: an immediate command leaves ExpCmdSN where it was,
        // and counting it would pull MaxCmdSN below what the initiator was already told it may send.
        let guard = (!pdu.immediate()).then(|| self.numbers.in_flight());
        let data_rx = if writes && pdu.data.len() < edtl {
            let (tx, rx) = mpsc::unbounded_channel();
            self.ctx.transfers.lock().expect("not poisoned").insert(itt, tx);
            Some(rx)
        } else {
            None
        };
        let ctx = self.ctx.clone();
        let lun = pdu.lun();
        // Holding the lock while spawning: the task cannot remove its entry before it is there.
        let mut tasks = self.ctx.tasks.lock().expect("not poisoned");
        let handle = tokio::spawn(async move {
            let _guard = guard;
            ctx.run_command(target, pdu, data_rx).await;
        });
        tasks.insert(itt, (lun, handle.abort_handle()));
    }
}
