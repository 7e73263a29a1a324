//! Bit layouts: VIntrCtrl, EventInj, SevFeatures / SEV_STATUS, exit codes.

use crate::{EventInj, EventType, ExitCode, ExitKind, SevFeatures, VIntrCtrl};

altinj_ktest::suite! {
    fn vintr_ctrl_fields_land_at_spec_bits() {
        let raw = |c: VIntrCtrl| c.into_bits();
        let zero = VIntrCtrl::new();
        assert_eq!(raw(zero.with_v_tpr(0xAB)), 0xAB);
        assert_eq!(raw(zero.with_v_irq(true)), 1 << 8);
        assert_eq!(raw(zero.with_vgif(true)), 1 << 9);
        assert_eq!(raw(zero.with_int_shadow(true)), 1 << 10);
        assert_eq!(raw(zero.with_v_nmi(true)), 1 << 11);
        assert_eq!(raw(zero.with_v_nmi_mask(true)), 1 << 12);
        assert_eq!(raw(zero.with_v_intr_prio(0xF)), 0xF << 16);
        assert_eq!(raw(zero.with_v_intr_prio(0x5)), 0x5 << 16);
        assert_eq!(raw(zero.with_v_ign_tpr(true)), 1 << 20);
        assert_eq!(raw(zero.with_v_nmi_enable(true)), 1 << 26);
        assert_eq!(raw(zero.with_v_intr_vector(0xCD)), 0xCD << 32);
        assert_eq!(raw(zero.with_busy(true)), 1 << 63);
        assert_eq!(VIntrCtrl::BUSY_MASK, 1 << 63);
    }

    fn vintr_ctrl_decodes_each_field_from_raw() {
        let c = VIntrCtrl::from_bits(0x8000_00A5_0413_1F5A);
        assert_eq!(c.v_tpr(), 0x5A);
        assert!(c.v_irq());
        assert!(c.vgif());
        assert!(c.int_shadow());
        assert!(c.v_nmi());
        assert!(c.v_nmi_mask());
        assert_eq!(c.v_intr_prio(), 0x3);
        assert!(c.v_ign_tpr());
        assert!(c.v_nmi_enable());
        assert_eq!(c.v_intr_vector(), 0xA5);
        assert!(c.busy());
        let none = VIntrCtrl::from_bits(0);
        assert!(!none.v_irq() && !none.vgif() && !none.int_shadow() && !none.busy());
        assert!(!none.v_nmi() && !none.v_nmi_mask() && !none.v_ign_tpr() && !none.v_nmi_enable());
    }

    fn vintr_ctrl_round_trips_every_field_together() {
        let c = VIntrCtrl::new()
            .with_v_tpr(0x0C)
            .with_v_irq(true)
            .with_vgif(true)
            .with_int_shadow(true)
            .with_v_nmi(true)
            .with_v_nmi_mask(true)
            .with_v_intr_prio(0x9)
            .with_v_ign_tpr(true)
            .with_v_nmi_enable(true)
            .with_v_intr_vector(0x9E)
            .with_busy(true);
        assert_eq!(c.into_bits(), 0x8000_009E_0419_1F0C);
        assert_eq!(VIntrCtrl::from_bits(c.into_bits()), c);
    }

    fn vintr_ctrl_keeps_reserved_bits_on_modify() {
        // Every bit spec §2 calls reserved.
        let reserved: u64 = !(0xFF | 0x1F00 | 0xF_0000 | (1 << 20) | (1 << 26) | (0xFF << 32) | (1 << 63));
        let c = VIntrCtrl::from_bits(reserved).with_v_irq(true).with_busy(true);
        assert_eq!(c.into_bits() & reserved, reserved);
        assert_eq!(c.with_v_irq(false).with_busy(false).into_bits(), reserved);
    }

    fn event_inj_fields_land_at_spec_bits() {
        let zero = EventInj::new();
        assert_eq!(zero.with_vector(0xEF).into_bits(), 0xEF);
        assert_eq!(zero.with_event_type(EventType::SoftwareInt).into_bits(), 4 << 8);
        assert_eq!(zero.with_event_type(EventType::Reserved7).into_bits(), 7 << 8);
        assert_eq!(zero.with_error_code_valid(true).into_bits(), 1 << 11);
        assert_eq!(zero.with_valid(true).into_bits(), 1 << 31);
        assert_eq!(zero.with_error_code(0xDEAD_BEEF).into_bits(), 0xDEAD_BEEF << 32);
        assert_eq!(EventInj::RESERVED_MASK, ((1u64 << 19) - 1) << 12);
    }

    fn event_inj_decodes_each_field_from_raw() {
        let e = EventInj::from_bits(0x1234_5678_8000_0B0E);
        assert_eq!(e.vector(), 0x0E);
        assert_eq!(e.event_type(), EventType::Exception);
        assert!(e.error_code_valid());
        assert!(e.valid());
        assert_eq!(e.error_code(), 0x1234_5678);
        assert!(!e.has_reserved_bits());
        assert_eq!(EventInj::from_bits(e.into_bits()), e);
    }

    fn event_type_decodes_all_eight_values_without_panic() {
        let expected = [
            EventType::Intr,
            EventType::Reserved1,
            EventType::Nmi,
            EventType::Exception,
            EventType::SoftwareInt,
            EventType::Reserved5,
            EventType::Reserved6,
            EventType::Reserved7,
        ];
        for (value, ty) in expected.iter().enumerate() {
            let value = value as u8;
            assert_eq!(EventType::from_bits(value), *ty);
            assert_eq!(ty.into_bits(), value);
            // Through the register, with every other bit set.
            let raw = !(7u64 << 8) | (u64::from(value) << 8);
            assert_eq!(EventInj::from_bits(raw).event_type(), *ty);
            assert_eq!(ty.is_reserved(), matches!(value, 1 | 5 | 6 | 7));
        }
        // Only the low three bits count.
        assert_eq!(EventType::from_bits(0xFA), EventType::Nmi);
    }

    fn event_inj_reserved_bits_are_detected() {
        assert!(!EventInj::from_bits(!EventInj::RESERVED_MASK).has_reserved_bits());
        assert!(EventInj::from_bits(1 << 12).has_reserved_bits());
        assert!(EventInj::from_bits(1 << 30).has_reserved_bits());
    }

    fn event_inj_constructors_build_valid_events() {
        let intr = EventInj::external_interrupt(0x41);
        assert_eq!(intr.into_bits(), 0x8000_0041);
        let nmi = EventInj::nmi();
        assert_eq!(nmi.into_bits(), 0x8000_0202);
        let pf = EventInj::exception(14, Some(0x6));
        assert_eq!(pf.into_bits(), 0x0000_0006_8000_0B0E);
        let ud = EventInj::exception(6, None);
        assert_eq!(ud.into_bits(), 0x8000_0306);
        assert!(!ud.error_code_valid());
        let int80 = EventInj::software_interrupt(0x80);
        assert_eq!(int80.into_bits(), 0x8000_0480);
    }

    fn sev_features_named_bits_match_spec() {
        assert_eq!(SevFeatures::SNP_ACTIVE.bits(), 1 << 0);
        assert_eq!(SevFeatures::VTOM.bits(), 1 << 1);
        assert_eq!(SevFeatures::REFLECT_VC.bits(), 1 << 2);
        assert_eq!(SevFeatures::RESTRICTED_INJECTION.bits(), 1 << 3);
        assert_eq!(SevFeatures::ALTERNATE_INJECTION.bits(), 1 << 4);
        assert_eq!(SevFeatures::DEBUG_SWAP.bits(), 1 << 5);
        assert_eq!(SevFeatures::PREVENT_HOST_IBS.bits(), 1 << 6);
        assert_eq!(SevFeatures::BTB_ISOLATION.bits(), 1 << 7);
        assert_eq!(SevFeatures::VMPL_SSS.bits(), 1 << 8);
        assert_eq!(SevFeatures::SECURE_TSC.bits(), 1 << 9);
        assert_eq!(SevFeatures::SECURE_AVIC.bits(), 1 << 16);
    }

    fn sev_features_retain_unknown_bits() {
        let raw = (1 << 40) | (1 << 11) | SevFeatures::ALTERNATE_INJECTION.bits();
        let mut f = SevFeatures::from_bits_retain(raw);
        assert!(f.contains(SevFeatures::ALTERNATE_INJECTION));
        f.insert(SevFeatures::DEBUG_SWAP);
        f.remove(SevFeatures::ALTERNATE_INJECTION);
        assert_eq!(f.bits(), (1 << 40) | (1 << 11) | (1 << 5));
    }

    fn sev_status_is_sev_features_shifted_by_two() {
        assert_eq!(crate::SEV_STATUS_MSR, 0xC001_0131);
        assert_eq!(SevFeatures::ALTERNATE_INJECTION.to_sev_status(), 1 << 6);
        assert_eq!(SevFeatures::SECURE_AVIC.to_sev_status(), 1 << 18);
        let status = (1 << 6) | (1 << 5) | (1 << 2) | 0b11 | (1 << 50);
        let f = SevFeatures::from_sev_status(status);
        assert_eq!(
            f,
            SevFeatures::ALTERNATE_INJECTION
                | SevFeatures::RESTRICTED_INJECTION
                | SevFeatures::SNP_ACTIVE
                | SevFeatures::from_bits_retain(1 << 48)
        );
        // Status bits 1:0 have no SEV_FEATURES counterpart.
        assert_eq!(f.to_sev_status(), status & !0b11);
    }

    fn exit_codes_negative_values_classify() {
        assert_eq!(ExitCode(u64::MAX).kind(), ExitKind::Invalid);
        assert_eq!(ExitCode(0xFFFF_FFFF_FFFF_FFFE).kind(), ExitKind::Busy);
        assert_eq!(ExitCode((-2i64) as u64), ExitCode::BUSY);
        assert_eq!(ExitCode((-3i64) as u64).kind(), ExitKind::IdleRequired);
        assert!(ExitKind::Invalid.is_vmrun_failure());
        assert!(ExitKind::Busy.is_vmrun_failure());
        assert!(ExitKind::IdleRequired.is_vmrun_failure());
        assert_eq!(ExitCode(0xFFFF_FFFF_FFFF_FFFC).kind(), ExitKind::Other(0xFFFF_FFFF_FFFF_FFFC));
    }

    fn exit_codes_named_values_classify() {
        assert_eq!(ExitCode(0x403).kind(), ExitKind::Vmgexit);
        assert_eq!(ExitCode(0x400).kind(), ExitKind::Npf);
        assert_eq!(ExitCode(0x07C).kind(), ExitKind::Msr);
        assert_eq!(ExitCode(0x064).kind(), ExitKind::Vintr);
        assert_eq!(ExitCode(0).kind(), ExitKind::Other(0));
        assert_eq!(ExitCode(0x401).kind(), ExitKind::Other(0x401));
        assert!(!ExitKind::Vmgexit.is_vmrun_failure());
        assert!(!ExitKind::Other(5).is_vmrun_failure());
    }
}
