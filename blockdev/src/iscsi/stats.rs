//! What the portal has answered, for the appliance's metrics: SCSI commands by operation code, and check
//! conditions by sense key. Counted without locks where every command's answer is sent.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::scsi::Outcome;

#[derive(Debug)]
pub struct CommandStats {
    by_opcode: [AtomicU64; 256],
    by_sense_key: [AtomicU64; 16],
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            by_opcode: std::array::from_fn(|_| AtomicU64::new(0)),
            by_sense_key: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl CommandStats {
    pub fn record(&self, opcode: u8, outcome: &Outcome) {
        self.by_opcode[usize::from(opcode)].fetch_add(1, Ordering::Relaxed);
        if let Some(sense) = &outcome.sense {
            self.by_sense_key[usize::from(sense.key & 0x0f)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (operation code, its handler's name or "Unsupported", commands answered), for every code seen.
    pub fn commands(&self) -> Vec<(u8, String, u64)> {
        (0..=255u8)
            .filter_map(|op| {
                let n = self.by_opcode[usize::from(op)].load(Ordering::Relaxed);
                (n > 0).then(|| (op, opcode_name(op), n))
            })
            .collect()
    }

    /// (sense key's name, check conditions answered with it), for every key seen.
    pub fn sense_keys(&self) -> Vec<(&'static str, u64)> {
        (0..16)
            .filter_map(|k| {
                let n = self.by_sense_key[k].load(Ordering::Relaxed);
                (n > 0).then(|| (SENSE_KEY_NAMES[k], n))
            })
            .collect()
    }
}

fn opcode_name(opcode: u8) -> String {
    // Several entries share an opcode (service actions); the first names them all well enough.
    match crate::scsi::COMMANDS.iter().find(|c| c.opcode == opcode) {
        Some(c) => format!("{:?}", c.handler),
        None => "Unsupported".to_string(),
    }
}

/// SPC-4's sense keys, table 28.
const SENSE_KEY_NAMES: [&str; 16] = [
    "no_sense",
    "recovered_error",
    "not_ready",
    "medium_error",
    "hardware_error",
    "illegal_request",
    "unit_attention",
    "data_protect",
    "blank_check",
    "vendor_specific",
    "copy_aborted",
    "aborted_command",
    "reserved_0c",
    "volume_overflow",
    "miscompare",
    "completed",
];
