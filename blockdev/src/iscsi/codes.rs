//! The numbers of the iSCSI wire (RFC 7143, section 11) by name: the flag bits of the BHS, the opcodes of
//! both sides, Reject reasons, task management functions and responses, the SCSI Response byte, and the
//! residual of a command. Values read off the wire that we do not know parse to `Unsupported(code)`.
//! `pdu.rs` places them in the header.

/// Bits of bytes 0 and 1 of the BHS.
pub mod flag {
    /// Byte 0: an immediate PDU (takes no CmdSN).
    pub const IMMEDIATE: u8 = 0x40;
    /// Byte 0: the opcode.
    pub const OPCODE_MASK: u8 = 0x3f;
    /// Byte 1 of most PDUs: the last of a sequence.
    pub const FINAL: u8 = 0x80;
    /// SCSI command: the command reads (Data-In expected).
    pub const READ: u8 = 0x40;
    /// SCSI command: the command writes (Data-Out expected).
    pub const WRITE: u8 = 0x20;
    /// Data-In and SCSI response: the residual is an overflow.
    pub const OVERFLOW: u8 = 0x04;
    /// Data-In and SCSI response: the residual is an underflow.
    pub const UNDERFLOW: u8 = 0x02;
    /// Data-In: status follows in this PDU (phase collapse).
    pub const STATUS: u8 = 0x01;
    /// Login: transit to the next stage.
    pub const TRANSIT: u8 = 0x80;
    /// Login: more text follows in the next PDU.
    pub const CONTINUE: u8 = 0x40;
    /// Login: current stage (2 bits) and next stage (2 bits).
    pub const CSG_SHIFT: u8 = 2;
    pub const STAGE_MASK: u8 = 0x03;
    /// Task management request: the function (7 bits).
    pub const FUNCTION_MASK: u8 = 0x7f;
}

/// Opcodes of PDUs an initiator sends (section 11.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiatorOp {
    NopOut,
    ScsiCommand,
    TaskManagement,
    Login,
    Text,
    DataOut,
    Logout,
    Snack,
    Unsupported(u8),
}

impl InitiatorOp {
    pub fn from_byte(b: u8) -> Self {
        match b & flag::OPCODE_MASK {
            0x00 => InitiatorOp::NopOut,
            0x01 => InitiatorOp::ScsiCommand,
            0x02 => InitiatorOp::TaskManagement,
            0x03 => InitiatorOp::Login,
            0x04 => InitiatorOp::Text,
            0x05 => InitiatorOp::DataOut,
            0x06 => InitiatorOp::Logout,
            0x10 => InitiatorOp::Snack,
            other => InitiatorOp::Unsupported(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            InitiatorOp::NopOut => 0x00,
            InitiatorOp::ScsiCommand => 0x01,
            InitiatorOp::TaskManagement => 0x02,
            InitiatorOp::Login => 0x03,
            InitiatorOp::Text => 0x04,
            InitiatorOp::DataOut => 0x05,
            InitiatorOp::Logout => 0x06,
            InitiatorOp::Snack => 0x10,
            InitiatorOp::Unsupported(other) => other & flag::OPCODE_MASK,
        }
    }
}

/// Opcodes of PDUs the target sends (section 11.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetOp {
    NopIn,
    ScsiResponse,
    TaskManagementResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    Reject,
    Unsupported(u8),
}

impl TargetOp {
    pub fn from_byte(b: u8) -> Self {
        match b & flag::OPCODE_MASK {
            0x20 => TargetOp::NopIn,
            0x21 => TargetOp::ScsiResponse,
            0x22 => TargetOp::TaskManagementResponse,
            0x23 => TargetOp::LoginResponse,
            0x24 => TargetOp::TextResponse,
            0x25 => TargetOp::DataIn,
            0x26 => TargetOp::LogoutResponse,
            0x31 => TargetOp::R2t,
            0x3f => TargetOp::Reject,
            other => TargetOp::Unsupported(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TargetOp::NopIn => 0x20,
            TargetOp::ScsiResponse => 0x21,
            TargetOp::TaskManagementResponse => 0x22,
            TargetOp::LoginResponse => 0x23,
            TargetOp::TextResponse => 0x24,
            TargetOp::DataIn => 0x25,
            TargetOp::LogoutResponse => 0x26,
            TargetOp::R2t => 0x31,
            TargetOp::Reject => 0x3f,
            TargetOp::Unsupported(other) => other & flag::OPCODE_MASK,
        }
    }
}

/// Why the target rejects a PDU (section 11.17.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// 0x02: the data digest was wrong; the PDU may be sent again.
    DataDigestError,
    /// 0x03
    SnackReject,
    /// 0x04: the PDU is not allowed here (a SCSI command in a discovery session, a login in full feature
    /// phase, an opcode we do not take).
    ProtocolError,
    /// 0x05
    CommandNotSupported,
    /// 0x06
    TooManyImmediateCommands,
    /// 0x07
    TaskInProgress,
    /// 0x08
    InvalidDataAck,
    /// 0x09: a field of the PDU is wrong (an unknown ITT, data or AHS that were not agreed).
    InvalidPduField,
    /// 0x0a
    LongOperationReject,
    /// 0x0b: Negotiation Reset in RFC 3720; deprecated by RFC 7143, which says it must not be sent.
    NegotiationReset,
    /// 0x0c
    WaitingForLogout,
    Unsupported(u8),
}

impl RejectReason {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0x02 => RejectReason::DataDigestError,
            0x03 => RejectReason::SnackReject,
            0x04 => RejectReason::ProtocolError,
            0x05 => RejectReason::CommandNotSupported,
            0x06 => RejectReason::TooManyImmediateCommands,
            0x07 => RejectReason::TaskInProgress,
            0x08 => RejectReason::InvalidDataAck,
            0x09 => RejectReason::InvalidPduField,
            0x0a => RejectReason::LongOperationReject,
            0x0b => RejectReason::NegotiationReset,
            0x0c => RejectReason::WaitingForLogout,
            other => RejectReason::Unsupported(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            RejectReason::DataDigestError => 0x02,
            RejectReason::SnackReject => 0x03,
            RejectReason::ProtocolError => 0x04,
            RejectReason::CommandNotSupported => 0x05,
            RejectReason::TooManyImmediateCommands => 0x06,
            RejectReason::TaskInProgress => 0x07,
            RejectReason::InvalidDataAck => 0x08,
            RejectReason::InvalidPduField => 0x09,
            RejectReason::LongOperationReject => 0x0a,
            RejectReason::NegotiationReset => 0x0b,
            RejectReason::WaitingForLogout => 0x0c,
            RejectReason::Unsupported(other) => other,
        }
    }
}

/// Task management functions (section 11.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    Unsupported(u8),
}

impl TmfFunction {
    pub fn from_byte(b: u8) -> Self {
        match b & flag::FUNCTION_MASK {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => TmfFunction::Unsupported(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TmfFunction::AbortTask => 1,
            TmfFunction::AbortTaskSet => 2,
            TmfFunction::ClearAca => 3,
            TmfFunction::ClearTaskSet => 4,
            TmfFunction::LogicalUnitReset => 5,
            TmfFunction::TargetWarmReset => 6,
            TmfFunction::TargetColdReset => 7,
            TmfFunction::TaskReassign => 8,
            TmfFunction::Unsupported(other) => other & flag::FUNCTION_MASK,
        }
    }
}

/// Task management responses (section 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfResponse {
    FunctionComplete,
    TaskDoesNotExist,
    LunDoesNotExist,
    TaskStillAllegiant,
    /// Task allegiance reassignment needs error recovery level 2.
    ReassignmentNotSupported,
    FunctionNotSupported,
    AuthorizationFailed,
    FunctionRejected,
    Unsupported(u8),
}

impl TmfResponse {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => TmfResponse::FunctionComplete,
            1 => TmfResponse::TaskDoesNotExist,
            2 => TmfResponse::LunDoesNotExist,
            3 => TmfResponse::TaskStillAllegiant,
            4 => TmfResponse::ReassignmentNotSupported,
            5 => TmfResponse::FunctionNotSupported,
            6 => TmfResponse::AuthorizationFailed,
            255 => TmfResponse::FunctionRejected,
            other => TmfResponse::Unsupported(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TmfResponse::FunctionComplete => 0,
            TmfResponse::TaskDoesNotExist => 1,
            TmfResponse::LunDoesNotExist => 2,
            TmfResponse::TaskStillAllegiant => 3,
            TmfResponse::ReassignmentNotSupported => 4,
            TmfResponse::FunctionNotSupported => 5,
            TmfResponse::AuthorizationFailed => 6,
            TmfResponse::FunctionRejected => 255,
            TmfResponse::Unsupported(other) => other,
        }
    }
}

/// The Response byte of a SCSI Response (section 11.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    CompletedAtTarget,
    TargetFailure,
    Unsupported(u8),
}

impl CommandResponse {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => CommandResponse::CompletedAtTarget,
            1 => CommandResponse::TargetFailure,
            other => CommandResponse::Unsupported(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            CommandResponse::CompletedAtTarget => 0,
            CommandResponse::TargetFailure => 1,
            CommandResponse::Unsupported(other) => other,
        }
    }
}

/// The residual of a command: how much of the expected data transfer length went unused (underflow), or
/// how much more the command had (overflow). Data-In and SCSI Response carry it the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    None,
    Overflow(u32),
    Underflow(u32),
}

impl Residual {
    /// The residual of a transfer of `actual` bytes against an expected `expected`.
    pub fn of(actual: usize, expected: usize) -> Residual {
        use std::cmp::Ordering::*;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match actual.cmp(&expected) {
            Greater => Residual::Overflow(count(actual - expected)),
            Less => Residual::Underflow(count(expected - actual)),
            Equal => Residual::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire value parses to a variant that gives the same value back: the two tables of each enum
    /// agree, and unknown values survive as `Unsupported`.
    #[test]
    fn every_code_roundtrips() {
        for b in 0..=flag::OPCODE_MASK {
            assert_eq!(InitiatorOp::from_byte(b).code(), b);
            assert_eq!(TargetOp::from_byte(b).code(), b);
            assert_eq!(
                InitiatorOp::from_byte(b | flag::IMMEDIATE),
                InitiatorOp::from_byte(b),
                "the I bit is no opcode"
            );
        }
        for b in 0..=flag::FUNCTION_MASK {
            assert_eq!(TmfFunction::from_byte(b).code(), b);
        }
        for b in 0..=u8::MAX {
            assert_eq!(RejectReason::from_byte(b).code(), b);
            assert_eq!(TmfResponse::from_byte(b).code(), b);
            assert_eq!(CommandResponse::from_byte(b).code(), b);
        }
        assert_eq!(RejectReason::ProtocolError.code(), 0x04);
        assert_eq!(RejectReason::NegotiationReset.code(), 0x0b);
        assert_eq!(Residual::of(10, 4), Residual::Overflow(6));
        assert_eq!(Residual::of(4, 10), Residual::Underflow(6));
        assert_eq!(Residual::of(4, 4), Residual::None);
    }
}
