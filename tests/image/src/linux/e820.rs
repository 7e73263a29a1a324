//! The e820 memory map handed to Linux in `boot_params.e820_table`.
//!
//! Entry layout and types: Linux `Documentation/arch/x86/zero-page.rst` (offset
//! 0x2D0, 128 entries of 20 bytes) and ACPI 6.5 §15 "System Address Map
//! Interfaces" (address range types 1-5).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Entries `boot_params` has room for (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const MAX_ENTRIES: usize = 128;

/// Usable RAM (ACPI `AddressRangeMemory`).
pub const RAM: u32 = 1;
/// Reserved, not to be used by the OS (`AddressRangeReserved`).
pub const RESERVED: u32 = 2;
/// ACPI tables, reclaimable after they are read (`AddressRangeACPI`).
pub const ACPI: u32 = 3;
/// ACPI NVS (`AddressRangeNVS`).
pub const NVS: u32 = 4;

/// One e820 entry as the zero page stores it (packed, 20 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: U64,
    /// Length in bytes.
    pub size: U64,
    /// One of [`RAM`], [`RESERVED`], [`ACPI`], [`NVS`], 5 (unusable).
    pub kind: U32,
}

const _: () = assert!(core::mem::size_of::<E820Entry>() == 20);
const _: () = assert!(core::mem::offset_of!(E820Entry, kind) == 16);

/// Why a range was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Error {
    /// All [`MAX_ENTRIES`] slots are used.
    Full,
    /// Zero length, or the end wraps past 2^64.
    BadRange,
    /// The range overlaps one already in the map.
    Overlap,
}

/// A map under construction: ranges kept sorted by address, never overlapping.
#[derive(Clone, Debug)]
pub struct E820Map {
    entries: [E820Entry; MAX_ENTRIES],
    len: usize,
}

impl Default for E820Map {
    fn default() -> Self {
        Self::new()
    }
}

impl E820Map {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            entries: [E820Entry {
                addr: U64::ZERO,
                size: U64::ZERO,
                kind: U32::ZERO,
            }; MAX_ENTRIES],
            len: 0,
        }
    }

    /// Adds `[addr, addr + size)` of type `kind`, keeping the map sorted.
    pub fn add(&mut self, addr: u64, size: u64, kind: u32) -> Result<(), E820Error> {
        let end = addr.checked_add(size).ok_or(E820Error::BadRange)?;
        if size == 0 {
            return Err(E820Error::BadRange);
        }
        if self.len >= MAX_ENTRIES {
            return Err(E820Error::Full);
        }
        let overlaps = self.entries().iter().any(|e| {
            let (a, s) = (e.addr.get(), e.size.get());
            addr < a.saturating_add(s) && a < end
        });
        if overlaps {
            return Err(E820Error::Overlap);
        }
        let at = self
            .entries()
            .iter()
            .position(|e| e.addr.get() > addr)
            .unwrap_or(self.len);
        let new = E820Entry {
            addr: U64::new(addr),
            size: U64::new(size),
            kind: U32::new(kind),
        };
        let tail = self.entries.get_mut(at..=self.len).ok_or(E820Error::Full)?;
        tail.rotate_right(1);
        if let Some(slot) = tail.first_mut() {
            *slot = new;
        }
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// The entries, sorted by address.
    pub fn entries(&self) -> &[E820Entry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Whether `[addr, addr + size)` lies inside one RAM entry.
    pub fn is_ram(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        self.entries().iter().any(|e| {
            e.kind.get() == RAM
                && e.addr.get() <= addr
                && end <= e.addr.get().saturating_add(e.size.get())
        })
    }

    /// End of the highest RAM entry below `limit` (0 when none).
    pub fn ram_top_below(&self, limit: u64) -> u64 {
        self.entries()
            .iter()
            .filter(|e| e.kind.get() == RAM && e.addr.get() < limit)
            .map(|e| e.addr.get().saturating_add(e.size.get()).min(limit))
            .max()
            .unwrap_or(0)
    }
}
