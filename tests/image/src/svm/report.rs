//! What a run measured and the ledger verdict: per vCPU and per vector,
//! the host-side accepted instances must equal the guest-side received
//! ones plus the ones still pending in the engine's IRR; no duplicate, no
//! claim left outstanding, no guest-side rule violation, every level
//! delivery answered by exactly one specific EOI, no fatal engine state.

use core::sync::atomic::Ordering;

use altinj_kernel::VcpuEngine;

use super::guest::vec;
use super::harness::RunConfig;
use super::ledger::{self, GUEST, HOST, MAX_VCPUS};
use super::vmcb::Fixups;
use crate::serial::println;
use crate::time;

/// Why the run loop stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stop {
    Running,
    Done,
    Hang,
    Fatal,
    BadExit,
}

/// One vCPU's figures.
#[derive(Clone, Copy, Default, Debug)]
pub struct VcpuFigures {
    pub delivered: u64,
    pub eventinj: u64,
    pub virq: u64,
    pub virq_taken: u64,
    pub reinjected: u64,
    pub recalled: u64,
    pub forged: u64,
    pub timer_fires: u64,
    pub ipis_sent: u64,
    pub nmis: u64,
    pub level_eois: u64,
    pub specific_eois: u64,
    pub kicks: u64,
    pub protocol_calls: u64,
    pub fixups: Fixups,
    pub pending: [u64; 4],
    pub fatal: bool,
}

/// A run's report.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub cfg: RunConfig,
    pub stop: Stop,
    pub tsc: u64,
    pub idles: u64,
    /// Halted vCPUs run only so that a pending NMI can follow one in service.
    pub nmi_wakes: u64,
    pub hv_taken: u64,
    pub timer_irqs: u64,
    /// Kicks sent as real IPIs to another CPU, and kick IPIs received.
    pub kick_ipis: u64,
    pub kicks_received: u64,
    /// CPUs the vCPUs ran on (1: round-robin on one CPU).
    pub cpus: usize,
    pub exits: [u64; 7],
    pub bad_exit: u64,
    pub bad_rip: u64,
    pub gp_displaced: u64,
    pub vcpus: [VcpuFigures; MAX_VCPUS],
    pub accepted: u64,
    pub received: u64,
    pub pending: u64,
    pub mismatches: u64,
    pub first_mismatch: (usize, usize, u32, u32),
    pub lost_claims: u32,
    pub duplicates: u64,
    pub violations: u64,
    pub level_mismatch: u64,
    pub pass: bool,
}

const EXIT_NAMES: [&str; 7] = ["hlt", "msr", "vmmcall", "intr", "busy", "npf", "other"];

impl Report {
    pub fn new(cfg: RunConfig) -> Self {
        Self {
            cfg,
            stop: Stop::Running,
            tsc: 0,
            idles: 0,
            nmi_wakes: 0,
            hv_taken: 0,
            timer_irqs: 0,
            kick_ipis: 0,
            kicks_received: 0,
            cpus: 1,
            exits: [0; 7],
            bad_exit: 0,
            bad_rip: 0,
            gp_displaced: 0,
            vcpus: [VcpuFigures::default(); MAX_VCPUS],
            accepted: 0,
            received: 0,
            pending: 0,
            mismatches: 0,
            first_mismatch: (0, 0, 0, 0),
            lost_claims: 0,
            duplicates: 0,
            violations: 0,
            level_mismatch: 0,
            pass: false,
        }
    }

    /// Takes the host interrupt counters of all CPUs (after the run).
    pub fn host_counters(&mut self) {
        use super::host::{HV_TAKEN, KICK_IPIS, KICKS_RECEIVED, TIMER_IRQS};
        self.hv_taken = HV_TAKEN.load(Ordering::SeqCst);
        self.timer_irqs = TIMER_IRQS.load(Ordering::SeqCst);
        self.kick_ipis = KICK_IPIS.load(Ordering::SeqCst);
        self.kicks_received = KICKS_RECEIVED.load(Ordering::SeqCst);
    }

    /// Adds another CPU's part (its vCPU `k`'s figures, exits, idles).
    pub fn absorb(&mut self, other: &Report, k: usize) {
        if let (Some(dst), Some(src)) = (self.vcpus.get_mut(k), other.vcpus.get(k)) {
            *dst = *src;
        }
        for (a, b) in self.exits.iter_mut().zip(other.exits.iter()) {
            *a = a.saturating_add(*b);
        }
        self.idles = self.idles.saturating_add(other.idles);
        self.nmi_wakes = self.nmi_wakes.saturating_add(other.nmi_wakes);
        self.gp_displaced = self.gp_displaced.saturating_add(other.gp_displaced);
        self.tsc = self.tsc.max(other.tsc);
        if other.stop != Stop::Done {
            self.stop = other.stop;
            if other.stop == Stop::BadExit {
                self.bad_exit = other.bad_exit;
                self.bad_rip = other.bad_rip;
            }
        }
    }

    pub fn count_exit(&mut self, code: u64) {
        use super::hw::exit;
        let i = match code {
            exit::HLT => 0,
            exit::MSR => 1,
            exit::VMMCALL => 2,
            exit::INTR => 3,
            exit::BUSY => 4,
            exit::NPF => 5,
            _ => 6,
        };
        if let Some(e) = self.exits.get_mut(i) {
            *e = e.saturating_add(1);
        }
    }

    pub fn add_vcpu(
        &mut self,
        k: usize,
        engine: &VcpuEngine,
        fixups: &Fixups,
        specific_eois: u64,
        kicks: u64,
        host_pending: Option<[u64; 4]>,
    ) {
        let c = engine.counters();
        let mut pending = [0u64; 4];
        for v in engine.apic().irr().iter() {
            if let Some(w) = pending.get_mut(usize::from(v >> 6)) {
                *w |= 1 << (v & 63);
            }
        }
        // A handed-back vCPU's pending vectors are in the host's emulation.
        if let Some(words) = host_pending {
            pending = words;
        }
        if let Some(f) = self.vcpus.get_mut(k) {
            *f = VcpuFigures {
                delivered: GUEST.sum(k, 0..256),
                eventinj: c.presented_eventinj,
                virq: c.presented_virq,
                virq_taken: c.virq_acknowledged,
                reinjected: c.reinjected,
                recalled: c.recalled,
                forged: c.forged_exit_events,
                timer_fires: c.timer_fires,
                ipis_sent: c.ipis_sent,
                nmis: c.nmis_injected,
                level_eois: c.host_level_eois,
                specific_eois,
                kicks,
                protocol_calls: c.protocol_calls,
                fixups: *fixups,
                pending,
                fatal: engine.fatal().is_some(),
            };
        }
    }

    /// Compares the ledgers per vCPU and vector instance.
    pub fn verdict(&mut self) {
        for k in 0..self.cfg.vcpus {
            let Some(f) = self.vcpus.get(k).copied() else {
                continue;
            };
            for v in 0..256usize {
                let host = HOST.get(k, v);
                let guest = GUEST.get(k, v);
                let pending = f
                    .pending
                    .get(v / 64)
                    .map_or(0, |w| u32::from(w & (1 << (v % 64)) != 0));
                // Spurious (0xFF) has no host-side instance.
                if v == 0xFF {
                    continue;
                }
                self.accepted = self.accepted.saturating_add(u64::from(host));
                self.received = self.received.saturating_add(u64::from(guest));
                self.pending = self.pending.saturating_add(u64::from(pending));
                if host != guest.saturating_add(pending) {
                    if self.mismatches == 0 {
                        self.first_mismatch = (k, v, host, guest);
                    }
                    self.mismatches = self.mismatches.saturating_add(1);
                }
            }
            let level = u64::from(GUEST.get(k, usize::from(vec::LEVEL)));
            if level != f.specific_eois || f.level_eois != f.specific_eois {
                self.level_mismatch = self.level_mismatch.saturating_add(1);
            }
        }
        self.lost_claims = ledger::outstanding_total();
        self.duplicates = ledger::DUPLICATES.load(Ordering::SeqCst);
        self.violations = ledger::VIOLATIONS.load(Ordering::SeqCst);
        let fatal = self.vcpus.iter().any(|f| f.fatal);
        self.pass = self.stop == Stop::Done
            && self.mismatches == 0
            && self.lost_claims == 0
            && self.duplicates == 0
            && self.violations == 0
            && self.level_mismatch == 0
            && !fatal
            && self.received > 0;
    }

    fn totals(&self) -> VcpuFigures {
        let mut t = VcpuFigures::default();
        for f in self.vcpus.iter().take(self.cfg.vcpus) {
            t.delivered = t.delivered.saturating_add(f.delivered);
            t.eventinj = t.eventinj.saturating_add(f.eventinj);
            t.virq = t.virq.saturating_add(f.virq);
            t.virq_taken = t.virq_taken.saturating_add(f.virq_taken);
            t.reinjected = t.reinjected.saturating_add(f.reinjected);
            t.recalled = t.recalled.saturating_add(f.recalled);
            t.forged = t.forged.saturating_add(f.forged);
            t.fixups.vmruns = t.fixups.vmruns.saturating_add(f.fixups.vmruns);
            t.fixups.virq_withheld = t
                .fixups
                .virq_withheld
                .saturating_add(f.fixups.virq_withheld);
            t.fixups.cr8_writes = t.fixups.cr8_writes.saturating_add(f.fixups.cr8_writes);
            t.fixups.virq_cut_as_exception = t
                .fixups
                .virq_cut_as_exception
                .saturating_add(f.fixups.virq_cut_as_exception);
            t.fixups.busy_refused = t.fixups.busy_refused.saturating_add(f.fixups.busy_refused);
        }
        t
    }

    /// VMRUNs per delivered interrupt, times 100.
    pub fn vmruns_per_irq_x100(&self) -> u64 {
        let t = self.totals();
        div(t.fixups.vmruns.saturating_mul(100), t.delivered)
    }

    /// Prints the table and the verdict line `svm: ... PASS|FAIL`.
    pub fn print(&self) {
        let c = &self.cfg;
        println!(
            "svm: program {}, {} vCPUs on {}, seed {}, rounds {}{}",
            c.program.name(),
            c.vcpus,
            if self.cpus > 1 {
                "their own CPUs (one per AP; devices on the BSP)"
            } else {
                "one CPU (round-robin)"
            },
            c.seed,
            c.rounds,
            if c.break_recall {
                ", BROKEN: recall disabled"
            } else {
                ""
            }
        );
        println!(
            "  vcpu delivered eventinj  v_irq v_irq_taken reinjected recalled forged  vmruns vmruns/irq  cr8 withheld"
        );
        let row = |name: &str, f: &VcpuFigures| {
            let per = div(f.fixups.vmruns.saturating_mul(100), f.delivered);
            println!(
                "  {name:>4} {:>9} {:>8} {:>6} {:>11} {:>10} {:>8} {:>6} {:>7} {:>7}.{:02} {:>4} {:>8}",
                f.delivered,
                f.eventinj,
                f.virq,
                f.virq_taken,
                f.reinjected,
                f.recalled,
                f.forged,
                f.fixups.vmruns,
                div(per, 100),
                per.checked_rem(100).unwrap_or(0),
                f.fixups.cr8_writes,
                f.fixups.virq_withheld
            );
        };
        for (k, f) in self.vcpus.iter().enumerate().take(c.vcpus) {
            let mut name = [b' '; 4];
            if let Some(b) = name.get_mut(3) {
                *b = b'0'.wrapping_add(k as u8);
            }
            row(core::str::from_utf8(&name).unwrap_or("?"), f);
        }
        row("all", &self.totals());
        let mut exits = [0u64; 7];
        exits.copy_from_slice(&self.exits);
        print_exits(&exits);
        let n = ledger::LATENCY_N.load(Ordering::SeqCst);
        let max = ledger::MAX_LATENCY.load(Ordering::SeqCst);
        let mean = div(ledger::LATENCY_SUM.load(Ordering::SeqCst), n);
        let per_us = div(time::tsc_per_ms(), 1000);
        println!(
            "  latency (device post -> guest handler, {n} instances): max {max} TSC ticks ({} us), mean {mean} ({} us)",
            div(max, per_us),
            div(mean, per_us)
        );
        println!(
            "  host: {} #HV via LAPIC vector 28, {} host timer irqs, {} kick IPIs sent / {} taken, {} idle halts, {} NMI wakes, run {} ms",
            self.hv_taken,
            self.timer_irqs,
            self.kick_ipis,
            self.kicks_received,
            self.idles,
            self.nmi_wakes,
            div(self.tsc, time::tsc_per_ms())
        );
        let t = self.totals();
        let engine = self.vcpus.iter().take(c.vcpus).fold([0u64; 5], |mut a, f| {
            for (x, y) in a.iter_mut().zip([
                f.timer_fires,
                f.ipis_sent,
                f.nmis,
                f.kicks,
                f.protocol_calls,
            ]) {
                *x = x.saturating_add(y);
            }
            a
        });
        let [fires, ipis, nmis, kicks, calls] = engine;
        println!(
            "  engine: {fires} timer expiries, {ipis} IPIs sent, {nmis} NMIs injected, {kicks} kicks, {calls} protocol calls"
        );
        println!(
            "  quirks: V_IRQ withheld (prio == V_TPR) {}, CR8 writes emulated {}, V_IRQ cut as type-3 {}, VMRUN refused (BUSY) {}",
            t.fixups.virq_withheld,
            t.fixups.cr8_writes,
            t.fixups.virq_cut_as_exception,
            t.fixups.busy_refused
        );
        let (mk, mv, mh, mg) = self.first_mismatch;
        println!(
            "  ledger: {} accepted, {} received, {} pending in IRR; {} mismatches (first: vcpu {mk} vector {mv:#x} host {mh} guest {mg}), {} lost claims, {} twice, {} violations (first {:#x}), {} level/EOI mismatches",
            self.accepted,
            self.received,
            self.pending,
            self.mismatches,
            self.lost_claims,
            self.duplicates,
            self.violations,
            ledger::FIRST_VIOLATION.load(Ordering::SeqCst),
            self.level_mismatch
        );
        if c.program == super::guest::Program::Handback {
            println!(
                "  hand-back: {} guest IPIs forwarded to the handed-back vCPU; QUERY_FEATURES after it answered {:#x} (spec §5: 0x80000001)",
                super::host::FORWARDS.load(Ordering::SeqCst),
                super::guest::AFTER_HANDBACK_QUERY.load(Ordering::SeqCst)
            );
        }
        if self.stop == Stop::BadExit {
            println!(
                "  stopped on exit code {:#x} at rip {:#x}",
                self.bad_exit, self.bad_rip
            );
        }
        println!(
            "svm: {} cpus {} seed {} vmruns/irq {}.{:02} max-latency {} stop {:?} {}",
            c.program.name(),
            self.cpus,
            c.seed,
            div(self.vmruns_per_irq_x100(), 100),
            self.vmruns_per_irq_x100().checked_rem(100).unwrap_or(0),
            max,
            self.stop,
            if self.pass { "PASS" } else { "FAIL" }
        );
    }
}

/// `a / b`, 0 when `b` is 0.
fn div(a: u64, b: u64) -> u64 {
    a.checked_div(b).unwrap_or(0)
}

fn print_exits(exits: &[u64; 7]) {
    crate::serial::print!("  exits:");
    for (name, n) in EXIT_NAMES.iter().zip(exits.iter()) {
        crate::serial::print!(" {name} {n}");
    }
    println!("");
}
