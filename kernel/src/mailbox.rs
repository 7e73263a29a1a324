//! Per-vCPU posted-interrupt mailbox (the cross-vCPU half of the engine).
//!
//! Modelled on Intel's posted-interrupt descriptor as TDX uses it (spec §7):
//! a 256-bit PIR, a one-bit pending NMI and an ON ("outstanding
//! notification") bit. Any vCPU may [`Mailbox::post`]; only the owner
//! [`Mailbox::drain`]s. A post reports "kick needed" only when it moved ON
//! from 0 to 1, i.e. the mailbox went from empty to non-empty since the
//! owner's last drain; every other post is covered by that kick.
//!
//! Layout \[choice\]: the 256 bits hold vectors rotated so that word 0 holds
//! vectors 208-255 (bits 0-47, where Linux puts its IPI and local vectors)
//! next to ON (bit 48) and NMI (bit 49), in the place of the never-posted
//! illegal vectors 0-15. A post of a vector 208-255 or an NMI is therefore
//! one atomic `fetch_or` of bit | ON; any other vector is a `fetch_or` of its
//! word, then one of ON in word 0 (always an RMW: a plain load of ON there
//! is not enough, because the drain only loads, not swaps, a word it finds
//! empty; the loom test finds the lost post). A post that finds its bit
//! already set coalesces and is done (nothing else to announce). The drain swaps word 0
//! (taking ON, NMI and vectors 208-255) first, then the other words.
//!
//! Why no post is lost (the loom test in `tests/loom.rs` checks it): every
//! access is an AcqRel read-modify-write, and the owner clears ON only by
//! the swap of word 0, before it swaps the other words. A post whose bit
//! lands after the drain's swap of its word synchronises with that drain's
//! earlier swap of word 0, so its ON update sees ON clear (and kicks) or a
//! later ON set by a poster that kicked; the drain after that kick swaps
//! word 0 after it and therefore sees the bit. A post that finds its bit
//! already set rides on the post that set it, which is collected by the
//! same drain. No locks: a broadcast is one or two RMWs per target.

use crate::sync::{AtomicU64, Ordering};

/// What one [`Mailbox::drain`] took: the posted vectors (bit `v & 63` of
/// word `v >> 6`) and whether an NMI was posted.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Drained {
    /// Posted vectors, 64 per word, vector 0 = bit 0 of word 0.
    pub vectors: [u64; 4],
    /// An NMI was posted (any number of NMIs collapse into one, spec §6).
    pub nmi: bool,
}

impl Drained {
    /// Whether nothing was posted.
    pub fn is_empty(&self) -> bool {
        !self.nmi && self.vectors.iter().all(|w| *w == 0)
    }

    /// Whether `vector` was posted.
    pub fn contains(&self, vector: u8) -> bool {
        let (word, bit) = split(vector);
        self.vectors.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The posted vectors in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        self.vectors
            .iter()
            .zip(0u8..)
            .flat_map(|(&w, word)| BitIter {
                bits: w,
                base: word.wrapping_mul(64),
            })
    }
}

/// Ascending set bits of one 64-bit word, offset by `base`.
struct BitIter {
    bits: u64,
    base: u8,
}

impl Iterator for BitIter {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        if self.bits == 0 {
            return None;
        }
        // trailing_zeros < 64 because bits != 0, so the cast is lossless.
        let bit = self.bits.trailing_zeros() as u8;
        self.bits &= self.bits.wrapping_sub(1);
        Some(self.base.wrapping_add(bit))
    }
}

/// Word index and bit mask of `vector` in [`Drained::vectors`] (natural order).
fn split(vector: u8) -> (usize, u64) {
    (usize::from(vector >> 6), 1u64 << (vector & 63))
}

/// First vector stored in word 0 of the PIR (see the module doc).
const ROTATION: u8 = 208;
/// ON: a post is outstanding (bit 48 of PIR word 0).
const ON: u64 = 1 << 48;
/// A pending NMI (bit 49 of PIR word 0).
const NMI: u64 = 1 << 49;
/// Bits of PIR word 0 that hold vectors 208-255.
const WORD0_VECTORS: u64 = (1 << 48) - 1;
/// Lowest vector a mailbox carries: 0-15 are illegal for the APIC (spec §6)
/// and the sender's APIC never sends them.
const FIRST_LEGAL: u8 = 16;

/// PIR word index and bit of `vector` (rotated layout).
fn slot(vector: u8) -> (usize, u64) {
    let pos = vector.wrapping_sub(ROTATION);
    (usize::from(pos >> 6), 1u64 << (pos & 63))
}

/// The PIR words (rotated layout, control bits removed) in natural vector
/// order: a 256-bit rotation left by 208 bits (3 words, then 16 bits).
fn natural(pir: [u64; 4]) -> [u64; 4] {
    let [a, b, c, d] = pir;
    // Rotate by 192 bits: position p moves to p + 192.
    let t = [b, c, d, a];
    // Then by 16 bits.
    [
        (t[0] << 16) | (t[3] >> 48),
        (t[1] << 16) | (t[0] >> 48),
        (t[2] << 16) | (t[1] >> 48),
        (t[3] << 16) | (t[2] >> 48),
    ]
}

/// A posted-interrupt descriptor: 256-bit PIR with ON and NMI folded into
/// word 0 (32 bytes; [`crate::VcpuShared`] puts it on one cache line with
/// what a sender reads, so a post touches one line).
#[derive(Debug)]
#[repr(C)]
pub struct Mailbox {
    pir: [AtomicU64; 4],
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Mailbox {
    /// An empty mailbox.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            pir: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        }
    }

    /// An empty mailbox (loom atomics are not const).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            pir: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        }
    }

    /// Posts `vector`; returns true when the owner must be kicked (ON went
    /// 0 -> 1). Lock-free, callable from any vCPU. Vectors 0-15 are illegal
    /// (the sending APIC latches an ESR error instead) and are not posted.
    pub fn post(&self, vector: u8) -> bool {
        if vector < FIRST_LEGAL {
            return false;
        }
        let (word, bit) = slot(vector);
        if word == 0 {
            return self.set_in_word0(bit);
        }
        let Some(w) = self.pir.get(word) else {
            return false;
        };
        if w.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            // Already pending: the post that set it announced it.
            return false;
        }
        self.set_in_word0(0)
    }

    /// Posts an NMI (collapses with one already posted); returns true when
    /// the owner must be kicked.
    pub fn post_nmi(&self) -> bool {
        self.set_in_word0(NMI)
    }

    /// Sets `bits` and ON in word 0; true when ON was clear.
    fn set_in_word0(&self, bits: u64) -> bool {
        match self.pir.first() {
            Some(w0) => w0.fetch_or(bits | ON, Ordering::AcqRel) & ON == 0,
            None => false,
        }
    }

    /// Whether a post is outstanding (ON set). A hint only: the owner may
    /// skip [`Mailbox::drain`] when it is false, because a post not yet
    /// covered by ON still ends in a kick.
    pub fn outstanding(&self) -> bool {
        self.pir
            .first()
            .is_some_and(|w0| w0.load(Ordering::Acquire) & ON != 0)
    }

    /// Takes everything posted (owner only): swaps word 0 (ON, NMI, vectors
    /// 208-255) first, then each other word, so a post racing with the
    /// drain either lands in this drain or kicks again.
    pub fn drain(&self) -> Drained {
        let mut pir = [0u64; 4];
        let Some((w0, rest)) = self.pir.split_first() else {
            return Drained::default();
        };
        // Bits of word 0 are only ever set together with ON, so a zero word
        // 0 means nothing is announced; a post still on its way kicks.
        if w0.load(Ordering::Acquire) == 0 {
            return Drained::default();
        }
        let first = w0.swap(0, Ordering::AcqRel);
        if first & ON == 0 {
            return Drained::default();
        }
        if let Some(p0) = pir.first_mut() {
            *p0 = first & WORD0_VECTORS;
        }
        for (dst, w) in pir.iter_mut().skip(1).zip(rest) {
            // A plain load first: most words are empty, and a load avoids a
            // locked RMW on them. A bit set after this load finds ON clear
            // (word 0 was swapped before) and kicks again.
            if w.load(Ordering::Acquire) != 0 {
                *dst = w.swap(0, Ordering::AcqRel);
            }
        }
        Drained {
            vectors: natural(pir),
            nmi: first & NMI != 0,
        }
    }
}
