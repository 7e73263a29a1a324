//! SVSM protocol dispatch on copied-out registers (COCONUT-SVSM's request
//! loop style), protocol 3 answered by the engine without the VMSA, and the
//! engine's result codes as the SVSM's request errors
//! (docs/integration.md, "SVSM protocol 3").

use altinj_kernel::protocol::{ApicCall, CallOutcome, CallRegs, CallResult, HandBack, ResultCode};
use altinj_kernel::{Env, Platform, VcpuEngine};

/// An SVSM result code as COCONUT-SVSM spells it (`SvsmResultCode`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SvsmResultCode {
    /// 0x8000_0000.
    Incomplete,
    /// 0x8000_0001.
    UnsupportedProtocol,
    /// 0x8000_0002.
    UnsupportedCall,
    /// 0x8000_0003.
    InvalidAddress,
    /// 0x8000_0004.
    InvalidFormat,
    /// 0x8000_0005.
    InvalidParameter,
    /// 0x8000_0006.
    InvalidRequest,
    /// 0x8000_0007.
    Busy,
    /// 0x8000_1000 + n: protocol-specific codes (APIC: CANNOT_REGISTER = +0).
    ProtocolBase(u64),
}

impl SvsmResultCode {
    /// The value for RAX.
    pub fn value(self) -> u64 {
        match self {
            Self::Incomplete => 0x8000_0000,
            Self::UnsupportedProtocol => 0x8000_0001,
            Self::UnsupportedCall => 0x8000_0002,
            Self::InvalidAddress => 0x8000_0003,
            Self::InvalidFormat => 0x8000_0004,
            Self::InvalidParameter => 0x8000_0005,
            Self::InvalidRequest => 0x8000_0006,
            Self::Busy => 0x8000_0007,
            Self::ProtocolBase(n) => 0x8000_1000_u64.wrapping_add(n),
        }
    }
}

/// A failed request as COCONUT-SVSM spells it (`SvsmReqError`): a protocol
/// error the guest gets in RAX, or a fatal error of the SVSM. The engine's
/// protocol 3 answers are never fatal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SvsmReqError {
    /// Returned to the guest in RAX.
    RequestError(SvsmResultCode),
    /// Stops the guest (not produced by protocol 3).
    FatalError,
}

/// The engine's result as a request result: SUCCESS is `Ok` with the
/// outputs, every other code is a `RequestError` for RAX.
pub fn request_result(result: CallResult) -> Result<CallResult, SvsmReqError> {
    let code = match result.code {
        ResultCode::Success => return Ok(result),
        ResultCode::Incomplete => SvsmResultCode::Incomplete,
        ResultCode::UnsupportedProtocol => SvsmResultCode::UnsupportedProtocol,
        ResultCode::UnsupportedCall => SvsmResultCode::UnsupportedCall,
        ResultCode::InvalidAddress => SvsmResultCode::InvalidAddress,
        ResultCode::InvalidFormat => SvsmResultCode::InvalidFormat,
        ResultCode::InvalidParameter => SvsmResultCode::InvalidParameter,
        ResultCode::InvalidRequest => SvsmResultCode::InvalidRequest,
        ResultCode::Busy => SvsmResultCode::Busy,
        ResultCode::CannotRegister => SvsmResultCode::ProtocolBase(0),
    };
    Err(SvsmReqError::RequestError(code))
}

/// What a request leaves for the run loop.
#[must_use]
pub enum Reply {
    /// Answered: RCX/RDX outputs for the guest (RAX = 0).
    Done(CallResult),
    /// Protocol 3's hand-back: completed by the run loop with the VMSA.
    HandBack(HandBack),
}

/// Protocol numbers this skeleton serves.
const CORE_PROTOCOL: u32 = 0;
const APIC_PROTOCOL: u32 = altinj_kernel::protocol::APIC_PROTOCOL;

/// One SVSM request on the guest's copied-out RAX/RCX/RDX/R8.
pub fn svsm_request<P: Platform>(
    engine: &mut VcpuEngine,
    env: &Env<'_, P>,
    regs: &CallRegs,
) -> Result<Reply, SvsmReqError> {
    match regs.protocol() {
        CORE_PROTOCOL => Err(SvsmReqError::RequestError(SvsmResultCode::UnsupportedCall)),
        APIC_PROTOCOL => match engine.handle_apic_call(env, ApicCall::decode(regs)) {
            CallOutcome::Done(result) => request_result(result).map(Reply::Done),
            CallOutcome::HandBack(token) => Ok(Reply::HandBack(token)),
        },
        _ => Err(SvsmReqError::RequestError(
            SvsmResultCode::UnsupportedProtocol,
        )),
    }
}
