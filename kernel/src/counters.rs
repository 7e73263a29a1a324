//! Per-vCPU counters: a plain `Copy` struct the SVSM can read at any time
//! (`VcpuEngine::counters`). Increments saturate, so a hostile host cannot
//! wrap them.

/// Event counts of one vCPU's engine.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Counters {
    /// Interrupts presented for immediate delivery through EVENTINJ.
    pub presented_eventinj: u64,
    /// Interrupts queued through V_IRQ.
    pub presented_virq: u64,
    /// Of `presented_virq`: vectors queued while blocked only by TPR (their
    /// class is above every in-service class), so that hardware delivers
    /// them as soon as the guest lowers CR8 below their class (spec §2).
    pub virq_behind_tpr: u64,
    /// V_IRQ queue entries the guest took (hardware cleared V_IRQ).
    pub virq_acknowledged: u64,
    /// Presentations taken back after an exit (EVENTINJ still valid, V_IRQ
    /// not taken): the vector went back to IRR.
    pub recalled: u64,
    /// EXITINTINFO events copied back into EVENTINJ.
    pub reinjected: u64,
    /// EXITINTINFO events dropped instead of re-injected: malformed ones
    /// (`altinj_vmsa::rules`) and those the engine did not present: an external
    /// interrupt, NMI or #MC it had not put in the run, an exception vector
    /// the processor never raises (see `exit_event`).
    pub forged_exit_events: u64,
    /// EOIs the guest skipped through `no_eoi_required`, performed by the engine.
    pub lazy_eois: u64,
    /// Other vCPUs woken with a kick (#HV IPI with the notification
    /// vector); one call may wake many (`kick_calls`).
    pub kicks_sent: u64,
    /// #HV IPI calls made for kicks: one per guest ICR write whose targets
    /// fit one x2APIC ICR (see `kick`), retries included.
    pub kick_calls: u64,
    /// Posts that needed no kick (target mailbox already non-empty).
    pub kicks_suppressed: u64,
    /// Failed kicks retried (by a later post to the target or at this
    /// vCPU's next `before_run`); also counted in `kicks_sent` when they
    /// succeed.
    pub kick_retries: u64,
    /// Guest IPIs (or NMIs) forwarded to the host with the #HV IPI call
    /// because the target's APIC was handed back to the host.
    pub ipis_forwarded: u64,
    /// Host-presented vectors refused (0-30, CONFIGURE_VECTOR filter, bad descriptor).
    pub host_vectors_rejected: u64,
    /// Host-presented vectors accepted into the APIC.
    pub host_vectors_accepted: u64,
    /// Level-triggered host vectors whose EOI went to the host (specific EOI).
    pub host_level_eois: u64,
    /// Guest ICR writes accepted and dropped: INIT, SIPI, SMI and the
    /// reserved modes 011/111 (spec §6; the name predates that rule).
    pub icrs_refused: u64,
    /// IPIs sent by the guest (one per ICR write that was routed).
    pub ipis_sent: u64,
    /// NMIs delivered to the guest.
    pub nmis_injected: u64,
    /// NMIs that collapsed into one already pending.
    pub nmis_collapsed: u64,
    /// Machine checks injected as exception 18.
    pub machine_checks: u64,
    /// VMEXIT_BUSY exits (and stale BUSY found at an exit) repaired.
    pub busy_repairs: u64,
    /// APIC timer expiries injected.
    pub timer_fires: u64,
    /// Platform timer fires that came before the APIC deadline: the
    /// one-shot timer was re-armed for it.
    pub timer_early: u64,
    /// Pending vectors 16-30 dropped at the hand-back: the descriptor has
    /// no place for them (spec §3, §6); each is also logged.
    pub handback_vectors_lost: u64,
    /// GHCB calls the hypervisor failed.
    pub platform_errors: u64,
    /// #HV entries with nothing to do.
    pub spurious_hv: u64,
    /// SVSM APIC protocol calls answered.
    pub protocol_calls: u64,
}

impl Counters {
    /// Adds `other` field by field, saturating: the totals of several
    /// vCPUs (a VM-wide report, a vCPU's engines across a re-creation).
    pub fn accumulate(&mut self, other: &Counters) {
        // Destructured, so a new counter cannot be left out of the sum.
        let Counters {
            presented_eventinj,
            presented_virq,
            virq_behind_tpr,
            virq_acknowledged,
            recalled,
            reinjected,
            forged_exit_events,
            lazy_eois,
            kicks_sent,
            kick_calls,
            kicks_suppressed,
            kick_retries,
            ipis_forwarded,
            host_vectors_rejected,
            host_vectors_accepted,
            host_level_eois,
            icrs_refused,
            ipis_sent,
            nmis_injected,
            nmis_collapsed,
            machine_checks,
            busy_repairs,
            timer_fires,
            timer_early,
            handback_vectors_lost,
            platform_errors,
            spurious_hv,
            protocol_calls,
        } = *other;
        fn add(total: &mut u64, value: u64) {
            *total = total.saturating_add(value);
        }
        add(&mut self.presented_eventinj, presented_eventinj);
        add(&mut self.presented_virq, presented_virq);
        add(&mut self.virq_behind_tpr, virq_behind_tpr);
        add(&mut self.virq_acknowledged, virq_acknowledged);
        add(&mut self.recalled, recalled);
        add(&mut self.reinjected, reinjected);
        add(&mut self.forged_exit_events, forged_exit_events);
        add(&mut self.lazy_eois, lazy_eois);
        add(&mut self.kicks_sent, kicks_sent);
        add(&mut self.kick_calls, kick_calls);
        add(&mut self.kicks_suppressed, kicks_suppressed);
        add(&mut self.kick_retries, kick_retries);
        add(&mut self.ipis_forwarded, ipis_forwarded);
        add(&mut self.host_vectors_rejected, host_vectors_rejected);
        add(&mut self.host_vectors_accepted, host_vectors_accepted);
        add(&mut self.host_level_eois, host_level_eois);
        add(&mut self.icrs_refused, icrs_refused);
        add(&mut self.ipis_sent, ipis_sent);
        add(&mut self.nmis_injected, nmis_injected);
        add(&mut self.nmis_collapsed, nmis_collapsed);
        add(&mut self.machine_checks, machine_checks);
        add(&mut self.busy_repairs, busy_repairs);
        add(&mut self.timer_fires, timer_fires);
        add(&mut self.timer_early, timer_early);
        add(&mut self.handback_vectors_lost, handback_vectors_lost);
        add(&mut self.platform_errors, platform_errors);
        add(&mut self.spurious_hv, spurious_hv);
        add(&mut self.protocol_calls, protocol_calls);
    }
}

/// Adds one, saturating.
#[inline]
pub(crate) fn bump(counter: &mut u64) {
    // The same as `saturating_add(1)`, as a compare and an increment in
    // memory (three instructions instead of five on the hot paths).
    if *counter != u64::MAX {
        *counter = counter.wrapping_add(1);
    }
}
