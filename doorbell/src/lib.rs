//! The #HV doorbell page and per-VMPL interrupt descriptors (spec §3).
//!
//! With Restricted Injection the hypervisor can only raise `#HV` in VMPL0; it
//! tells VMPL0 what to deliver through a 4 KiB page shared with it (GHCB spec
//! 56421, "#HV doorbell page"). The page carries VMPL0's own events (bytes
//! 0x00-0x03) and, as COCONUT-SVSM lays it out, one 64-byte descriptor per
//! lower VMPL holding the interrupts posted for that VMPL's guest.
//!
//! Every byte of the page is hostile input that the host may change at any
//! time, so it is only touched through atomics, each field is loaded once per
//! decision, and nothing the host writes can panic the SVSM.
//!
//! - [`DoorbellPage`]: the layout; [`DoorbellPage::take_events`] for VMPL0's own
//!   events, [`DoorbellPage::consume`] for a lower VMPL's descriptor.
//! - [`Descriptor::hand_off`]: give the emulated APIC state back to the host.
//! - `host` (feature `host`): the hypervisor's posting side, for simulators and tests.
#![cfg_attr(not(feature = "loom"), no_std)]

mod descriptor;
mod handoff;
mod page;
mod sync;
mod vmpl0;

#[cfg(any(test, feature = "loom", feature = "host"))]
pub mod host;

#[cfg(any(test, feature = "ktests"))]
pub mod ktests;

pub use descriptor::{PendingInterrupts, is_legal_vector};
pub use handoff::HandoffState;
pub use page::{BadVmpl, Descriptor, DescriptorStatus, DoorbellFlags, DoorbellPage, PAGE_SIZE};
pub use vmpl0::Vmpl0Events;
