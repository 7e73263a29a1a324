//! The guest disables its APIC (issue 9 path 10, scenario `apic-disable`).
//!
//! Now and then a guest writes APIC_BASE with EN = 0, often from inside a
//! handler (a host level vector in service, others in IRR or on their way),
//! then, once its handlers have ended, enables the APIC again (xAPIC, then
//! x2APIC: Intel SDM vol. 3A §11.12.5 forbids disabled -> x2APIC) and redoes
//! its set-up (SVR, host vectors, timer).
//!
//! What the checks expect (Intel SDM vol. 3A §11.4.3: a hardware-disabled
//! APIC has IRR, ISR and TMR cleared and accepts nothing):
//! - every owed instance of this vCPU is an architected discard
//!   ([`crate::ledger::Ledger::discard_at_reset`]), counted, not lost; one
//!   delivered after the disable is a duplicate (nothing owed);
//! - handlers running at the disable end without an EOI (there is no APIC
//!   to take it), so every host level presentation outstanding then must
//!   get its one specific EOI from the engine at the disable: the host
//!   model's "never EOI'd" and "EOI'd twice" checks hold it to that;
//! - the guest model stops accepting (SVR off, host vectors refused, timer
//!   off) until its set-up runs again, so nothing is credited meanwhile.

use alloc::vec;

use altinj_kernel::protocol::ResultCode;

use crate::guest::{Call, SetupStep};
use crate::platform::Effect;
use crate::world::{Sabotage, Sim};

impl Sim {
    /// With `apic_disable`: whether the guest disables its APIC now (drawn
    /// from the generator only in that scenario).
    pub(crate) fn apic_disable_op(&mut self, i: usize) -> Option<Call> {
        if self.profile.apic_disable == 0 || self.draining {
            return None;
        }
        let v = self.vcpus.get(i)?;
        if v.handed_back || !v.guest.booted() || !v.guest.x2apic {
            return None;
        }
        self.rng
            .chance(self.profile.apic_disable)
            .then_some(Call::ApicDisable)
    }

    /// The guest reads the answer to its APIC_BASE EN = 0 write.
    pub(crate) fn complete_apic_disable(&mut self, i: usize, code: ResultCode) {
        if code != ResultCode::Success {
            self.violation(i, format_args_str("APIC_BASE EN=0", code));
            return;
        }
        self.stats.apic_disables = self.stats.apic_disables.saturating_add(1);
        self.discard_at_reset(i);
        let timer = self.profile.timer_period.is_some();
        if let Some(v) = self.vcpus.get_mut(i) {
            let g = &mut v.guest;
            g.x2apic = false;
            g.sw_enabled = false;
            g.host_allowed = false;
            g.timer_on = false;
            g.stale_frames = g.frames.len();
            g.setup = vec![
                SetupStep::XapicEnable,
                SetupStep::X2apic,
                SetupStep::Svr,
                SetupStep::AllowHost,
            ];
            if timer {
                g.setup.extend([
                    SetupStep::TimerDivide,
                    SetupStep::TimerLvt,
                    SetupStep::TimerInitial,
                ]);
            }
            g.setup_pos = 0;
        }
    }

    /// vCPU `i`'s APIC was reset: its owed instances are discarded
    /// (architected, see the module doc).
    pub(crate) fn discard_at_reset(&mut self, i: usize) {
        let n = self.ledgers.get_mut(i).map_or(0, |l| l.discard_at_reset());
        self.stats.discarded_at_reset = self.stats.discarded_at_reset.saturating_add(n);
    }

    /// Specific EOIs the host got so far for vCPU `i`'s level lines.
    pub(crate) fn level_eois_of(&self, i: usize) -> u64 {
        self.lines
            .iter()
            .filter(|l| l.target == i)
            .map(|l| l.eois)
            .sum()
    }

    /// After VMPL0 answered vCPU `i`'s call: when it was the APIC disable,
    /// counts the specific EOIs it sent (level presentations in flight).
    pub(crate) fn note_disable_eois(&mut self, i: usize, before: u64) {
        let disable = matches!(
            self.vcpus.get(i).and_then(|v| v.guest.call),
            Some(Call::ApicDisable)
        );
        if disable {
            let sent = self.level_eois_of(i).saturating_sub(before);
            self.stats.disable_level_eois = self.stats.disable_level_eois.saturating_add(sent);
        }
    }

    /// Sabotage: the specific EOIs VMPL0's answer to an APIC disable made
    /// never reach the host (issue 9 path 10 before its fix).
    pub(crate) fn sabotage_disable_eois(&mut self, i: usize) {
        let disable = matches!(
            self.vcpus.get(i).and_then(|v| v.guest.call),
            Some(Call::ApicDisable)
        );
        if disable
            && self.config.sabotage == Some(Sabotage::NoEoiAtApicDisable)
            && let Ok(mut effects) = self.m.platform.effects.try_borrow_mut()
        {
            effects.retain(|e| !matches!(e, Effect::SpecificEoi { .. }));
        }
    }

    /// A handler taken before an APIC disable ends without an EOI; true if
    /// the top frame was such a one (and is gone now).
    pub(crate) fn end_stale_frame(&mut self, i: usize) -> bool {
        let Some(v) = self.vcpus.get_mut(i) else {
            return false;
        };
        let depth = v.guest.frames.len();
        if depth == 0 || depth > v.guest.stale_frames {
            return false;
        }
        v.guest.stale_frames = depth.saturating_sub(1);
        // The handler reads the lazy-EOI byte as always (and ignores it).
        if let Some(b) = self.m.caa.get(i) {
            b.swap(0, core::sync::atomic::Ordering::AcqRel);
        }
        self.pop_frame(i);
        true
    }
}

fn format_args_str(what: &str, code: ResultCode) -> alloc::string::String {
    alloc::format!("{what}: answered {code:?}, the spec says Success")
}
