//! `altinj_kernel::Platform` over the GHCB (docs/integration.md, "Implementing
//! `Platform` with GHCB calls"). The GHCB itself is a stub: every call
//! succeeds; a real SVSM fills SW_EXITCODE/SW_EXITINFO1/2, issues VMGEXIT
//! and reads SW_EXITINFO1/2 back.

use core::sync::atomic::{AtomicU64, Ordering};

use altinj_kernel::platform::{DisableAiRequest, DoorbellRequest, GuestTimer, specific_eoi_info};
use altinj_kernel::{NoTimer, Platform, PlatformError};

/// GHCB NAE events (spec §4).
pub mod exit {
    /// #HV doorbell page.
    pub const HV_DOORBELL_PAGE: u64 = 0x8000_0014;
    /// #HV IPI.
    pub const HV_IPI: u64 = 0x8000_0015;
    /// Run VMPL.
    pub const RUN_VMPL: u64 = 0x8000_0018;
    /// Configure the notification vector.
    pub const NOTIFICATION_VECTOR: u64 = 0x8000_001B;
    /// Disable Alternate Injection.
    pub const DISABLE_AI: u64 = 0x8000_001C;
    /// Specific EOI.
    pub const SPECIFIC_EOI: u64 = 0x8000_001D;
}

/// This CPU's GHCB (stub).
#[derive(Debug, Default)]
pub struct Ghcb {
    /// The last SW_EXITCODE issued (what the stub records).
    last_exit: AtomicU64,
}

impl Ghcb {
    /// A GHCB with nothing issued yet.
    pub const fn new() -> Self {
        Self {
            last_exit: AtomicU64::new(0),
        }
    }

    /// One VMGEXIT: returns SW_EXITINFO2 on success, the host's
    /// SW_EXITINFO1/2 as a `PlatformError` on failure (GHCB spec 56421).
    pub fn vmgexit(&self, exit_code: u64, info1: u64, info2: u64) -> Result<u64, PlatformError> {
        self.last_exit.store(exit_code, Ordering::Relaxed);
        let _ = info1;
        // Stub host: SW_EXITINFO1 = 0 (success), SW_EXITINFO2 unchanged.
        let (sw_exit_info1, sw_exit_info2) = (0u64, info2);
        if sw_exit_info1 != 0 {
            return Err(PlatformError::ghcb(sw_exit_info1, sw_exit_info2));
        }
        Ok(sw_exit_info2)
    }

    /// Run VMPL (GHCB 0x8000_0018): the SVSM's own loop, not the engine's.
    pub fn run_vmpl(&self, vmpl: u8) -> Result<(), PlatformError> {
        self.vmgexit(exit::RUN_VMPL, u64::from(vmpl), 0).map(|_| ())
    }

    /// The host's NoFurtherSignal (stub: never).
    pub fn no_further_signal(&self) -> bool {
        false
    }
}

/// The engine's platform: this CPU's GHCB, no VMPL0 timer.
#[derive(Debug, Default)]
pub struct GhcbPlatform {
    /// This CPU's GHCB.
    pub ghcb: Ghcb,
}

impl Platform for GhcbPlatform {
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError> {
        self.ghcb.vmgexit(exit::HV_IPI, icr, 0).map(|_| ())
    }

    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError> {
        let info = specific_eoi_info(vmpl, vector);
        self.ghcb.vmgexit(exit::SPECIFIC_EOI, info, 0).map(|_| ())
    }

    fn disable_alternate_injection(&self, request: DisableAiRequest) -> Result<(), PlatformError> {
        let info = request.exit_info1();
        self.ghcb.vmgexit(exit::DISABLE_AI, info, 0).map(|_| ())
    }

    fn configure_notification_vector(&self, vector: u8) -> Result<(), PlatformError> {
        let info = u64::from(vector);
        self.ghcb
            .vmgexit(exit::NOTIFICATION_VECTOR, info, 0)
            .map(|_| ())
    }

    fn doorbell_page(&self, request: DoorbellRequest) -> Result<u64, PlatformError> {
        let (info1, info2) = request.exit_info();
        self.ghcb.vmgexit(exit::HV_DOORBELL_PAGE, info1, info2)
    }

    fn now(&self) -> u64 {
        // The TSC (Secure TSC where available); unused without a timer.
        0
    }

    fn has_timer(&self) -> bool {
        // No #HV timer: QUERY_FEATURES reports bit 0 clear and the guest
        // uses the host's timer.
        false
    }

    fn arm_timer(&self, _deadline: Option<u64>) -> Result<(), NoTimer> {
        Err(NoTimer)
    }

    fn hand_back_timer(&self, _vmpl: u8, _timer: &GuestTimer) -> Result<(), PlatformError> {
        // No timer was ever armed for the guest: nothing to pass on.
        Ok(())
    }
}
