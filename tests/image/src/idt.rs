//! The IDT: entry stubs for the 32 exception vectors (28 = #HV) and the APIC
//! spurious vector, and the Rust dispatcher they call.
//!
//! `extern "x86-interrupt"` is nightly-only, so each stub is assembly: it pushes a
//! dummy error code where the CPU pushes none (Intel SDM vol. 3A §6.13; #HV has none,
//! AMD APM vol. 2 §8.2.21 / §15.36.16), the vector, saves the caller-saved
//! registers, calls `interrupt_dispatch(vector, error_code, rip)` (System V ABI,
//! stack 16-byte aligned), restores and IRETQs.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{cpu, hv};

/// The #HV vector (AMD APM vol. 2 §8.2.21).
pub const HV_VECTOR: u8 = 28;
/// The local APIC spurious-interrupt vector the kernel programs in SVR.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Every vector has a stub (exceptions, host vectors 16-31, the spurious
/// vector, and 32-254, which a Linux guest's devices raise on the real
/// LAPIC while it runs: `linux_svm`); `isr_table` is in vector order.
const STUB_COUNT: usize = 256;

core::arch::global_asm!(
    // Exceptions that push an error code: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13,
    // #PF 14, #AC 17, #CP 21, #VC 29, #SX 30. The others get a dummy 0.
    ".macro ISR_STUB vec",
    "isr_stub_\\vec:",
    ".if (\\vec == 8) || (\\vec >= 10 && \\vec <= 14) || (\\vec == 17) || (\\vec == 21) || (\\vec == 29) || (\\vec == 30)",
    "    push \\vec",
    ".else",
    "    push 0",
    "    push \\vec",
    ".endif",
    "    jmp isr_common",
    ".endm",
    "",
    ".text",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255",
    "ISR_STUB \\v",
    ".endr",
    "",
    // Stack on entry to isr_common: vector, error code, RIP, CS, RFLAGS, RSP, SS.
    // The CPU aligned RSP to 16 before pushing its 5 words (SDM vol. 3A §6.14.2),
    // so after 2 + 9 more pushes RSP is 16-byte aligned for the call.
    "isr_common:",
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
    "    mov rdx, [rsp + 88]",
    "    cld",
    "    call interrupt_dispatch",
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
    "",
    ".section .rodata",
    ".balign 8",
    ".global isr_table",
    "isr_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255",
    ".quad isr_stub_\\v",
    ".endr",
    ".text",
);

/// 256 gate descriptors of 16 bytes (two u64 each). Atomics so that filling it
/// needs no `static mut`; the CPU reads it as plain memory.
#[repr(C, align(16))]
struct Idt([AtomicU64; 512]);

static IDT: Idt = Idt([const { AtomicU64::new(0) }; 512]);

/// IDTR limit: size in bytes minus one.
const IDT_LIMIT: u16 = (core::mem::size_of::<Idt>() - 1) as u16;

/// NMI, #DF, #SS, #GP and #PF run on IST1 (the TSS's emergency stack): a stack
/// overflow hits the guard page and is reported instead of triple-faulting.
const IST1_VECTORS: [u8; 5] = [2, 8, 12, 13, 14];

/// Kernel code selector of the boot GDT.
const KERNEL_CS: u64 = 0x08;

/// Fills the IDT with 64-bit interrupt gates (type 0xE, DPL 0, present) for every
/// stub and loads it (Intel SDM vol. 3A §6.14.1).
pub fn init() {
    unsafe extern "C" {
        static isr_table: [u64; STUB_COUNT];
    }
    // SAFETY: `isr_table` is 256 quads in .rodata defined by the global_asm above and
    // never written.
    let stubs: [u64; STUB_COUNT] = unsafe { isr_table };
    for (vector, &handler) in (0..=u8::MAX).zip(stubs.iter()) {
        let ist = u64::from(IST1_VECTORS.contains(&vector));
        let low = (handler & 0xFFFF)
            | (KERNEL_CS << 16)
            | (ist << 32)
            | (0x8E << 40) // P | DPL 0 | 64-bit interrupt gate
            | ((handler >> 16) & 0xFFFF) << 48;
        let high = handler >> 32;
        let index = usize::from(vector).wrapping_mul(2);
        if let (Some(lo_slot), Some(hi_slot)) = (IDT.0.get(index), IDT.0.get(index | 1)) {
            lo_slot.store(low, Ordering::Relaxed);
            hi_slot.store(high, Ordering::Relaxed);
        }
    }
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr {
        limit: IDT_LIMIT,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: IDT is a static that lives forever, filled with gates to the stubs
    // above, one per vector.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags));
    }
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "reserved", "reserved",
    "reserved", "reserved", "reserved", "reserved", "#HV", "#VC", "#SX", "reserved",
];

/// Called by `isr_common` with interrupts masked (interrupt gate).
#[unsafe(no_mangle)]
extern "C" fn interrupt_dispatch(vector: u64, error_code: u64, rip: u64) {
    match vector {
        v if v == u64::from(HV_VECTOR) && crate::linux_svm::active() => crate::linux_svm::on_hv(),
        v if (32..255).contains(&v) && crate::linux_svm::active() => {
            crate::linux_svm::on_device(v as u8)
        }
        v if v == u64::from(HV_VECTOR) && crate::svm::host::active() => crate::svm::host::on_hv(),
        v if v == u64::from(HV_VECTOR) => hv::on_hv(),
        v if v == u64::from(crate::svm::host::HOST_TIMER_VECTOR) => crate::svm::host::on_timer(),
        v if v == u64::from(crate::svm::host::KICK_VECTOR)
            || v == u64::from(crate::svm::host::GO_VECTOR) =>
        {
            crate::svm::host::on_wake(vector as u8)
        }
        // SDM vol. 3A §11.9: a spurious interrupt needs no EOI.
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        _ => {
            let name = usize::try_from(vector)
                .ok()
                .and_then(|v| EXCEPTION_NAMES.get(v))
                .copied()
                .unwrap_or("?");
            let cr2 = if vector == 14 { cpu::cr2() } else { 0 };
            let guard = crate::boot::stack_guard() as u64;
            if vector == 14 && cr2.wrapping_sub(guard) < 4096 {
                crate::runner::fail(format_args!(
                    "stack overflow: page fault on the guard page below the {} KiB boot \
                     stack, rip {rip:#x}",
                    crate::boot::STACK_SIZE / 1024
                ))
            }
            crate::runner::fail(format_args!(
                "unexpected CPU exception {vector} ({name}), error code {error_code:#x}, \
                 rip {rip:#x}, cr2 {cr2:#x}"
            ))
        }
    }
}
