//! The APIC protocol's registration count (spec §5 CONFIGURE): one count per
//! VM, shared by every vCPU, and each vCPU's own emulation state.
//!
//! The count ([`RegistrationCount`], inside the SVSM's
//! [`crate::VmShared`]) is one `AtomicU32`, changed only by RMWs, so vCPUs
//! register and deregister concurrently without a lock. It starts at 1 when
//! the VM boots with Alternate Injection (the boot reference OVMF's SEC
//! phase relies on). Register increments it and fails CANNOT_REGISTER once
//! it is 0; it changes nothing on the calling vCPU. Deregister decrements it
//! (never below 0). A deregister that leaves it at 0, or a query that finds
//! it at 0, hands back the **calling** vCPU's APIC; every other vCPU stays
//! emulated until it makes such a call itself (COCONUT-SVSM
//! `APIC_EMULATION_REG_COUNT`).
//!
//! Per vCPU ([`Registration`]): off (no Alternate Injection on this vCPU:
//! every call answers UNSUPPORTED_PROTOCOL), on, or handed back (every call
//! answers UNSUPPORTED_PROTOCOL, spec §5). \[choice\] If the disable-AI call
//! of a hand-back fails, the vCPU stays emulated and the guest gets
//! INVALID_REQUEST; the count stays 0, so its next deregister or query
//! tries the hand-back again (the APIC is never left without an emulator).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::protocol::{ResultCode, configure};

/// Where one vCPU's APIC emulation stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Registration {
    /// This vCPU has no SVSM APIC emulation (protocol unsupported).
    Off,
    /// The SVSM emulates the APIC.
    On,
    /// The APIC was handed back to the host (protocol unsupported).
    HandedBack,
}

impl Registration {
    /// Initial state: on, or off.
    pub const fn new(emulate: bool) -> Self {
        if emulate { Self::On } else { Self::Off }
    }

    /// Whether the SVSM is emulating the APIC now.
    pub fn emulating(&self) -> bool {
        *self == Self::On
    }
}

/// The result of a CONFIGURE operation on the VM-wide count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigureStep {
    /// Done: answer SUCCESS with this count in RCX.
    Count(u32),
    /// The count is 0: hand back the calling vCPU's APIC, then answer
    /// SUCCESS with RCX = 0.
    HandBack,
}

/// The VM-wide registration count (module doc).
#[derive(Debug)]
pub struct RegistrationCount(AtomicU32);

impl Default for RegistrationCount {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistrationCount {
    /// The boot reference: 1.
    pub const fn new() -> Self {
        Self(AtomicU32::new(1))
    }

    /// The current count.
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// CONFIGURE with RCX = `op` (query, deregister, register).
    pub fn configure(&self, op: u64) -> Result<ConfigureStep, ResultCode> {
        let at_zero = |count: u32| match count {
            0 => ConfigureStep::HandBack,
            n => ConfigureStep::Count(n),
        };
        match op {
            configure::QUERY => Ok(at_zero(self.count())),
            configure::REGISTER => self
                .0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    (c != 0).then(|| c.checked_add(1)).flatten()
                })
                .map(|old| ConfigureStep::Count(old.saturating_add(1)))
                .map_err(|c| match c {
                    0 => ResultCode::CannotRegister,
                    _ => ResultCode::InvalidRequest,
                }),
            configure::DEREGISTER => {
                let old = self
                    .0
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
                    .unwrap_or(0);
                Ok(at_zero(old.saturating_sub(1)))
            }
            _ => Err(ResultCode::InvalidParameter),
        }
    }
}
