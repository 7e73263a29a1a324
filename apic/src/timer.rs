//! The APIC timer: one-shot, periodic and TSC-deadline (Intel SDM vol. 3A
//! §11.5.4).

use crate::lapic::LocalApic;
use crate::regs::*;
use crate::types::*;

impl LocalApic {
    pub(crate) fn disarm_timer(&mut self) {
        self.s.timer_armed = false;
        self.s.timer_initial = 0;
        self.s.timer_start_count = 0;
        self.s.tsc_deadline = 0;
    }

    pub(crate) fn timer_mode(&self) -> u8 {
        Lvt::from_bits(self.s.lvt[LVT_TIMER]).timer_mode()
    }

    /// `now` ticks per timer count: ticks per bus cycle times the divisor.
    pub(crate) fn count_period(&self) -> u64 {
        u64::from(self.s.ticks_per_bus_cycle.max(1))
            .saturating_mul(u64::from(timer_divisor(self.s.timer_divide)))
    }

    /// Current count (Intel SDM vol. 3A §11.5.4): counts down from
    /// `timer_start_count` at `timer_start`; periodic mode reloads the
    /// initial count at 0; TSC-deadline mode reads 0.
    pub(crate) fn current_count(&self, now: u64) -> u32 {
        let mode = self.timer_mode();
        if mode == TIMER_TSC_DEADLINE {
            return 0;
        }
        let start_count = u64::from(self.s.timer_start_count);
        let counts = now
            .saturating_sub(self.s.timer_start)
            .checked_div(self.count_period())
            .unwrap_or(0);
        if let Some(left) = start_count.checked_sub(counts).filter(|l| *l > 0) {
            return left as u32;
        }
        let initial = u64::from(self.s.timer_initial);
        if mode == TIMER_PERIODIC && start_count != 0 {
            let past = counts.saturating_sub(start_count);
            let into = past.checked_rem(initial).unwrap_or(0);
            return initial.saturating_sub(into) as u32;
        }
        0
    }

    /// Re-arms one-shot/periodic counting from `count` at `now`.
    pub(crate) fn start_count(&mut self, count: u32, now: u64) {
        self.s.timer_start = now;
        self.s.timer_start_count = count;
        self.set_deadline(
            u64::from(count)
                .checked_mul(self.count_period())
                .and_then(|d| now.checked_add(d))
                .filter(|_| count != 0),
        );
    }

    /// Arms the timer for `deadline`; `None` (stopped, or an expiry past the
    /// end of the `now` range, which can never be reached) disarms it. The
    /// count itself is still computed from `timer_start`.
    pub(crate) fn set_deadline(&mut self, deadline: Option<u64>) {
        self.s.timer_armed = deadline.is_some();
        self.s.timer_deadline = deadline.unwrap_or(0);
    }

    pub(crate) fn write_timer_initial(&mut self, value: u32, now: u64) -> WriteEffect {
        self.poll_timer(now);
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            // Intel SDM vol. 3A §11.5.4.1: ignored in TSC-deadline mode.
            return WriteEffect::None;
        }
        self.s.timer_initial = value;
        // Writing 0 stops the timer (§11.5.4).
        self.start_count(value, now);
        WriteEffect::TimerChanged
    }

    pub(crate) fn write_timer_divide(&mut self, value: u32, now: u64) -> WriteEffect {
        self.poll_timer(now);
        let count = self.current_count(now);
        self.s.timer_divide = value & DIVIDE_WRITABLE;
        if self.s.timer_armed && self.timer_mode() != TIMER_TSC_DEADLINE {
            // As KVM does, the current count carries on at the new rate
            // (the part of a count already elapsed is dropped).
            self.start_count(count, now);
        }
        WriteEffect::TimerChanged
    }

    /// Sends the ICR: illegal fixed vectors latch ESR "send illegal vector"

    /// When the timer next fires, in `now` ticks; `None` when not armed.
    pub fn next_timer_deadline(&self) -> Option<u64> {
        self.s.timer_armed.then_some(self.s.timer_deadline)
    }

    /// Fires the timer if due at `now` (sets the LVT timer vector unless masked,
    /// re-arms periodic mode); returns whether it fired.
    ///
    /// A masked timer still expires (and returns true) without an interrupt
    /// (Intel SDM vol. 3A §11.5.4). Periodic expiries missed by a late poll
    /// coalesce into one interrupt; the period stays aligned to the first
    /// start.
    pub fn poll_timer(&mut self, now: u64) -> bool {
        if !self.s.timer_armed || now < self.s.timer_deadline {
            return false;
        }
        let mode = self.timer_mode();
        if mode == TIMER_PERIODIC && self.s.timer_initial != 0 {
            let full = u64::from(self.s.timer_initial).saturating_mul(self.count_period());
            let late = now.saturating_sub(self.s.timer_deadline);
            let skipped = late.checked_div(full).unwrap_or(0);
            // skipped * full <= late, so the reload time is at most `now`.
            let reload = self
                .s
                .timer_deadline
                .saturating_add(skipped.saturating_mul(full));
            self.s.timer_start = reload;
            self.s.timer_start_count = self.s.timer_initial;
            self.set_deadline(reload.checked_add(full));
        } else {
            self.s.timer_armed = false;
            if mode == TIMER_TSC_DEADLINE {
                // Intel SDM vol. 3A §11.5.4.1: the timer disarms itself; the
                // MSR then reads 0 (as KVM does).
                self.s.tsc_deadline = 0;
            }
        }
        let lvt = Lvt::from_bits(self.s.lvt[LVT_TIMER]);
        if !lvt.masked() {
            self.request(lvt.vector(), Trigger::Edge);
        }
        true
    }

    /// IA32_TSC_DEADLINE read.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            self.s.tsc_deadline
        } else {
            0
        }
    }

    /// IA32_TSC_DEADLINE write (ignored unless in TSC-deadline mode).
    ///
    /// 0 disarms; a deadline already past fires at the next poll.
    pub fn set_tsc_deadline(&mut self, deadline: u64) -> WriteEffect {
        if self.timer_mode() != TIMER_TSC_DEADLINE || self.mode() == ApicMode::Disabled {
            return WriteEffect::None;
        }
        self.s.tsc_deadline = deadline;
        self.s.timer_deadline = deadline;
        self.s.timer_armed = deadline != 0;
        WriteEffect::TimerChanged
    }
}
