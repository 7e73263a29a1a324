//! Loom model check of the posted-interrupt mailbox (run with
//! `make loom`, i.e. `cargo test --release -p altinj-kernel --features loom --test loom`).
//!
//! Invariant checked under every interleaving: a posted vector is either
//! taken by a drain, or still in the PIR with ON set, and ON set implies a
//! poster reported "kick needed" after the owner's last drain. So no post
//! is ever stranded without a notification. And when the owner closes the
//! mailbox (hand-back) while posts race with it, every post is handed over
//! exactly once: taken by the closing drain or forwarded by its sender.
#![cfg(feature = "loom")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use altinj_kernel::mailbox::{Drained, Mailbox, Post, PostBits};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

fn merge(a: Drained, b: Drained) -> Drained {
    let mut out = a;
    for (o, w) in out.vectors.iter_mut().zip(b.vectors) {
        *o |= w;
    }
    out.nmi |= b.nmi;
    out
}

#[test]
fn two_posters_and_a_draining_owner_lose_nothing() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let kicks = Arc::new(AtomicUsize::new(0));
        let posters: Vec<_> = [(0x31u8, false), (0xF0u8, true)]
            .into_iter()
            .map(|(v, nmi)| {
                let mb = mb.clone();
                let kicks = kicks.clone();
                thread::spawn(move || {
                    let mut k = mb.post(v).kick();
                    if nmi {
                        k |= mb.post_nmi().kick();
                    }
                    if k {
                        kicks.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // The owner drains concurrently with the posts.
        let first = mb.drain();
        let kicks_seen_by_owner = kicks.load(Ordering::SeqCst);
        for p in posters {
            p.join().unwrap();
        }
        let outstanding = mb.outstanding();
        let second = mb.drain();
        // Whatever the first drain missed is announced by ON and a kick
        // sent after the owner's drain.
        if !second.is_empty() {
            assert!(outstanding, "posted vectors left without ON set");
            assert!(
                kicks.load(Ordering::SeqCst) > 0,
                "posted vectors left without a kick"
            );
        }
        let _ = kicks_seen_by_owner;
        let all = merge(first, second);
        assert!(all.contains(0x31));
        assert!(all.contains(0xF0));
        assert!(all.nmi);
        assert_eq!(all.iter().count(), 2);
        // Nothing is delivered twice.
        for v in first.iter() {
            assert!(!second.contains(v));
        }
        // Kicks never exceed posts, and at least one poster kicked.
        let k = kicks.load(Ordering::SeqCst);
        assert!((1..=2).contains(&k));
    });
}

/// A post as the engine's broadcast to idle vCPUs makes it: the
/// compare-exchange into an empty mailbox first, the general post when the
/// mailbox was not empty (`kernel/src/engine/fast.rs`).
fn post_as_broadcast(mb: &Mailbox, vector: u8) -> Post {
    let bits = PostBits::vector(vector).unwrap();
    match bits.word0_bit() {
        Some(bit) if mb.post_word0_to_empty(bit) => Post::Kick,
        Some(_) => mb.post_bits(bits),
        None => mb
            .post_bits_to_empty(bits)
            .unwrap_or_else(|| mb.post_bits(bits)),
    }
}

/// The broadcast's posts (one in word 0, one in word 1) racing with the
/// owner's drain: nothing lost, nothing twice, and what the drain missed is
/// announced by ON and a kick.
#[test]
fn broadcast_posts_into_an_empty_mailbox_lose_nothing() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let kicks = Arc::new(AtomicUsize::new(0));
        let posters: Vec<_> = [0x31u8, 0xF0u8]
            .into_iter()
            .map(|v| {
                let mb = mb.clone();
                let kicks = kicks.clone();
                thread::spawn(move || {
                    if post_as_broadcast(&mb, v).kick() {
                        kicks.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let first = mb.drain();
        for p in posters {
            p.join().unwrap();
        }
        let outstanding = mb.outstanding();
        let second = mb.drain();
        if !second.is_empty() {
            assert!(outstanding, "posted vectors left without ON set");
            assert!(
                kicks.load(Ordering::SeqCst) > 0,
                "posted vectors left without a kick"
            );
        }
        let all = merge(first, second);
        assert!(all.contains(0x31) && all.contains(0xF0));
        assert_eq!(all.iter().count(), 2);
        for v in first.iter() {
            assert!(!second.contains(v));
        }
        assert!((1..=2).contains(&kicks.load(Ordering::SeqCst)));
    });
}

/// The broadcast's posts racing with the hand-back's close: each handed
/// over exactly once.
#[test]
fn broadcast_posts_racing_with_the_close_are_handed_over_exactly_once() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let posters: Vec<_> = [0x31u8, 0xF0u8]
            .into_iter()
            .map(|v| {
                let mb = mb.clone();
                thread::spawn(move || (v, post_as_broadcast(&mb, v)))
            })
            .collect();
        let closed = mb.close();
        for p in posters {
            let (v, post) = p.join().unwrap();
            let forwarded = post == Post::Closed;
            assert!(closed.contains(v) ^ forwarded, "vector {v:#x}");
        }
        assert_eq!(post_as_broadcast(&mb, 0x32), Post::Closed);
        assert_eq!(post_as_broadcast(&mb, 0xF1), Post::Closed);
    });
}

#[test]
fn a_post_after_a_drain_kicks_again() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let p = {
            let mb = mb.clone();
            thread::spawn(move || mb.post(0x40).kick())
        };
        let d1 = mb.drain();
        let kicked = p.join().unwrap();
        // The first post into an empty mailbox always kicks.
        assert!(kicked);
        let d2 = mb.drain();
        assert!(d1.contains(0x40) ^ d2.contains(0x40));
        // A second post after everything was drained kicks once more.
        assert!(mb.post(0x41).kick());
        assert!(!mb.post(0x42).kick());
        let d3 = mb.drain();
        assert!(d3.contains(0x41) && d3.contains(0x42));
    });
}

#[test]
fn the_same_vector_posted_twice_during_a_drain_is_not_lost() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let kicks = Arc::new(AtomicUsize::new(0));
        let posters: Vec<_> = (0..2)
            .map(|_| {
                let mb = mb.clone();
                let kicks = kicks.clone();
                thread::spawn(move || {
                    if mb.post(0x31).kick() {
                        kicks.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let first = mb.drain();
        for p in posters {
            p.join().unwrap();
        }
        let outstanding = mb.outstanding();
        let second = mb.drain();
        assert!(first.contains(0x31) || second.contains(0x31));
        if second.contains(0x31) {
            assert!(outstanding, "left without ON");
        }
        assert!(kicks.load(Ordering::SeqCst) >= 1);
    });
}

/// Posts racing with the hand-back's close: each post ends up exactly once
/// either in what `close` took (the owner forwards it) or with its sender
/// (`Post::Closed`: the sender forwards it); nothing stays in the mailbox.
#[test]
fn posts_racing_with_the_close_are_handed_over_exactly_once() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        // 0x31 lives in PIR word 1 (bit, then ON), 0xF0 in word 0 (one RMW).
        let posters: Vec<_> = [0x31u8, 0xF0u8]
            .into_iter()
            .map(|v| {
                let mb = mb.clone();
                thread::spawn(move || (v, mb.post(v)))
            })
            .collect();
        let closed = mb.close();
        for p in posters {
            let (v, post) = p.join().unwrap();
            let forwarded = post == Post::Closed;
            assert!(
                closed.contains(v) ^ forwarded,
                "vector {v:#x}: taken by close {}, forwarded {forwarded}",
                closed.contains(v)
            );
        }
        // A post after the close is always forwarded by its sender.
        assert_eq!(mb.post(0x32), Post::Closed);
        assert_eq!(mb.post_nmi(), Post::Closed);
        assert!(mb.closed());
        // The owner never drains a closed mailbox, and a second close takes
        // nothing.
        assert!(mb.drain().is_empty());
        assert!(mb.close().is_empty());
    });
}

/// The owner's engine is created again (reopen) while posts race with it:
/// every post is handed over exactly once, forwarded by its sender (it saw
/// the mailbox closed) or drained by the owner after the reopen, and one
/// that is drained was announced by a kick.
#[test]
fn posts_racing_with_the_reopen_are_handed_over_exactly_once() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        mb.close();
        // 0x31 lives in PIR word 1 (bit, then ON), 0xF0 in word 0 (one RMW).
        let posters: Vec<_> = [0x31u8, 0xF0u8]
            .into_iter()
            .map(|v| {
                let mb = mb.clone();
                thread::spawn(move || (v, mb.post(v)))
            })
            .collect();
        mb.reopen();
        let results: Vec<_> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        let drained = mb.drain();
        let kicked = results.iter().any(|(_, post)| post.kick());
        for (v, post) in results {
            let forwarded = post == Post::Closed;
            assert!(
                drained.contains(v) ^ forwarded,
                "vector {v:#x}: drained {}, forwarded {forwarded} ({post:?})",
                drained.contains(v)
            );
        }
        assert!(drained.is_empty() || kicked, "drained posts without a kick");
        assert!(!mb.closed());
    });
}

/// The same vector posted twice in word 1 while the owner closes: at
/// least one hand-over, and at most one per post.
#[test]
fn the_same_vector_posted_twice_during_the_close_is_handed_over() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let posters: Vec<_> = (0..2)
            .map(|_| {
                let mb = mb.clone();
                thread::spawn(move || mb.post(0x31))
            })
            .collect();
        let closed = mb.close();
        let forwarded = posters
            .into_iter()
            .map(|p| p.join().unwrap())
            .filter(|p| *p == Post::Closed)
            .count();
        let handed = forwarded + usize::from(closed.contains(0x31));
        assert!((1..=2).contains(&handed), "handed over {handed} times");
    });
}

/// A kick that fails is marked; racing with another post and the owner's
/// drain, the posts left in the mailbox are never without a way out: a
/// successful kick (a later `Kick` or `RetryKick`), or the mark still set
/// for the failed sender's sweep.
#[test]
fn a_failed_kick_is_retried_or_left_marked() {
    loom::model(|| {
        let mb = Arc::new(Mailbox::new());
        let failing = {
            let mb = mb.clone();
            thread::spawn(move || {
                let p = mb.post(0x31);
                if p.kick() {
                    // The #HV IPI call fails.
                    mb.mark_kick_failed();
                }
                p
            })
        };
        let other = {
            let mb = mb.clone();
            thread::spawn(move || mb.post(0xF0))
        };
        let first = mb.drain();
        let failing = failing.join().unwrap();
        let other = other.join().unwrap();
        let left = mb.outstanding();
        if left {
            // `other`'s kick, if any, succeeded; `failing`'s did not.
            let kicked = other.kick();
            let _ = failing;
            assert!(
                kicked || mb.kick_failed(),
                "posts left with no kick and no mark: {failing:?} {other:?}"
            );
        }
        let second = mb.drain();
        // The drain clears the mark with ON (the mark was set before it).
        assert!(!mb.kick_failed());
        let all = merge(first, second);
        assert!(all.contains(0x31) && all.contains(0xF0));
    });
}
