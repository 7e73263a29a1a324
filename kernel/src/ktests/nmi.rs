//! NMI delivery (spec §2, §6): EVENTINJ type 2 or V_NMI, collapse, masks.

use altinj_vmsa::{EventInj, EventType, VmsaAccess};

use super::{VMPL, one_vcpu};
use crate::testing::{GuestRun, hw_run, is_intr};

fn enable_v_nmi(f: &mut crate::testing::Fixture<4>) {
    let vmsa = f.vmsa(0).unwrap();
    let ctrl = vmsa.vintr_ctrl();
    vmsa.set_vintr_ctrl(ctrl.with_v_nmi_enable(true));
}

altinj_ktest::suite! {
    fn nmi_goes_through_eventinj_type_2_without_v_nmi() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        let ev = d.event.unwrap();
        assert_eq!(ev.event_type(), EventType::Nmi);
        assert_eq!(ev, EventInj::nmi());
        let e = f.engine(0).unwrap();
        assert_eq!(e.counters().nmis_injected, 1);
        assert!(e.nmi().in_service());
    }

    fn nmi_goes_through_v_nmi_when_enabled() {
        let mut f = one_vcpu();
        enable_v_nmi(&mut f);
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        assert!(vmsa.vintr_ctrl().v_nmi());
        assert!(!vmsa.event_inj().valid());
        let d = hw_run(vmsa, GuestRun::NORMAL);
        assert!(d.v_nmi);
        f.after_exit(0).unwrap();
        assert_eq!(f.engine(0).unwrap().counters().nmis_injected, 1);
    }

    fn nmi_while_eventinj_is_taken_waits_for_the_next_run() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.before_run(0).unwrap();
        // The re-injected interrupt keeps EVENTINJ.
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0x41));
        assert!(f.engine(0).unwrap().nmi().pending());
        let d = hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        assert!(is_intr(d.event, 0x41));
        f.after_exit(0).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(EventInj::nmi()));
    }

    fn nmi_while_eventinj_is_taken_uses_v_nmi_when_enabled() {
        let mut f = one_vcpu();
        enable_v_nmi(&mut f);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.before_run(0).unwrap();
        let vmsa = f.vmsa(0).unwrap();
        assert_eq!(vmsa.event_inj(), EventInj::external_interrupt(0x41));
        assert!(vmsa.vintr_ctrl().v_nmi());
    }

    fn nmi_is_not_injected_in_an_interrupt_shadow() {
        let mut f = one_vcpu();
        let vmsa = f.vmsa(0).unwrap();
        let ctrl = vmsa.vintr_ctrl();
        vmsa.set_vintr_ctrl(ctrl.with_int_shadow(true));
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.before_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert!(f.engine(0).unwrap().nmi().pending());
        // The shadow ended with the run.
        hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::nmi());
    }

    fn second_nmi_waits_while_one_is_in_service_and_a_third_collapses() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(f.engine(0).unwrap().nmi().in_service());
        // Two more NMIs while the first is in service.
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.before_run(0).unwrap();
        f.shared[0].mailbox().post_nmi();
        let d = hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        assert_eq!(d.event, None);
        f.after_exit(0).unwrap();
        // The in-service period ended at that exit: the pending one goes now.
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(EventInj::nmi()));
        let e = f.engine(0).unwrap();
        assert_eq!(e.counters().nmis_injected, 2);
        assert_eq!(e.counters().nmis_collapsed, 1);
        assert!(!e.nmi().pending());
    }

    fn nmi_interrupted_in_delivery_is_reinjected() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.cycle(0, GuestRun { interrupt_delivery: true, ..GuestRun::NORMAL }).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::nmi());
        assert_eq!(f.engine(0).unwrap().counters().nmis_injected, 0);
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(EventInj::nmi()));
        assert_eq!(f.engine(0).unwrap().counters().nmis_injected, 1);
    }
}
