//! The entry/exit rules of spec §2 ([`crate::rules`]).

use super::PlainVmsa;
use crate::rules::{
    InjectError, MIN_INTR_VECTOR, NmiInjection, Reinjection, RunOutcome, VirqOutcome, after_exit,
    can_take_interrupt, inject_interrupt, inject_nmi, queue_v_irq, reinject_exit_int_info,
    set_v_tpr, take_undelivered, v_tpr, withdraw_v_irq,
};
use crate::{EventInj, EventType, ExitCode, ExitKind, RFLAGS_IF, VIntrCtrl, VmsaAccess, VmsaPage};

/// A guest that can take an interrupt: IF = 1, no shadow, no event.
fn open_page() -> VmsaPage {
    let mut p = VmsaPage::new();
    p.set_rflags(RFLAGS_IF | 0x2);
    p
}

/// Runs the re-injection rule on a page whose EXITINTINFO is `info`.
fn reinject(info: EventInj) -> (Reinjection, VmsaPage) {
    let mut p = VmsaPage::new();
    p.set_exit_int_info(info);
    let r = reinject_exit_int_info(&mut p);
    (r, p)
}

/// Asserts `info` is re-injected into an empty EVENTINJ, EXITINTINFO cleared.
fn assert_reinjected(info: EventInj) {
    let (r, p) = reinject(info);
    assert_eq!(
        r,
        Reinjection::Reinjected {
            event: info,
            displaced: None
        }
    );
    assert_eq!(p.event_inj(), info);
    assert_eq!(p.exit_int_info(), EventInj::new());
}

/// Asserts `info` is left to the guest: EVENTINJ empty, EXITINTINFO cleared.
fn assert_reexecuted(info: EventInj) {
    let (r, p) = reinject(info);
    assert_eq!(r, Reinjection::GuestReexecutes(info));
    assert_eq!(p.event_inj(), EventInj::new());
    assert_eq!(p.exit_int_info(), EventInj::new());
}

/// Asserts `info` is rejected: EVENTINJ untouched, EXITINTINFO cleared.
fn assert_rejected(info: EventInj) {
    let (r, p) = reinject(info);
    assert_eq!(r, Reinjection::Rejected(info));
    assert_eq!(p.event_inj(), EventInj::new());
    assert_eq!(p.exit_int_info(), EventInj::new());
}

altinj_ktest::suite! {
    fn exit_int_info_not_valid_changes_nothing() {
        let mut p = VmsaPage::new();
        // V = 0 with other bits set: nothing was being delivered.
        let stale = EventInj::external_interrupt(0x40).with_valid(false);
        p.set_exit_int_info(stale);
        p.set_event_inj(EventInj::external_interrupt(0x50));
        assert_eq!(reinject_exit_int_info(&mut p), Reinjection::None);
        assert_eq!(p.exit_int_info(), stale);
        assert_eq!(p.event_inj(), EventInj::external_interrupt(0x50));
    }

    fn intr_with_legal_vector_is_reinjected() {
        assert_reinjected(EventInj::external_interrupt(0x30));
        assert_reinjected(EventInj::external_interrupt(0xFF));
    }

    fn intr_with_vector_16_to_31_is_reinjected() {
        // Legal APIC vectors (spec §6: host vector 31 is legal); see MIN_INTR_VECTOR.
        assert_eq!(MIN_INTR_VECTOR, 16);
        for v in 16..32 {
            assert_reinjected(EventInj::external_interrupt(v));
        }
    }

    fn intr_with_vector_below_16_is_rejected() {
        for v in 0..MIN_INTR_VECTOR {
            assert_rejected(EventInj::external_interrupt(v));
        }
    }

    fn nmi_is_reinjected() {
        assert_reinjected(EventInj::nmi());
    }

    fn exception_with_error_code_is_reinjected() {
        assert_reinjected(EventInj::exception(14, Some(0x0000_0007))); // #PF
        assert_reinjected(EventInj::exception(13, Some(0))); // #GP
        assert_reinjected(EventInj::exception(8, Some(0))); // #DF
    }

    fn exception_without_error_code_is_reinjected() {
        assert_reinjected(EventInj::exception(0, None)); // #DE
        assert_reinjected(EventInj::exception(6, None)); // #UD
        assert_reinjected(EventInj::exception(1, None)); // #DB
        assert_reinjected(EventInj::exception(31, None));
    }

    fn breakpoint_exception_is_reexecuted_by_guest() {
        assert_reexecuted(EventInj::exception(3, None));
    }

    fn overflow_exception_is_reexecuted_by_guest() {
        assert_reexecuted(EventInj::exception(4, None));
    }

    fn software_interrupt_is_reexecuted_by_guest() {
        assert_reexecuted(EventInj::software_interrupt(0x80));
        assert_reexecuted(EventInj::software_interrupt(3));
    }

    fn reserved_types_are_rejected() {
        for ty in [EventType::Reserved1, EventType::Reserved5, EventType::Reserved6, EventType::Reserved7] {
            assert_rejected(EventInj::external_interrupt(0x40).with_event_type(ty));
        }
    }

    fn exception_with_non_exception_vector_is_rejected() {
        assert_rejected(EventInj::exception(2, None));
        assert_rejected(EventInj::exception(32, None));
        assert_rejected(EventInj::exception(0xFF, Some(1)));
    }

    fn reserved_bits_are_rejected() {
        assert_rejected(EventInj::from_bits(EventInj::external_interrupt(0x40).into_bits() | (1 << 12)));
        assert_rejected(EventInj::from_bits(EventInj::nmi().into_bits() | (1 << 30)));
    }

    fn error_code_on_non_exception_is_rejected() {
        assert_rejected(EventInj::external_interrupt(0x40).with_error_code_valid(true));
        assert_rejected(EventInj::nmi().with_error_code_valid(true));
        assert_rejected(EventInj::software_interrupt(0x80).with_error_code_valid(true));
    }

    fn exit_int_info_displaces_a_valid_event_inj() {
        let mut p = VmsaPage::new();
        let old = EventInj::external_interrupt(0x60);
        let info = EventInj::exception(14, Some(2));
        p.set_event_inj(old);
        p.set_exit_int_info(info);
        assert_eq!(
            reinject_exit_int_info(&mut p),
            Reinjection::Reinjected { event: info, displaced: Some(old) }
        );
        assert_eq!(p.event_inj(), info);
    }

    fn rejected_exit_int_info_keeps_a_valid_event_inj() {
        let mut p = VmsaPage::new();
        let old = EventInj::external_interrupt(0x60);
        p.set_event_inj(old);
        p.set_exit_int_info(EventInj::external_interrupt(5));
        assert_eq!(reinject_exit_int_info(&mut p), Reinjection::Rejected(EventInj::external_interrupt(5)));
        assert_eq!(p.event_inj(), old);
    }

    fn can_take_interrupt_when_if_set_no_shadow_no_event() {
        assert!(can_take_interrupt(&open_page()));
    }

    fn cannot_take_interrupt_with_if_clear() {
        let mut p = open_page();
        p.set_rflags(0x2);
        assert!(!can_take_interrupt(&p));
    }

    fn cannot_take_interrupt_in_interrupt_shadow() {
        let mut p = open_page();
        p.set_vintr_ctrl(VIntrCtrl::new().with_int_shadow(true));
        assert!(!can_take_interrupt(&p));
    }

    fn cannot_take_interrupt_with_event_inj_valid() {
        let mut p = open_page();
        p.set_event_inj(EventInj::nmi());
        assert!(!can_take_interrupt(&p));
    }

    fn inject_interrupt_writes_external_interrupt_event() {
        let mut p = open_page();
        assert_eq!(inject_interrupt(&mut p, 0x41), Ok(()));
        assert_eq!(p.event_inj(), EventInj::external_interrupt(0x41));
        assert_eq!(p.event_inj().event_type(), EventType::Intr);
    }

    fn inject_interrupt_refuses_when_event_inj_valid() {
        let mut p = open_page();
        let pending = EventInj::exception(13, Some(0));
        p.set_event_inj(pending);
        assert_eq!(inject_interrupt(&mut p, 0x41), Err(InjectError::EventPending));
        assert_eq!(p.event_inj(), pending);
    }

    fn inject_interrupt_refuses_when_interrupts_blocked() {
        let mut p = open_page();
        p.set_rflags(0);
        assert_eq!(inject_interrupt(&mut p, 0x41), Err(InjectError::InterruptsBlocked));
        let mut p = open_page();
        p.set_vintr_ctrl(VIntrCtrl::new().with_int_shadow(true));
        assert_eq!(inject_interrupt(&mut p, 0x41), Err(InjectError::InterruptsBlocked));
        assert!(!p.event_inj().valid());
    }

    fn inject_interrupt_refuses_illegal_vector() {
        let mut p = open_page();
        assert_eq!(inject_interrupt(&mut p, 15), Err(InjectError::IllegalVector));
        assert!(!p.event_inj().valid());
        assert_eq!(inject_interrupt(&mut p, 16), Ok(()));
    }

    fn queue_v_irq_sets_vector_priority_and_vgif() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_v_ign_tpr(true).with_v_tpr(0x3).with_busy(true));
        assert_eq!(queue_v_irq(&mut p, 0x5B), Ok(()));
        let c = p.vintr_ctrl();
        assert!(c.v_irq());
        assert_eq!(c.v_intr_vector(), 0x5B);
        assert_eq!(c.v_intr_prio(), 0x5);
        assert!(!c.v_ign_tpr());
        assert!(c.vgif());
        // Other fields untouched.
        assert_eq!(c.v_tpr(), 0x3);
        assert!(c.busy());
        assert!(!p.event_inj().valid());
    }

    fn queue_v_irq_refuses_when_already_queued() {
        let mut p = VmsaPage::new();
        assert_eq!(queue_v_irq(&mut p, 0x40), Ok(()));
        assert_eq!(queue_v_irq(&mut p, 0x80), Err(InjectError::IrqQueued));
        assert_eq!(p.vintr_ctrl().v_intr_vector(), 0x40);
    }

    fn queue_v_irq_refuses_illegal_vector() {
        let mut p = VmsaPage::new();
        assert_eq!(queue_v_irq(&mut p, 0), Err(InjectError::IllegalVector));
        assert_eq!(p.vintr_ctrl(), VIntrCtrl::new());
    }

    fn withdraw_v_irq_returns_and_clears_queued_vector() {
        let mut p = VmsaPage::new();
        queue_v_irq(&mut p, 0xE1).unwrap();
        assert_eq!(withdraw_v_irq(&mut p), Some(0xE1));
        let c = p.vintr_ctrl();
        assert!(!c.v_irq());
        assert_eq!(c.v_intr_vector(), 0);
        assert_eq!(c.v_intr_prio(), 0);
        assert_eq!(take_undelivered(&mut p).v_irq, VirqOutcome::Empty);
    }

    fn withdraw_v_irq_with_nothing_queued_returns_none() {
        let mut p = VmsaPage::new();
        assert_eq!(withdraw_v_irq(&mut p), None);
        assert_eq!(p.vintr_ctrl(), VIntrCtrl::new());
    }

    fn nmi_goes_through_event_inj_without_vnmi() {
        let mut p = VmsaPage::new();
        assert_eq!(inject_nmi(&mut p), Ok(NmiInjection::EventInj));
        assert_eq!(p.event_inj(), EventInj::nmi());
        assert!(!p.vintr_ctrl().v_nmi());
    }

    fn nmi_never_overwrites_a_valid_event_inj() {
        let mut p = VmsaPage::new();
        let pending = EventInj::external_interrupt(0x40);
        p.set_event_inj(pending);
        assert_eq!(inject_nmi(&mut p), Err(InjectError::EventPending));
        assert_eq!(p.event_inj(), pending);
    }

    fn nmi_collapses_into_pending_event_inj_nmi() {
        let mut p = VmsaPage::new();
        p.set_event_inj(EventInj::nmi());
        assert_eq!(inject_nmi(&mut p), Ok(NmiInjection::Collapsed));
        assert_eq!(p.event_inj(), EventInj::nmi());
    }

    fn nmi_goes_through_v_nmi_when_enabled() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_v_nmi_enable(true));
        let pending = EventInj::external_interrupt(0x40);
        p.set_event_inj(pending);
        assert_eq!(inject_nmi(&mut p), Ok(NmiInjection::VirtualNmi));
        assert!(p.vintr_ctrl().v_nmi());
        assert_eq!(p.event_inj(), pending);
        assert_eq!(inject_nmi(&mut p), Ok(NmiInjection::Collapsed));
        assert!(p.vintr_ctrl().v_nmi());
    }

    fn still_valid_event_inj_is_undelivered_and_cleared() {
        let mut p = VmsaPage::new();
        p.set_event_inj(EventInj::external_interrupt(0x44));
        assert_eq!(
            take_undelivered(&mut p),
            RunOutcome { undelivered_event: Some(EventInj::external_interrupt(0x44)), v_irq: VirqOutcome::Empty }
        );
        assert_eq!(p.event_inj(), EventInj::new());
    }

    fn still_set_v_irq_is_undelivered_and_cleared() {
        let mut p = VmsaPage::new();
        queue_v_irq(&mut p, 0x71).unwrap();
        assert_eq!(
            take_undelivered(&mut p),
            RunOutcome { undelivered_event: None, v_irq: VirqOutcome::Undelivered(0x71) }
        );
        assert!(!p.vintr_ctrl().v_irq());
        assert_eq!(queue_v_irq(&mut p, 0x72), Ok(()));
    }

    fn v_irq_cleared_by_hardware_was_taken_once() {
        let mut p = VmsaPage::new();
        queue_v_irq(&mut p, 0x71).unwrap();
        // Hardware takes it: clears V_IRQ, leaves V_INTR_VECTOR (not written back).
        let c = p.vintr_ctrl();
        p.set_vintr_ctrl(c.with_v_irq(false));
        assert_eq!(take_undelivered(&mut p).v_irq, VirqOutcome::Taken(0x71));
        assert_eq!(take_undelivered(&mut p).v_irq, VirqOutcome::Empty);
        assert!(p.vintr_ctrl().vgif());
    }

    fn nothing_queued_reports_nothing() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_v_tpr(4).with_vgif(true));
        assert_eq!(
            take_undelivered(&mut p),
            RunOutcome { undelivered_event: None, v_irq: VirqOutcome::Empty }
        );
        assert_eq!(p.vintr_ctrl(), VIntrCtrl::new().with_v_tpr(4).with_vgif(true));
    }

    fn take_undelivered_leaves_pending_v_nmi() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_v_nmi_enable(true).with_v_nmi(true));
        take_undelivered(&mut p);
        assert!(p.vintr_ctrl().v_nmi());
    }

    fn after_exit_sets_busy_then_takes_undelivered_then_reinjects() {
        let mut p = open_page();
        let undelivered = EventInj::external_interrupt(0x90);
        let interrupted = EventInj::external_interrupt(0x50);
        p.set_event_inj(undelivered);
        p.set_exit_int_info(interrupted);
        p.set_exit_code(ExitCode::NPF);
        let report = after_exit(&mut p);
        assert!(!report.was_busy);
        assert!(p.vintr_ctrl().busy());
        assert_eq!(report.exit, ExitKind::Npf);
        assert_eq!(report.run.undelivered_event, Some(undelivered));
        assert_eq!(report.reinjection, Reinjection::Reinjected { event: interrupted, displaced: None });
        assert_eq!(p.event_inj(), interrupted);
    }

    fn after_exit_reports_busy_already_set() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_busy(true));
        p.set_exit_code(ExitCode::BUSY);
        let report = after_exit(&mut p);
        assert!(report.was_busy);
        assert!(report.exit.is_vmrun_failure());
        assert_eq!(report.reinjection, Reinjection::None);
    }

    fn v_tpr_reads_and_writes_only_v_tpr() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_v_tpr(0x7).with_v_irq(true).with_busy(true));
        assert_eq!(v_tpr(&p), 0x7);
        set_v_tpr(&mut p, 0xC);
        assert_eq!(v_tpr(&p), 0xC);
        assert!(p.vintr_ctrl().v_irq() && p.vintr_ctrl().busy());
    }

    fn rules_work_on_a_foreign_vmsa_type() {
        let mut v = PlainVmsa { rflags: RFLAGS_IF, ..PlainVmsa::default() };
        assert!(can_take_interrupt(&v));
        assert_eq!(inject_interrupt(&mut v, 0x33), Ok(()));
        v.exit_int_info = EventInj::software_interrupt(0x21).into_bits();
        let report = after_exit(&mut v);
        assert!(!report.was_busy);
        assert!(VIntrCtrl::from_bits(v.vintr_ctrl).busy());
        assert_eq!(report.run.undelivered_event, Some(EventInj::external_interrupt(0x33)));
        assert_eq!(report.reinjection, Reinjection::GuestReexecutes(EventInj::software_interrupt(0x21)));
        assert_eq!(v.event_inj, 0);
        v.clear_busy();
        assert_eq!(v.vintr_ctrl, 0);
    }
}
