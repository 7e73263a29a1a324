//! Device-like sources: in the `device` program (and, sparser, as
//! background noise in every other program) at seeded random times the
//! host posts, into a seeded random vCPU's doorbell page, an edge vector
//! (0x70-0x7F), the vCPU's level line (vector 0x90, re-asserted only after
//! its specific EOI) or an NMI, and raises #HV through the real LAPIC. Each
//! instance is claimed in the ledger first, so nothing coalesces. After the
//! posts: drain (every claim delivered), then the guests are told to finish
//! and woken with one more vector each.

use core::sync::atomic::Ordering;

use super::guest::{self, vec};
use super::harness::{Rng, RunConfig};
use super::host::{self, RunShared};
use super::ledger;
use crate::{cpu, time};

/// Most time between two posts (device program / noise in the others).
const MAX_GAP_US: u64 = 200;
const NOISE_MAX_GAP_US: u64 = 2_000;
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
    /// Background noise: posts until every vCPU asked to stop, never to
    /// one that did.
    noise: bool,
    max_gap_us: u64,
}

impl Devices {
    pub fn new(cfg: RunConfig) -> Self {
        Self {
            rng: Rng::new(cfg.seed),
            next_at: 0,
            posted: 0,
            target: u64::from(cfg.rounds).saturating_mul(cfg.vcpus as u64),
            phase: Phase::Posting,
            noise: cfg.program != guest::Program::Device,
            max_gap_us: if cfg.program == guest::Program::Device {
                MAX_GAP_US
            } else {
                NOISE_MAX_GAP_US
            },
        }
    }

    /// Called by the run loop between guest runs.
    pub fn step(&mut self, run: &RunShared) {
        let now = cpu::rdtsc();
        match self.phase {
            Phase::Posting => {
                if now < self.next_at {
                    return;
                }
                let gap = self
                    .rng
                    .below(self.max_gap_us.saturating_mul(time::tsc_per_ms()) / 1000);
                self.next_at = now.saturating_add(gap);
                if self.post_one(run) {
                    self.posted = self.posted.saturating_add(1);
                }
                if self.noise {
                    return;
                }
                if self.posted >= self.target {
                    self.phase = Phase::Draining(time::Deadline::after_ms(DRAIN_MS));
                }
            }
            Phase::Draining(deadline) => {
                if ledger::outstanding_total() == 0 || deadline.passed() {
                    guest::FINISHED.store(true, Ordering::SeqCst);
                    for k in 0..run.cfg.vcpus {
                        host::post_edge(run, k, vec::WAKE);
                    }
                    self.phase = Phase::Finished;
                }
            }
            Phase::Finished => {}
        }
    }

    /// One random post; false when the chosen instance was outstanding.
    fn post_one(&mut self, run: &RunShared) -> bool {
        let n = run.cfg.vcpus as u64;
        let k = self.rng.below(n) as usize;
        let kind = self.rng.below(100);
        if host::done_asked(k) {
            return false;
        }
        if kind < 70 {
            let span = u64::from(vec::DEV_LAST - vec::DEV_FIRST) + 1;
            let vector = vec::DEV_FIRST.wrapping_add(self.rng.below(span) as u8);
            host::post_edge(run, k, vector)
        } else if kind < 85 {
            host::post_level(run, k)
        } else {
            host::post_nmi(run, k)
        }
    }
}
