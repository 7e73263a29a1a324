//! Interrupt command decoding and destination matching (Intel SDM vol. 3A
//! §11.6.1 ICR, §11.6.2 destinations, §11.12.9-10 x2APIC ICR and logical mode).

use crate::regs::IcrValue;
use crate::types::{ApicMode, Trigger};

/// ICR delivery mode (bits 10:8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeliveryMode {
    /// 000: the vector, to every destination.
    Fixed,
    /// 001: the vector, to the lowest-priority destination.
    LowestPriority,
    /// 010
    Smi,
    /// 100
    Nmi,
    /// 101
    Init,
    /// 110: start-up IPI with the vector as page number.
    StartUp,
    /// 111
    ExtInt,
    /// 011: reserved.
    Reserved,
}

/// xAPIC logical destination model (DFR bits 31:28).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DestinationFormat {
    /// DFR = 0xF: 8-bit logical ID bitmap.
    Flat,
    /// DFR = 0x0: cluster in bits 7:4, member bitmap in bits 3:0.
    Cluster,
}

/// Where an IPI goes, as decoded from the sender's ICR in the sender's mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Destination {
    /// Shorthand 01: the sender only.
    ToSelf,
    /// Shorthand 10: every APIC including the sender.
    AllIncludingSelf,
    /// Shorthand 11: every APIC but the sender.
    AllExcludingSelf,
    /// Physical destination ID (broadcast 0xFF in xAPIC, 0xFFFF_FFFF in x2APIC).
    Physical {
        /// Destination APIC ID.
        id: u32,
        /// Whether the sender was in x2APIC mode (32-bit IDs).
        x2apic: bool,
    },
    /// Logical destination (message destination address).
    Logical {
        /// MDA: 8 bits in xAPIC, 32 bits (cluster 31:16, bitmap 15:0) in x2APIC.
        mda: u32,
        /// Whether the sender was in x2APIC mode.
        x2apic: bool,
    },
}

/// What the matcher needs to know about one possible target APIC; the engine
/// keeps one per vCPU (from [`crate::LocalApic::address`]) and runs
/// [`Destination::matches`] over them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ApicAddress {
    /// APIC ID (x2APIC: 32 bits; xAPIC: bits 31:24 of the ID register).
    pub id: u32,
    /// Logical destination register value (x2APIC derived LDR, or xAPIC LDR bits 31:24).
    pub ldr: u32,
    /// xAPIC DFR model.
    pub format: DestinationFormat,
    /// Current mode of the target.
    pub mode: ApicMode,
}

/// A decoded interrupt command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ipi {
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Vector (fixed), or page (start-up).
    pub vector: u8,
    /// Trigger mode bit; project choice (spec §6): fixed IPIs are recorded as edge.
    pub trigger: Trigger,
    /// Level bit (assert = true); INIT de-assert has it false.
    pub assert: bool,
    /// The destination.
    pub destination: Destination,
    /// APIC ID of the sender (for the self and all-but-self shorthands).
    pub source: u32,
}

impl Ipi {
    /// Decodes a 64-bit x2APIC-format ICR value written by an APIC in `mode`
    /// whose ID is `source` (xAPIC: ICR high's bits 31:24 already in 63:56).
    ///
    /// Pure decoding: every delivery mode comes back as written; the engine
    /// refuses the ones it does not deliver (spec §6). Fixed and
    /// lowest-priority IPIs are recorded as edge (spec §6 choice, SDM).
    pub fn decode(icr: u64, mode: ApicMode, source: u32) -> Self {
        let v = IcrValue::from_bits(icr);
        let delivery = match v.delivery_mode() {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        };
        let x2apic = mode == ApicMode::X2Apic;
        let dest = if x2apic {
            v.destination()
        } else {
            v.destination() >> 24
        };
        let destination = match v.shorthand() {
            1 => Destination::ToSelf,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            _ if v.logical() => Destination::Logical { mda: dest, x2apic },
            _ => Destination::Physical { id: dest, x2apic },
        };
        let trigger = match delivery {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => Trigger::Edge,
            _ if v.level() => Trigger::Level,
            _ => Trigger::Edge,
        };
        Self {
            mode: delivery,
            vector: v.vector(),
            trigger,
            assert: v.assert(),
            destination,
            source,
        }
    }
}

impl Destination {
    /// Whether `target` is a destination of an IPI from `source`.
    ///
    /// Intel SDM vol. 3A §11.6.2: 0xFF (xAPIC) and 0xFFFF_FFFF (x2APIC) are
    /// broadcast in physical and logical mode; x2APIC logical matches the
    /// cluster (31:16) and a common bit of 15:0 (§11.12.10.2); xAPIC logical
    /// uses the target's DFR model, flat (a common bit) or cluster (cluster
    /// 7:4 equal, or 0xF for all clusters, and a common bit of 3:0). Logical
    /// addressing only reaches targets in the sender's mode; disabled
    /// targets match nothing. `source` and `target.id` are in the same width
    /// ([`crate::LocalApic::address`]).
    #[inline]
    pub fn matches(&self, source: u32, target: &ApicAddress) -> bool {
        if target.mode == ApicMode::Disabled {
            return false;
        }
        match *self {
            Destination::ToSelf => target.id == source,
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => target.id != source,
            Destination::Physical { id, x2apic } => {
                let broadcast = if x2apic { u32::MAX } else { 0xFF };
                id == broadcast || id == target.id
            }
            Destination::Logical { mda, x2apic: true } => {
                mda == u32::MAX
                    || (target.mode == ApicMode::X2Apic
                        && target.ldr >> 16 == mda >> 16
                        && target.ldr & mda & 0xFFFF != 0)
            }
            Destination::Logical { mda, x2apic: false } => {
                if mda == 0xFF {
                    return true;
                }
                if target.mode != ApicMode::XApic {
                    return false;
                }
                match target.format {
                    DestinationFormat::Flat => mda & target.ldr & 0xFF != 0,
                    DestinationFormat::Cluster => {
                        let cluster = (mda >> 4) & 0xF;
                        (cluster == 0xF || cluster == (target.ldr >> 4) & 0xF)
                            && mda & target.ldr & 0xF != 0
                    }
                }
            }
        }
    }
}
