//! NMI bookkeeping of one vCPU (spec §6: one NMI pending, one in service,
//! further ones collapse, as in TDX's PEND_NMI; spec §2 for the VMSA paths).
//!
//! An NMI reaches the guest through V_NMI when the guest VMSA has
//! V_NMI_ENABLE (hardware then holds it until the NMI window opens and masks
//! NMIs until IRET through V_NMI_MASK), otherwise through EVENTINJ type 2.
//!
//! \[choice\] NMI completion: with V_NMI the hardware's V_NMI_MASK is the
//! truth. With EVENTINJ there is no architectural signal to VMPL0 when the
//! guest's handler IRETs, so an NMI delivered through EVENTINJ counts as in
//! service until the first exit *after* the exit that confirmed its delivery
//! at which V_NMI_MASK is clear. While in service a second NMI waits
//! (pending); a third collapses. EVENTINJ NMIs also wait for INT_SHADOW and
//! V_NMI_MASK to be clear (an NMI is blocked in an interrupt shadow on SVM,
//! as KVM's `svm_nmi_blocked` treats it) and never replace a re-injected
//! event in EVENTINJ.

/// How an NMI was presented to the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NmiVia {
    /// EVENTINJ type 2.
    EventInj,
    /// V_NMI in VIntrCtrl.
    VNmi,
}

/// What the VMSA said about a presented NMI after the exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NmiExit {
    /// The guest took it.
    Taken,
    /// Still queued in V_NMI: leave it there.
    StillQueued,
    /// Not delivered (EVENTINJ still valid, or the run failed): pending again.
    NotDelivered,
    /// Its delivery was interrupted and it is being re-injected from
    /// EXITINTINFO through EVENTINJ.
    Reinjected,
}

/// NMI state of one vCPU.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct NmiState {
    pending: bool,
    presented: Option<NmiVia>,
    in_service: bool,
}

impl NmiState {
    /// A new NMI: returns false when it collapsed into one already pending.
    pub fn request(&mut self) -> bool {
        if self.pending || self.presented.is_some() {
            return false;
        }
        self.pending = true;
        true
    }

    /// An NMI waits to be presented.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// The NMI presented in the VMSA, if any.
    pub fn presented(&self) -> Option<NmiVia> {
        self.presented
    }

    /// An NMI is being handled by the guest.
    pub fn in_service(&self) -> bool {
        self.in_service
    }

    /// Which path a pending NMI takes this run, if any.
    /// `v_nmi_enable`, `v_nmi_set`, `v_nmi_mask`, `int_shadow` come from the
    /// guest's VIntrCtrl; `eventinj_free` is false when EVENTINJ already
    /// holds an event (e.g. one re-injected from EXITINTINFO).
    pub fn choose(
        &self,
        v_nmi_enable: bool,
        v_nmi_set: bool,
        v_nmi_mask: bool,
        int_shadow: bool,
        eventinj_free: bool,
    ) -> Option<NmiVia> {
        if !self.pending || self.presented.is_some() {
            return None;
        }
        if v_nmi_enable {
            // Hardware holds a queued V_NMI until the NMI window opens.
            return (!v_nmi_set).then_some(NmiVia::VNmi);
        }
        let blocked = self.in_service || v_nmi_mask || int_shadow;
        (eventinj_free && !blocked).then_some(NmiVia::EventInj)
    }

    /// The engine wrote the pending NMI into the VMSA through `via`.
    pub fn mark_presented(&mut self, via: NmiVia) {
        self.pending = false;
        self.presented = Some(via);
    }

    /// Start of exit processing: ends the in-service period when the
    /// hardware's NMI mask is clear (see the module doc).
    pub fn exit_begin(&mut self, v_nmi_mask: bool) {
        if self.in_service && !v_nmi_mask {
            self.in_service = false;
        }
    }

    /// Records what happened to the presented NMI; returns true when it was
    /// delivered by this run.
    pub fn exit_outcome(&mut self, outcome: NmiExit) -> bool {
        match outcome {
            NmiExit::Taken => {
                self.presented = None;
                self.in_service = true;
                true
            }
            NmiExit::StillQueued => false,
            NmiExit::NotDelivered => {
                self.presented = None;
                self.pending = true;
                false
            }
            NmiExit::Reinjected => {
                self.presented = Some(NmiVia::EventInj);
                false
            }
        }
    }

    /// The pending NMI as it is handed to the host (and cleared).
    pub fn take_for_hand_back(&mut self) -> bool {
        let pending = self.pending || self.presented == Some(NmiVia::VNmi);
        self.pending = false;
        if self.presented == Some(NmiVia::VNmi) {
            self.presented = None;
        }
        pending
    }
}
