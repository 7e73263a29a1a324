//! A real Linux kernel as the guest of the SVM harness (issue 13; see
//! docs/testing.md, "The Linux guest"): Debian's cloud kernel boots from
//! QEMU's loader-device staging area through the 64-bit boot protocol
//! (`guest_boot::linux`) under nested paging, and every interrupt it takes
//! is injected by the engine: its local APIC is the engine's (x2APIC MSRs,
//! TSC deadline, APIC_BASE and, in xAPIC mode, the trapped APIC page), its
//! devices are the machine's own (port I/O, IOAPIC, HPET passed through),
//! and their interrupts reach it as the host's doorbell posts (`host`).
//!
//! - `setup`: guest memory, e820, NPT, I/O map, the VMCB;
//! - `host`: device interrupts, #HV, the engine's platform;
//! - `exits`: CPUID, port I/O, the MMIO decoder path;
//! - `smp`: vCPU creation, Linux's INIT/SIPI served as AP creation;
//! - `run`: the run loop; `report`: the figures.
//!
//! Command line: `linux VCPUS MODE KERNEL_LEN INITRD_LEN [hostile] [SEED] [broken] [real]`
//! with MODE `x2apic` (the APIC as firmware leaves it), `xapic` (Linux
//! switches to x2APIC itself) or `xapic-mmio` (`nox2apic`: Linux stays in
//! xAPIC mode, every APIC access an MMIO trap) (`tests/image/run-linux.sh`).

pub mod exits;
pub mod host;
pub mod report;
pub mod run;
pub mod setup;
pub mod smp;
pub mod state;

use crate::runner;
use crate::serial::println;

pub use host::{active, on_device, on_hv};
pub use run::ap_poll;

/// The kernel command line. Each option is there because of something the
/// harness cannot do (docs/testing.md lists the reasons).
/// `8250.nr_uarts=5` is for the workload: it lets the built-in 8250 driver
/// take the PCI serial card (a level-triggered line) as ttyS4.
pub const CMDLINE: &str = "console=ttyS0 x2apic_phys irqaffinity=0 panic=-1 8250.nr_uarts=5";
/// The same with `nox2apic`: Linux keeps the xAPIC, so every APIC access
/// is a trapped MMIO access decoded by the harness (mode `xapic-mmio`).
pub const CMDLINE_NOX2APIC: &str =
    "console=ttyS0 x2apic_phys irqaffinity=0 panic=-1 8250.nr_uarts=5 nox2apic";

/// One run's parameters.
#[derive(Clone, Copy, Debug)]
pub struct LinuxConfig {
    /// Guest vCPUs (all on this CPU, round-robin).
    pub vcpus: usize,
    /// Start with the APIC in x2APIC mode (else xAPIC).
    pub x2apic: bool,
    /// Bytes of the staged kernel file.
    pub kernel_len: u64,
    /// Bytes of the staged initramfs file.
    pub initrd_len: u64,
    /// Hostile host: spurious #HV, doorbell garbage, forged EXITINTINFO.
    pub hostile: bool,
    /// Seed of the hostile host's choices.
    pub seed: u64,
    /// Test-only break: the engine never recalls an undelivered
    /// presentation (`svm::vmcb::Vcpu::break_recall`), to show the ledger
    /// failing.
    pub broken: bool,
    /// vCPU k on the CPU with APIC ID k (else all on CPU 0).
    pub real_cpus: bool,
    /// The run counts as hung after this long.
    pub limit_ms: u64,
}

fn usage() -> ! {
    println!(
        "usage: linux VCPUS x2apic|xapic|xapic-mmio KERNEL_LEN INITRD_LEN [hostile] [SEED] [broken] [real]"
    );
    runner::exit(false)
}

/// The `linux` command line mode; exits QEMU with the verdict.
pub fn main(args: &str) -> ! {
    let mut words = args.split_whitespace();
    let vcpus = words.next().and_then(|w| w.parse::<usize>().ok());
    let mode = words.next();
    let kernel_len = words.next().and_then(|w| w.parse::<u64>().ok());
    let initrd_len = words.next().and_then(|w| w.parse::<u64>().ok());
    let (mut hostile, mut broken, mut real_cpus, mut seed) = (false, false, false, 1);
    for w in words {
        match w {
            "hostile" => hostile = true,
            "broken" => broken = true,
            "real" => real_cpus = true,
            _ => match w.parse::<u64>() {
                Ok(n) => seed = n,
                Err(_) => usage(),
            },
        }
    }
    let (Some(vcpus), Some(mode), Some(kernel_len), Some(initrd_len)) =
        (vcpus, mode, kernel_len, initrd_len)
    else {
        usage()
    };
    let (x2apic, cmdline) = match mode {
        "x2apic" => (true, CMDLINE),
        "xapic" => (false, CMDLINE),
        "xapic-mmio" => (false, CMDLINE_NOX2APIC),
        _ => usage(),
    };
    if !(1..=host::MAX_VCPUS).contains(&vcpus) {
        usage()
    }
    let features = match crate::svm::init() {
        Ok(f) => f,
        Err(e) => runner::fail(format_args!("linux: {e}")),
    };
    if !features.npt {
        runner::fail(format_args!("linux: no nested paging ({features:?})"));
    }
    let config = LinuxConfig {
        vcpus,
        x2apic,
        kernel_len,
        initrd_len,
        hostile,
        seed,
        broken,
        real_cpus,
        limit_ms: if broken { 120_000 } else { 180_000 },
    };
    setup::build_npt_and_iopm();
    // In xAPIC mode Linux programs the IOAPIC with flat logical destinations
    // (bit 0 = its CPU 0, where `irqaffinity=0` sends every line); the real
    // LAPIC of the CPU running all vCPUs must answer to that bit. In x2APIC
    // mode (`x2apic_phys`) the destination is APIC ID 0, this CPU's.
    crate::lapic::set_flat_logical_id(0);
    let layout = match setup::load(kernel_len, initrd_len, cmdline) {
        Ok(l) => l,
        Err(e) => runner::fail(format_args!("linux: cannot load the kernel: {e:?}")),
    };
    println!(
        "linux: kernel ({} bytes) at {:#x} entry {:#x}, initrd ({} bytes) at {:#x}, zero page \
         {:#x}, RAM up to {:#x}, \
         {} vCPU(s), {} mode{}, cmdline {cmdline:?}",
        config.kernel_len,
        layout.kernel,
        layout.entry,
        config.initrd_len,
        layout.initrd,
        layout.zero_page,
        setup::GUEST_RAM_END,
        vcpus,
        if x2apic { "x2APIC" } else { "xAPIC" },
        if hostile { ", hostile host" } else { "" },
    );
    let report = run::run(config, &layout);
    report.print();
    runner::exit(report.pass)
}
