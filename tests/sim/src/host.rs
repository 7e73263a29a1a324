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
use core::sync::atomic::Ordering;

use apic::{LocalApic, RequestOutcome, Trigger, VectorSet};
use doorbell::DescriptorStatus;
use kernel::platform::DisableAiRequest;
use vmsa::rules::{self, Reinjection, VirqOutcome};
use vmsa::{EventType, SevFeatures, VmsaAccess};

use crate::guest::{DEVICE_VECTORS, Dest, TIMER_VECTOR};
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
    fn line_eoi(&mut self, j: usize, vector: u8) {
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

    fn notify_any(&mut self, j: usize) {
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
    fn host_post_edge(&mut self, j: usize, vector: u8) {
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

    fn host_post_nmi(&mut self, j: usize) {
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
                .is_some_and(kernel::VcpuEngine::machine_check_pending)
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

    /// One hostile act of the hypervisor.
    pub(crate) fn hostile_step(&mut self) {
        let now = self.now;
        self.hostile_next = if self.draining {
            NEVER
        } else {
            now.saturating_add(self.rng.range(20_000, 300_000))
        };
        if self.draining {
            return;
        }
        let j = self.rng.index(self.n());
        if !self.host_target_ok(j) || self.vcpus.get(j).is_some_and(|v| v.handed_back) {
            return;
        }
        self.stats.hostile_acts = self.stats.hostile_acts.saturating_add(1);
        let Some(page) = self.m.doorbells.get(j) else {
            return;
        };
        let Ok(desc) = page.descriptor(GUEST_VMPL) else {
            return;
        };
        let illegal = self.rng.range(1, 30) as u32;
        match self.rng.below(13) {
            0 => {
                // An illegal vector (1-30) in the status byte.
                let cur = desc.status.load(Ordering::Acquire);
                if cur & 0xFF == 0 && cur & DescriptorStatus::LEVEL == 0 {
                    desc.status.fetch_or(illegal, Ordering::AcqRel);
                    page.per_vmpl_events.fetch_or(1 << 1, Ordering::AcqRel);
                    self.stats.hostile_illegal = self.stats.hostile_illegal.saturating_add(1);
                }
                self.host_notify(j);
            }
            1 => {
                // A level presentation of an illegal vector.
                let cur = desc.status.load(Ordering::Acquire);
                if cur & 0xFF == 0 && cur & DescriptorStatus::LEVEL == 0 {
                    desc.status
                        .fetch_or(illegal | DescriptorStatus::LEVEL, Ordering::AcqRel);
                    self.stats.hostile_illegal = self.stats.hostile_illegal.saturating_add(1);
                }
                self.host_notify(j);
            }
            2 => {
                // Spurious #HV: NoFurtherSignal raised, nothing posted.
                if page.host().raise_no_further_signal()
                    && let Some(v) = self.vcpus.get_mut(j)
                {
                    v.hv_signalled = true;
                }
                self.stats.hostile_spurious_hv = self.stats.hostile_spurious_hv.saturating_add(1);
                self.wake(j);
            }
            3 => {
                // Events for VMPLs that do not exist.
                page.per_vmpl_events.fetch_or(0xF8, Ordering::AcqRel);
                for vmpl in [0u8, 4, 7] {
                    if page.host().post_vector(vmpl, 0x55).is_err() {
                        self.stats.host_refused_posts =
                            self.stats.host_refused_posts.saturating_add(1);
                    }
                }
                self.stats.hostile_bad_vmpl = self.stats.hostile_bad_vmpl.saturating_add(1);
                self.host_notify(j);
            }
            4 => {
                // Posts for VMPL1 / VMPL3, where no guest runs.
                let vmpl = if self.rng.chance(500_000) { 1 } else { 3 };
                let _ = page.host().post_vector(vmpl, 0x55);
                self.stats.hostile_bad_vmpl = self.stats.hostile_bad_vmpl.saturating_add(1);
                self.host_notify(j);
            }
            5 => {
                // A flood: many vectors at once.
                let count = self.rng.range(32, 224);
                for _ in 0..count {
                    let vector = self.rng.range(31, 255) as u8;
                    if vector == TIMER_VECTOR || vector == 0x61 || vector == 0x92 {
                        continue;
                    }
                    self.host_post_edge(j, vector);
                }
                self.stats.hostile_floods = self.stats.hostile_floods.saturating_add(1);
                self.host_notify(j);
            }
            6 => {
                // Garbage in VMPL0's own vector byte.
                page.vector.store(illegal as u8, Ordering::Release);
                self.host_notify(j);
            }
            7 => {
                // Reserved status bits.
                desc.status.fetch_or(0x7000_3800, Ordering::AcqRel);
                self.host_notify(j);
            }
            8 => {
                self.host_post_nmi(j);
                self.host_notify(j);
            }
            9 => {
                if self.host_post_mc(j) {
                    self.stats.hostile_mc = self.stats.hostile_mc.saturating_add(1);
                }
            }
            10 => {
                let _ = page.host().post_ipi_requested(GUEST_VMPL);
                self.host_notify(j);
            }
            11 => {
                // NoFurtherSignal never cleared (for a while).
                self.nfs_stuck = !self.nfs_stuck;
                self.stats.hostile_nfs_phases = self.stats.hostile_nfs_phases.saturating_add(1);
            }
            _ => {
                // The next #HV IPI calls fail.
                let n = self.rng.range(1, 3) as u32;
                self.m.platform.fail_hv_ipi.set(n);
            }
        }
    }

    /// Between VMPL0's #HV read and its `before_run` read the host changes
    /// the page: garbage per-VMPL bits and VMPL0 byte, and a new post.
    pub(crate) fn hostile_between_reads(&mut self, i: usize) {
        self.stats.hostile_races = self.stats.hostile_races.saturating_add(1);
        let illegal = self.rng.range(1, 30) as u8;
        if let Some(page) = self.m.doorbells.get(i) {
            page.per_vmpl_events.fetch_or(0x10, Ordering::AcqRel);
            let _ = page
                .vector
                .compare_exchange(0, illegal, Ordering::AcqRel, Ordering::Acquire);
        }
        if self.host_target_ok(i) {
            let vector = self.rng.pick(&DEVICE_VECTORS, 0x31);
            self.host_post_edge(i, vector);
        }
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

    /// Disable-AI: the host takes vCPU `j`'s APIC from the descriptor the
    /// engine wrote back and emulates it from now on.
    fn host_takeover(&mut self, j: usize, request: DisableAiRequest) {
        if request.vmpl != GUEST_VMPL {
            self.violation(j, format!("disable-AI for VMPL {}", request.vmpl));
        }
        let mut irr = VectorSet::EMPTY;
        let mut isr = VectorSet::EMPTY;
        let mut nmi = false;
        let mut mc = false;
        if let Some(desc) = self
            .m
            .doorbells
            .get(j)
            .and_then(|p| p.descriptor(GUEST_VMPL).ok())
        {
            let status = DescriptorStatus::from_bits(desc.status.swap(0, Ordering::AcqRel));
            let vector = status.pending_vector();
            if vector >= 31 {
                irr.insert(vector);
            }
            if status.vector_31() {
                irr.insert(31);
            }
            nmi = status.nmi_pending();
            // A machine check handed back (status bit 9, spec §3) is the
            // host's to inject now.
            mc = status.mc_pending();
            let mut words = [0u32; 8];
            for (w, a) in words.iter_mut().skip(1).zip(desc.irr.iter()) {
                *w = a.swap(0, Ordering::AcqRel);
            }
            irr = irr.union(&VectorSet::from_words(words));
            let mut iwords = [0u32; 8];
            for (w, a) in iwords.iter_mut().zip(desc.isr.iter()) {
                *w = a.swap(0, Ordering::AcqRel);
            }
            isr = VectorSet::from_words(iwords);
        }
        self.check_handed_isr(j, &isr);
        let mut tmr = VectorSet::EMPTY;
        for line in &self.lines {
            if line.target == j && line.outstanding {
                tmr.insert(line.vector);
            }
        }
        let config = crate::world::engine_config(j).apic;
        let mut state = LocalApic::new(config).save();
        state.apic_base = apic::APIC_DEFAULT_BASE
            | apic::APIC_BASE_EN
            | apic::APIC_BASE_EXTD
            | if j == 0 { apic::APIC_BASE_BSP } else { 0 };
        state.svr = 0x1FF;
        state.tpr = request.tpr;
        state.irr = irr;
        state.isr = isr;
        state.tmr = tmr;
        let mut host_apic = LocalApic::restore(&state);
        let timer_on = self.vcpus.get(j).is_some_and(|v| v.guest.timer_on);
        if timer_on && let Some(period) = self.profile.timer_period {
            let now = self.now;
            let _ = host_apic.write_msr(apic::MSR_TIMER_DIVIDE, 0xB, now);
            let _ = host_apic.write_msr(
                apic::MSR_LVT_TIMER,
                (1 << 17) | u64::from(TIMER_VECTOR),
                now,
            );
            let _ = host_apic.write_msr(apic::MSR_TIMER_INITIAL, period, now);
        }
        if let Some(vmsa) = self.m.vmsas.get_mut(j) {
            let features = vmsa.sev_features();
            if self.config.host_clears_ai {
                vmsa.set_sev_features(features.difference(SevFeatures::ALTERNATE_INJECTION));
            }
            if self.config.sabotage == Some(crate::world::Sabotage::KeepAlternateInjection) {
                vmsa.set_sev_features(features.union(SevFeatures::ALTERNATE_INJECTION));
            }
        }
        if let Some(v) = self.vcpus.get_mut(j) {
            v.handed_back = true;
            v.host_apic = Some(host_apic);
            v.host_nmi |= nmi;
            v.host_mc |= mc;
        }
        self.stats.handbacks = self.stats.handbacks.saturating_add(1);
        self.schedule_recreate(j);
        let now = self.now;
        if let Some(t) = self.trace.as_mut() {
            t.instant(j, now, "APIC handed back to the host", "");
        }
    }

    /// KVM's injection into the guest after a hand-back (its own APIC).
    ///
    /// Only while SEV_FEATURES.AlternateInjection is clear in the guest
    /// VMSA: with it set the hardware takes event injection from fields only
    /// VMPL0 writes (spec §1, §2), so the host cannot inject at all. A host
    /// interrupt pending then can never reach the guest: a violation, not
    /// a silent wait (the hand-back must clear the bit, spec §5).
    pub(crate) fn kvm_present(&mut self, i: usize) {
        let ai = self
            .m
            .vmsas
            .get(i)
            .is_some_and(|v| v.sev_features().contains(SevFeatures::ALTERNATE_INJECTION));
        if ai {
            let pending = self.vcpus.get(i).is_some_and(|v| {
                v.host_nmi
                    || v.host_mc
                    || v.host_apic
                        .as_ref()
                        .is_some_and(|a| a.irr().highest().is_some())
            });
            let first = self.vcpus.get(i).is_some_and(|v| !v.ai_stuck_reported);
            if pending && first {
                if let Some(v) = self.vcpus.get_mut(i) {
                    v.ai_stuck_reported = true;
                }
                self.violation(
                    i,
                    "host interrupt pending after the hand-back, but AlternateInjection is still set in the VMSA: the host can never inject it",
                );
            }
            return;
        }
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let Some(host_apic) = v.host_apic.as_mut() else {
            return;
        };
        if v.host_mc && !vmsa.event_inj().valid() {
            vmsa.set_event_inj(vmsa::EventInj::exception(18, None));
            v.host_mc = false;
        }
        let ctrl = vmsa.vintr_ctrl();
        if v.host_nmi && !ctrl.v_nmi() {
            vmsa.set_vintr_ctrl(ctrl.with_v_nmi(true));
            v.host_nmi = false;
            v.kvm_vnmi = true;
        }
        rules::set_v_tpr(vmsa, host_apic.tpr() >> 4);
        if let Some(vector) = host_apic.highest_deliverable() {
            if rules::can_take_interrupt(vmsa) {
                if rules::inject_interrupt(vmsa, vector).is_ok() {
                    host_apic.acknowledge(vector);
                    v.kvm_eventinj = Some(vector);
                }
            } else if !vmsa.vintr_ctrl().v_irq() && rules::queue_v_irq(vmsa, vector).is_ok() {
                v.kvm_virq = Some(vector);
            }
        } else if let Some(vector) = host_apic.irr().highest() {
            // Blocked only by TPR: queued in V_IRQ with V_INTR_PRIO = its
            // class, so the hardware's V_TPR comparison delivers it when the
            // guest lowers CR8 (AMD APM vol. 2 §15.21.4). Real KVM gets the
            // same effect from its CR8-write intercept; without either the
            // vector would wait for an unrelated exit.
            let in_service = host_apic.isr().highest().unwrap_or(0);
            if vector & 0xF0 > in_service & 0xF0
                && !vmsa.vintr_ctrl().v_irq()
                && rules::queue_v_irq(vmsa, vector).is_ok()
            {
                v.kvm_virq = Some(vector);
            }
        }
    }

    /// KVM resolves a run of a handed-back vCPU.
    pub(crate) fn kvm_resolve(&mut self, i: usize) {
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let Some(host_apic) = v.host_apic.as_mut() else {
            return;
        };
        v.virq_taken = None;
        let ctrl = vmsa.vintr_ctrl();
        let out = rules::take_undelivered(vmsa);
        if let Some(vector) = v.kvm_eventinj.take()
            && out.undelivered_event.is_some()
        {
            host_apic.unacknowledge(vector);
        }
        if out
            .undelivered_event
            .is_some_and(|e| e.event_type() == EventType::Exception && e.vector() == 18)
        {
            v.host_mc = true;
        }
        if let VirqOutcome::Taken(vector) = out.v_irq
            && v.kvm_virq == Some(vector)
        {
            host_apic.acknowledge(vector);
        }
        v.kvm_virq = None;
        if let Reinjection::Reinjected { event, .. } = rules::reinject_exit_int_info(vmsa)
            && event.event_type() == EventType::Intr
        {
            v.kvm_eventinj = Some(event.vector());
        }
        if v.kvm_vnmi && !ctrl.v_nmi() {
            v.kvm_vnmi = false;
        }
        host_apic.set_tpr((ctrl.v_tpr() & 0xF) << 4);
    }

    /// A host exit of a handed-back vCPU: like KVM at every exit, first
    /// account for a V_IRQ the guest took during the run (IRR -> ISR).
    fn kvm_sync_virq(&mut self, i: usize) {
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let Some(host_apic) = v.host_apic.as_mut() else {
            return;
        };
        if let Some(vector) = v.kvm_virq
            && !vmsa.vintr_ctrl().v_irq()
        {
            let ctrl = vmsa.vintr_ctrl();
            vmsa.set_vintr_ctrl(ctrl.with_v_intr_vector(0).with_v_intr_prio(0));
            host_apic.acknowledge(vector);
            v.kvm_virq = None;
            v.virq_taken = None;
        }
    }

    /// The guest's EOI after the hand-back: to the host's APIC.
    pub(crate) fn host_eoi(&mut self, i: usize) {
        self.stats.host_exits = self.stats.host_exits.saturating_add(1);
        self.kvm_sync_virq(i);
        let info = self
            .vcpus
            .get_mut(i)
            .and_then(|v| v.host_apic.as_mut())
            .and_then(LocalApic::eoi);
        if let Some(info) = info
            && info.level
        {
            self.line_eoi(i, info.vector);
        }
    }

    /// A handed-back guest's IPI, routed by the host.
    pub(crate) fn host_route_ipi(&mut self, from: usize, dest: Dest, vector: u8, nmi: bool) {
        self.stats.host_exits = self.stats.host_exits.saturating_add(1);
        self.kvm_sync_virq(from);
        self.stats.guest_ipis = self.stats.guest_ipis.saturating_add(1);
        let n = self.n();
        let targets: Vec<usize> = match dest {
            Dest::Physical(id) => vec![id as usize],
            Dest::AllButSelf => (0..n).filter(|j| *j != from).collect(),
            Dest::SelfIpi => vec![from],
        };
        for j in targets {
            if !self.vcpus.get(j).is_some_and(|v| v.created && !v.stopped) {
                continue;
            }
            if nmi {
                self.host_post_nmi(j);
            } else if self.vcpus.get(j).is_some_and(|v| v.handed_back) || self.host_target_ok(j) {
                self.host_post_edge(j, vector);
            }
            self.notify_any(j);
        }
    }
}

/// Whether an #HV IPI's ICR forwards a guest IPI (any vector but the
/// notification vector, or NMI delivery) rather than kicking the target's
/// VMPL0: the host tells them apart by vector (`kernel::platform::forward_icr`).
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

fn is_forward(icr: u64) -> bool {
    let nmi = (icr >> 8) & 0b111 == 0b100;
    nmi || icr as u8 != kernel::platform::DEFAULT_NOTIFICATION_VECTOR
}
