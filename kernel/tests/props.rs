//! Property tests of the engine against the hardware model in
//! `altinj_kernel::testing` (small case counts: they run in `cargo test`).
//!
//! Random host posts, cross-vCPU posts, guest behaviour (IF, interrupted
//! deliveries, EOIs) and VMEXIT_BUSY never panic, keep BUSY right, and
//! every vector made pending is delivered at least once and no more often
//! than it was made pending; once the guest stops being difficult,
//! everything drains.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use altinj_kernel::testing::{Fixture, GuestRun, hw_run};
use altinj_vmsa::{EventType, RFLAGS_IF, VmsaAccess};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Step {
    HostVector(u8),
    Posted(u8),
    Run {
        if_set: bool,
        interrupt: bool,
        busy: bool,
    },
    Eoi,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (31u8..=255).prop_map(Step::HostVector),
        (32u8..=255).prop_map(Step::Posted),
        (any::<bool>(), any::<bool>(), prop::bool::weighted(0.1)).prop_map(
            |(if_set, interrupt, busy)| Step::Run {
                if_set,
                interrupt,
                busy
            }
        ),
        Just(Step::Eoi),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_pending_vector_is_delivered_at_least_once_and_at_most_as_often_as_posted(
        steps in prop::collection::vec(step(), 1..60)
    ) {
        let mut f: Box<Fixture<2>> = Box::new(Fixture::new());
        f.create(0).unwrap();
        let mut made_pending = [0u32; 256];
        let mut delivered = [0u32; 256];
        let mut busy_streak = 0;
        for s in steps {
            match s {
                Step::HostVector(v) => {
                    f.doorbell(0).unwrap().host().post_vector(2, v).unwrap();
                    made_pending[v as usize] += 1;
                }
                Step::Posted(v) => {
                    f.shared[0].mailbox().post(v);
                    made_pending[v as usize] += 1;
                }
                Step::Run { if_set, interrupt, busy } => {
                    // Never more repairs in a row than the engine tolerates.
                    let busy = busy && busy_streak < altinj_kernel::engine::MAX_BUSY_REPAIRS;
                    busy_streak = if busy { busy_streak + 1 } else { 0 };
                    f.vmsa(0).unwrap().set_rflags(if if_set { RFLAGS_IF } else { 2 });
                    f.before_run(0).unwrap();
                    let vmsa = f.vmsa(0).unwrap();
                    prop_assert!(!vmsa.vintr_ctrl().busy());
                    if busy {
                        vmsa.test_and_set_busy();
                    }
                    let d = hw_run(vmsa, GuestRun { interrupt_delivery: interrupt, ..GuestRun::NORMAL });
                    if let Some(ev) = d.event && ev.event_type() == EventType::Intr {
                        delivered[ev.vector() as usize] += 1;
                    }
                    if let Some(v) = d.virq {
                        delivered[v as usize] += 1;
                    }
                    f.after_exit(0).unwrap();
                    prop_assert!(f.vmsa(0).unwrap().vintr_ctrl().busy());
                }
                Step::Eoi => {
                    f.write_msr(0, 0x80B, 0).unwrap();
                }
            }
        }
        // The guest becomes cooperative: IF set, EOI after each delivery.
        for _ in 0..600 {
            f.vmsa(0).unwrap().set_rflags(RFLAGS_IF);
            f.before_run(0).unwrap();
            let vmsa = f.vmsa(0).unwrap();
            let d = hw_run(vmsa, GuestRun::NORMAL);
            if let Some(ev) = d.event && ev.event_type() == EventType::Intr {
                delivered[ev.vector() as usize] += 1;
            }
            if let Some(v) = d.virq {
                delivered[v as usize] += 1;
            }
            f.after_exit(0).unwrap();
            f.write_msr(0, 0x80B, 0).unwrap();
            let e = f.engine(0).unwrap();
            if e.apic().irr().is_empty() && e.apic().isr().is_empty() && !f.vmsa(0).unwrap().event_inj().valid() {
                break;
            }
        }
        let e = f.engine(0).unwrap();
        prop_assert!(e.apic().irr().is_empty(), "IRR left {:?}", e.apic().irr());
        prop_assert!(e.apic().isr().is_empty(), "ISR left {:?}", e.apic().isr());
        for v in 0..256 {
            prop_assert!(delivered[v] <= made_pending[v], "vector {v} delivered {} made pending {}", delivered[v], made_pending[v]);
            if made_pending[v] > 0 {
                prop_assert!(delivered[v] >= 1, "vector {v} never delivered");
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum NmiStep {
    Host,
    Posted,
    Run {
        interrupt: bool,
        shadow: bool,
        iret: bool,
    },
}

fn nmi_step() -> impl Strategy<Value = NmiStep> {
    prop_oneof![
        Just(NmiStep::Host),
        Just(NmiStep::Posted),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(interrupt, shadow, iret)| {
            NmiStep::Run {
                interrupt,
                shadow,
                iret,
            }
        }),
    ]
}

fn nmi_delivered(d: &altinj_kernel::testing::HwDelivery) -> u32 {
    u32::from(d.v_nmi) + u32::from(d.event.is_some_and(|e| e.event_type() == EventType::Nmi))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn nmis_are_delivered_one_per_run_collapsed_and_never_lost(
        v_nmi in any::<bool>(),
        steps in prop::collection::vec(nmi_step(), 1..40)
    ) {
        let mut f: Box<Fixture<2>> = Box::new(Fixture::new());
        f.create(0).unwrap();
        {
            let vmsa = f.vmsa(0).unwrap();
            let ctrl = vmsa.vintr_ctrl();
            vmsa.set_vintr_ctrl(ctrl.with_v_nmi_enable(v_nmi));
        }
        let mut requested = 0u32;
        let mut delivered = 0u32;
        let mut requested_since_delivery = false;
        for s in steps {
            match s {
                NmiStep::Host => {
                    f.doorbell(0).unwrap().host().post_nmi(2).unwrap();
                    requested += 1;
                    requested_since_delivery = true;
                }
                NmiStep::Posted => {
                    f.shared[0].mailbox().post_nmi();
                    requested += 1;
                    requested_since_delivery = true;
                }
                NmiStep::Run { interrupt, shadow, iret } => {
                    {
                        let vmsa = f.vmsa(0).unwrap();
                        let ctrl = vmsa.vintr_ctrl();
                        vmsa.set_vintr_ctrl(ctrl.with_int_shadow(shadow));
                    }
                    f.before_run(0).unwrap();
                    let d = hw_run(f.vmsa(0).unwrap(), GuestRun { interrupt_delivery: interrupt, nmi_iret: iret, ..GuestRun::NORMAL });
                    let n = nmi_delivered(&d);
                    prop_assert!(n <= 1);
                    if n == 1 {
                        requested_since_delivery = false;
                    }
                    delivered += n;
                    f.after_exit(0).unwrap();
                }
            }
        }
        // Cooperative guest: no shadow, IRET every run.
        for _ in 0..8 {
            let vmsa = f.vmsa(0).unwrap();
            let ctrl = vmsa.vintr_ctrl();
            vmsa.set_vintr_ctrl(ctrl.with_int_shadow(false));
            f.before_run(0).unwrap();
            let d = hw_run(f.vmsa(0).unwrap(), GuestRun::NORMAL);
            if nmi_delivered(&d) == 1 {
                requested_since_delivery = false;
            }
            delivered += nmi_delivered(&d);
            f.after_exit(0).unwrap();
        }
        prop_assert!(delivered <= requested);
        // The last request is always followed by a delivery (collapse, not loss).
        prop_assert!(!requested_since_delivery, "an NMI was lost");
        let e = f.engine(0).unwrap();
        prop_assert!(!e.nmi().pending());
        prop_assert_eq!(e.counters().nmis_injected, u64::from(delivered));
    }
}

#[derive(Clone, Copy, Debug)]
enum IpiStep {
    /// vCPU `from` sends `vector` to the physical ID `to` (or, with `all`,
    /// to all others).
    Send {
        from: usize,
        to: u32,
        vector: u8,
        all: bool,
    },
    /// vCPU `cpu` runs once; the guest EOIs what it took.
    Run { cpu: usize, if_set: bool },
}

fn ipi_step() -> impl Strategy<Value = IpiStep> {
    prop_oneof![
        (0usize..3, 0u32..3, 32u8..=255, prop::bool::weighted(0.2)).prop_map(
            |(from, to, vector, all)| IpiStep::Send {
                from,
                to,
                vector,
                all
            }
        ),
        (0usize..3, any::<bool>()).prop_map(|(cpu, if_set)| IpiStep::Run { cpu, if_set }),
    ]
}

fn run_once(f: &mut Fixture<3>, cpu: usize, if_set: bool, delivered: &mut [[u32; 256]; 3]) {
    f.vmsa(cpu)
        .unwrap()
        .set_rflags(if if_set { RFLAGS_IF } else { 2 });
    f.before_run(cpu).unwrap();
    let d = hw_run(f.vmsa(cpu).unwrap(), GuestRun::NORMAL);
    let mut took = false;
    if let Some(ev) = d.event
        && ev.event_type() == EventType::Intr
    {
        delivered[cpu][ev.vector() as usize] += 1;
        took = true;
    }
    if let Some(v) = d.virq {
        delivered[cpu][v as usize] += 1;
        took = true;
    }
    f.after_exit(cpu).unwrap();
    if took {
        f.write_msr(cpu, 0x80B, 0).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ipis_between_vcpus_are_never_lost_nor_duplicated(
        steps in prop::collection::vec(ipi_step(), 1..50)
    ) {
        let mut f: Box<Fixture<3>> = Box::new(Fixture::new());
        for i in 0..3 {
            f.create(i).unwrap();
        }
        let mut sent = [[0u32; 256]; 3];
        let mut delivered = [[0u32; 256]; 3];
        for s in steps {
            match s {
                IpiStep::Send { from, to, vector, all } => {
                    let icr = if all { (3u64 << 18) | u64::from(vector) } else { (u64::from(to) << 32) | u64::from(vector) };
                    let r = f.write_msr(from, 0x830, icr).unwrap();
                    prop_assert_eq!(r.code, altinj_kernel::protocol::ResultCode::Success);
                    for (t, row) in sent.iter_mut().enumerate() {
                        if (all && t != from) || (!all && t as u32 == to) {
                            row[vector as usize] += 1;
                        }
                    }
                }
                IpiStep::Run { cpu, if_set } => run_once(&mut f, cpu, if_set, &mut delivered),
            }
        }
        for _ in 0..300 {
            for cpu in 0..3 {
                run_once(&mut f, cpu, true, &mut delivered);
            }
        }
        for t in 0..3 {
            let e = f.engine(t).unwrap();
            prop_assert!(e.apic().irr().is_empty() && e.apic().isr().is_empty(), "vCPU {} not drained", t);
            prop_assert!(!f.shared[t].mailbox().outstanding());
            for v in 0..256 {
                prop_assert!(delivered[t][v] <= sent[t][v], "vCPU {} vector {} delivered {} sent {}", t, v, delivered[t][v], sent[t][v]);
                if sent[t][v] > 0 {
                    prop_assert!(delivered[t][v] >= 1, "vCPU {} vector {} lost", t, v);
                }
            }
        }
        // A kick was sent for at most every post and at least once per
        // vCPU that got a post from another vCPU.
        let kicks = f.platform.hv_ipis.count();
        let posts: u32 = sent.iter().map(|r| r.iter().sum::<u32>()).sum();
        prop_assert!(kicks <= posts);
    }
}
