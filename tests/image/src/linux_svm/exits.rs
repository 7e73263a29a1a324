//! The exits the Linux guest causes besides the APIC MSRs: CPUID (passed
//! through, shaped as the engine models the APIC), port I/O to the ACPI
//! power-off register, and #NPF on the xAPIC page (decoded with iced-x86 and
//! served through the engine's MMIO path).

use core::arch::asm;

use altinj_vmsa::VmsaAccess;
use guest_boot::mmio::{self, Access, Gpr, MmioInsn};

use crate::svm::hw::off;
use crate::svm::vmcb::Vcpu;

/// CPUID.1:ECX bits (Intel SDM vol. 2A, CPUID, table 3-10).
const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_X2APIC: u32 = 1 << 21;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.8000_0001:ECX SVM (AMD APM vol. 3 appendix E.4.2).
const ECX_SVM: u32 = 1 << 2;
/// CPUID.6:EAX ARAT: the APIC timer runs in every C-state.
const EAX_ARAT: u32 = 1 << 2;
/// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX of leaf 0x4000_0000.
const KVM_SIGNATURE: (u32, u32, u32) = (0x4B4D_564B, 0x564B_4D56, 0x0000_004D);

/// CPUID as the guest sees it: the machine's, with the local APIC the engine
/// emulates (x2APIC, TSC-deadline timer, ARAT, `apic_id` in leaf 1 and
/// 0xB/0x1F), no virtualization extensions, MONITOR/MWAIT hidden (idle must
/// be an intercepted HLT) and a KVM signature with no paravirtual features:
/// real Alternate-Injection guests run on KVM, and Linux keeps x2APIC without
/// interrupt remapping only under a hypervisor (`x2apic_available`).
pub fn cpuid(leaf: u32, subleaf: u32, apic_id: u32) -> (u32, u32, u32, u32) {
    if (0x4000_0000..0x5000_0000).contains(&leaf) {
        return match leaf {
            0x4000_0000 => (
                0x4000_0001,
                KVM_SIGNATURE.0,
                KVM_SIGNATURE.1,
                KVM_SIGNATURE.2,
            ),
            _ => (0, 0, 0, 0),
        };
    }
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    let (mut a, mut b, mut c, mut d) = (r.eax, r.ebx, r.ecx, r.edx);
    match leaf {
        1 => {
            c = (c | ECX_X2APIC | ECX_TSC_DEADLINE | ECX_HYPERVISOR) & !(ECX_MONITOR | ECX_VMX);
            b = (b & 0x00FF_FFFF) | (apic_id << 24);
        }
        5 => (a, b, c, d) = (0, 0, 0, 0),
        6 => a |= EAX_ARAT,
        0xB | 0x1F => d = apic_id,
        0x8000_0001 => c &= !ECX_SVM,
        0x8000_000A => (a, b, c, d) = (0, 0, 0, 0),
        _ => {}
    }
    (a, b, c, d)
}

/// Serves a CPUID exit and steps over the instruction.
pub fn on_cpuid(vcpu: &mut Vcpu, apic_id: u32) {
    let (a, b, c, d) = cpuid(vcpu.rax() as u32, vcpu.gprs.rcx as u32, apic_id);
    vcpu.set_rax(u64::from(a));
    vcpu.gprs.rbx = u64::from(b);
    vcpu.gprs.rcx = u64::from(c);
    vcpu.gprs.rdx = u64::from(d);
    vcpu.skip(2);
}

/// An intercepted port access (APM vol. 2 §15.10.2, EXITINFO1).
#[derive(Clone, Copy, Debug)]
pub struct PortIo {
    /// Port number.
    pub port: u16,
    /// IN (true) or OUT.
    pub input: bool,
    /// Bytes (1, 2, 4).
    pub size: u8,
    /// String or REP form (not served).
    pub string: bool,
}

/// Decodes EXITINFO1 of an IOIO exit.
pub fn port_io(info1: u64) -> PortIo {
    let size = match (info1 >> 4) & 7 {
        1 => 1,
        2 => 2,
        _ => 4,
    };
    PortIo {
        port: (info1 >> 16) as u16,
        input: info1 & 1 != 0,
        size,
        string: info1 & 0b1100 != 0,
    }
}

/// Performs a guest port access on the machine (a port the harness
/// watches but does not own): OUT of the low `size` bytes of `value`, or
/// IN of `size` bytes.
pub fn port_passthrough(io: PortIo, value: u32) -> u32 {
    let port = io.port;
    let mut v = value;
    // SAFETY: the guest could have made this access itself had the port not
    // been intercepted; the harness only watches it (ACPI PM1a control).
    unsafe {
        match (io.input, io.size) {
            (true, 1) => asm!("in al, dx", in("dx") port, inout("eax") v, options(nostack)),
            (true, 2) => asm!("in ax, dx", in("dx") port, inout("eax") v, options(nostack)),
            (true, _) => asm!("in eax, dx", in("dx") port, inout("eax") v, options(nostack)),
            (false, 1) => asm!("out dx, al", in("dx") port, in("eax") v, options(nostack)),
            (false, 2) => asm!("out dx, ax", in("dx") port, in("eax") v, options(nostack)),
            (false, _) => asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack)),
        }
    }
    v
}

/// Reads a u64 of host-physical (= guest-physical) memory below 1 GiB.
fn read_phys_u64(addr: u64) -> Option<u64> {
    if addr >= (1 << 30) - 8 {
        return None;
    }
    // SAFETY: the first GiB is identity-mapped RAM; an aligned u64 read of
    // guest memory (its page tables) has no side effects.
    Some(unsafe { core::ptr::read_volatile(addr as *const u64) })
}

/// Translates guest-virtual `va` through the guest's page tables (4 or 5
/// levels, 1 GiB and 2 MiB pages; AMD APM vol. 2 §5.3).
pub fn translate(cr3: u64, cr4: u64, va: u64) -> Option<u64> {
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let levels: u32 = if cr4 & (1 << 12) != 0 { 5 } else { 4 };
    let mut table = cr3 & ADDR;
    for level in (1..=levels).rev() {
        // level <= 5: the shift is at most 48.
        let shift = 12u32.wrapping_add(9u32.wrapping_mul(level.wrapping_sub(1)));
        let index = (va >> shift) & 0x1FF;
        let entry = read_phys_u64(table | (index << 3))?;
        if entry & 1 == 0 {
            return None;
        }
        if level == 1 || ((level == 2 || level == 3) && entry & 0x80 != 0) {
            let mask = (1u64 << shift).wrapping_sub(1);
            return Some(((entry & ADDR) & !mask) | (va & mask));
        }
        table = entry & ADDR;
    }
    None
}

/// The instruction bytes at the guest's RIP (up to 15, across a page end).
pub fn fetch(vcpu: &Vcpu) -> Option<([u8; mmio::MAX_INSN_LEN], usize)> {
    let (cr3, cr4, rip) = (
        vcpu.vmcb.get(off::CR3),
        vcpu.vmcb.get(off::CR4),
        vcpu.vmcb.get(off::RIP),
    );
    let mut bytes = [0u8; mmio::MAX_INSN_LEN];
    let mut n = 0;
    while n < bytes.len() {
        let va = rip.wrapping_add(n as u64);
        let Some(pa) = translate(cr3, cr4, va) else {
            break;
        };
        let in_page = 0x1000u64.wrapping_sub(va & 0xFFF) as usize;
        let take = in_page.min(bytes.len().saturating_sub(n));
        if pa.saturating_add(take as u64) > 1 << 30 {
            break;
        }
        for (i, b) in bytes.iter_mut().skip(n).take(take).enumerate() {
            // SAFETY: `pa + i` is identity-mapped guest RAM below 1 GiB
            // (checked above); a byte read of guest code.
            *b = unsafe { core::ptr::read_volatile(pa.wrapping_add(i as u64) as *const u8) };
        }
        n = n.saturating_add(take);
    }
    (n > 0).then_some((bytes, n))
}

/// Decodes the trapped instruction at the guest's RIP.
pub fn decode_at_rip(vcpu: &Vcpu) -> Option<MmioInsn> {
    let (bytes, n) = fetch(vcpu)?;
    mmio::decode(bytes.get(..n)?).ok()
}

/// Reads guest register `r` (GPR number as [`Gpr`] defines it).
pub fn gpr(vcpu: &Vcpu, r: Gpr) -> u64 {
    let g = &vcpu.gprs;
    let full = match r.index {
        0 => vcpu.vmcb.get(off::RAX),
        1 => g.rcx,
        2 => g.rdx,
        3 => g.rbx,
        4 => vcpu.vmcb.get(off::RSP),
        5 => g.rbp,
        6 => g.rsi,
        7 => g.rdi,
        8 => g.r8,
        9 => g.r9,
        10 => g.r10,
        11 => g.r11,
        12 => g.r12,
        13 => g.r13,
        14 => g.r14,
        _ => g.r15,
    };
    r.read(full)
}

/// Writes `value` to guest register operand `r` (merging as the CPU does).
pub fn set_gpr(vcpu: &mut Vcpu, r: Gpr, value: u64) {
    let old = match r.index {
        0 => vcpu.vmcb.get(off::RAX),
        4 => vcpu.vmcb.get(off::RSP),
        _ => 0,
    };
    let g = &mut vcpu.gprs;
    let slot = match r.index {
        0 | 4 => None,
        1 => Some(&mut g.rcx),
        2 => Some(&mut g.rdx),
        3 => Some(&mut g.rbx),
        5 => Some(&mut g.rbp),
        6 => Some(&mut g.rsi),
        7 => Some(&mut g.rdi),
        8 => Some(&mut g.r8),
        9 => Some(&mut g.r9),
        10 => Some(&mut g.r10),
        11 => Some(&mut g.r11),
        12 => Some(&mut g.r12),
        13 => Some(&mut g.r13),
        14 => Some(&mut g.r14),
        _ => Some(&mut g.r15),
    };
    match slot {
        Some(s) => *s = r.merge(*s, value),
        None if r.index == 0 => vcpu.vmcb.set(off::RAX, r.merge(old, value)),
        None => vcpu.vmcb.set(off::RSP, r.merge(old, value)),
    }
}

/// The value an MMIO write stores (register or immediate), `None` for reads.
pub fn mmio_write_value(vcpu: &Vcpu, insn: &MmioInsn) -> Option<u64> {
    match insn.access {
        Access::Read { .. } => None,
        Access::WriteReg { src } => Some(gpr(vcpu, src)),
        Access::WriteImm { value } => Some(value),
        Access::Exchange { reg } => Some(gpr(vcpu, reg)),
    }
}

/// Where an MMIO read's value goes.
pub fn mmio_read_dest(insn: &MmioInsn) -> Option<Gpr> {
    match insn.access {
        Access::Read { dest } => Some(dest),
        Access::Exchange { reg } => Some(reg),
        _ => None,
    }
}
