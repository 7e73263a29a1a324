//! The guest calling area's `no_eoi_required` byte (byte 2 of the CAA
//! header, spec §5), reached through the SVSM's own guest-memory access.
//!
//! An SVSM such as COCONUT reaches guest memory through fallible accessors
//! (the page may be unmapped or moved by the guest), so the engine takes the
//! byte as a small trait whose operations can fail, not as a Rust reference
//! into guest memory; `AtomicU8` implements it for an SVSM that keeps the
//! calling area mapped.

use core::sync::atomic::{AtomicU8, Ordering};

/// The calling area could not be reached (unmapped, moved, not yet set up).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestMemoryError;

/// Byte 2 (`no_eoi_required`) of the guest's calling area.
pub trait NoEoiByte {
    /// Stores `value` with release ordering.
    fn store(&self, value: u8) -> Result<(), GuestMemoryError>;

    /// Swaps in `value` atomically (acquire-release) and returns the byte
    /// it replaced; the guest swaps the same byte at its EOI.
    fn swap(&self, value: u8) -> Result<u8, GuestMemoryError>;
}

impl NoEoiByte for AtomicU8 {
    fn store(&self, value: u8) -> Result<(), GuestMemoryError> {
        AtomicU8::store(self, value, Ordering::Release);
        Ok(())
    }

    fn swap(&self, value: u8) -> Result<u8, GuestMemoryError> {
        Ok(AtomicU8::swap(self, value, Ordering::AcqRel))
    }
}
