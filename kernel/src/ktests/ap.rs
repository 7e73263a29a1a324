//! AP bring-up from another CPU (issue 11 item 9): the CPU that handles the
//! guest's request announces the AP's slot; IPIs sent before the AP's own
//! engine exists wait in its mailbox and are delivered exactly once.

use altinj_vmsa::EventInj;

use super::icr_fixed;
use crate::testing::{Fixture, GuestRun, is_intr};

const ICR: u64 = 0x830;

altinj_ktest::suite! {
    fn ipi_to_an_announced_ap_is_delivered_exactly_once_when_its_engine_starts() {
        let mut f: Fixture<4> = Fixture::new();
        f.create(0).unwrap();
        f.shared[3].announce(&Fixture::<4>::config(3));
        assert!(f.shared[3].present());
        f.write_msr(0, ICR, icr_fixed(3, 0x61)).unwrap();
        assert!(f.shared[3].mailbox().outstanding());
        // Kicked at its host APIC ID, like any idle vCPU.
        assert_eq!(f.platform.hv_ipis.count(), 1);
        // The AP's own CPU creates its engine: the post is kept.
        f.create(3).unwrap();
        let d = f.cycle(3, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x61));
        f.write_msr(3, 0x80B, 0).unwrap();
        let d = f.cycle(3, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, None);
        assert!(f.engine(3).unwrap().apic().irr().is_empty());
        assert!(f.engine(3).unwrap().apic().isr().is_empty());
    }

    fn nmi_to_an_announced_ap_is_delivered_when_its_engine_starts() {
        let mut f: Fixture<4> = Fixture::new();
        f.create(0).unwrap();
        f.shared[2].announce(&Fixture::<4>::config(2));
        f.write_msr(0, ICR, (2u64 << 32) | (0b100 << 8)).unwrap();
        f.create(2).unwrap();
        let d = f.cycle(2, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(EventInj::nmi()));
    }

    fn announced_ap_takes_broadcasts() {
        let mut f: Fixture<4> = Fixture::new();
        f.create(0).unwrap();
        f.shared[1].announce(&Fixture::<4>::config(1));
        // Fixed, all excluding self.
        f.write_msr(0, ICR, (0b11 << 18) | 0xFC).unwrap();
        assert!(f.shared[1].mailbox().outstanding());
        assert!(!f.shared[2].mailbox().outstanding());
        f.create(1).unwrap();
        let d = f.cycle(1, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0xFC));
    }

    fn announced_ap_that_comes_up_without_emulation_is_withdrawn() {
        let mut f: Fixture<4> = Fixture::new();
        f.create(0).unwrap();
        let mut config = Fixture::<4>::config(3);
        f.shared[3].announce(&config);
        f.write_msr(0, ICR, icr_fixed(3, 0x61)).unwrap();
        config.emulate = false;
        f.create_with(3, config).unwrap();
        assert!(!f.shared[3].present());
        assert!(!f.shared[3].mailbox().outstanding());
        f.write_msr(0, ICR, icr_fixed(3, 0x62)).unwrap();
        assert!(!f.shared[3].mailbox().outstanding());
    }

    fn announcing_without_emulation_leaves_the_slot_absent() {
        let f: Fixture<4> = Fixture::new();
        let mut config = Fixture::<4>::config(2);
        config.emulate = false;
        f.shared[2].announce(&config);
        assert!(!f.shared[2].present());
    }
}
