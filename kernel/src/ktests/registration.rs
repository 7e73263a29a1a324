//! The VM-wide APIC registration count (spec §5 CONFIGURE): one count for
//! every vCPU, lock-free; at 0 a deregister or query hands back the calling
//! vCPU only, and that vCPU's protocol is gone.

use super::{VMPL, four_vcpus};
use crate::protocol::{ApicCall, CallResult, ResultCode, configure};
use crate::testing::{Fixture, GuestRun, is_intr};

fn configure(f: &mut Fixture<4>, i: usize, op: u64) -> CallResult {
    f.call(i, ApicCall::Configure(op)).unwrap()
}

altinj_ktest::suite! {
    fn registration_count_is_shared_by_all_vcpus() {
        let mut f = four_vcpus();
        assert_eq!(configure(&mut f, 0, configure::REGISTER).rcx, Some(2));
        assert_eq!(configure(&mut f, 1, configure::QUERY).rcx, Some(2));
        assert_eq!(configure(&mut f, 2, configure::DEREGISTER).rcx, Some(1));
        assert_eq!(configure(&mut f, 3, configure::QUERY).rcx, Some(1));
        assert_eq!(f.platform.disable_ai.count(), 0);
    }

    fn register_fails_once_the_vm_count_is_zero() {
        let mut f = four_vcpus();
        assert_eq!(configure(&mut f, 0, configure::DEREGISTER).code, ResultCode::Success);
        let r = configure(&mut f, 1, configure::REGISTER);
        assert_eq!(r.code, ResultCode::CannotRegister);
        // Nothing changed on the calling vCPU.
        assert!(f.shared[1].present());
        assert_eq!(f.platform.disable_ai.count(), 1);
    }

    fn deregister_to_zero_hands_back_only_the_calling_vcpu() {
        let mut f = four_vcpus();
        assert_eq!(configure(&mut f, 0, configure::REGISTER).rcx, Some(2));
        // 2 -> 1: nobody is handed back.
        assert_eq!(configure(&mut f, 1, configure::DEREGISTER).rcx, Some(1));
        assert!(f.shared[1].present());
        // 1 -> 0: vCPU 0 alone.
        assert_eq!(configure(&mut f, 0, configure::DEREGISTER).rcx, Some(0));
        assert!(!f.shared[0].present());
        for i in 1..4 {
            assert!(f.shared[i].present(), "vCPU {i}");
        }
        // The others are still emulated: they still get their interrupts.
        f.doorbell(1).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        assert!(is_intr(f.cycle(1, GuestRun::NORMAL).unwrap().event, 0x41));
        // At 0 a deregister hands back its caller (and the count stays 0).
        assert_eq!(configure(&mut f, 1, configure::DEREGISTER).rcx, Some(0));
        assert!(!f.shared[1].present() && f.shared[2].present());
        assert_eq!(f.platform.disable_ai.count(), 2);
    }

    fn query_at_zero_hands_back_the_calling_vcpu() {
        let mut f = four_vcpus();
        configure(&mut f, 0, configure::DEREGISTER);
        let r = configure(&mut f, 2, configure::QUERY);
        assert_eq!((r.code, r.rcx), (ResultCode::Success, Some(0)));
        assert!(!f.shared[2].present());
        assert!(f.shared[1].present() && f.shared[3].present());
        assert_eq!(f.platform.disable_ai.count(), 2);
    }

    fn every_protocol_call_after_hand_back_is_unsupported_protocol() {
        let mut f = four_vcpus();
        configure(&mut f, 0, configure::DEREGISTER);
        for call in [
            ApicCall::QueryFeatures,
            ApicCall::Configure(configure::QUERY),
            ApicCall::Configure(configure::REGISTER),
            ApicCall::Configure(configure::DEREGISTER),
            ApicCall::Configure(7),
            ApicCall::ReadRegister { msr: 0x808 },
            ApicCall::WriteRegister { msr: 0x808, value: 0 },
            ApicCall::ConfigureVector(0x141),
            ApicCall::Unknown(9),
        ] {
            assert_eq!(f.call(0, call).unwrap().code, ResultCode::UnsupportedProtocol, "{call:?}");
        }
        assert_eq!(f.platform.disable_ai.count(), 1);
    }

    fn failed_hand_back_is_retried_by_the_next_deregister() {
        let mut f = four_vcpus();
        f.platform.fail_disable_ai.store(true, core::sync::atomic::Ordering::Release);
        assert_eq!(configure(&mut f, 0, configure::DEREGISTER).code, ResultCode::InvalidRequest);
        // Still emulated; the count stays 0, so register is refused.
        assert!(f.shared[0].present());
        assert_eq!(configure(&mut f, 1, configure::REGISTER).code, ResultCode::CannotRegister);
        f.platform.fail_disable_ai.store(false, core::sync::atomic::Ordering::Release);
        let r = configure(&mut f, 0, configure::DEREGISTER);
        assert_eq!((r.code, r.rcx), (ResultCode::Success, Some(0)));
        assert!(!f.shared[0].present() && f.shared[1].present());
    }
}
