//! Guest memory, nested paging and the VMCB for the Linux guest.
//!
//! Guest-physical memory is host-physical memory (identity NPT over the
//! first 4 GiB, 2 MiB pages) with the 2 MiB holding the local APIC page
//! (0xFEE0_0000) left unmapped, so xAPIC MMIO traps as #NPF while the
//! IOAPIC, HPET and PCI windows are the machine's own. The e820 map keeps
//! Linux off the host image (1 MiB up to its end) and off the staging area
//! where QEMU's loader device put the kernel and initramfs files.
//!
//! The 64-bit boot protocol (Linux `Documentation/arch/x86/boot.rst`) wants
//! long mode, a GDT with __BOOT_CS = 0x10 and __BOOT_DS = 0x18, identity
//! paging over the kernel, zero page and command line, interrupts off and
//! RSI = the zero page.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_boot::linux::bootparams::{self, BootParams, Layout};
use guest_boot::linux::bzimage::BzImage;
use guest_boot::linux::e820::{self, E820Map};
use zerocopy::IntoBytes;

use crate::svm::hw::{self, Page, off};

/// Where run-linux.sh has QEMU's loader device put the files.
pub const KERNEL_STAGE: u64 = 0x3000_0000;
/// The initramfs file.
pub const INITRD_STAGE: u64 = 0x3400_0000;
/// End of the guest's RAM: everything from the staging area up (and the
/// firmware's ACPI tables at the top of the 1 GiB) is not RAM for Linux.
pub const GUEST_RAM_END: u64 = KERNEL_STAGE;

/// The guest's boot GDT, page tables, zero page and command line, in low
/// memory that Linux gets as RAM (it copies the zero page and command line
/// before it reuses the pages).
const GDT: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000; // four pages: 0x4000-0x7FFF, identity 0-4 GiB
const ZERO_PAGE: u64 = 0x9000;
const CMDLINE: u64 = 0xA000;
const LOW_RAM_END: u64 = 0x9_F000;

/// The 2 MiB guest-physical region with the local APIC page, never mapped.
pub const APIC_REGION: u64 = 0xFEE0_0000;

/// Nested page tables: PML4, PDPT, four page directories of 2 MiB pages.
pub static NPT: [Page; 6] = [const { Page::new() }; 6];
/// I/O permission map (12 KiB, APM vol. 2 §15.10.1): the ports the harness
/// intercepts; every other port is the machine's own.
#[repr(C, align(4096))]
pub struct Iopm(pub [AtomicU64; 1536]);
/// The one I/O permission map.
pub static IOPM: Iopm = Iopm([const { AtomicU64::new(0) }; 1536]);
/// ACPI PM1a control block on QEMU's q35 (ICH9 PMBASE 0x600 + 4): Linux's
/// ACPI power-off writes SLP_TYP | SLP_EN there; the harness ends the run.
pub const PM1A_CNT: u16 = 0x604;

/// What went wrong setting the guest up (printed with `Debug`).
#[derive(Debug)]
#[allow(dead_code)] // the payloads are for the message
pub enum SetupError {
    /// The staged kernel is not a usable bzImage.
    Kernel(guest_boot::linux::bzimage::BzImageError),
    /// The layout did not fit.
    Layout(bootparams::LayoutError),
    /// The e820 map refused a range.
    Map(e820::E820Error),
    /// File sizes do not fit the staging area.
    Staging,
}

/// A byte slice of host-physical memory in the identity-mapped first GiB.
fn phys(addr: u64, len: u64) -> Option<&'static [u8]> {
    let end = addr.checked_add(len)?;
    if addr == 0 || end > (1 << 30) {
        return None;
    }
    // SAFETY: the first GiB is identity-mapped RAM; the staging area is
    // written only by QEMU before boot, and the slice is only read.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) })
}

/// Copies `bytes` to guest-physical (= host-physical) `addr`.
fn write_phys(addr: u64, bytes: &[u8]) -> bool {
    let Some(end) = addr.checked_add(bytes.len() as u64) else {
        return false;
    };
    if end > GUEST_RAM_END {
        return false;
    }
    // SAFETY: `addr..end` is guest RAM below the staging area and above the
    // host image or in low memory (checked by the layout), identity-mapped,
    // and no Rust object lives there.
    unsafe { core::ptr::copy(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
    true
}

fn write_u64(addr: u64, value: u64) -> bool {
    write_phys(addr, &value.to_le_bytes())
}

/// The host image's end, rounded up to 2 MiB (Linux's RAM starts there).
pub fn host_end() -> u64 {
    unsafe extern "C" {
        static __bss_end: u8;
    }
    let end = (&raw const __bss_end) as u64;
    end.saturating_add(0x1F_FFFF) & !0x1F_FFFF
}

/// The guest's e820 map.
pub fn memory_map() -> Result<E820Map, SetupError> {
    let mut map = E820Map::new();
    let host_end = host_end();
    map.add(0, LOW_RAM_END, e820::RAM)
        .map_err(SetupError::Map)?;
    // EBDA and the BIOS ROMs, where Linux scans for the ACPI RSDP and MP table.
    map.add(LOW_RAM_END, 0x10_0000 - LOW_RAM_END, e820::RESERVED)
        .map_err(SetupError::Map)?;
    // The host image (the SVSM's memory): not the guest's.
    map.add(
        0x10_0000,
        host_end.saturating_sub(0x10_0000),
        e820::RESERVED,
    )
    .map_err(SetupError::Map)?;
    map.add(host_end, GUEST_RAM_END.saturating_sub(host_end), e820::RAM)
        .map_err(SetupError::Map)?;
    // Staging area and firmware tables up to the end of the 1 GiB machine.
    map.add(GUEST_RAM_END, (1 << 30) - GUEST_RAM_END, e820::RESERVED)
        .map_err(SetupError::Map)?;
    Ok(map)
}

/// Loads the staged kernel and initramfs as the boot protocol says; returns
/// the layout (entry point, zero page).
pub fn load(kernel_len: u64, initrd_len: u64, cmdline: &str) -> Result<Layout, SetupError> {
    if kernel_len > INITRD_STAGE - KERNEL_STAGE || initrd_len > (1 << 30) - INITRD_STAGE {
        return Err(SetupError::Staging);
    }
    let kernel = phys(KERNEL_STAGE, kernel_len).ok_or(SetupError::Staging)?;
    let initrd = phys(INITRD_STAGE, initrd_len).ok_or(SetupError::Staging)?;
    let image = BzImage::parse(kernel).map_err(SetupError::Kernel)?;
    let map = memory_map()?;
    let layout = bootparams::plan(
        &image,
        &map,
        ZERO_PAGE,
        CMDLINE,
        cmdline.len(),
        host_end(),
        initrd_len,
    )
    .map_err(SetupError::Layout)?;
    let params = BootParams::new(&image, &layout, &map);
    let ok = write_phys(layout.kernel, image.kernel())
        && write_phys(layout.initrd, initrd)
        && write_phys(ZERO_PAGE, params.as_bytes())
        && write_phys(CMDLINE, cmdline.as_bytes())
        && write_phys(CMDLINE.saturating_add(cmdline.len() as u64), &[0]);
    if !ok {
        return Err(SetupError::Staging);
    }
    build_guest_tables();
    Ok(layout)
}

/// The guest's boot GDT (null, null, __BOOT_CS, __BOOT_DS) and identity
/// page tables over 0-4 GiB with 2 MiB pages.
fn build_guest_tables() {
    let gdt = [0u64, 0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
    // Every offset below is a small constant: no overflow.
    for (i, d) in (0u64..).zip(gdt) {
        write_u64(GDT | (i << 3), d);
    }
    write_u64(PML4, PDPT | 0x3);
    for i in 0..4u64 {
        let pd = PD | (i << 12);
        write_u64(PDPT | (i << 3), pd | 0x3);
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            write_u64(pd | (j << 3), addr | 0x83);
        }
    }
}

/// Builds the identity NPT (P | RW | US, 2 MiB pages) without the APIC's
/// 2 MiB, and the I/O permission map.
pub fn build_npt_and_iopm() {
    let [pml4, pdpt, pds @ ..] = &NPT;
    pml4.set(0, pdpt.pa() | 0x7);
    for (i, pd) in (0u64..).zip(pds.iter()) {
        pdpt.set((i << 3) as usize, pd.pa() | 0x7);
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            let entry = if addr == APIC_REGION { 0 } else { addr | 0x87 };
            pd.set((j << 3) as usize, entry);
        }
    }
    for port in [PM1A_CNT, PM1A_CNT + 1] {
        let (word, bit) = (usize::from(port / 64), port % 64);
        if let Some(w) = IOPM.0.get(word) {
            w.fetch_or(1 << bit, Ordering::SeqCst);
        }
    }
}

/// VMCB intercept bits beyond those of `hw::icpt` (APM vol. 2 appendix B,
/// vector 3 at 0x0C).
const ICPT_CPUID: u64 = 1 << 18;
const ICPT_IOIO: u64 = 1 << 27;
/// Control-area offsets the program harness does not use.
const IOPM_BASE: usize = 0x40;
const NP_CTL: usize = 0x90;
const N_CR3: usize = 0xB0;
const G_PAT: usize = 0x668;
const RSP_DEFAULT: u64 = 0x9000;

/// Prepares a VMCB for the boot CPU at the 64-bit entry of `layout`.
pub fn init_vmcb(vmcb: &Page, layout: &Layout) {
    vmcb.clear();
    hw::set_intercepts(
        vmcb,
        0,
        hw::icpt::INTR
            | hw::icpt::NMI
            | hw::icpt::HLT
            | hw::icpt::MSR_PROT
            | hw::icpt::SHUTDOWN
            | hw::icpt::VMRUN
            | hw::icpt::VMMCALL
            | ICPT_CPUID
            | ICPT_IOIO,
    );
    vmcb.set(IOPM_BASE, core::ptr::from_ref(&IOPM) as u64);
    vmcb.set(off::MSRPM_BASE, core::ptr::from_ref(&hw::MSRPM) as u64);
    // ASID 1, TLB control 1 (flush all) for the first run.
    vmcb.set(off::ASID, 1 | (1 << 32));
    vmcb.set(off::INT_CTL, hw::V_INTR_MASKING);
    vmcb.set(NP_CTL, 1);
    vmcb.set(N_CR3, NPT[0].pa());
    vmcb.set(G_PAT, 0x0007_0406_0007_0406);
    hw::set_segment(vmcb, off::CS, 0x10, 0x0A9B, 0xFFFF_FFFF, 0);
    for seg in [off::ES, off::SS, off::DS] {
        hw::set_segment(vmcb, seg, 0x18, 0x0C93, 0xFFFF_FFFF, 0);
    }
    hw::set_segment(vmcb, off::GDTR, 0, 0, 31, GDT);
    hw::set_segment(vmcb, off::IDTR, 0, 0, 0, 0);
    hw::set_segment(vmcb, off::TR, 0, 0x008B, 0x67, 0);
    vmcb.set(off::EFER, (1 << 8) | (1 << 10) | (1 << 12)); // LME | LMA | SVME
    vmcb.set(off::CR0, 0x8000_0031); // PG | NE | ET | PE
    vmcb.set(off::CR3, PML4);
    vmcb.set(off::CR4, 0x20); // PAE
    vmcb.set(off::DR6, 0xFFFF_0FF0);
    vmcb.set(off::DR7, 0x400);
    vmcb.set(off::RFLAGS, 0x2);
    vmcb.set(off::RIP, layout.entry);
    vmcb.set(off::RSP, RSP_DEFAULT);
}
