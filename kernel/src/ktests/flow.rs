//! The per-vCPU flow around a guest run (spec §2, §3): collection,
//! presentation, recall, re-injection, lazy EOI, level EOI, BUSY.

use core::sync::atomic::Ordering;

use altinj_apic::Trigger;
use altinj_doorbell::DescriptorStatus;
use altinj_vmsa::{EventInj, ExitCode, RFLAGS_IF, VmsaAccess};

use super::{VMPL, one_vcpu};
use crate::engine::{Fatal, MAX_BUSY_REPAIRS};
use crate::protocol::ApicCall;
use crate::testing::{GuestRun, hw_run, is_intr};
use crate::{Vmpl0Tpr, handle_hv};

const EOI: u64 = 0x80B;

altinj_ktest::suite! {
    fn host_vector_is_injected_through_eventinj_when_the_guest_can_take_it() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        assert_eq!(vmsa.event_inj(), EventInj::external_interrupt(0x41));
        assert!(!vmsa.vintr_ctrl().busy());
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41));
        assert!(!e.apic().irr().contains(0x41));
        assert_eq!(e.counters().presented_eventinj, 1);
        assert_eq!(e.counters().host_vectors_accepted, 1);
    }

    fn host_vector_is_queued_in_v_irq_when_interrupts_are_disabled() {
        let mut f = one_vcpu();
        f.vmsa(0).unwrap().set_rflags(2);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let ctrl = f.vmsa(0).unwrap().vintr_ctrl();
        assert!(ctrl.v_irq() && ctrl.vgif());
        assert_eq!(ctrl.v_intr_vector(), 0x41);
        assert_eq!(ctrl.v_intr_prio(), 4);
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(f.engine(0).unwrap().counters().presented_virq, 1);
        assert!(f.engine(0).unwrap().apic().irr().contains(0x41));
    }

    fn acknowledged_v_irq_moves_the_vector_to_isr() {
        let mut f = one_vcpu();
        f.vmsa(0).unwrap().set_rflags(2);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        // The guest executes STI during the run and takes the V_IRQ.
        f.vmsa(0).unwrap().set_rflags(RFLAGS_IF);
        let d = hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        assert_eq!(d.virq, Some(0x41));
        f.after_exit(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41));
        assert!(!e.apic().irr().contains(0x41));
        assert_eq!(e.counters().virq_acknowledged, 1);
        assert_eq!(f.vmsa(0).unwrap().vintr_ctrl().v_intr_vector(), 0);
    }

    fn v_irq_not_taken_is_recalled_to_irr() {
        let mut f = one_vcpu();
        f.vmsa(0).unwrap().set_rflags(2);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.virq, None);
        let e = f.engine(0).unwrap();
        assert!(e.apic().irr().contains(0x41));
        assert!(e.apic().isr().is_empty());
        assert_eq!(e.counters().recalled, 1);
        assert!(!f.vmsa(0).unwrap().vintr_ctrl().v_irq());
    }

    fn eventinj_left_undelivered_is_recalled_and_presented_again() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        // The host returned from Run VMPL without entering the guest.
        f.vmsa(0).unwrap().set_exit_code(ExitCode::VMGEXIT);
        f.after_exit(0).unwrap();
        {
            let e = f.engine(0).unwrap();
            assert!(e.apic().irr().contains(0x41));
            assert!(e.apic().isr().is_empty());
            assert_eq!(e.counters().recalled, 1);
        }
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
    }

    fn delivery_interrupted_by_an_exit_is_delivered_again_exactly_once() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        let run = GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL };
        let d = f.cycle(0, run).unwrap();
        assert_eq!(d.event, None);
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0x41));
        assert_eq!(f.engine(0).unwrap().counters().reinjected, 1);
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, None);
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41));
        assert!(e.apic().irr().is_empty());
        assert_eq!(e.counters().presented_eventinj, 1);
    }

    fn reinjected_event_owns_eventinj_and_a_new_vector_goes_to_v_irq() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x81).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        assert_eq!(vmsa.event_inj(), EventInj::external_interrupt(0x41));
        assert!(vmsa.vintr_ctrl().v_irq());
        assert_eq!(vmsa.vintr_ctrl().v_intr_vector(), 0x81);
    }

    fn software_interrupt_in_exitintinfo_is_left_to_the_guest() {
        let mut f = one_vcpu();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        vmsa.set_exit_int_info(EventInj::software_interrupt(0x80));
        vmsa.set_exit_code(ExitCode::VMGEXIT);
        f.after_exit(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(f.engine(0).unwrap().counters().reinjected, 0);
    }

    fn vector_at_or_below_the_task_priority_waits() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x808, 0x40).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        // Not injected; queued behind V_TPR, which hardware compares.
        assert!(!vmsa.event_inj().valid());
        assert_eq!(vmsa.vintr_ctrl().v_tpr(), 4);
        assert_eq!(vmsa.vintr_ctrl().v_intr_prio(), 4);
        let d = hw_run(vmsa, GuestRun::NORMAL);
        assert_eq!(d.virq, None);
        f.after_exit(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().irr().contains(0x41) && e.apic().isr().is_empty());
    }

    fn vector_blocked_only_by_tpr_is_queued_in_v_irq_for_when_cr8_drops() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x808, 0x50).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        let ctrl = vmsa.vintr_ctrl();
        assert!(ctrl.v_irq() && ctrl.vgif() && !ctrl.v_ign_tpr());
        assert_eq!(ctrl.v_intr_vector(), 0x41);
        assert_eq!(ctrl.v_intr_prio(), 4);
        assert_eq!(ctrl.v_tpr(), 5);
        // The guest lowers CR8 to 3 (no exit): hardware takes the vector.
        vmsa.set_vintr_ctrl(ctrl.with_v_tpr(3));
        let d = hw_run(vmsa, GuestRun::NORMAL);
        assert_eq!(d.virq, Some(0x41));
        f.after_exit(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41) && e.apic().irr().is_empty());
        assert_eq!(e.apic().tpr(), 0x30);
        assert_eq!(e.counters().virq_behind_tpr, 1);
        assert_eq!(e.counters().virq_acknowledged, 1);
    }

    fn vector_queued_behind_tpr_and_not_taken_stays_pending() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x808, 0x50).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        for _ in 0..3 {
            let d = f.cycle(0, GuestRun::NORMAL).unwrap();
            assert_eq!(d.virq, None);
            let e = f.engine(0).unwrap();
            assert!(e.apic().irr().contains(0x41) && e.apic().isr().is_empty());
        }
        assert_eq!(f.engine(0).unwrap().counters().recalled, 3);
        // Once TPR drops through the protocol, it goes out through EVENTINJ.
        f.write_msr(0, 0x808, 0).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
    }

    fn vector_blocked_by_an_in_service_class_is_not_queued() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x81).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        // 0x81 in service: 0x41 (class 4 <= 8) must wait for its EOI, even
        // with CR8 at 0, so it is not queued where hardware would take it.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        assert!(!vmsa.event_inj().valid());
        assert!(!vmsa.vintr_ctrl().v_irq());
        // Above the in-service class but not above TPR: queued.
        hw_run(vmsa, GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        f.write_msr(0, 0x808, 0xA0).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x91).unwrap();
        f.before_run(0).unwrap();
        let ctrl = f.vmsa(0).unwrap().vintr_ctrl();
        assert!(ctrl.v_irq());
        assert_eq!(ctrl.v_intr_vector(), 0x91);
        assert_eq!(ctrl.v_intr_prio(), 9);
        assert_eq!(ctrl.v_tpr(), 0xA);
    }

    fn guest_cr8_write_in_v_tpr_updates_the_apic_tpr() {
        let mut f = one_vcpu();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        hw_run(vmsa, GuestRun::NORMAL);
        let ctrl = vmsa.vintr_ctrl();
        vmsa.set_vintr_ctrl(ctrl.with_v_tpr(5));
        f.after_exit(0).unwrap();
        assert_eq!(f.engine(0).unwrap().apic().tpr(), 0x50);
    }

    fn host_flood_of_illegal_vectors_is_rejected_and_counted() {
        let mut f = one_vcpu();
        for round in 0..3u32 {
            for v in 1..=30u32 {
                let desc = f.doorbell(0).unwrap().descriptor(VMPL).unwrap();
                desc.status.store(v, Ordering::Release);
                f.before_run(0).unwrap();
                hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
                f.after_exit(0).unwrap();
                let desc = f.doorbell(0).unwrap().descriptor(VMPL).unwrap();
                assert_eq!(desc.status.load(Ordering::Acquire), 0, "round {round} vector {v}");
            }
            // A level bit with an illegal vector.
            let desc = f.doorbell(0).unwrap().descriptor(VMPL).unwrap();
            desc.status.store(DescriptorStatus::LEVEL | 7, Ordering::Release);
            f.before_run(0).unwrap();
            f.after_exit(0).unwrap();
        }
        let e = f.engine(0).unwrap();
        assert_eq!(e.counters().host_vectors_rejected, 3 * 31);
        assert!(e.apic().irr().is_empty());
        assert!(e.apic().isr().is_empty());
        assert_eq!(f.platform.specific_eois.count(), 0);
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
    }

    fn host_vector_31_is_legal() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 31).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(31));
    }

    fn host_vectors_are_refused_until_allowed() {
        let mut f: crate::testing::Fixture<4> = crate::testing::Fixture::new();
        f.create_with(0, crate::testing::Fixture::<4>::config(0)).unwrap();
        f.write_msr(0, 0x80F, 0x1FF).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.engine(0).unwrap().counters().host_vectors_rejected, 1);
        f.create_with(1, crate::testing::Fixture::<4>::config(1)).unwrap();
        f.parts(1).unwrap().0.apic_mut().set_all_host_vectors_allowed(true);
        f.write_msr(1, 0x80F, 0x1FF).unwrap();
        f.doorbell(1).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(1).unwrap();
        assert_eq!(f.vmsa(1).unwrap().event_inj(), EventInj::external_interrupt(0x41));
    }

    fn host_vector_denied_by_configure_vector_is_rejected() {
        let mut f = one_vcpu();
        f.call(0, ApicCall::ConfigureVector(0x41)).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().irr().is_empty());
        assert_eq!(e.counters().host_vectors_rejected, 1);
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
    }

    fn host_vectors_are_collected_without_an_hv() {
        let mut f = one_vcpu();
        let host = f.doorbell(0).unwrap().host();
        for v in [0x41u8, 0x42, 0x90] {
            host.post_vector(VMPL, v).unwrap();
        }
        f.before_run(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x90));
        assert!(e.apic().irr().contains(0x41) && e.apic().irr().contains(0x42));
    }

    fn hv_clears_no_further_signal_and_hands_vmpl0_its_vector() {
        let f = one_vcpu();
        let db = f.doorbell(0).unwrap();
        let host = db.host();
        host.set_vmpl0_vector(0x50).unwrap();
        host.post_vector(VMPL, 0x41).unwrap();
        assert!(host.raise_no_further_signal());
        let ev = handle_hv(db, &f.shared[0], Vmpl0Tpr::ZERO);
        assert_eq!(ev.vmpl0_vector, Some(0x50));
        assert_eq!(ev.vmpl_events, 1 << (VMPL - 1));
        assert_eq!(db.flags.load(Ordering::Acquire) & 0x80, 0);
        assert_eq!(db.vector.load(Ordering::Acquire), 0);
        // The host may signal again.
        assert!(host.raise_no_further_signal());
    }

    fn vmpl0_tpr_from_cr8_is_the_class_not_the_register() {
        assert_eq!(Vmpl0Tpr::from_cr8(0x5).tpr(), 0x50);
        assert_eq!(Vmpl0Tpr::from_cr8(0xF).tpr(), 0xF0);
        assert_eq!(Vmpl0Tpr::from_tpr(0x5).tpr(), 0x05);
    }

    fn hv_leaves_a_vmpl0_vector_at_or_below_the_cr8_class_pending() {
        let f = one_vcpu();
        let db = f.doorbell(0).unwrap();
        db.host().set_vmpl0_vector(0x50).unwrap();
        // CR8 = 5 blocks class 5: the vector stays for the host to see.
        let ev = handle_hv(db, &f.shared[0], Vmpl0Tpr::from_cr8(5));
        assert_eq!(ev.vmpl0_vector, None);
        assert_eq!(db.vector.load(Ordering::Acquire), 0x50);
        // CR8 = 4 lets it through.
        let ev = handle_hv(db, &f.shared[0], Vmpl0Tpr::from_cr8(4));
        assert_eq!(ev.vmpl0_vector, Some(0x50));
    }

    fn hv_is_harmless_when_spurious_or_repeated() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        let first = handle_hv(f.doorbell(0).unwrap(), &f.shared[0], Vmpl0Tpr::ZERO);
        assert!(!first.is_empty());
        for _ in 0..3 {
            assert!(handle_hv(f.doorbell(0).unwrap(), &f.shared[0], Vmpl0Tpr::ZERO).is_empty());
        }
        // The guest's vector was not taken by the handler: the run gets it.
        f.before_run(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0x41));
    }

    fn before_run_clears_busy() {
        let mut f = one_vcpu();
        let vmsa = f.vmsa(0).unwrap();
        vmsa.test_and_set_busy();
        f.before_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().vintr_ctrl().busy());
    }

    fn after_exit_sets_busy() {
        let mut f = one_vcpu();
        f.before_run(0).unwrap();
        hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        assert!(f.vmsa(0).unwrap().vintr_ctrl().busy());
        assert!(!f.shared[0].running());
    }

    fn vmexit_busy_is_repaired_and_the_vector_delivered_next_run() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        f.vmsa(0).unwrap().test_and_set_busy();
        let d = hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        assert!(d.vmrun_failed);
        let info = f.after_exit(0).unwrap();
        assert!(info.repaired);
        {
            let e = f.engine(0).unwrap();
            assert_eq!(e.counters().busy_repairs, 1);
            assert!(e.apic().irr().contains(0x41));
            assert!(e.apic().isr().is_empty());
        }
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
    }

    fn repeated_vmexit_busy_becomes_fatal_instead_of_looping() {
        let mut f = one_vcpu();
        let mut result = Ok(());
        for _ in 0..=MAX_BUSY_REPAIRS {
            f.before_run(0).unwrap();
            f.vmsa(0).unwrap().test_and_set_busy();
            hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
            result = f.after_exit(0).map(|_| ());
        }
        assert_eq!(result, Err(Fatal::BusyStorm));
        assert_eq!(f.before_run(0), Err(Fatal::BusyStorm));
        assert_eq!(f.engine(0).unwrap().fatal(), Some(Fatal::BusyStorm));
    }

    fn before_run_twice_without_a_run_presents_once() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        f.before_run(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41));
        assert_eq!(e.apic().isr().len(), 1);
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0x41));
    }

    fn machine_check_reaches_the_guest_as_exception_18() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_mc(VMPL).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        assert_eq!(vmsa.event_inj(), EventInj::exception(18, None));
        // The interrupt waits in V_IRQ behind it.
        assert!(vmsa.vintr_ctrl().v_irq());
        assert_eq!(f.engine(0).unwrap().counters().machine_checks, 1);
    }

    fn machine_check_during_machine_check_delivery_is_reported_fatal() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_mc(VMPL).unwrap();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::exception(18, None));
        f.doorbell(0).unwrap().host().post_mc(VMPL).unwrap();
        assert_eq!(f.before_run(0), Err(Fatal::NestedMachineCheck));
    }

    fn lazy_eoi_is_offered_for_a_lone_edge_vector() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.caa[0].load(Ordering::Acquire), 1);
    }

    fn lazy_eoi_is_not_offered_while_another_vector_is_pending() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x42).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.caa[0].load(Ordering::Acquire), 0);
    }

    fn lazy_eoi_is_not_offered_for_a_level_vector() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        assert!(f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(f.caa[0].load(Ordering::Acquire), 0);
    }

    fn lazy_eoi_skipped_by_the_guest_is_performed_after_the_exit() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        // The guest's EOI: swap to 0, saw 1, skipped the MSR write.
        assert_eq!(f.caa[0].swap(0, Ordering::AcqRel), 1);
        f.after_exit(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().is_empty());
        assert_eq!(e.counters().lazy_eois, 1);
    }

    fn unused_lazy_eoi_leaves_the_vector_in_service() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41));
        assert_eq!(e.counters().lazy_eois, 0);
        assert_eq!(f.caa[0].load(Ordering::Acquire), 0);
    }

    fn host_level_vector_eoi_goes_to_the_host_exactly_once() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        assert!(f.engine(0).unwrap().host_level().contains(0x41));
        f.write_msr(0, EOI, 0).unwrap();
        f.write_msr(0, EOI, 0).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 1);
        assert_eq!(f.platform.specific_eois.last(), Some((u64::from(VMPL) << 16) | 0x41));
        assert_eq!(f.engine(0).unwrap().counters().host_level_eois, 1);
        assert!(!f.engine(0).unwrap().host_level().contains(0x41));
    }

    fn local_level_interrupt_eoi_never_reaches_the_host() {
        let mut f = one_vcpu();
        {
            let (engine, _, _) = f.parts(0).unwrap();
            engine.apic_mut().request(0x51, Trigger::Level);
        }
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x51));
        f.write_msr(0, EOI, 0).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 0);
        assert!(f.engine(0).unwrap().apic().isr().is_empty());
    }

    fn directed_eoi_leaves_the_level_eoi_to_the_guest() {
        let mut f: crate::testing::Fixture<4> = crate::testing::Fixture::new();
        let mut config = crate::testing::Fixture::<4>::config(0);
        config.apic.directed_eoi = true;
        f.create_with(0, config).unwrap();
        f.write_msr(0, 0x1B, 0xFEE0_0000 | (3 << 10) | (1 << 8)).unwrap();
        f.write_msr(0, 0x80F, 0x11FF).unwrap();
        f.call(0, ApicCall::ConfigureVector(0x300)).unwrap();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        f.write_msr(0, EOI, 0).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 0);
        assert!(!f.engine(0).unwrap().host_level().contains(0x41));
    }

    fn refused_host_level_vector_gets_its_eoi_at_once() {
        let mut f = one_vcpu();
        f.call(0, ApicCall::ConfigureVector(0x41)).unwrap();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 1);
        assert_eq!(f.engine(0).unwrap().counters().host_vectors_rejected, 1);
    }

    fn apic_timer_expiry_injects_the_lvt_vector() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x83E, 0xB).unwrap(); // divide by 1
        f.write_msr(0, 0x832, 0xEF).unwrap(); // one-shot, vector 0xEF
        f.write_msr(0, 0x838, 1000).unwrap();
        let deadline = f.platform.armed_deadline().unwrap();
        assert_eq!(deadline, 1000);
        f.platform.set_now(999);
        f.before_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        f.platform.set_now(1000);
        f.before_run(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0xEF));
        assert_eq!(f.engine(0).unwrap().counters().timer_fires, 1);
    }

    fn platform_without_a_timer_tells_the_guest_to_use_the_host_timer() {
        let mut f = one_vcpu();
        f.platform.timer.store(false, Ordering::Release);
        let r = f.call(0, ApicCall::QueryFeatures).unwrap();
        assert_eq!(r.rcx.unwrap() & crate::protocol::feature::TIMER, 0);
        f.write_msr(0, 0x832, 0xEF).unwrap();
        f.write_msr(0, 0x838, 1000).unwrap();
        assert_eq!(f.platform.timer_arms.count(), 0);
        let mut g = one_vcpu();
        let r = g.call(0, ApicCall::QueryFeatures).unwrap();
        assert_ne!(r.rcx.unwrap() & crate::protocol::feature::TIMER, 0);
    }

    fn work_pending_reports_what_arrived_after_before_run() {
        let mut f = one_vcpu();
        f.before_run(0).unwrap();
        let pending = |f: &mut crate::testing::Fixture<4>| {
            let (engine, env, _) = f.parts(0).unwrap();
            engine.work_pending(&env)
        };
        assert!(!pending(&mut f));
        // A kick's post between collect and Run VMPL.
        f.shared[0].mailbox().post(0x41);
        assert!(pending(&mut f));
        f.before_run(0).unwrap();
        assert!(!pending(&mut f));
        // A host post, and a platform timer fire.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x51).unwrap();
        assert!(pending(&mut f));
        f.before_run(0).unwrap();
        f.shared[0].note_timer_fired();
        assert!(pending(&mut f));
    }
}
