//! Property test: the APIC's IRR/ISR/PPR logic against a small, obviously
//! correct reference model (Intel SDM vol. 3A §11.8.3-11.8.5, spec §6).
//!
//! Random sequences of requests, acknowledges (of the highest deliverable
//! vector), EOIs and TPR writes must produce the same delivered-vector
//! sequence, the same EOI answers and the same PPR after every step.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use apic::{ApicConfig, EoiInfo, LocalApic, MSR_APIC_BASE, MSR_SVR, RequestOutcome, Trigger};
use proptest::prelude::*;

/// The reference: plain arrays and linear scans, straight from the SDM text.
struct Model {
    irr: [bool; 256],
    isr: [bool; 256],
    tmr: [bool; 256],
    tpr: u8,
}

impl Model {
    fn new() -> Self {
        Self {
            irr: [false; 256],
            isr: [false; 256],
            tmr: [false; 256],
            tpr: 0,
        }
    }

    fn highest(set: &[bool; 256]) -> Option<usize> {
        (0..256).rev().find(|&v| set[v])
    }

    /// PPR: TPR if its class is at least the highest in-service class, else
    /// that class (§11.8.3.1).
    fn ppr(&self) -> u8 {
        let isrv = Self::highest(&self.isr).unwrap_or(0) as u8;
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    fn request(&mut self, v: u8, level: bool) -> RequestOutcome {
        if v < 16 {
            return RequestOutcome::Illegal;
        }
        self.tmr[v as usize] = level;
        if self.irr[v as usize] {
            RequestOutcome::Coalesced
        } else {
            self.irr[v as usize] = true;
            RequestOutcome::Accepted
        }
    }

    /// Highest pending vector whose class is above PPR's class.
    fn deliverable(&self) -> Option<u8> {
        let v = Self::highest(&self.irr)? as u8;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    fn deliver(&mut self) -> Option<u8> {
        let v = self.deliverable()?;
        self.irr[v as usize] = false;
        self.isr[v as usize] = true;
        Some(v)
    }

    fn eoi(&mut self) -> Option<(u8, bool)> {
        let v = Self::highest(&self.isr)?;
        self.isr[v] = false;
        Some((v as u8, self.tmr[v]))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Request(u8, bool),
    Deliver,
    Eoi,
    Tpr(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Request(v, l)),
        3 => Just(Op::Deliver),
        2 => Just(Op::Eoi),
        1 => any::<u8>().prop_map(Op::Tpr),
    ]
}

fn enabled_apic() -> LocalApic {
    let mut a = LocalApic::new(ApicConfig {
        bsp: true,
        ..ApicConfig::default()
    });
    a.write_msr(MSR_APIC_BASE, 0xFEE0_0000 | (1 << 11) | (1 << 10), 0)
        .unwrap();
    a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
    a
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn apic_matches_reference_model(ops in proptest::collection::vec(op(), 1..300)) {
        let mut apic = enabled_apic();
        let mut model = Model::new();
        let mut got = Vec::new();
        let mut want = Vec::new();
        for op in &ops {
            match *op {
                Op::Request(v, level) => {
                    let trig = if level { Trigger::Level } else { Trigger::Edge };
                    prop_assert_eq!(apic.request(v, trig), model.request(v, level));
                }
                Op::Deliver => {
                    if let Some(v) = apic.highest_deliverable() {
                        prop_assert!(apic.acknowledge(v));
                        got.push(v);
                    }
                    if let Some(v) = model.deliver() {
                        want.push(v);
                    }
                }
                Op::Eoi => {
                    let e = apic.eoi().map(|EoiInfo { vector, level, .. }| (vector, level));
                    prop_assert_eq!(e, model.eoi());
                }
                Op::Tpr(t) => {
                    apic.set_tpr(t);
                    model.tpr = t;
                }
            }
            prop_assert_eq!(apic.ppr(), model.ppr());
            prop_assert_eq!(apic.highest_deliverable(), model.deliverable());
            prop_assert_eq!(&got, &want);
        }
    }
}
