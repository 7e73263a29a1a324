//! What a Linux run measured, and its verdict: interrupts injected by kind
//! and path, VMRUNs and protocol calls per delivered interrupt, boot time,
//! the longest device-interrupt injection latency.

use core::sync::atomic::Ordering;

use altinj_kernel::{Counters, VcpuEngine};
use altinj_vmsa::{EventInj, EventType, VIntrCtrl, VmsaAccess};

use super::LinuxConfig;
use super::host;
use crate::serial::{print, println};
use crate::svm::hw::exit;
use crate::svm::vmcb::Vcpu;
use crate::time;

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Still running (never reported).
    Running,
    /// The guest powered off through ACPI: the expected end.
    PowerOff,
    /// Triple fault.
    Shutdown,
    /// The time limit passed.
    Hang,
    /// An exit the harness does not serve.
    BadExit,
    /// The engine reported a fatal error.
    Fatal,
}

/// The figures of one run.
pub struct Report {
    cfg: LinuxConfig,
    pub stop: Stop,
    pub tsc: u64,
    pub bad_exit: u64,
    pub bad_rip: u64,
    pub idles: u64,
    pub refused: u64,
    pub mmio: u64,
    pub garbage: u64,
    pub forged: u64,
    pub start_ipis: u64,
    exits: [(u64, u64); 10],
    eoi_calls: u64,
    deadline_calls: u64,
    icr_calls: u64,
    other_calls: u64,
    max_latency: u64,
    latencies: u64,
    total: Counters,
    vmruns: u64,
    virq_withheld: u64,
    virq_cut: u64,
    kicks: u64,
    pub pass: bool,
    in_service_at_end: u64,
    max_latency_vector: u8,
    sum_latency: u64,
    last_msr: u64,
    delivered: [u64; 256],
    /// EOIs by the vector they ended (index 0: EOI with nothing in service).
    eoi_by_vector: [u64; 256],
    via_eventinj: u64,
    via_virq: u64,
    nmis: u64,
}

const EXIT_NAMES: [(u64, &str); 10] = [
    (exit::INTR, "intr"),
    (exit::HLT, "hlt"),
    (exit::MSR, "msr"),
    (0x72, "cpuid"),
    (0x7B, "ioio"),
    (super::run::EXIT_NPF, "npf"),
    (exit::VMMCALL, "vmmcall"),
    (exit::NMI, "nmi"),
    (exit::BUSY, "busy"),
    (u64::MAX - 2, "other"),
];

impl Report {
    /// An empty report for `cfg`.
    pub fn new(cfg: LinuxConfig) -> Self {
        Self {
            cfg,
            stop: Stop::Running,
            tsc: 0,
            bad_exit: 0,
            bad_rip: 0,
            idles: 0,
            refused: 0,
            mmio: 0,
            garbage: 0,
            forged: 0,
            start_ipis: 0,
            exits: EXIT_NAMES.map(|(c, _)| (c, 0)),
            eoi_calls: 0,
            deadline_calls: 0,
            icr_calls: 0,
            other_calls: 0,
            max_latency: 0,
            latencies: 0,
            total: Counters::default(),
            vmruns: 0,
            virq_withheld: 0,
            virq_cut: 0,
            kicks: 0,
            pass: false,
            in_service_at_end: 0,
            max_latency_vector: 0,
            sum_latency: 0,
            last_msr: 0,
            delivered: [0; 256],
            eoi_by_vector: [0; 256],
            via_eventinj: 0,
            via_virq: 0,
            nmis: 0,
        }
    }

    /// Counts one exit by code.
    pub fn count_exit(&mut self, code: u64) {
        let slot = self
            .exits
            .iter()
            .position(|&(c, _)| c == code)
            .unwrap_or(self.exits.len().saturating_sub(1));
        if let Some((_, n)) = self.exits.get_mut(slot) {
            *n = n.saturating_add(1);
        }
    }

    /// Counts one protocol-3 register call by kind.
    pub fn count_protocol(&mut self, msr: u64, write: bool) {
        self.last_msr = msr | (u64::from(write) << 32);
        let c = match (msr, write) {
            (0x80B, true) => &mut self.eoi_calls,
            (0x6E0, true) => &mut self.deadline_calls,
            (0x830, true) => &mut self.icr_calls,
            _ => &mut self.other_calls,
        };
        *c = c.saturating_add(1);
    }

    /// What one VMRUN delivered: the EVENTINJ event or the V_IRQ vector
    /// presented (`before`) that the CPU took, i.e. that is no longer
    /// pending and was not cut by the exit (EXITINTINFO). Device vectors
    /// also give their post-to-delivery latency.
    pub fn note_run(&mut self, before: (EventInj, VIntrCtrl), vcpu: &Vcpu, now: u64) {
        let (ev, ctrl) = before;
        let info = vcpu.exit_int_info();
        let cut = |v: u8| info.valid() && info.vector() == v;
        if ev.valid() && !vcpu.event_inj().valid() {
            match ev.event_type() {
                EventType::Intr if !cut(ev.vector()) => self.delivered_via(ev.vector(), true, now),
                EventType::Nmi if !(info.valid() && info.event_type() == EventType::Nmi) => {
                    self.nmis = self.nmis.saturating_add(1);
                }
                _ => {}
            }
        }
        let v = ctrl.v_intr_vector();
        if ctrl.v_irq() && !vcpu.vintr_ctrl().v_irq() && !cut(v) {
            self.delivered_via(v, false, now);
        }
    }

    fn delivered_via(&mut self, vector: u8, eventinj: bool, now: u64) {
        let path = if eventinj {
            &mut self.via_eventinj
        } else {
            &mut self.via_virq
        };
        *path = path.saturating_add(1);
        if let Some(c) = self.delivered.get_mut(usize::from(vector)) {
            *c = c.saturating_add(1);
        }
        if let Some(t) = host::POSTED_AT.get(usize::from(vector)) {
            let at = t.swap(0, Ordering::SeqCst);
            if at != 0 {
                let latency = now.saturating_sub(at);
                if latency > self.max_latency {
                    self.max_latency_vector = vector;
                }
                self.max_latency = self.max_latency.max(latency);
                self.sum_latency = self.sum_latency.saturating_add(latency);
                self.latencies = self.latencies.saturating_add(1);
            }
        }
    }

    /// Delivered interrupts whose vectors fall in `range`.
    fn delivered_in(&self, range: core::ops::RangeInclusive<usize>) -> u64 {
        self.delivered
            .iter()
            .enumerate()
            .filter(|(v, _)| range.contains(v))
            .map(|(_, &c)| c)
            .sum()
    }

    /// An EOI of `vector` (the highest in service when the guest wrote EOI).
    pub fn note_eoi(&mut self, vector: Option<u8>) {
        let slot = vector.map_or(0, usize::from);
        if let Some(c) = self.eoi_by_vector.get_mut(slot) {
            *c = c.saturating_add(1);
        }
    }

    /// One CPU's share of the ledger (`real` mode: one vCPU per CPU).
    pub fn print_share(&self, k: usize) {
        println!(
            "linux: vCPU {k} on its own CPU: delivered maskable {} (EVENTINJ {}, V_IRQ {}), EOIs {}",
            self.via_eventinj.saturating_add(self.via_virq),
            self.via_eventinj,
            self.via_virq,
            self.eoi_calls
        );
    }

    /// Adds another CPU's share of the run (its exits, calls, deliveries).
    pub fn merge(&mut self, o: &Report) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        for ((_, a), (_, b)) in self.exits.iter_mut().zip(o.exits.iter()) {
            add(a, *b);
        }
        for (a, b) in self.delivered.iter_mut().zip(o.delivered.iter()) {
            add(a, *b);
        }
        for (a, b) in self.eoi_by_vector.iter_mut().zip(o.eoi_by_vector.iter()) {
            add(a, *b);
        }
        add(&mut self.idles, o.idles);
        add(&mut self.refused, o.refused);
        add(&mut self.mmio, o.mmio);
        add(&mut self.garbage, o.garbage);
        add(&mut self.forged, o.forged);
        add(&mut self.start_ipis, o.start_ipis);
        add(&mut self.eoi_calls, o.eoi_calls);
        add(&mut self.deadline_calls, o.deadline_calls);
        add(&mut self.icr_calls, o.icr_calls);
        add(&mut self.other_calls, o.other_calls);
        add(&mut self.latencies, o.latencies);
        add(&mut self.sum_latency, o.sum_latency);
        add(&mut self.via_eventinj, o.via_eventinj);
        add(&mut self.via_virq, o.via_virq);
        add(&mut self.nmis, o.nmis);
        if o.max_latency > self.max_latency {
            self.max_latency = o.max_latency;
            self.max_latency_vector = o.max_latency_vector;
        }
    }

    /// Adds one vCPU's engine counters and VMRUN figures.
    pub fn add_vcpu(&mut self, engine: &VcpuEngine, vcpu: &Vcpu, kicks: u64) {
        let c = engine.counters();
        if !engine.apic().isr().is_empty() {
            self.in_service_at_end = self.in_service_at_end.saturating_add(1);
        }
        self.total.accumulate(&c);
        self.vmruns = self.vmruns.saturating_add(vcpu.fixups.vmruns);
        self.virq_withheld = self.virq_withheld.saturating_add(vcpu.fixups.virq_withheld);
        self.virq_cut = self
            .virq_cut
            .saturating_add(vcpu.fixups.virq_cut_as_exception);
        self.kicks = self.kicks.saturating_add(kicks);
        if engine.fatal().is_some() {
            self.stop = Stop::Fatal;
        }
    }

    /// Interrupts the guest took, by the harness's count (`note_run`).
    pub fn delivered(&self) -> u64 {
        self.via_eventinj
            .saturating_add(self.via_virq)
            .saturating_add(self.nmis)
    }

    /// The ledger: every maskable interrupt the guest took was EOI'd once
    /// (Linux EOIs each one, and powers off with nothing in service), and
    /// no vCPU's APIC has a vector in service at the end.
    fn ledger_ok(&self) -> bool {
        let maskable = self.via_eventinj.saturating_add(self.via_virq);
        maskable == self.eoi_calls && self.in_service_at_end == 0
    }

    /// The verdict: the guest powered off, the ledger balances, and the
    /// engine reported nothing a correct host and guest cannot cause.
    pub fn verdict(&mut self) {
        let t = &self.total;
        let clean = t.platform_errors == 0
            && (self.cfg.hostile || (t.forged_exit_events == 0 && t.host_vectors_rejected == 0));
        self.pass = self.stop == Stop::PowerOff && clean && self.ledger_ok();
    }

    /// A progress line while the guest runs.
    pub fn progress(&self, rip: u64, halted: bool) {
        let device: u64 = host::DEVICE_IRQS
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum();
        print!(
            "linux: progress: vCPU 0 rip {rip:#x}{} exits",
            if halted { " (halted)" } else { "" }
        );
        for ((_, n), (_, name)) in self.exits.iter().zip(EXIT_NAMES.iter()) {
            if *n != 0 {
                print!(" {name} {n}");
            }
        }
        println!(
            ", device irqs {device}, #HV {}, EOI calls {}, deadline calls {}, last MSR {:#x}, refused {}",
            host::HV_TAKEN.load(Ordering::Relaxed),
            self.eoi_calls,
            self.deadline_calls,
            self.last_msr,
            self.refused
        );
    }

    /// Prints the table (`linux: ...` lines) and the verdict.
    pub fn print(&self) {
        let t = &self.total;
        let ms = self.tsc.checked_div(time::tsc_per_ms()).unwrap_or(0);
        let delivered = self.delivered();
        let per = |x: u64| (x as f64) / (delivered.max(1) as f64);
        println!(
            "linux: stopped: {:?} after {ms} ms (host TSC), {} vCPU(s)",
            self.stop, self.cfg.vcpus
        );
        if matches!(self.stop, Stop::BadExit | Stop::Shutdown) {
            println!("linux: exit {:#x} at {:#x}", self.bad_exit, self.bad_rip);
        }
        print!("linux: exits:");
        for ((_, n), (_, name)) in self.exits.iter().zip(EXIT_NAMES.iter()) {
            print!(" {name} {n}");
        }
        println!(", host idles {}", self.idles);
        let device: u64 = host::DEVICE_IRQS
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum();
        println!(
            "linux: delivered by kind: timer {} (vector 0xec), IPIs {} (0xf0-0xfe), device {} \
             (IOAPIC lines, 0x20-0xeb), NMI {}",
            self.delivered_in(0xEC..=0xEC),
            self.delivered_in(0xF0..=0xFE),
            self.delivered_in(0x20..=0xEB),
            self.nmis
        );
        println!(
            "linux: by path: EVENTINJ {} (presented {}), V_IRQ {} (queued {}), recalled {}, \
             re-injected {}; delivered {delivered}",
            self.via_eventinj,
            t.presented_eventinj,
            self.via_virq,
            t.presented_virq,
            t.recalled,
            t.reinjected
        );
        println!(
            "linux: engine: timer fires {}, IPIs sent {}, host vectors accepted {} ({device} taken \
             on the real LAPIC, {} level, {} level EOIs released), NMIs injected {}",
            t.timer_fires,
            t.ipis_sent,
            t.host_vectors_accepted,
            host::LEVEL_IRQS.load(Ordering::Relaxed),
            host::LEVEL_EOIS.load(Ordering::Relaxed),
            t.nmis_injected
        );
        print!("linux: device vectors taken on the real LAPIC:");
        for (v, c) in host::DEVICE_IRQS.iter().enumerate() {
            let c = c.load(Ordering::Relaxed);
            if c != 0 {
                print!(" {v:#x}x{c}");
            }
        }
        println!("");
        println!(
            "linux: VMRUNs {} = {:.2} per delivered interrupt; protocol calls {} = {:.2} per \
             interrupt (EOI {}, TSC deadline {}, ICR {}, other {}); xAPIC MMIO traps {}",
            self.vmruns,
            per(self.vmruns),
            t.protocol_calls,
            per(t.protocol_calls),
            self.eoi_calls,
            self.deadline_calls,
            self.icr_calls,
            self.other_calls,
            self.mmio
        );
        println!(
            "linux: #HV taken {} (spurious raised {}), kicks {}, longest device injection \
             latency {} us (post to delivery, vector {:#x}; mean {} us over {} posts); refused calls {}; QEMU fix-ups: V_IRQ withheld {}, \
             V_IRQ cut as exception {}",
            host::HV_TAKEN.load(Ordering::Relaxed),
            host::HV_SPURIOUS.load(Ordering::Relaxed),
            self.kicks,
            tsc_to_us(self.max_latency),
            self.max_latency_vector,
            tsc_to_us(self.sum_latency.checked_div(self.latencies).unwrap_or(0)),
            self.latencies,
            self.refused,
            self.virq_withheld,
            self.virq_cut
        );
        if self.cfg.hostile {
            println!(
                "linux: hostile host: garbage posts {}, forged EXITINTINFO {}, engine dropped {} \
                 forged events and rejected {} host vectors",
                self.garbage, self.forged, t.forged_exit_events, t.host_vectors_rejected
            );
        }
        println!(
            "linux: busy repairs {}, platform errors {}, spurious #HV entries {}, INIT/SIPI \
             served as AP creation {}, ICRs refused by the engine {}",
            t.busy_repairs, t.platform_errors, t.spurious_hv, self.start_ipis, t.icrs_refused
        );
        println!(
            "linux: ledger: delivered maskable {} = EOIs {}: {}; vCPUs with a vector in service \
             at the end {}",
            self.via_eventinj.saturating_add(self.via_virq),
            self.eoi_calls,
            if self.ledger_ok() {
                "balanced"
            } else {
                "MISMATCH"
            },
            self.in_service_at_end
        );
        if !self.ledger_ok() {
            print!("linux: ledger per vector (delivered/EOI'd where they differ):");
            for (v, (d, e)) in self
                .delivered
                .iter()
                .zip(self.eoi_by_vector.iter())
                .enumerate()
            {
                if d != e {
                    print!(" {v:#x} {d}/{e}");
                }
            }
            println!("");
        }
        println!("linux: {}", if self.pass { "PASS" } else { "FAIL" });
    }
}

fn tsc_to_us(ticks: u64) -> u64 {
    ticks
        .saturating_mul(1000)
        .checked_div(time::tsc_per_ms())
        .unwrap_or(0)
}
