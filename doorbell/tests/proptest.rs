//! Property tests: whatever the host writes into the page, VMPL0 never
//! panics, never takes an illegal vector and never takes anything twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use altinj_doorbell::{DoorbellPage, HandoffState, PAGE_SIZE, PendingInterrupts};
use proptest::prelude::*;

#[repr(C, align(4096))]
struct Aligned([u8; PAGE_SIZE]);

fn page_from(bytes: &[u8]) -> Box<Aligned> {
    let mut buffer = Box::new(Aligned([0; PAGE_SIZE]));
    buffer.0.copy_from_slice(bytes);
    buffer
}

fn assert_legal(taken: &PendingInterrupts) {
    assert_eq!(
        taken.vectors[0] & 0x7FFF_FFFF,
        0,
        "vector below 31 returned"
    );
    assert!(taken.level.is_none_or(|v| v >= 31));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_page_never_yields_illegal_or_duplicate_events(
        bytes in proptest::collection::vec(any::<u8>(), PAGE_SIZE),
        tpr in any::<u8>(),
        vmpl in 0u8..6,
    ) {
        let mut buffer = page_from(&bytes);
        let page = DoorbellPage::from_bytes_mut(&mut buffer.0).unwrap();

        let events = page.take_events(tpr);
        prop_assert!(events.vector.is_none_or(|v| v >= 31 && v & 0xF0 > tpr & 0xF0));
        prop_assert!(events.deferred_vector.is_none_or(|v| v >= 31));
        prop_assert_eq!(events.vmpl_events & !0b111, 0);
        let _ = page.take_no_eoi_required();
        let again = page.take_events(tpr);
        prop_assert_eq!(again.vector, None);
        prop_assert!(!again.nmi && !again.mc);
        prop_assert_eq!(again.vmpl_events, 0);
        prop_assert_eq!(again.rejected, 0);
        prop_assert!(!page.take_no_eoi_required());

        match page.consume(vmpl) {
            Ok(taken) => {
                prop_assert!((1..=3).contains(&vmpl));
                assert_legal(&taken);
                let second = page.consume(vmpl).unwrap();
                prop_assert!(second.is_empty(), "taken twice: {:?}", second);
                prop_assert_eq!(second.rejected, 0);
            }
            Err(bad) => {
                prop_assert!(!(1..=3).contains(&vmpl));
                prop_assert_eq!(bad.0, vmpl);
            }
        }
    }

    #[test]
    fn handoff_on_arbitrary_descriptor_never_panics_and_merges(
        bytes in proptest::collection::vec(any::<u8>(), PAGE_SIZE),
        irr in any::<[u32; 8]>(),
        isr in any::<[u32; 8]>(),
        nmi_pending in any::<bool>(),
        vmpl in 1u8..4,
    ) {
        let mut buffer = page_from(&bytes);
        let base = 0x40 * usize::from(vmpl);
        let before: Vec<u32> = bytes[base..base + 64]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let dropped = {
            let page = DoorbellPage::from_bytes_mut(&mut buffer.0).unwrap();
            page.descriptor(vmpl).unwrap().hand_off(&HandoffState { irr, isr, nmi_pending })
        };
        prop_assert_eq!(dropped, (irr[0] & 0x7FFF_FFFF).count_ones());
        let after: Vec<u32> = buffer.0[base..base + 64]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // Nothing the host had posted is cleared.
        for (b, a) in before.iter().zip(&after) {
            prop_assert_eq!(b & a, *b);
        }
        for (i, &word) in irr.iter().enumerate().skip(1) {
            prop_assert_eq!(after[i] & word, word);
        }
        for (i, &word) in isr.iter().enumerate() {
            prop_assert_eq!(after[8 + i] & word, word);
        }
        prop_assert_eq!(after[0] >> 31, (before[0] >> 31) | (irr[0] >> 31));
    }
}
