//! SVSM protocol 3 (spec §5): the calls, the register accesses (x2APIC MSRs,
//! xAPIC MMIO through MSR 0x800 + n) and what a register write asks the
//! engine to do.

use super::fast;
use super::{Env, VcpuEngine};
use crate::counters::bump;
use crate::fabric::pack_address;
use crate::platform::Platform;
use crate::protocol::{
    ApicCall, CallOutcome, CallRegs, CallResult, HandBack, ResultCode, configure_vector, feature,
    register_error,
};
use crate::registration::ConfigureStep;
use altinj_apic::{ApicMode, WriteEffect};
use altinj_vmsa::VmsaAccess;

/// x2APIC MSR range (Intel SDM vol. 3A §11.12.1.2).
const X2APIC_FIRST: u64 = 0x800;
const X2APIC_LAST: u64 = 0x8FF;
/// Spurious-interrupt vector register (x2APIC MSR; xAPIC offset 0xF0).
const SVR: u32 = 0x80F;

impl VcpuEngine {
    /// Applies what a register write asks for.
    pub(super) fn apply<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        effect: &WriteEffect,
    ) -> Result<(), ResultCode> {
        match effect {
            WriteEffect::Eoi(info) => self.eoi_done(env, *info),
            WriteEffect::SendIpi(ipi) => return self.send_ipi(env, ipi),
            WriteEffect::TimerChanged => self.rearm_timer(env),
            WriteEffect::ModeChanged(ApicMode::Disabled) => {
                self.apic_disabled(env);
                self.publish(env);
            }
            WriteEffect::ModeChanged(_) | WriteEffect::AddressChanged => self.publish(env),
            WriteEffect::None => {}
        }
        Ok(())
    }

    /// Republishes the APIC address (mode, ID, LDR, DFR may have changed).
    pub(super) fn publish<P: ?Sized>(&self, env: &Env<'_, P>) {
        if let Some(slot) = self.slot(env)
            && self.registration.emulating()
        {
            slot.publish_packed(pack_address(&self.apic.address()));
        }
    }

    /// Answers one APIC protocol call decoded from the guest's copied-out
    /// registers ([`ApicCall::decode`]); no VMSA needed. The one call that
    /// needs it, the CONFIGURE that hands the APIC back, returns
    /// [`CallOutcome::HandBack`] for [`VcpuEngine::complete_hand_back`].
    #[inline]
    pub fn handle_apic_call<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        call: ApicCall,
    ) -> CallOutcome {
        // The hottest call first (`fast`): the EOI write.
        if call
            == (ApicCall::WriteRegister {
                msr: fast::MSR_EOI,
                value: 0,
            })
            && self.registration.emulating()
            && self.fast_eoi(env)
        {
            bump(&mut self.counters.protocol_calls);
            return CallOutcome::Done(CallResult::SUCCESS);
        }
        self.handle_apic_call_general::<true, P>(env, call)
    }

    /// [`VcpuEngine::handle_apic_call`] without its fast paths (nor those
    /// of `write_register`), for the tests that compare both.
    #[cfg(feature = "ktests")]
    pub fn handle_apic_call_without_fast_paths<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        call: ApicCall,
    ) -> CallOutcome {
        self.handle_apic_call_general::<false, P>(env, call)
    }

    #[inline(never)]
    pub(super) fn handle_apic_call_general<const FAST: bool, P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        call: ApicCall,
    ) -> CallOutcome {
        bump(&mut self.counters.protocol_calls);
        if !self.registration.emulating() {
            // Off, or handed back: the protocol is gone on this vCPU (spec §5).
            return CallOutcome::Done(CallResult::code(ResultCode::UnsupportedProtocol));
        }
        let result = match call {
            ApicCall::QueryFeatures => {
                let mut features = feature::LAZY_EOI;
                if env.platform.has_timer() {
                    features |= feature::TIMER;
                }
                CallResult::rcx(features)
            }
            ApicCall::Configure(op) => match env.fabric.vm().registrations().configure(op) {
                Ok(ConfigureStep::Count(count)) => CallResult::rcx(u64::from(count)),
                Ok(ConfigureStep::HandBack) => {
                    return CallOutcome::HandBack(HandBack { index: self.index });
                }
                Err(code) => CallResult::code(code),
            },
            ApicCall::ReadRegister { msr } => match self.read_register(env, msr) {
                Ok(value) => CallResult::rdx(value),
                Err(code) => CallResult::code(code),
            },
            ApicCall::WriteRegister { msr, value } => {
                let result = if FAST {
                    self.write_register(env, msr, value)
                } else {
                    self.write_register_general(env, msr, value)
                };
                match result {
                    Ok(()) => CallResult::SUCCESS,
                    Err(code) => CallResult::code(code),
                }
            }
            ApicCall::ConfigureVector(rcx) => CallResult::code(self.configure_vector(rcx)),
            ApicCall::Unknown(_) => CallResult::code(ResultCode::UnsupportedCall),
        };
        CallOutcome::Done(result)
    }

    /// Completes the hand-back a CONFIGURE asked for (`handback`: the
    /// descriptor writeback, disable-AI, SEV_FEATURES.AlternateInjection
    /// cleared, the mailbox closed) and answers that call: SUCCESS with
    /// RCX = 0, or INVALID_REQUEST when disable-AI failed (the vCPU stays
    /// emulated, the count stays 0, the next deregister or query retries).
    /// Call it between `after_exit` and the next `before_run` (BUSY set),
    /// with the calling vCPU's VMSA.
    pub fn complete_hand_back<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
        token: HandBack,
    ) -> CallResult {
        if token.index != self.index {
            log::warn!(
                "vCPU {}: hand-back token of vCPU {} refused",
                self.index,
                token.index
            );
            return CallResult::code(ResultCode::InvalidRequest);
        }
        if !self.registration.emulating() {
            return CallResult::code(ResultCode::UnsupportedProtocol);
        }
        match self.hand_back(env, vmsa) {
            Ok(()) => CallResult::rcx(0),
            Err(code) => CallResult::code(code),
        }
    }

    /// The answer of `outcome`, completing a hand-back with `vmsa`: the two
    /// steps of a protocol call in one, for a run loop that has the VMSA at
    /// hand anyway.
    pub fn finish_apic_call<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
        outcome: CallOutcome,
    ) -> CallResult {
        match outcome {
            CallOutcome::Done(result) => result,
            CallOutcome::HandBack(token) => self.complete_hand_back(env, vmsa, token),
        }
    }

    /// Reads RAX/RCX/RDX/R8 from the VMSA, answers the APIC protocol call
    /// (completing a hand-back at once) and writes RAX (and RCX/RDX
    /// outputs) back: the one-call form of `handle_apic_call`.
    pub fn handle_apic_call_in_vmsa<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> CallResult {
        let regs = CallRegs {
            rax: vmsa.rax(),
            rcx: vmsa.rcx(),
            rdx: vmsa.rdx(),
            r8: vmsa.r8(),
        };
        let result = if regs.is_apic_protocol() {
            let outcome = self.handle_apic_call(env, ApicCall::decode(&regs));
            self.finish_apic_call(env, vmsa, outcome)
        } else {
            CallResult::code(ResultCode::UnsupportedProtocol)
        };
        result.write_to(vmsa);
        result
    }

    pub(super) fn configure_vector(&mut self, rcx: u64) -> ResultCode {
        if rcx & configure_vector::RESERVED != 0 {
            return ResultCode::InvalidParameter;
        }
        let allow = rcx & configure_vector::ALLOW != 0;
        if rcx & configure_vector::ALL != 0 {
            self.apic.set_all_host_vectors_allowed(allow);
            return ResultCode::Success;
        }
        // Lossless: masked to 8 bits.
        let vector = (rcx & configure_vector::VECTOR_MASK) as u8;
        if allow && !altinj_doorbell::is_legal_vector(vector) {
            // Host vectors 0-30 are never accepted (spec §6).
            return ResultCode::InvalidParameter;
        }
        self.apic.set_host_vector_allowed(vector, allow);
        ResultCode::Success
    }

    /// READ_REGISTER: APIC_BASE, TSC_DEADLINE, or 0x800-0x8FF (in xAPIC
    /// mode the MSR is mapped to MMIO offset (msr - 0x800) << 4 \[choice\]).
    pub fn read_register<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
    ) -> Result<u64, ResultCode> {
        match msr {
            m if m == u64::from(altinj_apic::MSR_APIC_BASE) => Ok(self.apic.apic_base()),
            m if m == u64::from(altinj_apic::MSR_TSC_DEADLINE) => Ok(self.apic.tsc_deadline()),
            X2APIC_FIRST..=X2APIC_LAST => {
                // Lossless: at most 0x8FF.
                let msr32 = msr as u32;
                let now = time_for(env, msr32);
                match self.apic.mode() {
                    ApicMode::XApic => self.apic.read_mmio(mmio_offset(msr32), now).map(u64::from),
                    ApicMode::X2Apic | ApicMode::Disabled => self.apic.read_msr(msr32, now),
                }
                .map_err(register_error)
            }
            _ => Err(ResultCode::InvalidAddress),
        }
    }

    /// WRITE_REGISTER (see [`VcpuEngine::read_register`] for the mapping).
    #[inline]
    pub fn write_register<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
        value: u64,
    ) -> Result<(), ResultCode> {
        // The two hot registers first (`fast`); small enough to inline.
        if msr == fast::MSR_EOI && value == 0 && self.fast_eoi(env) {
            return Ok(());
        }
        if msr == fast::MSR_ICR {
            return self.write_icr(env, value);
        }
        self.write_register_general(env, msr, value)
    }

    /// [`VcpuEngine::write_register`] without its fast paths, for the
    /// tests that compare both (`kernel/tests/props.rs`).
    #[cfg(feature = "ktests")]
    pub fn write_register_without_fast_paths<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
        value: u64,
    ) -> Result<(), ResultCode> {
        self.write_register_general(env, msr, value)
    }

    #[inline(never)]
    pub(super) fn write_register_general<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
        value: u64,
    ) -> Result<(), ResultCode> {
        let result = match msr {
            m if m == u64::from(altinj_apic::MSR_APIC_BASE) => self.apic.set_apic_base(value),
            m if m == u64::from(altinj_apic::MSR_TSC_DEADLINE) => {
                // An expiry already due is delivered (and counted) before
                // the deadline changes, as for the other timer registers;
                // one clock read serves both.
                let now = env.platform.now();
                self.poll_timer_at(now);
                Ok(self.apic.set_tsc_deadline(value, now))
            }
            X2APIC_FIRST..=X2APIC_LAST => {
                // Lossless: at most 0x8FF.
                let msr32 = msr as u32;
                if msr32 == SVR {
                    // A software disable masks the LVT timer: an expiry
                    // already due must reach IRR first (it stays there).
                    self.poll_timer_now(env);
                }
                match self.apic.mode() {
                    ApicMode::XApic => {
                        let value32 =
                            u32::try_from(value).map_err(|_| ResultCode::InvalidParameter)?;
                        self.apic
                            .write_mmio(mmio_offset(msr32), value32, time_for(env, msr32))
                    }
                    ApicMode::X2Apic | ApicMode::Disabled => {
                        self.apic.write_msr(msr32, value, time_for(env, msr32))
                    }
                }
            }
            _ => return Err(ResultCode::InvalidAddress),
        };
        // By reference: the effect (an `Ipi` for ICR writes) is read in
        // place, field by field, rather than copied out of the result.
        match &result {
            Ok(effect) => self.apply(env, effect),
            Err(error) => Err(register_error(*error)),
        }
    }
}

/// xAPIC MMIO offset of x2APIC MSR `msr` (Intel SDM vol. 3A §11.12.1.2).
pub(super) fn mmio_offset(msr: u32) -> u32 {
    (msr & 0xFF) << 4
}

/// `now` for a register access: only the LVT, initial/current count and
/// divide registers look at time, so the hot registers (EOI, ICR, TPR)
/// never pay for a clock read (on SEV-SNP a TSC read may even trap).
pub(super) fn time_for<P: Platform + ?Sized>(env: &Env<'_, P>, msr: u32) -> u64 {
    match msr {
        0x82F | 0x832..=0x839 | 0x83E => env.platform.now(),
        _ => 0,
    }
}
