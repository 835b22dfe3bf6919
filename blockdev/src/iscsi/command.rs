//! One SCSI command of a connection, from its data to its answer: collecting its write data (immediate,
//! unsolicited and R2T-solicited Data-Out, checked for order), running it, and answering with Data-In split
//! at the initiator's MaxRecvDataSegmentLength (a sequence per MaxBurstLength), status and residuals.
//! The connection's reader (`session.rs`) starts commands; this is what runs them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::params::SessionParams;
use super::pdu::{flag, CommandResponse, Pdu, Residual, TargetOp, RESERVED_TAG};
use super::target::Target;
use super::window::{Backlog, Out};
use crate::scsi::{self, Nexus, Outcome, Sense, CHECK_CONDITION, GOOD};

/// The most write buffer reserved up front from the expected length, which the initiator chooses: a larger
/// write grows its buffer as its data arrives, so a lying header cannot make the target reserve gigabytes.
const MAX_PREALLOCATED: usize = 16 << 20;

/// What a command task needs of its connection (shared by the connection's reader and its tasks).
pub(super) struct TaskContext {
    pub out: mpsc::UnboundedSender<Out>,
    pub backlog: Arc<Backlog>,
    pub params: SessionParams,
    /// Commands waiting for Data-Out, by ITT.
    pub transfers: Mutex<HashMap<u32, mpsc::UnboundedSender<Pdu>>>,
    /// Running commands, by ITT: their LUN and a handle to abort them.
    pub tasks: Mutex<HashMap<u32, (u64, AbortHandle)>>,
    pub next_ttt: AtomicU32,
    /// The SCSI initiator port of the session (for reservations).
    pub nexus: Nexus,
    /// The portal's counts of commands answered.
    pub stats: Arc<super::stats::CommandStats>,
}

/// How collecting a command's write data ended.
enum Transfer {
    Complete,
    SequenceError,
    Gone,
}

/// Appends one Data-Out's payload if it is the next in its sequence and continues the data exactly.
fn take_data_out(d: &Pdu, data: &mut Vec<u8>, expected_data_sn: u32) -> bool {
    if d.data_sn() != expected_data_sn || d.buffer_offset() as usize != data.len() {
        return false;
    }
    data.extend_from_slice(&d.data);
    true
}

impl TaskContext {
    /// Aborts this session's tasks that `doomed` picks (by ITT and LUN), and their pending transfers;
    /// returns how many there were. An aborted task answers nothing.
    pub fn abort_where(&self, doomed: impl Fn(u32, u64) -> bool) -> usize {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let picked: Vec<u32> =
            tasks.iter().filter(|(itt, (lun, _))| doomed(**itt, *lun)).map(|(itt, _)| *itt).collect();
        for itt in &picked {
            if let Some((_, handle)) = tasks.remove(itt) {
                handle.abort();
            }
            self.transfers.lock().expect("not poisoned").remove(itt);
        }
        picked.len()
    }

    pub fn send(&self, pdu: Pdu, status: bool) {
        self.backlog.queued(&pdu);
        let _ = self.out.send(Out { pdu, status });
    }

    /// A target transfer tag for an R2T or a NOP-In: the low 31 bits count, the top bit is the caller's.
    pub fn next_ttt(&self) -> u32 {
        self.next_ttt.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs a command whose data (beyond what came with it) arrives on `data_rx`, and answers it.
    pub async fn run_command(&self, target: Arc<Target>, cmd: Pdu, data_rx: Option<mpsc::UnboundedReceiver<Pdu>>) {
        let itt = cmd.itt();
        let edtl = cmd.expected_length() as usize;
        // The write data is copied at most once: not at all when it all came with the command (the PDU's own
        // buffer goes to the pseudo-disk), once into one buffer when Data-Out PDUs bring the rest.
        let (received, data) = match data_rx {
            Some(rx) => {
                let mut data = Vec::with_capacity(edtl.min(MAX_PREALLOCATED));
                data.extend_from_slice(&cmd.data);
                let r = self.receive_data(&cmd, &mut data, edtl, rx).await;
                self.transfers.lock().expect("not poisoned").remove(&itt);
                (r, Bytes::from(data))
            }
            None => (Transfer::Complete, cmd.data.clone()),
        };
        let outcome = match received {
            Transfer::Complete => scsi::execute(&target.luns, &self.nexus, cmd.lun(), cmd.cdb(), data).await,
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
            let ttt = self.next_ttt() & 0x7fff_ffff;
            let offset = data.len();
            let len = (edtl - offset).min(self.params.max_burst_length as usize);
            let mut r2t = Pdu::new(TargetOp::R2t);
            r2t.set_flags(flag::FINAL);
            r2t.set_lun_field(cmd.lun_field());
            r2t.set_itt(itt);
            r2t.set_ttt(ttt);
            r2t.set_r2t_sn(r2t_sn);
            r2t.set_buffer_offset(offset as u32);
            r2t.set_desired_length(len as u32);
            r2t_sn += 1;
            self.send(r2t, false);
            let end = offset + len;
            let mut data_sn = 0u32;
            loop {
                let Some(d) = rx.recv().await else { return Transfer::Gone };
                if d.ttt() != ttt {
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
    pub fn respond(&self, cmd: &Pdu, outcome: Outcome) {
        self.stats.record(cmd.cdb().first().copied().unwrap_or(0), &outcome);
        let edtl = cmd.expected_length() as usize;
        let (reads, writes) = (cmd.reads(), cmd.writes());
        let produced = outcome.data.len();
        let residual = if reads && outcome.status == GOOD {
            Residual::of(produced, edtl)
        } else if writes && outcome.status == GOOD {
            Residual::of(outcome.data_out_wanted, edtl)
        } else if !reads && !writes && edtl > 0 {
            Residual::of(0, edtl)
        } else {
            Residual::None
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
                p.set_flags(if end_of_burst { flag::FINAL } else { 0 });
                p.set_lun_field(cmd.lun_field());
                p.set_itt(cmd.itt());
                p.set_ttt(RESERVED_TAG);
                p.set_data_sn(data_sn);
                p.set_buffer_offset(offset as u32);
                p.data = outcome.data.slice(offset..offset + n);
                data_sn += 1;
                if last && outcome.status == GOOD {
                    // Phase collapse: status rides on the last Data-In.
                    p.add_flags(flag::FINAL | flag::STATUS);
                    p.set_scsi_status(GOOD);
                    p.set_residual(residual);
                    self.send(p, true);
                    return;
                }
                self.send(p, false);
                offset += n;
            }
        }
        let mut r = Pdu::new(TargetOp::ScsiResponse);
        r.set_flags(flag::FINAL);
        r.set_residual(residual);
        r.set_command_response(CommandResponse::CompletedAtTarget);
        r.set_scsi_status(outcome.status);
        r.set_itt(cmd.itt());
        r.set_exp_data_sn(data_sn);
        if outcome.status == CHECK_CONDITION {
            let sense = outcome.sense.unwrap_or(Sense::INVALID_FIELD_IN_CDB).fixed();
            let mut d = (sense.len() as u16).to_be_bytes().to_vec();
            d.extend_from_slice(&sense);
            r.data = d.into();
        }
        self.send(r, true);
    }
}
