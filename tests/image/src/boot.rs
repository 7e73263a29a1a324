//! PVH entry: 32-bit protected mode -> identity-mapped long mode -> `kmain`.
//!
//! QEMU's `-kernel` loads an ELF carrying the Xen note `XEN_ELFNOTE_PHYS32_ENTRY`
//! (type 18) at its physical addresses and enters that address in 32-bit protected
//! mode, paging off, interrupts masked, EBX = physical address of `hvm_start_info`
//! (Xen public header `arch-x86/hvm/start_info.h`, "x86/HVM direct boot ABI").
//! This code zeroes .bss, builds page tables (first 1 GiB identity-mapped, 4 KiB
//! pages for the first 4 MiB so the page below the boot stack stays unmapped as a
//! guard, 2 MiB pages above; the 2 MiB page holding the local APIC at 0xFEE0_0000
//! identity-mapped uncached), loads a GDT and a TSS (IST1 for faults that a stack
//! overflow raises), enables long mode (Intel SDM vol. 3A §10.8.5 / AMD APM vol. 2 §14.6)
//! and calls `kmain(start_info)` on a static stack.

use core::sync::atomic::{AtomicU8, Ordering};

/// Size of the boot stack; the unit tests run on it.
pub const STACK_SIZE: usize = 512 * 1024;

core::arch::global_asm!(
    // The PVH entry note. Name "Xen", desc = 64-bit entry address as a 64-bit
    // kernel's note carries it; 4-byte alignment as ELF notes require.
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start32",
    ".balign 4",
    "",
    ".section .text.boot, \"ax\"",
    ".code32",
    ".global pvh_start32",
    "pvh_start32:",
    "    cli",
    "    cld",
    "    mov esi, ebx", // hvm_start_info, kept in ESI until kmain
    // Zero .bss (QEMU zero-fills it too; do not rely on that).
    "    mov edi, offset __bss_start",
    "    mov ecx, offset __bss_end",
    "    sub ecx, edi",
    "    xor eax, eax",
    "    rep stosb",
    // PML4[0] -> PDPT; PDPT[0] -> PD0 (0..1 GiB); PDPT[3] -> PD3 (3..4 GiB).
    "    mov eax, offset boot_pdpt",
    "    or eax, 0x3",
    "    mov [boot_pml4], eax",
    "    mov eax, offset boot_pd0",
    "    or eax, 0x3",
    "    mov [boot_pdpt], eax",
    "    mov eax, offset boot_pd3",
    "    or eax, 0x3",
    "    mov [boot_pdpt + 24], eax",
    // PD0[2..512]: identity 2 MiB pages, P | RW | PS.
    "    mov ecx, 2",
    "2:",
    "    mov eax, ecx",
    "    shl eax, 21",
    "    or eax, 0x83",
    "    mov [boot_pd0 + ecx * 8], eax",
    "    inc ecx",
    "    cmp ecx, 512",
    "    jne 2b",
    // PD0[0..2] -> boot_pt (two 4 KiB tables back to back): the first 4 MiB in
    // 4 KiB pages, P | RW, so the stack guard page can be left unmapped.
    "    mov eax, offset boot_pt",
    "    or eax, 0x3",
    "    mov [boot_pd0], eax",
    "    add eax, 4096",
    "    mov [boot_pd0 + 8], eax",
    "    xor ecx, ecx",
    "4:",
    "    mov eax, ecx",
    "    shl eax, 12",
    "    or eax, 0x3",
    "    mov [boot_pt + ecx * 8], eax",
    "    inc ecx",
    "    cmp ecx, 1024",
    "    jne 4b",
    "    mov eax, offset boot_stack_guard",
    "    shr eax, 12",
    "    mov dword ptr [boot_pt + eax * 8], 0",
    // TSS: IST1 = emergency stack (for #DF, #PF, #GP, #SS, NMI: a stack overflow
    // is reported, not a triple fault); its base goes into GDT entry 0x18
    // (Intel SDM vol. 3A §8.2.3, §8.7, §6.14.5).
    "    mov dword ptr [boot_tss + 0x24], offset boot_ist_top",
    "    mov word ptr [boot_tss + 0x66], 104",
    "    mov eax, offset boot_tss",
    "    mov word ptr [boot_gdt + 0x18 + 2], ax",
    "    shr eax, 16",
    "    mov byte ptr [boot_gdt + 0x18 + 4], al",
    "    mov byte ptr [boot_gdt + 0x18 + 7], ah",
    // PD3[(0xFEE00000 - 0xC0000000) >> 21 = 0x1F7]: local APIC, P | RW | PWT | PCD | PS.
    "    mov dword ptr [boot_pd3 + 0x1F7 * 8], 0xFEE0009B",
    // CR3, CR4.PAE, EFER.LME, CR0.PG | PE: long mode (Intel SDM vol. 3A §10.8.5).
    "    mov eax, offset boot_pml4",
    "    mov cr3, eax",
    "    mov eax, cr4",
    "    or eax, 0x20",
    "    mov cr4, eax",
    "    mov ecx, 0xC0000080",
    "    rdmsr",
    "    or eax, 0x100",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000001",
    "    mov cr0, eax",
    "    lgdt [boot_gdt_ptr]",
    // Far return into the 64-bit code segment.
    "    push 0x08",
    "    mov eax, offset boot_start64",
    "    push eax",
    "    retf",
    "",
    ".code64",
    "boot_start64:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    mov rsp, offset boot_stack_top",
    "    mov ax, 0x18",
    "    ltr ax",
    "    xor ebp, ebp",
    "    mov edi, esi",
    "    call kmain",
    "3:",
    "    cli",
    "    hlt",
    "    jmp 3b",
    "",
    // GDT: null, 64-bit code (0x08), flat data (0x10). Writable: the CPU sets the
    // accessed bits.
    ".section .data.boot, \"aw\"",
    ".balign 16",
    "boot_gdt:",
    ".quad 0",
    ".quad 0x00AF9A000000FFFF",
    ".quad 0x00CF92000000FFFF",
    ".quad 0x0000890000000067", // 64-bit available TSS, limit 103; base set at boot
    ".quad 0",
    "boot_gdt_end:",
    ".balign 8",
    "boot_gdt_ptr:",
    ".word boot_gdt_end - boot_gdt - 1",
    ".quad boot_gdt",
    "",
    ".section .bss.boot, \"aw\", @nobits",
    ".balign 4096",
    "boot_pml4: .skip 4096",
    "boot_pdpt: .skip 4096",
    "boot_pd0: .skip 4096",
    "boot_pd3: .skip 4096",
    "boot_pt: .skip 8192",
    "boot_tss: .skip 104",
    ".balign 4096",
    "boot_ist_bottom: .skip 16384",
    "boot_ist_top:",
    ".global boot_stack_guard",
    "boot_stack_guard: .skip 4096",
    ".global boot_stack_bottom",
    "boot_stack_bottom: .skip {stack_size}",
    "boot_stack_top:",
    "",
    ".text",
    stack_size = const STACK_SIZE,
);

/// `hvm_start_info.magic` (start_info.h `XEN_HVM_START_MAGIC_VALUE`).
const START_INFO_MAGIC: u32 = 0x336E_C578;
/// Offset of `cmdline_paddr` (u64) in `hvm_start_info`.
const CMDLINE_PADDR_OFFSET: u64 = 24;
/// Longest command line kept (the test-name filter).
pub const CMDLINE_MAX: usize = 128;

/// The boot command line (`qemu -append`), copied out of guest memory at boot.
static CMDLINE: [AtomicU8; CMDLINE_MAX] = [const { AtomicU8::new(0) }; CMDLINE_MAX];

/// Reads a `T` from a physical address in the identity-mapped first GiB.
///
/// Returns `None` for addresses outside it. Only used on boot-info addresses
/// QEMU's PVH option ROM wrote.
fn read_phys<T: Copy>(addr: u64) -> Option<T> {
    let end = addr.checked_add(core::mem::size_of::<T>() as u64)?;
    if addr == 0 || end > (1 << 30) {
        return None;
    }
    // SAFETY: the first GiB is identity-mapped and backed by RAM or ROM (QEMU fills
    // unpopulated space with reads of all-ones, never a fault); the read is
    // unaligned-safe and `T: Copy` is a plain integer here.
    Some(unsafe { core::ptr::read_unaligned(addr as *const T) })
}

/// Copies the command line out of `hvm_start_info` (at physical `start_info`).
pub fn save_cmdline(start_info: u32) {
    let base = u64::from(start_info);
    if read_phys::<u32>(base) != Some(START_INFO_MAGIC) {
        return;
    }
    let Some(cmdline) = base
        .checked_add(CMDLINE_PADDR_OFFSET)
        .and_then(read_phys::<u64>)
    else {
        return;
    };
    for (i, slot) in (0u64..).zip(CMDLINE.iter().take(CMDLINE_MAX.saturating_sub(1))) {
        match cmdline.checked_add(i).and_then(read_phys::<u8>) {
            Some(0) | None => break,
            Some(byte) => slot.store(byte, Ordering::Relaxed),
        }
    }
}

/// The saved command line, trimmed; empty when there is none or it is not UTF-8.
pub fn cmdline(buf: &mut [u8; CMDLINE_MAX]) -> &str {
    for (dst, src) in buf.iter_mut().zip(CMDLINE.iter()) {
        *dst = src.load(Ordering::Relaxed);
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(CMDLINE_MAX);
    buf.get(..len)
        .and_then(|bytes| core::str::from_utf8(bytes).ok())
        .map_or("", str::trim)
}

/// Buffer type for [`cmdline`].
pub type CmdlineBuf = [u8; CMDLINE_MAX];

/// Address of the unmapped guard page below the boot stack.
pub fn stack_guard() -> usize {
    unsafe extern "C" {
        static boot_stack_guard: u8;
    }
    // Only the address is taken.
    (&raw const boot_stack_guard) as usize
}

/// Address of the lowest byte of the boot stack (for the overflow canary).
pub fn stack_bottom() -> usize {
    unsafe extern "C" {
        static boot_stack_bottom: u8;
    }
    // Only the address is taken; the byte is never read through this reference.
    (&raw const boot_stack_bottom) as usize
}
