//! Wall-clock timeouts from the TSC, calibrated once against the PIT, so that no
//! wait in the kernel can hang (QEMU TCG's TSC and PIT both follow host time).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, inb, outb};

/// TSC ticks per millisecond; the fallback assumes 1 GHz until calibrated.
static TSC_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);

/// PIT input clock, Hz (Intel 8254 on the PC platform).
const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;

/// Measures the TSC rate over 10 ms of PIT channel 2 (one-shot, mode 0, gate from
/// port 0x61, OUT2 read back in bit 5). Returns ticks per ms.
pub fn calibrate() -> u64 {
    let count = PIT_HZ.saturating_mul(CALIBRATION_MS) / 1000; // 11931, fits u16
    let [lo, hi, ..] = count.to_le_bytes();
    let port61 = inb(0x61);
    outb(0x61, (port61 & !0x02) | 0x01); // speaker off, gate 2 on
    outb(0x43, 0xB0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, lo);
    outb(0x42, hi);
    let start = cpu::rdtsc();
    let mut done = false;
    // Bounded: a PIT that never fires leaves the fallback rate.
    for _ in 0..50_000_000u32 {
        if inb(0x61) & 0x20 != 0 {
            done = true;
            break;
        }
    }
    let elapsed = cpu::rdtsc().wrapping_sub(start);
    outb(0x61, port61);
    let per_ms = elapsed / CALIBRATION_MS;
    if done && per_ms > 0 {
        TSC_PER_MS.store(per_ms, Ordering::Relaxed);
    }
    TSC_PER_MS.load(Ordering::Relaxed)
}

/// A point in time, for bounded waits.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        let ticks = TSC_PER_MS.load(Ordering::Relaxed).saturating_mul(ms);
        Self(cpu::rdtsc().saturating_add(ticks))
    }

    /// Whether the deadline is behind us.
    pub fn passed(self) -> bool {
        cpu::rdtsc() >= self.0
    }
}

/// Spins until `cond` holds or `ms` milliseconds passed; returns whether it held.
pub fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after_ms(ms);
    loop {
        if cond() {
            return true;
        }
        if deadline.passed() {
            return cond();
        }
        cpu::pause();
    }
}

/// Spins for `ms` milliseconds.
pub fn spin_ms(ms: u64) {
    let deadline = Deadline::after_ms(ms);
    while !deadline.passed() {
        cpu::pause();
    }
}

/// Seconds since `start` (a [`cpu::rdtsc`] value), at the calibrated rate.
pub fn seconds_since(start: u64) -> f64 {
    let ticks = cpu::rdtsc().saturating_sub(start);
    let per_ms = TSC_PER_MS.load(Ordering::Relaxed).max(1);
    ticks as f64 / per_ms as f64 / 1000.0
}

/// The calibrated TSC rate, ticks per millisecond.
pub fn tsc_per_ms() -> u64 {
    TSC_PER_MS.load(Ordering::Relaxed)
}
