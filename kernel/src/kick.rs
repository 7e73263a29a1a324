//! The kicks of one guest ICR write, sent as few #HV IPI calls as x2APIC
//! ICRs allow (spec §4: the #HV IPI call takes an x2APIC ICR; on SEV-SNP
//! each call is a world switch).
//!
//! While it routes an IPI the sender collects every target whose post
//! needs a kick ([`crate::mailbox::Post::Kick`]: the mailbox went from
//! empty to non-empty) in a [`KickSet`], then [`KickSet::send`]s:
//! - one physical ICR when one target needs it (the single IPI, as before);
//! - one all-excluding-self shorthand ICR when every other slot of the
//!   fabric needs it (a broadcast to idle vCPUs) \[choice\]: a vCPU the
//!   fabric does not hold would get a spurious notification, which costs
//!   it one empty `before_run`;
//! - otherwise one logical ICR per x2APIC cluster of the targets' host APIC
//!   IDs (targets of one cluster that follow each other in the fabric go
//!   together), and a physical one for a cluster with a single target or a
//!   host ID beyond the logical range (ID >= 2^20).
//!
//! A failed call marks every target it was for
//! ([`crate::mailbox::Mailbox::mark_kick_failed`]) and is retried exactly
//! as a failed single kick is. The set holds fabric indexes below 512; the
//! sender kicks a target beyond that at once.

use crate::fabric::{Fabric, VcpuShared};
use crate::platform::{
    Platform, notification_icr, notification_icr_all_but_self, notification_icr_cluster,
};

/// Targets of one ICR write that need a kick, by fabric index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KickSet {
    words: [u64; WORDS],
    count: u32,
}

/// 512 fabric indexes.
const WORDS: usize = 8;

/// What [`KickSet::send`] did.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct KickReport {
    /// #HV IPI calls made.
    pub calls: u32,
    /// Targets kicked by a call that succeeded.
    pub kicked: u32,
    /// Targets whose call failed (marked for the retry).
    pub failed: u32,
    /// Calls that failed.
    pub failed_calls: u32,
}

/// One cluster's members being collected, with the range of set indexes
/// they came from (to mark them if the call fails).
#[derive(Clone, Copy)]
struct Batch {
    cluster: u32,
    members: u16,
    count: u32,
    first: usize,
    last: usize,
}

impl KickSet {
    /// Fabric indexes the set holds.
    pub(crate) const CAPACITY: usize = WORDS * 64;

    /// The empty set.
    #[inline]
    pub(crate) const fn new() -> Self {
        Self {
            words: [0; WORDS],
            count: 0,
        }
    }

    /// Adds fabric index `index`; false (and nothing added) when it is
    /// beyond the set's 512 indexes: the caller kicks it at once.
    #[inline]
    pub(crate) fn add(&mut self, index: usize) -> bool {
        match self.words.get_mut(index >> 6) {
            Some(word) => {
                *word |= 1 << (index & 63);
                self.count = self.count.wrapping_add(1);
                true
            }
            None => false,
        }
    }

    /// Adds the fabric indexes `first..first + n`; false (and nothing
    /// added) when the range goes beyond the set's 512 indexes.
    #[inline]
    pub(crate) fn add_range(&mut self, first: usize, n: usize) -> bool {
        let Some(end) = first.checked_add(n).filter(|&end| end <= Self::CAPACITY) else {
            return false;
        };
        let mut index = first;
        while index < end {
            let bit = index & 63;
            // Bits `bit..` of this word, cut at `end` (1 <= take <= 64,
            // so every operation below stays in range).
            let take = 64usize.wrapping_sub(bit).min(end.wrapping_sub(index));
            let ones = u64::MAX >> 64usize.wrapping_sub(take) << bit;
            if let Some(word) = self.words.get_mut(index >> 6) {
                *word |= ones;
            }
            index = index.wrapping_add(take);
        }
        // n <= 512 here: lossless.
        self.count = self.count.wrapping_add(n as u32);
        true
    }

    /// The indexes in the set, ascending.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words
            .iter()
            .zip((0usize..).step_by(64))
            .flat_map(|(&word, base)| {
                let mut bits = word;
                core::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    // trailing_zeros < 64: lossless, no overflow.
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits.wrapping_sub(1);
                    Some(base | bit)
                })
            })
    }

    /// Kicks every target in the set (see the module doc) from the vCPU
    /// at fabric index `sender`, with the notification vector.
    pub(crate) fn send<P: Platform + ?Sized>(
        &self,
        platform: &P,
        fabric: Fabric<'_>,
        sender: usize,
        notification: u8,
    ) -> KickReport {
        let mut report = KickReport::default();
        if self.count == 0 {
            return report;
        }
        let others = fabric.len().saturating_sub(1);
        if self.count > 1 && sender < fabric.len() && self.count as usize == others {
            return kick_all_but_self(platform, fabric, sender, notification);
        }
        let mut batch: Option<Batch> = None;
        for index in self.iter() {
            let Some(slot) = fabric.slot(index) else {
                continue;
            };
            let id = slot.host_apic_id();
            // ID[3:0] < 16: the shift is in range.
            let member = 1u16 << (id & 0xF);
            let cluster = id >> 4;
            if let Some(b) = batch.as_mut()
                && b.cluster == cluster
                && b.members & member == 0
            {
                b.members |= member;
                b.count = b.count.wrapping_add(1);
                b.last = index;
                continue;
            }
            if let Some(b) = batch.take() {
                self.flush(platform, fabric, &b, notification, &mut report);
            }
            if cluster > u32::from(u16::MAX) {
                // Beyond x2APIC logical addressing: physical, alone.
                single(platform, slot, notification, &mut report);
                continue;
            }
            batch = Some(Batch {
                cluster,
                members: member,
                count: 1,
                first: index,
                last: index,
            });
        }
        if let Some(b) = batch {
            self.flush(platform, fabric, &b, notification, &mut report);
        }
        report
    }

    /// One call for the members of `b`.
    fn flush<P: Platform + ?Sized>(
        &self,
        platform: &P,
        fabric: Fabric<'_>,
        b: &Batch,
        notification: u8,
        report: &mut KickReport,
    ) {
        if b.count == 1 {
            if let Some(slot) = fabric.slot(b.first) {
                single(platform, slot, notification, report);
            }
            return;
        }
        report.calls = report.calls.wrapping_add(1);
        // cluster <= u16::MAX: checked when the batch was opened.
        let icr = notification_icr_cluster(b.cluster as u16, b.members, notification);
        if platform.hv_ipi(icr).is_ok() {
            report.kicked = report.kicked.wrapping_add(b.count);
        } else {
            self.mark_failed(fabric, b.first, b.last);
            report.failed = report.failed.wrapping_add(b.count);
            report.failed_calls = report.failed_calls.wrapping_add(1);
        }
    }

    /// Marks the targets with indexes `first..=last` in the set: their
    /// kick failed.
    #[cold]
    fn mark_failed(&self, fabric: Fabric<'_>, first: usize, last: usize) {
        for index in self.iter().filter(|i| (first..=last).contains(i)) {
            if let Some(slot) = fabric.slot(index) {
                slot.mailbox().mark_kick_failed();
            }
        }
    }
}

/// One shorthand kick for every slot of `fabric` but `sender`'s (at least
/// two of them, each needing a kick); a failed call marks them all.
#[inline]
pub(crate) fn kick_all_but_self<P: Platform + ?Sized>(
    platform: &P,
    fabric: Fabric<'_>,
    sender: usize,
    notification: u8,
) -> KickReport {
    // At most the fabric's length (a slice): 32 bits hold any real count.
    let count = fabric.len().saturating_sub(1) as u32;
    if platform
        .hv_ipi(notification_icr_all_but_self(notification))
        .is_ok()
    {
        return KickReport {
            calls: 1,
            kicked: count,
            failed: 0,
            failed_calls: 0,
        };
    }
    all_but_self_failed(fabric, sender, count)
}

#[cold]
#[inline(never)]
fn all_but_self_failed(fabric: Fabric<'_>, sender: usize, count: u32) -> KickReport {
    for index in 0..fabric.len() {
        if index != sender
            && let Some(slot) = fabric.slot(index)
        {
            slot.mailbox().mark_kick_failed();
        }
    }
    KickReport {
        calls: 1,
        kicked: 0,
        failed: count,
        failed_calls: 1,
    }
}

/// One physical kick (the ICR a single kick has always used).
fn single<P: Platform + ?Sized>(
    platform: &P,
    slot: &VcpuShared,
    notification: u8,
    report: &mut KickReport,
) {
    report.calls = report.calls.wrapping_add(1);
    if platform
        .hv_ipi(notification_icr(slot.host_apic_id(), notification))
        .is_ok()
    {
        report.kicked = report.kicked.wrapping_add(1);
    } else {
        slot.mailbox().mark_kick_failed();
        report.failed = report.failed.wrapping_add(1);
        report.failed_calls = report.failed_calls.wrapping_add(1);
    }
}
