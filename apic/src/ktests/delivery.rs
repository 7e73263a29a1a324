//! Priorities, acknowledge/EOI, received IPIs, TMR, ESR and the host filter.

use super::*;

altinj_ktest::suite! {
    // ---- PPR / TPR ---------------------------------------------------------

    fn ppr_equal_class_is_deferred() {
        let mut a = x2(0);
        a.set_tpr(0x50);
        a.request(0x55, Trigger::Edge);
        assert_eq!(a.highest_deliverable(), None);
        a.request(0x60, Trigger::Edge);
        assert_eq!(a.highest_deliverable(), Some(0x60));
    }

    fn ppr_sub_class_does_not_count() {
        let mut a = x2(0);
        a.request(0x51, Trigger::Edge);
        a.acknowledge(0x51);
        // 0x5F is above 0x51 but in the same class: blocked.
        a.request(0x5F, Trigger::Edge);
        assert_eq!(a.ppr(), 0x50);
        assert_eq!(a.highest_deliverable(), None);
        // TPR 0x4F: low nibble ignored for delivery.
        let mut b = x2(0);
        b.set_tpr(0x4F);
        b.request(0x50, Trigger::Edge);
        assert_eq!(b.highest_deliverable(), Some(0x50));
    }

    fn ppr_nested_isr_takes_highest_class() {
        let mut a = x2(0);
        a.request(0x31, Trigger::Edge);
        a.acknowledge(0x31);
        a.request(0x61, Trigger::Edge);
        a.acknowledge(0x61);
        assert_eq!(a.ppr(), 0x60);
        a.eoi();
        assert_eq!(a.ppr(), 0x30);
        a.eoi();
        assert_eq!(a.ppr(), 0);
    }

    fn ppr_is_tpr_when_tpr_class_is_at_least_isr_class() {
        let mut a = x2(0);
        a.request(0x41, Trigger::Edge);
        a.acknowledge(0x41);
        a.set_tpr(0x47);
        assert_eq!(a.ppr(), 0x47);
        a.set_tpr(0x37);
        assert_eq!(a.ppr(), 0x40);
        assert_eq!(rd(&a, MSR_PPR), 0x40);
    }

    fn tpr_low_nibble_is_kept() {
        let mut a = x2(0);
        a.write_msr(MSR_TPR, 0x3C, 0).unwrap();
        assert_eq!(rd(&a, MSR_TPR), 0x3C);
        assert_eq!(a.tpr(), 0x3C);
    }

    fn highest_deliverable_with_full_irr_is_255() {
        let mut a = x2(0);
        for v in 16..=255u8 {
            a.request(v, Trigger::Edge);
        }
        assert_eq!(a.highest_deliverable(), Some(255));
        a.set_tpr(0xF0);
        assert_eq!(a.highest_deliverable(), None);
    }

    // ---- EOI ---------------------------------------------------------------

    fn eoi_retires_highest_in_service_first() {
        let mut a = x2(0);
        for v in [0x30u8, 0x50, 0x80] {
            a.request(v, Trigger::Edge);
            a.acknowledge(v);
        }
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x80));
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x50));
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x30));
        assert_eq!(a.eoi(), None);
    }

    fn eoi_reports_level_from_tmr() {
        let mut a = x2(0);
        a.request(0x70, Trigger::Level);
        a.acknowledge(0x70);
        assert_eq!(
            a.write_msr(MSR_EOI, 0, 0),
            Ok(WriteEffect::Eoi(EoiInfo { vector: 0x70, level: true, broadcast: true }))
        );
        a.request(0x71, Trigger::Edge);
        a.acknowledge(0x71);
        assert_eq!(a.eoi(), Some(EoiInfo { vector: 0x71, level: false, broadcast: false }));
    }

    fn eoi_with_nothing_in_service_is_no_effect() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_EOI, 0, 0), Ok(WriteEffect::None));
    }

    fn unacknowledge_returns_vector_to_irr() {
        let mut a = x2(0);
        a.request(0x44, Trigger::Edge);
        a.acknowledge(0x44);
        a.unacknowledge(0x44);
        assert!(a.irr().contains(0x44));
        assert!(!a.isr().contains(0x44));
        assert_eq!(a.highest_deliverable(), Some(0x44));
    }

    fn acknowledge_of_vector_not_pending_changes_nothing() {
        let mut a = x2(0);
        a.acknowledge(0x44);
        assert!(a.isr().is_empty());
    }

    fn acknowledge_refuses_vector_not_above_in_service_class() {
        let mut a = x2(0);
        a.request(0x65, Trigger::Edge);
        assert!(a.acknowledge(0x65));
        a.request(0x61, Trigger::Edge);
        a.request(0x41, Trigger::Edge);
        assert!(!a.acknowledge(0x61));
        assert!(!a.acknowledge(0x41));
        assert!(a.irr().contains(0x61) && a.irr().contains(0x41));
        assert_eq!(a.isr().len(), 1);
    }

    // ---- received IPIs, INIT -----------------------------------------------

    fn accepted_fixed_ipi_sets_irr_and_others_are_reported() {
        let mut s = x2(0);
        let mut t = x2(1);
        let fixed = send(&mut s, (1 << 32) | (1 << 15) | (1 << 14) | 0x45);
        assert_eq!(t.accept_ipi(&fixed), Received::Requested(RequestOutcome::Accepted));
        assert!(t.irr().contains(0x45) && !t.tmr().contains(0x45));
        let nmi = send(&mut s, (1 << 32) | (4 << 8) | (1 << 14));
        assert_eq!(t.accept_ipi(&nmi), Received::Nmi);
        let init = send(&mut s, (1 << 32) | (5 << 8) | (1 << 14));
        assert_eq!(t.accept_ipi(&init), Received::Init);
        let deassert = send(&mut s, (1 << 32) | (5 << 8) | (1 << 15));
        assert_eq!(t.accept_ipi(&deassert), Received::Ignored);
        let sipi = send(&mut s, (1 << 32) | (6 << 8) | 0x10);
        assert_eq!(t.accept_ipi(&sipi), Received::StartUp(0x10));
        let reserved = send(&mut s, (1 << 32) | (7 << 8));
        assert_eq!(t.accept_ipi(&reserved), Received::Unsupported);
        let smi = send(&mut s, (1 << 32) | (2 << 8));
        assert_eq!(t.accept_ipi(&smi), Received::Unsupported);
        assert_eq!(t.irr().len(), 1);
        t.set_apic_base(BASE).unwrap();
        assert_eq!(t.accept_ipi(&nmi), Received::Ignored);
    }

    fn software_disabled_apic_still_takes_nmi_init_sipi() {
        let mut s = x2(0);
        let mut t = LocalApic::new(config(1));
        t.set_apic_base(X2APIC).unwrap();
        let fixed = send(&mut s, (1 << 32) | 0x45);
        assert_eq!(
            t.accept_ipi(&fixed),
            Received::Requested(RequestOutcome::Dropped)
        );
        let nmi = send(&mut s, (1 << 32) | (4 << 8) | (1 << 14));
        assert_eq!(t.accept_ipi(&nmi), Received::Nmi);
        let sipi = send(&mut s, (1 << 32) | (6 << 8) | 0x10);
        assert_eq!(t.accept_ipi(&sipi), Received::StartUp(0x10));
    }

    fn init_reset_restores_power_up_registers_but_keeps_mode_and_id() {
        let mut a = x2(9);
        a.request(0x40, Trigger::Edge);
        a.set_tpr(0x30);
        a.write_msr(MSR_LVT_LINT0, 0x41, 0).unwrap();
        a.init_reset();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(rd(&a, MSR_ID), 9);
        assert_eq!(rd(&a, MSR_SVR), 0xFF);
        assert_eq!(rd(&a, MSR_LVT_LINT0), u64::from(LVT_MASKED));
        assert!(a.irr().is_empty());
        assert_eq!(a.tpr(), 0);
    }

    // ---- TMR, coalescing ---------------------------------------------------

    fn tmr_is_set_on_level_acceptance_and_cleared_on_edge() {
        let mut a = x2(0);
        a.request(0x90, Trigger::Level);
        assert!(a.tmr().contains(0x90));
        assert_eq!(rd(&a, MSR_TMR0 + 4), 1 << 16);
        a.acknowledge(0x90);
        a.eoi();
        a.request(0x90, Trigger::Edge);
        assert!(!a.tmr().contains(0x90));
    }

    fn second_request_coalesces() {
        let mut a = x2(0);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Accepted);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Coalesced);
        a.acknowledge(0x40);
        assert!(a.irr().is_empty());
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x40));
        assert_eq!(a.eoi(), None);
    }

    fn vector_can_be_in_service_and_pending_once_more() {
        let mut a = x2(0);
        a.request(0x40, Trigger::Edge);
        a.acknowledge(0x40);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Accepted);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Coalesced);
        assert!(a.isr().contains(0x40) && a.irr().contains(0x40));
        assert_eq!(a.highest_deliverable(), None);
        a.eoi();
        assert_eq!(a.highest_deliverable(), Some(0x40));
    }

    // ---- ESR, illegal vectors, host filter ---------------------------------

    fn request_below_16_is_illegal_and_latches_receive_illegal() {
        let mut a = x2(0);
        for v in 0..16u8 {
            assert_eq!(a.request(v, Trigger::Edge), RequestOutcome::Illegal);
        }
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), Esr::RECEIVE_ILLEGAL_VECTOR.bits());
    }

    fn esr_becomes_visible_on_write() {
        let mut a = x2(0);
        a.request(3, Trigger::Edge);
        assert_eq!(rd(&a, MSR_ESR), 0);
        a.write_msr(MSR_ESR, 0, 0).unwrap();
        assert_eq!(rd(&a, MSR_ESR), 0x40);
        assert_eq!(a.pending_esr(), 0);
        a.write_msr(MSR_ESR, 0, 0).unwrap();
        assert_eq!(rd(&a, MSR_ESR), 0);
    }

    fn lvt_error_interrupt_fires_on_latched_error() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_ERROR, 0xFE, 0).unwrap();
        a.request(1, Trigger::Edge);
        assert!(a.irr().contains(0xFE));
        let mut b = x2(0);
        b.request(1, Trigger::Edge);
        assert!(b.irr().is_empty());
    }

    fn lvt_error_with_illegal_vector_does_not_recurse() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_ERROR, 0x05, 0).unwrap();
        assert_eq!(a.request(2, Trigger::Edge), RequestOutcome::Illegal);
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), 0x40);
    }

    fn host_vectors_need_configure_vector() {
        let mut a = x2(0);
        assert_eq!(a.request_from_host(0x41, Trigger::Edge), RequestOutcome::Denied);
        a.set_host_vector_allowed(0x41, true);
        assert_eq!(a.request_from_host(0x41, Trigger::Level), RequestOutcome::Accepted);
        assert!(a.tmr().contains(0x41));
        a.set_host_vector_allowed(0x41, false);
        assert_eq!(a.request_from_host(0x41, Trigger::Edge), RequestOutcome::Denied);
    }

    fn host_vectors_below_31_are_never_allowed() {
        let mut a = x2(0);
        a.set_all_host_vectors_allowed(true);
        for v in 0..31u8 {
            assert_eq!(a.request_from_host(v, Trigger::Edge), RequestOutcome::Denied);
        }
        a.set_host_vector_allowed(20, true);
        assert!(!a.host_vector_allowed(20));
        assert_eq!(a.request_from_host(31, Trigger::Edge), RequestOutcome::Accepted);
        assert_eq!(a.pending_esr(), 0);
        a.set_all_host_vectors_allowed(false);
        assert_eq!(a.request_from_host(0x80, Trigger::Edge), RequestOutcome::Denied);
    }
}
