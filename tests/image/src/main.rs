//! Bootable test image: a tiny x86_64 kernel that runs every crate's in-kernel
//! unit tests (`altinj_ktest::suite!`) under QEMU, with a real IDT and real interrupts.
//!
//! QEMU boots it with `-kernel` through the PVH entry (`boot`); it sets up serial
//! output on COM1, an IDT whose vector 28 (#HV) runs the #HV logic (`hv`), the
//! local APIC in xAPIC mode (its timer is the asynchronous #HV source), and runs
//! the tests (`runner`). See docs/testing.md; run it with `tests/image/run-tests.sh`.
//! With a command line starting with `demo` it runs the simulator instead
//! (`demo`, `tests/image/run-demo.sh`; docs/simulator.md).
//!
//! The kernel only exists for `target_os = "none"`; the host build is a stub so
//! that workspace-wide host commands keep working.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod serial;

#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod demo;
#[cfg(target_os = "none")]
mod hv;
#[cfg(target_os = "none")]
mod hv_tests;
#[cfg(target_os = "none")]
mod idt;
#[cfg(target_os = "none")]
mod lapic;
#[cfg(target_os = "none")]
mod linux_svm;
#[cfg(target_os = "none")]
mod runner;
#[cfg(target_os = "none")]
mod svm;
#[cfg(target_os = "none")]
mod time;

/// Called by `boot` in long mode with the physical address of `hvm_start_info`.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info: u32) -> ! {
    use serial::println;

    serial::init();
    boot::save_cmdline(start_info);
    idt::init();
    if let Err(message) = lapic::init() {
        runner::fail(format_args!("{message}"));
    }
    let tsc_per_ms = time::calibrate();
    let mut buf: boot::CmdlineBuf = [0; boot::CMDLINE_MAX];
    let filter = boot::cmdline(&mut buf);
    if let Some(args) = filter
        .strip_prefix("demo")
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    {
        println!(
            "image: long mode up, TSC {tsc_per_ms} ticks/ms, demo {:?}",
            args.trim()
        );
        demo::run(args)
    }
    if let Some(args) = filter
        .strip_prefix("svm")
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    {
        println!(
            "image: long mode up, TSC {tsc_per_ms} ticks/ms, svm {:?}",
            args.trim()
        );
        svm::main(args)
    }
    // The MMIO decoder (iced-x86) allocates its tables on first use.
    demo::init_heap();
    if let Some(args) = filter
        .strip_prefix("linux")
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    {
        println!(
            "image: long mode up, TSC {tsc_per_ms} ticks/ms, linux {:?}",
            args.trim()
        );
        linux_svm::main(args)
    }
    println!("image: long mode up, TSC {tsc_per_ms} ticks/ms, filter {filter:?}");
    runner::run(filter)
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "The test image is a kernel for x86_64-unknown-none; run it under QEMU with \
         tests/image/run-tests.sh [FILTER] (in-kernel tests) or \
         tests/image/run-demo.sh [SCENARIO [VCPUS [SEED [STEPS]]]] (the simulator demo)"
    );
}
