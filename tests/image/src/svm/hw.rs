//! The real SVM of the machine (QEMU TCG `-cpu max`): enabling it, the VMCB
//! layout, the MSR permission map, and VMRUN (AMD APM vol. 2 §15.5-§15.11,
//! appendix B for the VMCB layout).
//!
//! The image runs with paging identity-mapped, so every static's address is
//! its physical address, as VMRUN, VM_HSAVE_PA and the MSRPM base need.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// One 4 KiB page of 64-bit words, page-aligned. Atomics, so the CPU (which
/// writes the VMCB at every exit) and the harness never alias `&mut`.
#[repr(C, align(4096))]
pub struct Page(pub [AtomicU64; 512]);

impl Page {
    /// A zeroed page.
    pub const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; 512])
    }

    /// Its physical (= virtual) address.
    pub fn pa(&self) -> u64 {
        core::ptr::from_ref(self) as u64
    }

    /// The 64-bit word at byte offset `off` (8-aligned).
    pub fn get(&self, off: usize) -> u64 {
        self.0.get(off / 8).map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// Writes the 64-bit word at byte offset `off` (8-aligned).
    pub fn set(&self, off: usize, value: u64) {
        if let Some(w) = self.0.get(off / 8) {
            w.store(value, Ordering::SeqCst);
        }
    }

    /// Zeroes the page.
    pub fn clear(&self) {
        self.0.iter().for_each(|w| w.store(0, Ordering::SeqCst));
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

/// VMCB control-area and state-save offsets (APM vol. 2 appendix B).
pub mod off {
    /// CR read intercepts (u16) | CR write intercepts (u16) << 16.
    pub const CR_INTERCEPTS: usize = 0x00;
    /// Instruction intercepts, vectors 3 (0x0C) and 4 (0x10), read as one u64
    /// from 0x08 + 4: kept in the word at 0x08 (high half) and 0x10 (low half).
    pub const MSRPM_BASE: usize = 0x48;
    /// ASID (u32) | TLB control (u8) << 32.
    pub const ASID: usize = 0x58;
    /// int_ctl (u32) | int_vector (u32) << 32: V_TPR .. V_INTR_VECTOR.
    pub const INT_CTL: usize = 0x60;
    /// int_state: bit 0 interrupt shadow.
    pub const INT_STATE: usize = 0x68;
    pub const EXIT_CODE: usize = 0x70;
    pub const EXIT_INFO_1: usize = 0x78;
    pub const EXIT_INFO_2: usize = 0x80;
    /// EXITINTINFO (u32) | error code << 32.
    pub const EXIT_INT_INFO: usize = 0x88;
    /// EVENTINJ (u32) | error code << 32.
    pub const EVENT_INJ: usize = 0xA8;
    pub const NRIP: usize = 0xC8;
    /// Bit 0: nested paging on.
    pub const NESTED_CTL: usize = 0x90;
    pub const NESTED_CR3: usize = 0xB0;
    // State save area (0x400 +).
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const GDTR: usize = 0x460;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const EFER: usize = 0x4D0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const G_PAT: usize = 0x668;
}

/// Exit codes the harness handles (APM vol. 2 appendix C).
pub mod exit {
    pub const CR8_WRITE: u64 = 0x18;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const HLT: u64 = 0x78;
    pub const MSR: u64 = 0x7C;
    pub const NPF: u64 = 0x400;
    pub const VMMCALL: u64 = 0x81;
    /// VMEXIT_INVALID as QEMU writes it: the u32 -1, zero-extended (quirk).
    pub const INVALID_QEMU: u64 = 0xFFFF_FFFF;
    pub const INVALID: u64 = u64::MAX;
    /// VMEXIT_BUSY (spec §2), produced by the harness only.
    pub const BUSY: u64 = 0xFFFF_FFFF_FFFF_FFFE;
}

/// int_ctl bits outside the VMSA's VIntrCtrl meaning (APM vol. 2 §15.21.1).
pub const V_INTR_MASKING: u64 = 1 << 24;
/// VMCB int_ctl reserved bit where the VMSA keeps INT_SHADOW (bit 10).
pub const VMSA_INT_SHADOW: u64 = 1 << 10;

/// Intercept bits in the u64 at VMCB 0x0C (vector 3 low, vector 4 high).
pub mod icpt {
    pub const INTR: u64 = 1 << 0;
    pub const NMI: u64 = 1 << 1;
    pub const HLT: u64 = 1 << 24;
    pub const MSR_PROT: u64 = 1 << 28;
    pub const SHUTDOWN: u64 = 1 << 31;
    pub const VMRUN: u64 = 1 << 32;
    pub const VMMCALL: u64 = 1 << 33;
}

/// Writes the instruction intercepts (u64 at 0x0C, straddling two words).
pub fn set_intercepts(vmcb: &Page, exceptions: u32, bits: u64) {
    let w08 = u64::from(exceptions) | ((bits & 0xFFFF_FFFF) << 32);
    vmcb.set(0x08, w08);
    let w10 = vmcb.get(0x10) & !0xFFFF_FFFF;
    vmcb.set(0x10, w10 | (bits >> 32));
}

/// Writes a segment register of the state-save area (selector, attributes
/// in the VMCB's packed form, limit, base).
pub fn set_segment(vmcb: &Page, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    let w0 = u64::from(selector) | (u64::from(attrib) << 16) | (u64::from(limit) << 32);
    vmcb.set(at, w0);
    vmcb.set(at.wrapping_add(8), base);
}

/// The guest's general-purpose registers VMRUN does not save: RBX, RCX, RDX,
/// RSI, RDI, RBP, R8-R15 (RAX and RSP live in the VMCB).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Gprs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

core::arch::global_asm!(
    // image_svm_vmrun(gprs: *mut Gprs, vmcb_pa: u64), System V ABI.
    // Host IF = 1 across VMRUN so that a host interrupt exits the guest (INTR
    // intercept, V_INTR_MASKING = 1); GIF = 0 around it so the host takes it
    // only after the guest state is saved (APM vol. 2 §15.17).
    ".text",
    ".global image_svm_vmrun",
    "image_svm_vmrun:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push rdi",
    "    mov rax, rsi",
    "    mov rbx, [rdi + 0]",
    "    mov rcx, [rdi + 8]",
    "    mov rdx, [rdi + 16]",
    "    mov rsi, [rdi + 24]",
    "    mov rbp, [rdi + 40]",
    "    mov r8, [rdi + 48]",
    "    mov r9, [rdi + 56]",
    "    mov r10, [rdi + 64]",
    "    mov r11, [rdi + 72]",
    "    mov r12, [rdi + 80]",
    "    mov r13, [rdi + 88]",
    "    mov r14, [rdi + 96]",
    "    mov r15, [rdi + 104]",
    "    mov rdi, [rdi + 32]",
    "    clgi",
    // The NOP takes STI's interrupt shadow: QEMU would carry it into the
    // guest's first instruction otherwise.
    "    sti",
    "    nop",
    "    vmrun rax",
    "    cli",
    "    stgi",
    "    xchg rdi, [rsp]",
    "    mov [rdi + 0], rbx",
    "    mov [rdi + 8], rcx",
    "    mov [rdi + 16], rdx",
    "    mov [rdi + 24], rsi",
    "    mov [rdi + 40], rbp",
    "    mov [rdi + 48], r8",
    "    mov [rdi + 56], r9",
    "    mov [rdi + 64], r10",
    "    mov [rdi + 72], r11",
    "    mov [rdi + 80], r12",
    "    mov [rdi + 88], r13",
    "    mov [rdi + 96], r14",
    "    mov [rdi + 104], r15",
    "    pop rax",
    "    mov [rdi + 32], rax",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
);

unsafe extern "C" {
    fn image_svm_vmrun(gprs: *mut Gprs, vmcb_pa: u64);
}

/// Runs the guest of `vmcb` until its next #VMEXIT (host interrupts masked
/// on return; a pending one is taken at the caller's next [`irq_window`]).
pub fn vmrun(vmcb: &Page, gprs: &mut Gprs) {
    // SAFETY: SVM is enabled (`enable`), `vmcb` is a page-aligned static
    // whose guest runs in this image's own identity-mapped memory with its
    // own IDT and stack; every host register is saved or declared clobbered
    // by the System V call.
    unsafe { image_svm_vmrun(gprs, vmcb.pa()) };
}

/// Opens a one-instruction window for pending host interrupts.
pub fn irq_window() {
    // SAFETY: the host IDT handles every vector the host programs.
    unsafe { asm!("sti", "nop", "cli", options(nostack)) };
}

/// Halts with interrupts enabled until one arrives, then masks them again.
pub fn idle() {
    // SAFETY: STI;HLT is atomic with respect to interrupts (the STI shadow),
    // so a wake-up cannot be lost between the two.
    unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
}

/// CPUID leaf `leaf`, sub-leaf 0: (EAX, EBX, ECX, EDX).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Reads an MSR.
pub fn rdmsr(msr: u32) -> u64 {
    crate::cpu::rdmsr(msr)
}

/// Writes an MSR.
fn wrmsr(msr: u32, value: u64) {
    // SAFETY: only EFER (SVME) and VM_HSAVE_PA are written, by `enable`.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

const MSR_EFER: u32 = 0xC000_0080;
const MSR_VM_CR: u32 = 0xC001_0114;
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
const EFER_SVME: u64 = 1 << 12;

/// The host state-save page VMRUN uses, one per CPU (BSP 0, AP i at i + 1).
static HSAVE: [Page; 1 + super::smp::MAX_APS] = [const { Page::new() }; 1 + super::smp::MAX_APS];

/// SVM features of CPUID 0x8000_000A EDX (APM vol. 3 appendix E.4.9).
#[derive(Clone, Copy, Debug)]
pub struct SvmFeatures {
    pub npt: bool,
    pub nrips: bool,
    pub vgif: bool,
    pub vnmi: bool,
}

/// Enables SVM on the BSP (EFER.SVME, VM_HSAVE_PA). Idempotent.
pub fn enable() -> Result<SvmFeatures, &'static str> {
    enable_on(0)
}

/// Enables SVM on CPU `cpu` (0 = BSP) with its own host save page.
pub fn enable_on(cpu: usize) -> Result<SvmFeatures, &'static str> {
    let hsave = HSAVE.get(cpu).ok_or("no host save page for this CPU")?;
    let (_, _, ecx, _) = cpuid(0x8000_0001);
    if ecx & (1 << 2) == 0 {
        return Err("CPUID: no SVM (run QEMU with -cpu max)");
    }
    if rdmsr(MSR_VM_CR) & (1 << 4) != 0 {
        return Err("VM_CR.SVMDIS is set");
    }
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
    wrmsr(MSR_VM_HSAVE_PA, hsave.pa());
    let (_, _, _, edx) = cpuid(0x8000_000A);
    Ok(SvmFeatures {
        npt: edx & 1 != 0,
        nrips: edx & (1 << 3) != 0,
        vgif: edx & (1 << 16) != 0,
        vnmi: edx & (1 << 25) != 0,
    })
}

/// Host control registers and EFER, copied into each guest (same mode, same
/// identity mapping).
pub fn host_state() -> (u64, u64, u64, u64) {
    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: reading control registers has no side effects.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
    }
    (cr0, cr3, cr4, rdmsr(MSR_EFER))
}

/// The host GDT (base, limit) and TR selector, which guests share.
pub fn host_gdt() -> (u64, u16) {
    #[repr(C, packed)]
    struct Dtr {
        limit: u16,
        base: u64,
    }
    let mut dtr = Dtr { limit: 0, base: 0 };
    // SAFETY: SGDT stores 10 bytes into `dtr`.
    unsafe { asm!("sgdt [{}]", in(reg) &mut dtr, options(nostack, preserves_flags)) };
    (dtr.base, dtr.limit)
}

/// MSR permission map (8 KiB, APM vol. 2 §15.11): two bits per MSR, read
/// then write, MSRs 0-0x1FFF in the first 2 KiB.
#[repr(C, align(4096))]
pub struct Msrpm(pub [AtomicU64; 1024]);

/// The one map every guest uses: APIC_BASE (0x1B), TSC_DEADLINE (0x6E0) and
/// the x2APIC range 0x800-0x8FF intercepted for read and write.
pub static MSRPM: Msrpm = Msrpm([const { AtomicU64::new(0) }; 1024]);

/// Fills [`MSRPM`].
pub fn init_msrpm() {
    let mut intercept = |msr: u32| {
        let bit = msr.wrapping_mul(2);
        let word = (bit / 64) as usize;
        if let Some(w) = MSRPM.0.get(word) {
            w.fetch_or(0b11 << (bit % 64), Ordering::SeqCst);
        }
    };
    intercept(0x1B);
    intercept(0x6E0);
    (0x800..=0x8FF).for_each(&mut intercept);
}
