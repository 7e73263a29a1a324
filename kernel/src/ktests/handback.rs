//! The hand-back of one vCPU's APIC to the host (spec §5 CONFIGURE, §3
//! descriptor, §4 disable-AI): everything accepted reaches the host, the
//! VMSA lets the host inject again, and a failed attempt changes nothing.

use core::sync::atomic::Ordering;

use altinj_apic::Trigger;
use altinj_doorbell::{Descriptor, DescriptorStatus};
use altinj_vmsa::{ExitCode, SevFeatures, VmsaAccess};

use super::{VMPL, one_vcpu};
use crate::protocol::{ApicCall, ResultCode, configure};
use crate::testing::{Fixture, GuestRun};

fn deregister(f: &mut Fixture<4>) -> ResultCode {
    f.call(0, ApicCall::Configure(configure::DEREGISTER))
        .unwrap()
        .code
}

fn descriptor(f: &Fixture<4>) -> &Descriptor {
    f.doorbell(0).unwrap().descriptor(VMPL).unwrap()
}

/// (status, irr, isr) of the guest VMPL's descriptor.
fn snapshot(f: &Fixture<4>) -> (u32, [u32; 7], [u32; 8]) {
    let d = descriptor(f);
    (
        d.status.load(Ordering::Acquire),
        core::array::from_fn(|i| d.irr[i].load(Ordering::Acquire)),
        core::array::from_fn(|i| d.isr[i].load(Ordering::Acquire)),
    )
}

/// A run whose exit interrupts the delivery of EVENTINJ (it lands in
/// EXITINTINFO and is re-injected by `after_exit`).
fn interrupted_run(f: &mut Fixture<4>) {
    f.cycle(
        0,
        GuestRun {
            interrupt_delivery: true,
            exit: ExitCode::NPF,
            ..GuestRun::NORMAL
        },
    )
    .unwrap();
}

altinj_ktest::suite! {
    fn hand_back_clears_alternate_injection_in_the_vmsa() {
        let mut f = one_vcpu();
        let features = SevFeatures::SNP_ACTIVE | SevFeatures::ALTERNATE_INJECTION;
        f.vmsa(0).unwrap().set_sev_features(features);
        assert_eq!(deregister(&mut f), ResultCode::Success);
        assert_eq!(f.vmsa(0).unwrap().sev_features(), SevFeatures::SNP_ACTIVE);
    }

    fn hand_back_hands_a_machine_check_in_eventinj_to_the_host() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_mc(VMPL).unwrap();
        interrupted_run(&mut f);
        assert!(f.vmsa(0).unwrap().event_inj().valid());
        assert_eq!(deregister(&mut f), ResultCode::Success);
        assert_ne!(snapshot(&f).0 & DescriptorStatus::MC, 0);
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
    }

    fn hand_back_hands_a_pending_machine_check_to_the_host() {
        let mut f = one_vcpu();
        // 0x41's delivery is interrupted twice; the #MC posted meanwhile
        // waits for EVENTINJ.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        interrupted_run(&mut f);
        f.doorbell(0).unwrap().host().post_mc(VMPL).unwrap();
        interrupted_run(&mut f);
        assert!(f.engine(0).unwrap().machine_check_pending());
        assert_eq!(deregister(&mut f), ResultCode::Success);
        assert_ne!(snapshot(&f).0 & DescriptorStatus::MC, 0);
        assert!(!f.engine(0).unwrap().machine_check_pending());
    }

    fn failed_disable_ai_leaves_the_descriptor_as_it_was() {
        let mut f = one_vcpu();
        // 0x41 in service, 0x61 pending behind TPR.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        f.write_msr(0, 0x808, 0xF0).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x61).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        let before = snapshot(&f);
        f.platform.fail_disable_ai.store(true, Ordering::Release);
        assert_eq!(deregister(&mut f), ResultCode::InvalidRequest);
        assert_eq!(snapshot(&f), before);
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41) && e.apic().irr().contains(0x61));
    }

    fn hand_back_delivers_a_due_timer_expiry_to_the_host() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x83E, 0xB).unwrap(); // divide by 1
        f.write_msr(0, 0x832, 0xEF).unwrap(); // one-shot, vector 0xEF
        f.write_msr(0, 0x838, 1000).unwrap();
        // Due, but not polled before the guest deregisters.
        f.platform.set_now(1000);
        assert_eq!(deregister(&mut f), ResultCode::Success);
        // irr word 7 holds vectors 224-255: 0xEF is bit 15.
        assert_eq!(snapshot(&f).1[6], 1 << 15);
    }

    fn hand_back_gives_the_host_the_guest_timer() {
        let mut f = one_vcpu();
        f.write_msr(0, 0x83E, 0xB).unwrap(); // divide by 1
        f.write_msr(0, 0x832, 0xEF).unwrap(); // one-shot, vector 0xEF
        f.write_msr(0, 0x838, 1000).unwrap();
        f.platform.set_now(400);
        assert_eq!(deregister(&mut f), ResultCode::Success);
        let timer = f.platform.guest_timer().unwrap();
        assert_eq!(timer.lvt_timer, 0xEF);
        assert_eq!(timer.divide_config, 0xB);
        assert_eq!(timer.initial_count, 1000);
        assert_eq!(timer.current_count, 600);
        assert_eq!(timer.deadline, Some(1000));
    }

    fn hand_back_reports_vectors_16_to_30_it_cannot_hand_over() {
        let mut f = one_vcpu();
        f.vmsa(0).unwrap().set_rflags(2);
        {
            let (engine, _, _) = f.parts(0).unwrap();
            engine.apic_mut().request(20, Trigger::Edge);
        }
        assert_eq!(deregister(&mut f), ResultCode::Success);
        assert_eq!(f.engine(0).unwrap().counters().handback_vectors_lost, 1);
    }

    fn hand_back_keeps_both_instances_of_a_vector_in_flight() {
        let mut f = one_vcpu();
        // 0x41 is re-injected (in ISR and EVENTINJ); a second 0x41 is
        // posted by another vCPU and drained by the hand-back.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        interrupted_run(&mut f);
        f.shared[0].mailbox().post(0x41);
        assert_eq!(deregister(&mut f), ResultCode::Success);
        let (_, irr, isr) = snapshot(&f);
        // irr word 2 holds 64-95, isr word 2 holds 64-95: 0x41 is bit 1.
        assert_eq!(irr[1], 1 << 1);
        assert_eq!(isr[2], 1 << 1);
    }
}
