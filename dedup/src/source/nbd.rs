//! A minimal NBD client (fixed newstyle handshake, simple replies, READ only) over a Unix socket: just what
//! it takes to read an image that `qemu-nbd` serves. See the NBD protocol document (NetworkBlockDevice
//! proto.md) for the wire format.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const OPT_EXPORT_NAME: u32 = 1;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;

pub struct NbdClient {
    sock: UnixStream,
    size: u64,
    next_handle: u64,
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl NbdClient {
    /// Connects and negotiates the default export.
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let mut sock = UnixStream::connect(socket)?;
        let mut hello = [0u8; 18];
        sock.read_exact(&mut hello)?;
        if u64::from_be_bytes(hello[0..8].try_into().expect("8")) != NBDMAGIC
            || u64::from_be_bytes(hello[8..16].try_into().expect("8")) != IHAVEOPT
        {
            return Err(protocol_error("the NBD server does not speak the newstyle protocol"));
        }
        let server_flags = u16::from_be_bytes([hello[16], hello[17]]);
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol_error("the NBD server does not support fixed newstyle"));
        }
        let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
        let client_flags: u32 = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { u32::from(FLAG_NO_ZEROES) } else { 0 };
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&client_flags.to_be_bytes());
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        msg.extend_from_slice(&0u32.to_be_bytes()); // empty export name: the default export
        sock.write_all(&msg)?;
        let mut reply = [0u8; 10];
        sock.read_exact(&mut reply)?;
        let size = u64::from_be_bytes(reply[0..8].try_into().expect("8"));
        if !no_zeroes {
            let mut zeroes = [0u8; 124];
            sock.read_exact(&mut zeroes)?;
        }
        Ok(NbdClient { sock, size, next_handle: 1 })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `buf.len()` bytes (at most 32 MiB, the server's limit) at `offset`.
    pub fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.send(CMD_READ, handle, offset, buf.len() as u32)?;
        let mut reply = [0u8; 16];
        self.sock.read_exact(&mut reply)?;
        let magic = u32::from_be_bytes(reply[0..4].try_into().expect("4"));
        let error = u32::from_be_bytes(reply[4..8].try_into().expect("4"));
        let got = u64::from_be_bytes(reply[8..16].try_into().expect("8"));
        if magic != SIMPLE_REPLY_MAGIC || got != handle {
            return Err(protocol_error("unexpected NBD reply"));
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error as i32));
        }
        self.sock.read_exact(buf)
    }

    fn send(&mut self, cmd: u16, handle: u64, offset: u64, len: u32) -> io::Result<()> {
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[4..6].copy_from_slice(&0u16.to_be_bytes());
        req[6..8].copy_from_slice(&cmd.to_be_bytes());
        req[8..16].copy_from_slice(&handle.to_be_bytes());
        req[16..24].copy_from_slice(&offset.to_be_bytes());
        req[24..28].copy_from_slice(&len.to_be_bytes());
        self.sock.write_all(&req)
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        let _ = self.send(CMD_DISC, 0, 0, 0);
    }
}
