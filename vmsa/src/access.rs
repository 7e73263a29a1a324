//! Field access to a VMSA, so that the rules work on any VMSA type.

use crate::{EventInj, ExitCode, SevFeatures, VIntrCtrl};

/// RFLAGS.IF (bit 9): maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;
/// EFER.SVME (bit 12); VMRUN fails with VMEXIT_INVALID if it is clear.
pub const EFER_SVME: u64 = 1 << 12;

/// Getters and setters of the VMSA fields used by interrupt injection (spec §2).
///
/// [`VmsaPage`](crate::VmsaPage) implements it; another VMSA type (such as
/// COCONUT-SVSM's) can implement it with plain field access. Each getter reads
/// its field once, so a rule reads every field once per decision.
pub trait VmsaAccess {
    /// EFER (0xD0).
    fn efer(&self) -> u64;
    /// Writes EFER.
    fn set_efer(&mut self, value: u64);
    /// RFLAGS (0x170).
    fn rflags(&self) -> u64;
    /// Writes RFLAGS.
    fn set_rflags(&mut self, value: u64);
    /// RIP (0x178).
    fn rip(&self) -> u64;
    /// Writes RIP.
    fn set_rip(&mut self, value: u64);
    /// RAX (0x1F8), SVSM call: protocol and call in, result out.
    fn rax(&self) -> u64;
    /// Writes RAX.
    fn set_rax(&mut self, value: u64);
    /// RCX (0x308), SVSM call parameter.
    fn rcx(&self) -> u64;
    /// Writes RCX.
    fn set_rcx(&mut self, value: u64);
    /// RDX (0x310), SVSM call parameter.
    fn rdx(&self) -> u64;
    /// Writes RDX.
    fn set_rdx(&mut self, value: u64);
    /// R8 (0x340), SVSM call parameter.
    fn r8(&self) -> u64;
    /// Writes R8.
    fn set_r8(&mut self, value: u64);
    /// R9 (0x348).
    fn r9(&self) -> u64;
    /// Writes R9.
    fn set_r9(&mut self, value: u64);
    /// guest_exit_info_1 (0x390).
    fn exit_info_1(&self) -> u64;
    /// Writes guest_exit_info_1.
    fn set_exit_info_1(&mut self, value: u64);
    /// guest_exit_info_2 (0x398).
    fn exit_info_2(&self) -> u64;
    /// Writes guest_exit_info_2.
    fn set_exit_info_2(&mut self, value: u64);
    /// guest_exit_int_info, EXITINTINFO (0x3A0): the event being delivered
    /// when the exit happened.
    fn exit_int_info(&self) -> EventInj;
    /// Writes EXITINTINFO.
    fn set_exit_int_info(&mut self, value: EventInj);
    /// guest_nrip (0x3A8): the next RIP after an intercepted instruction.
    fn nrip(&self) -> u64;
    /// Writes guest_nrip.
    fn set_nrip(&mut self, value: u64);
    /// sev_features (0x3B0), unknown bits retained.
    fn sev_features(&self) -> SevFeatures;
    /// Writes sev_features.
    fn set_sev_features(&mut self, value: SevFeatures);
    /// vintr_ctrl (0x3B8).
    fn vintr_ctrl(&self) -> VIntrCtrl;
    /// Writes vintr_ctrl (the whole word, BUSY included).
    fn set_vintr_ctrl(&mut self, value: VIntrCtrl);
    /// guest_exit_code (0x3C0).
    fn exit_code(&self) -> ExitCode;
    /// Writes guest_exit_code.
    fn set_exit_code(&mut self, value: ExitCode);
    /// event_inj, EVENTINJ (0x3E0).
    fn event_inj(&self) -> EventInj;
    /// Writes EVENTINJ.
    fn set_event_inj(&mut self, value: EventInj);

    /// Sets VIntrCtrl.BUSY and returns its previous value.
    ///
    /// Done right after an exit so that an untrusted hypervisor cannot VMRUN
    /// the VMSA on another CPU while VMPL0 edits it (\[impl\], as OpenHCL does).
    /// The default is a plain read-modify-write; a type over the real page
    /// must override it with one atomic `fetch_or` of
    /// [`VIntrCtrl::BUSY_MASK`], as [`VmsaPage`](crate::VmsaPage) does.
    fn test_and_set_busy(&mut self) -> bool {
        let ctrl = self.vintr_ctrl();
        self.set_vintr_ctrl(ctrl.with_busy(true));
        ctrl.busy()
    }

    /// Clears VIntrCtrl.BUSY: the VMSA may run again. Call it last, after
    /// every other edit (a real page uses one atomic `fetch_and` with release
    /// ordering, see [`VmsaAccess::test_and_set_busy`]).
    fn clear_busy(&mut self) {
        let ctrl = self.vintr_ctrl();
        self.set_vintr_ctrl(ctrl.with_busy(false));
    }
}
