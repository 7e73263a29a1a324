//! Device-like sources of the `device` program: at seeded random times the
//! host posts, into a seeded random vCPU's doorbell page, an edge vector
//! (0x70-0x7F), the vCPU's level line (vector 0x90, re-asserted only after
//! its specific EOI) or an NMI, and raises #HV through the real LAPIC. Each
//! instance is claimed in the ledger first, so nothing coalesces. After the
//! posts: drain (every claim delivered), then the guests are told to finish
//! and woken with one more vector each.

use core::sync::atomic::Ordering;

use super::guest::{self, vec};
use super::harness::{HarnessWorld, Rng, RunConfig, post_edge, signal};
use super::ledger::{self, HOST};
use crate::{cpu, time};

/// Most time between two posts.
const MAX_GAP_US: u64 = 200;
/// How long the drain may take before the run finishes anyway (the
/// verdict then reports the claims left as lost).
const DRAIN_MS: u64 = 2_000;

enum Phase {
    Posting,
    Draining(time::Deadline),
    Finished,
}

/// The devices' state for one run.
pub struct Devices {
    rng: Rng,
    next_at: u64,
    posted: u64,
    target: u64,
    phase: Phase,
}

impl Devices {
    pub fn new(cfg: RunConfig) -> Self {
        Self {
            rng: Rng::new(cfg.seed),
            next_at: 0,
            posted: 0,
            target: u64::from(cfg.rounds).saturating_mul(cfg.vcpus as u64),
            phase: Phase::Posting,
        }
    }

    /// Called by the run loop between guest runs.
    pub fn step(&mut self, w: &HarnessWorld<'_>) {
        let now = cpu::rdtsc();
        match self.phase {
            Phase::Posting => {
                if now < self.next_at {
                    return;
                }
                let gap = self
                    .rng
                    .below(MAX_GAP_US.saturating_mul(time::tsc_per_ms()) / 1000);
                self.next_at = now.saturating_add(gap);
                if self.post_one(w) {
                    self.posted = self.posted.saturating_add(1);
                }
                if self.posted >= self.target {
                    self.phase = Phase::Draining(time::Deadline::after_ms(DRAIN_MS));
                }
            }
            Phase::Draining(deadline) => {
                if ledger::outstanding_total() == 0 || deadline.passed() {
                    guest::FINISHED.store(true, Ordering::SeqCst);
                    for k in 0..w.cfg().vcpus {
                        post_edge(w.doorbells(), k, vec::WAKE);
                    }
                    self.phase = Phase::Finished;
                }
            }
            Phase::Finished => {}
        }
    }

    /// One random post; false when the chosen instance was outstanding.
    fn post_one(&mut self, w: &HarnessWorld<'_>) -> bool {
        let n = w.cfg().vcpus as u64;
        let k = self.rng.below(n) as usize;
        let kind = self.rng.below(100);
        let Some(page) = w.doorbells().get(k) else {
            return false;
        };
        if kind < 70 {
            let span = u64::from(vec::DEV_LAST - vec::DEV_FIRST) + 1;
            let vector = vec::DEV_FIRST.wrapping_add(self.rng.below(span) as u8);
            return post_edge(w.doorbells(), k, vector);
        }
        if kind < 85 {
            let Some(p) = w.platform(k) else { return false };
            if p.level_up.get() || !ledger::claim(k, usize::from(vec::LEVEL), cpu::rdtsc()) {
                return false;
            }
            if page.host().post_level(2, vec::LEVEL).is_err() {
                ledger::unclaim(k, usize::from(vec::LEVEL));
                return false;
            }
            p.level_up.set(true);
            HOST.add(k, usize::from(vec::LEVEL));
            signal(page, k);
            return true;
        }
        if !ledger::claim(k, ledger::NMI, cpu::rdtsc()) {
            return false;
        }
        if page.host().post_nmi(2).is_err() {
            ledger::unclaim(k, ledger::NMI);
            return false;
        }
        HOST.add(k, ledger::NMI);
        signal(page, k);
        true
    }
}
