//! The #HV handler (vector 28) logic, docs/integration.md "The #HV handler":
//! atomics only, no GHCB call, safe with interrupts disabled and when the
//! host signals spuriously or twice.

use altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR;
use altinj_kernel::{HvEvents, Vmpl0Tpr, handle_hv};

use crate::percpu::PerCpu;

/// What the SVSM's own code does with an #HV entry.
pub trait Vmpl0 {
    /// VMPL0's own interrupt (a device of the SVSM).
    fn dispatch_vmpl0_irq(&self, vector: u8);
    /// An NMI or #MC for VMPL0.
    fn handle_vmpl0_nmi_mc(&self, events: &HvEvents);
    /// Leaves an idle wait so that the run loop comes round.
    fn wake_run_loop(&self);
}

/// Body of the #HV handler on `cpu`, with VMPL0's CR8.
pub fn hv_handler(cpu: &PerCpu, cr8: u64, svsm: &impl Vmpl0) {
    // VMPL0's priority as a `Vmpl0Tpr`: from CR8 (which holds the class
    // alone) with `from_cr8`, from an 8-bit TPR with `from_tpr`.
    let tpr = Vmpl0Tpr::from_cr8(cr8);
    let ev = handle_hv(cpu.doorbell, cpu.shared, tpr);
    if let Some(v) = ev.vmpl0_vector {
        // A kick (the notification vector) needs no work here: the run
        // loop's next before_run drains the mailbox.
        if v != DEFAULT_NOTIFICATION_VECTOR {
            svsm.dispatch_vmpl0_irq(v);
        }
    }
    if ev.vmpl0_nmi || ev.vmpl0_mc {
        svsm.handle_vmpl0_nmi_mc(&ev);
    }
    // The host posted for a guest VMPL, or a kick: leave an idle wait.
    if ev.vmpl_events != 0 || ev.vmpl0_vector == Some(DEFAULT_NOTIFICATION_VECTOR) {
        svsm.wake_run_loop();
    }
}
