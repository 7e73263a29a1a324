//! The hypervisor model: KVM with planes.
//!
//! Per vCPU a #HV doorbell page it posts into with the `doorbell` crate's
//! host API (single vectors, several vectors, level vectors, NMI, #MC),
//! signalling #HV only while NoFurtherSignal allows; the #HV IPI (kicks,
//! and guest IPIs the engine forwards to handed-back vCPUs),
//! the specific EOI and disable-AI calls; an IOAPIC-like level source that
//! re-asserts until its EOI; edge devices; the timer; after a hand-back it
//! emulates the vCPU's APIC itself with the `apic` crate and injects like
//! KVM. In hostile mode it misbehaves (see `docs/simulator.md`).

use alloc::{format, vec, vec::Vec};

use altinj_apic::{RequestOutcome, Trigger};

use crate::guest::{DEVICE_VECTORS, TIMER_VECTOR};
use crate::platform::Effect;
use crate::world::{GUEST_VMPL, NEVER, Sim};

impl Sim {
    /// Whether the host can post host vectors to vCPU `j` that its APIC
    /// will accept (booted guest that allowed host vectors).
    pub(crate) fn host_target_ok(&self, j: usize) -> bool {
        self.vcpus
            .get(j)
            .is_some_and(|v| v.created && !v.stopped && v.guest.booted() && v.guest.accepts_host())
    }

    /// Credits an engine-armed timer deadline that has passed (VMPL0 is
    /// about to run `before_run`, which polls the APIC timer).
    pub(crate) fn timer_due(&mut self, i: usize) {
        let due = self
            .m
            .platform
            .timers
            .get(i)
            .and_then(core::cell::Cell::get)
            .is_some_and(|t| t <= self.now);
        if due && !self.vcpus.get(i).is_some_and(|v| v.handed_back) {
            let now = self.now;
            if let Some(slot) = self.m.platform.timers.get(i) {
                slot.set(None);
            }
            self.stats.timer_expiries = self.stats.timer_expiries.saturating_add(1);
            let credit = self
                .vcpus
                .get(i)
                .is_some_and(|v| v.guest.timer_on && v.guest.sw_enabled);
            if credit {
                let pending = self.vector_pending(i, TIMER_VECTOR);
                self.request_vector(i, TIMER_VECTOR, pending);
            }
            let _ = now;
        }
    }

    /// The timer of vCPU `i` expired.
    pub(crate) fn timer_fired(&mut self, i: usize) {
        let now = self.now;
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let credit = v.guest.timer_on && v.guest.sw_enabled;
        if v.handed_back {
            let pending = self.vector_pending(i, TIMER_VECTOR);
            self.kvm_sync_virq(i);
            let fired = self
                .vcpus
                .get_mut(i)
                .and_then(|v| v.host_apic.as_mut())
                .is_some_and(|a| a.poll_timer(now));
            if !fired {
                return;
            }
            if credit {
                self.request_vector(i, TIMER_VECTOR, pending);
            }
            self.stats.timer_expiries = self.stats.timer_expiries.saturating_add(1);
            self.wake(i);
            return;
        }
        if let Some(slot) = self.m.platform.timers.get(i) {
            slot.set(None);
        }
        self.stats.timer_expiries = self.stats.timer_expiries.saturating_add(1);
        if credit {
            let pending = self.vector_pending(i, TIMER_VECTOR);
            self.request_vector(i, TIMER_VECTOR, pending);
        }
        if let Some(t) = self.trace.as_mut() {
            t.instant(i, now, "timer", "");
        }
        self.host_notify(i);
    }

    /// An IOAPIC line's device acts.
    pub(crate) fn line_step(&mut self, k: usize) {
        let now = self.now;
        let Some(line) = self.lines.get(k) else {
            return;
        };
        let target = line.target;
        if self.draining {
            if let Some(line) = self.lines.get_mut(k) {
                line.next_at = NEVER;
            }
            return;
        }
        let ok = self.host_target_ok(target);
        let gap = self.rng.range(200_000, 2_000_000);
        if let Some(line) = self.lines.get_mut(k) {
            line.next_at = now.saturating_add(if ok { gap } else { 1_000_000 });
            if !ok {
                return;
            }
            line.asserted = true;
            if line.outstanding {
                return;
            }
        }
        self.post_line(k);
    }

    /// Presents line `k`'s level vector to its vCPU.
    fn post_line(&mut self, k: usize) {
        let now = self.now;
        let Some(line) = self.lines.get(k) else {
            return;
        };
        let (target, vector) = (line.target, line.vector);
        let handed_back = self.vcpus.get(target).is_some_and(|v| v.handed_back);
        let pending = self.vector_pending(target, vector);
        let posted = if handed_back {
            self.host_apic_request(target, vector, Trigger::Level)
        } else {
            self.m
                .doorbells
                .get(target)
                .is_some_and(|d| d.host().post_level(GUEST_VMPL, vector).is_ok())
        };
        if !posted {
            // Status byte busy: the line stays asserted; retry soon.
            if let Some(line) = self.lines.get_mut(k) {
                line.next_at = now.saturating_add(50_000);
            }
            self.stats.level_retries = self.stats.level_retries.saturating_add(1);
            return;
        }
        if let Some(line) = self.lines.get_mut(k) {
            line.outstanding = true;
            line.posted_at = now;
            line.posts = line.posts.saturating_add(1);
        }
        self.request_vector(target, vector, pending);
        if handed_back {
            self.wake(target);
        } else {
            self.host_notify(target);
        }
    }

    /// The host got the EOI of level `vector` from vCPU `j`: exactly one
    /// per presentation; a still-asserted line is presented again.
    pub(crate) fn line_eoi(&mut self, j: usize, vector: u8) {
        let Some(k) = self
            .lines
            .iter()
            .position(|l| l.target == j && l.vector == vector)
        else {
            self.violation(
                j,
                format!("EOI of {vector:#x}, never posted as level by the host"),
            );
            return;
        };
        let again = match self.lines.get_mut(k) {
            Some(line) if line.outstanding => {
                line.outstanding = false;
                line.eois = line.eois.saturating_add(1);
                line.asserted && !self.draining
            }
            _ => {
                self.violation(
                    j,
                    format!("level vector {vector:#x} EOI'd to the host twice"),
                );
                return;
            }
        };
        // A target that accepts nothing now (its APIC disabled) gets the
        // line again from `line_step` once it does.
        if again && self.host_target_ok(j) {
            self.post_line(k);
        }
    }

    /// Edge device interrupts (and the odd NMI) for a random vCPU.
    pub(crate) fn device_step(&mut self) {
        let now = self.now;
        let gap = self.profile.edge_device_gap.unwrap_or(1_000_000);
        self.device_next = if self.draining {
            NEVER
        } else {
            now.saturating_add(self.rng.range(gap / 2, gap.saturating_mul(3) / 2))
        };
        if self.draining {
            return;
        }
        let j = self.rng.index(self.n());
        if !self.host_target_ok(j) {
            return;
        }
        let count = self.rng.range(1, 3);
        let level_vector = self.lines.iter().find(|l| l.target == j).map(|l| l.vector);
        for _ in 0..count {
            let mut vector = self.rng.pick(&DEVICE_VECTORS, 0x31);
            if self.profile.edge_on_level_vectors
                && let Some(level) = level_vector
                && self.rng.chance(300_000)
            {
                vector = level;
            }
            self.host_post_edge(j, vector);
        }
        if self.rng.chance(self.profile.host_nmi) {
            self.host_post_nmi(j);
        }
        if self.rng.chance(self.profile.mc_per_device)
            && !self.vcpus.get(j).is_some_and(|v| v.handed_back)
        {
            self.host_post_mc(j);
        }
        self.notify_any(j);
        self.stats.device_interrupts = self.stats.device_interrupts.saturating_add(count);
    }

    pub(crate) fn notify_any(&mut self, j: usize) {
        if self.vcpus.get(j).is_some_and(|v| v.handed_back) {
            self.wake(j);
        } else {
            self.host_notify(j);
        }
    }

    /// Requests `vector` in the APIC the host emulates for handed-back vCPU
    /// `j`; true when that APIC took it (accepted or coalesced).
    fn host_apic_request(&mut self, j: usize, vector: u8, trigger: Trigger) -> bool {
        // KVM kicks a running vCPU out for a new interrupt and syncs a V_IRQ
        // the guest took (IRR -> ISR) before it sets IRR again; otherwise
        // the new instance would coalesce into the stale IRR bit.
        self.kvm_sync_virq(j);
        let outcome = self
            .vcpus
            .get_mut(j)
            .and_then(|v| v.host_apic.as_mut())
            .map(|a| a.request(vector, trigger));
        matches!(
            outcome,
            Some(RequestOutcome::Accepted | RequestOutcome::Coalesced)
        )
    }

    /// The host posts edge `vector` for vCPU `j` (doorbell, or its own APIC
    /// after the hand-back) and credits the ledger when the APIC takes it.
    pub(crate) fn host_post_edge(&mut self, j: usize, vector: u8) {
        let now = self.now;
        let handed_back = self.vcpus.get(j).is_some_and(|v| v.handed_back);
        let pending = self.vector_pending(j, vector);
        let accepted = if handed_back {
            self.host_apic_request(j, vector, Trigger::Edge)
        } else {
            let posted = self
                .m
                .doorbells
                .get(j)
                .is_some_and(|d| d.host().post_vector(GUEST_VMPL, vector).is_ok());
            posted && self.host_target_ok(j) && vector >= 31
        };
        if accepted {
            self.request_vector(j, vector, pending);
        }
        let _ = now;
    }

    pub(crate) fn host_post_nmi(&mut self, j: usize) {
        let now = self.now;
        let handed_back = self.vcpus.get(j).is_some_and(|v| v.handed_back);
        let ok = if handed_back {
            if let Some(v) = self.vcpus.get_mut(j) {
                v.host_nmi = true;
            }
            true
        } else {
            self.m
                .doorbells
                .get(j)
                .is_some_and(|d| d.host().post_nmi(GUEST_VMPL).is_ok())
        };
        if ok && let Some(l) = self.ledgers.get_mut(j) {
            l.request_nmi(now);
        }
        self.stats.host_nmis = self.stats.host_nmis.saturating_add(1);
    }

    /// A #MC for vCPU `j`'s guest, unless one is still owed (never
    /// nested); true when posted.
    pub(crate) fn host_post_mc(&mut self, j: usize) -> bool {
        let now = self.now;
        let mc_busy = self.ledgers.get(j).is_some_and(|l| l.mc_owed())
            || self
                .m
                .engines
                .get(j)
                .and_then(Option::as_ref)
                .is_some_and(altinj_kernel::VcpuEngine::machine_check_pending)
            || self.vcpus.get(j).is_some_and(|v| v.host_mc);
        let handed_back = self.vcpus.get(j).is_some_and(|v| v.handed_back);
        let posted = !mc_busy
            && if handed_back {
                // The host injects it itself (`kvm_present`).
                if let Some(v) = self.vcpus.get_mut(j) {
                    v.host_mc = true;
                }
                true
            } else {
                self.m
                    .doorbells
                    .get(j)
                    .is_some_and(|p| p.host().post_mc(GUEST_VMPL).is_ok())
            };
        if posted {
            if let Some(l) = self.ledgers.get_mut(j) {
                l.request_mc(now);
            }
            self.stats.mc_posted = self.stats.mc_posted.saturating_add(1);
            self.notify_any(j);
        }
        posted
    }

    /// One GHCB call of an engine, as the hypervisor answers it.
    pub(crate) fn apply_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Kick { from, icr } if is_forward(icr) => self.host_forwarded_ipi(from, icr),
            Effect::Kick { from, icr } => {
                self.stats.kick_calls_seen = self.stats.kick_calls_seen.saturating_add(1);
                for target in kick_targets(from, icr, self.vcpus.len()) {
                    self.host_kick(from, target, icr as u8);
                }
            }
            Effect::SpecificEoi { from, vmpl, vector } => {
                if vmpl != GUEST_VMPL {
                    self.violation(from, format!("specific EOI for VMPL {vmpl}"));
                }
                self.stats.specific_eois = self.stats.specific_eois.saturating_add(1);
                self.line_eoi(from, vector);
            }
            Effect::DisableAi { from, request } => self.host_takeover(from, request),
        }
    }

    /// The host delivers one kick (the notification vector) to `target`'s
    /// VMPL0.
    pub(crate) fn host_kick(&mut self, from: usize, target: usize, vector: u8) {
        self.stats.kicks_seen = self.stats.kicks_seen.saturating_add(1);
        if self.profile.hostile_hv && !self.draining && self.rng.chance(100_000) {
            self.stats.kicks_lost = self.stats.kicks_lost.saturating_add(1);
            return;
        }
        if let Some(page) = self.m.doorbells.get(target) {
            let _ = page.host().set_vmpl0_vector(vector);
        }
        let now = self.now;
        if let Some(v) = self.vcpus.get_mut(target) {
            v.kicks_in_batch = v.kicks_in_batch.saturating_add(1);
            if v.kicks_in_batch > 1 {
                self.stats.kicks_over_batch = self.stats.kicks_over_batch.saturating_add(1);
            }
            self.stats.max_kicks_per_batch = self
                .stats
                .max_kicks_per_batch
                .max(u64::from(v.kicks_in_batch));
        }
        if let Some(t) = self.trace.as_mut() {
            t.instant(target, now, "kick", &format!("from vCPU {from}"));
        }
        self.host_notify(target);
    }

    /// A guest IPI the engine forwarded (#HV IPI, GHCB 0x8000_0015, with
    /// the guest's vector or NMI delivery) to a vCPU whose APIC the host
    /// emulates: into that APIC, like any IPI KVM routes. The sender's
    /// ledger credit is made when its IPI call succeeds (`credit_ipi`,
    /// which also checks that the forward arrived), so a forward that is
    /// never delivered is lost.
    fn host_forwarded_ipi(&mut self, from: usize, icr: u64) {
        self.stats.ipis_forwarded_seen = self.stats.ipis_forwarded_seen.saturating_add(1);
        let target = (icr >> 32) as usize;
        let nmi = (icr >> 8) & 0b111 == 0b100;
        let vector = icr as u8;
        self.forwarded.push((target, vector, nmi));
        let live = self
            .vcpus
            .get(target)
            .is_some_and(|v| v.created && !v.stopped);
        if !live {
            return;
        }
        if !self.vcpus.get(target).is_some_and(|v| v.handed_back) {
            self.violation(
                from,
                format!("IPI forwarded to vCPU {target}, whose APIC the host does not emulate"),
            );
            return;
        }
        if nmi {
            if let Some(v) = self.vcpus.get_mut(target) {
                v.host_nmi = true;
            }
        } else {
            let _ = self.host_apic_request(target, vector, Trigger::Edge);
        }
        let now = self.now;
        if let Some(t) = self.trace.as_mut() {
            t.instant(target, now, "forwarded IPI", &format!("from vCPU {from}"));
        }
        self.wake(target);
    }
}

/// The vCPUs (host APIC ID = index) a kick's x2APIC ICR reaches, as the
/// host's APIC emulation routes it (Intel SDM vol. 3A §11.6.1, §11.12.10):
/// shorthand (bits 19:18), logical cluster `ID[19:4]` with member bit
/// `ID[3:0]` (bit 11), or one physical ID.
fn kick_targets(from: usize, icr: u64, vcpus: usize) -> Vec<usize> {
    let destination = icr >> 32;
    match (icr >> 18) & 3 {
        1 => vec![from],
        2 => (0..vcpus).collect(),
        3 => (0..vcpus).filter(|&t| t != from).collect(),
        _ if icr & (1 << 11) != 0 => {
            let base = ((destination >> 16) as usize) << 4;
            (0..16)
                .filter(|bit| destination & (1 << bit) != 0)
                .map(|bit| base | bit)
                .filter(|&t| t < vcpus)
                .collect()
        }
        _ => vec![destination as usize],
    }
}

/// Whether an #HV IPI's ICR forwards a guest IPI (any vector but the
/// notification vector, or NMI delivery) rather than kicking the target's
/// VMPL0: the host tells them apart by vector (`altinj_kernel::platform::forward_icr`).
fn is_forward(icr: u64) -> bool {
    let nmi = (icr >> 8) & 0b111 == 0b100;
    nmi || icr as u8 != altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR
}
