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
//!
//! Closing \[choice\]: when the owner's APIC is handed back to the host the
//! owner [`Mailbox::close`]s the mailbox (CLOSED, bit 50 of word 0, set by
//! the swap that drains word 0, before the other words are swapped). A
//! post that sees CLOSED in word 0 answers [`Post::Closed`] and its sender
//! forwards the vector to the host; a post into words 1-3 first takes its
//! own bit back, and only forwards when it still found it (otherwise the
//! closing drain took it). So every post is handed over exactly once
//! (`tests/loom.rs` checks it), and none is stranded in a mailbox nobody
//! drains any more.
//! [`Mailbox::reopen`] (the slot gets an engine again) clears CLOSED with
//! one RMW of word 0 and leaves the other words alone, so a post racing
//! with it is forwarded or stays posted, never wiped (loom-checked too).
//!
//! Failed kicks \[choice\]: when the #HV IPI for a post that reported
//! [`Post::Kick`] fails, ON stays set, so no later post would kick. The
//! sender sets KICK_FAILED (bit 51 of word 0) instead; the next post to
//! see it in the value its RMW of word 0 returns takes it (one RMW) and
//! retries ([`Post::RetryKick`]), and the failed sender sweeps the fabric
//! for marks at its next run. The owner's drain clears the mark with ON.
//! The common path pays nothing: the mark is tested in the word the post's
//! RMW already returned.

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

/// Where a post lands in the PIR: word and bit (rotated layout; word 0
/// also carries the NMI bit).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PostBits {
    word: usize,
    /// Bit index in the word (a shift, so the compiler sees a one-bit mask
    /// and can use a single `lock bts` for the word's RMW).
    shift: u8,
}

impl PostBits {
    /// An NMI.
    pub const NMI: Self = Self {
        word: 0,
        shift: NMI.trailing_zeros() as u8,
    };

    /// `vector`; `None` for the illegal vectors 0-15, which are never
    /// posted (spec §6).
    #[inline]
    pub fn vector(vector: u8) -> Option<Self> {
        if vector < FIRST_LEGAL {
            return None;
        }
        let pos = vector.wrapping_sub(ROTATION);
        Some(Self {
            word: usize::from(pos >> 6),
            shift: pos & 63,
        })
    }
}

impl PostBits {
    /// The bit in PIR word 0, when these bits live there (vectors 208-255,
    /// NMI): what [`Mailbox::post_word0_to_empty`] takes.
    #[inline]
    pub fn word0_bit(self) -> Option<u64> {
        (self.word == 0).then(|| 1u64 << (self.shift & 63))
    }
}

/// What a post asks of the sender.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Post {
    /// ON went 0 -> 1: the sender must kick the owner.
    Kick,
    /// Announced already (ON was set, or the vector was pending, or it is
    /// illegal and not posted): nothing more to do.
    Covered,
    /// Announced already, but the kick for it had failed
    /// ([`Mailbox::mark_kick_failed`]) and this post took the mark: the
    /// sender must retry the kick.
    RetryKick,
    /// The mailbox is closed: the post is not in it, and the sender must
    /// forward it to the host, which now emulates the owner's APIC.
    Closed,
}

impl Post {
    /// Whether the sender must kick the owner.
    pub fn kick(self) -> bool {
        matches!(self, Self::Kick | Self::RetryKick)
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
/// The owner's APIC went to the host: the mailbox is no longer drained
/// (bit 50 of PIR word 0, set only by [`Mailbox::close`]).
const CLOSED: u64 = 1 << 50;
/// The kick for the post that set ON failed (bit 51 of PIR word 0): the
/// next post that sees it retries the kick. Cleared with ON by the drain.
const KICK_FAILED: u64 = 1 << 51;
/// Bits of PIR word 0 that hold vectors 208-255.
const WORD0_VECTORS: u64 = (1 << 48) - 1;
/// Lowest vector a mailbox carries: 0-15 are illegal for the APIC (spec §6)
/// and the sender's APIC never sends them.
const FIRST_LEGAL: u8 = 16;

/// A post into PIR word `w` found the mailbox closed: whoever clears `bit`
/// owns the post. The closing drain swaps `w` after it set CLOSED, so either
/// it took the bit (handed over: [`Post::Covered`]) or the sender takes it
/// back here and forwards it ([`Post::Closed`]).
#[cold]
#[inline(never)]
fn take_back(w: &AtomicU64, bit: u64) -> Post {
    if w.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
        Post::Closed
    } else {
        Post::Covered
    }
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
    #[cfg(not(feature = "loom"))]
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
    #[cfg(feature = "loom")]
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

    /// Posts `vector`. Lock-free, callable from any vCPU. Vectors 0-15 are
    /// illegal (the sending APIC latches an ESR error instead) and are not
    /// posted ([`Post::Covered`]). [`Post::Closed`]: the mailbox was closed
    /// (the owner's APIC went to the host) and nothing is left in it; the
    /// caller forwards the vector to the host.
    #[inline]
    pub fn post(&self, vector: u8) -> Post {
        match PostBits::vector(vector) {
            Some(bits) => self.post_bits(bits),
            None => Post::Covered,
        }
    }

    /// Posts an NMI (collapses with one already posted); see
    /// [`Mailbox::post`] for the answer.
    #[inline]
    pub fn post_nmi(&self) -> Post {
        self.post_bits(PostBits::NMI)
    }

    /// Posts what `bits` names (see [`Mailbox::post`]); a sender posting one
    /// vector to many mailboxes computes `bits` once.
    #[inline]
    pub fn post_bits(&self, bits: PostBits) -> Post {
        let PostBits { word, shift } = bits;
        let bit = 1u64 << (shift & 63);
        // One inlined copy of the word-0 RMW for every kind of post.
        let word0_bits = if word == 0 {
            bit
        } else {
            match self.pir.get(word) {
                // Already pending: the post that set it announces it (or,
                // when closed, takes it back and forwards it).
                Some(w) if w.fetch_or(bit, Ordering::AcqRel) & bit != 0 => return Post::Covered,
                Some(_) => 0,
                None => return Post::Covered,
            }
        };
        match self.set_in_word0(word0_bits) {
            Post::Closed if word != 0 => match self.pir.get(word) {
                Some(w) => take_back(w, bit),
                None => Post::Covered,
            },
            other => other,
        }
    }

    /// [`Mailbox::post_bits`] for a mailbox that is probably empty (a
    /// broadcast to idle vCPUs): word 0 moves from 0 (what a drain leaves)
    /// to the new bits and ON in one compare-exchange, with nothing else
    /// to read or decide ([`Post::Kick`]). `None`, and nothing changed,
    /// when word 0 was not 0: post with [`Mailbox::post_bits`]. A vector
    /// of words 1-3 is set in its word first, as `post_bits` does; if it
    /// was set already the post is [`Post::Covered`], and if word 0 was not
    /// empty the post finishes as `post_bits` would.
    ///
    /// A successful compare-exchange is the `fetch_or` of `post_bits`
    /// returning 0, with the same ordering (the loom test runs both).
    #[inline]
    pub fn post_bits_to_empty(&self, bits: PostBits) -> Option<Post> {
        let PostBits { word, shift } = bits;
        let bit = 1u64 << (shift & 63);
        let w0 = self.pir.first()?;
        if word == 0 {
            return w0
                .compare_exchange(0, bit | ON, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                .then_some(Post::Kick);
        }
        let w = self.pir.get(word)?;
        if w.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return Some(Post::Covered);
        }
        if w0
            .compare_exchange(0, ON, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return Some(Post::Kick);
        }
        Some(self.announce(word, bit))
    }

    /// [`Mailbox::post_bits_to_empty`] for a bit of word 0
    /// ([`PostBits::word0_bit`]): true when posted (a [`Post::Kick`]),
    /// false, and nothing changed, when the mailbox was not empty.
    #[inline]
    pub fn post_word0_to_empty(&self, bit: u64) -> bool {
        self.pir.first().is_some_and(|w0| {
            w0.compare_exchange(0, bit | ON, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Announces `bit`, already set in PIR word `word` (1-3): ON in word 0,
    /// or, when closed, takes it back for the sender to forward.
    #[inline]
    fn announce(&self, word: usize, bit: u64) -> Post {
        match self.set_in_word0(0) {
            Post::Closed => match self.pir.get(word) {
                Some(w) => take_back(w, bit),
                None => Post::Covered,
            },
            other => other,
        }
    }

    /// Sets `bits` and ON in word 0.
    #[inline]
    fn set_in_word0(&self, bits: u64) -> Post {
        let Some(w0) = self.pir.first() else {
            return Post::Covered;
        };
        let before = w0.fetch_or(bits | ON, Ordering::AcqRel);
        if before & (CLOSED | KICK_FAILED) == 0 {
            // The common case: one test of the word the RMW returned.
            return if before & ON == 0 {
                Post::Kick
            } else {
                Post::Covered
            };
        }
        self.marked_word0(before)
    }

    /// [`Mailbox::set_in_word0`] found CLOSED or KICK_FAILED in `before`.
    #[cold]
    #[inline(never)]
    fn marked_word0(&self, before: u64) -> Post {
        if before & CLOSED != 0 {
            // Nobody drains a closed mailbox: what lands in word 0 is left
            // there (a later reopen clears it) and forwarded by the caller.
            return Post::Closed;
        }
        // A kick failed: whoever takes the mark kicks (again).
        let took = self.take_kick_failed();
        if before & ON == 0 {
            // A stale mark (the drain came between the failed kick and its
            // mark): this post kicks anyway.
            Post::Kick
        } else if took {
            Post::RetryKick
        } else {
            Post::Covered
        }
    }

    /// Records that the kick for the post that reported [`Post::Kick`]
    /// failed: ON stays set (the posts stay here), and the next post that
    /// sees the mark, or a sweep with [`Mailbox::take_kick_failed`],
    /// retries the kick. The owner's drain clears the mark with ON.
    pub fn mark_kick_failed(&self) {
        if let Some(w0) = self.pir.first() {
            w0.fetch_or(KICK_FAILED, Ordering::AcqRel);
        }
    }

    /// Takes the failed-kick mark: true for exactly one caller per mark,
    /// who must retry the kick. A plain load first: it is almost never set.
    pub fn take_kick_failed(&self) -> bool {
        self.pir.first().is_some_and(|w0| {
            w0.load(Ordering::Acquire) & KICK_FAILED != 0
                && w0.fetch_and(!KICK_FAILED, Ordering::AcqRel) & KICK_FAILED != 0
        })
    }

    /// Whether a failed kick waits for its retry.
    pub fn kick_failed(&self) -> bool {
        self.pir
            .first()
            .is_some_and(|w0| w0.load(Ordering::Acquire) & KICK_FAILED != 0)
    }

    /// Whether a post is outstanding (ON set, not closed). A hint only: the owner may
    /// skip [`Mailbox::drain`] when it is false, because a post not yet
    /// covered by ON still ends in a kick.
    #[inline]
    pub fn outstanding(&self) -> bool {
        self.pir
            .first()
            .is_some_and(|w0| w0.load(Ordering::Acquire) & (ON | CLOSED) == ON)
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
        let current = w0.load(Ordering::Acquire);
        if current == 0 || current & CLOSED != 0 {
            // Nothing announced, or closed (only [`Mailbox::close`] drains
            // a closing mailbox).
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

    /// Whether the mailbox was closed by [`Mailbox::close`].
    pub fn closed(&self) -> bool {
        self.pir
            .first()
            .is_some_and(|w0| w0.load(Ordering::Acquire) & CLOSED != 0)
    }

    /// Closes the mailbox for good and takes what was still posted (owner
    /// only; the APIC is going to the host). Word 0 is swapped to CLOSED
    /// first, then each other word is swapped to 0: a post whose bit landed
    /// before the swap of its word is in the returned set; any later post
    /// sees CLOSED and answers [`Post::Closed`], having taken its own bit
    /// back (see [`Mailbox::post`]), so every post is handed over exactly
    /// once, by the owner or by its sender (the loom test checks it).
    pub fn close(&self) -> Drained {
        let mut pir = [0u64; 4];
        let Some((w0, rest)) = self.pir.split_first() else {
            return Drained::default();
        };
        let first = w0.swap(CLOSED, Ordering::AcqRel);
        if first & CLOSED != 0 {
            // Already closed: nothing of ours is left.
            return Drained::default();
        }
        if let Some(p0) = pir.first_mut() {
            *p0 = first & WORD0_VECTORS;
        }
        for (dst, w) in pir.iter_mut().skip(1).zip(rest) {
            *dst = w.swap(0, Ordering::AcqRel);
        }
        Drained {
            vectors: natural(pir),
            nmi: first & NMI != 0,
        }
    }

    /// Reopens a closed mailbox (owner only, when its engine is created
    /// again for this slot), keeping every post that races with it.
    ///
    /// One swap of word 0 to 0 clears CLOSED together with whatever posts
    /// left there while closed (each of those senders saw CLOSED in the
    /// same RMW and forwarded its post). Words 1-3 are not touched: a bit
    /// there belongs to a sender between its word-N RMW and its word-0 RMW.
    /// If that RMW comes before the swap it sees CLOSED and takes the bit
    /// back; if after, it sees the mailbox open and the bit is an ordinary
    /// post (kick or covered). Plain stores here would wipe such a bit
    /// after its sender was told Kick/Covered (`tests/loom.rs` finds it).
    pub fn reopen(&self) {
        if let Some(w0) = self.pir.first() {
            w0.swap(0, Ordering::AcqRel);
        }
    }

    /// Test hook: the first step of a post of `vector` outside PIR word 0
    /// (the RMW of its own word), as a sender preempted before its word-0
    /// RMW has done it. True when the bit was newly set, i.e. when
    /// [`Mailbox::post_second_step`] must follow.
    #[cfg(any(test, feature = "ktests"))]
    pub fn post_first_step(&self, vector: u8) -> bool {
        let Some(PostBits { word, shift }) = PostBits::vector(vector).filter(|b| b.word != 0)
        else {
            return false;
        };
        let bit = 1u64 << (shift & 63);
        self.pir
            .get(word)
            .is_some_and(|w| w.fetch_or(bit, Ordering::AcqRel) & bit == 0)
    }

    /// Test hook: the rest of the post begun by [`Mailbox::post_first_step`].
    #[cfg(any(test, feature = "ktests"))]
    pub fn post_second_step(&self, vector: u8) -> Post {
        let Some(PostBits { word, shift }) = PostBits::vector(vector).filter(|b| b.word != 0)
        else {
            return Post::Covered;
        };
        match (self.set_in_word0(0), self.pir.get(word)) {
            (Post::Closed, Some(w)) => take_back(w, 1u64 << (shift & 63)),
            (other, _) => other,
        }
    }
}

/// Test-only observation (the simulator's per-instance ledger asks whether
/// a vector is already pending before it counts a new request as coalesced).
#[cfg(any(test, feature = "ktests"))]
impl Mailbox {
    /// What a drain would take now, read with loads only (changes nothing).
    pub fn peek(&self) -> Drained {
        let mut pir = [0u64; 4];
        for (dst, w) in pir.iter_mut().zip(self.pir.iter()) {
            *dst = w.load(Ordering::Acquire);
        }
        let first = pir.first().copied().unwrap_or(0);
        if let Some(p0) = pir.first_mut() {
            *p0 = first & WORD0_VECTORS;
        }
        Drained {
            vectors: natural(pir),
            nmi: first & NMI != 0,
        }
    }
}
