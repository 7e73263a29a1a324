//! The local APIC emulator (Intel SDM vol. 3A ch. 11, AMD APM vol. 2 ch. 16).
//!
//! Pure logic: no unsafe, no alloc, no clock, no platform calls. Time comes in
//! as a `now` argument (the embedder's monotonic tick, normally the TSC) and
//! effects come out as values ([`WriteEffect`], [`EoiInfo`], [`Ipi`]) for the
//! injection engine to act on. One [`LocalApic`] is the whole per-vCPU state.
#![no_std]
#![forbid(unsafe_code)]

mod access;
mod icr;
mod lapic;
mod regs;
mod state;
mod timer;
mod types;
mod vectors;

pub use icr::{ApicAddress, DeliveryMode, Destination, DestinationFormat, Ipi};
pub use lapic::{LocalApic, x2apic_ldr};
pub use regs::*;
pub use state::ApicState;
pub use types::{
    ApicConfig, ApicMode, EoiInfo, Lint, LocalEvent, Received, RegisterError, RequestOutcome,
    Trigger, WriteEffect,
};
pub use vectors::VectorSet;

#[cfg(any(test, feature = "ktests"))]
pub mod ktests;
