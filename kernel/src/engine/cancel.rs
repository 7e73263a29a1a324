//! A run the SVSM decided not to make after `before_run` (for example
//! because the host set NoFurtherSignal or a VMPL0 event needs handling
//! first, or [`VcpuEngine::work_pending`] said something new arrived).
//!
//! `after_exit` must not stand in for it: the VMSA still holds the previous
//! exit's code and EXITINTINFO, which `after_exit` would report (and the run
//! loop would handle a guest request twice). `cancel_run` claims the VMSA
//! again (BUSY, spec §2) and takes back what `before_run` presented, so the
//! next `before_run` presents it again: nothing is lost and nothing is
//! delivered twice.

use altinj_vmsa::VmsaAccess;

use super::{Env, VcpuEngine};
use crate::platform::Platform;

impl VcpuEngine {
    /// Undoes a `before_run` whose Run VMPL did not happen (module doc).
    /// Harmless when nothing is in flight.
    pub fn cancel_run<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) {
        if let Some(slot) = self.slot(env) {
            slot.set_running(false);
        }
        vmsa.test_and_set_busy();
        if self.in_flight && self.registration.emulating() {
            self.resolve_exit(env, vmsa, None);
        }
        self.in_flight = false;
    }
}
