//! The building blocks: mailbox, fabric, protocol decoding, registration,
//! NMI state, counters.

use altinj_apic::{ApicAddress, ApicMode, Destination, DestinationFormat};

use crate::fabric::{Fabric, VcpuShared, VmShared, pack_address, unpack_address, x2apic_ldr};
use crate::mailbox::{Mailbox, Post};
use crate::nmi::{NmiExit, NmiState, NmiVia};
use crate::platform::{
    DisableAiRequest, DoorbellRequest, Platform, notification_icr, specific_eoi_info,
};
use crate::protocol::{ApicCall, CallRegs, ResultCode, configure};
use crate::registration::{ConfigureStep, RegistrationCount};

/// VM-wide state for the fabric tests (the registration count is unused).
static VM: VmShared = VmShared::new();

altinj_ktest::suite! {
    fn mailbox_close_takes_what_is_left_and_later_posts_go_back_to_the_sender() {
        let mb = Mailbox::new();
        assert_eq!(mb.post(0x40), Post::Kick);
        assert_eq!(mb.post(0xF0), Post::Covered);
        mb.post_nmi();
        let d = mb.close();
        assert!(d.contains(0x40) && d.contains(0xF0) && d.nmi);
        assert!(mb.closed());
        for v in [0x40u8, 0x41, 0xF0, 0xF1] {
            assert_eq!(mb.post(v), Post::Closed, "vector {v:#x}");
        }
        assert_eq!(mb.post_nmi(), Post::Closed);
        // Illegal vectors are never posted, closed or not.
        assert_eq!(mb.post(5), Post::Covered);
        assert!(mb.drain().is_empty());
        assert!(mb.close().is_empty());
    }

    fn mailbox_reopen_reopens_a_closed_mailbox_empty() {
        let mb = Mailbox::new();
        mb.close();
        assert_eq!(mb.post(0xF0), Post::Closed);
        mb.reopen();
        assert!(!mb.closed() && !mb.outstanding());
        assert_eq!(mb.post(0x41), Post::Kick);
        let d = mb.drain();
        assert_eq!(d.iter().count(), 1);
        assert!(d.contains(0x41));
    }

    fn mailbox_reopen_keeps_a_post_in_flight() {
        let mb = Mailbox::new();
        mb.close();
        // A sender set 0x31's bit (PIR word 1) and is preempted before its
        // word-0 RMW; the owner's engine is created again meanwhile.
        assert!(mb.post_first_step(0x31));
        mb.reopen();
        assert_eq!(mb.post_second_step(0x31), Post::Kick);
        assert!(mb.drain().contains(0x31));
    }

    fn mailbox_first_post_into_an_empty_mailbox_asks_for_a_kick() {
        let mb = Mailbox::new();
        assert!(mb.post(0x40).kick());
        assert!(mb.outstanding());
    }

    fn mailbox_posts_before_a_drain_need_no_further_kick() {
        let mb = Mailbox::new();
        assert!(mb.post(0x40).kick());
        assert!(!mb.post(0x41).kick());
        assert!(!mb.post_nmi().kick());
    }

    fn mailbox_drain_takes_every_vector_and_rearms_the_kick() {
        let mb = Mailbox::new();
        for v in [32u8, 63, 64, 127, 128, 255] {
            mb.post(v);
        }
        mb.post_nmi();
        let d = mb.drain();
        assert_eq!(d.iter().count(), 6);
        for v in [32u8, 63, 64, 127, 128, 255] {
            assert!(d.contains(v));
        }
        assert!(d.nmi);
        assert!(!mb.outstanding());
        assert!(mb.drain().is_empty());
        assert!(mb.post(0x50).kick());
    }

    fn mailbox_carries_every_legal_vector_and_no_illegal_one() {
        let mb = Mailbox::new();
        for v in 0..16u8 {
            assert!(!mb.post(v).kick());
        }
        assert!(!mb.outstanding());
        for v in 16..=255u8 {
            mb.post(v);
        }
        let d = mb.drain();
        assert_eq!(d.iter().count(), 240);
        assert_eq!(d.iter().next(), Some(16));
        assert_eq!(d.iter().last(), Some(255));
        assert!(!d.nmi);
        for v in 0..16u8 {
            assert!(!d.contains(v));
        }
    }

    fn mailbox_repeated_vector_coalesces_without_a_kick() {
        let mb = Mailbox::new();
        assert!(mb.post(0x40).kick());
        assert!(!mb.post(0x40).kick());
        assert!(!mb.post(0xFD).kick());
        assert!(!mb.post(0xFD).kick());
        let d = mb.drain();
        assert_eq!(d.iter().count(), 2);
        assert!(mb.post(0xFD).kick());
    }

    fn mailbox_nmis_collapse_into_one() {
        let mb = Mailbox::new();
        mb.post_nmi();
        mb.post_nmi();
        let d = mb.drain();
        assert!(d.nmi);
        assert_eq!(d.iter().count(), 0);
        assert!(!mb.drain().nmi);
    }

    fn address_packing_round_trips_x2apic_and_xapic() {
        let x2 = ApicAddress { id: 0x1_0023, ldr: x2apic_ldr(0x1_0023), format: DestinationFormat::Cluster, mode: ApicMode::X2Apic };
        assert_eq!(unpack_address(pack_address(&x2)), Some(x2));
        let xa = ApicAddress { id: 5, ldr: 0x20, format: DestinationFormat::Flat, mode: ApicMode::XApic };
        assert_eq!(unpack_address(pack_address(&xa)), Some(xa));
        let xc = ApicAddress { id: 5, ldr: 0x31, format: DestinationFormat::Cluster, mode: ApicMode::XApic };
        assert_eq!(unpack_address(pack_address(&xc)), Some(xc));
        assert_eq!(unpack_address(0), None);
    }

    fn fabric_skips_absent_slots() {
        let slots = [const { VcpuShared::new() }; 4];
        let fabric = Fabric::new(&slots, &VM);
        let mut hits = 0;
        fabric.for_each_target(0, 0, &Destination::AllIncludingSelf, |_, _| hits += 1);
        assert_eq!(hits, 0);
        assert!(!slots[1].present());
    }

    fn fabric_physical_id_found_by_scan_when_it_differs_from_the_index() {
        let slots = [const { VcpuShared::new() }; 4];
        let addr = ApicAddress { id: 9, ldr: x2apic_ldr(9), format: DestinationFormat::Cluster, mode: ApicMode::X2Apic };
        slots[2].activate(9, &addr);
        let fabric = Fabric::new(&slots, &VM);
        let mut found = [false; 4];
        fabric.for_each_target(0, 0, &Destination::Physical { id: 9, x2apic: true }, |i, _| found[i] = true);
        assert_eq!(found, [false, false, true, false]);
    }

    fn fabric_disabled_apic_receives_nothing() {
        let slots = [const { VcpuShared::new() }; 2];
        let addr = ApicAddress { id: 1, ldr: 0, format: DestinationFormat::Flat, mode: ApicMode::Disabled };
        slots[1].activate(1, &addr);
        let fabric = Fabric::new(&slots, &VM);
        let mut hits = 0;
        fabric.for_each_target(0, 0, &Destination::AllExcludingSelf, |_, _| hits += 1);
        fabric.for_each_target(0, 0, &Destination::Physical { id: 1, x2apic: true }, |_, _| hits += 1);
        assert_eq!(hits, 0);
    }

    fn protocol_call_is_decoded_from_rax_rcx_rdx() {
        let regs = CallRegs { rax: (3 << 32) | 3, rcx: 0x808, rdx: 0x20, r8: 0 };
        assert!(regs.is_apic_protocol());
        assert_eq!(ApicCall::decode(&regs), ApicCall::WriteRegister { msr: 0x808, value: 0x20 });
        let regs = CallRegs { rax: (3 << 32) | 9, ..regs };
        assert_eq!(ApicCall::decode(&regs), ApicCall::Unknown(9));
        let regs = CallRegs { rax: (1 << 32) | 3, ..regs };
        assert!(!regs.is_apic_protocol());
    }

    fn result_codes_have_the_spec_values() {
        assert_eq!(ResultCode::Success.value(), 0);
        assert_eq!(ResultCode::Incomplete.value(), 0x8000_0000);
        assert_eq!(ResultCode::UnsupportedProtocol.value(), 0x8000_0001);
        assert_eq!(ResultCode::UnsupportedCall.value(), 0x8000_0002);
        assert_eq!(ResultCode::InvalidAddress.value(), 0x8000_0003);
        assert_eq!(ResultCode::InvalidFormat.value(), 0x8000_0004);
        assert_eq!(ResultCode::InvalidParameter.value(), 0x8000_0005);
        assert_eq!(ResultCode::InvalidRequest.value(), 0x8000_0006);
        assert_eq!(ResultCode::Busy.value(), 0x8000_0007);
        assert_eq!(ResultCode::CannotRegister.value(), 0x8000_1000);
    }

    fn ghcb_encodings_match_the_spec() {
        assert_eq!(specific_eoi_info(2, 0x41), 0x2_0041);
        let req = DisableAiRequest { vmpl: 2, tpr: 0x30, int_shadow: true, interrupts_enabled: true };
        assert_eq!(req.exit_info1(), (2 << 16) | (0x30 << 8) | 0b11);
        assert_eq!(notification_icr(7, 0x50), (7 << 32) | 0x50);
        assert_eq!(DoorbellRequest::Set(0x1000).exit_info(), (1, 0x1000));
        assert_eq!(DoorbellRequest::Clear.exit_info(), (3, 0));
    }

    fn registration_counts_up_and_down_from_the_boot_reference() {
        let r = RegistrationCount::new();
        assert_eq!(r.configure(configure::QUERY), Ok(ConfigureStep::Count(1)));
        assert_eq!(r.configure(configure::REGISTER), Ok(ConfigureStep::Count(2)));
        assert_eq!(r.configure(configure::DEREGISTER), Ok(ConfigureStep::Count(1)));
        assert_eq!(r.configure(configure::DEREGISTER), Ok(ConfigureStep::HandBack));
        assert_eq!(r.count(), 0);
        // At 0: register fails, deregister and query hand back, never below 0.
        assert_eq!(r.configure(configure::REGISTER), Err(ResultCode::CannotRegister));
        assert_eq!(r.configure(configure::DEREGISTER), Ok(ConfigureStep::HandBack));
        assert_eq!(r.configure(configure::QUERY), Ok(ConfigureStep::HandBack));
        assert_eq!(r.count(), 0);
    }

    fn registration_rejects_unknown_operations() {
        let r = RegistrationCount::new();
        assert_eq!(r.configure(3), Err(ResultCode::InvalidParameter));
        assert_eq!(r.configure(u64::MAX), Err(ResultCode::InvalidParameter));
        assert_eq!(r.count(), 1);
    }

    fn nmi_state_one_pending_one_in_service_rest_collapse() {
        let mut n = NmiState::default();
        assert!(n.request());
        assert!(!n.request());
        n.mark_presented(NmiVia::EventInj);
        assert!(!n.request());
        assert!(n.exit_outcome(NmiExit::Taken));
        assert!(n.in_service());
        assert!(n.request());
        assert!(!n.request());
        // In service blocks a second EVENTINJ NMI, not a V_NMI.
        assert_eq!(n.choose(false, false, false, false, true), None);
        assert_eq!(n.choose(true, false, false, false, false), Some(NmiVia::VNmi));
    }

    fn nmi_state_completion_needs_a_later_exit_with_the_mask_clear() {
        let mut n = NmiState::default();
        n.request();
        n.mark_presented(NmiVia::VNmi);
        n.exit_begin(false);
        n.exit_outcome(NmiExit::Taken);
        n.exit_begin(true);
        assert!(n.in_service());
        n.exit_begin(false);
        assert!(!n.in_service());
    }

    fn vcpu_setup_registers_the_doorbell_then_the_notification_vector() {
        let p = crate::testing::MockPlatform::new();
        let gpa = crate::platform::setup_vcpu(&p, crate::platform::DoorbellGpa::At(0x8000), 0x50).unwrap();
        assert_eq!(gpa, 0x8000);
        assert_eq!(p.doorbell_calls.count(), 1);
        assert_eq!(p.doorbell_calls.last(), Some(crate::platform::ghcb::DOORBELL_SET));
        assert_eq!(p.notification_vectors.last(), Some(0x50));
        let gpa = crate::platform::setup_vcpu(&p, crate::platform::DoorbellGpa::HostPreferred, 0x50).unwrap();
        assert_eq!(gpa, crate::testing::PREFERRED_DOORBELL_GPA);
        assert_eq!(p.doorbell_page(crate::platform::DoorbellRequest::Query), Ok(gpa));
        assert_eq!(p.doorbell_calls.get(1), Some(crate::platform::ghcb::DOORBELL_GET_PREFERRED));
        assert_eq!(p.doorbell_calls.get(2), Some(crate::platform::ghcb::DOORBELL_SET));
    }

    fn counters_accumulate_adds_every_field_saturating() {
        let one = crate::Counters { kicks_sent: 2, timer_early: 3, protocol_calls: u64::MAX, ..Default::default() };
        let mut total = crate::Counters { kicks_sent: 1, protocol_calls: 1, ..Default::default() };
        total.accumulate(&one);
        assert_eq!((total.kicks_sent, total.timer_early, total.protocol_calls), (3, 3, u64::MAX));
        assert_eq!(total.recalled, 0);
    }

    fn vcpu_setup_without_a_host_preferred_gpa_registers_nothing() {
        let p = crate::testing::MockPlatform::new();
        p.no_preferred_doorbell.store(true, core::sync::atomic::Ordering::Release);
        let r = crate::platform::setup_vcpu(&p, crate::platform::DoorbellGpa::HostPreferred, 0x50);
        assert_eq!(r, Err(crate::platform::PlatformError::ghcb(1, 0)));
        assert_eq!(p.doorbell_calls.count(), 1);
        assert_eq!(p.notification_vectors.count(), 0);
        // The SVSM's own page works on that host.
        let gpa = crate::platform::setup_vcpu(&p, crate::platform::DoorbellGpa::At(0x9000), 0x50);
        assert_eq!(gpa, Ok(0x9000));
    }

    fn engine_refuses_a_guest_vmpl_without_a_descriptor() {
        let slots = [const { VcpuShared::new() }; 1];
        for vmpl in [0u8, 4] {
            let config = crate::engine::EngineConfig {
                guest_vmpl: vmpl,
                ..crate::testing::Fixture::<1>::config(0)
            };
            let r = crate::engine::VcpuEngine::new(config, Fabric::new(&slots, &VM));
            assert_eq!(r.err(), Some(crate::engine::Fatal::BadVmpl));
        }
        assert!(!slots[0].present());
    }

    fn engine_state_fits_in_one_kibibyte() {
        assert!(core::mem::size_of::<crate::engine::VcpuEngine>() <= 1024);
        assert_eq!(core::mem::size_of::<VcpuShared>(), 128);
    }

    fn counters_saturate() {
        let mut c = 0u64;
        crate::counters::bump(&mut c);
        assert_eq!(c, 1);
        c = u64::MAX;
        crate::counters::bump(&mut c);
        assert_eq!(c, u64::MAX);
    }
}
