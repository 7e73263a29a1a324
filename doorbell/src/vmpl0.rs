//! VMPL0's own events: bytes 0x00-0x03 of the doorbell page (GHCB spec 56421
//! #HV doorbell page; spec §3).

use crate::descriptor::is_legal_vector;
use crate::page::{DoorbellFlags, DoorbellPage};
use crate::sync::Ordering;

/// Bits of byte 0x03 that name a VMPL with a descriptor (VMPL1-3).
const KNOWN_VMPL_EVENTS: u8 = 0b111;

/// What [`DoorbellPage::take_events`] found for VMPL0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vmpl0Events {
    /// A vector VMPL0 must handle now: legal, above the caller's priority
    /// class, and acknowledged (byte 0x00 exchanged back to 0).
    pub vector: Option<u8>,
    /// A legal vector left in byte 0x00 because its class is not above the
    /// caller's priority class: the host sees it is still pending.
    pub deferred_vector: Option<u8>,
    /// An NMI was pending (the flag is now clear).
    pub nmi: bool,
    /// A machine check was pending (the flag is now clear). Reported, never a panic.
    pub mc: bool,
    /// Byte 0x03 as taken: bit `VMPL - 1` set when the host posted into that
    /// VMPL's descriptor. Only bits 0-2 (VMPL1-3) are kept.
    pub vmpl_events: u8,
    /// Items rejected and dropped: an illegal vector (1-30) in byte 0x00, and
    /// each byte-0x03 bit naming a VMPL above 3.
    pub rejected: u32,
}

impl Vmpl0Events {
    /// Whether the host flagged a post into `vmpl`'s descriptor.
    pub fn vmpl_posted(&self, vmpl: u8) -> bool {
        match vmpl.checked_sub(1) {
            Some(bit @ 0..=2) => self.vmpl_events & (1 << bit) != 0,
            _ => false,
        }
    }
}

impl DoorbellPage {
    /// Takes VMPL0's own events, as the #HV handler does first.
    ///
    /// `tpr` is VMPL0's current task priority; a vector is taken only when its
    /// class is above `tpr`'s class (Intel SDM vol. 3A §11.8.3.1), otherwise it
    /// is left in byte 0x00 so the host knows it is still pending (GHCB spec
    /// 56421). NoFurtherSignal, NMI and #MC are cleared in one atomic step
    /// *before* anything else is read, so a post that lands after it is
    /// signalled again. An illegal vector (1-30) is acknowledged and counted,
    /// so a host cannot wedge VMPL0 with it.
    pub fn take_events(&self, tpr: u8) -> Vmpl0Events {
        let mut events = Vmpl0Events::default();

        // Project choice: #MC is taken with NMI (reported once, never twice).
        let clear = DoorbellFlags::NO_FURTHER_SIGNAL
            | DoorbellFlags::NMI_PENDING
            | DoorbellFlags::MC_PENDING;
        let old =
            DoorbellFlags::from_bits_retain(self.flags.fetch_and(!clear.bits(), Ordering::AcqRel));
        events.nmi = old.contains(DoorbellFlags::NMI_PENDING);
        events.mc = old.contains(DoorbellFlags::MC_PENDING);

        let vector = self.vector.load(Ordering::Acquire);
        if vector != 0 {
            if !is_legal_vector(vector) {
                if self.acknowledge(vector) {
                    events.rejected = events.rejected.saturating_add(1);
                }
            } else if vector & 0xF0 > tpr & 0xF0 {
                // A failed exchange means the host changed the byte after the
                // flags were cleared: that post is signalled again.
                if self.acknowledge(vector) {
                    events.vector = Some(vector);
                }
            } else {
                events.deferred_vector = Some(vector);
            }
        }

        let vmpls = self.per_vmpl_events.swap(0, Ordering::AcqRel);
        events.vmpl_events = vmpls & KNOWN_VMPL_EVENTS;
        events.rejected = events
            .rejected
            .saturating_add((vmpls & !KNOWN_VMPL_EVENTS).count_ones());
        events
    }

    /// Takes the No EOI Required byte (0x02): `true` when bit 0 was set, i.e.
    /// the EOI write to the host may be skipped (GHCB spec 56421). The byte
    /// is swapped to 0 atomically; reserved bits are ignored.
    pub fn take_no_eoi_required(&self) -> bool {
        self.no_eoi_required.swap(0, Ordering::AcqRel) & 1 != 0
    }

    /// Exchanges byte 0x00 from `vector` to 0; `true` if this call took it.
    fn acknowledge(&self, vector: u8) -> bool {
        self.vector
            .compare_exchange(vector, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}
