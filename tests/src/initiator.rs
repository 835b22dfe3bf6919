//! A minimal raw iSCSI initiator for tests that need what libiscsi's tools do not offer: data digests,
//! many sessions held open at once, and deliberately broken PDUs. It keeps its own constants and CRC rather
//! than the target's: a test that shared the target's codec would agree with the target's mistakes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opcodes (RFC 7143 section 11.1.1), byte 0 of the header.
pub mod op {
    /// Byte 0: an immediate PDU (takes no CmdSN).
    pub const IMMEDIATE: u8 = 0x40;
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MANAGEMENT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const DATA_OUT: u8 = 0x05;
    pub const SNACK: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MANAGEMENT_RESPONSE: u8 = 0x22;
    pub const DATA_IN: u8 = 0x25;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 section 11.17.1), byte 2 of a Reject.
pub mod reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// What a login offers beyond the defaults.
#[derive(Clone, Copy, Debug)]
pub struct LoginOptions {
    pub digests: bool,
    pub immediate_data: bool,
    pub discovery: bool,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions { digests: false, immediate_data: true, discovery: false }
    }
}

/// A Reject as the initiator received it.
#[derive(Debug)]
pub struct Rejected {
    pub reason: u8,
    pub itt: u32,
    /// The data segment: the rejected PDU's header.
    pub data: Vec<u8>,
}

fn crc32c(data: &[u8]) -> u32 {
    // Bitwise CRC32C (Castagnoli, reflected 0x82F63B78): small and obviously right, fast enough for tests.
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

pub struct Initiator {
    pub stream: TcpStream,
    isid: [u8; 6],
    header_digest: bool,
    data_digest: bool,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
}

fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(format!("{k}={v}").as_bytes());
        out.push(0);
    }
    out
}

impl Initiator {
    /// Logs in to `target` at `addr` (straight to operational negotiation, no authentication). Each call is
    /// a new session (its own ISID).
    pub fn login(addr: &str, target: &str, digests: bool) -> std::io::Result<Initiator> {
        Self::login_with(addr, target, LoginOptions { digests, ..LoginOptions::default() })
    }

    /// Logs in with these options, as a new session. `target` is ignored for a discovery session.
    pub fn login_with(addr: &str, target: &str, options: LoginOptions) -> std::io::Result<Initiator> {
        // A distinct ISID per session: the same initiator name and ISID would reinstate (end) the other one.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_be_bytes();
        Self::login_full(addr, target, options, [0x40, 0, n[0], n[1], n[2], n[3]])
    }

    /// Logs in with a given ISID.
    pub fn login_with_isid(addr: &str, target: &str, isid: [u8; 6]) -> std::io::Result<Initiator> {
        Self::login_full(addr, target, LoginOptions::default(), isid)
    }

    pub fn isid(&self) -> [u8; 6] {
        self.isid
    }

    fn login_full(addr: &str, target: &str, options: LoginOptions, isid: [u8; 6]) -> std::io::Result<Initiator> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut ini =
            Initiator { stream, isid, header_digest: false, data_digest: false, cmd_sn: 1, exp_stat_sn: 0, itt: 1 };
        let digest = if options.digests { "CRC32C" } else { "None" };
        let mut pairs = vec![("InitiatorName", "iqn.2026-11.io.livemount:test-initiator")];
        if options.discovery {
            pairs.push(("SessionType", "Discovery"));
        } else {
            pairs.extend([("TargetName", target), ("SessionType", "Normal")]);
        }
        pairs.extend([
            ("HeaderDigest", digest),
            ("DataDigest", digest),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "No"),
            ("ImmediateData", if options.immediate_data { "Yes" } else { "No" }),
        ]);
        let data = keys(&pairs);
        let mut bhs = [0u8; 48];
        bhs[0] = op::IMMEDIATE | op::LOGIN;
        bhs[1] = 0x80 | (1 << 2) | 3; // T, CSG operational, NSG full feature
        bhs[8..14].copy_from_slice(&isid);
        bhs[16..20].copy_from_slice(&ini.itt.to_be_bytes());
        bhs[24..28].copy_from_slice(&ini.cmd_sn.to_be_bytes());
        ini.send_raw(bhs, &data)?;
        let (rsp, answer) = ini.recv()?;
        if rsp[36] != 0 {
            return Err(std::io::Error::other(format!("login failed: class {} detail {}", rsp[36], rsp[37])));
        }
        let text = String::from_utf8_lossy(&answer).to_string();
        ini.header_digest = text.contains("HeaderDigest=CRC32C");
        ini.data_digest = text.contains("DataDigest=CRC32C");
        Ok(ini)
    }

    pub fn digests(&self) -> (bool, bool) {
        (self.header_digest, self.data_digest)
    }

    /// Sends a PDU (BHS and data), with the digests in use.
    pub fn send_raw(&mut self, bhs: [u8; 48], data: &[u8]) -> std::io::Result<()> {
        self.send_pdu(bhs, &[], data, false).map(|_| ())
    }

    /// Sends a PDU with additional header segments (whole 4-byte words), and a data digest that is wrong
    /// when `bad_data_digest`. Returns the header as sent (with its length fields).
    pub fn send_pdu(
        &mut self,
        mut bhs: [u8; 48],
        ahs: &[u8],
        data: &[u8],
        bad_data_digest: bool,
    ) -> std::io::Result<[u8; 48]> {
        assert!(ahs.len().is_multiple_of(4) && ahs.len() / 4 < 256, "AHS in whole words");
        let len = data.len();
        bhs[4] = (ahs.len() / 4) as u8;
        bhs[5] = (len >> 16) as u8;
        bhs[6] = (len >> 8) as u8;
        bhs[7] = len as u8;
        let mut out = bhs.to_vec();
        out.extend_from_slice(ahs);
        if self.header_digest {
            out.extend_from_slice(&crc32c(&out).to_le_bytes());
        }
        if len > 0 {
            let mut padded = data.to_vec();
            padded.resize(len.div_ceil(4) * 4, 0);
            out.extend_from_slice(&padded);
            if self.data_digest {
                let digest = crc32c(&padded) ^ u32::from(bad_data_digest);
                out.extend_from_slice(&digest.to_le_bytes());
            }
        }
        self.stream.write_all(&out)?;
        Ok(bhs)
    }

    /// Receives PDUs until a Reject (skipping the target's NOP-In pings), and returns it. Any other PDU
    /// is an error: the target answered what it should have rejected.
    pub fn recv_reject(&mut self) -> std::io::Result<Rejected> {
        loop {
            let (rsp, data) = self.recv()?;
            let itt = u32::from_be_bytes(rsp[16..20].try_into().unwrap());
            match rsp[0] & 0x3f {
                op::REJECT => return Ok(Rejected { reason: rsp[2], itt, data }),
                op::NOP_IN if itt == u32::MAX => {}
                other => return Err(std::io::Error::other(format!("opcode {other:#x} where a Reject was due"))),
            }
        }
    }

    /// Receives one PDU, checking its digests. Returns the BHS and the data.
    pub fn recv(&mut self) -> std::io::Result<([u8; 48], Vec<u8>)> {
        let mut bhs = [0u8; 48];
        self.stream.read_exact(&mut bhs)?;
        if self.header_digest {
            let mut d = [0u8; 4];
            self.stream.read_exact(&mut d)?;
            assert_eq!(u32::from_le_bytes(d), crc32c(&bhs), "header digest from the target is right");
        }
        let len = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
        let mut data = vec![0u8; len.div_ceil(4) * 4];
        self.stream.read_exact(&mut data)?;
        if self.data_digest && len > 0 {
            let mut d = [0u8; 4];
            self.stream.read_exact(&mut d)?;
            assert_eq!(u32::from_le_bytes(d), crc32c(&data), "data digest from the target is right");
        }
        data.truncate(len);
        self.exp_stat_sn = u32::from_be_bytes(bhs[24..28].try_into().unwrap()).wrapping_add(1);
        Ok((bhs, data))
    }

    /// One SCSI command on LUN 0, its data-out sent as immediate data, up to `read_len` bytes of data-in
    /// wanted. Returns the data-in, the SCSI status and the sense data (empty when there is none).
    pub fn command(&mut self, cdb: &[u8], data_out: &[u8], read_len: u32) -> std::io::Result<Answer> {
        self.itt += 1;
        let mut bhs = [0u8; 48];
        bhs[0] = op::SCSI_COMMAND;
        bhs[1] = 0x80 | if read_len > 0 { 0x40 } else { 0 } | if data_out.is_empty() { 0 } else { 0x20 }; // F, R, W
        bhs[16..20].copy_from_slice(&self.itt.to_be_bytes());
        bhs[20..24].copy_from_slice(&(read_len + data_out.len() as u32).to_be_bytes());
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.cmd_sn += 1;
        bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        self.send_raw(bhs, data_out)?;
        let mut data = Vec::new();
        loop {
            let (rsp, d) = self.recv()?;
            match rsp[0] & 0x3f {
                op::DATA_IN => {
                    data.extend_from_slice(&d);
                    if rsp[1] & 0x01 != 0 {
                        return Ok(Answer { data, status: rsp[3], sense: Vec::new() });
                    }
                }
                op::SCSI_RESPONSE => {
                    // The sense data comes after its 2-byte length.
                    let sense = d.get(2..).map(<[u8]>::to_vec).unwrap_or_default();
                    return Ok(Answer { data, status: rsp[3], sense });
                }
                _ => {} // NOP-In pings and the like
            }
        }
    }

    /// A task management function (RFC 7143 11.5: 5 = LOGICAL UNIT RESET, 6 = TARGET WARM RESET...) on LUN 0,
    /// sent as an immediate PDU; returns the response code (0: function complete).
    pub fn task_management(&mut self, function: u8) -> std::io::Result<u8> {
        self.itt += 1;
        let mut bhs = [0u8; 48];
        bhs[0] = op::IMMEDIATE | op::TASK_MANAGEMENT;
        bhs[1] = 0x80 | function;
        bhs[16..20].copy_from_slice(&self.itt.to_be_bytes());
        bhs[20..24].copy_from_slice(&u32::MAX.to_be_bytes()); // no referenced task
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send_raw(bhs, &[])?;
        loop {
            let (rsp, _) = self.recv()?;
            if rsp[0] & 0x3f == op::TASK_MANAGEMENT_RESPONSE {
                return Ok(rsp[2]);
            }
        }
    }

    /// READ(10) of `blocks` 512-byte blocks at `lba` on LUN 0; returns the data and the SCSI status.
    pub fn read10(&mut self, lba: u32, blocks: u16) -> std::io::Result<(Vec<u8>, u8)> {
        let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.command(&cdb, &[], u32::from(blocks) * 512).map(|a| (a.data, a.status))
    }

    /// WRITE(10) with all data as immediate data.
    pub fn write10(&mut self, lba: u32, data: &[u8]) -> std::io::Result<u8> {
        let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&((data.len() / 512) as u16).to_be_bytes());
        self.command(&cdb, data, 0).map(|a| a.status)
    }
}

/// What a SCSI command got back.
#[derive(Debug)]
pub struct Answer {
    pub data: Vec<u8>,
    pub status: u8,
    /// Fixed-format sense data, when the status is CHECK CONDITION.
    pub sense: Vec<u8>,
}
