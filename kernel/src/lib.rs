//! The interrupt-injection engine an SVSM links (spec §1-§5).
//!
//! The SVSM (VMPL0, Restricted Injection) owns one [`VcpuEngine`] per guest
//! vCPU and a table of [`VcpuShared`] slots every vCPU can see; nothing here
//! is global. Per vCPU the SVSM calls:
//! - [`hv::handle_hv`] from its #HV handler (vector 28);
//! - [`VcpuEngine::before_run`] before each Run VMPL of the guest,
//!   [`VcpuEngine::after_exit`] after it returns;
//! - [`VcpuEngine::handle_apic_call`] for SVSM protocol 3 calls, on the
//!   guest's copied-out registers; the hand-back it may ask for is completed
//!   with the VMSA by [`VcpuEngine::complete_hand_back`];
//! - [`VcpuShared::announce`] on the CPU that creates an AP, before the
//!   AP's own engine exists.
//!
//! Everything the engine needs from the hypervisor goes through the
//! [`Platform`] trait (GHCB calls, time, a one-shot timer). Modules:
//! - [`platform`]: the trait and GHCB encodings (spec §4);
//! - [`mailbox`], [`fabric`]: lock-free cross-vCPU delivery;
//! - [`engine`]: the per-vCPU flow around a guest run (spec §2, §3), with
//!   the EXITINTINFO provenance rule in `exit_event`;
//! - [`hv`]: the #HV handler logic (spec §3);
//! - [`protocol`], [`registration`]: the APIC protocol (spec §5);
//! - [`nmi`], [`level`], [`counters`]: NMI rules, host level-EOI tracking,
//!   observability.
//!
//! See `docs/architecture.md` and `docs/integration.md`.
#![no_std]

mod sync;

pub mod mailbox;

#[cfg(not(feature = "loom"))]
pub mod caa;
#[cfg(not(feature = "loom"))]
pub mod counters;
#[cfg(not(feature = "loom"))]
pub mod engine;
#[cfg(not(feature = "loom"))]
mod exit_event;
#[cfg(not(feature = "loom"))]
pub mod fabric;
#[cfg(not(feature = "loom"))]
pub mod hv;
#[cfg(not(feature = "loom"))]
mod kick;
#[cfg(not(feature = "loom"))]
pub mod level;
#[cfg(not(feature = "loom"))]
pub mod nmi;
#[cfg(not(feature = "loom"))]
pub mod platform;
#[cfg(not(feature = "loom"))]
pub mod protocol;
#[cfg(not(feature = "loom"))]
pub mod registration;

#[cfg(all(not(feature = "loom"), any(test, feature = "ktests")))]
pub mod testing;

#[cfg(all(not(feature = "loom"), any(test, feature = "ktests")))]
pub mod busy_audit;

#[cfg(all(not(feature = "loom"), any(test, feature = "ktests")))]
pub mod ktests;

#[cfg(not(feature = "loom"))]
pub use counters::Counters;
#[cfg(not(feature = "loom"))]
pub use engine::{EngineConfig, Env, ExitInfo, Fatal, VcpuEngine};
#[cfg(not(feature = "loom"))]
pub use fabric::{Fabric, VcpuShared, VcpuSlots, VmShared};
#[cfg(not(feature = "loom"))]
pub use hv::{HvEvents, Vmpl0Tpr, handle_hv};
#[cfg(not(feature = "loom"))]
pub use platform::{NoTimer, Platform, PlatformError};
#[cfg(not(feature = "loom"))]
pub use protocol::{CallOutcome, HandBack};
