//! Layout of the #HV doorbell page (GHCB spec 56421 "#HV doorbell page";
//! per-VMPL descriptors as COCONUT-SVSM defines them, spec §3).

use bitfield_struct::bitfield;
use bitflags::bitflags;

use crate::sync::{AtomicU8, AtomicU32};

/// Size of the doorbell page in bytes.
pub const PAGE_SIZE: usize = 4096;

bitflags! {
    /// Byte 0x01 of the doorbell page: VMPL0's event flags.
    ///
    /// Unknown bits are kept by `from_bits_retain` and ignored.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DoorbellFlags: u8 {
        /// Bit 0: an NMI is pending for VMPL0.
        const NMI_PENDING = 1 << 0;
        /// Bit 1: a machine check is pending for VMPL0.
        const MC_PENDING = 1 << 1;
        /// Bit 7: the host has signalled #HV and will not signal again until
        /// VMPL0 clears this bit (GHCB spec 56421 #HV doorbell page).
        const NO_FURTHER_SIGNAL = 1 << 7;
    }
}

/// Status word of a per-VMPL descriptor (offset 0 of the descriptor).
///
/// Layout as COCONUT-SVSM defines it; the GHCB text is not public (spec §3).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct DescriptorStatus {
    /// Bits 7:0: the single pending vector (0 = none).
    pub pending_vector: u8,
    /// Bit 8: an NMI is pending.
    pub nmi_pending: bool,
    /// Bit 9: a machine check is pending.
    pub mc_pending: bool,
    /// Bit 10: `pending_vector` is level-triggered.
    pub level_sensitive: bool,
    #[bits(3)]
    __rsvd_13_11: u8,
    /// Bit 14: further vectors are posted in the `irr` words.
    pub multiple_vectors: bool,
    #[bits(12)]
    __rsvd_26_15: u16,
    /// Bit 27: the host asks VMPL0 to process an IPI request.
    pub ipi_requested: bool,
    #[bits(3)]
    __rsvd_30_28: u8,
    /// Bit 31: vector 31 is pending (the `irr` words start at vector 32).
    pub vector_31: bool,
}

impl DescriptorStatus {
    /// Mask of bits 7:0, the pending vector.
    pub const VECTOR_MASK: u32 = 0xFF;
    /// Bit 8, NMI pending.
    pub const NMI: u32 = Self::new().with_nmi_pending(true).into_bits();
    /// Bit 9, machine check pending.
    pub const MC: u32 = Self::new().with_mc_pending(true).into_bits();
    /// Bit 10, level-sensitive.
    pub const LEVEL: u32 = Self::new().with_level_sensitive(true).into_bits();
    /// Bit 14, multiple vectors.
    pub const MULTIPLE: u32 = Self::new().with_multiple_vectors(true).into_bits();
    /// Bit 27, IPI requested.
    pub const IPI: u32 = Self::new().with_ipi_requested(true).into_bits();
    /// Bit 31, vector 31 pending.
    pub const VECTOR_31: u32 = Self::new().with_vector_31(true).into_bits();
}

const _: () = assert!(DescriptorStatus::NMI == 1 << 8);
const _: () = assert!(DescriptorStatus::MC == 1 << 9);
const _: () = assert!(DescriptorStatus::LEVEL == 1 << 10);
const _: () = assert!(DescriptorStatus::MULTIPLE == 1 << 14);
const _: () = assert!(DescriptorStatus::IPI == 1 << 27);
const _: () = assert!(DescriptorStatus::VECTOR_31 == 1 << 31);

/// Extended interrupt descriptor of one lower VMPL (64 bytes, spec §3).
///
/// The host posts into `status` and `irr`; VMPL0 writes `isr` (and merges
/// `irr`) only when it hands the APIC back ([`Descriptor::hand_off`]).
#[repr(C)]
#[cfg_attr(
    not(feature = "loom"),
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout)
)]
pub struct Descriptor {
    /// 0x00: [`DescriptorStatus`] bits.
    pub status: AtomicU32,
    /// 0x04: pending vectors 32-255; word `i` holds vectors `32 * (i + 1)..`.
    pub irr: [AtomicU32; 7],
    /// 0x20: in-service vectors 0-255, APIC register order (handoff only).
    pub isr: [AtomicU32; 8],
}

#[cfg(not(feature = "loom"))]
const _: () = {
    assert!(core::mem::offset_of!(Descriptor, status) == 0x00);
    assert!(core::mem::offset_of!(Descriptor, irr) == 0x04);
    assert!(core::mem::offset_of!(Descriptor, isr) == 0x20);
    assert!(core::mem::size_of::<Descriptor>() == 64);
};

/// The #HV doorbell page, one per vCPU, shared (unencrypted) with the host.
///
/// Build one for tests with [`DoorbellPage::new`]; view the real shared page
/// with [`DoorbellPage::from_bytes_mut`].
#[repr(C, align(4096))]
#[cfg_attr(
    not(feature = "loom"),
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout)
)]
pub struct DoorbellPage {
    /// 0x00: pending vector for VMPL0 (0 = none).
    pub vector: AtomicU8,
    /// 0x01: [`DoorbellFlags`].
    pub flags: AtomicU8,
    /// 0x02: No EOI Required (bit 0).
    pub no_eoi_required: AtomicU8,
    /// 0x03: per-VMPL events, bit `VMPL - 1` set when the host posted into
    /// that VMPL's descriptor (as COCONUT-SVSM does).
    pub per_vmpl_events: AtomicU8,
    // Reserved bytes are atomics too: the host may write them at any time.
    // Left out under loom, where the layout does not matter and every atomic
    // costs model state.
    #[cfg(not(feature = "loom"))]
    _reserved_04: [AtomicU8; 0x3C],
    /// 0x40, 0x80, 0xC0: descriptors of VMPL1, VMPL2 and VMPL3.
    pub descriptors: [Descriptor; 3],
    #[cfg(not(feature = "loom"))]
    _reserved_100: [AtomicU8; 0xF00],
}

#[cfg(not(feature = "loom"))]
const _: () = {
    assert!(core::mem::offset_of!(DoorbellPage, vector) == 0x00);
    assert!(core::mem::offset_of!(DoorbellPage, flags) == 0x01);
    assert!(core::mem::offset_of!(DoorbellPage, no_eoi_required) == 0x02);
    assert!(core::mem::offset_of!(DoorbellPage, per_vmpl_events) == 0x03);
    assert!(core::mem::offset_of!(DoorbellPage, descriptors) == 0x40);
    assert!(core::mem::size_of::<DoorbellPage>() == PAGE_SIZE);
    assert!(core::mem::align_of::<DoorbellPage>() == PAGE_SIZE);
};

/// A VMPL number that has no descriptor (only VMPL1, 2 and 3 have one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadVmpl(pub u8);

impl Default for DoorbellPage {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(feature = "loom"))]
impl Descriptor {
    /// An empty descriptor.
    pub const fn new() -> Self {
        Self {
            status: AtomicU32::new(0),
            irr: [const { AtomicU32::new(0) }; 7],
            isr: [const { AtomicU32::new(0) }; 8],
        }
    }
}

#[cfg(feature = "loom")]
impl Descriptor {
    /// An empty descriptor.
    pub fn new() -> Self {
        Self {
            status: AtomicU32::new(0),
            irr: core::array::from_fn(|_| AtomicU32::new(0)),
            isr: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Default for Descriptor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(feature = "loom"))]
impl DoorbellPage {
    /// An all-zero page (nothing pending), for tests and simulators.
    pub const fn new() -> Self {
        Self {
            vector: AtomicU8::new(0),
            flags: AtomicU8::new(0),
            no_eoi_required: AtomicU8::new(0),
            per_vmpl_events: AtomicU8::new(0),
            _reserved_04: [const { AtomicU8::new(0) }; 0x3C],
            descriptors: [const { Descriptor::new() }; 3],
            _reserved_100: [const { AtomicU8::new(0) }; 0xF00],
        }
    }

    /// Views a page-aligned 4 KiB region as the doorbell page.
    ///
    /// For the real SVSM `bytes` is the shared (unencrypted) page mapped for
    /// this vCPU. Returns `None` if `bytes` is not 4096-byte aligned. The
    /// `&mut` borrow guarantees no other Rust reference to the bytes exists
    /// while the page is in use; the host writing them is what the atomics
    /// are for.
    pub fn from_bytes_mut(bytes: &mut [u8; PAGE_SIZE]) -> Option<&Self> {
        use zerocopy::FromBytes;
        match Self::mut_from_bytes(bytes.as_mut_slice()) {
            Ok(page) => Some(page),
            Err(_) => None,
        }
    }
}

#[cfg(feature = "loom")]
impl DoorbellPage {
    /// An all-zero page (nothing pending), for the loom models.
    pub fn new() -> Self {
        Self {
            vector: AtomicU8::new(0),
            flags: AtomicU8::new(0),
            no_eoi_required: AtomicU8::new(0),
            per_vmpl_events: AtomicU8::new(0),
            descriptors: core::array::from_fn(|_| Descriptor::new()),
        }
    }
}

impl DoorbellPage {
    /// The descriptor of `vmpl` (1, 2 or 3).
    pub fn descriptor(&self, vmpl: u8) -> Result<&Descriptor, BadVmpl> {
        usize::from(vmpl)
            .checked_sub(1)
            .and_then(|index| self.descriptors.get(index))
            .ok_or(BadVmpl(vmpl))
    }
}
