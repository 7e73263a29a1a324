//! The per-instance ledger (`sim::ledger`): every accepted instance owes
//! one delivery unless it coalesced into one already pending.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use sim::ledger::{Debit, Ledger, Pending};

#[test]
fn a_request_while_the_vector_is_pending_coalesces_into_the_owed_instance() {
    let mut l = Ledger::new();
    assert_eq!(l.request(0x41, 10, Pending::No), 1);
    assert_eq!(l.request(0x41, 20, Pending::Yes), 1);
    assert_eq!(l.coalesced_verified, 1);
}

#[test]
fn a_request_while_the_vector_is_only_in_service_is_a_second_instance() {
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    assert_eq!(l.request(0x41, 20, Pending::No), 2);
}

#[test]
fn two_instances_with_one_delivery_leave_one_lost() {
    // Issue 9 path 2: one instance in service, one in IRR, merged by a recall.
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    l.request(0x41, 20, Pending::No);
    assert_eq!(l.deliver(0x41, 30), Debit::Latency(20));
    assert_eq!(l.lost(100), vec![(0x41, 20)]);
}

#[test]
fn a_loss_is_reported_even_when_later_instances_of_its_vector_are_delivered() {
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    l.request(0x41, 20, Pending::No);
    l.deliver(0x41, 30);
    l.request(0x41, 40, Pending::No);
    l.deliver(0x41, 50);
    assert_eq!(l.owed_count(0x41), 1);
    assert_eq!(l.lost(100).len(), 1);
}

#[test]
fn a_delivery_with_nothing_owed_is_a_duplicate() {
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    l.deliver(0x41, 20);
    assert_eq!(l.deliver(0x41, 30), Debit::Unrequested);
}

#[test]
fn deliveries_take_the_oldest_owed_instance_first() {
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    l.request(0x41, 25, Pending::No);
    assert_eq!(l.deliver(0x41, 30), Debit::Latency(20));
    assert_eq!(l.deliver(0x41, 35), Debit::Latency(10));
}

#[test]
fn an_instance_requested_after_the_cutoff_is_not_yet_lost() {
    let mut l = Ledger::new();
    l.request(0x41, 150, Pending::No);
    assert!(l.lost(100).is_empty());
}

#[test]
fn an_ambiguous_request_allows_one_more_delivery_without_owing_it() {
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    assert_eq!(l.request(0x41, 20, Pending::Ambiguous), 1);
    l.deliver(0x41, 30);
    assert_eq!(l.deliver(0x41, 40), Debit::Ok);
    assert_eq!(l.deliver(0x41, 50), Debit::Unrequested);
    assert!(l.lost(100).is_empty());
}

#[test]
fn an_apic_reset_discards_the_owed_instances_instead_of_losing_them() {
    // Issue 9 path 10: APIC_BASE EN = 0 clears IRR and ISR (SDM 11.4.3).
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    l.request(0x61, 20, Pending::No);
    assert_eq!(l.discard_at_reset(), 2);
    assert!(l.lost(100).is_empty());
    assert_eq!(l.discarded, 2);
}

#[test]
fn a_delivery_after_an_apic_reset_of_a_discarded_instance_is_a_duplicate() {
    let mut l = Ledger::new();
    l.request(0x41, 10, Pending::No);
    l.discard_at_reset();
    assert_eq!(l.deliver(0x41, 30), Debit::Unrequested);
}

#[test]
fn an_apic_reset_keeps_an_owed_nmi() {
    let mut l = Ledger::new();
    l.request_nmi(10);
    l.discard_at_reset();
    assert_eq!(l.lost(100), vec![(2, 10)]);
}

#[test]
fn an_allowed_delivery_is_not_owed_and_not_a_duplicate() {
    // An IPI to a software-disabled APIC that may be drained after its SVR write.
    let mut l = Ledger::new();
    l.allow_one(0x41);
    assert!(!l.owed(0x41));
    assert_eq!(l.deliver(0x41, 10), Debit::Ok);
    assert_eq!(l.deliver(0x41, 20), Debit::Unrequested);
}
