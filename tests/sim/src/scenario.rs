//! The named scenarios and the knobs each one sets.
//!
//! A scenario is only a [`Profile`]: which sources run, at what rates, which
//! hostile behaviours are on. The models and the checks are the same for all.

use alloc::{format, string::String, vec::Vec};
use core::fmt;
use core::str::FromStr;

/// A named scenario (`--scenario NAME`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    /// Every vCPU idles (STI; HLT) on a 1 kHz periodic APIC timer.
    IdleTimer,
    /// Guests send bursts of IPIs to single vCPUs and to all.
    IpiStorm,
    /// A level-triggered device through the IOAPIC model plus edge devices.
    DeviceLevel,
    /// xAPIC start, switch to x2APIC, registration, APs created later.
    Boot,
    /// A hostile hypervisor (see `docs/simulator.md`).
    HostileHv,
    /// Hostile guests: bad MSRs and bits, storms, illegal vectors, games.
    HostileGuest,
    /// Guests deregister; the host takes every APIC back and emulates it.
    Deregister,
    /// IPI storms while the host often returns to VMPL0 without entering
    /// the guest and deliveries are often cut (re-injection, recall).
    ReinjectStall,
    /// TSC-deadline timers re-armed and rewritten around their expiry.
    TscDeadline,
    /// Hand-backs timed to a due timer or a pending #MC.
    HandbackDue,
    /// Level lines whose vectors edge devices also request.
    LevelEdge,
    /// Hand-backs whose disable-AI call fails now and then.
    HandbackFail,
    /// Engines re-created for handed-back vCPUs while others post to them.
    Recreate,
    /// Guests disable their APIC with host level vectors in flight.
    ApicDisable,
}

impl Scenario {
    /// Every scenario, in the order `make test` runs them.
    pub const ALL: [Scenario; 14] = [
        Scenario::IdleTimer,
        Scenario::IpiStorm,
        Scenario::DeviceLevel,
        Scenario::Boot,
        Scenario::HostileHv,
        Scenario::HostileGuest,
        Scenario::Deregister,
        Scenario::ReinjectStall,
        Scenario::TscDeadline,
        Scenario::HandbackDue,
        Scenario::LevelEdge,
        Scenario::HandbackFail,
        Scenario::Recreate,
        Scenario::ApicDisable,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::IdleTimer => "idle-timer",
            Scenario::IpiStorm => "ipi-storm",
            Scenario::DeviceLevel => "device-level",
            Scenario::Boot => "boot",
            Scenario::HostileHv => "hostile-hv",
            Scenario::HostileGuest => "hostile-guest",
            Scenario::Deregister => "deregister",
            Scenario::ReinjectStall => "reinject-stall",
            Scenario::TscDeadline => "tsc-deadline",
            Scenario::HandbackDue => "handback-due",
            Scenario::LevelEdge => "level-edge",
            Scenario::HandbackFail => "handback-fail",
            Scenario::Recreate => "recreate",
            Scenario::ApicDisable => "apic-disable",
        }
    }

    /// The knobs of this scenario.
    pub fn profile(self) -> Profile {
        let base = Profile::default();
        match self {
            Scenario::IdleTimer => Profile {
                timer_period: Some(1_000_000),
                exit_in_delivery: 2_000,
                ..base
            },
            Scenario::IpiStorm => Profile {
                timer_period: Some(4_000_000),
                busy_work: 300_000,
                ipi_per_run: 250_000,
                ipi_burst: 8,
                ipi_broadcast: 150_000,
                nmi_ipi: 2_000,
                ..base
            },
            Scenario::DeviceLevel => Profile {
                timer_period: Some(4_000_000),
                busy_work: 200_000,
                level_lines: true,
                edge_device_gap: Some(300_000),
                host_nmi: 1_000,
                exit_in_delivery: 40_000,
                ..base
            },
            Scenario::Boot => Profile {
                timer_period: Some(2_000_000),
                boot_xapic: true,
                ap_delay: 3_000_000,
                busy_work: 200_000,
                ipi_per_run: 60_000,
                ipi_burst: 2,
                edge_device_gap: Some(2_000_000),
                ..base
            },
            Scenario::HostileHv => Profile {
                timer_period: Some(2_000_000),
                busy_work: 200_000,
                ipi_per_run: 80_000,
                ipi_burst: 3,
                level_lines: true,
                edge_device_gap: Some(500_000),
                exit_in_delivery: 50_000,
                hostile_hv: true,
                ..base
            },
            Scenario::HostileGuest => Profile {
                timer_period: Some(2_000_000),
                busy_work: 200_000,
                ipi_per_run: 100_000,
                ipi_burst: 4,
                ipi_broadcast: 300_000,
                edge_device_gap: Some(1_000_000),
                hostile_guest: true,
                ..base
            },
            Scenario::Deregister => Profile {
                timer_period: Some(2_000_000),
                busy_work: 200_000,
                ipi_per_run: 60_000,
                ipi_burst: 2,
                level_lines: true,
                edge_device_gap: Some(1_000_000),
                deregister: true,
                ..base
            },
            // Issue 9 path 2: a re-injected or presented vector recalled
            // after a run that never entered the guest, while another
            // instance of it arrives (few IPI vectors, many cuts).
            Scenario::ReinjectStall => Profile {
                timer_period: Some(1_000_000),
                busy_work: 300_000,
                ipi_per_run: 250_000,
                ipi_burst: 8,
                ipi_broadcast: 150_000,
                edge_device_gap: Some(300_000),
                exit_in_delivery: 150_000,
                host_returns_at_once: 150_000,
                ..base
            },
            // Issue 9 path 3: IA32_TSC_DEADLINE written after the old
            // deadline passed but before VMPL0 polled it.
            Scenario::TscDeadline => Profile {
                timer_period: Some(200_000),
                tsc_deadline: true,
                busy_work: 400_000,
                ipi_per_run: 50_000,
                ipi_burst: 2,
                exit_in_delivery: 20_000,
                ..base
            },
            // Issue 9 paths 4 and 8: the guest deregisters (its last
            // registration) just as its timer is due or while a #MC waits
            // for EVENTINJ.
            Scenario::HandbackDue => Profile {
                timer_period: Some(300_000),
                busy_work: 500_000,
                ipi_per_run: 40_000,
                ipi_burst: 2,
                edge_device_gap: Some(500_000),
                exit_in_delivery: 250_000,
                deregister: true,
                deregister_when_due: true,
                mc_per_device: 100_000,
                mc_at_cut: true,
                ..base
            },
            // Issue 9 path 9: edge requests of host-level vectors.
            Scenario::LevelEdge => Profile {
                timer_period: Some(4_000_000),
                busy_work: 200_000,
                level_lines: true,
                edge_device_gap: Some(200_000),
                edge_on_level_vectors: true,
                exit_in_delivery: 40_000,
                ..base
            },
            // Issue 9 path 5: half the disable-AI calls fail; guests make
            // the call that reaches 0 from inside an interrupt handler (so
            // the writeback has ISR words) and retry with DEREGISTER or
            // QUERY after the handler's EOI.
            Scenario::HandbackFail => Profile {
                timer_period: Some(1_000_000),
                busy_work: 300_000,
                ipi_per_run: 60_000,
                ipi_burst: 2,
                level_lines: true,
                edge_device_gap: Some(500_000),
                exit_in_delivery: 40_000,
                deregister: true,
                deregister_in_handler: true,
                disable_ai_fail: 500_000,
                ..base
            },
            // Issue 9 path 7: every guest deregisters; 0.5-1.5 ms after its
            // hand-back the SVSM creates the vCPU's engine again (the vCPU
            // restarts, module doc of `recreate.rs`) while the others keep
            // sending it IPIs, one of them preempted inside its post across
            // the mailbox's reopen.
            Scenario::Recreate => Profile {
                timer_period: Some(1_000_000),
                busy_work: 300_000,
                ipi_per_run: 250_000,
                ipi_burst: 4,
                ipi_broadcast: 100_000,
                edge_device_gap: Some(500_000),
                deregister: true,
                recreate_after: Some(500_000),
                ..base
            },
            // Issue 9 path 10: guests write APIC_BASE EN=0 (often from
            // inside a handler of a host level vector, while others are in
            // IRR), then enable the APIC again and redo their set-up.
            Scenario::ApicDisable => Profile {
                timer_period: Some(1_000_000),
                busy_work: 300_000,
                ipi_per_run: 60_000,
                ipi_burst: 2,
                level_lines: true,
                edge_device_gap: Some(200_000),
                edge_on_level_vectors: true,
                exit_in_delivery: 40_000,
                apic_disable: 2_000,
                ..base
            },
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .iter()
            .copied()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?}; one of: {}", names.join(", "))
            })
    }
}

/// What a scenario turns on. Rates are per million (per guest run, per
/// delivery, ...); times are in ticks (1 tick = 1 ns of simulated time).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Profile {
    /// Periodic APIC timer period each guest programs (`None`: no timer).
    pub timer_period: Option<u64>,
    /// Probability that a guest run does busy work instead of idling.
    pub busy_work: u32,
    /// Probability that a busy guest sends an IPI burst.
    pub ipi_per_run: u32,
    /// IPIs per burst (upper bound).
    pub ipi_burst: u32,
    /// Probability that an IPI of a burst is a broadcast (all but self).
    pub ipi_broadcast: u32,
    /// Probability that an IPI is an NMI IPI.
    pub nmi_ipi: u32,
    /// Level-triggered IOAPIC lines (one per vCPU pair).
    pub level_lines: bool,
    /// Mean gap between edge device interrupts posted by the host.
    pub edge_device_gap: Option<u64>,
    /// Probability per device interrupt that the host also posts an NMI.
    pub host_nmi: u32,
    /// Probability that an event delivery is cut by an exit (EXITINTINFO).
    pub exit_in_delivery: u32,
    /// Guests start in xAPIC mode with APs created later.
    pub boot_xapic: bool,
    /// Delay before each AP's VMSA is created (boot).
    pub ap_delay: u64,
    /// The hypervisor misbehaves.
    pub hostile_hv: bool,
    /// The guests misbehave.
    pub hostile_guest: bool,
    /// Among the garbage EXITINTINFO values, INTR events with vectors
    /// 0-31 (on in `hostile-hv`; `--no-forged-intr` turns it off to look
    /// past the engine defect it finds, see `docs/simulator.md`).
    pub forged_low_intr: bool,
    /// Guests deregister and the host takes the APICs back.
    pub deregister: bool,
    /// Probability that the host returns to VMPL0 without entering the
    /// guest (VMRUN never executed, the VMSA untouched).
    pub host_returns_at_once: u32,
    /// Guests run their APIC timer in TSC-deadline mode, re-arm it once it
    /// expired and now and then rewrite it around expiry.
    pub tsc_deadline: bool,
    /// Guests make their deregistration only when the engine-armed timer
    /// is due before VMPL0 handles the call, or a #MC waits in the engine
    /// (a timing driver: the call itself is an ordinary one).
    pub deregister_when_due: bool,
    /// Probability per edge device interrupt that the host also posts a
    /// #MC (never nested).
    pub mc_per_device: u32,
    /// Edge devices also request the level lines' vectors.
    pub edge_on_level_vectors: bool,
    /// The host posts a #MC as a delivery is cut: VMPL0 collects it while
    /// EVENTINJ is taken by the re-injected event, so it waits a run.
    pub mc_at_cut: bool,
    /// Guests make their deregistration from inside an interrupt handler
    /// when one is running (the hand-back's writeback then has ISR words).
    pub deregister_in_handler: bool,
    /// Probability that a disable-AI call fails.
    pub disable_ai_fail: u32,
    /// Mean delay after a hand-back before the SVSM creates the vCPU's
    /// engine again (`None`: never).
    pub recreate_after: Option<u64>,
    /// Probability per guest operation (also inside a handler) that the
    /// guest disables its APIC (APIC_BASE EN=0) and then enables it again.
    pub apic_disable: u32,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            timer_period: None,
            busy_work: 0,
            ipi_per_run: 0,
            ipi_burst: 1,
            ipi_broadcast: 0,
            nmi_ipi: 0,
            level_lines: false,
            edge_device_gap: None,
            host_nmi: 0,
            exit_in_delivery: 10_000,
            boot_xapic: false,
            ap_delay: 0,
            hostile_hv: false,
            hostile_guest: false,
            forged_low_intr: true,
            deregister: false,
            host_returns_at_once: 0,
            tsc_deadline: false,
            deregister_when_due: false,
            mc_per_device: 0,
            edge_on_level_vectors: false,
            mc_at_cut: false,
            deregister_in_handler: false,
            disable_ai_fail: 0,
            recreate_after: None,
            apic_disable: 0,
        }
    }
}
