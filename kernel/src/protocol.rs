//! SVSM APIC protocol (protocol 3) numbers and result codes (SVSM spec 58019,
//! APIC emulation protocol draft; spec §5), and the decoding of a call from
//! the guest's registers.
//!
//! Calling convention: RAX = protocol << 32 | call, inputs in RCX, RDX, R8;
//! the result code goes back in RAX, outputs in RCX/RDX.

/// Protocol number of the APIC protocol.
pub const APIC_PROTOCOL: u32 = 3;

/// Call numbers.
pub mod call {
    /// QUERY_FEATURES: out RCX = feature bitmap.
    pub const QUERY_FEATURES: u32 = 0;
    /// CONFIGURE: RCX = operation (query / deregister / register).
    pub const CONFIGURE: u32 = 1;
    /// READ_REGISTER: RCX = MSR; out RDX = value.
    pub const READ_REGISTER: u32 = 2;
    /// WRITE_REGISTER: RCX = MSR, RDX = value.
    pub const WRITE_REGISTER: u32 = 3;
    /// CONFIGURE_VECTOR: RCX = vector | allow << 8 | all << 9.
    pub const CONFIGURE_VECTOR: u32 = 4;
}

/// CONFIGURE operations (RCX).
pub mod configure {
    /// Query: out RCX = registration count.
    pub const QUERY: u64 = 0;
    /// Deregister: decrement; at 0 the APIC goes back to the host.
    pub const DEREGISTER: u64 = 1;
    /// Register: increment; CANNOT_REGISTER once the count reached 0.
    pub const REGISTER: u64 = 2;
}

/// QUERY_FEATURES bits (RCX). \[choice\]: the draft defines no bits; the
/// project reports what a guest must know to pick its timer and EOI path.
pub mod feature {
    /// The SVSM emulates the APIC timer (a platform timer exists). When clear
    /// the guest must use the host's timer, as the protocol allows.
    pub const TIMER: u64 = 1 << 0;
    /// The SVSM honours the calling area's `no_eoi_required` byte (lazy EOI).
    pub const LAZY_EOI: u64 = 1 << 1;
}

/// CONFIGURE_VECTOR fields (RCX).
pub mod configure_vector {
    /// Bits 7:0: the vector.
    pub const VECTOR_MASK: u64 = 0xFF;
    /// Bit 8: allow (1) or deny (0).
    pub const ALLOW: u64 = 1 << 8;
    /// Bit 9: apply to every vector.
    pub const ALL: u64 = 1 << 9;
    /// Bits 63:10 must be zero (INVALID_PARAMETER).
    pub const RESERVED: u64 = !0x3FF;
}

/// SVSM result codes (RAX on return).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum ResultCode {
    /// 0.
    Success = 0,
    /// 0x8000_0000.
    Incomplete = 0x8000_0000,
    /// 0x8000_0001: the protocol is not available (emulation off on this vCPU).
    UnsupportedProtocol = 0x8000_0001,
    /// 0x8000_0002.
    UnsupportedCall = 0x8000_0002,
    /// 0x8000_0003: unknown register.
    InvalidAddress = 0x8000_0003,
    /// 0x8000_0004.
    InvalidFormat = 0x8000_0004,
    /// 0x8000_0005: bad value, wrong direction, reserved bits.
    InvalidParameter = 0x8000_0005,
    /// 0x8000_0006: not possible in the current state.
    InvalidRequest = 0x8000_0006,
    /// 0x8000_0007.
    Busy = 0x8000_0007,
    /// 0x8000_1000: APIC protocol CANNOT_REGISTER.
    CannotRegister = 0x8000_1000,
}

impl ResultCode {
    /// The value for RAX.
    pub fn value(self) -> u64 {
        self as u64
    }
}

/// The input registers of an SVSM call.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct CallRegs {
    /// protocol << 32 | call.
    pub rax: u64,
    /// First input.
    pub rcx: u64,
    /// Second input.
    pub rdx: u64,
    /// Third input.
    pub r8: u64,
}

impl CallRegs {
    /// Protocol number (RAX bits 63:32).
    pub fn protocol(&self) -> u32 {
        // Lossless: a 64-bit value shifted right by 32 fits in 32 bits.
        (self.rax >> 32) as u32
    }

    /// Call number (RAX bits 31:0).
    pub fn call(&self) -> u32 {
        // Truncation to the low 32 bits is the encoding.
        self.rax as u32
    }

    /// Whether the call belongs to the APIC protocol.
    pub fn is_apic_protocol(&self) -> bool {
        self.protocol() == APIC_PROTOCOL
    }
}

/// A decoded APIC protocol call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ApicCall {
    /// QUERY_FEATURES.
    QueryFeatures,
    /// CONFIGURE with the RCX operation.
    Configure(u64),
    /// READ_REGISTER of an MSR.
    ReadRegister {
        /// MSR number (RCX).
        msr: u64,
    },
    /// WRITE_REGISTER.
    WriteRegister {
        /// MSR number (RCX).
        msr: u64,
        /// Value (RDX).
        value: u64,
    },
    /// CONFIGURE_VECTOR with raw RCX.
    ConfigureVector(u64),
    /// Any other call number (UNSUPPORTED_CALL).
    Unknown(u32),
}

impl ApicCall {
    /// Decodes the call in `regs` (the protocol number is not checked).
    pub fn decode(regs: &CallRegs) -> Self {
        match regs.call() {
            call::QUERY_FEATURES => Self::QueryFeatures,
            call::CONFIGURE => Self::Configure(regs.rcx),
            call::READ_REGISTER => Self::ReadRegister { msr: regs.rcx },
            call::WRITE_REGISTER => Self::WriteRegister {
                msr: regs.rcx,
                value: regs.rdx,
            },
            call::CONFIGURE_VECTOR => Self::ConfigureVector(regs.rcx),
            other => Self::Unknown(other),
        }
    }
}

/// What the SVSM writes back to the guest: RAX and optional RCX/RDX.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CallResult {
    /// Result code (RAX).
    pub code: ResultCode,
    /// New RCX, when the call has one.
    pub rcx: Option<u64>,
    /// New RDX, when the call has one.
    pub rdx: Option<u64>,
}

impl CallResult {
    /// A result with no outputs.
    pub fn code(code: ResultCode) -> Self {
        Self {
            code,
            rcx: None,
            rdx: None,
        }
    }

    /// SUCCESS with RCX.
    pub fn rcx(value: u64) -> Self {
        Self {
            code: ResultCode::Success,
            rcx: Some(value),
            rdx: None,
        }
    }

    /// SUCCESS with RDX.
    pub fn rdx(value: u64) -> Self {
        Self {
            code: ResultCode::Success,
            rcx: None,
            rdx: Some(value),
        }
    }

    /// SUCCESS, no outputs.
    pub const SUCCESS: Self = Self {
        code: ResultCode::Success,
        rcx: None,
        rdx: None,
    };
}

/// Maps an APIC register error to the protocol's result (spec §5: unknown
/// register INVALID_ADDRESS, everything else INVALID_PARAMETER, which the
/// guest's #VC handler turns into #GP).
pub fn register_error(error: altinj_apic::RegisterError) -> ResultCode {
    match error {
        altinj_apic::RegisterError::Unknown => ResultCode::InvalidAddress,
        altinj_apic::RegisterError::WrongDirection
        | altinj_apic::RegisterError::InvalidValue
        | altinj_apic::RegisterError::WrongMode => ResultCode::InvalidParameter,
    }
}

/// What [`crate::VcpuEngine::handle_apic_call`] asks of the run loop. Every
/// call but one is answered on the copied-out registers alone; the CONFIGURE
/// that hands the calling vCPU's APIC back needs its VMSA, so it comes back
/// as a [`HandBack`] the run loop completes with
/// [`crate::VcpuEngine::complete_hand_back`] (after `after_exit`, before
/// the next `before_run`, BUSY set).
#[must_use = "a result goes to the guest's RAX/RCX/RDX; a hand-back must be completed"]
#[derive(PartialEq, Eq, Debug)]
pub enum CallOutcome {
    /// Answered: write it to the guest's RAX (and RCX/RDX outputs).
    Done(CallResult),
    /// CONFIGURE left the VM-wide count at 0: the calling vCPU's APIC goes
    /// back to the host once the token is completed with its VMSA, which
    /// answers the call.
    HandBack(HandBack),
}

impl CallOutcome {
    /// The answer, when no hand-back is pending.
    pub fn done(self) -> Option<CallResult> {
        match self {
            Self::Done(result) => Some(result),
            Self::HandBack(_) => None,
        }
    }
}

/// A hand-back the run loop must complete with the calling vCPU's VMSA
/// ([`crate::VcpuEngine::complete_hand_back`]). Neither `Clone` nor `Copy`:
/// it is completed at most once. Dropped instead, nothing is handed back:
/// the vCPU stays emulated with the VM-wide count at 0 (as after a failed
/// disable-AI), and its next deregister or query asks again.
#[must_use = "complete it with VcpuEngine::complete_hand_back and the vCPU's VMSA"]
#[derive(PartialEq, Eq, Debug)]
pub struct HandBack {
    /// The engine (fabric index) that issued it.
    pub(crate) index: u32,
}

impl CallResult {
    /// Writes the result to the guest's registers: RAX, and RCX/RDX when
    /// the call has them.
    pub fn write_to<V: altinj_vmsa::VmsaAccess + ?Sized>(&self, vmsa: &mut V) {
        vmsa.set_rax(self.code.value());
        if let Some(rcx) = self.rcx {
            vmsa.set_rcx(rcx);
        }
        if let Some(rdx) = self.rdx {
            vmsa.set_rdx(rdx);
        }
    }
}
