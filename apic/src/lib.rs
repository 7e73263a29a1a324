//! The local APIC emulator (Intel SDM vol. 3A ch. 11, AMD APM vol. 2 ch. 16).
//!
//! Pure logic: no unsafe, no alloc, no clock, no platform calls. Time comes in
//! as a `now` argument (the embedder's monotonic tick, normally the TSC) and
//! effects come out as values ([`WriteEffect`], [`EoiInfo`], [`Ipi`]) for the
//! injection engine to act on. One [`LocalApic`] is the whole per-vCPU state;
//! [`ApicConfig`] is the CPU model it emulates (x2APIC or not, MAXPHYADDR,
//! CMCI, directed EOI), as the guest's CPUID describes it.
//!
//! # Time
//! Time moves only through the `now` of a call. Every call that takes `now`
//! (register reads and writes, [`LocalApic::poll_timer`],
//! [`LocalApic::set_tsc_deadline`]) first delivers the timer expiries due at
//! `now`, so the current count, [`LocalApic::next_timer_deadline`] and IRR
//! always agree. The embedder arms a platform timer for the deadline and
//! calls `poll_timer` when it fires; nothing else.
//!
//! # Where interrupts come from
//! - [`LocalApic::request`]: sources the guest owns or trusts (IPIs routed
//!   by the engine, device models, an emulated IOAPIC, the guest's MSIs).
//! - [`LocalApic::request_from_host`]: what the host presents (doorbell),
//!   through the guest's allowed-vector filter, leaving no trace when refused.
//! - [`LocalApic::local_interrupt`]: the LVT sources (LINT0/1, thermal, PMC,
//!   CMCI); [`LocalApic::accept_ipi`]: an IPI routed to this APIC.
//!
//! # NMI
//! NMIs bypass IRR and ISR (§11.6.1, §11.5.1): the APIC only *reports* them
//! ([`Received::Nmi`], [`LocalEvent::Nmi`], [`Routing::Nmi`]) and holds no
//! NMI state. Whether an NMI is pending, in service or blocked is processor
//! state (NMIs are blocked from delivery until the next IRET, Intel SDM vol.
//! 3A §6.7.1), owned by the injection engine (`altinj_kernel::nmi`: one pending
//! while one is in service; more collapse into the pending one, spec §6).
#![no_std]
#![forbid(unsafe_code)]

mod access;
mod icr;
mod lapic;
mod local;
mod regs;
mod state;
mod timer;
mod types;
mod vectors;

pub use icr::{
    ApicAddress, DeliveryMode, Destination, DestinationFormat, IcrDeliveryMode, Ipi, Routing,
};
pub use lapic::{LocalApic, x2apic_ldr};
pub use local::FastIcr;
pub use regs::*;
pub use state::ApicState;
pub use types::{
    ApicConfig, ApicMode, EoiInfo, LocalEvent, LocalInterrupt, Received, RegisterError,
    RequestOutcome, Trigger, WriteEffect,
};
pub use vectors::VectorSet;

#[cfg(any(test, feature = "ktests"))]
pub mod ktests;
