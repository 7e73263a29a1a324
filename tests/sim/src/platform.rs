//! The engine's [`Platform`] in the simulator: every GHCB call becomes an
//! effect for the hypervisor model, applied by the world after the engine
//! call returns (the engine never waits for the hypervisor).

use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use altinj_kernel::platform::{
    DisableAiRequest, DoorbellRequest, NoTimer, Platform, PlatformError,
};

/// A GHCB call the engine made, for the hypervisor model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Effect {
    /// #HV IPI (GHCB 0x8000_0015) with this ICR, from vCPU `from`.
    Kick {
        /// The caller.
        from: usize,
        /// The x2APIC ICR.
        icr: u64,
    },
    /// Specific EOI (GHCB 0x8000_001D).
    SpecificEoi {
        /// The caller.
        from: usize,
        /// The VMPL named.
        vmpl: u8,
        /// The vector.
        vector: u8,
    },
    /// Disable alternate injection (GHCB 0x8000_001C).
    DisableAi {
        /// The caller.
        from: usize,
        /// The request.
        request: DisableAiRequest,
    },
}

/// The simulated platform shared by every vCPU's engine.
#[derive(Debug)]
pub struct SimPlatform {
    /// vCPU whose engine is being called.
    pub current: Cell<usize>,
    /// Simulated time.
    pub now: Cell<u64>,
    /// Timer deadline armed per vCPU.
    pub timers: Vec<Cell<Option<u64>>>,
    /// Effects not yet applied.
    pub effects: RefCell<Vec<Effect>>,
    /// Whether the #HV timer feature exists.
    pub has_timer: bool,
    /// Fail the next #HV IPI calls (hostile host), as a countdown.
    pub fail_hv_ipi: Cell<u32>,
    /// Fail the next disable-AI call (`handback-fail`, issue 9 path 5).
    pub fail_disable_ai: Cell<bool>,
    /// Disable-AI calls that failed.
    pub disable_ai_failures: Cell<u64>,
}

impl SimPlatform {
    /// A platform for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        Self {
            current: Cell::new(0),
            now: Cell::new(0),
            timers: (0..vcpus).map(|_| Cell::new(None)).collect(),
            effects: RefCell::new(Vec::with_capacity(256)),
            has_timer: true,
            fail_hv_ipi: Cell::new(0),
            fail_disable_ai: Cell::new(false),
            disable_ai_failures: Cell::new(0),
        }
    }

    fn push(&self, effect: Effect) {
        if let Ok(mut effects) = self.effects.try_borrow_mut() {
            effects.push(effect);
        }
    }
}

impl Platform for SimPlatform {
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError> {
        let fail = self.fail_hv_ipi.get();
        if fail != 0 {
            self.fail_hv_ipi.set(fail.saturating_sub(1));
            return Err(PlatformError::UNSPECIFIED);
        }
        self.push(Effect::Kick {
            from: self.current.get(),
            icr,
        });
        Ok(())
    }

    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError> {
        self.push(Effect::SpecificEoi {
            from: self.current.get(),
            vmpl,
            vector,
        });
        Ok(())
    }

    fn disable_alternate_injection(&self, request: DisableAiRequest) -> Result<(), PlatformError> {
        if self.fail_disable_ai.replace(false) {
            self.disable_ai_failures
                .set(self.disable_ai_failures.get().saturating_add(1));
            return Err(PlatformError::UNSPECIFIED);
        }
        self.push(Effect::DisableAi {
            from: self.current.get(),
            request,
        });
        Ok(())
    }

    fn configure_notification_vector(&self, _vector: u8) -> Result<(), PlatformError> {
        Ok(())
    }

    fn doorbell_page(&self, request: DoorbellRequest) -> Result<u64, PlatformError> {
        Ok(request.exit_info().1)
    }

    fn now(&self) -> u64 {
        self.now.get()
    }

    fn has_timer(&self) -> bool {
        self.has_timer
    }

    fn arm_timer(&self, deadline: Option<u64>) -> Result<(), NoTimer> {
        if !self.has_timer {
            return Err(NoTimer);
        }
        if let Some(slot) = self.timers.get(self.current.get()) {
            slot.set(deadline);
        }
        Ok(())
    }
}
