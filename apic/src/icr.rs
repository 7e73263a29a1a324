//! Interrupt command decoding and destination matching (Intel SDM vol. 3A
//! §11.6.1 ICR, §11.6.2 destinations, §11.12.9-10 x2APIC ICR and logical mode).

use crate::regs::IcrValue;
use crate::types::{ApicMode, Trigger};

/// ICR delivery mode (bits 10:8; Intel SDM vol. 3A §11.6.1, Figure 11-12).
///
/// A different type from the LVT's ([`crate::LvtDeliveryMode`]): 111
/// (ExtINT in an LVT or IOAPIC entry) is reserved in the ICR.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IcrDeliveryMode {
    /// 000: the vector, to every destination.
    Fixed,
    /// 001: the vector, to one destination (spec §6: the matching APIC with
    /// the lowest ID, [`Destination::lowest_id_target`]).
    LowestPriority,
    /// 010
    Smi,
    /// 100
    Nmi,
    /// 101
    Init,
    /// 110: start-up IPI with the vector as page number.
    StartUp,
    /// 011 or 111: reserved.
    Reserved,
}

/// The ICR delivery mode under its former name (it was the only
/// delivery-mode type); kept so callers move over at their pace.
pub type DeliveryMode = IcrDeliveryMode;

impl IcrDeliveryMode {
    /// Decodes bits 10:8 of the ICR.
    pub fn decode(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            _ => Self::Reserved,
        }
    }

    /// Fixed and lowest priority: the vector field is an interrupt vector
    /// (0-15 illegal); in the other modes it is ignored or a page number.
    pub fn carries_vector(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// How a guest IPI is routed under spec §6's choices.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Routing {
    /// Fixed: the vector to every matching APIC.
    EveryTarget,
    /// Lowest priority: the vector, as fixed, to exactly one matching APIC,
    /// the one with the lowest APIC ID ([`Destination::lowest_id_target`]).
    LowestIdTarget,
    /// NMI to every matching APIC.
    Nmi,
    /// INIT, SIPI, SMI, reserved: accepted (the ICR reads back), not
    /// delivered; the engine counts and logs the drop (TDX's rule).
    NotDelivered,
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
    pub mode: IcrDeliveryMode,
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
        let delivery = IcrDeliveryMode::decode(v.delivery_mode());
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
            IcrDeliveryMode::Fixed | IcrDeliveryMode::LowestPriority => Trigger::Edge,
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

    /// An INIT level de-assert (delivery mode INIT, level trigger, level
    /// 0): no effect on current processors (Intel SDM vol. 3A §11.6.1).
    pub fn is_init_deassert(&self) -> bool {
        self.mode == IcrDeliveryMode::Init && self.trigger == Trigger::Level && !self.assert
    }

    /// How the engine routes this IPI (spec §6 choices table).
    pub fn routing(&self) -> Routing {
        match self.mode {
            IcrDeliveryMode::Fixed => Routing::EveryTarget,
            IcrDeliveryMode::LowestPriority => Routing::LowestIdTarget,
            IcrDeliveryMode::Nmi => Routing::Nmi,
            IcrDeliveryMode::Init
            | IcrDeliveryMode::StartUp
            | IcrDeliveryMode::Smi
            | IcrDeliveryMode::Reserved => Routing::NotDelivered,
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

    /// The single target of a lowest-priority IPI (spec §6 choice: the
    /// matching APIC with the lowest APIC ID; KVM also picks one): the
    /// position in `targets` of that APIC, `None` when nothing matches. The
    /// first of equal IDs wins.
    pub fn lowest_id_target<I>(&self, source: u32, targets: I) -> Option<usize>
    where
        I: IntoIterator<Item = ApicAddress>,
    {
        let mut best: Option<(usize, u32)> = None;
        for (index, target) in targets.into_iter().enumerate() {
            if self.matches(source, &target) && best.is_none_or(|(_, id)| target.id < id) {
                best = Some((index, target.id));
            }
        }
        best.map(|(index, _)| index)
    }
}
