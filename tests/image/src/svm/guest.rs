//! The guests: code of this image run by VMRUN at CPL 0 in long mode, with
//! the host's identity mapping and GDT but their own IDT ([`GUEST_IDT`], all
//! 256 vectors) and their own stack per vCPU. Their APIC is the engine's:
//! every x2APIC MSR access is intercepted (MSR permission map) and becomes
//! an SVSM APIC protocol call in the harness; VMMCALL with
//! RAX = 3 << 32 | call is the raw protocol path; VMMCALL with
//! RAX = [`HCALL`] | op asks the harness (the "hypervisor") for a service.
//!
//! Every handler records what it received in the guest-side ledger
//! (`ledger::GUEST`) and checks the guest-visible rules (TPR, nesting, EOI
//! order through the ISR registers).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use super::ledger::{self, GUEST, MAX_VCPUS};

/// Stack per guest vCPU.
pub const STACK_SIZE: usize = 32 * 1024;

/// Harness services (VMMCALL RAX = HCALL | op).
pub const HCALL: u64 = 0x4856_0000;
/// The guest program finished.
pub const OP_DONE: u64 = 1;
/// Post vector RCX to this vCPU through its doorbell page (a device).
pub const OP_POST_SELF: u64 = 2;
/// No more device posts to this vCPU; RAX != 0 while some are on the way.
pub const OP_QUIESCE: u64 = 3;

/// Vectors the programs use.
pub mod vec {
    pub const TIMER: u8 = 0x40;
    pub const NEST_LOW: u8 = 0x41;
    pub const NEST_HIGH: u8 = 0x91;
    pub const TOKEN: u8 = 0x50;
    pub const BCAST: u8 = 0x60;
    pub const ACK: u8 = 0x61;
    pub const FINISH: u8 = 0x62;
    pub const TPR_LOW: u8 = 0x55;
    pub const TPR_EQUAL: u8 = 0x85;
    pub const TPR_HIGH: u8 = 0xA5;
    pub const DEV_FIRST: u8 = 0x70;
    pub const DEV_LAST: u8 = 0x7F;
    pub const LEVEL: u8 = 0x90;
    pub const WAKE: u8 = 0xEF;
    pub const XAPIC_IPI: u8 = 0x45;
    pub const X2APIC_IPI: u8 = 0x46;
    /// Ping from vCPU j (0x58 + j) to the handed-back vCPU, and its pong.
    pub const PING: u8 = 0x58;
    pub const PONG: u8 = 0x5C;
}

/// Whether the host claims `vector` per instance when posting it (the
/// guest's delivery clears the claim).
pub fn claimed(vector: usize) -> bool {
    let v = vector as u8;
    [
        vec::TPR_LOW,
        vec::TPR_EQUAL,
        vec::TPR_HIGH,
        vec::LEVEL,
        vec::WAKE,
    ]
    .contains(&v)
        || (vec::DEV_FIRST..=vec::DEV_LAST).contains(&v)
        || vector == ledger::NMI
}

/// Which program the guests run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Program {
    /// Periodic APIC timer ticks with EOI.
    Timer = 0,
    /// IPI token ring, then broadcast rounds with acknowledgement.
    Ipi = 1,
    /// Devices: edge vectors, a level line with specific EOI and NMIs
    /// posted by the host at random times while guests idle in STI;HLT.
    Device = 2,
    /// TPR/CR8 masking: vectors below, at and above the raised class.
    Tpr = 3,
    /// Nested interrupts: a higher vector inside a lower one's handler;
    /// EOI order checked through ISR.
    Nested = 4,
    /// TSC-deadline timer (IA32_TSC_DEADLINE intercepted), re-armed by the
    /// handler.
    Deadline = 5,
    /// Starts in xAPIC mode like OVMF's SEC phase (MMIO trapped through
    /// NPT), self-IPIs through the xAPIC ICR, then switches to x2APIC.
    Xapic = 6,
    /// The last vCPU deregisters (its APIC is handed back to the host) and
    /// the others keep pinging it, through the engines' forwarding.
    Handback = 7,
}

impl Program {
    pub const ALL: [Program; 8] = [
        Program::Timer,
        Program::Deadline,
        Program::Ipi,
        Program::Device,
        Program::Tpr,
        Program::Nested,
        Program::Xapic,
        Program::Handback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::Timer => "timer",
            Program::Ipi => "ipi",
            Program::Device => "device",
            Program::Tpr => "tpr",
            Program::Nested => "nested",
            Program::Deadline => "deadline",
            Program::Xapic => "xapic",
            Program::Handback => "handback",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The program and its parameters, set by the host before the run.
pub static PROGRAM: AtomicU8 = AtomicU8::new(0);
pub static VCPUS: AtomicU32 = AtomicU32::new(1);
/// Rounds (ticks, hops, ...) the program runs.
pub static ROUNDS: AtomicU32 = AtomicU32::new(10);
/// TSC ticks per microsecond (guests run with TSC offset 0).
pub static TSC_PER_US: AtomicU32 = AtomicU32::new(1000);
/// Set when the guests should finish (host or vCPU 0).
pub static FINISHED: AtomicBool = AtomicBool::new(false);
/// Guest-shared state of the IPI program.
static HOPS: AtomicU32 = AtomicU32::new(0);
static RING_DONE: AtomicBool = AtomicBool::new(false);
static ACKS: AtomicU32 = AtomicU32::new(0);
/// vCPUs whose APIC is set up.
static READY: AtomicU32 = AtomicU32::new(0);
/// Raised TPR class per vCPU (0: none), for the handler's check.
static RAISED: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(0) }; MAX_VCPUS];
/// Nesting state per vCPU: in the low handler / high seen inside it.
static IN_LOW: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
static NESTED_SEEN: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
/// Whether the vCPU's APIC is in x2APIC mode (its handlers EOI by MSR).
static X2APIC: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];

/// Resets the guest-shared state (before a run).
pub fn reset() {
    FINISHED.store(false, Ordering::SeqCst);
    HOPS.store(0, Ordering::SeqCst);
    RING_DONE.store(false, Ordering::SeqCst);
    ACKS.store(0, Ordering::SeqCst);
    READY.store(0, Ordering::SeqCst);
    HANDED_BACK.store(false, Ordering::SeqCst);
    AFTER_HANDBACK_QUERY.store(u64::MAX, Ordering::SeqCst);
    RAISED.iter().for_each(|r| r.store(0, Ordering::SeqCst));
    IN_LOW.iter().for_each(|r| r.store(false, Ordering::SeqCst));
    NESTED_SEEN
        .iter()
        .for_each(|r| r.store(0, Ordering::SeqCst));
    X2APIC.iter().for_each(|r| r.store(false, Ordering::SeqCst));
}

core::arch::global_asm!(
    ".section .bss.guest_stacks, \"aw\", @nobits",
    ".balign 4096",
    ".global image_guest_stacks",
    "image_guest_stacks: .skip {size}",
    ".text",
    // One 16-byte stub per vector: push a dummy error code where the CPU
    // pushes none, then the vector (Intel SDM vol. 3A §6.13).
    ".balign 16",
    ".global image_guest_stubs",
    "image_guest_stubs:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255",
    ".balign 16",
    ".if (\\v == 8) || (\\v >= 10 && \\v <= 14) || (\\v == 17) || (\\v == 21) || (\\v == 29) || (\\v == 30)",
    "    push \\v",
    ".else",
    "    push 0",
    "    push \\v",
    ".endif",
    "    jmp image_guest_isr_common",
    ".endr",
    "",
    "image_guest_isr_common:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    mov rdi, [rsp + 72]",
    "    mov rsi, [rsp + 80]",
    "    cld",
    "    call image_guest_dispatch",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    size = const STACK_SIZE * MAX_VCPUS,
);

unsafe extern "C" {
    static image_guest_stacks: u8;
    static image_guest_stubs: u8;
}

fn stacks_base() -> u64 {
    &raw const image_guest_stacks as u64
}

/// Top of vCPU `k`'s stack (16-byte aligned, minus 8 as after a call).
pub fn stack_top(k: usize) -> u64 {
    stacks_base()
        .wrapping_add(((k.wrapping_add(1)).wrapping_mul(STACK_SIZE)) as u64)
        .wrapping_sub(8)
}

/// The guest IDT: 256 interrupt gates to the stubs, shared by every guest.
#[repr(C, align(16))]
pub struct GuestIdt(pub [core::sync::atomic::AtomicU64; 512]);
pub static GUEST_IDT: GuestIdt = GuestIdt([const { core::sync::atomic::AtomicU64::new(0) }; 512]);

/// Fills [`GUEST_IDT`] (64-bit interrupt gates, DPL 0, no IST).
pub fn init_idt() {
    let stubs = &raw const image_guest_stubs as u64;
    for (v, pair) in GUEST_IDT.0.chunks_exact(2).enumerate() {
        let handler = stubs.wrapping_add((v as u64).wrapping_mul(16));
        let low =
            (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48);
        if let [lo, hi] = pair {
            lo.store(low, Ordering::SeqCst);
            hi.store(handler >> 32, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------- guest code

/// The running guest's vCPU index, from its stack pointer.
fn me() -> usize {
    let rsp: u64;
    // SAFETY: reads RSP.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    rsp.wrapping_sub(stacks_base())
        .checked_div(STACK_SIZE as u64)
        .unwrap_or(0) as usize
}

fn rdtsc() -> u64 {
    crate::cpu::rdtsc()
}

/// Guest WRMSR (intercepted for the APIC MSRs).
fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guest code; APIC MSRs exit to the harness, which emulates them.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// Guest RDMSR (intercepted for the APIC MSRs).
fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: as for `wrmsr`.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// VMMCALL with RAX/RCX/RDX; returns (RAX, RCX, RDX).
fn vmmcall(rax: u64, rcx: u64, rdx: u64) -> (u64, u64, u64) {
    let (a, c, d): (u64, u64, u64);
    // SAFETY: intercepted; the harness answers in RAX/RCX/RDX.
    unsafe {
        asm!("vmmcall", inlateout("rax") rax => a, inlateout("rcx") rcx => c,
             inlateout("rdx") rdx => d, options(nostack))
    };
    (a, c, d)
}

/// `mov cr8, rax` (intercepted; the harness applies it to V_TPR).
fn set_cr8(class: u64) {
    // SAFETY: CR8 only masks interrupts.
    unsafe { asm!("mov cr8, rax", in("rax") class, options(nostack, preserves_flags)) };
}

/// STI;HLT then CLI: waits for one interrupt (or a harness wake-up).
fn sti_hlt() {
    // SAFETY: the guest IDT handles every vector.
    unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
}

/// Opens the interrupt window for a few instructions.
fn sti_window() {
    // SAFETY: as for `sti_hlt`.
    unsafe { asm!("sti", "nop", "nop", "nop", "cli", options(nostack)) };
}

const MSR_APIC_BASE: u32 = 0x1B;
const EOI: u32 = 0x80B;
const SVR: u32 = 0x80F;
const ISR0: u32 = 0x810;
const ICR: u32 = 0x830;
const LVT_TIMER: u32 = 0x832;
const TIMER_INIT: u32 = 0x838;
const TIMER_DIV: u32 = 0x83E;
const SELF_IPI: u32 = 0x83F;

fn in_service(vector: u8) -> bool {
    rdmsr(ISR0 + u32::from(vector >> 5)) & (1 << (vector & 31)) != 0
}

fn send_ipi(dest: usize, vector: u8) {
    wrmsr(ICR, ((dest as u64) << 32) | u64::from(vector));
}

fn broadcast_others(vector: u8) {
    wrmsr(ICR, (0b11 << 18) | u64::from(vector));
}

fn received(k: usize, vector: u8) -> u32 {
    GUEST.get(k, usize::from(vector))
}

/// Waits (STI;HLT) until `cond` holds.
fn wait(mut cond: impl FnMut() -> bool) {
    while !cond() {
        sti_hlt();
    }
}

/// Asks the harness to stop this vCPU; it answers "not yet" (RAX != 0)
/// while device posts to it are still outstanding, which the guest then
/// waits for.
fn done() -> ! {
    loop {
        let (rc, _, _) = vmmcall(HCALL | OP_DONE, 0, 0);
        if rc != 0 {
            sti_hlt();
        }
    }
}

/// Entry of every guest vCPU (RDI = its index); never returns.
pub extern "C" fn guest_entry(k: u64) -> ! {
    let k = k as usize;
    // x2APIC on (the engine's APIC starts in xAPIC mode, SDM vol. 3A §11.12.1),
    // software-enabled with spurious vector 0xFF, every host vector allowed
    // through the raw protocol path (CONFIGURE_VECTOR, all, allow).
    if PROGRAM.load(Ordering::SeqCst) == Program::Xapic as u8 {
        // OVMF's SEC phase: the xAPIC page, ID in bits 31:24.
        if mmio_read(0x20) >> 24 != k as u32 {
            ledger::violation(((k as u64) << 16) | (0x1D << 8));
        }
        mmio_write(0xF0, 0x1FF);
    } else {
        wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | (1 << 10));
        set_x2apic(k);
        wrmsr(SVR, 0x1FF);
    }
    let (rc, _, _) = vmmcall((3 << 32) | 4, (1 << 9) | (1 << 8), 0);
    if rc != 0 {
        ledger::violation(((k as u64) << 16) | (0xC << 8));
    }
    let rounds = ROUNDS.load(Ordering::SeqCst);
    let n = VCPUS.load(Ordering::SeqCst) as usize;
    // Every APIC software-enabled before any IPI: one sent earlier would be
    // dropped by the target's APIC (spec §6), not lost by the engine.
    READY.fetch_add(1, Ordering::SeqCst);
    while (READY.load(Ordering::SeqCst) as usize) < n {
        core::hint::spin_loop(); // the host's time slice preempts
    }
    match PROGRAM.load(Ordering::SeqCst) {
        0 => timer(k, rounds),
        1 => ipi(k, n, rounds),
        3 => tpr(k, rounds),
        4 => nested(k, rounds),
        5 => deadline(k, rounds),
        6 => xapic(k, rounds),
        7 => handback(k, n, rounds),
        _ => wait(|| FINISHED.load(Ordering::SeqCst)),
    }
    done()
}

fn timer(k: usize, ticks: u32) {
    wrmsr(TIMER_DIV, 0b1011);
    wrmsr(LVT_TIMER, (1 << 17) | u64::from(vec::TIMER));
    // 300 µs at the emulated APIC's 1 GHz bus clock, a little different per
    // vCPU so the vCPUs' expiries interleave.
    wrmsr(
        TIMER_INIT,
        300_000u64.wrapping_add(37_000u64.wrapping_mul(k as u64)),
    );
    wait(|| received(k, vec::TIMER) >= ticks);
    wrmsr(LVT_TIMER, (1 << 16) | u64::from(vec::TIMER));
    wrmsr(TIMER_INIT, 0);
}

const TSC_DEADLINE: u32 = 0x6E0;
const XAPIC_PAGE: u64 = 0xFEE0_0000;

/// xAPIC register write, `mov dword ptr [rdi], esi` (the encoding the
/// harness's #NPF path decodes).
fn mmio_write(offset: u64, value: u32) {
    // SAFETY: the xAPIC page is absent in the nested tables: the access
    // exits and the harness emulates it.
    unsafe {
        asm!("mov dword ptr [rdi], esi", in("rdi") XAPIC_PAGE | offset, in("esi") value,
             options(nostack, preserves_flags))
    };
}

/// xAPIC register read, `mov eax, dword ptr [rdi]`.
fn mmio_read(offset: u64) -> u32 {
    let value: u32;
    // SAFETY: as for `mmio_write`.
    unsafe {
        asm!("mov eax, dword ptr [rdi]", in("rdi") XAPIC_PAGE | offset, out("eax") value,
             options(nostack, preserves_flags))
    };
    value
}

/// Notes that vCPU `k`'s APIC is in x2APIC mode (its handlers EOI by MSR).
pub fn set_x2apic(k: usize) {
    if let Some(x) = X2APIC.get(k) {
        x.store(true, Ordering::SeqCst);
    }
}

/// EOI in the vCPU's current APIC mode.
fn eoi(k: usize) {
    if X2APIC.get(k).is_some_and(|x| x.load(Ordering::SeqCst)) {
        wrmsr(EOI, 0);
    } else {
        mmio_write(0xB0, 0);
    }
}

fn xapic(k: usize, rounds: u32) {
    for r in 1..=rounds {
        // ICR low, fixed, destination shorthand "self" (SDM vol. 3A §11.6.1).
        mmio_write(0x300, (0b01 << 18) | u32::from(vec::XAPIC_IPI));
        wait(|| received(k, vec::XAPIC_IPI) >= r);
    }
    // xAPIC -> x2APIC: set EXTD with EN still set (SDM vol. 3A §11.12.5).
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | (1 << 10));
    set_x2apic(k);
    if rdmsr(0x802) != k as u64 {
        ledger::violation(((k as u64) << 16) | (0x2D << 8));
    }
    for r in 1..=rounds {
        wrmsr(SELF_IPI, u64::from(vec::X2APIC_IPI));
        wait(|| received(k, vec::X2APIC_IPI) >= r);
    }
}

/// The next deadline: 150-250 µs from now, varying per vCPU and tick.
fn next_deadline(k: usize) -> u64 {
    let us = 150u64
        .wrapping_add((k as u64).wrapping_mul(29))
        .wrapping_add(rdtsc() % 50);
    rdtsc().wrapping_add(us.wrapping_mul(u64::from(TSC_PER_US.load(Ordering::SeqCst))))
}

fn deadline(k: usize, ticks: u32) {
    // LVT timer mode 10b: TSC-deadline (SDM vol. 3A §11.5.4.1).
    wrmsr(LVT_TIMER, (0b10 << 17) | u64::from(vec::TIMER));
    wrmsr(TSC_DEADLINE, next_deadline(k));
    wait(|| received(k, vec::TIMER) >= ticks);
    wrmsr(LVT_TIMER, (1 << 16) | (0b10 << 17) | u64::from(vec::TIMER));
    wrmsr(TSC_DEADLINE, 0);
}

/// RAX of the QUERY_FEATURES call the handed-back vCPU makes (spec §5:
/// UNSUPPORTED_PROTOCOL, 0x8000_0001).
pub static AFTER_HANDBACK_QUERY: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(u64::MAX);
/// Set by the last vCPU once its APIC was handed back.
static HANDED_BACK: AtomicBool = AtomicBool::new(false);

fn handback(k: usize, n: usize, rounds: u32) {
    let last = n.saturating_sub(1);
    if k == last {
        // Quiet first: no device post may be on its way to the vCPU.
        while vmmcall(HCALL | OP_QUIESCE, 0, 0).0 != 0 {
            sti_window();
        }
        // CONFIGURE, deregister (RCX = 1): the count reaches 0, the APIC is
        // handed back (spec §5); RCX returns the new count.
        let (rc, count, _) = vmmcall((3 << 32) | 1, 1, 0);
        if rc != 0 || count != 0 {
            ledger::violation(((k as u64) << 16) | (0xB0 << 8) | (rc & 0xFF));
        }
        // Spec §5: the protocol is gone for this vCPU (UNSUPPORTED_PROTOCOL).
        // Recorded, not judged: this engine still answers QUERY_FEATURES
        // after the hand-back (docs/testing.md).
        let (rc, _, _) = vmmcall(3 << 32, 0, 0);
        AFTER_HANDBACK_QUERY.store(rc, Ordering::SeqCst);
        HANDED_BACK.store(true, Ordering::SeqCst);
        let expected = rounds.saturating_mul(last as u32);
        wait(|| {
            (0..last)
                .map(|j| received(k, vec::PING.wrapping_add(j as u8)))
                .sum::<u32>()
                >= expected
        });
    } else {
        while !HANDED_BACK.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
        for r in 1..=rounds {
            send_ipi(last, vec::PING.wrapping_add(k as u8));
            wait(|| received(k, vec::PONG) >= r);
        }
    }
}

fn ipi(k: usize, n: usize, rounds: u32) {
    if k == 0 {
        if n > 1 {
            send_ipi(1, vec::TOKEN);
            wait(|| RING_DONE.load(Ordering::SeqCst));
            for r in 0..rounds {
                ACKS.store(0, Ordering::SeqCst);
                broadcast_others(vec::BCAST);
                wait(|| received(0, vec::ACK) > r);
            }
        }
        FINISHED.store(true, Ordering::SeqCst);
        broadcast_others(vec::FINISH);
    } else {
        wait(|| FINISHED.load(Ordering::SeqCst) && received(k, vec::FINISH) > 0);
    }
}

/// Notes the TPR class the handlers check against.
fn raise(k: usize, class: u8) {
    if let Some(r) = RAISED.get(k) {
        r.store(class, Ordering::SeqCst);
    }
}

fn tpr(k: usize, rounds: u32) {
    for r in 1..=rounds {
        set_cr8(8);
        raise(k, 8);
        for v in [vec::TPR_LOW, vec::TPR_EQUAL, vec::TPR_HIGH] {
            vmmcall(HCALL | OP_POST_SELF, u64::from(v), 0);
        }
        wait(|| received(k, vec::TPR_HIGH) >= r);
        // Give the held-back vectors every chance to be (wrongly) taken.
        for _ in 0..20 {
            sti_window();
        }
        raise(k, 0);
        set_cr8(0);
        wait(|| received(k, vec::TPR_LOW) >= r && received(k, vec::TPR_EQUAL) >= r);
    }
}

fn nested(k: usize, rounds: u32) {
    for r in 1..=rounds {
        wrmsr(SELF_IPI, u64::from(vec::NEST_LOW));
        wait(|| received(k, vec::NEST_LOW) >= r);
        if NESTED_SEEN.get(k).map_or(0, |s| s.load(Ordering::SeqCst)) < r {
            ledger::violation(((k as u64) << 16) | (0x4 << 8) | u64::from(vec::NEST_HIGH));
        }
    }
}

/// The error code the last guest exception with one pushed, per vCPU.
pub static LAST_ERROR: [core::sync::atomic::AtomicU64; MAX_VCPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; MAX_VCPUS];

/// A guest that only asks to stop, forever (the quirk tests' guest).
pub extern "C" fn spin_vmmcall(_k: u64) -> ! {
    done()
}

/// Called by the guest stubs with interrupts masked (interrupt gates).
#[unsafe(no_mangle)]
extern "C" fn image_guest_dispatch(vector: u64, error: u64) {
    let k = me();
    let now = rdtsc();
    let v = (vector & 0xFF) as usize;
    GUEST.add(k, v);
    if let Some(e) = LAST_ERROR.get(k) {
        e.store(error, Ordering::SeqCst);
    }
    if claimed(v) {
        ledger::delivered(k, v, now);
    }
    if v == ledger::NMI || v == ledger::GP {
        return;
    }
    if v < 32 {
        ledger::violation(((k as u64) << 16) | (0xE << 8) | v as u64);
        return;
    }
    if v == 0xFF {
        return; // spurious: no EOI (SDM vol. 3A §11.9)
    }
    let raised = RAISED.get(k).map_or(0, |r| r.load(Ordering::SeqCst));
    if raised != 0 && (v >> 4) as u8 <= raised {
        ledger::violation(((k as u64) << 16) | (0x7 << 8) | v as u64);
    }
    let n = VCPUS.load(Ordering::SeqCst) as usize;
    match v as u8 {
        vec::TOKEN => {
            let hops = HOPS.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
            let target = ROUNDS.load(Ordering::SeqCst).wrapping_mul(n as u32);
            if hops < target {
                send_ipi(k.wrapping_add(1).checked_rem(n).unwrap_or(0), vec::TOKEN);
            } else {
                RING_DONE.store(true, Ordering::SeqCst);
            }
        }
        vec::BCAST
            if ACKS.fetch_add(1, Ordering::SeqCst).wrapping_add(1) as usize
                == n.saturating_sub(1) =>
        {
            send_ipi(0, vec::ACK);
        }
        vec::NEST_LOW => nest_low(k),
        p if (vec::PING..vec::PONG).contains(&p) => {
            send_ipi(usize::from(p.wrapping_sub(vec::PING)), vec::PONG)
        }
        vec::TIMER
            if PROGRAM.load(Ordering::SeqCst) == Program::Deadline as u8
                && received(k, vec::TIMER) < ROUNDS.load(Ordering::SeqCst) =>
        {
            wrmsr(TSC_DEADLINE, next_deadline(k));
        }
        vec::NEST_HIGH => {
            if IN_LOW.get(k).is_some_and(|f| f.load(Ordering::SeqCst))
                && let Some(s) = NESTED_SEEN.get(k)
            {
                s.fetch_add(1, Ordering::SeqCst);
            }
            eoi(k);
            // The EOI retired the higher vector: only the lower one stays.
            if in_service(vec::NEST_HIGH) || !in_service(vec::NEST_LOW) {
                ledger::violation(((k as u64) << 16) | (0x5 << 8) | v as u64);
            }
            return;
        }
        _ => {}
    }
    eoi(k);
}

fn nest_low(k: usize) {
    if let Some(f) = IN_LOW.get(k) {
        f.store(true, Ordering::SeqCst);
    }
    let before = NESTED_SEEN.get(k).map_or(0, |s| s.load(Ordering::SeqCst));
    wrmsr(SELF_IPI, u64::from(vec::NEST_HIGH));
    // The higher class preempts this handler as soon as IF = 1.
    for _ in 0..50 {
        if NESTED_SEEN.get(k).map_or(0, |s| s.load(Ordering::SeqCst)) > before {
            break;
        }
        sti_window();
    }
    if let Some(f) = IN_LOW.get(k) {
        f.store(false, Ordering::SeqCst);
    }
}
