//! Loom models of the engine's sequencing around the lock-free parts (run
//! with `cargo test --release -p altinj-kernel --features loom --test
//! loom_engine`; `make loom` does).
//!
//! The engine itself is not built under loom (it is single-threaded per
//! vCPU); what races with it are other vCPUs' posts into its mailbox and the
//! host's posts into its doorbell page. Each model runs the engine's steps
//! in the order `VcpuEngine` performs them (the comments name the code),
//! with the real `Mailbox` and `DoorbellPage`, against concurrent senders,
//! and checks that every post reaches exactly one place that delivers it:
//! - the hand-back (`hand_back`): drain the mailbox into the APIC, write
//!   the APIC back into the descriptor, disable-AI, then close the mailbox
//!   and forward what the close took; a sender that finds it closed
//!   forwards its post itself;
//! - a failed disable-AI: the mailbox stays open and the writeback is taken
//!   back; nothing is forwarded, nothing stranded;
//! - the failed-kick sweep (`retry_failed_kicks`): a sender whose #HV IPI
//!   failed marks the target; a later post or the sender's sweep retries;
//! - close against posts of vectors and NMIs.
#![cfg(feature = "loom")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use altinj_doorbell::{DoorbellPage, HandoffState};
use altinj_kernel::mailbox::{Drained, Mailbox, Post};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

/// The guest VMPL the descriptors are written for.
const VMPL: u8 = 2;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    // No backtrace on loom's small stacks (see doorbell's loom tests).
    static QUIET_PANICS: std::sync::Once = std::sync::Once::new();
    QUIET_PANICS.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Test-only switch that breaks one step of a model, to show the model
/// catches it: `LOOM_ENGINE_BREAK=no-forward-closed` (the hand-back drops
/// what the close took), `no-sweep` (the failed sender never sweeps),
/// `no-close` (the hand-back never closes the mailbox).
fn broken(step: &str) -> bool {
    std::env::var("LOOM_ENGINE_BREAK").is_ok_and(|b| b == step)
}

/// A sender: posts `vector` (or an NMI); `true` when it must forward the
/// post to the host itself (the engine's `forward_ipi` on `Post::Closed`).
fn send(mb: &Mailbox, vector: u8, nmi: bool) -> bool {
    let post = if nmi { mb.post_nmi() } else { mb.post(vector) };
    post == Post::Closed
}

/// How many of the places a post can end up in hold it.
fn places(v: u8, nmi: bool, sets: &[Drained], forwarded: bool) -> usize {
    let held = sets
        .iter()
        .filter(|d| if nmi { d.nmi } else { d.contains(v) })
        .count();
    held + usize::from(forwarded)
}

/// Posts of a word-1 vector, a word-0 vector and an NMI race with the whole
/// hand-back: each reaches the host exactly once, through the writeback
/// (first drain), the owner's forward of what the close took, or its
/// sender's forward.
#[test]
fn posts_racing_with_the_hand_back_reach_the_host_exactly_once() {
    model(|| {
        let mb = Arc::new(Mailbox::new());
        let sends: Vec<(u8, bool)> = vec![(0x31, false), (0xF0, false), (0, true)];
        let senders: Vec<_> = sends
            .iter()
            .copied()
            .map(|(v, nmi)| {
                let mb = mb.clone();
                thread::spawn(move || send(&mb, v, nmi))
            })
            .collect();
        // hand_back: the mailbox drained into the APIC, which the
        // writeback hands to the host ...
        let written_back = mb.drain();
        // ... disable-AI succeeds, then the close takes the late posts,
        // which the owner forwards.
        let closed = if broken("no-close") {
            Drained::default()
        } else {
            mb.close()
        };
        let closed = if broken("no-forward-closed") {
            Drained::default()
        } else {
            closed
        };
        for ((v, nmi), s) in sends.into_iter().zip(senders) {
            let forwarded = s.join().unwrap();
            let n = places(v, nmi, &[written_back, closed], forwarded);
            assert_eq!(n, 1, "post {v:#x} nmi {nmi} reached the host {n} times");
        }
        assert!(mb.drain().is_empty(), "a post stranded in a closed mailbox");
    });
}

/// Disable-AI fails: the mailbox stays open, so a racing post is never
/// answered `Closed`, and it is in the first drain or in the next one.
#[test]
fn posts_racing_with_a_failed_hand_back_stay_with_the_emulated_apic() {
    model(|| {
        let mb = Arc::new(Mailbox::new());
        let senders: Vec<_> = [0x31u8, 0xF0]
            .into_iter()
            .map(|v| {
                let mb = mb.clone();
                thread::spawn(move || (v, mb.post(v)))
            })
            .collect();
        let first = mb.drain();
        // disable-AI failed: no close; the engine keeps emulating.
        let mut posts = Vec::new();
        for s in senders {
            posts.push(s.join().unwrap());
        }
        let next = mb.drain();
        for (v, post) in posts {
            assert_ne!(post, Post::Closed, "{v:#x} forwarded while emulated");
            assert_eq!(places(v, false, &[first, next], false), 1, "{v:#x}");
        }
    });
}

/// Host posts racing with a failed disable-AI: the engine wrote its APIC
/// into the descriptor and takes it back with `consume` (its failure path);
/// the host's post is in what it took back or left for the next collect,
/// exactly once, and the engine's own vectors come back.
#[test]
fn a_host_post_racing_with_a_failed_hand_back_is_taken_exactly_once() {
    model(|| {
        let page = Arc::new(DoorbellPage::new());
        let host = {
            let page = page.clone();
            thread::spawn(move || page.host().post_vector(VMPL, 0x62).unwrap())
        };
        let desc = page.descriptor(VMPL).unwrap();
        let mut state = HandoffState::default();
        state.irr[2] = 1 << 3; // vector 0x43, pending in the APIC
        desc.hand_off(&state);
        // disable-AI failed: take the writeback back.
        let back = desc.consume();
        host.join().unwrap();
        let later = desc.consume();
        assert!(back.contains(0x43) && !later.contains(0x43));
        assert!(back.contains(0x62) ^ later.contains(0x62));
    });
}

/// The failed-kick sweep: a sender's #HV IPI fails after its post set ON;
/// another sender posts while the owner drains. Whenever posts are left,
/// someone kicked successfully after them: the other sender (`Kick` or
/// `RetryKick`) or the failed sender's sweep, which takes the mark.
#[test]
fn the_failed_kick_sweep_leaves_no_post_without_a_kick() {
    model(|| {
        let mb = Arc::new(Mailbox::new());
        let kicked = Arc::new(AtomicBool::new(false));
        let failing = {
            let mb = mb.clone();
            let kicked = kicked.clone();
            thread::spawn(move || {
                if mb.post(0x31).kick() {
                    // The #HV IPI call fails (engine `kick`).
                    mb.mark_kick_failed();
                }
                // retry_failed_kicks at this sender's next run.
                if !broken("no-sweep") && mb.take_kick_failed() {
                    kicked.store(true, Ordering::SeqCst);
                }
            })
        };
        let other = {
            let mb = mb.clone();
            let kicked = kicked.clone();
            thread::spawn(move || {
                if mb.post(0xF0).kick() {
                    kicked.store(true, Ordering::SeqCst);
                }
            })
        };
        let first = mb.drain();
        failing.join().unwrap();
        other.join().unwrap();
        if mb.outstanding() {
            assert!(
                kicked.load(Ordering::SeqCst),
                "posts left with no successful kick"
            );
        }
        let second = mb.drain();
        for v in [0x31u8, 0xF0] {
            assert_eq!(places(v, false, &[first, second], false), 1, "{v:#x}");
        }
    });
}

/// Close against posts of the same vector and an NMI: each is handed over
/// at least once and at most once per post (two posts of one vector may
/// coalesce while both are in the mailbox, spec §6).
#[test]
fn close_against_posts_of_one_vector_and_an_nmi_hands_each_over() {
    model(|| {
        let mb = Arc::new(Mailbox::new());
        let senders: Vec<_> = [(0x31u8, false), (0x31, false), (0, true)]
            .into_iter()
            .map(|(v, nmi)| {
                let mb = mb.clone();
                thread::spawn(move || (nmi, send(&mb, v, nmi)))
            })
            .collect();
        let closed = mb.close();
        let mut vector_forwards = 0;
        for s in senders {
            let (nmi, forwarded) = s.join().unwrap();
            if nmi {
                assert!(closed.nmi ^ forwarded, "NMI handed over twice or never");
            } else {
                vector_forwards += usize::from(forwarded);
            }
        }
        let handed = vector_forwards + usize::from(closed.contains(0x31));
        assert!((1..=2).contains(&handed), "0x31 handed over {handed} times");
    });
}
