//! EVENTINJ and EXITINTINFO (spec §2, AMD APM vol. 2 §15.20 and §15.7.2).

use bitfield_struct::bitfield;

/// The TYPE field (bits 10:8) of [`EventInj`].
///
/// All eight values decode, so a hostile or corrupt word never panics; the
/// reserved values are kept as distinct variants so they can be rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// 0: external or virtual interrupt (INTR).
    Intr = 0,
    /// 1: reserved.
    Reserved1 = 1,
    /// 2: NMI.
    Nmi = 2,
    /// 3: exception (fault or trap).
    Exception = 3,
    /// 4: software interrupt (INTn).
    SoftwareInt = 4,
    /// 5: reserved.
    Reserved5 = 5,
    /// 6: reserved.
    Reserved6 = 6,
    /// 7: reserved.
    Reserved7 = 7,
}

impl EventType {
    /// Decodes bits 10:8; only the low three bits of `bits` are looked at.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0x7 {
            0 => Self::Intr,
            1 => Self::Reserved1,
            2 => Self::Nmi,
            3 => Self::Exception,
            4 => Self::SoftwareInt,
            5 => Self::Reserved5,
            6 => Self::Reserved6,
            _ => Self::Reserved7,
        }
    }

    /// Encodes the type as its 3-bit value.
    pub const fn into_bits(self) -> u8 {
        self as u8
    }

    /// Whether the value is one of the reserved types 1, 5, 6 or 7.
    pub const fn is_reserved(self) -> bool {
        matches!(
            self,
            Self::Reserved1 | Self::Reserved5 | Self::Reserved6 | Self::Reserved7
        )
    }
}

/// An event to inject (EVENTINJ, VMSA 0x3E0) or the event that was being
/// delivered when the guest exited (EXITINTINFO, VMSA 0x3A0); both have this
/// format (APM vol. 2 §15.20).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct EventInj {
    /// Bits 7:0: vector (ignored by hardware for NMI).
    pub vector: u8,
    /// Bits 10:8: event type.
    #[bits(3)]
    pub event_type: EventType,
    /// Bit 11: EV, the error code in bits 63:32 is pushed (exceptions only).
    pub error_code_valid: bool,
    #[bits(19)]
    __rsvd_30_12: u32,
    /// Bit 31: V, the event is valid.
    pub valid: bool,
    /// Bits 63:32: error code, pushed when `error_code_valid`.
    pub error_code: u32,
}

/// Vector of #BP (INT3), re-executed by the guest rather than reinjected.
pub(crate) const BP_VECTOR: u8 = 3;
/// Vector of #OF (INTO), re-executed by the guest rather than reinjected.
pub(crate) const OF_VECTOR: u8 = 4;
/// Architectural NMI vector.
pub(crate) const NMI_VECTOR: u8 = 2;

impl EventInj {
    /// Mask of the reserved bits 30:12.
    pub const RESERVED_MASK: u64 = 0x7FFF_F000;

    /// A valid external interrupt (type 0) with `vector`.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self::new()
            .with_vector(vector)
            .with_event_type(EventType::Intr)
            .with_valid(true)
    }

    /// A valid NMI (type 2, vector 2).
    pub const fn nmi() -> Self {
        Self::new()
            .with_vector(NMI_VECTOR)
            .with_event_type(EventType::Nmi)
            .with_valid(true)
    }

    /// A valid exception (type 3) with `vector`, pushing `error_code` if given.
    ///
    /// The caller picks an exception vector (0-31 but not 2); VMRUN fails
    /// with VMEXIT_INVALID for other vectors (APM vol. 2 §15.20).
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        let ev = Self::new()
            .with_vector(vector)
            .with_event_type(EventType::Exception)
            .with_valid(true);
        match error_code {
            Some(code) => ev.with_error_code_valid(true).with_error_code(code),
            None => ev,
        }
    }

    /// A valid software interrupt (type 4, as by INTn) with `vector`.
    pub const fn software_interrupt(vector: u8) -> Self {
        Self::new()
            .with_vector(vector)
            .with_event_type(EventType::SoftwareInt)
            .with_valid(true)
    }

    /// Whether any reserved bit (30:12) is set.
    pub const fn has_reserved_bits(self) -> bool {
        self.into_bits() & Self::RESERVED_MASK != 0
    }
}
