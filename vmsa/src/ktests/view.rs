//! Viewing an SVSM's own VMSA page through [`VmsaPage`], and the BUSY
//! helpers over an `&AtomicU64` (for SVSMs that keep their own VMSA type).

use core::sync::atomic::AtomicU64;

use zerocopy::{FromBytes, FromZeros, IntoBytes, KnownLayout};

use crate::{EventInj, SevFeatures, VIntrCtrl, VmsaAccess, VmsaPage, busy};

/// A foreign VMSA type laid out like COCONUT-SVSM's `VMSA`: `repr(C, packed)`,
/// its own field names, the spec §2 offsets, everything else padding.
#[derive(FromBytes, IntoBytes, KnownLayout)]
#[repr(C, packed)]
struct ForeignVmsa {
    _pad0: [u8; 0xD0],
    efer: u64,
    _pad1: [u8; 0x170 - 0xD8],
    rflags: u64,
    rip: u64,
    _pad2: [u8; 0x3B0 - 0x180],
    sev_features: u64,
    vintr_ctrl: u64,
    _pad3: [u8; 0x3E0 - 0x3C0],
    event_inj: u64,
    _pad4: [u8; 0x1000 - 0x3E8],
}

/// The page the SVSM maps its VMSA type into.
#[derive(FromBytes, IntoBytes, KnownLayout)]
#[repr(C, align(4096))]
struct MappedPage(ForeignVmsa);

altinj_ktest::suite! {
    fn view_mut_writes_land_in_the_svsms_own_vmsa_fields() {
        let mut page = MappedPage::new_zeroed();
        page.0.rip = 0x1234;
        {
            let view = VmsaPage::view_mut(page.as_mut_bytes()).unwrap();
            assert_eq!(view.rip(), 0x1234);
            view.set_efer(1 << 12);
            view.set_rflags(1 << 9);
            view.set_sev_features(SevFeatures::ALTERNATE_INJECTION);
            view.set_event_inj(EventInj::from_bits(0x8000_0030));
            view.set_vintr_ctrl(VIntrCtrl::new().with_v_tpr(0x20));
            assert!(!view.test_and_set_busy());
        }
        let (efer, rflags, event_inj, vintr_ctrl, sev) =
            (page.0.efer, page.0.rflags, page.0.event_inj, page.0.vintr_ctrl, page.0.sev_features);
        assert_eq!(efer, 1 << 12);
        assert_eq!(rflags, 1 << 9);
        assert_eq!(event_inj, 0x8000_0030);
        assert_eq!(vintr_ctrl, VIntrCtrl::BUSY_MASK | 0x20);
        assert_eq!(sev, SevFeatures::ALTERNATE_INJECTION.bits());
    }

    fn view_mut_leaves_the_other_bytes_untouched() {
        let mut page = MappedPage::new_zeroed();
        page.as_mut_bytes().fill(0xA5);
        {
            let view = VmsaPage::view_mut(page.as_mut_bytes()).unwrap();
            view.set_event_inj(EventInj::from_bits(0));
        }
        let bytes = page.as_mut_bytes();
        assert!(bytes[..0x3E0].iter().all(|b| *b == 0xA5));
        assert!(bytes[0x3E0..0x3E8].iter().all(|b| *b == 0));
        assert!(bytes[0x3E8..].iter().all(|b| *b == 0xA5));
    }

    fn view_mut_refuses_a_short_or_misaligned_page() {
        let mut page = MappedPage::new_zeroed();
        let bytes = page.as_mut_bytes();
        assert!(VmsaPage::view_mut(&mut bytes[..4095]).is_none());
        assert!(VmsaPage::view_mut(&mut bytes[8..]).is_none());
    }

    fn busy_helpers_test_and_set_then_clear_only_bit_63() {
        let field = AtomicU64::new(0x0000_0030_0000_0120);
        assert!(!busy::is_busy(&field));
        assert!(!busy::test_and_set_busy(&field));
        assert!(busy::is_busy(&field));
        assert!(busy::test_and_set_busy(&field));
        busy::clear_busy(&field);
        assert!(!busy::is_busy(&field));
        assert_eq!(field.into_inner(), 0x0000_0030_0000_0120);
    }

    fn page_busy_and_the_atomic_helpers_see_one_bit() {
        let mut page = VmsaPage::new();
        assert!(!busy::test_and_set_busy(page.vintr_ctrl_atomic()));
        assert!(page.vintr_ctrl().busy());
        assert!(page.test_and_set_busy());
        page.clear_busy();
        assert!(!busy::is_busy(page.vintr_ctrl_atomic()));
    }
}
