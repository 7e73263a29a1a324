//! The host's side of a hand-back (spec §5 CONFIGURE): once a guest
//! deregisters and the engine hands its APIC back (descriptor writeback,
//! disable-AI), the "hypervisor" emulates that vCPU's APIC itself, as a
//! host without Alternate Injection would: a plain `altinj_apic::LocalApic`, fed
//! by the descriptor the engine wrote back and by the guest IPIs the other
//! vCPUs' engines forward with the #HV IPI call (`platform::forward_icr`),
//! injected through EVENTINJ when the guest can take an interrupt, its
//! ICR writes routed into the targets' doorbell pages.

use core::sync::atomic::{AtomicU64, Ordering};

use altinj_apic::{ApicConfig, LocalApic, Trigger, WriteEffect};
use altinj_doorbell::DoorbellPage;
use altinj_vmsa::{EventInj, RFLAGS_IF, VmsaAccess};

use super::host::GUEST_VMPL;
use super::ledger::{self, MAX_VCPUS};
use super::vmcb::Vcpu;
use crate::cpu;

/// Guest IPIs forwarded to each handed-back vCPU (bit v of word v / 64),
/// from any CPU; the owner's loop takes them.
static FORWARDED: [[AtomicU64; 4]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_VCPUS];

/// Clears the forwarded vectors (before a run).
pub fn reset() {
    FORWARDED
        .iter()
        .flatten()
        .for_each(|w| w.store(0, Ordering::SeqCst));
}

/// A forwarded guest IPI of `vector` for vCPU `k` (NMIs are not used by the
/// programs and are counted as a violation).
pub fn forward(k: usize, vector: u8, nmi: bool) {
    if nmi {
        ledger::violation(((k as u64) << 16) | (0xF0 << 8));
        return;
    }
    if let Some(w) = FORWARDED
        .get(k)
        .and_then(|w| w.get(usize::from(vector >> 6)))
    {
        w.fetch_or(1 << (vector & 63), Ordering::SeqCst);
    }
}

/// The host-emulated APIC of one handed-back vCPU.
pub struct HostApic {
    apic: LocalApic,
    /// The vector this host put in EVENTINJ for the run in flight.
    injected: Option<u8>,
}

impl HostApic {
    /// Takes over vCPU `k`'s APIC: x2APIC, software-enabled, with what the
    /// engine wrote back into the guest VMPL's descriptor.
    pub fn take_over(k: usize, doorbell: &DoorbellPage) -> Self {
        let mut apic = LocalApic::new(ApicConfig {
            apic_id: k as u32,
            bsp: k == 0,
            ticks_per_bus_cycle: 1,
            directed_eoi: false,
            ..Default::default()
        });
        let base = apic.apic_base();
        let ok = apic.set_apic_base(base | (1 << 10)).is_ok()
            && apic.write_msr(0x80F, 0x1FF, cpu::rdtsc()).is_ok();
        if !ok {
            ledger::violation(((k as u64) << 16) | (0xF1 << 8));
        }
        if let Ok(written) = doorbell.consume(GUEST_VMPL) {
            for (word, base) in written.vectors.iter().zip((0u8..).step_by(32)) {
                let mut bits = *word;
                while bits != 0 {
                    let v = base.wrapping_add(bits.trailing_zeros() as u8);
                    bits &= bits.wrapping_sub(1);
                    let _ = apic.request(v, Trigger::Edge);
                }
            }
            if written.nmi || written.level.is_some() {
                ledger::violation(((k as u64) << 16) | (0xF2 << 8));
            }
        }
        Self {
            apic,
            injected: None,
        }
    }

    /// Before a run: takes the forwarded IPIs, injects the highest
    /// deliverable vector through EVENTINJ when the guest can take it.
    pub fn before_run(&mut self, k: usize, vcpu: &mut Vcpu) {
        if let Some(words) = FORWARDED.get(k) {
            for (i, w) in words.iter().enumerate() {
                let mut bits = w.swap(0, Ordering::SeqCst);
                while bits != 0 {
                    let v = ((i as u32) << 6 | bits.trailing_zeros()) as u8;
                    bits &= bits.wrapping_sub(1);
                    let _ = self.apic.request(v, Trigger::Edge);
                }
            }
        }
        let open = vcpu.rflags() & RFLAGS_IF != 0
            && !vcpu.vintr_ctrl().int_shadow()
            && !vcpu.event_inj().valid();
        if let Some(v) = self.apic.highest_deliverable().filter(|_| open) {
            vcpu.set_event_inj(EventInj::external_interrupt(v));
            self.apic.acknowledge(v);
            self.injected = Some(v);
        }
    }

    /// After the exit: an injection still in EVENTINJ was not delivered.
    pub fn after_exit(&mut self, vcpu: &mut Vcpu) {
        if let Some(v) = self.injected.take()
            && vcpu.event_inj().valid()
        {
            vcpu.set_event_inj(EventInj::new());
            self.apic.unacknowledge(v);
        }
    }

    /// An intercepted RDMSR/WRMSR of the guest, now the host's to answer.
    /// Returns the written (MSR, value) for routing, `None` for a read or a
    /// refused access (then #GP(0) is injected).
    pub fn msr(&mut self, vcpu: &mut Vcpu) -> Option<(u64, u64)> {
        let msr = vcpu.rcx() & 0xFFFF_FFFF;
        let write = vcpu.exit_info_1() & 1 != 0;
        let now = cpu::rdtsc();
        let result = if write {
            let value = (vcpu.rdx() << 32) | (vcpu.rax() & 0xFFFF_FFFF);
            self.apic
                .write_msr(msr as u32, value, now)
                .map(|effect| (Some((msr, value)), effect))
        } else {
            self.apic.read_msr(msr as u32, now).map(|value| {
                vcpu.set_rax(value & 0xFFFF_FFFF);
                vcpu.set_rdx(value >> 32);
                (None, WriteEffect::None)
            })
        };
        match result {
            Ok((written, _)) => {
                vcpu.skip(2);
                written
            }
            Err(_) => {
                if !vcpu.event_inj().valid() {
                    vcpu.set_event_inj(EventInj::exception(13, Some(0)));
                }
                None
            }
        }
    }

    /// The vectors still pending (IRR), for the verdict.
    pub fn pending_words(&self) -> [u64; 4] {
        let mut out = [0u64; 4];
        for v in self.apic.irr().iter() {
            if let Some(w) = out.get_mut(usize::from(v >> 6)) {
                *w |= 1 << (v & 63);
            }
        }
        out
    }
}
