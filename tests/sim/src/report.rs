//! Figures of one run and the table the CLI prints.

use alloc::{
    format,
    string::{String, ToString},
    vec::Vec,
};

use core::fmt::Write as _;

use altinj_kernel::Counters;

/// Everything counted during a run. Engine counters are summed over the
/// vCPUs at the end ([`Stats::absorb_engine`]); the rest is counted by the
/// models.
#[derive(Clone, Debug, Default)]
#[allow(missing_docs)] // Field names say what they count; see report().
pub struct Stats {
    pub main_steps: u64,
    pub drain_steps: u64,
    pub sim_time: u64,
    pub wall_seconds: f64,
    // Ledger.
    pub requested: u64,
    pub delivered: u64,
    pub coalesced: u64,
    pub max_latency: u64,
    /// (vCPU, vector, request time) of the longest wait.
    pub max_latency_of: (usize, u8, u64),
    pub latency_sum: u64,
    pub latency_count: u64,
    // World switches.
    pub vmpl0_entries: u64,
    pub hv_entries: u64,
    pub protocol_calls: u64,
    pub vmruns: u64,
    pub vmrun_busy: u64,
    /// Engine writes to a VMSA while BUSY was clear (BUSY auditor).
    pub busy_audit_writes: u64,
    /// EVENTINJ interrupts the DropEventInj sabotage swallowed.
    pub sabotage_drops: u64,
    /// Times the host returned to VMPL0 without entering the guest.
    pub runs_not_entered: u64,
    /// #MCs the host posted.
    pub mc_posted: u64,
    /// IA32_TSC_DEADLINE writes by the guests (re-arms and rewrites).
    pub tsc_deadline_writes: u64,
    pub host_entries: u64,
    pub host_exits: u64,
    pub halts: u64,
    // Host.
    pub hv_signals: u64,
    pub hv_suppressed: u64,
    pub spurious_hv: u64,
    pub notification_vectors: u64,
    pub hv_rejected: u64,
    pub kicks_seen: u64,
    /// #HV IPI calls with the notification vector the host answered (one
    /// may kick many vCPUs: `kicks_seen` counts the vCPUs).
    pub kick_calls_seen: u64,
    pub kicks_lost: u64,
    pub kicks_over_batch: u64,
    pub max_kicks_per_batch: u64,
    pub specific_eois: u64,
    pub level_posts: u64,
    pub level_eois: u64,
    pub level_retries: u64,
    pub device_interrupts: u64,
    pub host_nmis: u64,
    pub timer_expiries: u64,
    pub handbacks: u64,
    pub disable_ai_failed: u64,
    pub engines_recreated: u64,
    pub split_posts: u64,
    pub apic_disables: u64,
    pub discarded_at_reset: u64,
    pub disable_level_eois: u64,
    pub host_refused_posts: u64,
    // Hardware.
    pub cut_deliveries: u64,
    pub foreign_events: u64,
    pub mc_delivered: u64,
    // Guest.
    pub guest_lazy_eois: u64,
    pub guest_ipis: u64,
    pub guest_storms: u64,
    pub guest_rejected: u64,
    pub hostile_calls: u64,
    pub vcpus_created: u64,
    pub x2apic_switches: u64,
    pub xapic_ipis: u64,
    pub registration_calls: u64,
    pub ipis_to_handed_back: u64,
    /// #HV IPIs that forwarded a guest IPI, as the host received them.
    pub ipis_forwarded_seen: u64,
    // Hostile host.
    pub hostile_acts: u64,
    pub hostile_busy: u64,
    pub hostile_exit_int_info: u64,
    pub hostile_illegal: u64,
    pub hostile_spurious_hv: u64,
    pub hostile_bad_vmpl: u64,
    pub hostile_floods: u64,
    pub hostile_mc: u64,
    pub hostile_nfs_phases: u64,
    pub hostile_races: u64,
    // Engine counters, summed.
    pub engine: Counters,
    // Invariants.
    pub violations: u64,
    pub violation_log: Vec<String>,
    pub violation_kinds: alloc::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// Adds one engine's counters.
    pub fn absorb_engine(&mut self, _vcpu: usize, c: &Counters) {
        self.engine.accumulate(c);
    }

    /// World switches (VMPL0 entries: #HV, SVSM calls, exits it handles)
    /// per delivered interrupt.
    pub fn switches_per_delivery(&self) -> f64 {
        if self.delivered == 0 {
            return 0.0;
        }
        self.vmpl0_entries as f64 / self.delivered as f64
    }

    /// The figures that must be equal when a seed is replayed.
    pub fn fingerprint(&self) -> String {
        format!(
            "req {} del {} coal {} vmpl0 {} vmrun {} hv {} calls {} kicks {}/{} lazy {} rej {} viol {} t {}",
            self.requested,
            self.delivered,
            self.coalesced,
            self.vmpl0_entries,
            self.vmruns,
            self.hv_entries,
            self.protocol_calls,
            self.engine.kicks_sent,
            self.engine.kicks_suppressed,
            self.engine.lazy_eois,
            self.rejected_inputs(),
            self.violations,
            self.sim_time
        )
    }

    /// Inputs refused with their architected answer.
    pub fn rejected_inputs(&self) -> u64 {
        self.engine
            .host_vectors_rejected
            .saturating_add(self.engine.icrs_refused)
            .saturating_add(self.hv_rejected)
            .saturating_add(self.guest_rejected)
            .saturating_add(self.host_refused_posts)
    }

    /// The table the CLI prints.
    pub fn report(&self, title: &str) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<44} {v:>14}");
        };
        row("scenario", title.to_string());
        row(
            "steps (main + drain)",
            format!("{} + {}", self.main_steps, self.drain_steps),
        );
        row(
            "simulated time (ms)",
            format!("{:.3}", self.sim_time as f64 / 1e6),
        );
        row("wall time (s)", format!("{:.3}", self.wall_seconds));
        row(
            "interrupts requested (accepted)",
            self.requested.to_string(),
        );
        row("interrupts delivered", self.delivered.to_string());
        row("interrupts coalesced", self.coalesced.to_string());
        let mean = self
            .latency_sum
            .checked_div(self.latency_count)
            .unwrap_or(0);
        row(
            "request -> delivery latency, mean / max (us)",
            format!(
                "{:.1} / {:.1}",
                mean as f64 / 1e3,
                self.max_latency as f64 / 1e3
            ),
        );
        let (cpu, vector, at) = self.max_latency_of;
        row(
            "  longest wait: vCPU, vector, requested at (ns)",
            format!("{cpu}, {vector:#x}, {at}"),
        );
        row("SVSM (VMPL0) entries", self.vmpl0_entries.to_string());
        row("  of which #HV handled", self.hv_entries.to_string());
        row(
            "  of which SVSM protocol calls",
            self.protocol_calls.to_string(),
        );
        row("VMRUNs", self.vmruns.to_string());
        row("  failed with VMEXIT_BUSY", self.vmrun_busy.to_string());
        row(
            "  runs the host did not enter",
            self.runs_not_entered.to_string(),
        );
        row(
            "  #MC posted / TSC-deadline writes",
            format!("{} / {}", self.mc_posted, self.tsc_deadline_writes),
        );
        row(
            "  VMSA writes while BUSY clear (audit)",
            self.busy_audit_writes.to_string(),
        );
        row(
            "world switches per delivered interrupt",
            format!("{:.3}", self.switches_per_delivery()),
        );
        row("kicks sent (engine)", self.engine.kicks_sent.to_string());
        row(
            "  in #HV IPI calls (engine) / per guest ICR write",
            format!(
                "{} / {:.3}",
                self.engine.kick_calls,
                self.engine.kick_calls as f64 / self.engine.ipis_sent.max(1) as f64
            ),
        );
        row(
            "kicks suppressed (engine)",
            self.engine.kicks_suppressed.to_string(),
        );
        row(
            "max kicks per target per batch",
            self.max_kicks_per_batch.to_string(),
        );
        row(
            "lazy EOIs (engine performed)",
            self.engine.lazy_eois.to_string(),
        );
        row(
            "lazy EOIs (guest skipped the call)",
            self.guest_lazy_eois.to_string(),
        );
        row(
            "EVENTINJ / V_IRQ presentations",
            format!(
                "{} / {}",
                self.engine.presented_eventinj, self.engine.presented_virq
            ),
        );
        row(
            "recalled / re-injected",
            format!("{} / {}", self.engine.recalled, self.engine.reinjected),
        );
        row("deliveries cut by an exit", self.cut_deliveries.to_string());
        row(
            "timer expiries / engine timer fires",
            format!("{} / {}", self.timer_expiries, self.engine.timer_fires),
        );
        row(
            "level posts / EOIs to the host",
            format!("{} / {}", self.level_posts, self.level_eois),
        );
        row(
            "NMIs injected / collapsed",
            format!(
                "{} / {}",
                self.engine.nmis_injected, self.engine.nmis_collapsed
            ),
        );
        row("machine checks delivered", self.mc_delivered.to_string());
        row(
            "#HV signals / suppressed (NoFurtherSignal)",
            format!("{} / {}", self.hv_signals, self.hv_suppressed),
        );
        row(
            "#HV entries with an empty page (timer, races)",
            self.spurious_hv.to_string(),
        );
        row(
            "vCPUs created / xAPIC->x2APIC switches",
            format!("{} / {}", self.vcpus_created, self.x2apic_switches),
        );
        row("IPIs sent in xAPIC mode", self.xapic_ipis.to_string());
        row(
            "BUSY repairs (engine)",
            self.engine.busy_repairs.to_string(),
        );
        row("APIC hand-backs", self.handbacks.to_string());
        row(
            "failed disable-AI / engines re-created / posts split by a reopen",
            format!(
                "{} / {} / {}",
                self.disable_ai_failed, self.engines_recreated, self.split_posts
            ),
        );
        row(
            "guest APIC disables / their level EOIs / instances discarded by APIC resets",
            format!(
                "{} / {} / {}",
                self.apic_disables, self.disable_level_eois, self.discarded_at_reset
            ),
        );
        row(
            "host entries / host exits (handed back)",
            format!("{} / {}", self.host_entries, self.host_exits),
        );
        row(
            "guest IPIs to handed-back vCPUs",
            self.ipis_to_handed_back.to_string(),
        );
        row(
            "IPIs forwarded to the host (engine / host saw)",
            format!(
                "{} / {}",
                self.engine.ipis_forwarded, self.ipis_forwarded_seen
            ),
        );
        row("rejected inputs", self.rejected_inputs().to_string());
        row(
            "  host vectors refused (engine)",
            self.engine.host_vectors_rejected.to_string(),
        );
        row("  #HV page items refused", self.hv_rejected.to_string());
        row(
            "  guest ICRs refused (engine)",
            self.engine.icrs_refused.to_string(),
        );
        row(
            "  guest calls answered with an error",
            self.guest_rejected.to_string(),
        );
        row("hostile host acts", self.hostile_acts.to_string());
        row(
            "  BUSY set / garbage EXITINTINFO",
            format!("{} / {}", self.hostile_busy, self.hostile_exit_int_info),
        );
        row(
            "  kicks lost / page races",
            format!("{} / {}", self.kicks_lost, self.hostile_races),
        );
        row("hostile guest calls", self.hostile_calls.to_string());
        row(
            "platform errors (engine)",
            self.engine.platform_errors.to_string(),
        );
        row("INVARIANT VIOLATIONS", self.violations.to_string());
        for (kind, count) in &self.violation_kinds {
            let _ = writeln!(s, "    {count:>8} x {kind}");
        }
        if !self.violation_log.is_empty() {
            let _ = writeln!(s, "  first violations:");
        }
        for v in &self.violation_log {
            let _ = writeln!(s, "    ! {v}");
        }
        s
    }
}
