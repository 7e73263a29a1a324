//! Unit tests, one behaviour each (run by `cargo test` and the test image).

// Test helpers may unwrap: a failing test is the point.
#![allow(clippy::unwrap_used)]

use crate::host::PostError;
use crate::page::{BadVmpl, DescriptorStatus, DoorbellFlags, DoorbellPage, PAGE_SIZE};
use crate::sync::Ordering::SeqCst;
use crate::{HandoffState, PendingInterrupts};

/// A page-aligned buffer standing in for the shared page.
#[repr(C, align(4096))]
struct Aligned([u8; PAGE_SIZE]);

/// Two page-aligned pages, to carve a misaligned page out of.
#[repr(C, align(4096))]
struct TwoPages([u8; 2 * PAGE_SIZE]);

fn status(page: &DoorbellPage, vmpl: u8) -> u32 {
    page.descriptor(vmpl).unwrap().status.load(SeqCst)
}

fn set_status(page: &DoorbellPage, vmpl: u8, value: u32) {
    page.descriptor(vmpl).unwrap().status.store(value, SeqCst);
}

altinj_ktest::suite! {
    fn layout_offsets_match_the_doorbell_page() {
        let mut buffer = Aligned([0; PAGE_SIZE]);
        {
            let page = DoorbellPage::from_bytes_mut(&mut buffer.0).unwrap();
            page.vector.store(0xA1, SeqCst);
            page.flags.store(0xA2, SeqCst);
            page.no_eoi_required.store(0xA3, SeqCst);
            page.per_vmpl_events.store(0xA4, SeqCst);
            for (n, descriptor) in page.descriptors.iter().enumerate() {
                let n = n as u32 + 1;
                descriptor.status.store(0x1100_0000 | n, SeqCst);
                descriptor.irr[0].store(0x2200_0000 | n, SeqCst);
                descriptor.irr[6].store(0x3300_0000 | n, SeqCst);
                descriptor.isr[0].store(0x4400_0000 | n, SeqCst);
                descriptor.isr[7].store(0x5500_0000 | n, SeqCst);
            }
        }
        let bytes = &buffer.0;
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(bytes[0..4], [0xA1, 0xA2, 0xA3, 0xA4]);
        assert!(bytes[4..0x40].iter().all(|&b| b == 0));
        for (n, base) in [(1, 0x40), (2, 0x80), (3, 0xC0)] {
            assert_eq!(word(base), 0x1100_0000 | n);
            assert_eq!(word(base + 0x04), 0x2200_0000 | n);
            assert_eq!(word(base + 0x1C), 0x3300_0000 | n);
            assert_eq!(word(base + 0x20), 0x4400_0000 | n);
            assert_eq!(word(base + 0x3C), 0x5500_0000 | n);
        }
        assert!(bytes[0x100..].iter().all(|&b| b == 0));
    }

    fn misaligned_region_is_not_viewed_as_a_page() {
        let mut buffer = TwoPages([0; 2 * PAGE_SIZE]);
        let region: &mut [u8; PAGE_SIZE] = (&mut buffer.0[8..8 + PAGE_SIZE]).try_into().unwrap();
        assert!(DoorbellPage::from_bytes_mut(region).is_none());
    }

    fn take_events_clears_no_further_signal_and_nmi() {
        let page = DoorbellPage::new();
        page.flags.store(0x80 | 0x01 | 0x40, SeqCst);
        let events = page.take_events(0);
        assert!(events.nmi);
        assert!(!events.mc);
        // Reserved bit 6 is left as it was.
        assert_eq!(page.flags.load(SeqCst), 0x40);
        assert!(!page.take_events(0).nmi);
    }

    fn machine_check_is_reported_as_an_event() {
        let page = DoorbellPage::new();
        page.flags.store(DoorbellFlags::MC_PENDING.bits(), SeqCst);
        let events = page.take_events(0);
        assert!(events.mc);
        assert_eq!(page.flags.load(SeqCst), 0);
        assert!(!page.take_events(0).mc);
    }

    fn vmpl0_vector_above_tpr_class_is_taken() {
        let page = DoorbellPage::new();
        page.vector.store(0x51, SeqCst);
        let events = page.take_events(0x4F);
        assert_eq!(events.vector, Some(0x51));
        assert_eq!(events.deferred_vector, None);
        assert_eq!(page.vector.load(SeqCst), 0);
    }

    fn vmpl0_vector_not_above_tpr_class_is_left_in_place() {
        let page = DoorbellPage::new();
        page.vector.store(0x51, SeqCst);
        let events = page.take_events(0x50);
        assert_eq!(events.vector, None);
        assert_eq!(events.deferred_vector, Some(0x51));
        assert_eq!(page.vector.load(SeqCst), 0x51);
        assert_eq!(page.take_events(0x40).vector, Some(0x51));
    }

    fn illegal_vmpl0_vector_is_acknowledged_and_counted() {
        for vector in [1u8, 16, 30] {
            let page = DoorbellPage::new();
            page.vector.store(vector, SeqCst);
            let events = page.take_events(0);
            assert_eq!(events.vector, None);
            assert_eq!(events.deferred_vector, None);
            assert_eq!(events.rejected, 1);
            assert_eq!(page.vector.load(SeqCst), 0);
        }
    }

    fn per_vmpl_events_are_taken_and_unknown_vmpls_counted() {
        let page = DoorbellPage::new();
        page.per_vmpl_events.store(0b1010_0010, SeqCst);
        let events = page.take_events(0);
        assert_eq!(events.vmpl_events, 0b010);
        assert!(events.vmpl_posted(2));
        assert!(!events.vmpl_posted(1) && !events.vmpl_posted(0) && !events.vmpl_posted(9));
        assert_eq!(events.rejected, 2);
        assert_eq!(page.per_vmpl_events.load(SeqCst), 0);
    }

    fn no_eoi_required_swap_reports_bit_0_once() {
        let page = DoorbellPage::new();
        assert!(!page.take_no_eoi_required());
        page.no_eoi_required.store(1, SeqCst);
        assert!(page.take_no_eoi_required());
        assert_eq!(page.no_eoi_required.load(SeqCst), 0);
        assert!(!page.take_no_eoi_required());
        page.no_eoi_required.store(0xFE, SeqCst);
        assert!(!page.take_no_eoi_required());
    }

    fn single_vector_is_consumed_once() {
        let page = DoorbellPage::new();
        set_status(&page, 2, 0x41);
        let taken = page.consume(2).unwrap();
        assert!(taken.contains(0x41));
        assert_eq!(taken.vectors.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert_eq!(taken.level, None);
        assert_eq!(status(&page, 2), 0);
        assert!(page.consume(2).unwrap().is_empty());
    }

    fn multiple_vectors_are_taken_from_irr() {
        let page = DoorbellPage::new();
        let descriptor = page.descriptor(1).unwrap();
        descriptor.irr[0].store(1 << 1, SeqCst); // vector 33
        descriptor.irr[6].store(1 << 31, SeqCst); // vector 255
        set_status(&page, 1, DescriptorStatus::MULTIPLE | 0x60);
        let taken = page.consume(1).unwrap();
        let mut expected = [0u32; 8];
        expected[1] = 1 << 1;
        expected[3] = 1; // 0x60, from the status byte
        expected[7] = 1 << 31;
        assert_eq!(taken.vectors, expected);
        assert_eq!(status(&page, 1), 0);
        assert!(descriptor.irr.iter().all(|w| w.load(SeqCst) == 0));
    }

    fn irr_is_not_scanned_without_multiple_vectors() {
        let page = DoorbellPage::new();
        page.descriptor(2).unwrap().irr[0].store(1, SeqCst);
        assert!(page.consume(2).unwrap().is_empty());
        assert_eq!(page.descriptor(2).unwrap().irr[0].load(SeqCst), 1);
    }

    fn level_sensitive_vector_is_consumed_with_vector_and_level_bit() {
        let page = DoorbellPage::new();
        set_status(&page, 2, DescriptorStatus::LEVEL | 0x90);
        let taken = page.consume(2).unwrap();
        assert_eq!(taken.level, Some(0x90));
        assert!(!taken.contains(0x90));
        assert_eq!(status(&page, 2), 0);
        assert!(page.consume(2).unwrap().is_empty());
    }

    fn vector_31_is_taken_from_status_bit_31() {
        let page = DoorbellPage::new();
        set_status(&page, 3, DescriptorStatus::VECTOR_31 | DescriptorStatus::MULTIPLE);
        let taken = page.consume(3).unwrap();
        assert_eq!(taken.vectors, [1 << 31, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(status(&page, 3), 0);
    }

    fn vector_31_in_the_status_byte_is_legal() {
        let page = DoorbellPage::new();
        set_status(&page, 2, 31);
        let taken = page.consume(2).unwrap();
        assert!(taken.contains(31));
        assert_eq!(taken.rejected, 0);
    }

    fn vectors_below_31_are_rejected_and_counted() {
        let page = DoorbellPage::new();
        for vector in 1..=30u32 {
            set_status(&page, 2, vector);
            let taken = page.consume(2).unwrap();
            assert!(taken.is_empty());
            assert_eq!(taken.rejected, 1);
            assert_eq!(status(&page, 2), 0);
        }
        set_status(&page, 2, DescriptorStatus::LEVEL | 7);
        let taken = page.consume(2).unwrap();
        assert_eq!(taken.level, None);
        assert_eq!(taken.rejected, 1);
        assert_eq!(status(&page, 2), 0);
    }

    fn nmi_mc_and_ipi_requested_are_taken_from_status() {
        let page = DoorbellPage::new();
        set_status(&page, 2, DescriptorStatus::NMI | DescriptorStatus::MC | DescriptorStatus::IPI);
        let taken = page.consume(2).unwrap();
        assert!(taken.nmi && taken.mc && taken.ipi_requested);
        assert_eq!(status(&page, 2), 0);
        assert!(page.consume(2).unwrap().is_empty());
    }

    fn reserved_status_bits_are_ignored_and_kept() {
        let reserved = 0x7 << 11 | 0xFFF << 15 | 0x7 << 28;
        let page = DoorbellPage::new();
        set_status(&page, 2, reserved | 0x41 | DescriptorStatus::NMI);
        let taken = page.consume(2).unwrap();
        let mut expected = PendingInterrupts { nmi: true, ..PendingInterrupts::default() };
        expected.vectors[2] = 1 << 1;
        assert_eq!(taken, expected);
        assert_eq!(status(&page, 2), reserved);
        assert!(page.consume(2).unwrap().is_empty());
    }

    fn bad_vmpl_number_is_an_error() {
        let page = DoorbellPage::new();
        for vmpl in [0u8, 4, 255] {
            assert_eq!(page.consume(vmpl), Err(BadVmpl(vmpl)));
            assert_eq!(page.host().post_nmi(vmpl), Err(PostError::BadVmpl(vmpl)));
        }
    }

    fn second_consume_without_host_activity_is_empty() {
        let page = DoorbellPage::new();
        let host = page.host();
        host.post_level(2, 0x80).unwrap();
        host.post_vector(2, 0x41).unwrap();
        host.post_vector(2, 31).unwrap();
        host.post_nmi(2).unwrap();
        let first = page.consume(2).unwrap();
        assert_eq!(first.level, Some(0x80));
        assert!(first.contains(0x41) && first.contains(31) && first.nmi);
        assert!(page.consume(2).unwrap().is_empty());
    }

    fn host_posts_first_vector_in_byte_then_in_irr() {
        let page = DoorbellPage::new();
        let host = page.host();
        host.post_vector(2, 0x41).unwrap();
        assert_eq!(status(&page, 2), 0x41);
        host.post_vector(2, 0xFE).unwrap();
        assert_eq!(status(&page, 2), 0x41 | DescriptorStatus::MULTIPLE);
        assert_eq!(page.descriptor(2).unwrap().irr[6].load(SeqCst), 1 << 30);
        host.post_vector(2, 31).unwrap();
        assert_ne!(status(&page, 2) & DescriptorStatus::VECTOR_31, 0);
        assert_eq!(page.per_vmpl_events.load(SeqCst), 0b010);
        assert_eq!(host.post_vector(2, 30), Err(PostError::IllegalVector(30)));
    }

    fn host_level_post_is_busy_while_status_byte_is_occupied() {
        let page = DoorbellPage::new();
        let host = page.host();
        host.post_vector(1, 0x41).unwrap();
        assert_eq!(host.post_level(1, 0x90), Err(PostError::Busy));
        page.consume(1).unwrap();
        host.post_level(1, 0x90).unwrap();
        assert_eq!(status(&page, 1), DescriptorStatus::LEVEL | 0x90);
    }

    fn host_signals_only_while_no_further_signal_is_clear() {
        let page = DoorbellPage::new();
        let host = page.host();
        host.set_vmpl0_vector(0x40).unwrap();
        assert_eq!(host.set_vmpl0_vector(0x41), Err(PostError::Busy));
        assert!(host.raise_no_further_signal());
        assert!(!host.raise_no_further_signal());
        assert_eq!(page.take_events(0).vector, Some(0x40));
        assert!(host.raise_no_further_signal());
        host.lower_no_further_signal();
        assert_eq!(page.flags.load(SeqCst), 0);
    }

    fn handoff_writes_irr_isr_vector_31_nmi_and_multiple() {
        let page = DoorbellPage::new();
        let descriptor = page.descriptor(2).unwrap();
        let mut state = HandoffState { nmi_pending: true, ..HandoffState::default() };
        state.irr[0] = 1 << 31 | 1 << 5; // vector 31, and illegal vector 5
        state.irr[1] = 0x8000_0001;
        state.irr[7] = 1 << 31;
        state.isr[0] = 1 << 2;
        state.isr[7] = 1 << 31;
        assert_eq!(descriptor.hand_off(&state), 1);
        assert_eq!(
            status(&page, 2),
            DescriptorStatus::VECTOR_31 | DescriptorStatus::MULTIPLE | DescriptorStatus::NMI
        );
        assert_eq!(descriptor.irr[0].load(SeqCst), 0x8000_0001);
        assert_eq!(descriptor.irr[6].load(SeqCst), 1 << 31);
        assert_eq!(descriptor.isr[0].load(SeqCst), 1 << 2);
        assert_eq!(descriptor.isr[7].load(SeqCst), 1 << 31);
    }

    fn handoff_merges_with_host_posts() {
        let page = DoorbellPage::new();
        let host = page.host();
        host.post_vector(2, 0x50).unwrap();
        host.post_vector(2, 0x41).unwrap(); // into irr[1]
        let descriptor = page.descriptor(2).unwrap();
        descriptor.isr[2].store(1 << 3, SeqCst);
        let mut state = HandoffState::default();
        state.irr[2] = 1 << 2; // vector 0x42
        state.isr[2] = 1 << 4;
        assert_eq!(descriptor.hand_off(&state), 0);
        assert_eq!(status(&page, 2), 0x50 | DescriptorStatus::MULTIPLE);
        assert_eq!(descriptor.irr[1].load(SeqCst), 1 << 1 | 1 << 2);
        assert_eq!(descriptor.isr[2].load(SeqCst), 1 << 3 | 1 << 4);
    }
}
