//! Unit tests of the engine, one behaviour each (run by `cargo test` and by
//! the in-kernel runner through [`ALL`]).
//!
//! They use [`crate::testing`]: a mock platform, the hardware model
//! [`crate::testing::hw_run`] and a fixture of N vCPUs with in-memory VMSA
//! and doorbell pages.
// Test code: a failing unwrap or index is a failing test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod ap;
pub mod busy;
pub mod caa;
pub mod cancel;
pub mod deferred;
pub mod flow;
pub mod handback;
pub mod host_level;
pub mod ipi;
pub mod nmi;
pub mod parts;
// The BUSY auditor itself (crate::busy_audit).
pub mod busy_audit;
pub mod protocol;
pub mod registration;
pub mod reinject;
pub mod slots;
pub mod timer;

/// Every test of the crate.
pub const ALL: &[&[altinj_ktest::Test]] = &[
    parts::TESTS,
    busy_audit::TESTS,
    flow::TESTS,
    nmi::TESTS,
    ipi::TESTS,
    protocol::TESTS,
    reinject::TESTS,
    busy::TESTS,
    timer::TESTS,
    host_level::TESTS,
    handback::TESTS,
    registration::TESTS,
    caa::TESTS,
    cancel::TESTS,
    deferred::TESTS,
    slots::TESTS,
    ap::TESTS,
];

use crate::testing::Fixture;

/// The guest VMPL of the fixture.
pub(crate) const VMPL: u8 = crate::testing::GUEST_VMPL;

/// A fixture of four vCPU slots with vCPU 0 created (x2APIC, enabled,
/// every host vector allowed).
pub(crate) fn one_vcpu() -> Fixture<4> {
    let mut f = Fixture::new();
    f.create(0).unwrap();
    f
}

/// A fixture with all four vCPUs created.
pub(crate) fn four_vcpus() -> Fixture<4> {
    let mut f = Fixture::new();
    for i in 0..4 {
        f.create(i).unwrap();
    }
    f
}

/// x2APIC ICR: fixed, physical, edge, `vector` to `dest`.
pub(crate) fn icr_fixed(dest: u32, vector: u8) -> u64 {
    (u64::from(dest) << 32) | u64::from(vector)
}
