//! The BUSY audit of the kernel fixture (`altinj_kernel::testing::Fixture` routes
//! every engine call through `altinj_kernel::busy_audit::BusyAudit`): the engine
//! writes a guest VMSA only while BUSY is set (spec §2).
//!
//! The tests below fail on an engine whose first `before_run` edits the
//! VMSA before it sets BUSY (issue 9 path 6, shown on the unfixed engine).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use altinj_kernel::testing::{Fixture, GuestRun};

const VMPL: u8 = altinj_kernel::testing::GUEST_VMPL;

fn one_vcpu() -> Fixture<2> {
    let mut f = Fixture::new();
    f.create(0).unwrap();
    f
}

#[test]
fn first_before_run_writes_the_vmsa_only_while_busy_is_set() {
    let mut f = one_vcpu();
    f.doorbell(0)
        .unwrap()
        .host()
        .post_vector(VMPL, 0x41)
        .unwrap();
    f.before_run(0).unwrap();
    assert_eq!(
        f.busy_writes[0], 0,
        "first write while BUSY clear: {:?}",
        f.busy_first
    );
}

#[test]
fn first_before_run_with_nothing_pending_writes_only_while_busy_is_set() {
    let mut f = one_vcpu();
    f.before_run(0).unwrap();
    assert_eq!(
        f.busy_writes[0], 0,
        "first write while BUSY clear: {:?}",
        f.busy_first
    );
}

#[test]
fn later_runs_write_the_vmsa_only_while_busy_is_set() {
    let mut f = one_vcpu();
    f.before_run(0).unwrap();
    let first_run = f.busy_writes[0];
    for k in 0..20u8 {
        f.doorbell(0)
            .unwrap()
            .host()
            .post_vector(VMPL, 0x40 + k)
            .unwrap();
        let vmsa = f.vmsa(0).unwrap();
        let _ = altinj_kernel::testing::hw_run(vmsa, GuestRun::NORMAL);
        f.after_exit(0).unwrap();
        let _ = f.write_msr(0, 0x80B, 0);
        f.before_run(0).unwrap();
    }
    assert_eq!(f.busy_writes[0], first_run, "{:?}", f.busy_first);
}
