//! Fast paths for the common, simple cases (issue 14): each tests its cheap
//! conditions first and does exactly what the general path would do in
//! that case; everything else takes the general path.
//! `kernel/tests/fast_paths.rs` runs random sequences through both (the
//! `*_without_fast_paths` twins) and compares everything observable.
//!
//! | case | fast path |
//! |---|---|
//! | x2APIC EOI write of 0 (also through `handle_apic_call`) | [`VcpuEngine::fast_eoi`]: the APIC's EOI, `eoi_done` only for a host level vector |
//! | x2APIC ICR: fixed, legal vector, one physical ID held by the slot of that index in x2APIC mode | [`VcpuEngine::write_icr`]: one post, one kick decision |
//! | x2APIC ICR: fixed, legal vector, all excluding self | [`VcpuEngine::fast_broadcast`]: one compare-exchange per idle target, one shorthand kick |
//! | `before_run`: nothing or one edge vector in the descriptor | [`VcpuEngine::collect_host_fast`] (with the cheap tests of `collect` and `present`) |

use core::sync::atomic::Ordering;

use altinj_apic::{ApicMode, FastIcr};
use altinj_doorbell::DescriptorStatus;

use super::ipi::{IpiTally, Walk, try_kick};
use super::{Env, VcpuEngine};
use crate::counters::bump;
use crate::fabric::VcpuShared;
use crate::kick::{self, KickSet};
use crate::mailbox::{Post, PostBits};
use crate::platform::Platform;
use crate::protocol::ResultCode;

/// x2APIC EOI and ICR MSRs.
pub(super) const MSR_EOI: u64 = altinj_apic::MSR_EOI as u64;
pub(super) const MSR_ICR: u64 = altinj_apic::MSR_ICR as u64;

impl VcpuEngine {
    /// WRITE_REGISTER(EOI, 0) in x2APIC mode; false (nothing done) in any
    /// other mode. The general path: `write_msr` -> `WriteEffect::Eoi` ->
    /// `eoi_done`, which does nothing unless the vector is a host level one.
    #[inline(always)]
    pub(super) fn fast_eoi<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) -> bool {
        if self.apic.mode() != ApicMode::X2Apic {
            return false;
        }
        // The host's specific EOI only for a vector it presented as level
        // (the gate of `eoi_done`, tested inline).
        if let Some(info) = self.apic.eoi()
            && self.host_level.contains(info.vector)
        {
            self.eoi_done(env, info);
        }
        true
    }

    /// WRITE_REGISTER(ICR, `icr`). Fast for a fixed IPI to one physical
    /// ID (recognised by `LocalApic::write_icr_fast`) when the
    /// slot at index `id` is another vCPU whose x2APIC ID is `id` (the
    /// usual layout); otherwise the general path (which writes the ICR
    /// again: the same value, no other effect).
    #[inline(never)]
    pub(super) fn write_icr<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        icr: u64,
    ) -> Result<(), ResultCode> {
        let (id, vector) = match self.apic.write_icr_fast(icr) {
            Some(FastIcr::Physical { id, vector }) => (id, vector),
            Some(FastIcr::AllButSelf { vector }) => return self.fast_broadcast(env, icr, vector),
            None => return self.write_register_general(env, MSR_ICR, icr),
        };
        let index = id as usize;
        let bits = PostBits::vector(vector);
        let target = env
            .fabric
            .slot(index)
            .filter(|slot| index != self.index() && slot.is_x2apic_id(id));
        let (Some(slot), Some(bits)) = (target, bits) else {
            return self.write_register_general(env, MSR_ICR, icr);
        };
        bump(&mut self.counters.ipis_sent);
        let notification = self.notification_vector;
        match slot.mailbox().post_bits(bits) {
            Post::Covered => bump(&mut self.counters.kicks_suppressed),
            Post::Kick if try_kick(env.platform, slot, notification) => {
                bump(&mut self.counters.kicks_sent);
                bump(&mut self.counters.kick_calls);
            }
            other => {
                let mut tally = IpiTally::default();
                tally.rare_post(other, env.platform, slot, notification, vector, false);
                self.count_ipi(&tally);
            }
        }
        Ok(())
    }

    /// WRITE_REGISTER(ICR, `icr`) of a fixed all-excluding-self IPI
    /// (already stored). The general walk (`Fabric::for_each_target`,
    /// `Scan::All`) in two runs around the sender, each posted into empty
    /// mailboxes with one compare-exchange per target and nothing else
    /// (`Mailbox::post_bits_to_empty`, `KickSet::add_range`) until a
    /// target is not simply present with an empty mailbox: that one and
    /// the rest of the run take the general post. A fabric larger than
    /// the kick set takes the general path.
    #[inline]
    fn fast_broadcast<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        icr: u64,
        vector: u8,
    ) -> Result<(), ResultCode> {
        let me = self.index();
        // Empty for a lookup that is not one table: the general walk.
        let slots = env.fabric.table();
        let (Some(bits), Some(before), Some(after)) = (
            PostBits::vector(vector),
            slots.get(..me),
            slots.get(me.wrapping_add(1)..),
        ) else {
            return self.write_register_general(env, MSR_ICR, icr);
        };
        if slots.len() > KickSet::CAPACITY {
            return self.write_register_general(env, MSR_ICR, icr);
        }
        bump(&mut self.counters.ipis_sent);
        let notification = self.notification_vector;
        let (n0, stop0) = post_to_empty(before, bits);
        let (n1, stop1) = if n0 == before.len() {
            post_to_empty(after, bits)
        } else {
            (0, Stop::NotStarted)
        };
        if n1 == after.len() && n0 == before.len() && slots.len() > 2 {
            // Every other vCPU was idle: one shorthand kick (`KickSet::send`
            // would choose the same).
            let report = kick::kick_all_but_self(env.platform, env.fabric, me, notification);
            if report.failed == 0 {
                let c = &mut self.counters;
                c.kicks_sent = c.kicks_sent.saturating_add(u64::from(report.kicked));
                bump(&mut c.kick_calls);
            } else {
                self.count_kicks(&mut Walk::new(), &report);
            }
            return Ok(());
        }
        let mut walk = Walk::new();
        for (first, run, n, stop) in [
            (0, before, n0, stop0),
            (me.wrapping_add(1), after, n1, stop1),
        ] {
            let (mut index, mut rest, mut n, mut stop) = (first, run, n, stop);
            loop {
                // n <= 512: add_range cannot fail (capacity checked above).
                walk.to_kick.add_range(index, n);
                let Some((slot, later)) = rest.get(n..).and_then(<[_]>::split_first) else {
                    break;
                };
                let at = index.wrapping_add(n);
                match stop {
                    // Not reached by a broadcast: skipped, as the general walk does.
                    Stop::Absent => {
                        index = at.wrapping_add(1);
                        rest = later;
                        (n, stop) = post_to_empty(rest, bits);
                        continue;
                    }
                    Stop::Posted(post) => {
                        let post = post.unwrap_or_else(|| slot.mailbox().post_bits(bits));
                        walk.outcome(post, env.platform, at, slot, notification, vector, false);
                    }
                    // The run before the sender stopped: this one was not
                    // started; its first target takes the general post too.
                    Stop::NotStarted => {
                        if slot.takes_broadcast() {
                            let post = slot.mailbox().post_bits(bits);
                            walk.outcome(post, env.platform, at, slot, notification, vector, false);
                        }
                    }
                    Stop::End => {}
                }
                // A mailbox was not empty: the rest of the run takes the
                // general post (one RMW, no compare-exchange that fails).
                for (i, slot) in (at.wrapping_add(1)..).zip(later) {
                    if slot.takes_broadcast() {
                        let post = slot.mailbox().post_bits(bits);
                        walk.outcome(post, env.platform, i, slot, notification, vector, false);
                    }
                }
                break;
            }
        }
        self.finish_walk(env, &mut walk);
        Ok(())
    }
}

impl VcpuEngine {
    /// The host's part of `collect` in the two common cases, as
    /// `Descriptor::consume` and `accept_host` would do them: nothing
    /// posted (one load), or one edge vector and nothing else (the one
    /// compare-exchange `consume` uses for it). False, with nothing taken,
    /// for anything else: the caller consumes in full.
    #[inline]
    pub(super) fn collect_host_fast<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) -> bool {
        // Every status bit `consume` takes or acts on.
        const TAKEN: u32 = DescriptorStatus::VECTOR_MASK
            | DescriptorStatus::NMI
            | DescriptorStatus::MC
            | DescriptorStatus::LEVEL
            | DescriptorStatus::MULTIPLE
            | DescriptorStatus::IPI
            | DescriptorStatus::VECTOR_31;
        let Ok(descriptor) = env.doorbell.descriptor(self.guest_vmpl) else {
            return false;
        };
        let status = descriptor.status.load(Ordering::Acquire);
        if status & TAKEN == 0 {
            return true;
        }
        if status & TAKEN & !DescriptorStatus::VECTOR_MASK != 0 {
            return false;
        }
        // One vector, nothing else: taken by clearing it.
        let taken = status & !DescriptorStatus::VECTOR_MASK;
        if descriptor
            .status
            .compare_exchange(status, taken, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // Lossless: masked to 8 bits.
        let vector = (status & DescriptorStatus::VECTOR_MASK) as u8;
        if altinj_doorbell::is_legal_vector(vector) {
            self.host_vector(vector, altinj_apic::Trigger::Edge);
        } else {
            bump(&mut self.counters.host_vectors_rejected);
        }
        true
    }
}

/// Why [`post_to_empty`] stopped.
#[derive(Clone, Copy)]
enum Stop {
    /// Not run (an earlier run stopped).
    NotStarted,
    /// At the end of the run.
    End,
    /// At a slot a broadcast does not reach (absent or disabled).
    Absent,
    /// At a slot whose post was not a plain kick: its answer, or `None`
    /// when nothing was posted yet (`Mailbox::post_bits_to_empty`).
    Posted(Option<Post>),
}

/// Posts `bits` into each slot of `run` while it is reached by a broadcast
/// and its mailbox is empty; how many were posted (each needs a kick),
/// and why it stopped. The per-target work of a broadcast to idle vCPUs:
/// a load, a compare-exchange, a count.
#[inline]
fn post_to_empty(run: &[VcpuShared], bits: PostBits) -> (usize, Stop) {
    if run.is_empty() {
        return (0, Stop::End);
    }
    match bits.word0_bit() {
        Some(bit) => post_word0_to_empty(run, bit),
        None => post_other_to_empty(run, bits),
    }
}

/// [`post_to_empty`] for a bit of PIR word 0 (vectors 208-255, where Linux
/// keeps its IPIs; NMI): one compare-exchange per target.
#[inline(never)]
fn post_word0_to_empty(run: &[VcpuShared], bit: u64) -> (usize, Stop) {
    // Four targets per round: the loop's own test of the end is paid once
    // per four (the loop is the whole cost of a broadcast).
    let mut quads = run.chunks_exact(4);
    let mut done = 0usize;
    let one = |slot: &VcpuShared| {
        if !slot.takes_broadcast() {
            Some(Stop::Absent)
        } else if slot.mailbox().post_word0_to_empty(bit) {
            None
        } else {
            Some(Stop::Posted(None))
        }
    };
    for quad in quads.by_ref() {
        if let [a, b, c, d] = quad {
            if let Some(stop) = one(a) {
                return (done, stop);
            }
            if let Some(stop) = one(b) {
                return (done | 1, stop);
            }
            if let Some(stop) = one(c) {
                return (done | 2, stop);
            }
            if let Some(stop) = one(d) {
                return (done | 3, stop);
            }
        }
        done = done.wrapping_add(4);
    }
    for slot in quads.remainder() {
        if let Some(stop) = one(slot) {
            return (done, stop);
        }
        done = done.wrapping_add(1);
    }
    (done, Stop::End)
}

/// [`post_to_empty`] for a vector of PIR words 1-3.
#[inline(never)]
fn post_other_to_empty(run: &[VcpuShared], bits: PostBits) -> (usize, Stop) {
    // Two targets per round: the loop's own test of the end is paid once
    // per pair.
    let mut pairs = run.chunks_exact(2);
    let mut done = 0usize;
    for pair in pairs.by_ref() {
        if let [a, b] = pair {
            if let Some(stop) = try_post_to_empty(a, bits) {
                return (done, stop);
            }
            if let Some(stop) = try_post_to_empty(b, bits) {
                return (done | 1, stop);
            }
        }
        done = done.wrapping_add(2);
    }
    if let [last] = pairs.remainder() {
        if let Some(stop) = try_post_to_empty(last, bits) {
            return (done, stop);
        }
        done = done.wrapping_add(1);
    }
    (done, Stop::End)
}

/// One target of [`post_to_empty`]: `None` when posted with a kick.
#[inline(always)]
fn try_post_to_empty(slot: &VcpuShared, bits: PostBits) -> Option<Stop> {
    if !slot.takes_broadcast() {
        return Some(Stop::Absent);
    }
    match slot.mailbox().post_bits_to_empty(bits) {
        Some(Post::Kick) => None,
        other => Some(Stop::Posted(other)),
    }
}
