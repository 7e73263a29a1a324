//! The fabric over a slot lookup (issue 11 item 8): per-CPU shared data in
//! separate allocations, reached through `VcpuSlots`, routes exactly as the
//! contiguous table does.

use altinj_vmsa::{RFLAGS_IF, VmsaAccess, VmsaPage};

use super::icr_fixed;
use crate::VmShared;
use crate::engine::{Env, VcpuEngine};
use crate::fabric::{Fabric, VcpuShared, VcpuSlots};
use crate::testing::{Fixture, MockPlatform};

const X2APIC_BASE: u64 = 0xFEE0_0000 | (3 << 10);

/// vCPU `i`'s engine over `fabric`, x2APIC and software-enabled.
fn engine(
    i: usize,
    platform: &MockPlatform,
    fabric: Fabric<'_>,
    doorbell: &altinj_doorbell::DoorbellPage,
) -> VcpuEngine {
    let env = Env::new(platform, fabric, doorbell);
    let mut e = VcpuEngine::new(Fixture::<4>::config(i), fabric).unwrap();
    let bsp = if i == 0 { 1 << 8 } else { 0 };
    e.write_register(&env, 0x1B, X2APIC_BASE | bsp).unwrap();
    e.write_register(&env, 0x80F, 0x1FF).unwrap();
    e
}

/// Runs `before_run` on `e` and returns the pending IRR vectors plus the one
/// presented in EVENTINJ.
fn delivered(e: &mut VcpuEngine, env: &Env<'_, MockPlatform>) -> u32 {
    let mut vmsa = VmsaPage::new();
    vmsa.set_rflags(RFLAGS_IF);
    e.before_run(env, &mut vmsa).unwrap();
    e.apic().irr().len() + u32::from(vmsa.event_inj().valid())
}

altinj_ktest::suite! {
    fn fabric_with_slots_over_a_table_uses_it_as_one() {
        let table = [const { VcpuShared::new() }; 3];
        let vm = VmShared::new();
        let fabric = Fabric::with_slots(&table, &vm);
        assert_eq!(fabric.len(), 3);
        assert!(core::ptr::eq(fabric.slot(2).unwrap(), &table[2]));
        assert!(fabric.is_contiguous());
    }

    fn fixed_ipi_reaches_a_vcpu_in_a_separate_allocation() {
        let (a, b, c) = (VcpuShared::new(), VcpuShared::new(), VcpuShared::new());
        let lookup: [&VcpuShared; 3] = [&a, &b, &c];
        let vm = VmShared::new();
        let fabric = Fabric::with_slots(&lookup, &vm);
        assert!(!fabric.is_contiguous());
        let platform = MockPlatform::new();
        let doorbells = [const { altinj_doorbell::DoorbellPage::new() }; 3];
        let mut e0 = engine(0, &platform, fabric, &doorbells[0]);
        let mut e2 = engine(2, &platform, fabric, &doorbells[2]);
        let env0 = Env::new(&platform, fabric, &doorbells[0]);
        e0.write_register(&env0, 0x830, icr_fixed(2, 0x61)).unwrap();
        assert!(c.mailbox().outstanding());
        assert_eq!(platform.hv_ipis.count(), 1);
        let env2 = Env::new(&platform, fabric, &doorbells[2]);
        assert_eq!(delivered(&mut e2, &env2), 1);
        assert!(!b.mailbox().outstanding());
    }

    fn broadcast_over_a_lookup_reaches_every_other_vcpu_once_and_skips_holes() {
        let (a, c, d) = (VcpuShared::new(), VcpuShared::new(), VcpuShared::new());
        // Index 1 has no vCPU.
        let lookup: [Option<&VcpuShared>; 4] = [Some(&a), None, Some(&c), Some(&d)];
        let vm = VmShared::new();
        let fabric = Fabric::with_slots(&lookup, &vm);
        let platform = MockPlatform::new();
        let doorbells = [const { altinj_doorbell::DoorbellPage::new() }; 4];
        let mut engines = [0, 2, 3].map(|i| (i, engine(i, &platform, fabric, &doorbells[i])));
        let env0 = Env::new(&platform, fabric, &doorbells[0]);
        // Fixed, all excluding self (shorthand 11), vector 0xFC.
        engines[0].1.write_register(&env0, 0x830, (0b11 << 18) | 0xFC).unwrap();
        assert_eq!(engines[0].1.counters().kicks_sent, 2);
        for (i, e) in engines.iter_mut().skip(1) {
            let env = Env::new(&platform, fabric, &doorbells[*i]);
            assert_eq!(delivered(e, &env), 1, "vCPU {i}");
        }
        let env0 = Env::new(&platform, fabric, &doorbells[0]);
        assert_eq!(delivered(&mut engines[0].1, &env0), 0);
    }

    fn logical_ipi_over_a_lookup_matches_like_the_table() {
        let slots = [const { VcpuShared::new() }; 4];
        let lookup: [&VcpuShared; 4] = [&slots[0], &slots[1], &slots[2], &slots[3]];
        let vm = VmShared::new();
        let fabric = Fabric::with_slots(&lookup, &vm);
        let platform = MockPlatform::new();
        let doorbells = [const { altinj_doorbell::DoorbellPage::new() }; 4];
        let mut engines: [VcpuEngine; 4] =
            core::array::from_fn(|i| engine(i, &platform, fabric, &doorbells[i]));
        let env0 = Env::new(&platform, fabric, &doorbells[0]);
        // x2APIC logical, cluster 0, IDs 2 and 3 (LDR bits 2 and 3).
        engines[0].write_register(&env0, 0x830, (0b1100u64 << 32) | (1 << 11) | 0x71).unwrap();
        for (i, e) in engines.iter_mut().enumerate() {
            let env = Env::new(&platform, fabric, &doorbells[i]);
            assert_eq!(delivered(e, &env), u32::from(i >= 2), "vCPU {i}");
        }
    }

    fn slot_lookups_report_holes_and_length() {
        let a = VcpuShared::new();
        let lookup: [Option<&VcpuShared>; 2] = [None, Some(&a)];
        assert!(lookup.slot(0).is_none());
        assert!(VcpuSlots::slot(&lookup, 1).is_some());
        assert_eq!(VcpuSlots::len(&lookup), 2);
        assert!(!VcpuSlots::is_empty(&lookup));
        let table: &[VcpuShared] = &[];
        assert!(VcpuSlots::is_empty(table));
    }
}
