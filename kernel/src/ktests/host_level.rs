//! Host-presented level vectors (spec §4 specific EOI): exactly one
//! specific EOI per host level presentation, whatever the guest's TMR says
//! and however the guest's APIC ends.

use altinj_vmsa::VmsaAccess;

use super::{VMPL, one_vcpu};
use crate::testing::{GuestRun, is_intr};

const EOI: u64 = 0x80B;
const SELF_IPI: u64 = 0x83F;

altinj_ktest::suite! {
    fn edge_request_of_a_host_level_vector_keeps_its_specific_eoi() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        // An edge instance of the same vector clears the guest-visible TMR.
        f.write_msr(0, SELF_IPI, 0x41).unwrap();
        f.write_msr(0, EOI, 0).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 1);
        assert_eq!(f.platform.specific_eois.last(), Some((u64::from(VMPL) << 16) | 0x41));
        // The edge instance is delivered and retired without a second one.
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x41));
        f.write_msr(0, EOI, 0).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 1);
        assert!(f.engine(0).unwrap().host_level().set().is_empty());
    }

    fn apic_disable_completes_outstanding_host_level_vectors() {
        let mut f = one_vcpu();
        // 0x41 in service, 0x61 pending (the guest keeps IF clear).
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x61).unwrap();
        f.vmsa(0).unwrap().set_rflags(2);
        f.cycle(0, GuestRun { open_window: false, ..GuestRun::NORMAL }).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41) && e.apic().irr().contains(0x61));
        // x2APIC -> disabled (APIC_BASE EN = 0, EXTD = 0).
        f.write_msr(0, 0x1B, 0xFEE0_0000 | (1 << 8)).unwrap();
        assert_eq!(f.platform.specific_eois.count(), 2);
        assert!(f.platform.specific_eois.contains((u64::from(VMPL) << 16) | 0x41));
        assert!(f.platform.specific_eois.contains((u64::from(VMPL) << 16) | 0x61));
        assert!(f.engine(0).unwrap().host_level().set().is_empty());
    }

    fn lazy_eoi_is_not_offered_for_a_host_level_vector_after_an_edge_request() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_level(VMPL, 0x41).unwrap();
        // IF clear: 0x41 waits in IRR; an edge request of it clears TMR.
        f.vmsa(0).unwrap().set_rflags(2);
        f.cycle(0, GuestRun { open_window: false, ..GuestRun::NORMAL }).unwrap();
        f.write_msr(0, SELF_IPI, 0x41).unwrap();
        f.vmsa(0).unwrap().set_rflags(altinj_vmsa::RFLAGS_IF);
        f.before_run(0).unwrap();
        // The host waits for this EOI: it must not be skipped lazily.
        assert_eq!(f.caa[0].load(core::sync::atomic::Ordering::Acquire), 0);
    }
}
