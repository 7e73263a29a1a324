//! The APIC timer against the platform timer (spec §4 #HV timer): no expiry
//! is lost to a register write, and the platform timer never stalls.

use altinj_vmsa::{EventInj, VmsaAccess};

use super::one_vcpu;
use crate::testing::{Fixture, GuestRun, is_intr};

const LVT_TIMER: u64 = 0x832;
const TSC_DEADLINE: u64 = 0x6E0;
/// LVT timer mode 10b: TSC-deadline (Intel SDM vol. 3A §11.5.4.1).
const TSC_DEADLINE_MODE: u64 = 2 << 17;

/// vCPU 0 with its timer in TSC-deadline mode, vector 0xEF.
fn tsc_deadline_vcpu() -> Fixture<4> {
    let mut f = one_vcpu();
    f.write_msr(0, LVT_TIMER, TSC_DEADLINE_MODE | 0xEF).unwrap();
    f
}

altinj_ktest::suite! {
    fn tsc_deadline_rewrite_after_expiry_keeps_the_expired_deadline() {
        let mut f = tsc_deadline_vcpu();
        f.write_msr(0, TSC_DEADLINE, 100).unwrap();
        // The deadline passes; before any poll the guest writes a new one.
        f.platform.set_now(150);
        f.write_msr(0, TSC_DEADLINE, 1000).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0xEF));
        assert_eq!(f.engine(0).unwrap().counters().timer_fires, 1);
        // And the new deadline is the one armed.
        assert_eq!(f.platform.armed_deadline(), Some(1000));
    }

    fn early_platform_timer_fire_rearms_the_platform_timer() {
        let mut f = tsc_deadline_vcpu();
        f.write_msr(0, TSC_DEADLINE, 1000).unwrap();
        assert_eq!(f.platform.armed_deadline(), Some(1000));
        let arms = f.platform.timer_arms.count();
        // The one-shot platform timer fires early: it is spent.
        f.platform.set_now(900);
        f.shared[0].note_timer_fired();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(f.platform.timer_arms.count(), arms + 1);
        assert_eq!(f.platform.armed_deadline(), Some(1000));
        assert_eq!(f.engine(0).unwrap().counters().timer_early, 1);
        // Not yet due: nothing injected; at the deadline it is.
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        f.platform.set_now(1000);
        f.before_run(0).unwrap();
        assert_eq!(f.vmsa(0).unwrap().event_inj(), EventInj::external_interrupt(0xEF));
    }

    fn software_disable_keeps_a_due_timer_expiry() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x83E, 0xB).unwrap(); // divide by 1
        f.write_msr(0, LVT_TIMER, 0xEF).unwrap(); // one-shot, vector 0xEF
        f.write_msr(0, 0x838, 1000).unwrap();
        // The expiry is due; before any poll the guest software-disables
        // its APIC (which masks every LVT): IRR keeps what was pending.
        f.platform.set_now(1000);
        f.write_msr(0, 0x80F, 0xFF).unwrap();
        let e = f.engine(0).unwrap();
        assert!(e.apic().irr().contains(0xEF));
        assert_eq!(e.counters().timer_fires, 1);
    }
}
