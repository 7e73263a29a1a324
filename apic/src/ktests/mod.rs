//! Unit tests (one definition, host and in-kernel runner), one module per
//! concern; [`ALL`] lists them for the in-kernel runner.
//!
//! One behaviour per test, named after it. Bodies are `no_std`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use crate::*;

pub mod config;
pub mod delivery;
pub mod esr;
pub mod icr;
pub mod lvt;
pub mod registers;
pub mod state;
pub mod timer;

/// Every suite of the crate.
pub const ALL: &[&[altinj_ktest::Test]] = &[
    state::TESTS,
    registers::TESTS,
    delivery::TESTS,
    esr::TESTS,
    lvt::TESTS,
    config::TESTS,
    icr::TESTS,
    timer::TESTS,
];

const BASE: u64 = 0xFEE0_0000;
const XAPIC: u64 = BASE | APIC_BASE_EN;
const X2APIC: u64 = BASE | APIC_BASE_EN | APIC_BASE_EXTD;

fn config(id: u32) -> ApicConfig {
    ApicConfig {
        apic_id: id,
        ..ApicConfig::default()
    }
}

/// An APIC in x2APIC mode, software-enabled (spurious vector 0xFF).
fn x2(id: u32) -> LocalApic {
    let mut a = LocalApic::new(config(id));
    a.set_apic_base(X2APIC).unwrap();
    a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
    a
}

/// An APIC in xAPIC mode, software-enabled.
fn xa(id: u32) -> LocalApic {
    let mut a = LocalApic::new(config(id));
    a.write_mmio(XAPIC_SVR, 0x1FF, 0).unwrap();
    a
}

/// Reads at time 0 through a copy (a view; it settles nothing in `a`).
fn rd(a: &LocalApic, msr: u32) -> u64 {
    a.clone().read_msr(msr, 0).unwrap()
}

fn send(a: &mut LocalApic, icr: u64) -> Ipi {
    match a.write_msr(MSR_ICR, icr, 0).unwrap() {
        WriteEffect::SendIpi(ipi) => ipi,
        other => panic!("no IPI: {other:?}"),
    }
}

fn target(id: u32, mode: ApicMode) -> ApicAddress {
    let mut a = LocalApic::new(config(id));
    if mode == ApicMode::X2Apic {
        a.set_apic_base(X2APIC).unwrap();
    }
    a.address()
}

/// Sets the timer LVT (vector 0xEC, unmasked) with `mode`, in x2APIC mode.
fn timer(a: &mut LocalApic, mode: u32, now: u64) {
    a.write_msr(MSR_LVT_TIMER, u64::from(0xEC | (mode << 17)), now)
        .unwrap();
}

/// Reads at `now` through a copy (a view; it settles nothing in `a`).
fn rd_now(a: &LocalApic, msr: u32, now: u64) -> u64 {
    a.clone().read_msr(msr, now).unwrap()
}
