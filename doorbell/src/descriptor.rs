//! Consuming a lower VMPL's descriptor (spec §3, order as COCONUT-SVSM).
//!
//! Every item is removed from the page by the same atomic operation that
//! reads it (a compare-exchange, `fetch_and` or swap), and reported only if
//! that operation removed it. So whatever the host posts concurrently is
//! either in this result or still in the page for the next pass: never lost,
//! never returned twice.

use crate::page::{BadVmpl, Descriptor, DescriptorStatus, DoorbellPage};
use crate::sync::Ordering;

/// Compare-exchange attempts per status step before leaving the item for the
/// next pass, so a host rewriting the word cannot keep VMPL0 spinning.
const MAX_ATTEMPTS: usize = 4;

/// Status bits taken by one `fetch_and`: multiple-vectors must be cleared
/// before the `irr` words are scanned, so that a vector posted after the scan
/// raises it again (COCONUT-SVSM order).
const TAKE_FLAGS: u32 = DescriptorStatus::MULTIPLE
    | DescriptorStatus::VECTOR_31
    | DescriptorStatus::NMI
    | DescriptorStatus::MC
    | DescriptorStatus::IPI;

/// Whether the host may present `vector`: 0-30 are illegal for this
/// protocol, 31 is legal (spec §6).
pub const fn is_legal_vector(vector: u8) -> bool {
    vector >= 31
}

/// What one [`Descriptor::consume`] took out of a descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingInterrupts {
    /// Edge-triggered vectors, APIC register order: vector `v` is bit
    /// `v & 31` of word `v >> 5`. Never holds vectors 0-30.
    pub vectors: [u32; 8],
    /// The level-triggered vector, if one was taken (its EOI goes to the host).
    pub level: Option<u8>,
    /// An NMI was pending.
    pub nmi: bool,
    /// A machine check was pending.
    pub mc: bool,
    /// The host set IPI requested.
    pub ipi_requested: bool,
    /// Items acknowledged but dropped as illegal (vectors 1-30, or the level
    /// bit with no legal vector).
    pub rejected: u32,
}

impl PendingInterrupts {
    /// Whether `vector` is among the edge-triggered vectors taken.
    pub fn contains(&self, vector: u8) -> bool {
        self.vectors
            .get(usize::from(vector >> 5))
            .is_some_and(|word| word & (1 << (vector & 31)) != 0)
    }

    /// Whether nothing was taken (rejected items aside).
    pub fn is_empty(&self) -> bool {
        self.vectors == [0; 8]
            && self.level.is_none()
            && !self.nmi
            && !self.mc
            && !self.ipi_requested
    }

    fn insert(&mut self, vector: u8) {
        if let Some(word) = self.vectors.get_mut(usize::from(vector >> 5)) {
            *word |= 1 << (vector & 31);
        }
    }

    fn reject(&mut self) {
        self.rejected = self.rejected.saturating_add(1);
    }
}

impl Descriptor {
    /// Takes everything the host posted into this descriptor.
    ///
    /// Order (spec §3): the level-sensitive vector with one compare-exchange
    /// clearing vector and level bit together; then multiple-vectors (with
    /// vector 31, NMI, #MC and IPI requested) cleared by one `fetch_and`,
    /// and, if multiple-vectors was set, each `irr` word swapped to 0; then
    /// the single vector with a compare-exchange. The single vector is taken
    /// even when multiple-vectors was set, because the host posts its first
    /// vector into the byte and later ones into `irr`. Reserved status bits
    /// are ignored and left as they are.
    pub fn consume(&self) -> PendingInterrupts {
        let mut out = PendingInterrupts::default();
        let mut current = self.status.load(Ordering::Acquire);

        for _ in 0..MAX_ATTEMPTS {
            let status = DescriptorStatus::from_bits(current);
            if !status.level_sensitive() {
                break;
            }
            let new = status
                .with_pending_vector(0)
                .with_level_sensitive(false)
                .into_bits();
            match self
                .status
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let vector = status.pending_vector();
                    if is_legal_vector(vector) {
                        out.level = Some(vector);
                    } else {
                        out.reject();
                    }
                    current = new;
                    break;
                }
                Err(actual) => current = actual,
            }
        }

        if current & TAKE_FLAGS != 0 {
            let old = self.status.fetch_and(!TAKE_FLAGS, Ordering::AcqRel);
            current = old & !TAKE_FLAGS;
            let taken = DescriptorStatus::from_bits(old);
            out.nmi = taken.nmi_pending();
            out.mc = taken.mc_pending();
            out.ipi_requested = taken.ipi_requested();
            if taken.vector_31() {
                out.insert(31);
            }
            if taken.multiple_vectors() {
                // irr word i holds vectors 32 * (i + 1)..; APIC word 0 is
                // vectors 0-31, which the host can only give through bit 31.
                for (word, irr) in out.vectors.iter_mut().skip(1).zip(self.irr.iter()) {
                    *word |= irr.swap(0, Ordering::AcqRel);
                }
            }
        }

        for _ in 0..MAX_ATTEMPTS {
            let status = DescriptorStatus::from_bits(current);
            let vector = status.pending_vector();
            // A level bit here is a new level post: it is taken next pass.
            if vector == 0 || status.level_sensitive() {
                break;
            }
            let new = status.with_pending_vector(0).into_bits();
            match self
                .status
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if is_legal_vector(vector) {
                        out.insert(vector);
                    } else {
                        out.reject();
                    }
                    break;
                }
                Err(actual) => current = actual,
            }
        }

        out
    }
}

impl DoorbellPage {
    /// Takes everything posted for `vmpl` (1, 2 or 3); see [`Descriptor::consume`].
    pub fn consume(&self, vmpl: u8) -> Result<PendingInterrupts, BadVmpl> {
        self.descriptor(vmpl).map(Descriptor::consume)
    }
}
