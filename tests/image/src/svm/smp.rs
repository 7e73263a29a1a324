//! The application processors: started with INIT-SIPI-SIPI through a
//! real-mode trampoline at 0x8000 (Intel SDM vol. 3A §9.4.4, MP
//! initialization), brought to long mode on the boot page tables and GDT,
//! then each waits for a vCPU to run (`harness::ap_serve`).

use core::sync::atomic::{AtomicU32, Ordering};

use super::devices::Devices;
use super::harness::{self, RunConfig};
use super::host::{self, RunShared};
use super::report::{Report, Stop};
use crate::{cpu, lapic, time};

/// Where the trampoline runs (SIPI vector 0x08).
const TRAMPOLINE: usize = 0x8000;
/// Most APs the image starts.
pub const MAX_APS: usize = 8;
/// Stack per AP.
const AP_STACK: usize = 64 * 1024;

core::arch::global_asm!(
    ".section .rodata.ap_tramp, \"a\"",
    ".global image_ap_tramp_start",
    ".global image_ap_tramp_end",
    ".code16",
    "image_ap_tramp_start:",
    "    cli",
    "    xor ax, ax",
    "    mov ds, ax",
    // lgdt [disp16] (0F 01 /2, ModRM 0x16): the assembler takes no label
    // difference in a memory operand, data directives do.
    "    .byte 0x0F, 0x01, 0x16",
    "    .word 0x8000 + tr_gdt32_ptr - image_ap_tramp_start",
    "    mov eax, cr0",
    "    or al, 1",
    "    mov cr0, eax",
    // jmp far 0x08:tr_pm32 (32-bit offset: operand-size prefix).
    "    .byte 0x66, 0xEA",
    "    .long 0x8000 + tr_pm32 - image_ap_tramp_start",
    "    .word 0x08",
    ".code32",
    "tr_pm32:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    mov eax, cr4",
    "    or eax, 0x20",
    "    mov cr4, eax",
    // mov eax, [disp32] (A1).
    "    .byte 0xA1",
    "    .long 0x8000 + tr_cr3 - image_ap_tramp_start",
    "    mov cr3, eax",
    "    mov ecx, 0xC0000080",
    "    rdmsr",
    "    or eax, 0x100",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000001",
    "    mov cr0, eax",
    // lgdt [disp32] (0F 01 /2, ModRM 0x15).
    "    .byte 0x0F, 0x01, 0x15",
    "    .long 0x8000 + tr_gdt64_ptr - image_ap_tramp_start",
    // jmp far 0x08:image_ap_start64 in the boot GDT's 64-bit code segment.
    "    .byte 0xEA",
    "    .long image_ap_start64",
    "    .word 0x08",
    ".balign 8",
    "tr_gdt32:",
    "    .quad 0",
    "    .quad 0x00CF9A000000FFFF",
    "    .quad 0x00CF92000000FFFF",
    "tr_gdt32_ptr:",
    "    .word 23",
    "    .long 0x8000 + tr_gdt32 - image_ap_tramp_start",
    ".global image_ap_tr_gdt64",
    "image_ap_tr_gdt64:",
    "tr_gdt64_ptr:",
    "    .word 0",
    "    .long 0",
    ".global image_ap_tr_cr3",
    "image_ap_tr_cr3:",
    "tr_cr3:",
    "    .long 0",
    "image_ap_tramp_end:",
    ".code64",
    "",
    ".text",
    "image_ap_start64:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    mov eax, 1",
    "    lock xadd [rip + image_ap_count], eax",
    "    mov edi, eax",
    "    lea eax, [eax + 1]",
    "    imul rax, rax, {stack}",
    "    lea rsp, [rip + image_ap_stacks]",
    "    add rsp, rax",
    "    xor ebp, ebp",
    "    call image_ap_main",
    "2:",
    "    cli",
    "    hlt",
    "    jmp 2b",
    "",
    ".section .bss.ap_stacks, \"aw\", @nobits",
    ".balign 4096",
    "image_ap_stacks: .skip {stacks}",
    ".section .data.ap_count, \"aw\"",
    ".balign 4",
    ".global image_ap_count",
    "image_ap_count: .long 0",
    ".text",
    stack = const AP_STACK,
    stacks = const AP_STACK * MAX_APS,
);

unsafe extern "C" {
    static image_ap_tramp_start: u8;
    static image_ap_tramp_end: u8;
    static image_ap_tr_gdt64: u8;
    static image_ap_tr_cr3: u8;
    static image_ap_count: AtomicU32;
}

/// APs that reached long mode.
pub fn ap_count() -> u32 {
    // SAFETY: a static AtomicU32 defined by the asm above (.data, aligned).
    unsafe { image_ap_count.load(Ordering::SeqCst) }.min(MAX_APS as u32)
}

/// APIC ID of each AP, by AP index (written by the AP).
pub static AP_APIC_ID: [AtomicU32; MAX_APS] = [const { AtomicU32::new(u32::MAX) }; MAX_APS];

/// Starts every AP once (idempotent); returns how many are up.
pub fn start_aps() -> u32 {
    if ap_count() > 0 {
        return ap_count();
    }
    let start = &raw const image_ap_tramp_start as usize;
    let end = &raw const image_ap_tramp_end as usize;
    let len = end.saturating_sub(start);
    let (_, cr3, _, _) = super::hw::host_state();
    let (gdt_base, gdt_limit) = super::hw::host_gdt();
    // SAFETY: 0x8000.. (a few hundred bytes) is conventional RAM below the
    // image, identity-mapped and unused by anything else; the source is the
    // trampoline in .rodata. The patched slots lie inside the copy.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len);
        let gdt =
            TRAMPOLINE.wrapping_add((&raw const image_ap_tr_gdt64 as usize).wrapping_sub(start));
        core::ptr::write_unaligned(gdt as *mut u16, gdt_limit);
        core::ptr::write_unaligned(gdt.wrapping_add(2) as *mut u32, gdt_base as u32);
        let cr3_at =
            TRAMPOLINE.wrapping_add((&raw const image_ap_tr_cr3 as usize).wrapping_sub(start));
        core::ptr::write_unaligned(cr3_at as *mut u32, cr3 as u32);
    }
    // INIT (assert, level), then two STARTUP IPIs, to all but self.
    lapic::send_ipi(0, 0x000C_4500);
    time::spin_ms(10);
    for _ in 0..2 {
        lapic::send_ipi(0, 0x000C_4600 | (TRAMPOLINE >> 12) as u32);
        time::spin_ms(1);
    }
    let mut seen = 0;
    for _ in 0..20 {
        time::spin_ms(10);
        let now = ap_count();
        if now == seen && now > 0 {
            break;
        }
        seen = now;
    }
    ap_count()
}

/// Long-mode entry of AP `index` (from the trampoline, interrupts off).
#[unsafe(no_mangle)]
extern "C" fn image_ap_main(index: u32) -> ! {
    crate::idt::init();
    if lapic::init().is_err() {
        cpu::halt_forever();
    }
    if let Some(slot) = AP_APIC_ID.get(index as usize) {
        slot.store(lapic::id(), Ordering::SeqCst);
    }
    if super::hw::enable_on(index.saturating_add(1) as usize).is_err() {
        cpu::halt_forever();
    }
    ap_serve(index as usize)
}

/// Bumped by the BSP to start a run on the APs.
static RUN_GEN: AtomicU32 = AtomicU32::new(0);
/// APs that finished the current run.
static AP_DONE: AtomicU32 = AtomicU32::new(0);

/// One AP's report of a run, handed to the BSP.
struct ResultSlot(core::cell::UnsafeCell<Option<Report>>);

// SAFETY: AP k writes slot k only while running a run, before its AP_DONE
// increment (release); the BSP reads it only after it saw every AP done
// (acquire) and before it starts the next run. Never concurrently.
unsafe impl Sync for ResultSlot {}

static RESULTS: [ResultSlot; MAX_APS] =
    [const { ResultSlot(core::cell::UnsafeCell::new(None)) }; MAX_APS];

/// The APs' loop: wait for a run (STI;HLT, woken by the GO IPI), run vCPU
/// `index` of it, hand the report over, repeat.
pub fn ap_serve(index: usize) -> ! {
    let mut seen = RUN_GEN.load(Ordering::SeqCst);
    loop {
        while RUN_GEN.load(Ordering::SeqCst) == seen {
            // A Linux guest run with a vCPU per CPU (`linux_svm`) joins here.
            crate::linux_svm::ap_poll();
            super::hw::idle();
        }
        seen = RUN_GEN.load(Ordering::SeqCst);
        if let Some(run) = host::shared()
            && index < run.cfg.vcpus
        {
            let report = harness::run_owned(run, index);
            if let Some(slot) = RESULTS.get(index) {
                // SAFETY: see `ResultSlot`.
                unsafe { *slot.0.get() = Some(report) };
            }
        }
        AP_DONE.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs one program with vCPU k on AP k (real concurrency: TCG runs each
/// CPU on its own host thread) while the BSP plays the devices.
pub fn run(cfg: RunConfig) -> Report {
    let aps = ap_count();
    let cfg = harness::prepare(RunConfig {
        vcpus: cfg.vcpus.min(aps as usize),
        ..cfg
    });
    host::reset(|k| {
        AP_APIC_ID
            .get(k)
            .map_or(u32::MAX, |a| a.load(Ordering::SeqCst))
    });
    let shared = RunShared::new(cfg);
    RESULTS.iter().for_each(|slot| {
        // SAFETY: see `ResultSlot`: no AP is in a run now.
        unsafe { *slot.0.get() = None };
    });
    cpu::cli();
    // SAFETY: `shared` outlives the publication: it is retracted below only
    // after every AP reported done (or the image fails).
    unsafe { host::publish(&shared) };
    AP_DONE.store(0, Ordering::SeqCst);
    let started = cpu::rdtsc();
    RUN_GEN.fetch_add(1, Ordering::SeqCst);
    // Fixed, all excluding self (SDM vol. 3A §11.6.1).
    lapic::send_ipi(0, (0b11 << 18) | u32::from(host::GO_VECTOR));
    let mut devices = Devices::new(cfg);
    let limit = time::Deadline::after_ms(cfg.limit_ms);
    let mut stop_deadline = None;
    while AP_DONE.load(Ordering::SeqCst) < aps {
        if stop_deadline.is_none() && limit.passed() {
            host::STOP.store(true, Ordering::SeqCst);
            stop_deadline = Some(time::Deadline::after_ms(2_000));
        }
        if stop_deadline.is_some_and(|d: time::Deadline| d.passed()) {
            crate::runner::fail(format_args!("svm: an AP did not stop its run"));
        }
        if host::all_configured(cfg.vcpus) {
            devices.step(&shared);
        }
        super::hw::irq_window();
        cpu::pause();
    }
    let elapsed = cpu::rdtsc().saturating_sub(started);
    host::retract();
    let mut report = Report::new(cfg);
    report.cpus = cfg.vcpus;
    report.stop = Stop::Done;
    for (k, slot) in RESULTS.iter().enumerate().take(cfg.vcpus) {
        // SAFETY: see `ResultSlot`: every AP is done.
        match unsafe { &*slot.0.get() } {
            Some(part) => report.absorb(part, k),
            None => report.stop = Stop::Fatal,
        }
    }
    report.tsc = elapsed;
    report.host_counters();
    report.verdict();
    report
}
