//! Unit tests, run by `cargo test` and by the in-kernel runner.

pub mod bits;
pub mod page;
pub mod rules;
pub mod view;

use crate::{EventInj, ExitCode, SevFeatures, VIntrCtrl, VmsaAccess};

/// Every test of this crate, for the in-kernel runner.
pub const ALL: &[&[altinj_ktest::Test]] = &[bits::TESTS, page::TESTS, rules::TESTS, view::TESTS];

/// A VMSA with plain fields that keeps the default BUSY methods, as a
/// foreign VMSA type (COCONUT-SVSM's) would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlainVmsa {
    /// EFER.
    pub efer: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RIP.
    pub rip: u64,
    /// RAX, RCX, RDX, R8, R9.
    pub regs: [u64; 5],
    /// guest_exit_info_1 and _2.
    pub exit_info: [u64; 2],
    /// EXITINTINFO.
    pub exit_int_info: u64,
    /// guest_nrip.
    pub nrip: u64,
    /// sev_features.
    pub sev_features: u64,
    /// vintr_ctrl.
    pub vintr_ctrl: u64,
    /// guest_exit_code.
    pub exit_code: u64,
    /// EVENTINJ.
    pub event_inj: u64,
}

impl VmsaAccess for PlainVmsa {
    fn efer(&self) -> u64 {
        self.efer
    }
    fn set_efer(&mut self, value: u64) {
        self.efer = value;
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn set_rflags(&mut self, value: u64) {
        self.rflags = value;
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, value: u64) {
        self.rip = value;
    }
    fn rax(&self) -> u64 {
        self.regs[0]
    }
    fn set_rax(&mut self, value: u64) {
        self.regs[0] = value;
    }
    fn rcx(&self) -> u64 {
        self.regs[1]
    }
    fn set_rcx(&mut self, value: u64) {
        self.regs[1] = value;
    }
    fn rdx(&self) -> u64 {
        self.regs[2]
    }
    fn set_rdx(&mut self, value: u64) {
        self.regs[2] = value;
    }
    fn r8(&self) -> u64 {
        self.regs[3]
    }
    fn set_r8(&mut self, value: u64) {
        self.regs[3] = value;
    }
    fn r9(&self) -> u64 {
        self.regs[4]
    }
    fn set_r9(&mut self, value: u64) {
        self.regs[4] = value;
    }
    fn exit_info_1(&self) -> u64 {
        self.exit_info[0]
    }
    fn set_exit_info_1(&mut self, value: u64) {
        self.exit_info[0] = value;
    }
    fn exit_info_2(&self) -> u64 {
        self.exit_info[1]
    }
    fn set_exit_info_2(&mut self, value: u64) {
        self.exit_info[1] = value;
    }
    fn exit_int_info(&self) -> EventInj {
        EventInj::from_bits(self.exit_int_info)
    }
    fn set_exit_int_info(&mut self, value: EventInj) {
        self.exit_int_info = value.into_bits();
    }
    fn nrip(&self) -> u64 {
        self.nrip
    }
    fn set_nrip(&mut self, value: u64) {
        self.nrip = value;
    }
    fn sev_features(&self) -> SevFeatures {
        SevFeatures::from_bits_retain(self.sev_features)
    }
    fn set_sev_features(&mut self, value: SevFeatures) {
        self.sev_features = value.bits();
    }
    fn vintr_ctrl(&self) -> VIntrCtrl {
        VIntrCtrl::from_bits(self.vintr_ctrl)
    }
    fn set_vintr_ctrl(&mut self, value: VIntrCtrl) {
        self.vintr_ctrl = value.into_bits();
    }
    fn exit_code(&self) -> ExitCode {
        ExitCode(self.exit_code)
    }
    fn set_exit_code(&mut self, value: ExitCode) {
        self.exit_code = value.0;
    }
    fn event_inj(&self) -> EventInj {
        EventInj::from_bits(self.event_inj)
    }
    fn set_event_inj(&mut self, value: EventInj) {
        self.event_inj = value.into_bits();
    }
}
