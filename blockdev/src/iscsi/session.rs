//! Full feature phase of one connection (RFC 7143, sections 4 and 11): SCSI commands with immediate,
//! unsolicited and R2T-solicited data, Data-In split at the initiator's MaxRecvDataSegmentLength, status
//! and residuals, the CmdSN window, NOP-Out/NOP-In, task management, text (SendTargets) and logout.
//!
//! The connection reader dispatches PDUs and never waits on the disk. A READ whose data the page cache
//! holds (a warm disk) is answered by the reader itself, at once: no task, no trip to the engine thread.
//! Every other SCSI command runs as its own task. A single writer task sends every outgoing PDU, stamping
//! StatSN, ExpCmdSN and MaxCmdSN at the moment it goes out, so that the numbers always follow the order on
//! the wire; it sends whatever has queued up in one batch (`writer.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::login::{Session, SessionType, QUEUE_DEPTH};
use super::params::{SessionParams, OUR_MAX_RECV_DSL};
use super::pdu::{Digests, InitiatorOp, Pdu, PduError, TargetOp};
use super::target::{Portal, Target};
use super::text;
use super::writer::Batch;
use crate::scsi::{self, Outcome, Sense, CHECK_CONDITION, GOOD};

/// How long a connection may be idle before the target sends a NOP-In ping. Initiators that never answer
/// are tolerated: the ping only keeps the connection's state visible in traces and middleboxes.
const PING_EVERY: Duration = Duration::from_secs(30);
const RESERVED_TAG: u32 = 0xffff_ffff;
/// The largest read (by its expected length and by its CDB) the connection's reader answers itself; a larger
/// one runs as a task, so that copying it does not hold up the commands queued behind it.
const INLINE_READ_MAX: usize = 1 << 20;
/// Bytes queued for the initiator above which the connection stops reading new PDUs until the queue drains:
/// an initiator that does not read its socket (or ignores MaxCmdSN) cannot make the daemon hoard responses.
const BACKLOG_MAX: usize = 64 << 20;

/// What is queued for the writer and not yet written, and a wake-up for the reader waiting on it.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    /// The writer has stopped (the connection failed): nothing will drain.
    closed: AtomicBool,
    drained: tokio::sync::Notify,
}

impl Backlog {
    /// Waits until the backlog is under its limit; false when the writer has stopped.
    async fn wait_room(&self) -> bool {
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

    fn written(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }
}

/// A PDU for the writer; `status` PDUs take the next StatSN.
struct Out {
    pdu: Pdu,
    status: bool,
}

/// Sequence numbers shared by the reader, the tasks and the writer.
struct Numbers {
    exp_cmd_sn: AtomicU32,
    in_flight: AtomicU32,
}

impl Numbers {
    /// MaxCmdSN: the window shrinks with the commands in flight, so it never promises more than we take.
    fn max_cmd_sn(&self) -> u32 {
        let free = QUEUE_DEPTH.saturating_sub(self.in_flight.load(Ordering::Acquire));
        self.exp_cmd_sn.load(Ordering::Acquire).wrapping_add(free).wrapping_sub(1)
    }

    /// Serial number arithmetic (RFC 1982): is `sn` within [ExpCmdSN, MaxCmdSN]?
    fn in_window(&self, sn: u32) -> bool {
        let exp = self.exp_cmd_sn.load(Ordering::Acquire);
        let max = self.max_cmd_sn();
        let span = max.wrapping_sub(exp);
        span < 0x8000_0000 && sn.wrapping_sub(exp) <= span
    }
}

/// Counts a command as in flight for as long as it lives (also when its task is aborted).
struct InFlight(Arc<Numbers>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    run(stream, session, portal.clone()).await;
    portal.end_session(tsih);
}

async fn run<S>(stream: S, session: Session, portal: Arc<Portal>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Session { kind, initiator, target, params, exp_cmd_sn, stat_sn, mut stop, .. } = session;
    let digests = Digests { header: params.header_digest, data: params.data_digest };
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let numbers = Arc::new(Numbers { exp_cmd_sn: AtomicU32::new(exp_cmd_sn), in_flight: AtomicU32::new(0) });
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
    });
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
                conn.reject(&p, 0x02);
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
    for (_, (_, h)) in conn.ctx.tasks.lock().expect("not poisoned").drain() {
        h.abort();
    }
    drop(conn);
    let _ = writer.await;
}

/// What a queued PDU counts for in the backlog.
fn queued_size(pdu: &Pdu) -> usize {
    48 + pdu.data.len()
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
            pdu.set_u32(24, stat_sn);
            if status {
                stat_sn = stat_sn.wrapping_add(1);
            }
            pdu.set_u32(28, numbers.exp_cmd_sn.load(Ordering::Acquire));
            pdu.set_u32(32, numbers.max_cmd_sn());
            batch_bytes += queued_size(&pdu);
            batch.push(&mut pdu, digests);
            logout = pdu.bhs[0] & 0x3f == TargetOp::LogoutResponse as u8;
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

    fn reject(&self, bad: &Pdu, reason: u8) {
        let mut r = Pdu::new(TargetOp::Reject);
        r.bhs[1] = 0x80;
        r.bhs[2] = reason;
        r.set_itt(RESERVED_TAG);
        r.data = Bytes::copy_from_slice(&bad.bhs);
        self.send(r, true);
    }

    fn ping(&self) {
        let mut p = Pdu::new(TargetOp::NopIn);
        p.bhs[1] = 0x80;
        p.set_itt(RESERVED_TAG);
        p.set_u32(20, self.ctx.next_ttt.fetch_add(1, Ordering::Relaxed) | 0x8000_0000);
        self.send(p, false);
    }

    /// Checks and advances CmdSN. False when the command lies outside the window and must be dropped.
    fn accept_cmd_sn(&self, pdu: &Pdu) -> bool {
        if pdu.immediate() {
            return true;
        }
        let sn = pdu.u32_at(24);
        if !self.numbers.in_window(sn) {
            tracing::debug!(sn, "command outside the CmdSN window dropped");
            return false;
        }
        if sn == self.numbers.exp_cmd_sn.load(Ordering::Acquire) {
            self.numbers.exp_cmd_sn.fetch_add(1, Ordering::AcqRel);
        }
        true
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
                    r.bhs[1] = 0x80;
                    r.bhs[8..16].copy_from_slice(&pdu.bhs[8..16]);
                    r.set_itt(pdu.itt());
                    r.set_u32(20, RESERVED_TAG);
                    r.data = pdu.data;
                    self.send(r, true);
                }
                true
            }
            InitiatorOp::ScsiCommand => {
                if self.kind == SessionType::Discovery {
                    self.reject(&pdu, 0x04);
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
                    None => self.reject(&pdu, 0x09),
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
                r.bhs[1] = 0x80;
                r.set_itt(pdu.itt());
                self.send(r, true);
                tracing::info!(initiator = %self.initiator, "logout");
                false
            }
            InitiatorOp::Login => {
                self.reject(&pdu, 0x0b); // login in full feature phase: protocol error
                false
            }
            InitiatorOp::Snack | InitiatorOp::Unsupported(_) => {
                self.reject(&pdu, 0x04);
                true
            }
        }
    }

    fn text(&self, pdu: &Pdu) {
        let mut r = Pdu::new(TargetOp::TextResponse);
        r.bhs[1] = 0x80;
        r.set_itt(pdu.itt());
        r.set_u32(20, RESERVED_TAG);
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
        let function = pdu.flags() & 0x7f;
        let lun = pdu.lun();
        let lun_exists = self.target.as_ref().is_some_and(|t| (lun as usize) < t.luns.luns.len());
        let mut tasks = self.ctx.tasks.lock().expect("not poisoned");
        let mut abort_where = |pred: &dyn Fn(u32, u64) -> bool| {
            let doomed: Vec<u32> = tasks.iter().filter(|(itt, (l, _))| pred(**itt, *l)).map(|(itt, _)| *itt).collect();
            for itt in doomed {
                if let Some((_, h)) = tasks.remove(&itt) {
                    h.abort();
                }
                self.ctx.transfers.lock().expect("not poisoned").remove(&itt);
            }
        };
        let response = match function {
            1 => {
                let reference = pdu.u32_at(20);
                abort_where(&|itt, _| itt == reference);
                0
            }
            2 | 4 | 5 if !lun_exists => 2,
            2 | 4 | 5 => {
                abort_where(&|_, l| l == lun);
                0
            }
            6 | 7 => {
                abort_where(&|_, _| true);
                0
            }
            3 => 0, // CLEAR ACA: ACA is never established here
            8 => 4, // TASK REASSIGN: needs error recovery level 2
            _ => 5, // function not supported
        };
        drop(tasks);
        let mut r = Pdu::new(TargetOp::TaskManagementResponse);
        r.bhs[1] = 0x80;
        r.bhs[2] = response;
        r.set_itt(pdu.itt());
        self.send(r, true);
    }

    fn start_command(&self, pdu: Pdu) {
        let Some(target) = self.target.clone() else { return };
        let itt = pdu.itt();
        let writes = pdu.flags() & 0x20 != 0;
        if !pdu.ahs.is_empty() || (writes && !pdu.data.is_empty() && !self.ctx.params.immediate_data) {
            // Extended CDBs are not offered; immediate data must have been agreed.
            self.reject(&pdu, 0x09);
            return;
        }
        let edtl = pdu.u32_at(20) as usize;
        if !writes && edtl <= INLINE_READ_MAX {
            // The fast path: a read the page cache can answer is answered now, without a task.
            if let Some(outcome) = scsi::execute_now(&target.luns, pdu.lun(), &pdu.bhs[32..48], INLINE_READ_MAX) {
                self.ctx.respond(&pdu, outcome);
                return;
            }
        }
        // Only commands that took a CmdSN narrow the window: an immediate command leaves ExpCmdSN where it was,
        // and counting it would pull MaxCmdSN below what the initiator was already told it may send.
        let guard = (!pdu.immediate()).then(|| {
            self.numbers.in_flight.fetch_add(1, Ordering::AcqRel);
            InFlight(self.numbers.clone())
        });
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

/// How collecting a command's write data ended.
enum Transfer {
    Complete,
    SequenceError,
    Gone,
}

/// Appends one Data-Out's payload if it is the next in its sequence and continues the data exactly.
fn take_data_out(d: &Pdu, data: &mut Vec<u8>, expected_data_sn: u32) -> bool {
    if d.u32_at(36) != expected_data_sn || d.u32_at(40) as usize != data.len() {
        return false;
    }
    data.extend_from_slice(&d.data);
    true
}

/// What a command task needs of its connection (shared by the connection's reader and its tasks).
struct TaskContext {
    out: mpsc::UnboundedSender<Out>,
    backlog: Arc<Backlog>,
    params: SessionParams,
    /// Commands waiting for Data-Out, by ITT.
    transfers: Mutex<HashMap<u32, mpsc::UnboundedSender<Pdu>>>,
    /// Running commands, by ITT: their LUN and a handle to abort them.
    tasks: Mutex<HashMap<u32, (u64, AbortHandle)>>,
    next_ttt: AtomicU32,
}

impl TaskContext {
    fn send(&self, pdu: Pdu, status: bool) {
        self.backlog.bytes.fetch_add(queued_size(&pdu), Ordering::AcqRel);
        let _ = self.out.send(Out { pdu, status });
    }

    async fn run_command(&self, target: Arc<Target>, cmd: Pdu, data_rx: Option<mpsc::UnboundedReceiver<Pdu>>) {
        let itt = cmd.itt();
        let edtl = cmd.u32_at(20) as usize;
        let mut data = cmd.data.to_vec();
        let received = match data_rx {
            Some(rx) => {
                let r = self.receive_data(&cmd, &mut data, edtl, rx).await;
                self.transfers.lock().expect("not poisoned").remove(&itt);
                r
            }
            None => Transfer::Complete,
        };
        let outcome = match received {
            Transfer::Complete => scsi::execute(&target.luns, cmd.lun(), &cmd.bhs[32..48], data.into()).await,
            // A broken data sequence fails the command, and nothing of it is written.
            Transfer::SequenceError => Outcome::check(Sense::DATA_PHASE_ERROR),
            Transfer::Gone => {
                self.tasks.lock().expect("not poisoned").remove(&itt);
                return; // the connection is going away
            }
        };
        self.tasks.lock().expect("not poisoned").remove(&itt);
        self.respond(&cmd, outcome);
    }

    /// Collects the write data: unsolicited Data-Out first (when InitialR2T=No), then one R2T burst at a
    /// time until the expected length is there. Each sequence's DataSN counts from 0 and each PDU must
    /// continue the data exactly; otherwise the rest of the sequence is drained and the command fails.
    async fn receive_data(
        &self,
        cmd: &Pdu,
        data: &mut Vec<u8>,
        edtl: usize,
        mut rx: mpsc::UnboundedReceiver<Pdu>,
    ) -> Transfer {
        let itt = cmd.itt();
        let mut broken = false;
        if !self.params.initial_r2t && !cmd.final_bit() {
            let unsolicited = edtl.min(self.params.first_burst_length as usize);
            let mut data_sn = 0u32;
            loop {
                let Some(d) = rx.recv().await else { return Transfer::Gone };
                broken |= !take_data_out(&d, data, data_sn);
                data_sn += 1;
                if d.final_bit() || (!broken && data.len() >= unsolicited) {
                    break;
                }
            }
        }
        let mut r2t_sn = 0u32;
        while !broken && data.len() < edtl {
            let ttt = self.next_ttt.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
            let offset = data.len();
            let len = (edtl - offset).min(self.params.max_burst_length as usize);
            let mut r2t = Pdu::new(TargetOp::R2t);
            r2t.bhs[1] = 0x80;
            r2t.bhs[8..16].copy_from_slice(&cmd.bhs[8..16]);
            r2t.set_itt(itt);
            r2t.set_u32(20, ttt);
            r2t.set_u32(36, r2t_sn);
            r2t.set_u32(40, offset as u32);
            r2t.set_u32(44, len as u32);
            r2t_sn += 1;
            self.send(r2t, false);
            let end = offset + len;
            let mut data_sn = 0u32;
            loop {
                let Some(d) = rx.recv().await else { return Transfer::Gone };
                if d.u32_at(20) != ttt {
                    continue; // a stale Data-Out of an earlier sequence
                }
                broken |= !take_data_out(&d, data, data_sn);
                data_sn += 1;
                if d.final_bit() {
                    break;
                }
            }
            broken |= data.len() != end;
        }
        if broken {
            tracing::warn!(itt, "Data-Out sequence out of order or incomplete; the command fails");
            Transfer::SequenceError
        } else {
            Transfer::Complete
        }
    }

    /// Sends Data-In (split at the initiator's limit, a sequence per MaxBurstLength) and the status.
    fn respond(&self, cmd: &Pdu, outcome: Outcome) {
        let edtl = cmd.u32_at(20) as usize;
        let reads = cmd.flags() & 0x40 != 0;
        let writes = cmd.flags() & 0x20 != 0;
        let produced = outcome.data.len();
        let (residual_flag, residual) = if reads && outcome.status == GOOD {
            if produced > edtl {
                (0x04u8, produced - edtl) // overflow
            } else if produced < edtl {
                (0x02, edtl - produced) // underflow
            } else {
                (0, 0)
            }
        } else if writes && outcome.status == GOOD {
            let wanted = outcome.data_out_wanted;
            if wanted > edtl {
                (0x04, wanted - edtl)
            } else if wanted < edtl {
                (0x02, edtl - wanted)
            } else {
                (0, 0)
            }
        } else if !reads && !writes && edtl > 0 {
            (0x02, edtl)
        } else {
            (0, 0)
        };
        let send_len = produced.min(if reads { edtl } else { 0 });
        let mut data_sn = 0u32;
        if send_len > 0 {
            let seg = self.params.max_send_dsl as usize;
            let burst = self.params.max_burst_length as usize;
            let mut offset = 0;
            while offset < send_len {
                let n = seg.min(send_len - offset).min(burst - offset % burst);
                let last = offset + n == send_len;
                let mut p = Pdu::new(TargetOp::DataIn);
                let end_of_burst = last || (offset + n) % burst == 0;
                p.bhs[1] = if end_of_burst { 0x80 } else { 0 };
                p.bhs[8..16].copy_from_slice(&cmd.bhs[8..16]);
                p.set_itt(cmd.itt());
                p.set_u32(20, RESERVED_TAG);
                p.set_u32(36, data_sn);
                p.set_u32(40, offset as u32);
                p.data = outcome.data.slice(offset..offset + n);
                data_sn += 1;
                if last && outcome.status == GOOD {
                    // Phase collapse: status rides on the last Data-In.
                    p.bhs[1] |= 0x80 | 0x01 | residual_flag;
                    p.bhs[3] = GOOD;
                    p.set_u32(44, residual as u32);
                    self.send(p, true);
                    return;
                }
                self.send(p, false);
                offset += n;
            }
        }
        let mut r = Pdu::new(TargetOp::ScsiResponse);
        r.bhs[1] = 0x80 | residual_flag; // O (0x04) and U (0x02) sit at the same bits as in Data-In
        r.bhs[2] = 0x00; // command completed at target
        r.bhs[3] = outcome.status;
        r.set_itt(cmd.itt());
        r.set_u32(36, data_sn);
        r.set_u32(44, residual as u32);
        if outcome.status == CHECK_CONDITION {
            let sense = outcome.sense.unwrap_or(Sense::INVALID_FIELD_IN_CDB).fixed();
            let mut d = (sense.len() as u16).to_be_bytes().to_vec();
            d.extend_from_slice(&sense);
            r.data = d.into();
        }
        self.send(r, true);
    }
}
