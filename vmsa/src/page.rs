//! This project's 4 KiB VMSA page (spec §2 offsets; AMD APM vol. 2 table B-4).

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

use zerocopy::{FromBytes, FromZeros, IntoBytes, KnownLayout};

use crate::{EventInj, ExitCode, SevFeatures, VIntrCtrl, VmsaAccess};

/// Byte offsets of the fields inside the VMSA page (spec §2).
pub mod offset {
    /// EFER.
    pub const EFER: usize = 0xD0;
    /// RFLAGS.
    pub const RFLAGS: usize = 0x170;
    /// RIP.
    pub const RIP: usize = 0x178;
    /// RAX.
    pub const RAX: usize = 0x1F8;
    /// RCX.
    pub const RCX: usize = 0x308;
    /// RDX.
    pub const RDX: usize = 0x310;
    /// R8.
    pub const R8: usize = 0x340;
    /// R9.
    pub const R9: usize = 0x348;
    /// guest_exit_info_1.
    pub const EXIT_INFO_1: usize = 0x390;
    /// guest_exit_info_2.
    pub const EXIT_INFO_2: usize = 0x398;
    /// guest_exit_int_info (EXITINTINFO).
    pub const EXIT_INT_INFO: usize = 0x3A0;
    /// guest_nrip.
    pub const NRIP: usize = 0x3A8;
    /// sev_features.
    pub const SEV_FEATURES: usize = 0x3B0;
    /// vintr_ctrl.
    pub const VINTR_CTRL: usize = 0x3B8;
    /// guest_exit_code.
    pub const EXIT_CODE: usize = 0x3C0;
    /// event_inj (EVENTINJ).
    pub const EVENT_INJ: usize = 0x3E0;
    /// Size of the page.
    pub const SIZE: usize = 0x1000;
}

/// A VMSA page with the fields of spec §2; the other bytes are kept as
/// opaque reserved arrays.
///
/// Every field is an `AtomicU64` (relaxed loads and stores compile to plain
/// moves on x86): until BUSY is set after an exit, a hostile hypervisor may
/// VMRUN the page on another CPU, and atomics keep such a race defined. BUSY
/// itself is changed with one `fetch_or`/`fetch_and` on `vintr_ctrl`.
///
/// Build it with [`VmsaPage::new`] (all zero), or view a mapped page with
/// zerocopy's `FromBytes::mut_from_bytes`.
#[derive(FromBytes, IntoBytes, KnownLayout)]
#[repr(C, align(4096))]
pub struct VmsaPage {
    _rsvd_000: [u8; offset::EFER],
    efer: AtomicU64,
    _rsvd_0d8: [u8; offset::RFLAGS - offset::EFER - 8],
    rflags: AtomicU64,
    rip: AtomicU64,
    _rsvd_180: [u8; offset::RAX - offset::RIP - 8],
    rax: AtomicU64,
    _rsvd_200: [u8; offset::RCX - offset::RAX - 8],
    rcx: AtomicU64,
    rdx: AtomicU64,
    _rsvd_318: [u8; offset::R8 - offset::RDX - 8],
    r8: AtomicU64,
    r9: AtomicU64,
    _rsvd_350: [u8; offset::EXIT_INFO_1 - offset::R9 - 8],
    guest_exit_info_1: AtomicU64,
    guest_exit_info_2: AtomicU64,
    guest_exit_int_info: AtomicU64,
    guest_nrip: AtomicU64,
    sev_features: AtomicU64,
    vintr_ctrl: AtomicU64,
    guest_exit_code: AtomicU64,
    _rsvd_3c8: [u8; offset::EVENT_INJ - offset::EXIT_CODE - 8],
    event_inj: AtomicU64,
    _rsvd_3e8: [u8; offset::SIZE - offset::EVENT_INJ - 8],
}

// Hardware layout (spec §2): every offset and the size are fixed.
const _: () = assert!(size_of::<VmsaPage>() == offset::SIZE);
const _: () = assert!(core::mem::align_of::<VmsaPage>() == offset::SIZE);
const _: () = assert!(offset_of!(VmsaPage, efer) == offset::EFER);
const _: () = assert!(offset_of!(VmsaPage, rflags) == offset::RFLAGS);
const _: () = assert!(offset_of!(VmsaPage, rip) == offset::RIP);
const _: () = assert!(offset_of!(VmsaPage, rax) == offset::RAX);
const _: () = assert!(offset_of!(VmsaPage, rcx) == offset::RCX);
const _: () = assert!(offset_of!(VmsaPage, rdx) == offset::RDX);
const _: () = assert!(offset_of!(VmsaPage, r8) == offset::R8);
const _: () = assert!(offset_of!(VmsaPage, r9) == offset::R9);
const _: () = assert!(offset_of!(VmsaPage, guest_exit_info_1) == offset::EXIT_INFO_1);
const _: () = assert!(offset_of!(VmsaPage, guest_exit_info_2) == offset::EXIT_INFO_2);
const _: () = assert!(offset_of!(VmsaPage, guest_exit_int_info) == offset::EXIT_INT_INFO);
const _: () = assert!(offset_of!(VmsaPage, guest_nrip) == offset::NRIP);
const _: () = assert!(offset_of!(VmsaPage, sev_features) == offset::SEV_FEATURES);
const _: () = assert!(offset_of!(VmsaPage, vintr_ctrl) == offset::VINTR_CTRL);
const _: () = assert!(offset_of!(VmsaPage, guest_exit_code) == offset::EXIT_CODE);
const _: () = assert!(offset_of!(VmsaPage, event_inj) == offset::EVENT_INJ);
// The spec offsets themselves (guards against a typo in `offset`).
const _: () = assert!(offset::EFER == 0xD0 && offset::RFLAGS == 0x170 && offset::RIP == 0x178);
const _: () = assert!(offset::RAX == 0x1F8 && offset::RCX == 0x308 && offset::RDX == 0x310);
const _: () = assert!(offset::R8 == 0x340 && offset::R9 == 0x348);
const _: () = assert!(offset::EXIT_INFO_1 == 0x390 && offset::EXIT_INFO_2 == 0x398);
const _: () = assert!(offset::EXIT_INT_INFO == 0x3A0 && offset::NRIP == 0x3A8);
const _: () = assert!(offset::SEV_FEATURES == 0x3B0 && offset::VINTR_CTRL == 0x3B8);
const _: () = assert!(offset::EXIT_CODE == 0x3C0 && offset::EVENT_INJ == 0x3E0);

impl VmsaPage {
    /// An all-zero page (BUSY clear, no event, no feature).
    pub fn new() -> Self {
        Self::new_zeroed()
    }

    /// Views a mapped VMSA page (4 KiB, 4 KiB-aligned), such as the page that
    /// holds an SVSM's own VMSA type, so the engine can use this ready
    /// [`VmsaAccess`] implementation instead of one written for that type.
    /// `None` when `page` is not exactly one aligned 4 KiB page.
    ///
    /// Every field is an atomic at its spec §2 offset (asserted at compile
    /// time), so the view reads and writes the same bytes as the SVSM's type;
    /// the other bytes are never touched.
    pub fn view_mut(page: &mut [u8]) -> Option<&mut Self> {
        Self::mut_from_bytes(page).ok()
    }

    /// The vintr_ctrl field as an atomic, e.g. for
    /// [`busy::test_and_set_busy`](crate::busy::test_and_set_busy) from code
    /// that holds only a shared reference (an exit handler on another path).
    pub fn vintr_ctrl_atomic(&self) -> &AtomicU64 {
        &self.vintr_ctrl
    }
}

impl Default for VmsaPage {
    fn default() -> Self {
        Self::new()
    }
}

fn load(field: &AtomicU64) -> u64 {
    field.load(Ordering::Relaxed)
}

fn store(field: &AtomicU64, value: u64) {
    field.store(value, Ordering::Relaxed)
}

impl VmsaAccess for VmsaPage {
    fn efer(&self) -> u64 {
        load(&self.efer)
    }
    fn set_efer(&mut self, value: u64) {
        store(&self.efer, value)
    }
    fn rflags(&self) -> u64 {
        load(&self.rflags)
    }
    fn set_rflags(&mut self, value: u64) {
        store(&self.rflags, value)
    }
    fn rip(&self) -> u64 {
        load(&self.rip)
    }
    fn set_rip(&mut self, value: u64) {
        store(&self.rip, value)
    }
    fn rax(&self) -> u64 {
        load(&self.rax)
    }
    fn set_rax(&mut self, value: u64) {
        store(&self.rax, value)
    }
    fn rcx(&self) -> u64 {
        load(&self.rcx)
    }
    fn set_rcx(&mut self, value: u64) {
        store(&self.rcx, value)
    }
    fn rdx(&self) -> u64 {
        load(&self.rdx)
    }
    fn set_rdx(&mut self, value: u64) {
        store(&self.rdx, value)
    }
    fn r8(&self) -> u64 {
        load(&self.r8)
    }
    fn set_r8(&mut self, value: u64) {
        store(&self.r8, value)
    }
    fn r9(&self) -> u64 {
        load(&self.r9)
    }
    fn set_r9(&mut self, value: u64) {
        store(&self.r9, value)
    }
    fn exit_info_1(&self) -> u64 {
        load(&self.guest_exit_info_1)
    }
    fn set_exit_info_1(&mut self, value: u64) {
        store(&self.guest_exit_info_1, value)
    }
    fn exit_info_2(&self) -> u64 {
        load(&self.guest_exit_info_2)
    }
    fn set_exit_info_2(&mut self, value: u64) {
        store(&self.guest_exit_info_2, value)
    }
    fn exit_int_info(&self) -> EventInj {
        EventInj::from_bits(load(&self.guest_exit_int_info))
    }
    fn set_exit_int_info(&mut self, value: EventInj) {
        store(&self.guest_exit_int_info, value.into_bits())
    }
    fn nrip(&self) -> u64 {
        load(&self.guest_nrip)
    }
    fn set_nrip(&mut self, value: u64) {
        store(&self.guest_nrip, value)
    }
    fn sev_features(&self) -> SevFeatures {
        SevFeatures::from_bits_retain(load(&self.sev_features))
    }
    fn set_sev_features(&mut self, value: SevFeatures) {
        store(&self.sev_features, value.bits())
    }
    fn vintr_ctrl(&self) -> VIntrCtrl {
        VIntrCtrl::from_bits(load(&self.vintr_ctrl))
    }
    fn set_vintr_ctrl(&mut self, value: VIntrCtrl) {
        store(&self.vintr_ctrl, value.into_bits())
    }
    fn exit_code(&self) -> ExitCode {
        ExitCode(load(&self.guest_exit_code))
    }
    fn set_exit_code(&mut self, value: ExitCode) {
        store(&self.guest_exit_code, value.0)
    }
    fn event_inj(&self) -> EventInj {
        EventInj::from_bits(load(&self.event_inj))
    }
    fn set_event_inj(&mut self, value: EventInj) {
        store(&self.event_inj, value.into_bits())
    }

    /// One atomic `fetch_or`: acquire, so the edits that follow see the
    /// state the exit left (OpenHCL does the same test-and-set).
    fn test_and_set_busy(&mut self) -> bool {
        crate::busy::test_and_set_busy(&self.vintr_ctrl)
    }

    /// One atomic `fetch_and`: release, so every edit is visible before the
    /// VMSA can run again.
    fn clear_busy(&mut self) {
        crate::busy::clear_busy(&self.vintr_ctrl)
    }
}
