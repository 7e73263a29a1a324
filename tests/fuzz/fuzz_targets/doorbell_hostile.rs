//! Hostile #HV doorbell sequences against the real engine: the host writes
//! any byte or word of the page, posts through the host API for any VMPL
//! and vector, raises NoFurtherSignal, and the SVSM takes #HV and runs the
//! guest in between (hardware and guest choices fuzzed too). Nothing may
//! panic; after every step BUSY is clear at VMRUN and set after the exit,
//! EVENTINJ and V_IRQ are never illegal, no host-presented vector below 31
//! reaches the APIC, ISR stays nested, one NMI is pending at most, and every
//! specific EOI names VMPL2 and a vector the host presented as level.
#![no_main]

use std::sync::atomic::Ordering;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sim::fuzzing::{Harness, RunChoice};
use sim::platform::Effect;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A raw write to byte 0x00-0x03 of the page.
    Byte {
        offset: u8,
        value: u8,
    },
    /// A raw write to a descriptor word (status, irr[7], isr[8]).
    Word {
        vmpl: u8,
        word: u8,
        value: u32,
    },
    /// A raw OR into a descriptor's status word.
    OrStatus {
        vmpl: u8,
        bits: u32,
    },
    PostVector {
        vmpl: u8,
        vector: u8,
    },
    PostLevel {
        vmpl: u8,
        vector: u8,
    },
    PostNmi {
        vmpl: u8,
    },
    PostMc {
        vmpl: u8,
    },
    Vmpl0Vector(u8),
    RaiseNfs,
    Hv,
    Run {
        cut: bool,
        open: bool,
        v_tpr: u8,
        eoi: bool,
        shadow: bool,
        busy: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    vcpus: u8,
    ops: Vec<(u8, Op)>,
}

fuzz_target!(|input: Input| {
    let Ok(mut h) = Harness::new(usize::from(input.vcpus % 3) + 1) else {
        return;
    };
    let n = h.n();
    // Level vectors the host presented and not yet EOI'd, per vCPU.
    let mut level: Vec<Vec<u8>> = vec![Vec::new(); n];
    for (who, op) in input.ops.into_iter().take(256) {
        let i = usize::from(who) % n;
        let page = &h.doorbells[i];
        match op {
            Op::Byte { offset, value } => match offset % 4 {
                0 => page.vector.store(value, Ordering::Release),
                1 => page.flags.store(value, Ordering::Release),
                2 => page.no_eoi_required.store(value, Ordering::Release),
                _ => page.per_vmpl_events.store(value, Ordering::Release),
            },
            Op::Word { vmpl, word, value } => {
                if let Ok(d) = page.descriptor(vmpl % 4) {
                    match word % 16 {
                        0 => d.status.store(value, Ordering::Release),
                        w @ 1..=7 => d.irr[usize::from(w - 1)].store(value, Ordering::Release),
                        w => d.isr[usize::from(w - 8)].store(value, Ordering::Release),
                    }
                    if vmpl % 4 == 2 && word % 16 == 0 && value & (1 << 10) != 0 {
                        level[i].push(value as u8);
                    }
                }
            }
            Op::OrStatus { vmpl, bits } => {
                if let Ok(d) = page.descriptor(vmpl % 4) {
                    // Whatever the status now holds with the level bit is a
                    // level presentation (the vector byte may have changed
                    // under an earlier level bit).
                    let now = d.status.fetch_or(bits, Ordering::AcqRel) | bits;
                    if vmpl % 4 == 2 && now & (1 << 10) != 0 {
                        level[i].push(now as u8);
                    }
                }
            }
            Op::PostVector { vmpl, vector } => {
                let _ = page.host().post_vector(vmpl, vector);
            }
            Op::PostLevel { vmpl, vector } => {
                if page.host().post_level(vmpl, vector).is_ok() && vmpl == 2 {
                    level[i].push(vector);
                }
            }
            Op::PostNmi { vmpl } => {
                let _ = page.host().post_nmi(vmpl);
            }
            Op::PostMc { vmpl } => {
                let _ = page.host().post_mc(vmpl);
            }
            Op::Vmpl0Vector(v) => {
                let _ = page.host().set_vmpl0_vector(v);
            }
            Op::RaiseNfs => {
                let _ = page.host().raise_no_further_signal();
            }
            Op::Hv => h.hv(i),
            Op::Run {
                cut,
                open,
                v_tpr,
                eoi,
                shadow,
                busy,
            } => {
                let choice = RunChoice {
                    cut,
                    open_window: open,
                    v_tpr,
                    guest_eoi: eoi,
                    exit_int_info: None,
                    busy,
                    shadow,
                };
                if let Err(e) = h.run(i, choice) {
                    panic!("{e}");
                }
                let apic = h.engines[i].apic();
                if let Some(v) = apic.irr().iter().chain(apic.isr().iter()).find(|v| *v < 31) {
                    panic!("vCPU {i}: host-only vector {v:#x} below 31 in the APIC");
                }
            }
        }
        for effect in h.effects() {
            if let Effect::SpecificEoi { from, vmpl, vector } = effect {
                assert_eq!(vmpl, 2, "specific EOI for VMPL {vmpl}");
                let Some(pos) = level[from].iter().position(|v| *v == vector) else {
                    panic!("vCPU {from}: specific EOI of {vector:#x}, never presented as level");
                };
                level[from].swap_remove(pos);
            }
        }
    }
});
