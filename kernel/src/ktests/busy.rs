//! The BUSY rule (spec §2): the engine writes the guest VMSA only while BUSY
//! is set, on every path, the first run included.

use altinj_vmsa::{EventInj, ExitCode, SevFeatures, VIntrCtrl, VmsaAccess, VmsaPage};

use super::{VMPL, one_vcpu};

/// A VMSA that counts every field write made while BUSY is clear (the
/// BUSY transitions themselves excepted).
struct Audited<'a> {
    page: &'a mut VmsaPage,
    writes_while_runnable: u32,
}

impl Audited<'_> {
    fn note(&mut self) {
        if !self.page.vintr_ctrl().busy() {
            self.writes_while_runnable += 1;
        }
    }
}

macro_rules! audited {
    ($($get:ident / $set:ident : $t:ty),* $(,)?) => {
        impl VmsaAccess for Audited<'_> {
            $(
                fn $get(&self) -> $t { self.page.$get() }
                fn $set(&mut self, value: $t) { self.note(); self.page.$set(value) }
            )*
            fn test_and_set_busy(&mut self) -> bool { self.page.test_and_set_busy() }
            fn clear_busy(&mut self) { self.page.clear_busy() }
        }
    };
}

audited! {
    efer / set_efer: u64, rflags / set_rflags: u64, rip / set_rip: u64,
    rax / set_rax: u64, rcx / set_rcx: u64, rdx / set_rdx: u64, r8 / set_r8: u64,
    r9 / set_r9: u64, exit_info_1 / set_exit_info_1: u64,
    exit_info_2 / set_exit_info_2: u64, exit_int_info / set_exit_int_info: EventInj,
    nrip / set_nrip: u64, sev_features / set_sev_features: SevFeatures,
    vintr_ctrl / set_vintr_ctrl: VIntrCtrl, exit_code / set_exit_code: ExitCode,
    event_inj / set_event_inj: EventInj,
}

altinj_ktest::suite! {
    fn first_before_run_sets_busy_before_writing_the_vmsa() {
        let mut f = one_vcpu();
        // A fresh guest VMSA is runnable (BUSY clear) until VMPL0 claims it.
        f.vmsa(0).unwrap().clear_busy();
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        let (engine, env, page) = f.parts(0).unwrap();
        let mut vmsa = Audited { page, writes_while_runnable: 0 };
        engine.before_run(&env, &mut vmsa).unwrap();
        assert_eq!(vmsa.page.event_inj(), EventInj::external_interrupt(0x41));
        assert_eq!(vmsa.writes_while_runnable, 0);
    }
}
