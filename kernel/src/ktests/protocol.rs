//! The SVSM APIC protocol (spec §5): calls, result codes, registration and
//! the hand-back to the host.

use core::sync::atomic::Ordering;

use altinj_doorbell::DescriptorStatus;
use altinj_vmsa::VmsaAccess;

use super::{VMPL, one_vcpu};
use crate::protocol::{ApicCall, ResultCode, configure, feature};
use crate::registration::Registration;
use crate::testing::{Fixture, GuestRun};

altinj_ktest::suite! {
    fn query_features_reports_timer_and_lazy_eoi() {
        let mut f = one_vcpu();
        let r = f.call(0, ApicCall::QueryFeatures).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert_eq!(r.rcx, Some(feature::TIMER | feature::LAZY_EOI));
    }

    fn unknown_call_is_unsupported_call() {
        let mut f = one_vcpu();
        let r = f.call(0, ApicCall::Unknown(5)).unwrap();
        assert_eq!(r.code, ResultCode::UnsupportedCall);
    }

    fn configure_reports_and_changes_the_registration_count() {
        let mut f = one_vcpu();
        assert_eq!(f.call(0, ApicCall::Configure(configure::QUERY)).unwrap().rcx, Some(1));
        assert_eq!(f.call(0, ApicCall::Configure(configure::REGISTER)).unwrap().rcx, Some(2));
        assert_eq!(f.call(0, ApicCall::Configure(configure::DEREGISTER)).unwrap().rcx, Some(1));
        assert_eq!(f.call(0, ApicCall::Configure(7)).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.platform.disable_ai.count(), 0);
    }

    fn read_and_write_register_go_to_the_apic() {
        let mut f = one_vcpu();
        assert_eq!(f.write_msr(0, 0x808, 0x20).unwrap().code, ResultCode::Success);
        assert_eq!(f.read_msr(0, 0x808), Some(0x20));
        assert_eq!(f.read_msr(0, 0x802), Some(0));
        assert_eq!(f.read_msr(0, 0x1B).unwrap() & (3 << 10), 3 << 10);
    }

    fn unknown_register_is_invalid_address() {
        let mut f = one_vcpu();
        let r = f.call(0, ApicCall::ReadRegister { msr: 0x80E }).unwrap();
        assert_eq!(r.code, ResultCode::InvalidAddress);
        let r = f.call(0, ApicCall::ReadRegister { msr: 0x1_0000_0808 }).unwrap();
        assert_eq!(r.code, ResultCode::InvalidAddress);
        let r = f.write_msr(0, 0xC000_0080, 0).unwrap();
        assert_eq!(r.code, ResultCode::InvalidAddress);
    }

    fn bad_register_access_is_invalid_parameter() {
        let mut f = one_vcpu();
        // Read-only register, write-only register, reserved bits.
        assert_eq!(f.write_msr(0, 0x802, 1).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.call(0, ApicCall::ReadRegister { msr: 0x80B }).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.write_msr(0, 0x808, 0x100).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.write_msr(0, 0x80B, 1).unwrap().code, ResultCode::InvalidParameter);
    }

    fn eoi_through_the_protocol_retires_the_highest_in_service_vector() {
        let mut f = one_vcpu();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x91).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(f.engine(0).unwrap().apic().isr().len(), 2);
        f.write_msr(0, 0x80B, 0).unwrap();
        let isr = *f.engine(0).unwrap().apic().isr();
        assert!(isr.contains(0x41) && !isr.contains(0x91));
    }

    fn xapic_mode_register_access_uses_the_mmio_layout() {
        let mut f: Fixture<4> = Fixture::new();
        f.create_with(0, Fixture::<4>::config(0)).unwrap();
        // Version register (0x30 in MMIO = MSR 0x803).
        let version = f.read_msr(0, 0x803).unwrap();
        assert_eq!(version, u64::from(f.engine(0).unwrap().apic().clone().read_mmio(0x30, 0).unwrap()));
        // An xAPIC register value above 32 bits is refused.
        assert_eq!(f.write_msr(0, 0x808, 1 << 32).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.write_msr(0, 0x808, 0x30).unwrap().code, ResultCode::Success);
        assert_eq!(f.engine(0).unwrap().apic().tpr(), 0x30);
    }

    fn configure_vector_checks_its_parameter() {
        let mut f = one_vcpu();
        assert_eq!(f.call(0, ApicCall::ConfigureVector(1 << 10)).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.call(0, ApicCall::ConfigureVector(0x100 | 20)).unwrap().code, ResultCode::InvalidParameter);
        assert_eq!(f.call(0, ApicCall::ConfigureVector(0x100 | 0x41)).unwrap().code, ResultCode::Success);
        assert_eq!(f.call(0, ApicCall::ConfigureVector(0x200)).unwrap().code, ResultCode::Success);
    }

    fn call_registers_come_from_and_go_to_the_vmsa() {
        let mut f = one_vcpu();
        {
            let vmsa = f.vmsa(0).unwrap();
            vmsa.set_rax((3 << 32) | 1);
            vmsa.set_rcx(configure::REGISTER);
        }
        let (engine, env, vmsa) = f.parts(0).unwrap();
        engine.handle_apic_call_in_vmsa(&env, vmsa);
        assert_eq!(vmsa.rax(), 0);
        assert_eq!(vmsa.rcx(), 2);
        vmsa.set_rax((3 << 32) | 2);
        vmsa.set_rcx(0x808);
        engine.handle_apic_call_in_vmsa(&env, vmsa);
        assert_eq!(vmsa.rax(), 0);
        assert_eq!(vmsa.rdx(), 0);
        vmsa.set_rax((4 << 32) | 2);
        engine.handle_apic_call_in_vmsa(&env, vmsa);
        assert_eq!(vmsa.rax(), ResultCode::UnsupportedProtocol.value());
    }

    fn vcpu_without_emulation_answers_unsupported_protocol() {
        let mut f: Fixture<4> = Fixture::new();
        let config = crate::engine::EngineConfig { emulate: false, ..Fixture::<4>::config(0) };
        f.create_with(0, config).unwrap();
        assert!(!f.shared[0].present());
        for call in [
            ApicCall::QueryFeatures,
            ApicCall::Configure(configure::REGISTER),
            ApicCall::ReadRegister { msr: 0x802 },
            ApicCall::WriteRegister { msr: 0x808, value: 0 },
            ApicCall::ConfigureVector(0x141),
        ] {
            assert_eq!(f.call(0, call).unwrap().code, ResultCode::UnsupportedProtocol);
        }
        // And injects nothing.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
    }

    fn deregistration_hands_the_apic_back_with_vector_31_and_the_nmi_flag() {
        let mut f = one_vcpu();
        // 0x41 in service, 31 and 0x90 pending (TPR blocks 0x90), one NMI posted.
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        f.write_msr(0, 0x808, 0xF0).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 31).unwrap();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x90).unwrap();
        f.cycle(0, GuestRun::NORMAL).unwrap();
        f.shared[0].mailbox().post_nmi();

        let r = f.call(0, ApicCall::Configure(configure::DEREGISTER)).unwrap();
        assert_eq!(r.code, ResultCode::Success);
        assert_eq!(r.rcx, Some(0));

        let desc = f.doorbell(0).unwrap().descriptor(VMPL).unwrap();
        let status = desc.status.load(Ordering::Acquire);
        assert_ne!(status & DescriptorStatus::VECTOR_31, 0);
        assert_ne!(status & DescriptorStatus::NMI, 0);
        assert_ne!(status & DescriptorStatus::MULTIPLE, 0);
        // irr word 3 holds vectors 128-159: 0x90 is bit 16.
        assert_eq!(desc.irr[3].load(Ordering::Acquire), 1 << 16);
        assert_eq!(desc.isr[2].load(Ordering::Acquire), 1 << 1);
        // Then disable-AI with VMPL, TPR, shadow and IF.
        assert_eq!(f.platform.disable_ai.count(), 1);
        assert_eq!(f.platform.disable_ai.last(), Some((u64::from(VMPL) << 16) | (0xF0 << 8) | 1));

        let e = f.engine(0).unwrap();
        assert_eq!(e.registration(), Registration::HandedBack);
        assert!(!f.shared[0].present());
        // Protocol 3 is gone on this vCPU (ktests::registration checks every call).
        assert_eq!(f.call(0, ApicCall::Configure(configure::QUERY)).unwrap().code, ResultCode::UnsupportedProtocol);
        // The engine no longer injects.
        f.before_run(0).unwrap();
        assert!(!f.vmsa(0).unwrap().event_inj().valid());
        assert!(!f.vmsa(0).unwrap().vintr_ctrl().busy());
    }

    fn failed_disable_ai_keeps_the_apic_emulated() {
        let mut f = one_vcpu();
        f.platform.fail_disable_ai.store(true, Ordering::Release);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.vmsa(0).unwrap().set_rflags(2);
        f.cycle(0, GuestRun::NORMAL).unwrap();
        let r = f.call(0, ApicCall::Configure(configure::DEREGISTER)).unwrap();
        assert_eq!(r.code, ResultCode::InvalidRequest);
        assert_eq!(f.engine(0).unwrap().registration(), Registration::On);
        assert!(f.shared[0].present());
        // The pending vector is neither lost nor duplicated.
        f.vmsa(0).unwrap().set_rflags(altinj_vmsa::RFLAGS_IF);
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert!(crate::testing::is_intr(d.event, 0x41));
        let d = f.cycle(0, GuestRun::NORMAL).unwrap();
        assert_eq!(d.event, None);
    }
}
