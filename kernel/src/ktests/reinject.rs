//! Which EXITINTINFO events are re-injected (spec §2; AMD APM vol. 2
//! §15.7.2): what the engine presented and hardware took, and exceptions
//! the guest raised itself; everything else is dropped and counted.

use altinj_vmsa::{EventInj, EventType, ExitCode, RFLAGS_IF, VmsaAccess};

use super::{VMPL, one_vcpu};
use crate::testing::{Fixture, GuestRun, hw_run, is_intr};

/// One run in which the guest takes whatever is offered, then an exit
/// whose EXITINTINFO holds `event` (as a hostile host would write it).
fn exit_with(f: &mut Fixture<4>, event: EventInj) {
    f.before_run(0).unwrap();
    let vmsa = f.vmsa(0).unwrap();
    hw_run(vmsa, GuestRun::NORMAL);
    vmsa.set_exit_int_info(event);
    vmsa.set_exit_code(ExitCode::NPF);
    f.after_exit(0).unwrap();
}

fn forged(f: &Fixture<4>) -> u64 {
    f.engine(0).unwrap().counters().forged_exit_events
}

/// The host posts `vector` to vCPU 0 and its delivery is cut by a nested
/// page fault: after the exit it is re-injected (in ISR and EVENTINJ).
fn reinject_host_vector(f: &mut Fixture<4>, vector: u8) {
    f.doorbell(0)
        .unwrap()
        .host()
        .post_vector(VMPL, vector)
        .unwrap();
    f.before_run(0).unwrap();
    let vmsa = f.vmsa(0).unwrap();
    hw_run(
        vmsa,
        GuestRun {
            interrupt_delivery: true,
            exit: ExitCode::NPF,
            ..GuestRun::NORMAL
        },
    );
    f.after_exit(0).unwrap();
}

altinj_ktest::suite! {
    fn forged_intr_in_exit_int_info_is_never_injected() {
        let mut f = one_vcpu();
        for (n, vector) in [16u8, 20, 30, 31, 0x41, 0xFF].into_iter().enumerate() {
            exit_with(&mut f, EventInj::external_interrupt(vector));
            assert!(!f.vmsa(0).unwrap().event_inj().valid(), "vector {vector:#x}");
            assert_eq!(forged(&f), n as u64 + 1);
            let d = f.cycle(0, GuestRun::NORMAL).unwrap();
            assert_eq!(d.event, None);
        }
        let e = f.engine(0).unwrap();
        assert_eq!(e.counters().reinjected, 0);
        assert!(e.apic().isr().is_empty() && e.apic().irr().is_empty());
    }

    fn intr_in_exit_int_info_other_than_the_presented_vector_is_dropped() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        // 0x41 goes out through EVENTINJ and is delivered; the exit claims 0x42.
        exit_with(&mut f, EventInj::external_interrupt(0x42));
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(forged(&f), 1);
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41) && !e.apic().isr().contains(0x42));
    }

    fn presented_vector_still_in_eventinj_is_not_reinjected_from_exit_int_info() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        // The run never entered the guest (EVENTINJ still valid), yet
        // EXITINTINFO names the vector: it was not being delivered.
        let vmsa = f.vmsa(0).unwrap();
        vmsa.set_exit_int_info(EventInj::external_interrupt(0x41));
        vmsa.set_exit_code(ExitCode::VMGEXIT);
        f.after_exit(0).unwrap();
        assert_eq!(forged(&f), 1);
        let e = f.engine(0).unwrap();
        assert!(e.apic().irr().contains(0x41) && e.apic().isr().is_empty());
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
    }

    fn taken_v_irq_cut_by_an_exit_is_reinjected_once() {
        let mut f = one_vcpu();
        f.vmsa(0).unwrap().set_rflags(2);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        vmsa.set_rflags(RFLAGS_IF);
        let d = hw_run(vmsa, GuestRun::NORMAL);
        assert_eq!(d.virq, Some(0x41));
        // The delivery of the taken V_IRQ was cut by an exit.
        vmsa.set_exit_int_info(EventInj::external_interrupt(0x41));
        vmsa.set_exit_code(ExitCode::NPF);
        f.after_exit(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0x41));
        assert_eq!(f.engine(0).unwrap().counters().reinjected, 1);
        assert_eq!(forged(&f), 0);
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        let e = f.engine(0).unwrap();
        assert_eq!(e.apic().isr().len(), 1);
        assert!(e.apic().irr().is_empty());
    }

    fn forged_nmi_in_exit_int_info_is_dropped_when_no_nmi_was_presented() {
        let mut f = one_vcpu();
        exit_with(&mut f, EventInj::nmi());
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(forged(&f), 1);
        let e = f.engine(0).unwrap();
        assert!(!e.nmi().pending() && e.nmi().presented().is_none());
        assert_eq!(e.counters().nmis_injected, 0);
    }

    fn presented_nmi_cut_by_an_exit_is_reinjected() {
        let mut f = one_vcpu();
        f.shared[0].mailbox().post_nmi();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::nmi());
        assert_eq!(forged(&f), 0);
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(EventInj::nmi()));
    }

    fn forged_machine_check_in_exit_int_info_is_dropped() {
        let mut f = one_vcpu();
        exit_with(&mut f, EventInj::exception(18, None));
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(forged(&f), 1);
        // A real #MC the engine injected and that was cut is re-injected.
        f.doorbell(0).unwrap().host().post_mc(VMPL).unwrap();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::exception(18, None));
        assert_eq!(forged(&f), 1);
    }

    fn guest_page_fault_in_exit_int_info_is_reinjected_with_its_error_code() {
        let mut f = one_vcpu();
        let pf = EventInj::exception(14, Some(0x6));
        exit_with(&mut f, pf);
        assert_eq!(f.vmsa(0).unwrap().event_inj(), pf);
        assert_eq!(f.engine(0).unwrap().counters().reinjected, 1);
        assert_eq!(forged(&f), 0);
        // Delivered on the next run, then gone.
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(pf));
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, None);
    }

    fn guest_exceptions_the_processor_raises_are_reinjected() {
        let mut f = one_vcpu();
        let mut expected = 0;
        for vector in [0u8, 1, 5, 6, 7, 16, 19] {
            exit_with(&mut f, EventInj::exception(vector, None));
            assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::exception(vector, None));
            f.cycle(0, GuestRun::NORMAL).unwrap();
            expected += 1;
        }
        for vector in [8u8, 10, 11, 12, 13, 14, 17, 21, 29, 30] {
            for code in [Some(0u32), None] {
                // Without an error code too: real mode pushes none.
                exit_with(&mut f, EventInj::exception(vector, code));
                assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::exception(vector, code));
                f.cycle(0, GuestRun::NORMAL).unwrap();
                expected += 1;
            }
        }
        assert_eq!(f.engine(0).unwrap().counters().reinjected, expected);
        assert_eq!(forged(&f), 0);
    }

    fn reserved_and_hv_exception_vectors_in_exit_int_info_are_dropped() {
        let mut f = one_vcpu();
        let vectors = [9u8, 15, 20, 22, 27, 28, 31];
        for vector in vectors {
            exit_with(&mut f, EventInj::exception(vector, None));
            assert!(!f.vmsa(0).unwrap().event_inj().valid(), "vector {vector}");
        }
        assert_eq!(forged(&f), vectors.len() as u64);
        assert_eq!(f.engine(0).unwrap().counters().reinjected, 0);
    }

    fn error_code_on_an_exception_that_pushes_none_is_dropped() {
        let mut f = one_vcpu();
        for vector in [0u8, 1, 6, 7, 16, 19] {
            exit_with(&mut f, EventInj::exception(vector, Some(0)));
            assert!(!f.vmsa(0).unwrap().event_inj().valid(), "vector {vector}");
        }
        assert_eq!(forged(&f), 6);
    }

    fn malformed_exit_int_info_is_dropped_and_counted() {
        let mut f = one_vcpu();
        let reserved_type = EventInj::new()
            .with_vector(0x41)
            .with_event_type(EventType::from_bits(5))
            .with_valid(true);
        exit_with(&mut f, reserved_type);
        exit_with(&mut f, EventInj::external_interrupt(7));
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(forged(&f), 2);
    }

    fn recall_keeps_both_instances_of_a_reinjected_vector() {
        let mut f = one_vcpu();
        reinject_host_vector(&mut f, 0x41);
        // A second instance arrives; the next run never enters the guest
        // (before_run twice takes back what the first presented).
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        let d = hw_run(vmsa, GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        assert!(is_intr(d.event, 0x41));
        f.write_msr(0, 0x80B, 0).unwrap();
        // The second instance follows the first.
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        f.write_msr(0, 0x80B, 0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().is_empty() && e.apic().irr().is_empty());
    }

    fn reinjected_vector_is_not_merged_with_an_instance_drained_from_the_mailbox() {
        let mut f = super::four_vcpus();
        reinject_host_vector(&mut f, 0x41);
        f.before_run(0).unwrap();
        // A second instance from vCPU 1 waits in vCPU 0's mailbox while the
        // host returns without entering the guest (EVENTINJ untouched).
        f.write_msr(1, 0x830, 0x41).unwrap();
        f.vmsa(0).unwrap().set_exit_code(ExitCode::BUSY);
        f.after_exit(0).unwrap();
        // Both instances reach the guest, one after the other.
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        f.write_msr(0, 0x80B, 0).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41), "the second instance was merged away");
        f.write_msr(0, 0x80B, 0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().is_empty() && e.apic().irr().is_empty());
    }

    fn exit_int_info_of_a_run_that_never_entered_the_guest_is_dropped() {
        let mut f = one_vcpu();
        // 0x41 re-injected (ISR, EVENTINJ), a second 0x41 pending in IRR.
        reinject_host_vector(&mut f, 0x41);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        // VMRUN fails (EVENTINJ untouched), yet the host claims a #PF was
        // being delivered.
        let vmsa = f.vmsa(0).unwrap();
        vmsa.set_exit_code(ExitCode::BUSY);
        vmsa.set_exit_int_info(EventInj::exception(14, Some(0)));
        f.after_exit(0).unwrap();
        assert_eq!(forged(&f), 1);
        // Both instances of 0x41 still reach the guest, one after the other.
        for _ in 0..2 {
            let d = f.cycle(0, GuestRun::NORMAL).unwrap();
            assert!(is_intr(d.event, 0x41));
            f.write_msr(0, 0x80B, 0).unwrap();
        }
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().is_empty() && e.apic().irr().is_empty());
    }

    fn exit_int_info_on_an_instruction_exit_is_dropped() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        // 0x41 is delivered; the exit is the guest's VMGEXIT, an instruction
        // intercept, yet EXITINTINFO claims 0x41 was being delivered.
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        let d = hw_run(vmsa, GuestRun::NORMAL);
        assert!(is_intr(d.event, 0x41));
        vmsa.set_exit_int_info(EventInj::external_interrupt(0x41));
        f.after_exit(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(forged(&f), 1);
    }
}
