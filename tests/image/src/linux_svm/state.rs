//! Each vCPU's state (VMCB, engine, platform), in statics so that the CPU
//! that runs a vCPU and the vCPU that creates it (Linux's INIT/SIPI, served
//! on the sender's CPU) can both reach it.
//!
//! Ownership: a vCPU's engine and VMCB belong to whoever created it until
//! its state is [`STARTED`] (release), and from then on only to the one CPU
//! that runs it (acquire). `parts` is the single access point.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};

use altinj_kernel::VcpuEngine;

use super::host::{LinuxPlatform, MAX_VCPUS};
use crate::svm::vmcb::Vcpu;

/// No engine yet: the fabric slot is absent, IPIs to it are dropped.
pub const ABSENT: u8 = 0;
/// Engine created (INIT), VMCB not yet (waiting for STARTUP).
pub const CREATED: u8 = 1;
/// VMCB ready: its CPU runs it.
pub const STARTED: u8 = 2;

/// One vCPU.
pub struct VcpuCell {
    vcpu: UnsafeCell<Vcpu>,
    engine: UnsafeCell<Option<VcpuEngine>>,
    /// The engine's platform (atomics only: shared with the #HV path).
    pub platform: LinuxPlatform,
    /// [`ABSENT`], [`CREATED`] or [`STARTED`].
    pub state: AtomicU8,
}

// SAFETY: `vcpu` and `engine` are reached only through `parts`, whose
// contract (above) gives them one owner at a time, handed over with the
// release/acquire on `state`; the rest is atomics.
unsafe impl Sync for VcpuCell {}

impl VcpuCell {
    const fn new() -> Self {
        Self {
            vcpu: UnsafeCell::new(Vcpu::new()),
            engine: UnsafeCell::new(None),
            platform: LinuxPlatform::new(),
            state: AtomicU8::new(ABSENT),
        }
    }

    /// The vCPU's engine and VMCB.
    ///
    /// # Safety
    ///
    /// The caller owns the vCPU (module doc) and holds no other reference
    /// from an earlier call while it uses these.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn parts(&self) -> (&mut Option<VcpuEngine>, &mut Vcpu) {
        // SAFETY: exclusive by the caller's contract.
        unsafe { (&mut *self.engine.get(), &mut *self.vcpu.get()) }
    }

    /// Whether the vCPU runs (acquire: its state is visible).
    pub fn started(&self) -> bool {
        self.state.load(Ordering::Acquire) == STARTED
    }
}

/// Every vCPU of the run (one run per boot).
pub static CELLS: [VcpuCell; MAX_VCPUS] = [const { VcpuCell::new() }; MAX_VCPUS];
