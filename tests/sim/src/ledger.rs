//! The delivery ledger of one vCPU: what was accepted for it and what its
//! guest saw, independent of the engine's own bookkeeping.
//!
//! Vectors are tracked **per instance**. A source (host device, IOAPIC
//! line, timer expiry, another vCPU's IPI) *requests* a vector when the
//! architecture says the target APIC accepts it, and tells the ledger
//! whether that vector was already pending (IRR, or the doorbell page or
//! IPI mailbox that feed it) at that moment, read from the real pages and
//! APIC by the simulator. Then (Intel SDM vol. 3A §11.8.4, spec §6):
//! - pending and an instance is owed: the request coalesces into it (an
//!   architected coalescing the ledger has verified);
//! - otherwise it is a new instance, owed one delivery.
//!
//! The guest model *debits* the oldest owed instance when its handler runs.
//! - A delivery with nothing owed is a duplicate (or an invented interrupt).
//! - An instance still owed when the run has drained is lost, whatever
//!   happened to the other instances of its vector (one instance in IRR and
//!   one in service may both be owed; a recall that merges them loses one).
//! - An instance handed to the host at a hand-back stays owed: the host's
//!   APIC must deliver it.
//!
//! NMIs keep the older rule: one pending plus one in service (spec §6), a
//! loss is a request after the last delivery that is never covered; #MC
//! likewise with one.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Most deliveries one vector can be owed (IRR + ISR).
const MAX_CREDIT: u8 = 2;

/// One vector's account.
#[derive(Clone, Copy, Default, Debug)]
struct Account {
    credit: u8,
    /// Time of the latest credited request (0: never).
    last_request: u64,
    /// Time of the latest delivery (0: never).
    last_delivery: u64,
    /// Whether the latest request is not yet covered by a delivery.
    uncovered: bool,
    /// Time of the oldest request not yet covered.
    first_uncovered: u64,
}

/// Whether a requested vector was already pending for its target when the
/// request was made (see `instances.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pending {
    /// Not pending: a new instance.
    No,
    /// Pending and not in service: the request coalesces.
    Yes,
    /// Pending only as a V_IRQ the guest may take during this run: if it
    /// does, the request was a new instance, else it coalesced. The engine
    /// cannot tell which (the take happens in hardware, mid-run), so one
    /// more delivery is allowed but not owed.
    Ambiguous,
}

/// What a debit found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Debit {
    /// The delivery matched a request it had already covered (a second
    /// owed instance).
    Ok,
    /// The delivery covered requests; the oldest was this many ticks ago.
    Latency(u64),
    /// Nothing was owed: a duplicate or invented delivery.
    Unrequested,
}

/// The ledger of one vCPU.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// Per vector: the request times of the owed instances, oldest first.
    vectors: Vec<VecDeque<u64>>,
    /// Per vector: one more delivery allowed, not owed ([`Pending::Ambiguous`]).
    optional: Vec<bool>,
    nmi: Account,
    mc: Account,
    /// Requests that coalesced into an owed delivery.
    pub coalesced: u64,
    /// Of those: vectors, coalesced into an owed instance pending in IRR.
    pub coalesced_verified: u64,
    /// Requests credited.
    pub requested: u64,
    /// Deliveries debited.
    pub delivered: u64,
    /// Longest time from a request to the delivery covering it.
    pub max_latency: u64,
    /// (vector, request time) of that longest wait.
    pub max_latency_of: (u8, u64),
    /// Sum of those times (for the mean).
    pub latency_sum: u64,
    /// Deliveries that covered a request.
    pub latency_count: u64,
    /// Owed instances discarded by an APIC reset ([`Ledger::discard_at_reset`]).
    pub discarded: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// Empty.
    pub fn new() -> Self {
        Self {
            vectors: (0..256).map(|_| VecDeque::new()).collect(),
            optional: alloc::vec![false; 256],
            nmi: Account::default(),
            mc: Account::default(),
            coalesced: 0,
            coalesced_verified: 0,
            requested: 0,
            delivered: 0,
            max_latency: 0,
            max_latency_of: (0, 0),
            latency_sum: 0,
            latency_count: 0,
            discarded: 0,
        }
    }

    fn credit_account(account: &mut Account, now: u64, cap: u8) -> bool {
        account.last_request = now;
        if !account.uncovered {
            account.first_uncovered = now;
        }
        account.uncovered = true;
        if account.credit < cap {
            account.credit = account.credit.saturating_add(1);
            true
        } else {
            false
        }
    }

    fn debit_account(account: &mut Account, now: u64) -> Debit {
        if account.credit == 0 {
            return Debit::Unrequested;
        }
        if account.uncovered {
            account.credit = account.credit.saturating_sub(1);
            account.last_delivery = now;
            account.uncovered = false;
            return Debit::Latency(now.saturating_sub(account.first_uncovered));
        }
        account.credit = account.credit.saturating_sub(1);
        account.last_delivery = now;
        Debit::Ok
    }

    /// `vector` was accepted for this vCPU at `now`; `pending`: whether it
    /// was already pending (not in service) in the target APIC or what
    /// feeds it. Returns the number of instances now owed.
    pub fn request(&mut self, vector: u8, now: u64, pending: Pending) -> usize {
        self.requested = self.requested.saturating_add(1);
        let (Some(owed), Some(optional)) = (
            self.vectors.get_mut(usize::from(vector)),
            self.optional.get_mut(usize::from(vector)),
        ) else {
            return 0;
        };
        match pending {
            Pending::Yes if !owed.is_empty() => {
                self.coalesced = self.coalesced.saturating_add(1);
                self.coalesced_verified = self.coalesced_verified.saturating_add(1);
            }
            Pending::Ambiguous if !owed.is_empty() => {
                self.coalesced = self.coalesced.saturating_add(1);
                *optional = true;
            }
            _ => owed.push_back(now),
        }
        owed.len()
    }

    /// The guest's handler for `vector` ran at `now`: the oldest owed
    /// instance is delivered.
    pub fn deliver(&mut self, vector: u8, now: u64) -> Debit {
        self.delivered = self.delivered.saturating_add(1);
        let debit = match self
            .vectors
            .get_mut(usize::from(vector))
            .and_then(VecDeque::pop_front)
        {
            Some(at) => Debit::Latency(now.saturating_sub(at)),
            None => match self.optional.get_mut(usize::from(vector)) {
                Some(optional) if *optional => {
                    *optional = false;
                    Debit::Ok
                }
                _ => Debit::Unrequested,
            },
        };
        self.note(debit, vector, now)
    }

    fn note(&mut self, debit: Debit, vector: u8, now: u64) -> Debit {
        if let Debit::Latency(t) = debit {
            if t > self.max_latency {
                self.max_latency_of = (vector, now.saturating_sub(t));
            }
            self.max_latency = self.max_latency.max(t);
            self.latency_sum = self.latency_sum.saturating_add(t);
            self.latency_count = self.latency_count.saturating_add(1);
        }
        debit
    }

    /// Whether any delivery of `vector` is owed.
    pub fn owed(&self, vector: u8) -> bool {
        self.vectors
            .get(usize::from(vector))
            .is_some_and(|a| !a.is_empty())
    }

    /// The request times of the owed instances of `vector`, oldest first.
    /// Deliveries take the oldest (instances of one vector cannot be told
    /// apart), so after a loss the instance left owed is the newest.
    pub fn owed_times(&self, vector: u8) -> impl Iterator<Item = u64> + '_ {
        self.vectors
            .get(usize::from(vector))
            .into_iter()
            .flat_map(|q| q.iter().copied())
    }

    /// Removes the oldest owed instance of `vector` (reported lost by the
    /// caller); its request time.
    pub fn write_off_oldest(&mut self, vector: u8) -> Option<u64> {
        self.vectors
            .get_mut(usize::from(vector))
            .and_then(VecDeque::pop_front)
    }

    /// How many instances of `vector` are owed.
    pub fn owed_count(&self, vector: u8) -> usize {
        self.vectors
            .get(usize::from(vector))
            .map_or(0, VecDeque::len)
    }

    /// An NMI was accepted.
    pub fn request_nmi(&mut self, now: u64) {
        self.requested = self.requested.saturating_add(1);
        if !Self::credit_account(&mut self.nmi, now, MAX_CREDIT) {
            self.coalesced = self.coalesced.saturating_add(1);
        }
    }

    /// The guest's NMI handler ran.
    pub fn deliver_nmi(&mut self, now: u64) -> Debit {
        self.delivered = self.delivered.saturating_add(1);
        let debit = Self::debit_account(&mut self.nmi, now);
        self.note(debit, 2, now)
    }

    /// A machine check was accepted.
    pub fn request_mc(&mut self, now: u64) {
        self.requested = self.requested.saturating_add(1);
        if !Self::credit_account(&mut self.mc, now, 1) {
            self.coalesced = self.coalesced.saturating_add(1);
        }
    }

    /// Whether a machine check is owed.
    pub fn mc_owed(&self) -> bool {
        self.mc.credit != 0
    }

    /// The guest's #MC handler ran.
    pub fn deliver_mc(&mut self, now: u64) -> Debit {
        self.delivered = self.delivered.saturating_add(1);
        let debit = Self::debit_account(&mut self.mc, now);
        self.note(debit, 18, now)
    }

    /// Instances requested before `cutoff` and never delivered (lost), as
    /// (vector, request time); NMI is reported as vector 2 and #MC as 18.
    pub fn lost(&self, cutoff: u64) -> Vec<(u8, u64)> {
        let mut out = Vec::new();
        for (vector, owed) in (0u8..=255).zip(self.vectors.iter()) {
            for at in owed.iter().filter(|at| **at < cutoff) {
                out.push((vector, *at));
            }
        }
        if self.nmi.uncovered && self.nmi.last_request < cutoff {
            out.push((2, self.nmi.last_request));
        }
        if self.mc.uncovered && self.mc.last_request < cutoff {
            out.push((18, self.mc.last_request));
        }
        out
    }

    /// One more delivery of `vector` is allowed but not owed (a request
    /// whose acceptance depends on an order nobody can observe).
    pub fn allow_one(&mut self, vector: u8) {
        if let Some(optional) = self.optional.get_mut(usize::from(vector)) {
            *optional = true;
        }
    }

    /// The APIC was reset (APIC_BASE EN = 0, or the vCPU's INIT): every
    /// owed vector instance is an architected discard, not a loss (Intel
    /// SDM vol. 3A §11.4.3: disabling clears IRR and ISR; §11.4.7.3 INIT).
    /// Delivered instances were debited already, so only undelivered ones
    /// go: those in IRR, and those still in what feeds it (mailbox,
    /// doorbell page), which real hardware would have put in IRR at
    /// acceptance. Returns how many were discarded. NMI and #MC are kept.
    pub fn discard_at_reset(&mut self) -> u64 {
        let mut n = 0u64;
        for owed in &mut self.vectors {
            n = n.saturating_add(owed.len() as u64);
            owed.clear();
        }
        for optional in &mut self.optional {
            *optional = false;
        }
        self.discarded = self.discarded.saturating_add(n);
        n
    }

    /// Whether anything is still owed.
    pub fn anything_owed(&self) -> bool {
        self.nmi.credit != 0 || self.mc.credit != 0 || self.vectors.iter().any(|a| !a.is_empty())
    }
}
