//! EOI: retiring the in-service vector and the host's specific EOI of a
//! level vector it presented (GHCB 0x8000_001D, spec §4), exactly once.

use super::{Env, VcpuEngine, rare};
use crate::counters::bump;
use crate::platform::Platform;

impl VcpuEngine {
    /// Retires the highest in-service vector; a host level vector gets its
    /// specific EOI exactly once.
    pub(super) fn eoi<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        if let Some(info) = self.apic.eoi() {
            self.eoi_done(env, info);
        }
    }

    #[inline(never)]
    pub(super) fn eoi_done<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        info: altinj_apic::EoiInfo,
    ) {
        // With EOI-broadcast suppression (SVR bit 12) the guest EOIs the
        // (host's) IOAPIC itself, so the host must not get a second EOI
        // (Intel SDM vol. 3A §11.8.5).
        // Gated on the engine's own record, not the guest-visible TMR: an
        // edge request of the same vector clears TMR (Intel SDM vol. 3A
        // §11.8.4), yet the host line still waits for exactly one EOI.
        if self.host_level.complete(info.vector) && !self.apic.eoi_broadcast_suppressed() {
            self.host_eoi(env, info.vector);
        }
    }

    /// APIC_BASE EN = 0 cleared IRR, ISR and TMR (and the timer): every
    /// host level vector still outstanding gets its specific EOI now, since
    /// no guest EOI will ever retire it (Intel SDM vol. 3A §11.4.3).
    pub(super) fn apic_disabled<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        let outstanding = *self.host_level.set();
        self.host_level.clear();
        for vector in outstanding.iter() {
            self.host_eoi(env, vector);
        }
        self.rearm_timer(env);
    }

    pub(super) fn host_eoi<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, vector: u8) {
        match env.platform.specific_eoi(self.guest_vmpl, vector) {
            Ok(()) => bump(&mut self.counters.host_level_eois),
            Err(_) => {
                bump(&mut self.counters.platform_errors);
                if rare(self.counters.platform_errors) {
                    log::warn!("vCPU {}: specific EOI of {vector:#x} failed", self.index);
                }
            }
        }
    }
}
