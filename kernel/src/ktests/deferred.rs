//! Protocol calls on copied-out registers (issue 11 item 6): no call needs
//! the VMSA except the CONFIGURE that hands the APIC back, which comes back
//! as a token the run loop completes with the VMSA.

use altinj_vmsa::{SevFeatures, VmsaAccess};

use super::{VMPL, four_vcpus, one_vcpu};
use crate::protocol::{ApicCall, CallOutcome, CallResult, ResultCode, configure};
use crate::registration::Registration;
use crate::testing::GuestRun;

altinj_ktest::suite! {
    fn register_calls_are_answered_without_the_vmsa() {
        let mut f = one_vcpu();
        let (engine, env, _) = f.parts(0).unwrap();
        let write = engine.handle_apic_call(&env, ApicCall::WriteRegister { msr: 0x808, value: 0x20 });
        assert_eq!(write, CallOutcome::Done(CallResult::SUCCESS));
        let read = engine.handle_apic_call(&env, ApicCall::ReadRegister { msr: 0x808 });
        assert_eq!(read, CallOutcome::Done(CallResult::rdx(0x20)));
        let count = engine.handle_apic_call(&env, ApicCall::Configure(configure::REGISTER));
        assert_eq!(count, CallOutcome::Done(CallResult::rcx(2)));
    }

    fn deregister_to_zero_defers_the_hand_back_until_it_is_completed() {
        let mut f = one_vcpu();
        f.vmsa(0).unwrap().set_sev_features(SevFeatures::SNP_ACTIVE | SevFeatures::ALTERNATE_INJECTION);
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        f.before_run(0).unwrap();
        let (engine, env, _) = f.parts(0).unwrap();
        let outcome = engine.handle_apic_call(&env, ApicCall::Configure(configure::DEREGISTER));
        let CallOutcome::HandBack(token) = outcome else { panic!("no hand-back: {outcome:?}") };
        // Nothing handed back yet: still emulated, no disable-AI, VMSA untouched.
        assert_eq!(engine.registration(), Registration::On);
        assert_eq!(f.platform.disable_ai.count(), 0);
        assert!(f.vmsa(0).unwrap().sev_features().contains(SevFeatures::ALTERNATE_INJECTION));
        let (engine, env, vmsa) = f.parts(0).unwrap();
        let r = engine.complete_hand_back(&env, vmsa, token);
        assert_eq!(r, CallResult::rcx(0));
        assert_eq!(engine.registration(), Registration::HandedBack);
        assert_eq!(f.platform.disable_ai.count(), 1);
        assert_eq!(f.vmsa(0).unwrap().sev_features(), SevFeatures::SNP_ACTIVE);
        // The vector presented in EVENTINJ went back with the writeback.
        let d = f.doorbell(0).unwrap().descriptor(VMPL).unwrap();
        assert_ne!(d.irr[1].load(core::sync::atomic::Ordering::Acquire) & (1 << 1), 0);
    }

    fn dropped_hand_back_token_keeps_the_vcpu_emulated_and_the_next_query_asks_again() {
        let mut f = one_vcpu();
        let (engine, env, _) = f.parts(0).unwrap();
        let dropped = engine.handle_apic_call(&env, ApicCall::Configure(configure::DEREGISTER));
        assert!(matches!(dropped, CallOutcome::HandBack(_)));
        drop(dropped);
        assert_eq!(f.engine(0).unwrap().registration(), Registration::On);
        f.cycle(0, GuestRun::NORMAL).unwrap();
        let r = f.call(0, ApicCall::Configure(configure::QUERY)).unwrap();
        assert_eq!(r, CallResult::rcx(0));
        assert_eq!(f.engine(0).unwrap().registration(), Registration::HandedBack);
    }

    fn hand_back_token_of_another_vcpu_is_refused() {
        let mut f = four_vcpus();
        let (engine, env, _) = f.parts(1).unwrap();
        let CallOutcome::HandBack(token) =
            engine.handle_apic_call(&env, ApicCall::Configure(configure::DEREGISTER))
        else {
            panic!("no hand-back")
        };
        let (engine, env, vmsa) = f.parts(0).unwrap();
        let r = engine.complete_hand_back(&env, vmsa, token);
        assert_eq!(r.code, ResultCode::InvalidRequest);
        assert_eq!(f.engine(0).unwrap().registration(), Registration::On);
        assert_eq!(f.engine(1).unwrap().registration(), Registration::On);
        assert_eq!(f.platform.disable_ai.count(), 0);
    }

    fn failed_deferred_hand_back_answers_invalid_request_and_keeps_the_apic() {
        let mut f = one_vcpu();
        f.platform.fail_disable_ai.store(true, core::sync::atomic::Ordering::Release);
        let r = f.call(0, ApicCall::Configure(configure::DEREGISTER)).unwrap();
        assert_eq!(r.code, ResultCode::InvalidRequest);
        assert_eq!(f.engine(0).unwrap().registration(), Registration::On);
        f.platform.fail_disable_ai.store(false, core::sync::atomic::Ordering::Release);
        let r = f.call(0, ApicCall::Configure(configure::QUERY)).unwrap();
        assert_eq!(r, CallResult::rcx(0));
        assert_eq!(f.engine(0).unwrap().registration(), Registration::HandedBack);
    }
}
