//! Handing one vCPU's APIC back to the host (spec §5 CONFIGURE, §3
//! descriptor, §4 0x8000_001C disable-AI).
//!
//! What the host gets, in this order \[choice\] where the texts are silent:
//! 1. A timer expiry already due is polled into IRR first.
//! 2. The mailbox is drained into the APIC; whatever the engine left in
//!    EVENTINJ / V_NMI for a run that did not happen goes back to pending
//!    state: an APIC vector to IRR (unless a second instance is pending
//!    there: then it stays in ISR and in EVENTINJ, spec §6 allows one of
//!    each), an NMI to the pending NMI, a #MC to the pending #MC.
//! 3. The descriptor writeback: IRR (vector 31 as status bit 31), ISR, NMI
//!    as status bit 8, #MC as status bit 9. IRR vectors 16-30 have no place
//!    in the descriptor: they are counted (`Counters::handback_vectors_lost`)
//!    and logged.
//! 4. disable-AI with VMPL, TPR, INT_SHADOW and RFLAGS.IF. If it fails the
//!    descriptor is put back as it was (the writeback and anything the host
//!    posted are taken back into the APIC, the ISR words restored) and the
//!    APIC stays emulated.
//! 5. Once the host owns the APIC: SEV_FEATURES.AlternateInjection is
//!    cleared in the guest VMSA (so the host can inject again), the guest's
//!    APIC timer goes to `Platform::hand_back_timer`, the platform timer is
//!    disarmed and the mailbox closed: what was posted after the drain is
//!    forwarded by #HV IPI, like every later post (whose sender sees the
//!    mailbox closed and forwards it).

use altinj_apic::ApicMode;
use altinj_doorbell::{Descriptor, DescriptorStatus, HandoffState};
use altinj_vmsa::{EventInj, RFLAGS_IF, SevFeatures, VmsaAccess};

use super::protocol::mmio_offset;
use super::{Env, InEventInj, VcpuEngine};
use crate::counters::bump;
use crate::nmi::{NmiExit, NmiVia};
use crate::platform::{DisableAiRequest, GuestTimer, Platform};
use crate::protocol::ResultCode;
use crate::registration::Registration;

/// IRR word 0 bits of vectors 16-30, which the descriptor cannot carry.
const UNHANDABLE: u32 = 0x7FFF_0000;

impl VcpuEngine {
    /// Gives the APIC back to the host (module doc).
    pub(super) fn hand_back<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), ResultCode> {
        let descriptor = env
            .doorbell
            .descriptor(self.guest_vmpl)
            .map_err(|_| ResultCode::InvalidRequest)?;
        // One instant for the whole hand-back: the expiry due now goes into
        // the IRR snapshot, and the timer registers handed over are read at
        // the same time, so no expiry lands in IRR after the snapshot.
        let now = env.platform.now();
        self.poll_timer_at(now);
        // Whatever is still posted to this vCPU goes to the host too.
        if let Some(slot) = self.slot(env) {
            self.accept_posted(slot.mailbox().drain());
        }
        let interrupt_shadow = self.take_back_presented(vmsa);

        let state = HandoffState {
            irr: self.apic.irr().words(),
            isr: self.apic.isr().words(),
            nmi_pending: self.nmi.pending(),
        };
        let isr_before: [u32; 8] = core::array::from_fn(|i| {
            descriptor
                .isr
                .get(i)
                .map_or(0, |w| w.load(core::sync::atomic::Ordering::Acquire))
        });
        let _ = descriptor.hand_off(&state);
        if self.mc_pending {
            descriptor
                .status
                .fetch_or(DescriptorStatus::MC, core::sync::atomic::Ordering::AcqRel);
        }
        let request = DisableAiRequest {
            vmpl: self.guest_vmpl,
            tpr: self.apic.tpr(),
            int_shadow: interrupt_shadow,
            interrupts_enabled: vmsa.rflags() & RFLAGS_IF != 0,
        };
        if env.platform.disable_alternate_injection(request).is_err() {
            bump(&mut self.counters.platform_errors);
            log::warn!("vCPU {}: disable-AI failed; keeping the APIC", self.index);
            self.undo_hand_off(env, descriptor, &isr_before);
            return Err(ResultCode::InvalidRequest);
        }
        self.report_unhandable(state.irr.first().copied().unwrap_or(0));
        self.mc_pending = false;
        self.nmi.take_for_hand_back();
        self.host_level.clear();
        self.registration = Registration::HandedBack;
        // The host can inject into this VMSA again only without AI (spec §2).
        let features = vmsa.sev_features();
        if features.contains(SevFeatures::ALTERNATE_INJECTION) {
            vmsa.set_sev_features(features.difference(SevFeatures::ALTERNATE_INJECTION));
        }
        self.hand_back_timer(env, now);
        if let Some(slot) = self.slot(env) {
            // Closing also clears a failed-kick mark (moot now).
            let late = slot.mailbox().close();
            for vector in late.iter() {
                self.forward_ipi(env, slot, vector, false);
            }
            if late.nmi {
                self.forward_ipi(env, slot, 0, true);
            }
        }
        log::info!("vCPU {}: APIC handed back to the host", self.index);
        Ok(())
    }

    /// Takes back what the engine left in EVENTINJ / V_NMI for a run that
    /// did not happen (module doc, step 2); returns INT_SHADOW.
    fn take_back_presented<V: VmsaAccess + ?Sized>(&mut self, vmsa: &mut V) -> bool {
        let ctrl = vmsa.vintr_ctrl();
        match self.eventinj {
            Some(InEventInj::Apic(v) | InEventInj::ReinjectedApic(v)) => {
                if self.recall(v) {
                    vmsa.set_event_inj(EventInj::new());
                    self.eventinj = None;
                } else {
                    log::warn!(
                        "vCPU {}: vector {v:#x} in EVENTINJ at the hand-back with a second instance pending: left in ISR and EVENTINJ",
                        self.index
                    );
                }
            }
            Some(InEventInj::Nmi) => {
                vmsa.set_event_inj(EventInj::new());
                self.nmi.exit_outcome(NmiExit::NotDelivered);
                self.eventinj = None;
            }
            Some(InEventInj::MachineCheck) => {
                vmsa.set_event_inj(EventInj::new());
                self.mc_pending = true;
                self.eventinj = None;
            }
            Some(InEventInj::Other(_)) | None => {}
        }
        if self.nmi.presented() == Some(NmiVia::VNmi) && ctrl.v_nmi() {
            vmsa.set_vintr_ctrl(ctrl.with_v_nmi(false));
            self.nmi.exit_outcome(NmiExit::NotDelivered);
        }
        ctrl.int_shadow()
    }

    /// After a failed disable-AI: takes the writeback (and whatever the host
    /// posted meanwhile) back into the APIC and restores the ISR words, so
    /// the descriptor holds no trace of the attempt.
    fn undo_hand_off<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        descriptor: &Descriptor,
        isr_before: &[u32; 8],
    ) {
        let back = descriptor.consume();
        for (word, &old) in descriptor.isr.iter().zip(isr_before) {
            word.store(old, core::sync::atomic::Ordering::Release);
        }
        // The #MC and NMI of the writeback come back with it.
        self.mc_pending = false;
        if back.nmi {
            self.nmi.take_for_hand_back();
        }
        let _ = self.accept_host(env, &back);
    }

    /// Counts and logs the IRR vectors 16-30 the descriptor cannot carry.
    fn report_unhandable(&mut self, irr_word0: u32) {
        let lost = irr_word0 & UNHANDABLE;
        if lost == 0 {
            return;
        }
        self.counters.handback_vectors_lost = self
            .counters
            .handback_vectors_lost
            .saturating_add(u64::from(lost.count_ones()));
        log::warn!(
            "vCPU {}: pending vectors 16-30 {lost:#010x} (bit = vector) cannot be handed to the host",
            self.index
        );
    }

    /// Gives the host the guest's APIC timer, then disarms the platform's.
    fn hand_back_timer<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, now: u64) {
        let timer = GuestTimer {
            lvt_timer: self.timer_register(0x832, now),
            divide_config: self.timer_register(0x83E, now),
            initial_count: self.timer_register(0x838, now),
            current_count: self.timer_register(0x839, now),
            tsc_deadline: self.apic.tsc_deadline(),
            deadline: self.apic.next_timer_deadline(),
        };
        if env
            .platform
            .hand_back_timer(self.guest_vmpl, &timer)
            .is_err()
            && timer.deadline.is_some()
        {
            log::warn!(
                "vCPU {}: the host took no timer state; the guest's armed APIC timer stops with the hand-back",
                self.index
            );
        }
        let _ = env.platform.arm_timer(None);
        self.timer_armed = None;
    }

    /// A timer register as the guest reads it (0 when the APIC is off).
    fn timer_register(&mut self, msr: u32, now: u64) -> u32 {
        let value = match self.apic.mode() {
            ApicMode::X2Apic => self.apic.read_msr(msr, now).ok(),
            ApicMode::XApic => self
                .apic
                .read_mmio(mmio_offset(msr), now)
                .ok()
                .map(u64::from),
            ApicMode::Disabled => None,
        };
        value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
    }
}
