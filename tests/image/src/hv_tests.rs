//! The image's own in-kernel tests: #HV on vector 28, raised synchronously
//! (`int 28`) and asynchronously by the local APIC timer, against the real IDT.

use core::sync::atomic::Ordering::SeqCst;

use crate::hv::{DOORBELL, STATS, model};
use crate::idt::HV_VECTOR;
use crate::{cpu, lapic, time};

/// Counter snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    hv: u64,
    apic_hv: u64,
    vectors: u64,
    vector_sum: u64,
    nmis: u64,
}

fn snap() -> Snap {
    Snap {
        hv: STATS.hv.load(SeqCst),
        apic_hv: STATS.apic_hv.load(SeqCst),
        vectors: STATS.vectors.load(SeqCst),
        vector_sum: STATS.vector_sum.load(SeqCst),
        nmis: STATS.nmis.load(SeqCst),
    }
}

/// Interrupts off, timer stopped, doorbell empty.
fn quiet() {
    cpu::cli();
    model::disarm_timer();
    model::reset_doorbell();
}

/// One step of busy work whose result depends on every register surviving
/// interrupts (FNV-1a over the step counter).
fn work(hash: u64, i: u64) -> u64 {
    let mut h = hash;
    for byte in i.to_le_bytes() {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    core::hint::black_box(h)
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

ktest::suite! {
    fn hv_sync_int28_runs_handler() {
        quiet();
        let before = snap();
        cpu::int28();
        let after = snap();
        assert_eq!(after.hv, before.hv + 1);
        assert_eq!(after.apic_hv, before.apic_hv, "int 28 is not an APIC delivery");
        assert!(!cpu::interrupts_enabled(), "IRETQ restored IF = 0");
    }

    fn hv_sync_posted_vector_is_taken_and_acknowledged() {
        quiet();
        let before = snap();
        assert_eq!(model::post_and_signal(0x31), Ok(true));
        let after = snap();
        assert_eq!(after.hv, before.hv + 1);
        assert_eq!(after.vectors, before.vectors + 1);
        assert_eq!(STATS.last_vector.load(SeqCst), 0x31);
        assert_eq!(DOORBELL.vector.load(SeqCst), 0, "vector acknowledged");
        assert_eq!(DOORBELL.flags.load(SeqCst), 0, "NoFurtherSignal cleared");
    }

    fn hv_sync_nmi_is_taken() {
        quiet();
        let before = snap();
        assert!(model::post_nmi_and_signal());
        assert_eq!(snap().nmis, before.nmis + 1);
        assert_eq!(DOORBELL.flags.load(SeqCst), 0);
    }

    fn hv_no_signal_while_no_further_signal_is_set() {
        quiet();
        // The host signalled once and VMPL0 has not looked yet: a second post
        // must not signal again; the next #HV takes it.
        assert!(DOORBELL.host().raise_no_further_signal());
        let before = snap();
        assert_eq!(model::post_and_signal(0x42), Ok(false));
        assert_eq!(snap().hv, before.hv);
        cpu::int28();
        assert_eq!(STATS.last_vector.load(SeqCst), 0x42);
        assert_eq!(snap().vectors, before.vectors + 1);
    }

    fn hv_apic_timer_one_shot_delivers_exactly_once() {
        quiet();
        let before = snap();
        model::arm_timer(200_000, false);
        cpu::sti();
        let arrived = time::wait_until(2000, || snap().apic_hv > before.apic_hv);
        time::spin_ms(5);
        cpu::cli();
        assert!(arrived, "timer #HV did not arrive within 2 s");
        let after = snap();
        assert_eq!(after.apic_hv, before.apic_hv + 1);
        assert_eq!(after.hv, before.hv + 1);
        assert!(!lapic::in_service(HV_VECTOR), "handler sent EOI");
        assert!(!lapic::pending(HV_VECTOR));
    }

    fn hv_deferred_while_interrupts_off() {
        quiet();
        let before = snap();
        model::post(0x55).unwrap();
        model::arm_timer(100_000, false);
        assert!(time::wait_until(2000, || lapic::timer_current() == 0), "timer expired");
        // QEMU raises the expired timer from its own timer callback, a little later.
        assert!(
            time::wait_until(2000, || lapic::pending(HV_VECTOR)),
            "expired timer is pending in IRR"
        );
        time::spin_ms(2);
        assert_eq!(snap(), before, "nothing delivered with IF = 0");
        assert_eq!(DOORBELL.vector.load(SeqCst), 0x55);
        cpu::sti();
        let arrived = time::wait_until(500, || snap().hv > before.hv);
        cpu::cli();
        assert!(arrived, "pending #HV delivered after STI");
        let after = snap();
        assert_eq!(after.apic_hv, before.apic_hv + 1);
        assert_eq!(after.vectors, before.vectors + 1);
        assert_eq!(STATS.last_vector.load(SeqCst), 0x55);
        assert!(!lapic::pending(HV_VECTOR));
        assert!(!lapic::in_service(HV_VECTOR));
    }

    fn hv_async_apic_timer_lands_while_busy() {
        // The model posts vectors while the kernel computes with short CLI/STI
        // windows; a periodic timer #HV (every 250 us) lands anywhere in the IF = 1
        // windows or right at STI. Some posts are also signalled with int 28.
        const WANTED: u64 = 40;
        quiet();
        let before = snap();
        let mut posted = 0u64;
        let mut posted_sum = 0u64;
        let mut hash = FNV_OFFSET;
        let mut step = 0u64;
        let deadline = time::Deadline::after_ms(10_000);
        model::arm_timer(250_000, true);
        loop {
            cpu::sti();
            for _ in 0..256 {
                hash = work(hash, step);
                step += 1;
            }
            cpu::cli();
            for _ in 0..64 {
                hash = work(hash, step);
                step += 1;
            }
            let vector = 32 + (step % 200) as u8;
            let accepted = if step.is_multiple_of(3) {
                model::post_and_signal(vector).is_ok()
            } else {
                model::post(vector).is_ok()
            };
            if accepted {
                posted += 1;
                posted_sum += u64::from(vector);
            }
            if snap().apic_hv - before.apic_hv >= WANTED {
                break;
            }
            assert!(
                !deadline.passed(),
                "only {} timer #HVs in 10 s",
                snap().apic_hv - before.apic_hv
            );
        }
        model::disarm_timer();
        // Whatever is still posted is taken by one more #HV.
        cpu::int28();
        let after = snap();
        assert!(posted > 0);
        assert_eq!(after.vectors - before.vectors, posted, "each post taken once");
        assert_eq!(after.vector_sum - before.vector_sum, posted_sum);
        assert_eq!(DOORBELL.vector.load(SeqCst), 0);
        // The same work with interrupts off gives the same result: the handler
        // preserved every register and flag the loop relied on.
        let mut expected = FNV_OFFSET;
        for i in 0..step {
            expected = work(expected, i);
        }
        assert_eq!(hash, expected);
    }
}
