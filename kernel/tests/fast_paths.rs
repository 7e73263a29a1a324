//! Property test: the engine's fast paths (`kernel/src/engine/fast.rs`) do
//! exactly what the general paths do (issue 14: no behaviour change).
//!
//! Two fixtures get the same random sequence of host posts (edge, level,
//! NMI, illegal vectors), guest ICR writes (every fast shape and its near
//! misses: other destinations, shorthands, modes, illegal vectors, reserved
//! bits, IDs beyond the fabric), EOI writes (direct and through the
//! protocol), TPR and APIC_BASE writes (disabled, xAPIC and x2APIC
//! targets) and guest runs; one takes `before_run`,
//! `write_register` and `handle_apic_call`, the other their
//! `*_without_fast_paths` twins. After every step the engines, the shared
//! slots (mailboxes, addresses), the descriptors, the VMSAs and every GHCB
//! call made must be the same.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use core::sync::atomic::Ordering;

use altinj_kernel::protocol::ApicCall;
use altinj_kernel::testing::{Fixture, GUEST_VMPL, GuestRun, hw_run};
use altinj_vmsa::{EventType, RFLAGS_IF, VmsaAccess};
use proptest::prelude::*;

const N: usize = 5;
type F = Fixture<N>;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// The host posts into vCPU `cpu`'s descriptor.
    Host { cpu: usize, vector: u8, kind: u8 },
    /// vCPU `cpu` writes the ICR.
    Icr { cpu: usize, value: u64 },
    /// vCPU `cpu` writes EOI (`value`), directly or through the protocol.
    Eoi {
        cpu: usize,
        value: u64,
        protocol: bool,
    },
    /// vCPU `cpu` writes TPR.
    Tpr { cpu: usize, value: u8 },
    /// vCPU `cpu` writes APIC_BASE: disabled, xAPIC or x2APIC (a broadcast
    /// skips a disabled APIC; the fast paths are x2APIC only).
    Base { cpu: usize, value: u64 },
    /// vCPU `cpu` runs once; the guest EOIs what it took when `eoi`.
    Run { cpu: usize, if_set: bool, eoi: bool },
}

fn vector() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => 0xE0u8..=0xFF, // PIR word 0 (Linux's IPIs)
        3 => 0x20u8..0xE0,
        1 => any::<u8>(),
    ]
}

fn icr() -> impl Strategy<Value = u64> {
    prop_oneof![
        // Fixed, physical, to an ID in or beyond the fabric.
        4 => (0u64..7, vector(), any::<bool>())
            .prop_map(|(id, v, level)| (id << 32) | u64::from(v) | if level { 0xC000 } else { 0 }),
        // All excluding self, all including self, self.
        3 => (1u64..4, vector()).prop_map(|(sh, v)| (sh << 18) | u64::from(v)),
        // Broadcast ID, logical cluster 0, NMI, lowest priority, INIT.
        1 => vector().prop_map(|v| (0xFFFF_FFFFu64 << 32) | u64::from(v)),
        1 => (0u64..32, vector()).prop_map(|(m, v)| (m << 32) | (1 << 11) | u64::from(v)),
        1 => (0u64..5, prop::sample::select(vec![0x400u64, 0x100, 0x500, 0x600]))
            .prop_map(|(id, mode)| (id << 32) | mode | 0x30),
        // Reserved or delivery-status bits.
        1 => (0u64..5, prop::sample::select(vec![1u64 << 12, 1 << 13, 1 << 16, 1 << 20]))
            .prop_map(|(id, bit)| (id << 32) | bit | 0xF0),
        1 => any::<u64>(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let cpu = 0usize..N;
    prop_oneof![
        3 => (cpu.clone(), any::<u8>(), prop::sample::select(vec![0u8, 0, 1, 2, 3, 4, 5]))
            .prop_map(|(cpu, vector, kind)| Step::Host { cpu, vector, kind }),
        4 => (cpu.clone(), icr()).prop_map(|(cpu, value)| Step::Icr { cpu, value }),
        2 => (cpu.clone(), prop::sample::select(vec![0u64, 0, 0, 1]), any::<bool>())
            .prop_map(|(cpu, value, protocol)| Step::Eoi { cpu, value, protocol }),
        1 => (cpu.clone(), any::<u8>()).prop_map(|(cpu, value)| Step::Tpr { cpu, value }),
        1 => (cpu.clone(), prop::sample::select(vec![0u64, 0xFEE0_0800, 0xFEE0_0C00]))
            .prop_map(|(cpu, value)| Step::Base { cpu, value }),
        4 => (cpu, any::<bool>(), prop::bool::weighted(0.8))
            .prop_map(|(cpu, if_set, eoi)| Step::Run { cpu, if_set, eoi }),
    ]
}

/// Applies `step` to `f`, through the fast paths when `fast`; what the
/// engine answered.
fn apply(f: &mut F, step: Step, fast: bool) -> String {
    match step {
        Step::Host { cpu, vector, kind } => {
            let host = f.doorbells[cpu].host();
            let _ = match kind {
                0 | 1 => host.post_vector(GUEST_VMPL, vector),
                2 => host.post_level(GUEST_VMPL, vector),
                3 => host.post_nmi(GUEST_VMPL),
                4 => host.post_ipi_requested(GUEST_VMPL),
                _ => host.post_mc(GUEST_VMPL),
            };
            String::new()
        }
        Step::Icr { cpu, value } => write(f, cpu, 0x830, value, fast, false),
        Step::Eoi {
            cpu,
            value,
            protocol,
        } => write(f, cpu, 0x80B, value, fast, protocol),
        Step::Tpr { cpu, value } => write(f, cpu, 0x808, u64::from(value), fast, false),
        Step::Base { cpu, value } => {
            // Software-enabled again after a reset of the registers.
            write(f, cpu, 0x1B, value, fast, false) + &write(f, cpu, 0x80F, 0x1FF, fast, false)
        }
        Step::Run { cpu, if_set, eoi } => {
            f.vmsa(cpu)
                .unwrap()
                .set_rflags(if if_set { RFLAGS_IF } else { 2 });
            {
                let (engine, env, vmsa) = f.parts(cpu).unwrap();
                let r = if fast {
                    engine.before_run(&env, vmsa)
                } else {
                    engine.before_run_without_fast_paths(&env, vmsa)
                };
                if r.is_err() {
                    return format!("{r:?}");
                }
            }
            let d = hw_run(f.vmsa(cpu).unwrap(), GuestRun::NORMAL);
            let exit = f.after_exit(cpu);
            let took =
                d.event.is_some_and(|e| e.event_type() == EventType::Intr) || d.virq.is_some();
            let mut answer = format!("{d:?} {exit:?}");
            if took && eoi {
                answer += &write(f, cpu, 0x80B, 0, fast, true);
            }
            answer
        }
    }
}

/// WRITE_REGISTER(`msr`, `value`) on vCPU `cpu`, directly or through the
/// protocol, with or without the fast paths.
fn write(f: &mut F, cpu: usize, msr: u64, value: u64, fast: bool, protocol: bool) -> String {
    let (engine, env, vmsa) = f.parts(cpu).unwrap();
    if protocol {
        let call = ApicCall::WriteRegister { msr, value };
        let outcome = if fast {
            engine.handle_apic_call(&env, call)
        } else {
            engine.handle_apic_call_without_fast_paths(&env, call)
        };
        let r = engine.finish_apic_call(&env, vmsa, outcome);
        format!("{r:?}")
    } else {
        let r = if fast {
            engine.write_register(&env, msr, value)
        } else {
            engine.write_register_without_fast_paths(&env, msr, value)
        };
        format!("{r:?}")
    }
}

/// Everything observable of a fixture.
fn observe(f: &F) -> String {
    let mut s = String::new();
    for i in 0..N {
        let v = &f.vmsas[i];
        s += &format!(
            "{:?}\n{:?}\nstatus {:#x} eventinj {:#x} vintr {:#x} caa {}\n",
            f.engines[i],
            f.shared[i],
            f.doorbells[i]
                .descriptor(GUEST_VMPL)
                .unwrap()
                .status
                .load(Ordering::Acquire),
            v.event_inj().into_bits(),
            v.vintr_ctrl().into_bits(),
            f.caa[i].load(Ordering::Acquire),
        );
    }
    let p = &f.platform;
    for (name, log) in [
        ("hv_ipi", &p.hv_ipis),
        ("specific_eoi", &p.specific_eois),
        ("timer", &p.timer_arms),
    ] {
        s += &format!("{name} {} {:x?}\n", log.count(), log.entries());
    }
    s
}

fn fixture() -> Box<F> {
    let mut f = Box::new(F::new());
    for i in 0..N {
        f.create(i).unwrap();
    }
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fast_paths_do_what_the_general_paths_do(steps in prop::collection::vec(step(), 1..80)) {
        let mut fast = fixture();
        let mut general = fixture();
        prop_assert_eq!(observe(&fast), observe(&general));
        for (i, step) in steps.iter().enumerate() {
            let answer_fast = apply(&mut fast, *step, true);
            let answer = apply(&mut general, *step, false);
            prop_assert_eq!(&answer_fast, &answer, "step {} {:?}", i, step);
            let (a, b) = (observe(&fast), observe(&general));
            prop_assert!(a == b, "step {} {:?}:\nfast:\n{}\ngeneral:\n{}", i, step, a, b);
        }
    }
}
