//! The in-kernel test runner: runs every suite's tests whose name contains the
//! filter (`qemu -append FILTER`, like `cargo test FILTER`), prints
//! `test NAME ... ok` per test and a final `N passed, N failed` line, and exits
//! QEMU through isa-debug-exit (port 0xF4): 0x10 (QEMU status 33) = all passed,
//! 0x01 (status 3) = failure. A failing test panics: the panic handler prints
//! `FAILED`, the message and `N passed, 1 failed`, and exits with failure.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use altinj_ktest::Test;

use crate::serial::{print, println};
use crate::{boot, cpu, hv, lapic};

/// Every suite the image runs, grouped per crate. Crates exposing
/// `ktests::ALL: &[&[Test]]` are listed as is, crates exposing only
/// `ktests::TESTS` as `&[TESTS]`.
const GROUPS: &[&[&[Test]]] = &[
    altinj_vmsa::ktests::ALL,
    &[altinj_doorbell::ktests::TESTS],
    altinj_apic::ktests::ALL,
    altinj_kernel::ktests::ALL,
    &[crate::hv_tests::TESTS],
    &[
        crate::svm::quirks::TESTS,
        crate::svm::quirks::cut::TESTS,
        crate::svm::programs::TESTS,
    ],
    guest_boot::ktests::ALL,
];

/// isa-debug-exit port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`); QEMU
/// exits with status `(value << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xF4;
const EXIT_PASS: u32 = 0x10;
const EXIT_FAIL: u32 = 0x01;

/// Tests that passed so far.
static PASSED: AtomicUsize = AtomicUsize::new(0);
/// Position of the running test: (group, suite, test); `usize::MAX` when none.
static CURRENT: [AtomicUsize; 3] = [const { AtomicUsize::new(usize::MAX) }; 3];
/// Set by the first failure, so a fault while failing does not recurse.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Pattern written to the lowest bytes of the boot stack; a test that overflows
/// the stack clobbers it.
const CANARY: u8 = 0xA5;
const CANARY_LEN: usize = 64;

fn all_tests() -> impl Iterator<Item = ([usize; 3], &'static Test)> {
    GROUPS.iter().enumerate().flat_map(|(g, group)| {
        group.iter().enumerate().flat_map(move |(s, suite)| {
            suite
                .iter()
                .enumerate()
                .map(move |(t, test)| ([g, s, t], test))
        })
    })
}

fn current_test() -> Option<&'static Test> {
    let [g, s, t] = [0, 1, 2].map(|i| {
        CURRENT
            .get(i)
            .map_or(usize::MAX, |c| c.load(Ordering::Relaxed))
    });
    GROUPS.get(g)?.get(s)?.get(t)
}

fn canary() -> &'static [AtomicU8] {
    let bottom = boot::stack_bottom() as *const AtomicU8;
    // SAFETY: the lowest CANARY_LEN bytes of the static boot stack
    // (`boot::STACK_SIZE` > CANARY_LEN) are only ever written by the runner through
    // these atomics, or by an overflowing stack, which is what the check detects.
    unsafe { core::slice::from_raw_parts(bottom, CANARY_LEN) }
}

fn canary_intact() -> bool {
    canary().iter().all(|b| b.load(Ordering::Relaxed) == CANARY)
}

/// Runs the tests whose name contains `filter` (all for an empty filter) and exits.
pub fn run(filter: &str) -> ! {
    canary()
        .iter()
        .for_each(|b| b.store(CANARY, Ordering::Relaxed));
    let selected = all_tests().filter(|(_, t)| t.name.contains(filter)).count();
    let total = all_tests().count();
    println!(
        "running {selected} tests ({} filtered out)",
        total.saturating_sub(selected)
    );
    for (position, test) in all_tests().filter(|(_, t)| t.name.contains(filter)) {
        for (slot, index) in CURRENT.iter().zip(position) {
            slot.store(index, Ordering::Relaxed);
        }
        print!("test {} ... ", test.name);
        (test.run)();
        // Leave the machine quiet for the next test whatever this one did.
        cpu::cli();
        hv::model::disarm_timer();
        if !canary_intact() {
            fail(format_args!(
                "boot stack overflowed (> {} KiB)",
                boot::STACK_SIZE / 1024
            ));
        }
        println!("ok");
        PASSED.fetch_add(1, Ordering::Relaxed);
    }
    CURRENT
        .iter()
        .for_each(|c| c.store(usize::MAX, Ordering::Relaxed));
    println!("{} passed, 0 failed", PASSED.load(Ordering::Relaxed));
    exit(true)
}

/// Reports a failure (panic or unexpected exception) and exits QEMU with failure.
pub fn fail(message: core::fmt::Arguments<'_>) -> ! {
    cpu::cli();
    if FAILING.swap(true, Ordering::Relaxed) {
        println!("\nfailure while reporting a failure: {message}");
        exit(false)
    }
    lapic::stop_timer();
    match current_test() {
        Some(_) => println!("FAILED"),
        None => println!("kernel failure outside any test"),
    }
    if let Some(test) = current_test() {
        println!("---- {} ----", test.name);
    }
    println!("{message}");
    println!("{} passed, 1 failed", PASSED.load(Ordering::Relaxed));
    exit(false)
}

/// Ends the QEMU run through isa-debug-exit; halts if the device is absent.
pub fn exit(pass: bool) -> ! {
    cpu::outl(DEBUG_EXIT_PORT, if pass { EXIT_PASS } else { EXIT_FAIL });
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => fail(format_args!(
            "panicked at {}:{}:{}:\n{}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        )),
        None => fail(format_args!("panicked: {}", info.message())),
    }
}
