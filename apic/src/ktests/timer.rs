//! The APIC timer.

use super::*;

/// Divide-configuration codes and their divisors (Intel SDM vol. 3A
/// §11.5.4, Figure 11-10).
const DIVIDERS: [(u64, u64); 8] = [
    (0, 2),
    (1, 4),
    (2, 8),
    (3, 16),
    (8, 32),
    (9, 64),
    (0xA, 128),
    (0xB, 1),
];

/// An x2APIC APIC with the timer in `mode` (vector 0xEC), divide `code`,
/// initial count 10 written at 0.
fn counting(mode: u32, code: u64) -> LocalApic {
    let mut a = x2(0);
    a.write_msr(MSR_TIMER_DIVIDE, code, 0).unwrap();
    timer(&mut a, mode, 0);
    a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
    a
}

/// Takes and retires a pending timer interrupt; whether there was one.
fn took_timer(a: &mut LocalApic) -> bool {
    if !a.acknowledge(0xEC) {
        return false;
    }
    a.eoi();
    true
}

/// Current count read at `now` through the register (settles `a`).
fn tmcct(a: &mut LocalApic, now: u64) -> u64 {
    a.read_msr(MSR_TIMER_CURRENT, now).unwrap()
}

altinj_ktest::suite! {
    // ---- timer -------------------------------------------------------------

    fn timer_one_shot_expires_exactly_with_every_divider() {
        for (code, div) in [(0u64, 2u64), (1, 4), (2, 8), (3, 16), (8, 32), (9, 64), (0xA, 128), (0xB, 1)] {
            let mut a = LocalApic::new(ApicConfig { ticks_per_bus_cycle: 3, ..config(0) });
            a.set_apic_base(X2APIC).unwrap();
            a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
            a.write_msr(MSR_TIMER_DIVIDE, code, 0).unwrap();
            timer(&mut a, 0, 0);
            let start = 1_000_000u64;
            assert_eq!(a.write_msr(MSR_TIMER_INITIAL, 10, start), Ok(WriteEffect::TimerChanged));
            let end = start + 10 * div * 3;
            assert_eq!(a.next_timer_deadline(), Some(end), "div {div}");
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, start), 10);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, start + div * 3 - 1), 10);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, start + div * 3), 9);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, end - 1), 1);
            assert!(!a.poll_timer(end - 1));
            assert!(a.irr().is_empty());
            assert!(a.poll_timer(end), "div {div}");
            assert!(a.irr().contains(0xEC));
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, end), 0);
            assert_eq!(a.next_timer_deadline(), None);
            assert!(!a.poll_timer(end + 1_000_000));
        }
    }

    fn timer_periodic_reloads_and_fires_every_period() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 50).unwrap();
        for k in 1..=3u64 {
            assert!(!a.poll_timer(50 + 100 * k - 1));
            assert!(a.poll_timer(50 + 100 * k));
            assert_eq!(a.next_timer_deadline(), Some(50 + 100 * (k + 1)));
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 50 + 100 * k), 100);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 50 + 100 * k + 30), 70);
            assert!(a.irr().contains(0xEC));
            a.acknowledge(0xEC);
            a.eoi();
        }
    }

    fn timer_periodic_late_poll_coalesces_and_stays_aligned() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 450), 50);
        assert!(a.poll_timer(450));
        assert_eq!(a.next_timer_deadline(), Some(500));
        assert_eq!(a.irr().len(), 1);
        assert!(!a.poll_timer(499));
    }

    fn timer_masked_expires_without_interrupt() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        a.write_msr(MSR_LVT_TIMER, 0x1_00EC, 0).unwrap();
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        assert!(a.poll_timer(10));
        assert!(a.irr().is_empty());
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_zero_initial_count_stops() {
        let mut a = x2(0);
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        a.write_msr(MSR_TIMER_INITIAL, 0, 5).unwrap();
        assert_eq!(a.next_timer_deadline(), None);
        assert!(!a.poll_timer(1_000));
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 6), 0);
    }

    fn timer_tsc_deadline_fires_at_deadline() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        assert_eq!(a.write_msr(MSR_TSC_DEADLINE, 5000, 0), Ok(WriteEffect::TimerChanged));
        assert_eq!(rd(&a, MSR_TSC_DEADLINE), 5000);
        assert_eq!(a.next_timer_deadline(), Some(5000));
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 10), 0);
        assert!(!a.poll_timer(4999));
        assert!(a.poll_timer(5000));
        assert!(a.irr().contains(0xEC));
        assert_eq!(rd(&a, MSR_TSC_DEADLINE), 0);
        assert_eq!(a.next_timer_deadline(), None);
        a.set_tsc_deadline(7000, 6000);
        a.set_tsc_deadline(0, 6000);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_tsc_deadline_is_ignored_outside_its_mode() {
        let mut a = x2(0);
        timer(&mut a, 0, 0);
        assert_eq!(a.set_tsc_deadline(5000, 0), WriteEffect::None);
        assert_eq!(a.tsc_deadline(), 0);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_initial_count_is_ignored_in_tsc_deadline_mode() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        assert_eq!(a.write_msr(MSR_TIMER_INITIAL, 10, 0), Ok(WriteEffect::None));
        assert_eq!(rd(&a, MSR_TIMER_INITIAL), 0);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_switch_one_shot_to_periodic_carries_on() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        timer(&mut a, 1, 40);
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 40), 60);
        assert_eq!(a.next_timer_deadline(), Some(100));
        assert!(a.poll_timer(100));
        assert_eq!(a.next_timer_deadline(), Some(200));
    }

    fn timer_switch_periodic_to_one_shot_carries_on() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        assert!(a.poll_timer(100));
        timer(&mut a, 0, 130);
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 130), 70);
        assert!(a.poll_timer(200));
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_switch_delivers_expiry_that_already_happened() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        timer(&mut a, 1, 20);
        assert!(a.irr().contains(0xEC));
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_entering_tsc_deadline_disarms() {
        let mut a = x2(0);
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 1000, 0).unwrap();
        assert_eq!(a.write_msr(MSR_LVT_TIMER, 0x4_00EC, 10), Ok(WriteEffect::TimerChanged));
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(rd(&a, MSR_TIMER_INITIAL), 0);
        assert!(!a.poll_timer(u64::MAX));
    }

    fn timer_leaving_tsc_deadline_disarms() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        a.set_tsc_deadline(1000, 0);
        timer(&mut a, 0, 10);
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(a.tsc_deadline(), 0);
        assert!(!a.poll_timer(u64::MAX));
    }

    fn timer_reserved_mode_keeps_the_mode() {
        let mut a = x2(0);
        timer(&mut a, 1, 0);
        timer(&mut a, 3, 0);
        assert_eq!(rd(&a, MSR_LVT_TIMER), 0x2_00EC);
    }

    fn timer_divide_change_keeps_current_count() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        a.write_msr(MSR_TIMER_DIVIDE, 0, 40).unwrap();
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 40), 60);
        assert_eq!(a.next_timer_deadline(), Some(40 + 60 * 2));
    }

    fn timer_arithmetic_is_overflow_safe() {
        let mut a = LocalApic::new(ApicConfig { ticks_per_bus_cycle: u32::MAX, ..config(0) });
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        a.write_msr(MSR_TIMER_DIVIDE, 0xA, 0).unwrap();
        timer(&mut a, 1, 0);
        // An expiry past the end of time can never happen: not armed, but
        // the count still runs.
        a.write_msr(MSR_TIMER_INITIAL, u64::from(u32::MAX), u64::MAX - (1 << 40)).unwrap();
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 0), u64::from(u32::MAX));
        assert!(rd_now(&a, MSR_TIMER_CURRENT, u64::MAX) < u64::from(u32::MAX));
        assert!(!a.poll_timer(u64::MAX));
        // A periodic expiry exactly at the end fires once, then stops.
        let mut b = x2(0);
        b.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut b, 1, 0);
        b.write_msr(MSR_TIMER_INITIAL, 5, u64::MAX - 5).unwrap();
        assert_eq!(b.next_timer_deadline(), Some(u64::MAX));
        assert!(b.poll_timer(u64::MAX));
        assert_eq!(b.next_timer_deadline(), None);
        assert!(!b.poll_timer(u64::MAX));
    }

    fn timer_zero_ticks_per_bus_cycle_counts_as_one() {
        let mut a = LocalApic::new(ApicConfig { ticks_per_bus_cycle: 0, ..config(0) });
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 5, 0).unwrap();
        assert_eq!(a.next_timer_deadline(), Some(10));
    }

    // §11.5.4 and the issue-10 rule: an expired one-shot count stays at 0
    // when switched to periodic; nothing fires until a new initial count.
    fn timer_expired_one_shot_switched_to_periodic_stays_stopped() {
        let mut a = counting(0, 0xB);
        assert!(a.poll_timer(10));
        assert!(took_timer(&mut a));
        timer(&mut a, 1, 50);
        assert_eq!(tmcct(&mut a, 50), 0);
        assert_eq!(a.next_timer_deadline(), None);
        assert!(!a.poll_timer(10_000));
        assert_eq!(tmcct(&mut a, 10_000), 0);
        assert!(!took_timer(&mut a));
    }

    // The same when the expiry was not yet polled: the write delivers it
    // in the old mode first, then the count is stopped.
    fn timer_one_shot_expiry_due_at_switch_fires_once_then_stops() {
        let mut a = counting(0, 0xB);
        timer(&mut a, 1, 35);
        assert!(took_timer(&mut a));
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(tmcct(&mut a, 1_000), 0);
        assert!(!took_timer(&mut a));
    }

    // §11.5.4: a write of the initial count restarts the count.
    fn timer_expired_one_shot_restarts_on_new_initial_count() {
        let mut a = counting(0, 0xB);
        assert!(a.poll_timer(10));
        timer(&mut a, 1, 20);
        a.write_msr(MSR_TIMER_INITIAL, 5, 30).unwrap();
        assert_eq!(a.next_timer_deadline(), Some(35));
        assert_eq!(tmcct(&mut a, 31), 4);
        assert!(a.poll_timer(35));
        assert_eq!(a.next_timer_deadline(), Some(40));
    }

    // One state: a read past the deadline delivers the expiry, so a current
    // count of 0 comes with the vector in IRR and no stale deadline.
    fn timer_read_past_deadline_delivers_the_expiry_first() {
        let mut a = counting(0, 0xB);
        assert!(a.irr().is_empty());
        assert_eq!(tmcct(&mut a, 12), 0);
        assert!(a.irr().contains(0xEC));
        assert_eq!(a.next_timer_deadline(), None);
        let mut b = counting(1, 0xB);
        assert_eq!(b.read_msr(MSR_IRR0 + 7, 25), Ok(1 << 12));
        assert_eq!(b.next_timer_deadline(), Some(30));
    }

    // §11.5.4.1: a deadline already passed fires at once.
    fn timer_tsc_deadline_in_the_past_fires_on_write() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        assert_eq!(a.set_tsc_deadline(100, 500), WriteEffect::TimerChanged);
        assert!(a.irr().contains(0xEC));
        assert_eq!((a.tsc_deadline(), a.next_timer_deadline()), (0, None));
        assert_eq!(a.write_msr(MSR_TSC_DEADLINE, 600, 600), Ok(WriteEffect::TimerChanged));
        assert_eq!(a.next_timer_deadline(), None);
    }

    // The whole matrix: from one-shot / periodic, running or past its first
    // expiry, to one-shot / periodic / TSC-deadline, with every divider:
    // the current count, the deadline and the interrupts agree with the
    // SDM (§11.5.4) and spec §6 (count carries on; TSC-deadline disarms).
    fn timer_mode_switch_matrix_count_deadline_and_interrupts_agree() {
        for (code, p) in DIVIDERS {
            for from in [0u32, 1] {
                for to in [0u32, 1, 2] {
                    for expired in [false, true] {
                        let case = (code, from, to, expired);
                        let d = 10 * p;
                        let mut a = counting(from, code);
                        let at = if expired {
                            assert!(a.poll_timer(d), "{case:?}");
                            assert!(took_timer(&mut a));
                            d + 3 * p
                        } else {
                            4 * p + p / 2
                        };
                        timer(&mut a, to, at);
                        assert!(!took_timer(&mut a), "{case:?}: nothing due at the switch");
                        // What the count does from `at` on: None = stopped.
                        let next = match (to, from, expired) {
                            (2, _, _) | (_, 0, true) => None,
                            (_, 1, true) => Some((7, 2 * d)),
                            _ => Some((6, d)),
                        };
                        let Some((count, deadline)) = next else {
                            assert_eq!(tmcct(&mut a, at), 0, "{case:?}");
                            assert_eq!(a.next_timer_deadline(), None, "{case:?}");
                            assert!(!a.poll_timer(1 << 40), "{case:?}");
                            assert!(!took_timer(&mut a), "{case:?}");
                            continue;
                        };
                        assert_eq!(tmcct(&mut a, at), count, "{case:?}");
                        assert_eq!(a.next_timer_deadline(), Some(deadline), "{case:?}");
                        assert_eq!(tmcct(&mut a, deadline - 1), 1, "{case:?}");
                        assert!(!took_timer(&mut a), "{case:?}");
                        // At the deadline: the expiry, then reload or stop.
                        let after = if to == 1 { 10 } else { 0 };
                        assert_eq!(tmcct(&mut a, deadline), after, "{case:?}");
                        assert!(took_timer(&mut a), "{case:?}");
                        let again = (to == 1).then_some(deadline + d);
                        assert_eq!(a.next_timer_deadline(), again, "{case:?}");
                    }
                }
            }
        }
    }
}
