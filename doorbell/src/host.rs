//! The hypervisor's side of the doorbell page: a model poster for simulators
//! and tests (feature `host`).
//!
//! It follows the protocol a real host uses (GHCB spec 56421 #HV doorbell
//! page; descriptor protocol as COCONUT-SVSM consumes it, spec §3):
//! - post into the page first, then flag the VMPL in byte 0x03, then call
//!   [`Host::raise_no_further_signal`] and inject #HV only if it returns `true`;
//! - a single vector goes into the status byte when it is empty, otherwise
//!   into `irr` (vector 31: status bit 31) followed by multiple-vectors;
//! - a level-triggered vector needs the empty status byte and is written
//!   together with the level bit.

use crate::descriptor::is_legal_vector;
use crate::page::{Descriptor, DescriptorStatus, DoorbellFlags, DoorbellPage};
use crate::sync::{AtomicU32, Ordering};

/// Compare-exchange attempts on the status word before a post gives up
/// (single vectors then fall back to `irr`, which always works).
const MAX_ATTEMPTS: usize = 4;

/// Why a post was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostError {
    /// The VMPL has no descriptor (only 1, 2 and 3 do).
    BadVmpl(u8),
    /// Vectors 0-30 are illegal for this protocol (spec §6).
    IllegalVector(u8),
    /// The slot is occupied: retry after VMPL0 has consumed it.
    Busy,
}

/// The posting side of one doorbell page.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    page: &'a DoorbellPage,
}

impl<'a> Host<'a> {
    /// The poster for `page`.
    pub fn new(page: &'a DoorbellPage) -> Self {
        Self { page }
    }

    /// Posts edge-triggered `vector` for `vmpl`.
    pub fn post_vector(&self, vmpl: u8, vector: u8) -> Result<(), PostError> {
        let descriptor = self.posting(vmpl, vector)?;
        let mut current = read(&descriptor.status);
        let mut in_byte = false;
        for _ in 0..MAX_ATTEMPTS {
            let status = DescriptorStatus::from_bits(current);
            if status.pending_vector() != 0 || status.level_sensitive() {
                break;
            }
            let new = status.with_pending_vector(vector).into_bits();
            match descriptor.status.compare_exchange(
                current,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    in_byte = true;
                    break;
                }
                Err(actual) => current = actual,
            }
        }
        if !in_byte {
            // The vector goes in before multiple-vectors is raised: VMPL0
            // clears the flag before scanning, so it finds it now or next pass.
            let index = usize::from(vector >> 5).checked_sub(1);
            match index.and_then(|index| descriptor.irr.get(index)) {
                Some(word) => {
                    word.fetch_or(1 << (vector & 31), Ordering::AcqRel);
                    descriptor
                        .status
                        .fetch_or(DescriptorStatus::MULTIPLE, Ordering::AcqRel);
                }
                None => {
                    descriptor.status.fetch_or(
                        DescriptorStatus::VECTOR_31 | DescriptorStatus::MULTIPLE,
                        Ordering::AcqRel,
                    );
                }
            }
        }
        self.flag_vmpl(vmpl);
        Ok(())
    }

    /// Posts level-triggered `vector` for `vmpl`: vector and level bit in one
    /// compare-exchange. [`PostError::Busy`] while the status byte holds a vector.
    pub fn post_level(&self, vmpl: u8, vector: u8) -> Result<(), PostError> {
        let descriptor = self.posting(vmpl, vector)?;
        let mut current = read(&descriptor.status);
        for _ in 0..MAX_ATTEMPTS {
            let status = DescriptorStatus::from_bits(current);
            if status.pending_vector() != 0 || status.level_sensitive() {
                return Err(PostError::Busy);
            }
            let new = status
                .with_pending_vector(vector)
                .with_level_sensitive(true)
                .into_bits();
            match descriptor.status.compare_exchange(
                current,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.flag_vmpl(vmpl);
                    return Ok(());
                }
                Err(actual) => current = actual,
            }
        }
        Err(PostError::Busy)
    }

    /// Posts an NMI for `vmpl` (collapses into one already pending).
    pub fn post_nmi(&self, vmpl: u8) -> Result<(), PostError> {
        self.post_status(vmpl, DescriptorStatus::NMI)
    }

    /// Posts a machine check for `vmpl`.
    pub fn post_mc(&self, vmpl: u8) -> Result<(), PostError> {
        self.post_status(vmpl, DescriptorStatus::MC)
    }

    /// Sets IPI requested for `vmpl`.
    pub fn post_ipi_requested(&self, vmpl: u8) -> Result<(), PostError> {
        self.post_status(vmpl, DescriptorStatus::IPI)
    }

    /// Sets VMPL0's own vector (byte 0x00) if it is empty; [`PostError::Busy`]
    /// while VMPL0 has not acknowledged the previous one.
    pub fn set_vmpl0_vector(&self, vector: u8) -> Result<(), PostError> {
        if !is_legal_vector(vector) {
            return Err(PostError::IllegalVector(vector));
        }
        self.page
            .vector
            .compare_exchange(0, vector, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| PostError::Busy)
    }

    /// Posts an NMI for VMPL0 (byte 0x01 bit 0).
    pub fn post_vmpl0_nmi(&self) {
        self.page
            .flags
            .fetch_or(DoorbellFlags::NMI_PENDING.bits(), Ordering::AcqRel);
    }

    /// Posts a machine check for VMPL0 (byte 0x01 bit 1).
    pub fn post_vmpl0_mc(&self) {
        self.page
            .flags
            .fetch_or(DoorbellFlags::MC_PENDING.bits(), Ordering::AcqRel);
    }

    /// Sets No EOI Required (byte 0x02 bit 0).
    pub fn set_no_eoi_required(&self) {
        self.page.no_eoi_required.fetch_or(1, Ordering::AcqRel);
    }

    /// Sets NoFurtherSignal after a post; `true` when it was clear, i.e. the
    /// host must now inject #HV (it signals only while the bit is clear).
    pub fn raise_no_further_signal(&self) -> bool {
        let bit = DoorbellFlags::NO_FURTHER_SIGNAL.bits();
        self.page.flags.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Clears NoFurtherSignal (what VMPL0 does in
    /// [`DoorbellPage::take_events`]); for simulators resetting a page.
    pub fn lower_no_further_signal(&self) {
        let bit = DoorbellFlags::NO_FURTHER_SIGNAL.bits();
        self.page.flags.fetch_and(!bit, Ordering::AcqRel);
    }

    fn posting(&self, vmpl: u8, vector: u8) -> Result<&'a Descriptor, PostError> {
        let descriptor = self
            .page
            .descriptor(vmpl)
            .map_err(|bad| PostError::BadVmpl(bad.0))?;
        if is_legal_vector(vector) {
            Ok(descriptor)
        } else {
            Err(PostError::IllegalVector(vector))
        }
    }

    fn post_status(&self, vmpl: u8, bits: u32) -> Result<(), PostError> {
        let descriptor = self
            .page
            .descriptor(vmpl)
            .map_err(|bad| PostError::BadVmpl(bad.0))?;
        descriptor.status.fetch_or(bits, Ordering::AcqRel);
        self.flag_vmpl(vmpl);
        Ok(())
    }

    fn flag_vmpl(&self, vmpl: u8) {
        if let Some(bit) = vmpl.checked_sub(1) {
            self.page.per_vmpl_events.fetch_or(
                1u8.checked_shl(u32::from(bit)).unwrap_or(0),
                Ordering::AcqRel,
            );
        }
    }
}

/// Reads the status word with a read-modify-write that changes nothing.
///
/// A plain load would do for a real host; the RMW makes the model poster
/// read the latest value, and lets loom (whose DPOR keeps only the last access
/// per location, so a load followed by a compare-exchange of the same thread
/// hides an earlier load of the other thread) explore every race with VMPL0.
fn read(status: &AtomicU32) -> u32 {
    status.fetch_or(0, Ordering::AcqRel)
}

impl DoorbellPage {
    /// The host-side poster of this page.
    pub fn host(&self) -> Host<'_> {
        Host::new(self)
    }
}
