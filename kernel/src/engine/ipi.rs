//! Guest IPIs: routing an ICR write over the fabric, posting, kicking,
//! retrying failed kicks and forwarding to handed-back vCPUs (spec §6).

use altinj_apic::{ApicMode, DeliveryMode, Destination, Ipi, Trigger};

use super::{Env, VcpuEngine, rare};
use crate::counters::bump;
use crate::fabric::VcpuShared;
use crate::kick::{KickReport, KickSet};
use crate::mailbox::{Post, PostBits};
use crate::platform::{Platform, forward_icr, notification_icr};
use crate::protocol::ResultCode;

impl VcpuEngine {
    /// Routes a guest IPI over every vCPU (spec §6): fixed and NMI to every
    /// target, lowest priority as fixed to exactly one target; INIT, SIPI,
    /// SMI and the reserved modes 011/111 are accepted (the ICR keeps the
    /// value) and dropped, counted and logged, never a #GP (TDX's rule).
    pub fn send_ipi<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        ipi: &Ipi,
    ) -> Result<(), ResultCode> {
        let nmi = match ipi.mode {
            DeliveryMode::Fixed => false,
            DeliveryMode::Nmi => true,
            DeliveryMode::LowestPriority => {
                self.send_lowest_priority(env, ipi);
                return Ok(());
            }
            dropped => {
                self.drop_icr(dropped);
                return Ok(());
            }
        };
        self.route(env, ipi.source, &ipi.destination, ipi.vector, nmi);
        Ok(())
    }

    /// An ICR delivery mode the guest may not use (spec §6): dropped.
    #[cold]
    #[inline(never)]
    fn drop_icr(&mut self, mode: DeliveryMode) {
        bump(&mut self.counters.icrs_refused);
        if rare(self.counters.icrs_refused) {
            log::warn!(
                "vCPU {}: guest ICR with delivery mode {:?} dropped (spec §6; {} so far)",
                self.index,
                mode,
                self.counters.icrs_refused
            );
        }
    }

    /// Lowest priority (spec §6 choice): delivered as fixed to exactly one
    /// of the matching targets, the one with the lowest APIC ID (KVM also
    /// picks a single target; task priorities are not compared).
    #[cold]
    #[inline(never)]
    fn send_lowest_priority<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, ipi: &Ipi) {
        let me = self.index();
        let mut lowest: Option<(u32, usize)> = None;
        env.fabric
            .for_each_target(me, ipi.source, &ipi.destination, |index, slot| {
                let id = slot.address().map_or(u32::MAX, |a| a.id);
                if lowest.is_none_or(|(best, _)| id < best) {
                    lowest = Some((id, index));
                }
            });
        let destination = match lowest {
            None => return bump(&mut self.counters.ipis_sent),
            Some((_, index)) if index == me => Destination::ToSelf,
            Some((id, _)) => Destination::Physical {
                id,
                x2apic: self.apic.mode() == ApicMode::X2Apic,
            },
        };
        self.route(env, ipi.source, &destination, ipi.vector, false);
    }

    /// Delivers `vector` (or an NMI) to every target of `destination`.
    #[inline]
    fn route<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        source: u32,
        destination: &Destination,
        vector: u8,
        nmi: bool,
    ) {
        bump(&mut self.counters.ipis_sent);
        let me = self.index();
        let mut to_self = false;
        let notification = self.notification_vector;
        // Local tallies, and no `self` in the closure: counters bumped in
        // memory per target would be reloaded and stored around every
        // atomic (a broadcast to 511).
        let mut walk = Walk::new();
        // Computed once; keeps the per-target closure small enough for
        // LLVM to inline it into the fabric's walk (a call per target costs
        // about 4 ns in a broadcast to 511).
        let bits = if nmi {
            Some(PostBits::NMI)
        } else {
            PostBits::vector(vector)
        };
        let per_target = |index: usize, slot: &VcpuShared| {
            if index == me {
                to_self = true;
                return;
            }
            let post = match bits {
                Some(bits) => slot.mailbox().post_bits(bits),
                None => Post::Covered,
            };
            walk.outcome(post, env.platform, index, slot, notification, vector, nmi);
        };
        env.fabric
            .for_each_target(me, source, destination, per_target);
        self.finish_walk(env, &mut walk);
        if to_self {
            if nmi {
                self.request_nmi();
            } else {
                let _ = self.apic.request(vector, Trigger::Edge);
            }
        }
    }

    /// Sends the kicks `walk` collected (see `kick`) and adds its tallies
    /// to the counters.
    #[inline]
    pub(super) fn finish_walk<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, walk: &mut Walk) {
        let report = walk.to_kick.send(
            env.platform,
            env.fabric,
            self.index(),
            self.notification_vector,
        );
        self.count_kicks(walk, &report);
    }

    /// Adds the tallies of `walk` and of the kicks sent for it (`report`)
    /// to the counters.
    #[inline]
    pub(super) fn count_kicks(&mut self, walk: &mut Walk, report: &KickReport) {
        if report.failed != 0 {
            walk.rare.batch_failed(report);
        }
        let c = &mut self.counters;
        c.kicks_sent = c
            .kicks_sent
            .saturating_add(u64::from(walk.kicks.wrapping_add(report.kicked)));
        c.kick_calls = c
            .kick_calls
            .saturating_add(u64::from(walk.calls.wrapping_add(report.calls)));
        c.kicks_suppressed = c
            .kicks_suppressed
            .saturating_add(u64::from(walk.suppressed));
        // One flag, not the fields: a wide load of fields just stored one
        // by one would stall on store forwarding.
        if walk.rare.any {
            self.count_ipi(&walk.rare);
        }
    }

    /// Adds the tallies of the rare outcomes (and of the kicks and posts
    /// they include) to the counters; failed kicks schedule the retry sweep;
    /// failures are logged, rate-limited.
    #[cold]
    #[inline(never)]
    pub(super) fn count_ipi(&mut self, t: &IpiTally) {
        let c = &mut self.counters;
        let add = |counter: &mut u64, n: u32| *counter = counter.saturating_add(u64::from(n));
        add(&mut c.kicks_sent, t.kicks);
        add(&mut c.kicks_suppressed, t.suppressed);
        add(&mut c.kick_retries, t.retries);
        add(&mut c.kick_calls, t.retries.wrapping_add(t.calls));
        add(&mut c.ipis_forwarded, t.forwarded);
        if t.kick_failed == 0 && t.forward_failed == 0 {
            return;
        }
        if t.kick_failed != 0 {
            self.kick_retry = true;
        }
        let before = c.platform_errors;
        add(
            &mut c.platform_errors,
            t.kick_failed.wrapping_add(t.forward_failed),
        );
        // Log when the count crossed a power of two.
        if before.checked_ilog2() != c.platform_errors.checked_ilog2() {
            log::warn!(
                "vCPU {}: #HV IPI failed: {} kicks (retried later), {} IPIs to handed-back vCPUs (lost)",
                self.index,
                t.kick_failed,
                t.forward_failed
            );
        }
    }

    /// Kicks `slot`'s VMPL0 (see [`try_kick`]), counted like a send's kick.
    fn kick<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, slot: &VcpuShared) {
        let mut tally = IpiTally {
            retries: 1,
            ..IpiTally::default()
        };
        tally.kick(try_kick(env.platform, slot, self.notification_vector), slot);
        self.count_ipi(&tally);
    }

    /// Retries every kick marked failed (after one of ours failed). Bounded
    /// by the fabric's size; runs only while a failure is outstanding.
    pub(super) fn retry_failed_kicks<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        self.kick_retry = false;
        let me = self.index();
        for index in 0..env.fabric.len() {
            let Some(slot) = env.fabric.slot(index) else {
                continue;
            };
            // The owner drains its own mailbox; a handed-back vCPU's VMPL0
            // no longer drains one.
            if index == me || slot.handed_back() {
                continue;
            }
            if slot.mailbox().take_kick_failed() {
                self.kick(env, slot);
            }
        }
    }

    /// Forwards what a closed mailbox took at the hand-back to the host
    /// (see [`forward`]).
    pub(super) fn forward_ipi<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        slot: &VcpuShared,
        vector: u8,
        nmi: bool,
    ) {
        let mut tally = IpiTally::default();
        if forward(env.platform, slot, vector, nmi) {
            tally.forwarded = 1;
        } else {
            tally.forward_failed = 1;
        }
        self.count_ipi(&tally);
    }
}

/// The outcomes of the posts of one guest IPI, kept in locals while the
/// targets are walked (the general routing and the fast broadcast share
/// it), then counted by `VcpuEngine::count_kicks`.
pub(super) struct Walk {
    /// The targets to kick, sent as few #HV IPI calls as possible once the
    /// walk is done (`kick`).
    pub(super) to_kick: KickSet,
    /// Kicks (and their calls) of targets beyond the kick set, made at once.
    kicks: u32,
    calls: u32,
    suppressed: u32,
    /// Failed kicks, retries, forwards: rare, kept out of line.
    rare: IpiTally,
}

impl Walk {
    #[inline]
    pub(super) const fn new() -> Self {
        Self {
            to_kick: KickSet::new(),
            kicks: 0,
            calls: 0,
            suppressed: 0,
            rare: IpiTally {
                any: false,
                kicks: 0,
                suppressed: 0,
                retries: 0,
                kick_failed: 0,
                calls: 0,
                forwarded: 0,
                forward_failed: 0,
            },
        }
    }

    /// What the post into `slot` (fabric index `index`) answered.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn outcome<P: Platform + ?Sized>(
        &mut self,
        post: Post,
        platform: &P,
        index: usize,
        slot: &VcpuShared,
        notification: u8,
        vector: u8,
        nmi: bool,
    ) {
        match post {
            Post::Kick if self.to_kick.add(index) => {}
            Post::Kick if try_kick(platform, slot, notification) => {
                self.kicks = self.kicks.wrapping_add(1);
                self.calls = self.calls.wrapping_add(1);
            }
            Post::Covered => self.suppressed = self.suppressed.wrapping_add(1),
            other => self
                .rare
                .rare_post(other, platform, slot, notification, vector, nmi),
        }
    }
}

/// What one guest IPI did, per target kind (see `VcpuEngine::count_ipi`).
#[derive(Clone, Copy, Default)]
pub(super) struct IpiTally {
    /// Something was recorded.
    any: bool,
    kicks: u32,
    suppressed: u32,
    retries: u32,
    /// Failed kick calls (a batched call counts once).
    kick_failed: u32,
    /// Kick calls not counted in `retries` (a failed kick beyond the
    /// kick set's capacity).
    calls: u32,
    forwarded: u32,
    forward_failed: u32,
}

impl IpiTally {
    /// The rare outcomes of a post: a kick that failed (`Kick` here means
    /// `try_kick` already failed once), a retry the post took the mark for
    /// (ON is still set after a failed kick, so no post would kick again),
    /// a closed mailbox (forward to the host).
    #[cold]
    #[inline(never)]
    pub(super) fn rare_post<P: Platform + ?Sized>(
        &mut self,
        post: Post,
        platform: &P,
        slot: &VcpuShared,
        notification: u8,
        vector: u8,
        nmi: bool,
    ) {
        self.any = true;
        match post {
            Post::Kick => {
                // A kick beyond the kick set that failed.
                self.calls = self.calls.wrapping_add(1);
                self.kick(false, slot);
            }
            Post::RetryKick => {
                self.retries = self.retries.wrapping_add(1);
                self.kick(try_kick(platform, slot, notification), slot);
            }
            Post::Closed => {
                if forward(platform, slot, vector, nmi) {
                    self.forwarded = self.forwarded.wrapping_add(1);
                } else {
                    self.forward_failed = self.forward_failed.wrapping_add(1);
                }
            }
            Post::Covered => self.suppressed = self.suppressed.wrapping_add(1),
        }
    }

    /// A batched kick call failed: its targets are marked already (see
    /// `KickSet::send`); the sender sweeps for the marks at its next run.
    #[cold]
    #[inline(never)]
    fn batch_failed(&mut self, report: &KickReport) {
        self.any = true;
        self.kick_failed = self.kick_failed.wrapping_add(report.failed_calls);
    }

    /// Records a kick's result; a failed one marks the target's mailbox
    /// (see [`crate::mailbox::Mailbox::mark_kick_failed`]).
    fn kick(&mut self, sent: bool, slot: &VcpuShared) {
        self.any = true;
        if sent {
            self.kicks = self.kicks.wrapping_add(1);
        } else {
            slot.mailbox().mark_kick_failed();
            self.kick_failed = self.kick_failed.wrapping_add(1);
        }
    }
}

/// Forwards a guest IPI (or NMI) to the host, which emulates `slot`'s APIC
/// since the hand-back: #HV IPI (GHCB 0x8000_0015) with the guest's vector
/// ([`forward_icr`]). True when the platform accepted the call; otherwise
/// nothing else can reach that vCPU and the IPI is lost (counted).
#[cold]
#[inline(never)]
fn forward<P: Platform + ?Sized>(platform: &P, slot: &VcpuShared, vector: u8, nmi: bool) -> bool {
    platform
        .hv_ipi(forward_icr(slot.host_apic_id(), vector, nmi))
        .is_ok()
}

/// Kicks `slot`'s VMPL0: #HV IPI (GHCB 0x8000_0015) with the notification
/// vector. True when the platform accepted the call.
pub(super) fn try_kick<P: Platform + ?Sized>(
    platform: &P,
    slot: &VcpuShared,
    notification: u8,
) -> bool {
    platform
        .hv_ipi(notification_icr(slot.host_apic_id(), notification))
        .is_ok()
}
