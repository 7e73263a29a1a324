//! `cancel_run`: a run the SVSM skipped after `before_run` (issue 11
//! item 7; spec §2: an undelivered event goes back, BUSY is claimed again).

use altinj_vmsa::{EventInj, EventType, VmsaAccess};

use super::{VMPL, one_vcpu};
use crate::testing::{GuestRun, is_intr};

altinj_ktest::suite! {
    fn cancel_run_takes_back_a_presented_vector_and_the_next_run_delivers_it_once() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        assert!(f.vmsa(0).unwrap().event_inj().valid());
        f.cancel_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        let e = f.engine(0).unwrap();
        assert!(e.apic().irr().contains(0x41) && e.apic().isr().is_empty());
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41) && e.apic().irr().is_empty());
    }

    fn cancel_run_leaves_the_vmsa_busy() {
        let mut f = one_vcpu();
        f.before_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().vintr_ctrl().busy());
        f.cancel_run(0).unwrap();
        assert!(f.vmsa(0).unwrap().vintr_ctrl().busy());
        assert!(!f.shared[0].running());
    }

    fn cancel_run_ignores_the_previous_exits_exitintinfo() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        // The last exit cut a delivery of 0x41 (as hardware reports it);
        // after_exit handled it. A cancelled run must not act on it again.
        f.vmsa(0).unwrap().set_exit_int_info(EventInj::external_interrupt(0x41));
        f.write_msr(0, 0x80B, 0).unwrap();
        f.before_run(0).unwrap();
        f.cancel_run(0).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().is_empty() && e.apic().irr().is_empty());
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
    }

    fn cancel_run_takes_back_a_presented_nmi() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_nmi(VMPL).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj().event_type(), EventType::Nmi);
        f.cancel_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event.unwrap().event_type(), EventType::Nmi);
        assert_eq!(f.engine(0).unwrap().counters().nmis_injected, 1);
    }

    fn cancel_run_without_a_before_run_is_harmless() {
        let mut f = one_vcpu();
        f.cancel_run(0).unwrap();
        f.cancel_run(0).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
    }
}
