//! Nested paging for the `xapic` program: guest-physical = host-physical
//! for the first 4 GiB in 2 MiB pages, except the xAPIC page 0xFEE0_0000,
//! left not present so that every guest access to it exits (#NPF, exit
//! 0x400, EXITINFO2 = the guest-physical address; APM vol. 2 §15.25) and
//! the harness serves it through the engine's MMIO path (an APIC protocol
//! register call on MSR 0x800 + offset / 16, docs/integration.md).

use core::sync::atomic::{AtomicU64, Ordering};

use super::hw::Page;

/// The xAPIC register page the guests address.
pub const XAPIC_BASE: u64 = 0xFEE0_0000;

static PML4: Page = Page::new();
static PDPT: Page = Page::new();
static PD: [Page; 4] = [const { Page::new() }; 4];
static PT_APIC: Page = Page::new();
/// Set once the tables are built.
static BUILT: AtomicU64 = AtomicU64::new(0);

/// Present, writable, user (nested walks are user accesses, APM §15.25.5).
const P_RW_US: u64 = 0x7;
const PS: u64 = 1 << 7;

/// Builds the tables once; returns the nested CR3.
pub fn nested_cr3() -> u64 {
    if BUILT.load(Ordering::SeqCst) != 0 {
        return PML4.pa();
    }
    PML4.set(0, PDPT.pa() | P_RW_US);
    for (g, pd) in PD.iter().enumerate() {
        PDPT.set(g.wrapping_mul(8), pd.pa() | P_RW_US);
        for e in 0..512usize {
            let pa = ((g as u64) << 30) | ((e as u64) << 21);
            pd.set(e.wrapping_mul(8), pa | P_RW_US | PS);
        }
    }
    // The 2 MiB region of the xAPIC page in 4 KiB pages, its first one absent.
    let region = XAPIC_BASE & !0x1F_FFFF;
    for e in 1..512usize {
        PT_APIC.set(e.wrapping_mul(8), (region | ((e as u64) << 12)) | P_RW_US);
    }
    let index = ((XAPIC_BASE >> 21) & 0x1FF) as usize;
    if let Some(pd3) = PD.get(3) {
        pd3.set(index.wrapping_mul(8), PT_APIC.pa() | P_RW_US);
    }
    BUILT.store(1, Ordering::SeqCst);
    PML4.pa()
}

/// A guest MMIO access the harness emulates: only the two encodings the
/// guests use (`mov dword ptr [rdi], esi` and `mov eax, dword ptr [rdi]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mmio {
    /// Write ESI; 2 bytes.
    WriteEsi,
    /// Read into EAX (upper half zeroed); 2 bytes.
    ReadEax,
}

/// Decodes the instruction bytes at a faulting RIP.
pub fn decode(bytes: [u8; 2]) -> Option<Mmio> {
    match bytes {
        [0x89, 0x37] => Some(Mmio::WriteEsi),
        [0x8B, 0x07] => Some(Mmio::ReadEax),
        _ => None,
    }
}

static HOLE_PML4: Page = Page::new();
static HOLE_PDPT: Page = Page::new();
static HOLE_PD: [Page; 4] = [const { Page::new() }; 4];
static HOLE_PT: Page = Page::new();

/// Nested tables like [`nested_cr3`]'s but with the 4 KiB page at `gpa`
/// (first 4 GiB) absent instead of the xAPIC page; returns their CR3.
/// For the tests that make an event delivery fault (its stack page absent).
pub fn nested_cr3_with_hole(gpa: u64) -> u64 {
    HOLE_PML4.set(0, HOLE_PDPT.pa() | P_RW_US);
    for (g, pd) in HOLE_PD.iter().enumerate() {
        HOLE_PDPT.set(g.wrapping_mul(8), pd.pa() | P_RW_US);
        for e in 0..512usize {
            let pa = ((g as u64) << 30) | ((e as u64) << 21);
            pd.set(e.wrapping_mul(8), pa | P_RW_US | PS);
        }
    }
    let region = gpa & !0x1F_FFFF;
    for e in 0..512usize {
        HOLE_PT.set(e.wrapping_mul(8), (region | ((e as u64) << 12)) | P_RW_US);
    }
    fill_hole(gpa, false);
    let g = ((gpa >> 30) & 3) as usize;
    let index = ((gpa >> 21) & 0x1FF) as usize;
    if let Some(pd) = HOLE_PD.get(g) {
        pd.set(index.wrapping_mul(8), HOLE_PT.pa() | P_RW_US);
    }
    HOLE_PML4.pa()
}

/// Makes the page at `gpa` present (or absent again) in the holed tables.
pub fn fill_hole(gpa: u64, present: bool) {
    let e = ((gpa >> 12) & 0x1FF) as usize;
    let value = if present { (gpa & !0xFFF) | P_RW_US } else { 0 };
    HOLE_PT.set(e.wrapping_mul(8), value);
}
