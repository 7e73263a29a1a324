//! The 4 KiB VMSA page: offsets, atomics, BUSY test-and-set; and the default
//! BUSY methods of [`VmsaAccess`] on a plain implementation.

use zerocopy::{FromBytes, IntoBytes};

use super::PlainVmsa;
use crate::{EventInj, ExitCode, SevFeatures, VIntrCtrl, VmsaAccess, VmsaPage, offset};

/// One field of the page: its spec offset and its setter.
type FieldSetter = (usize, fn(&mut VmsaPage, u64));

/// Every field of spec §2, written through [`VmsaAccess`].
const FIELDS: [FieldSetter; 16] = [
    (offset::EFER, |p, v| p.set_efer(v)),
    (offset::RFLAGS, |p, v| p.set_rflags(v)),
    (offset::RIP, |p, v| p.set_rip(v)),
    (offset::RAX, |p, v| p.set_rax(v)),
    (offset::RCX, |p, v| p.set_rcx(v)),
    (offset::RDX, |p, v| p.set_rdx(v)),
    (offset::R8, |p, v| p.set_r8(v)),
    (offset::R9, |p, v| p.set_r9(v)),
    (offset::EXIT_INFO_1, |p, v| p.set_exit_info_1(v)),
    (offset::EXIT_INFO_2, |p, v| p.set_exit_info_2(v)),
    (offset::EXIT_INT_INFO, |p, v| {
        p.set_exit_int_info(EventInj::from_bits(v))
    }),
    (offset::NRIP, |p, v| p.set_nrip(v)),
    (offset::SEV_FEATURES, |p, v| {
        p.set_sev_features(SevFeatures::from_bits_retain(v))
    }),
    (offset::VINTR_CTRL, |p, v| {
        p.set_vintr_ctrl(VIntrCtrl::from_bits(v))
    }),
    (offset::EXIT_CODE, |p, v| p.set_exit_code(ExitCode(v))),
    (offset::EVENT_INJ, |p, v| {
        p.set_event_inj(EventInj::from_bits(v))
    }),
];

altinj_ktest::suite! {
    fn page_is_one_aligned_4k_page() {
        assert_eq!(core::mem::size_of::<VmsaPage>(), 4096);
        assert_eq!(core::mem::align_of::<VmsaPage>(), 4096);
        let page = VmsaPage::new();
        assert_eq!(core::ptr::from_ref(&page).addr() % 4096, 0);
    }

    fn new_page_is_all_zero() {
        let mut page = VmsaPage::default();
        assert!(page.as_mut_bytes().iter().all(|b| *b == 0));
    }

    fn each_field_lands_at_its_spec_offset() {
        // The page holds atomics (not `Immutable`), so its bytes are viewed
        // with `as_mut_bytes` rather than `as_bytes`.
        for (i, (off, set)) in FIELDS.iter().enumerate() {
            let value = 0x8877_6655_4433_2200 | i as u64;
            let mut page = VmsaPage::new();
            set(&mut page, value);
            let bytes = page.as_mut_bytes();
            assert_eq!(bytes[*off..*off + 8], value.to_le_bytes(), "offset {off:#x}");
            // Nothing else was touched.
            assert!(bytes[..*off].iter().all(|b| *b == 0));
            assert!(bytes[*off + 8..].iter().all(|b| *b == 0));
        }
    }

    fn spec_offsets_are_the_documented_numbers() {
        let expected = [
            0xD0, 0x170, 0x178, 0x1F8, 0x308, 0x310, 0x340, 0x348, 0x390, 0x398, 0x3A0, 0x3A8,
            0x3B0, 0x3B8, 0x3C0, 0x3E0,
        ];
        for ((off, _), want) in FIELDS.iter().zip(expected) {
            assert_eq!(*off, want);
        }
    }

    fn each_field_reads_back_what_was_written() {
        let mut p = VmsaPage::new();
        for (i, (_, set)) in FIELDS.iter().enumerate() {
            set(&mut p, 0x1000 + i as u64);
        }
        assert_eq!(p.efer(), 0x1000);
        assert_eq!(p.rflags(), 0x1001);
        assert_eq!(p.rip(), 0x1002);
        assert_eq!(p.rax(), 0x1003);
        assert_eq!(p.rcx(), 0x1004);
        assert_eq!(p.rdx(), 0x1005);
        assert_eq!(p.r8(), 0x1006);
        assert_eq!(p.r9(), 0x1007);
        assert_eq!(p.exit_info_1(), 0x1008);
        assert_eq!(p.exit_info_2(), 0x1009);
        assert_eq!(p.exit_int_info().into_bits(), 0x100A);
        assert_eq!(p.nrip(), 0x100B);
        assert_eq!(p.sev_features().bits(), 0x100C);
        assert_eq!(p.vintr_ctrl().into_bits(), 0x100D);
        assert_eq!(p.exit_code(), ExitCode(0x100E));
        assert_eq!(p.event_inj().into_bits(), 0x100F);
    }

    fn page_read_from_bytes_sees_fields_at_spec_offsets() {
        let mut page = VmsaPage::new();
        let bytes = page.as_mut_bytes();
        bytes[offset::VINTR_CTRL + 7] = 0x80; // BUSY
        bytes[offset::EVENT_INJ..offset::EVENT_INJ + 4].copy_from_slice(&[0x30, 0, 0, 0x80]);
        let view = VmsaPage::mut_from_bytes(bytes).unwrap();
        assert!(view.vintr_ctrl().busy());
        assert_eq!(view.event_inj(), EventInj::external_interrupt(0x30));
    }

    fn page_test_and_set_busy_returns_previous_value() {
        let mut p = VmsaPage::new();
        assert!(!p.test_and_set_busy());
        assert!(p.vintr_ctrl().busy());
        assert!(p.test_and_set_busy());
        assert!(p.vintr_ctrl().busy());
    }

    fn page_busy_changes_touch_only_bit_63() {
        let mut p = VmsaPage::new();
        let others = VIntrCtrl::from_bits(0x7FFF_FFFF_FFFF_FFFF);
        p.set_vintr_ctrl(others);
        assert!(!p.test_and_set_busy());
        assert_eq!(p.vintr_ctrl().into_bits(), u64::MAX);
        p.clear_busy();
        assert_eq!(p.vintr_ctrl(), others);
    }

    fn page_clear_busy_clears_a_set_busy() {
        let mut p = VmsaPage::new();
        p.set_vintr_ctrl(VIntrCtrl::new().with_busy(true));
        p.clear_busy();
        assert!(!p.vintr_ctrl().busy());
        assert!(!p.test_and_set_busy());
    }

    fn default_test_and_set_busy_returns_previous_value() {
        let mut v = PlainVmsa { vintr_ctrl: 0x0000_0030_0000_0100, ..PlainVmsa::default() };
        assert!(!v.test_and_set_busy());
        assert_eq!(v.vintr_ctrl, 0x8000_0030_0000_0100);
        assert!(v.test_and_set_busy());
        assert_eq!(v.vintr_ctrl, 0x8000_0030_0000_0100);
    }

    fn default_clear_busy_clears_only_busy() {
        let mut v = PlainVmsa { vintr_ctrl: u64::MAX, ..PlainVmsa::default() };
        v.clear_busy();
        assert_eq!(v.vintr_ctrl, u64::MAX >> 1);
        v.clear_busy();
        assert_eq!(v.vintr_ctrl, u64::MAX >> 1);
    }
}
