//! Criterion benchmarks for the hot paths (targets in the project issue:
//! highest deliverable with a full IRR <= 5 ns; request + acknowledge + EOI
//! <= 30 ns; ICR decode plus destination match over 512 APIC IDs <= 2 us).
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects, missing_docs)]

use altinj_apic::{
    ApicAddress, ApicConfig, ApicMode, Ipi, LocalApic, MSR_APIC_BASE, MSR_SVR, Trigger,
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

fn x2apic(id: u32) -> LocalApic {
    let mut a = LocalApic::new(ApicConfig {
        apic_id: id,
        bsp: id == 0,
        ..ApicConfig::default()
    });
    a.write_msr(MSR_APIC_BASE, 0xFEE0_0000 | (1 << 11) | (1 << 10), 0)
        .unwrap();
    a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
    a
}

fn benches(c: &mut Criterion) {
    let mut full = x2apic(0);
    for v in 16..=255u8 {
        full.request(v, Trigger::Edge);
    }
    c.bench_function("highest_deliverable_full_irr", |b| {
        b.iter(|| black_box(&full).highest_deliverable())
    });

    let mut a = x2apic(0);
    // Something already in service so PPR and EOI do real work.
    a.request(0x30, Trigger::Edge);
    a.acknowledge(0x30);
    c.bench_function("request_acknowledge_eoi", |b| {
        b.iter(|| {
            let a = black_box(&mut a);
            a.request(black_box(0x81), Trigger::Level);
            let v = a.highest_deliverable().unwrap();
            a.acknowledge(v);
            black_box(a.eoi())
        })
    });

    let targets: Vec<ApicAddress> = (0..512).map(|id| x2apic(id).address()).collect();
    for (name, icr) in [
        ("icr_decode_match_512_physical", (0x123u64 << 32) | 0x40),
        (
            "icr_decode_match_512_logical",
            (((0x12u64 << 16) | 0x00F0) << 32) | (1 << 11) | 0x40,
        ),
        (
            "icr_decode_match_512_broadcast",
            (0xFFFF_FFFFu64 << 32) | 0x40,
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let ipi = Ipi::decode(black_box(icr), ApicMode::X2Apic, 0);
                black_box(&targets)
                    .iter()
                    .filter(|t| ipi.destination.matches(ipi.source, t))
                    .count()
            })
        });
    }
}

criterion_group! {
    name = apic;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = benches
}
criterion_main!(apic);
