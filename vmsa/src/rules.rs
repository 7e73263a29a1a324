//! The entry/exit rules of spec §2 as functions over any [`VmsaAccess`].
//!
//! Order around one guest run (each step reads a field once per decision):
//! 1. VMPL0 edits the VMSA while BUSY is set: [`inject_interrupt`] when
//!    [`can_take_interrupt`], otherwise [`queue_v_irq`]; [`inject_nmi`].
//! 2. [`VmsaAccess::clear_busy`], then ask the hypervisor to run the VMPL.
//! 3. After the exit, [`after_exit`]: test-and-set BUSY, then
//!    [`take_undelivered`], then [`reinject_exit_int_info`] (this order
//!    matters: the check of undelivered events must not see the re-injected one).

use crate::event::{BP_VECTOR, NMI_VECTOR, OF_VECTOR};
use crate::{EventInj, EventType, ExitKind, RFLAGS_IF, VmsaAccess};

/// Lowest vector injected or re-injected as an external interrupt (type 0).
///
/// Vectors 0-15 are illegal for the local APIC (Intel SDM vol. 3A §11.5.2,
/// spec §6), so no APIC path can produce them; 16-31 are legal APIC vectors
/// (host-presented vector 31 is legal, spec §6), so they are kept.
pub const MIN_INTR_VECTOR: u8 = 16;

/// Why an injection was refused. Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InjectError {
    /// EVENTINJ already holds a valid event; it is never overwritten.
    EventPending,
    /// RFLAGS.IF is 0 or the guest is in an interrupt shadow.
    InterruptsBlocked,
    /// The vector is below [`MIN_INTR_VECTOR`].
    IllegalVector,
    /// V_IRQ already holds a queued vector; withdraw it first.
    IrqQueued,
}

/// What [`reinject_exit_int_info`] did with EXITINTINFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reinjection {
    /// EXITINTINFO.V was 0: nothing was being delivered; nothing changed.
    None,
    /// The event was copied into EVENTINJ and EXITINTINFO cleared.
    Reinjected {
        /// The event now in EVENTINJ.
        event: EventInj,
        /// A valid event EVENTINJ held before and that was overwritten: it was
        /// not delivered, so the caller must return its vector to IRR. Always
        /// `None` when [`take_undelivered`] ran first.
        displaced: Option<EventInj>,
    },
    /// A software interrupt or #BP/#OF: the guest re-executes the instruction
    /// (INTn, INT3, INTO), so it is not reinjected (\[impl\]); EXITINTINFO cleared.
    GuestReexecutes(EventInj),
    /// A malformed event that no legitimate delivery produces (see
    /// [`reinject_exit_int_info`]); not reinjected, EXITINTINFO cleared. The
    /// caller counts it.
    Rejected(EventInj),
}

/// What became of the events VMPL0 left in the VMSA for the last run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunOutcome {
    /// EVENTINJ was still valid after the run: this event was **not**
    /// delivered (its vector goes back to IRR and out of ISR). EVENTINJ has
    /// been cleared.
    pub undelivered_event: Option<EventInj>,
    /// What happened to the vector queued in V_IRQ.
    pub v_irq: VirqOutcome,
}

/// The fate of a vector queued with [`queue_v_irq`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VirqOutcome {
    /// Nothing was queued.
    Empty,
    /// Hardware cleared V_IRQ: the guest took this vector.
    Taken(u8),
    /// V_IRQ was still set: the vector was not delivered; V_IRQ was cleared.
    Undelivered(u8),
}

/// How [`inject_nmi`] placed the NMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NmiInjection {
    /// V_NMI was set (V_NMI_ENABLE is on; hardware honours V_NMI_MASK).
    VirtualNmi,
    /// EVENTINJ now holds an NMI (type 2).
    EventInj,
    /// An NMI was already pending (V_NMI or an NMI in EVENTINJ): the new one
    /// collapses into it (spec §6).
    Collapsed,
}

/// Everything [`after_exit`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitReport {
    /// BUSY was already set before the test-and-set.
    pub was_busy: bool,
    /// The classified exit code.
    pub exit: ExitKind,
    /// Undelivered EVENTINJ / V_IRQ state (see [`take_undelivered`]).
    pub run: RunOutcome,
    /// What happened to EXITINTINFO (see [`reinject_exit_int_info`]).
    pub reinjection: Reinjection,
}

/// The whole exit sequence of spec §2 in the required order: test-and-set
/// BUSY, [`take_undelivered`], [`reinject_exit_int_info`]. BUSY stays set.
pub fn after_exit<V: VmsaAccess + ?Sized>(vmsa: &mut V) -> ExitReport {
    let was_busy = vmsa.test_and_set_busy();
    let exit = vmsa.exit_code().kind();
    let run = take_undelivered(vmsa);
    let reinjection = reinject_exit_int_info(vmsa);
    ExitReport {
        was_busy,
        exit,
        run,
        reinjection,
    }
}

/// Copies a valid EXITINTINFO back into EVENTINJ so the interrupted delivery
/// completes (\[impl\], spec §2). Call with BUSY set.
///
/// - V = 0: [`Reinjection::None`].
/// - Software interrupt (type 4), #BP (3) or #OF (4):
///   [`Reinjection::GuestReexecutes`].
/// - Rejected ([`Reinjection::Rejected`]): a reserved type 1/5/6/7 (VMRUN
///   would fail, APM vol. 2 §15.20); reserved bits 30:12 set; an external
///   interrupt below [`MIN_INTR_VECTOR`] (a hostile value: it would run an
///   exception handler without its error code); an exception with vector 2 or
///   above 31 (APM §15.20: not an exception vector); EV set on a type other
///   than exception (only exceptions push an error code). The last two and
///   the reserved-bit rule are project choices.
/// - Otherwise (INTR ≥ 16, NMI, other exceptions with or without error code):
///   [`Reinjection::Reinjected`].
///
/// If EVENTINJ is already valid, EXITINTINFO wins: the exit happened while
/// that event was being delivered, which is the architectural state to
/// restore; the event that was in EVENTINJ is returned as `displaced`. The
/// public texts are silent on this case (project choice).
pub fn reinject_exit_int_info<V: VmsaAccess + ?Sized>(vmsa: &mut V) -> Reinjection {
    let info = vmsa.exit_int_info();
    if !info.valid() {
        return Reinjection::None;
    }
    vmsa.set_exit_int_info(EventInj::new());
    match classify(info) {
        Verdict::Reinject => {
            let old = vmsa.event_inj();
            vmsa.set_event_inj(info);
            Reinjection::Reinjected {
                event: info,
                displaced: old.valid().then_some(old),
            }
        }
        Verdict::GuestReexecutes => Reinjection::GuestReexecutes(info),
        Verdict::Reject => Reinjection::Rejected(info),
    }
}

enum Verdict {
    Reinject,
    GuestReexecutes,
    Reject,
}

fn classify(info: EventInj) -> Verdict {
    let vector = info.vector();
    let ty = info.event_type();
    if info.has_reserved_bits() || ty.is_reserved() {
        return Verdict::Reject;
    }
    if info.error_code_valid() && ty != EventType::Exception {
        return Verdict::Reject;
    }
    match ty {
        EventType::Intr if vector < MIN_INTR_VECTOR => Verdict::Reject,
        EventType::Exception if vector == NMI_VECTOR || vector > 31 => Verdict::Reject,
        EventType::Exception if vector == BP_VECTOR || vector == OF_VECTOR => {
            Verdict::GuestReexecutes
        }
        EventType::SoftwareInt => Verdict::GuestReexecutes,
        _ => Verdict::Reinject,
    }
}

/// Whether the guest can take an external interrupt through EVENTINJ now:
/// RFLAGS.IF = 1, INT_SHADOW = 0 and EVENTINJ not valid (spec §2). The PPR
/// check belongs to the APIC.
pub fn can_take_interrupt<V: VmsaAccess + ?Sized>(vmsa: &V) -> bool {
    vmsa.rflags() & RFLAGS_IF != 0 && !vmsa.vintr_ctrl().int_shadow() && !vmsa.event_inj().valid()
}

/// Injects `vector` now through EVENTINJ (type 0). Refuses, writing nothing,
/// when EVENTINJ is valid, when the guest cannot take an interrupt (event
/// injection ignores RFLAGS.IF, so the check must be made here) or when the
/// vector is below [`MIN_INTR_VECTOR`]. Call with BUSY set.
pub fn inject_interrupt<V: VmsaAccess + ?Sized>(
    vmsa: &mut V,
    vector: u8,
) -> Result<(), InjectError> {
    if vector < MIN_INTR_VECTOR {
        return Err(InjectError::IllegalVector);
    }
    if vmsa.event_inj().valid() {
        return Err(InjectError::EventPending);
    }
    if vmsa.rflags() & RFLAGS_IF == 0 || vmsa.vintr_ctrl().int_shadow() {
        return Err(InjectError::InterruptsBlocked);
    }
    vmsa.set_event_inj(EventInj::external_interrupt(vector));
    Ok(())
}

/// Queues `vector` through V_IRQ for hardware to deliver when the guest opens
/// its window: V_IRQ = 1, V_INTR_VECTOR = vector, V_INTR_PRIO = vector >> 4,
/// V_IGN_TPR = 0 (spec §2), and VGIF = 1, without which hardware never takes it
/// (\[impl\]). Refuses when a vector is already queued or the vector is below
/// [`MIN_INTR_VECTOR`]. Call with BUSY set.
pub fn queue_v_irq<V: VmsaAccess + ?Sized>(vmsa: &mut V, vector: u8) -> Result<(), InjectError> {
    if vector < MIN_INTR_VECTOR {
        return Err(InjectError::IllegalVector);
    }
    let ctrl = vmsa.vintr_ctrl();
    if ctrl.v_irq() {
        return Err(InjectError::IrqQueued);
    }
    vmsa.set_vintr_ctrl(
        ctrl.with_v_irq(true)
            .with_v_intr_vector(vector)
            .with_v_intr_prio(vector >> 4)
            .with_v_ign_tpr(false)
            .with_vgif(true),
    );
    Ok(())
}

/// Withdraws a vector queued in V_IRQ (e.g. to queue a higher one) and
/// returns it, or `None` if nothing was queued. V_INTR_VECTOR and V_INTR_PRIO
/// are cleared too, so [`take_undelivered`] reports nothing afterwards.
/// Call with BUSY set.
pub fn withdraw_v_irq<V: VmsaAccess + ?Sized>(vmsa: &mut V) -> Option<u8> {
    let ctrl = vmsa.vintr_ctrl();
    if !ctrl.v_irq() {
        return None;
    }
    vmsa.set_vintr_ctrl(clear_queued(ctrl));
    Some(ctrl.v_intr_vector())
}

fn clear_queued(ctrl: crate::VIntrCtrl) -> crate::VIntrCtrl {
    ctrl.with_v_irq(false)
        .with_v_intr_vector(0)
        .with_v_intr_prio(0)
}

/// Injects an NMI: through V_NMI when V_NMI_ENABLE is set (hardware then
/// honours the guest's NMI masking), otherwise through EVENTINJ type 2, never
/// overwriting a valid EVENTINJ. A second NMI while one is pending collapses
/// into it (spec §6). Call with BUSY set.
///
/// Without V_NMI_ENABLE the VMSA does not track NMI blocking (V_NMI_MASK is a
/// vNMI field, APM vol. 2 §15.21.10), so the EVENTINJ path cannot refuse an NMI
/// while the guest is still in its NMI handler.
pub fn inject_nmi<V: VmsaAccess + ?Sized>(vmsa: &mut V) -> Result<NmiInjection, InjectError> {
    let ctrl = vmsa.vintr_ctrl();
    if ctrl.v_nmi_enable() {
        if ctrl.v_nmi() {
            return Ok(NmiInjection::Collapsed);
        }
        vmsa.set_vintr_ctrl(ctrl.with_v_nmi(true));
        return Ok(NmiInjection::VirtualNmi);
    }
    let ev = vmsa.event_inj();
    if ev.valid() {
        if ev.event_type() == EventType::Nmi {
            return Ok(NmiInjection::Collapsed);
        }
        return Err(InjectError::EventPending);
    }
    vmsa.set_event_inj(EventInj::nmi());
    Ok(NmiInjection::EventInj)
}

/// After a run: reports and clears what was not delivered (spec §2).
///
/// EVENTINJ still valid → that event was not delivered; it is returned and
/// EVENTINJ cleared. V_IRQ still set → the queued vector was not delivered;
/// it is returned and the queue cleared. V_IRQ cleared by hardware while
/// V_INTR_VECTOR still holds the vector (hardware does not write
/// V_INTR_VECTOR back on exit) → the guest took it; V_INTR_VECTOR is then
/// cleared so it is reported once. Vector 0 in V_INTR_VECTOR means nothing
/// queued (never queued: below [`MIN_INTR_VECTOR`]). V_NMI is left alone: a
/// pending virtual NMI stays pending. Call with BUSY set, before
/// [`reinject_exit_int_info`].
pub fn take_undelivered<V: VmsaAccess + ?Sized>(vmsa: &mut V) -> RunOutcome {
    let ev = vmsa.event_inj();
    let undelivered_event = if ev.valid() {
        vmsa.set_event_inj(EventInj::new());
        Some(ev)
    } else {
        None
    };
    let ctrl = vmsa.vintr_ctrl();
    let vector = ctrl.v_intr_vector();
    let v_irq = if ctrl.v_irq() {
        VirqOutcome::Undelivered(vector)
    } else if vector != 0 {
        VirqOutcome::Taken(vector)
    } else {
        VirqOutcome::Empty
    };
    if v_irq != VirqOutcome::Empty {
        vmsa.set_vintr_ctrl(clear_queued(ctrl));
    }
    RunOutcome {
        undelivered_event,
        v_irq,
    }
}

/// V_TPR, where the guest's CR8 writes land; bits 3:0 hold the priority
/// class (APIC TPR\[7:4\]). Used to sync the emulated APIC's TPR.
pub fn v_tpr<V: VmsaAccess + ?Sized>(vmsa: &V) -> u8 {
    vmsa.vintr_ctrl().v_tpr()
}

/// Writes V_TPR (e.g. the class of the emulated APIC's TPR, `tpr >> 4`), so
/// hardware compares queued V_IRQ priorities against it. Call with BUSY set.
pub fn set_v_tpr<V: VmsaAccess + ?Sized>(vmsa: &mut V, value: u8) {
    let ctrl = vmsa.vintr_ctrl();
    vmsa.set_vintr_ctrl(ctrl.with_v_tpr(value));
}
