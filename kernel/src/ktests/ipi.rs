//! Cross-vCPU delivery: posting, kicks, broadcast, late APs, refusals.

use core::sync::atomic::Ordering;

use altinj_vmsa::{EventInj, RFLAGS_IF, VmsaAccess, VmsaPage};

use super::{four_vcpus, icr_fixed};
use crate::engine::{Env, VcpuEngine};
use crate::fabric::{Fabric, VcpuShared};
use crate::platform::{
    DEFAULT_NOTIFICATION_VECTOR, DisableAiRequest, DoorbellRequest, NoTimer, Platform,
    PlatformError, forward_icr, notification_icr, notification_icr_all_but_self,
    notification_icr_cluster,
};
use crate::protocol::{ApicCall, ResultCode, configure};
use crate::testing::{Fixture, GuestRun, MockPlatform, hw_run, is_intr};

/// A mock platform whose disable-AI call first posts `vector` into `slot`'s
/// mailbox: a sender on another CPU racing with the hand-back, after its
/// first drain and before the mailbox is closed.
struct RacingPlatform<'a> {
    mock: MockPlatform,
    slot: &'a VcpuShared,
    vector: u8,
}

impl Platform for RacingPlatform<'_> {
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError> {
        self.mock.hv_ipi(icr)
    }
    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError> {
        self.mock.specific_eoi(vmpl, vector)
    }
    fn disable_alternate_injection(&self, request: DisableAiRequest) -> Result<(), PlatformError> {
        let _ = self.slot.mailbox().post(self.vector);
        let _ = self.slot.mailbox().post_nmi();
        self.mock.disable_alternate_injection(request)
    }
    fn configure_notification_vector(&self, vector: u8) -> Result<(), PlatformError> {
        self.mock.configure_notification_vector(vector)
    }
    fn doorbell_page(&self, request: DoorbellRequest) -> Result<u64, PlatformError> {
        self.mock.doorbell_page(request)
    }
    fn now(&self) -> u64 {
        self.mock.now()
    }
    fn has_timer(&self) -> bool {
        self.mock.has_timer()
    }
    fn arm_timer(&self, deadline: Option<u64>) -> Result<(), NoTimer> {
        self.mock.arm_timer(deadline)
    }
}

/// Four vCPUs with vCPU 1's APIC handed back to the host.
fn vcpu_1_handed_back() -> Fixture<4> {
    let mut f = four_vcpus();
    let r = f
        .call(1, ApicCall::Configure(configure::DEREGISTER))
        .unwrap();
    assert_eq!(r.code, ResultCode::Success);
    assert!(f.shared[1].handed_back());
    f.platform.hv_ipis.clear();
    f
}

const ICR: u64 = 0x830;

altinj_ktest::suite! {
    fn ipi_to_a_running_vcpu_is_posted_and_kicks_it() {
        let mut f = four_vcpus();
        f.before_run(1).unwrap();
        assert!(f.shared[1].running());
        let r = f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert!(f.shared[1].mailbox().outstanding());
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(f.platform.hv_ipis.last(), Some(notification_icr(1, DEFAULT_NOTIFICATION_VECTOR)));
        assert_eq!(f.engine(0).unwrap().counters().kicks_sent, 1);
        // The kick ends vCPU 1's run; its next run gets the vector.
        hw_run(f.vmsa(1).unwrap(), GuestRun::NORMAL);
        f.after_exit(1).unwrap();
        let d = f.cycle(1, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x61));
    }

    fn kick_is_suppressed_while_the_mailbox_is_not_empty() {
        let mut f = four_vcpus();
        f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        f.write_msr(0, ICR, icr_fixed(1, 0x62)).unwrap();
        f.write_msr(2, ICR, icr_fixed(1, 0x63)).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(f.engine(0).unwrap().counters().kicks_suppressed, 1);
        assert_eq!(f.engine(2).unwrap().counters().kicks_suppressed, 1);
        f.before_run(1).unwrap();
        let e = f.engine(1).unwrap();
        assert!(e.apic().isr().contains(0x63));
        assert!(e.apic().irr().contains(0x61) && e.apic().irr().contains(0x62));
        // Drained: the next post kicks again.
        f.write_msr(0, ICR, icr_fixed(1, 0x64)).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 2);
    }

    fn broadcast_excluding_self_reaches_every_other_vcpu() {
        let mut f = four_vcpus();
        f.write_msr(0, ICR, (3 << 18) | 0x70).unwrap();
        assert!(!f.shared[0].mailbox().outstanding());
        for i in 1..4 {
            assert!(f.shared[i].mailbox().outstanding());
            f.before_run(i).unwrap();
            assert_eq!(f.vmsa(i).unwrap().event_inj(), EventInj::external_interrupt(0x70));
        }
        assert!(f.engine(0).unwrap().apic().irr().is_empty());
    }

    fn broadcast_waking_every_other_vcpu_is_one_shorthand_call() {
        let mut f = four_vcpus();
        f.write_msr(0, ICR, (3 << 18) | 0x70).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(f.platform.hv_ipis.last(), Some(notification_icr_all_but_self(DEFAULT_NOTIFICATION_VECTOR)));
        let c = f.engine(0).unwrap().counters();
        assert_eq!((c.kicks_sent, c.kick_calls), (3, 1));
    }

    fn broadcast_including_self_delivers_locally_without_the_mailbox() {
        let mut f = four_vcpus();
        f.write_msr(0, ICR, (2 << 18) | 0x70).unwrap();
        assert!(!f.shared[0].mailbox().outstanding());
        assert!(f.engine(0).unwrap().apic().irr().contains(0x70));
        assert_eq!(f.platform.hv_ipis.count(), 1);
    }

    fn broadcast_waking_some_vcpus_is_one_logical_call_per_cluster() {
        let mut f = four_vcpus();
        // vCPU 2's mailbox is not empty: its kick is suppressed.
        f.write_msr(0, ICR, icr_fixed(2, 0x71)).unwrap();
        f.platform.hv_ipis.clear();
        f.write_msr(0, ICR, (3 << 18) | 0x70).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(
            f.platform.hv_ipis.last(),
            Some(notification_icr_cluster(0, 0b1010, DEFAULT_NOTIFICATION_VECTOR))
        );
        let c = f.engine(0).unwrap().counters();
        assert_eq!((c.kicks_sent, c.kick_calls, c.kicks_suppressed), (3, 2, 1));
    }

    fn failed_batched_kick_marks_every_target_for_the_retry() {
        let mut f = four_vcpus();
        f.platform.fail_hv_ipi.store(true, Ordering::Release);
        f.write_msr(0, ICR, (3 << 18) | 0x70).unwrap();
        assert!((1..4).all(|i| f.shared[i].kick_failed()));
        assert_eq!(f.engine(0).unwrap().counters().platform_errors, 1);
        f.platform.fail_hv_ipi.store(false, Ordering::Release);
        f.before_run(0).unwrap();
        assert!((1..4).all(|i| !f.shared[i].kick_failed()));
        assert_eq!(f.platform.hv_ipis.count(), 3);
        for i in 1..4 {
            f.before_run(i).unwrap();
            assert_eq!(f.vmsa(i).unwrap().event_inj(), EventInj::external_interrupt(0x70));
        }
    }

    fn physical_broadcast_id_reaches_everyone() {
        let mut f = four_vcpus();
        f.write_msr(0, ICR, icr_fixed(u32::MAX, 0x70)).unwrap();
        assert!(f.engine(0).unwrap().apic().irr().contains(0x70));
        for i in 1..4 {
            assert!(f.shared[i].mailbox().outstanding());
        }
    }

    fn logical_destination_reaches_the_cluster_members() {
        let mut f = four_vcpus();
        // x2APIC cluster 0, members with IDs 1 and 2 (LDR bits 1 and 2).
        f.write_msr(0, ICR, (0b0110u64 << 32) | (1 << 11) | 0x70).unwrap();
        assert!(!f.shared[0].mailbox().outstanding());
        assert!(f.shared[1].mailbox().outstanding());
        assert!(f.shared[2].mailbox().outstanding());
        assert!(!f.shared[3].mailbox().outstanding());
        // Both kicked by one call.
        assert_eq!(f.platform.hv_ipis.last(), Some(notification_icr_cluster(0, 0b0110, DEFAULT_NOTIFICATION_VECTOR)));
        assert_eq!(f.platform.hv_ipis.count(), 1);
    }

    fn self_ipi_is_delivered_without_a_kick() {
        let mut f = four_vcpus();
        f.write_msr(0, 0x83F, 0x55).unwrap();
        assert!(f.engine(0).unwrap().apic().irr().contains(0x55));
        assert_eq!(f.platform.hv_ipis.count(), 0);
    }

    fn nmi_ipi_reaches_the_target_as_an_nmi() {
        let mut f = four_vcpus();
        f.write_msr(0, ICR, (2u64 << 32) | (0b100 << 8)).unwrap();
        let d = f.cycle(2, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, Some(EventInj::nmi()));
    }

    fn ap_created_late_gets_its_apic() {
        let mut f: Fixture<4> = Fixture::new();
        f.create(0).unwrap();
        assert!(!f.shared[3].present());
        // Before the AP exists nothing reaches it.
        f.write_msr(0, ICR, icr_fixed(3, 0x61)).unwrap();
        assert!(!f.shared[3].mailbox().outstanding());
        assert_eq!(f.platform.hv_ipis.count(), 0);
        f.create(3).unwrap();
        assert!(f.shared[3].present());
        assert_eq!(f.engine(3).unwrap().apic().id(), 3);
        f.write_msr(0, ICR, icr_fixed(3, 0x62)).unwrap();
        let d = f.cycle(3, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x62));
        // And its own APIC works: it can IPI back.
        f.write_msr(3, ICR, icr_fixed(0, 0x63)).unwrap();
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x63));
    }

    fn ipi_follows_a_changed_destination_address() {
        let mut f: Fixture<4> = Fixture::new();
        // Two vCPUs left in xAPIC mode (flat logical model).
        for i in [1usize, 2] {
            f.create_with(i, Fixture::<4>::config(i)).unwrap();
            f.write_msr(i, 0x80F, 0x1FF).unwrap();
        }
        f.write_msr(2, 0x831, 0x0400_0000).unwrap();
        f.write_msr(2, ICR, (1 << 11) | 0x70).unwrap();
        assert!(!f.shared[1].mailbox().outstanding());
        // vCPU 1 takes logical ID 0x04: the fabric sees it at once.
        f.write_msr(1, 0x80D, 0x0400_0000).unwrap();
        assert_eq!(f.shared[1].address().unwrap().ldr, 0x04);
        f.write_msr(2, ICR, (1 << 11) | 0x70).unwrap();
        assert!(f.shared[1].mailbox().outstanding());
    }

    fn guest_icr_init_sipi_smi_and_reserved_modes_are_accepted_and_dropped() {
        let mut f = four_vcpus();
        // SMI, reserved 011, INIT, start-up, reserved 111 (ExtINT).
        for mode in [0b010u64, 0b011, 0b101, 0b110, 0b111] {
            let icr = (1u64 << 32) | (mode << 8) | 0x40 | (1 << 14);
            let r = f.write_msr(0, ICR, icr).unwrap();
            assert_eq!(r.code, ResultCode::Success, "mode {mode}");
            assert_eq!(f.read_msr(0, ICR), Some(icr), "mode {mode}");
        }
        assert_eq!(f.engine(0).unwrap().counters().icrs_refused, 5);
        assert!(!f.shared[1].mailbox().outstanding());
        assert_eq!(f.platform.hv_ipis.count(), 0);
    }

    fn guest_icr_lowest_priority_reaches_only_the_lowest_matching_apic_id() {
        let mut f = four_vcpus();
        // All excluding self from vCPU 2: vCPUs 0, 1 and 3 match; 0 gets it.
        let r = f.write_msr(2, ICR, (3 << 18) | (0b001 << 8) | 0x40).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert!(f.shared[0].mailbox().outstanding());
        assert!(!f.shared[1].mailbox().outstanding() && !f.shared[3].mailbox().outstanding());
        assert_eq!(f.platform.hv_ipis.count(), 1);
        // Logical cluster 0, IDs 1 and 3: vCPU 1 alone.
        let r = f.write_msr(2, ICR, (0b1010u64 << 32) | (1 << 11) | (0b001 << 8) | 0x41).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert!(f.shared[1].mailbox().outstanding() && !f.shared[3].mailbox().outstanding());
        assert_eq!(f.engine(2).unwrap().counters().ipis_sent, 2);
    }

    fn failed_kick_is_counted_not_fatal() {
        let mut f = four_vcpus();
        f.platform.fail_hv_ipi.store(true, core::sync::atomic::Ordering::Release);
        let r = f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert_eq!(f.engine(0).unwrap().counters().platform_errors, 1);
        // The vector still waits in the mailbox for vCPU 1's next run.
        f.before_run(1).unwrap();
        assert!(f.engine(1).unwrap().apic().isr().contains(0x61));
        let _ = f.call(1, ApicCall::QueryFeatures);
    }

    fn ipi_to_a_handed_back_vcpu_is_forwarded_to_the_host() {
        let mut f = vcpu_1_handed_back();
        let r = f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(f.platform.hv_ipis.last(), Some(forward_icr(1, 0x61, false)));
        assert_eq!(f.platform.hv_ipis.last(), Some((1 << 32) | 0x61));
        assert!(!f.shared[1].mailbox().outstanding());
        let c = f.engine(0).unwrap().counters();
        assert_eq!(c.ipis_forwarded, 1);
        assert_eq!(c.kicks_sent, 0);
        // An NMI IPI goes to the host as an NMI.
        f.write_msr(0, ICR, (1u64 << 32) | (0b100 << 8)).unwrap();
        assert_eq!(f.platform.hv_ipis.last(), Some((1u64 << 32) | (0b100 << 8)));
        assert_eq!(f.engine(0).unwrap().counters().ipis_forwarded, 2);
    }

    fn broadcast_reaches_a_handed_back_vcpu_through_the_host() {
        let mut f = vcpu_1_handed_back();
        f.write_msr(0, ICR, (3 << 18) | 0x70).unwrap();
        // vCPUs 2 and 3 kicked (one call for their cluster), vCPU 1 forwarded.
        assert_eq!(f.platform.hv_ipis.count(), 2);
        assert!(f.platform.hv_ipis.contains(forward_icr(1, 0x70, false)));
        assert!(f.platform.hv_ipis.contains(notification_icr_cluster(0, 0b1100, DEFAULT_NOTIFICATION_VECTOR)));
        assert_eq!(f.engine(0).unwrap().counters().ipis_forwarded, 1);
    }

    fn post_racing_with_the_hand_back_reaches_the_host() {
        let shared = [const { VcpuShared::new() }; 2];
        let vm = crate::VmShared::new();
        let fabric = Fabric::new(&shared, &vm);
        let platform = RacingPlatform { mock: MockPlatform::new(), slot: &shared[0], vector: 0x66 };
        let doorbell = altinj_doorbell::DoorbellPage::new();
        let env = Env::new(&platform, fabric, &doorbell);
        let mut vmsa = VmsaPage::new();
        vmsa.set_rflags(RFLAGS_IF);
        let mut engine = VcpuEngine::new(Fixture::<2>::config(0), fabric).unwrap();
        engine.write_register(&env, 0x1B, 0xFEE0_0000 | (3 << 10) | (1 << 8)).unwrap();
        engine.write_register(&env, 0x80F, 0x1FF).unwrap();
        let outcome = engine.handle_apic_call(&env, ApicCall::Configure(configure::DEREGISTER));
        let r = engine.finish_apic_call(&env, &mut vmsa, outcome);
        assert_eq!(r.code, ResultCode::Success);
        // The post that landed after the final drain, before the close, was
        // forwarded by the owner; nothing is left in the closed mailbox.
        assert!(platform.mock.hv_ipis.contains(forward_icr(0, 0x66, false)));
        assert!(platform.mock.hv_ipis.contains(forward_icr(0, 0, true)));
        assert_eq!(engine.counters().ipis_forwarded, 2);
        assert!(shared[0].handed_back());
        assert!(!shared[0].mailbox().outstanding());
        assert!(shared[0].mailbox().drain().is_empty());
    }

    fn failed_kick_is_retried_by_the_next_post() {
        let mut f = four_vcpus();
        f.platform.fail_hv_ipi.store(true, Ordering::Release);
        f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 0);
        assert!(f.shared[1].kick_failed());
        assert!(f.shared[1].mailbox().outstanding());
        f.platform.fail_hv_ipi.store(false, Ordering::Release);
        // ON is still set, so this post alone would not kick: the mark does.
        f.write_msr(2, ICR, icr_fixed(1, 0x62)).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(f.platform.hv_ipis.last(), Some(notification_icr(1, DEFAULT_NOTIFICATION_VECTOR)));
        assert!(!f.shared[1].kick_failed());
        let c = f.engine(2).unwrap().counters();
        assert_eq!((c.kick_retries, c.kicks_sent, c.kicks_suppressed), (1, 1, 0));
        // Further posts ride on that kick.
        f.write_msr(2, ICR, icr_fixed(1, 0x63)).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
        f.before_run(1).unwrap();
        let e = f.engine(1).unwrap();
        assert!(e.apic().isr().contains(0x63));
        assert!(e.apic().irr().contains(0x61) && e.apic().irr().contains(0x62));
    }

    fn failed_kick_is_retried_at_the_senders_next_run() {
        let mut f = four_vcpus();
        f.platform.fail_hv_ipi.store(true, Ordering::Release);
        f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        f.before_run(0).unwrap();
        // Still failing: marked again, retried again later.
        assert!(f.shared[1].kick_failed());
        assert_eq!(f.engine(0).unwrap().counters().platform_errors, 2);
        hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        f.platform.fail_hv_ipi.store(false, Ordering::Release);
        f.before_run(0).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
        assert_eq!(f.platform.hv_ipis.last(), Some(notification_icr(1, DEFAULT_NOTIFICATION_VECTOR)));
        assert!(!f.shared[1].kick_failed());
        assert_eq!(f.engine(0).unwrap().counters().kick_retries, 2);
        // Nothing left to retry: the next run sends nothing.
        hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        f.before_run(0).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
    }

    fn target_drain_cancels_the_retry_of_a_failed_kick() {
        let mut f = four_vcpus();
        f.platform.fail_hv_ipi.store(true, Ordering::Release);
        f.write_msr(0, ICR, icr_fixed(1, 0x61)).unwrap();
        f.platform.fail_hv_ipi.store(false, Ordering::Release);
        // vCPU 1 exits for another reason and drains its mailbox.
        let d = f.cycle(1, GuestRun::NORMAL).unwrap();
        assert!(is_intr(d.event, 0x61));
        assert!(!f.shared[1].kick_failed());
        f.before_run(0).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 0);
        // And the next post into the empty mailbox kicks normally.
        f.write_msr(0, ICR, icr_fixed(1, 0x62)).unwrap();
        assert_eq!(f.platform.hv_ipis.count(), 1);
    }
}
