//! The APIC timer: one-shot, periodic and TSC-deadline (Intel SDM vol. 3A
//! §11.5.4, §11.5.4.1).
//!
//! One state drives everything: the count started from `timer_start_count`
//! at `timer_start` (0: stopped), or `tsc_deadline` in TSC-deadline mode.
//! The current count, the deadline and the expiries are all derived from it,
//! so they cannot disagree. Time moves only through the `now` of a call:
//! every call that takes `now` first delivers what expired up to `now`
//! ([`LocalApic::poll_timer`]), so a read past a deadline that shows a
//! current count of 0 also shows the vector in IRR, and after such a call
//! [`LocalApic::next_timer_deadline`] is `None` or after `now`.

use crate::lapic::LocalApic;
use crate::regs::*;
use crate::types::*;

impl LocalApic {
    /// Stops every count and the TSC deadline (and, as KVM does, clears the
    /// initial count).
    pub(crate) fn disarm_timer(&mut self) {
        self.s.timer_initial = 0;
        self.s.timer_start_count = 0;
        self.s.tsc_deadline = 0;
    }

    #[inline]
    pub(crate) fn timer_mode(&self) -> u8 {
        Lvt::from_bits(self.s.lvt[LVT_TIMER]).timer_mode()
    }

    /// `now` ticks per timer count: ticks per bus cycle times the divisor.
    pub(crate) fn count_period(&self) -> u64 {
        u64::from(self.s.config.ticks_per_bus_cycle.max(1))
            .saturating_mul(u64::from(timer_divisor(self.s.timer_divide)))
    }

    /// When the running count reaches 0; `None` when stopped, or when that
    /// is past the end of the `now` range (it can never be reached; the
    /// count still runs).
    fn count_deadline(&self) -> Option<u64> {
        if self.s.timer_start_count == 0 {
            return None;
        }
        u64::from(self.s.timer_start_count)
            .checked_mul(self.count_period())
            .and_then(|d| self.s.timer_start.checked_add(d))
    }

    /// Current count (Intel SDM vol. 3A §11.5.4) at `now`, from the timer
    /// state: counts down from `timer_start_count` at `timer_start`; 0 when
    /// stopped and in TSC-deadline mode. Past 0 (an expiry not yet
    /// delivered), one-shot reads 0 and periodic the reloaded count, which
    /// is what the delivery will leave.
    pub(crate) fn current_count(&self, now: u64) -> u32 {
        let mode = self.timer_mode();
        let start_count = u64::from(self.s.timer_start_count);
        if mode == TIMER_TSC_DEADLINE || start_count == 0 {
            return 0;
        }
        let counts = now
            .saturating_sub(self.s.timer_start)
            .checked_div(self.count_period())
            .unwrap_or(0);
        if let Some(left) = start_count.checked_sub(counts).filter(|l| *l > 0) {
            return left as u32;
        }
        let initial = u64::from(self.s.timer_initial);
        if mode == TIMER_PERIODIC && initial != 0 {
            let past = counts.saturating_sub(start_count);
            let into = past.checked_rem(initial).unwrap_or(0);
            return initial.saturating_sub(into) as u32;
        }
        0
    }

    /// (Re)starts one-shot/periodic counting from `count` at `now`; 0 stops.
    pub(crate) fn start_count(&mut self, count: u32, now: u64) {
        self.s.timer_start = now;
        self.s.timer_start_count = count;
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
        if self.s.timer_start_count != 0 && self.timer_mode() != TIMER_TSC_DEADLINE {
            // As KVM does, the current count carries on at the new rate
            // (the part of a count already elapsed is dropped).
            self.start_count(count, now);
        }
        WriteEffect::TimerChanged
    }

    /// The LVT timer is being set to `new_mode` (after the expiries due at
    /// `now` were delivered in the old mode).
    ///
    /// Spec §6 choice: entering or leaving TSC-deadline disarms. One-shot
    /// <-> periodic: the count carries on, a running count keeps its next
    /// expiry and only what happens after it changes; a stopped count (an
    /// expired one-shot) stays stopped: the current count reads 0 and
    /// nothing fires until a new initial count is written.
    pub(crate) fn timer_mode_change(&mut self, old_mode: u8, new_mode: u8) {
        if old_mode != new_mode
            && (old_mode == TIMER_TSC_DEADLINE || new_mode == TIMER_TSC_DEADLINE)
        {
            self.disarm_timer();
        }
    }

    /// Whether the timer may be armed: false only when
    /// [`LocalApic::next_timer_deadline`] is `None` (no count running, no
    /// TSC deadline set), in a few instructions.
    #[inline]
    pub fn timer_may_be_armed(&self) -> bool {
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            self.s.tsc_deadline != 0
        } else {
            self.s.timer_start_count != 0
        }
    }

    /// When the timer next fires, in `now` ticks; `None` when not armed.
    #[inline]
    pub fn next_timer_deadline(&self) -> Option<u64> {
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            (self.s.tsc_deadline != 0).then_some(self.s.tsc_deadline)
        } else {
            self.count_deadline()
        }
    }

    /// Delivers the expiry due at `now`, if any: sets the LVT timer vector
    /// unless masked, reloads a periodic count, stops a one-shot count and
    /// disarms a TSC deadline. Returns whether the timer expired.
    ///
    /// Every call that takes `now` does this first, so the embedder calls
    /// it only when its platform timer for [`LocalApic::next_timer_deadline`]
    /// fires. A masked timer still expires (and returns true) without an
    /// interrupt (Intel SDM vol. 3A §11.5.4). Periodic expiries missed by a
    /// late poll coalesce into one interrupt; the period stays aligned to
    /// the first start.
    pub fn poll_timer(&mut self, now: u64) -> bool {
        let Some(deadline) = self.next_timer_deadline() else {
            return false;
        };
        if now < deadline {
            return false;
        }
        let mode = self.timer_mode();
        if mode == TIMER_TSC_DEADLINE {
            // Intel SDM vol. 3A §11.5.4.1: the timer disarms itself; the
            // MSR then reads 0 (as KVM does).
            self.s.tsc_deadline = 0;
        } else if mode == TIMER_PERIODIC && self.s.timer_initial != 0 {
            let full = u64::from(self.s.timer_initial).saturating_mul(self.count_period());
            let late = now.saturating_sub(deadline);
            let skipped = late.checked_div(full).unwrap_or(0);
            // skipped * full <= late, so the reload time is at most `now`.
            let reload = deadline.saturating_add(skipped.saturating_mul(full));
            self.start_count(self.s.timer_initial, reload);
        } else {
            // One-shot (or periodic with no initial count to reload): the
            // count stopped at 0 (§11.5.4).
            self.start_count(0, deadline);
        }
        let lvt = Lvt::from_bits(self.s.lvt[LVT_TIMER]);
        if !lvt.masked() {
            let _ = self.request(lvt.vector(), Trigger::Edge);
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

    /// IA32_TSC_DEADLINE write at `now` (ignored unless in TSC-deadline
    /// mode; Intel SDM vol. 3A §11.5.4.1).
    ///
    /// 0 disarms; a deadline at or before `now` fires at once.
    pub fn set_tsc_deadline(&mut self, deadline: u64, now: u64) -> WriteEffect {
        self.poll_timer(now);
        if self.timer_mode() != TIMER_TSC_DEADLINE || self.mode() == ApicMode::Disabled {
            return WriteEffect::None;
        }
        self.s.tsc_deadline = deadline;
        self.poll_timer(now);
        WriteEffect::TimerChanged
    }
}
