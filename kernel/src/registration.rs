//! The APIC protocol's registration count (spec §5, CONFIGURE) as a state
//! machine.
//!
//! \[choice\] where the draft is silent:
//! - A vCPU starts with emulation on and a count of 1: the boot reference
//!   that OVMF's SEC phase relies on before any guest code registers. The
//!   SVSM may instead create an engine with emulation off (the VMSA has no
//!   Alternate Injection, or the platform lacks it): then every call answers
//!   UNSUPPORTED_PROTOCOL.
//! - When a deregistration brings the count to 0 the engine hands the APIC
//!   back to the host (descriptor writeback, then disable-AI). If the
//!   disable-AI call fails the count stays 1 and the guest gets
//!   INVALID_REQUEST: the APIC must never be left without an emulator.
//! - After the hand-back the APIC belongs to the host for good: QUERY_FEATURES
//!   and CONFIGURE still answer (query returns 0, register CANNOT_REGISTER,
//!   deregister INVALID_REQUEST); register access and CONFIGURE_VECTOR answer
//!   INVALID_REQUEST ("not emulating").

use crate::protocol::{ResultCode, configure};

/// Where a vCPU's APIC emulation stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Registration {
    /// This vCPU has no SVSM APIC emulation (protocol unsupported).
    Off,
    /// The SVSM emulates the APIC; `count` users are registered (>= 1).
    On {
        /// Registration count.
        count: u32,
    },
    /// The APIC was handed back to the host.
    HandedBack,
}

/// The result of a CONFIGURE operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigureStep {
    /// Done: answer SUCCESS with this count in RCX.
    Count(u32),
    /// The count would reach 0: perform the hand-back, then call
    /// [`Registration::complete_hand_back`].
    HandBack,
}

impl Registration {
    /// Initial state: on with the boot reference, or off.
    pub const fn new(emulate: bool) -> Self {
        if emulate {
            Self::On { count: 1 }
        } else {
            Self::Off
        }
    }

    /// Whether the SVSM is emulating the APIC now.
    pub fn emulating(&self) -> bool {
        matches!(self, Self::On { .. })
    }

    /// The registration count (0 when not emulating).
    pub fn count(&self) -> u32 {
        match self {
            Self::On { count } => *count,
            Self::Off | Self::HandedBack => 0,
        }
    }

    /// CONFIGURE with RCX = `op` (the caller has already answered
    /// UNSUPPORTED_PROTOCOL for [`Registration::Off`]).
    pub fn configure(&mut self, op: u64) -> Result<ConfigureStep, ResultCode> {
        match (op, *self) {
            (_, Self::Off) => Err(ResultCode::UnsupportedProtocol),
            (configure::QUERY, _) => Ok(ConfigureStep::Count(self.count())),
            (configure::REGISTER, Self::On { count }) => {
                let count = count.checked_add(1).ok_or(ResultCode::InvalidRequest)?;
                *self = Self::On { count };
                Ok(ConfigureStep::Count(count))
            }
            (configure::REGISTER, Self::HandedBack) => Err(ResultCode::CannotRegister),
            (configure::DEREGISTER, Self::On { count: 1 }) => Ok(ConfigureStep::HandBack),
            (configure::DEREGISTER, Self::On { count }) => {
                let count = count.saturating_sub(1);
                *self = Self::On { count };
                Ok(ConfigureStep::Count(count))
            }
            (configure::DEREGISTER, Self::HandedBack) => Err(ResultCode::InvalidRequest),
            _ => Err(ResultCode::InvalidParameter),
        }
    }

    /// Records that the hand-back asked for by [`ConfigureStep::HandBack`]
    /// succeeded.
    pub fn complete_hand_back(&mut self) {
        *self = Self::HandedBack;
    }
}
