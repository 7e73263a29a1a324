//! The hostile hypervisor (`hostile-hv`, `docs/simulator.md`): garbage
//! and races in the doorbell page, NoFurtherSignal kept set, floods, BUSY
//! set before VMRUN, dropped kicks and failing GHCB calls.

use core::sync::atomic::Ordering;

use altinj_doorbell::DescriptorStatus;

use crate::guest::{DEVICE_VECTORS, TIMER_VECTOR};
use crate::world::{GUEST_VMPL, NEVER, Sim};

impl Sim {
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
}
