//! A skeleton SVSM (VMPL0, COCONUT-SVSM style) that links the injection
//! engine exactly as `docs/integration.md` describes, with stub GHCB calls:
//!
//! - [`ghcb`]: `Platform` over a (stub) GHCB;
//! - [`percpu`]: per-CPU data with the engine, per-CPU `VcpuShared` in
//!   separate allocations found through a `VcpuSlots` table, the calling
//!   area's byte 2 through fallible guest-memory access (`NoEoiByte`);
//! - [`hv`]: the #HV handler logic;
//! - [`run`]: the run loop (`before_run` / `work_pending` / `cancel_run` /
//!   Run VMPL / `after_exit`) with the VMSA viewed through
//!   `VmsaPage::view_mut`;
//! - [`protocol`]: protocol 3 dispatched on copied-out registers, the
//!   hand-back completed by the run loop, result codes as request errors;
//! - [`ap`]: AP creation requested on another CPU.
//!
//! Nothing here runs: it is compiled in CI (`make example`) so that the
//! guide's code and the crates' API cannot drift apart.
#![no_std]

pub mod ap;
pub mod ghcb;
pub mod hv;
pub mod percpu;
pub mod protocol;
pub mod run;

/// The guest's VMPL (the OS runs at VMPL2 under COCONUT-SVSM).
pub const GUEST_VMPL: u8 = 2;

/// The most vCPUs this skeleton supports.
pub const MAX_CPUS: usize = 64;
