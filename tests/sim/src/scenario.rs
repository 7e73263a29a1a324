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
}

impl Scenario {
    /// Every scenario, in the order `make test` runs them.
    pub const ALL: [Scenario; 7] = [
        Scenario::IdleTimer,
        Scenario::IpiStorm,
        Scenario::DeviceLevel,
        Scenario::Boot,
        Scenario::HostileHv,
        Scenario::HostileGuest,
        Scenario::Deregister,
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
        }
    }
}
