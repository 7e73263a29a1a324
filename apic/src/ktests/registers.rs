//! Register access rules in both interfaces, software disable.

use super::*;

altinj_ktest::suite! {
    // ---- access rules ------------------------------------------------------

    fn x2apic_read_only_registers_refuse_writes() {
        let mut a = x2(0);
        let mut ro = [0u32; 32];
        ro[..6].copy_from_slice(&[MSR_ID, MSR_VERSION, MSR_PPR, MSR_LDR, MSR_TIMER_CURRENT, MSR_ISR0]);
        for n in 0..8 {
            ro[6 + n] = MSR_ISR0 + n as u32;
            ro[14 + n] = MSR_TMR0 + n as u32;
            ro[22 + n] = MSR_IRR0 + n as u32;
        }
        for msr in &ro[..30] {
            assert!(a.read_msr(*msr, 0).is_ok(), "{msr:#x}");
            assert_eq!(a.write_msr(*msr, 0, 0), Err(RegisterError::WrongDirection), "{msr:#x}");
        }
    }

    fn x2apic_write_only_registers_refuse_reads() {
        let mut a = x2(0);
        assert_eq!(a.read_msr(MSR_EOI, 0), Err(RegisterError::WrongDirection));
        assert_eq!(a.read_msr(MSR_SELF_IPI, 0), Err(RegisterError::WrongDirection));
    }

    fn x2apic_invalid_msrs_are_unknown() {
        let mut a = x2(0);
        let valid = |m: u32| {
            matches!(m, 0x802 | 0x803 | 0x808 | 0x80A | 0x80B | 0x80D | 0x80F
                | 0x810..=0x828 | 0x82F | 0x830 | 0x832..=0x839 | 0x83E | 0x83F)
        };
        for msr in X2APIC_MSR_BASE..=X2APIC_MSR_LAST {
            if valid(msr) {
                continue;
            }
            assert_eq!(a.read_msr(msr, 0), Err(RegisterError::Unknown), "{msr:#x}");
            assert_eq!(a.write_msr(msr, 0, 0), Err(RegisterError::Unknown), "{msr:#x}");
        }
        // DFR and ICR2 do not exist in x2APIC mode.
        assert_eq!(a.read_msr(0x80E, 0), Err(RegisterError::Unknown));
        assert_eq!(a.read_msr(0x831, 0), Err(RegisterError::Unknown));
        assert_eq!(a.read_msr(0x900, 0), Err(RegisterError::Unknown));
    }

    fn x2apic_high_bits_are_gp_except_icr() {
        let mut a = x2(0);
        for msr in [MSR_TPR, MSR_SVR, MSR_LVT_TIMER, MSR_LVT_LINT0, MSR_TIMER_INITIAL, MSR_TIMER_DIVIDE, MSR_ESR, MSR_EOI, MSR_SELF_IPI] {
            assert_eq!(a.write_msr(msr, 1 << 32, 0), Err(RegisterError::InvalidValue), "{msr:#x}");
        }
        assert!(matches!(a.write_msr(MSR_ICR, (7 << 32) | 0x40, 0), Ok(WriteEffect::SendIpi(_))));
    }

    fn x2apic_msrs_are_wrong_mode_in_xapic() {
        let mut a = xa(0);
        assert_eq!(a.read_msr(MSR_TPR, 0), Err(RegisterError::WrongMode));
        assert_eq!(a.write_msr(MSR_TPR, 0, 0), Err(RegisterError::WrongMode));
    }

    fn mmio_is_wrong_mode_in_x2apic() {
        let mut a = x2(0);
        assert_eq!(a.read_mmio(XAPIC_TPR, 0), Err(RegisterError::WrongMode));
        assert_eq!(a.write_mmio(XAPIC_TPR, 0, 0), Err(RegisterError::WrongMode));
    }

    fn mmio_unaligned_or_reserved_offsets_are_unknown() {
        let mut a = xa(0);
        for off in [0x24u32, 0x0, 0x10, 0x40, 0xC0, 0x290, 0x3F0, 0x400, 0x1000] {
            assert_eq!(a.read_mmio(off, 0), Err(RegisterError::Unknown), "{off:#x}");
        }
    }

    fn x2apic_nonzero_eoi_write_is_gp() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_EOI, 1, 0), Err(RegisterError::InvalidValue));
        assert_eq!(a.write_msr(MSR_EOI, 0, 0), Ok(WriteEffect::None));
    }

    fn x2apic_nonzero_esr_write_is_gp() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_ESR, 1, 0), Err(RegisterError::InvalidValue));
        assert_eq!(a.write_msr(MSR_ESR, 0, 0), Ok(WriteEffect::None));
    }

    fn x2apic_tpr_reserved_bits_are_gp() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_TPR, 0x100, 0), Err(RegisterError::InvalidValue));
        assert_eq!(a.tpr(), 0);
    }

    fn x2apic_self_ipi_reserved_bits_are_gp() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_SELF_IPI, 0x140, 0), Err(RegisterError::InvalidValue));
        assert!(a.irr().is_empty());
    }

    fn x2apic_self_ipi_sets_irr_edge() {
        let mut a = x2(0);
        a.request(0x40, Trigger::Level);
        a.acknowledge(0x40);
        assert_eq!(a.write_msr(MSR_SELF_IPI, 0x40, 0), Ok(WriteEffect::None));
        assert!(a.irr().contains(0x40));
        assert!(!a.tmr().contains(0x40));
    }

    fn read_write_registers_read_back() {
        let mut a = x2(0);
        for (msr, v) in [
            (MSR_TPR, 0x5Au64),
            (MSR_SVR, 0x3F3),
            (MSR_LVT_CMCI, 0x0001_0432),
            (MSR_LVT_TIMER, 0x0002_0033),
            (MSR_LVT_THERMAL, 0x234),
            (MSR_LVT_PMC, 0x435),
            (MSR_LVT_LINT0, 0x0000_A736),
            (MSR_LVT_LINT1, 0x0001_0400),
            (MSR_LVT_ERROR, 0x38),
            (MSR_TIMER_DIVIDE, 0xB),
            (MSR_ICR, 0x0000_0003_0000_4040),
        ] {
            a.write_msr(msr, v, 0).unwrap();
            assert_eq!(rd(&a, msr), v, "{msr:#x}");
        }
        a.write_msr(MSR_LVT_TIMER, 0, 0).unwrap();
        a.write_msr(MSR_TIMER_INITIAL, 1000, 0).unwrap();
        assert_eq!(rd(&a, MSR_TIMER_INITIAL), 1000);
    }

    fn lvt_reserved_and_status_bits_are_ignored() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT0, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(rd(&a, MSR_LVT_LINT0), 0x0001_A7FF);
        a.write_msr(MSR_LVT_ERROR, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(rd(&a, MSR_LVT_ERROR), 0x0001_00FF);
        a.write_msr(MSR_LVT_CMCI, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(rd(&a, MSR_LVT_CMCI), 0x0001_07FF);
    }

    fn svr_reserved_bits_are_ignored() {
        let mut a = x2(0);
        a.write_msr(MSR_SVR, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(rd(&a, MSR_SVR), 0x3FF);
    }

    fn svr_eoi_suppression_writable_only_with_directed_eoi() {
        let mut a = x2(0);
        a.write_msr(MSR_SVR, 0x11FF, 0).unwrap();
        assert_eq!(rd(&a, MSR_SVR), 0x1FF);
        assert!(!a.eoi_broadcast_suppressed());
        let mut b = LocalApic::new(ApicConfig { directed_eoi: true, ..config(0) });
        b.set_apic_base(X2APIC).unwrap();
        b.write_msr(MSR_SVR, 0x11FF, 0).unwrap();
        assert_eq!(rd(&b, MSR_SVR), 0x11FF);
        assert!(b.eoi_broadcast_suppressed());
    }

    fn divide_config_reserved_bits_are_ignored() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xFFFF_FFFF, 0).unwrap();
        assert_eq!(rd(&a, MSR_TIMER_DIVIDE), 0xB);
    }

    fn version_register_reports_0x14_and_lvt_count() {
        let a = x2(0);
        assert_eq!(rd(&a, MSR_VERSION), 0x0006_0014);
        let mut b = LocalApic::new(ApicConfig { directed_eoi: true, ..config(0) });
        assert_eq!(b.read_mmio(XAPIC_VERSION, 0), Ok(0x0106_0014));
        b.set_apic_base(X2APIC).unwrap();
        assert_eq!(rd(&b, MSR_VERSION), 0x0106_0014);
    }

    fn x2apic_id_is_32_bit_and_ldr_derived() {
        let a = x2(0x1_2345);
        assert_eq!(rd(&a, MSR_ID), 0x1_2345);
        assert_eq!(rd(&a, MSR_LDR), (0x1234 << 16) | (1 << 5));
        assert_eq!(a.address().ldr, (0x1234 << 16) | (1 << 5));
    }

    fn xapic_id_is_bits_31_24_and_read_only() {
        let mut a = xa(0x12);
        assert_eq!(a.read_mmio(XAPIC_ID, 0), Ok(0x1200_0000));
        assert_eq!(a.write_mmio(XAPIC_ID, 0x3400_0000, 0), Ok(WriteEffect::None));
        assert_eq!(a.read_mmio(XAPIC_ID, 0), Ok(0x1200_0000));
        assert_eq!(a.address().id, 0x12);
    }

    // MMIO cannot fault (Intel SDM vol. 3A §11.4.1): the write is dropped.
    fn xapic_mmio_write_to_read_only_register_is_silently_ignored() {
        let mut a = xa(3);
        a.request(0x40, Trigger::Edge);
        let before = a.save();
        for off in [XAPIC_ID, XAPIC_VERSION, XAPIC_APR, XAPIC_PPR, XAPIC_ISR0, XAPIC_TMR0, XAPIC_IRR0 + 0x20, XAPIC_TIMER_CURRENT] {
            assert_eq!(a.write_mmio(off, 0xFFFF_FFFF, 0), Ok(WriteEffect::None), "{off:#x}");
        }
        assert_eq!(a.save(), before);
    }

    fn xapic_ldr_and_dfr_are_writable_in_their_bits() {
        let mut a = xa(0);
        assert_eq!(a.write_mmio(XAPIC_LDR, 0xFFFF_FFFF, 0), Ok(WriteEffect::AddressChanged));
        assert_eq!(a.read_mmio(XAPIC_LDR, 0), Ok(0xFF00_0000));
        assert_eq!(a.write_mmio(XAPIC_DFR, 0x0000_0000, 0), Ok(WriteEffect::AddressChanged));
        assert_eq!(a.read_mmio(XAPIC_DFR, 0), Ok(0x0FFF_FFFF));
        assert_eq!(a.address().format, DestinationFormat::Cluster);
        a.write_mmio(XAPIC_DFR, 0xF000_0000, 0).unwrap();
        assert_eq!(a.address().format, DestinationFormat::Flat);
    }

    fn xapic_tpr_reserved_bits_are_ignored() {
        let mut a = xa(0);
        a.write_mmio(XAPIC_TPR, 0xFFFF_FF35, 0).unwrap();
        assert_eq!(a.read_mmio(XAPIC_TPR, 0), Ok(0x35));
    }

    fn xapic_eoi_and_esr_take_any_value() {
        let mut a = xa(0);
        a.request(0x40, Trigger::Edge);
        a.acknowledge(0x40);
        assert_eq!(
            a.write_mmio(XAPIC_EOI, 0x1234, 0),
            Ok(WriteEffect::Eoi(EoiInfo { vector: 0x40, level: false, broadcast: false }))
        );
        assert_eq!(a.write_mmio(XAPIC_ESR, 0xFFFF, 0), Ok(WriteEffect::None));
        assert_eq!(a.read_mmio(XAPIC_EOI, 0), Err(RegisterError::WrongDirection));
    }

    // ---- software disable --------------------------------------------------

    fn software_disable_masks_every_lvt() {
        let mut a = x2(0);
        for msr in [MSR_LVT_CMCI, MSR_LVT_TIMER, MSR_LVT_THERMAL, MSR_LVT_PMC, MSR_LVT_LINT0, MSR_LVT_LINT1, MSR_LVT_ERROR] {
            a.write_msr(msr, 0x40, 0).unwrap();
        }
        a.write_msr(MSR_SVR, 0xFF, 0).unwrap();
        for msr in [MSR_LVT_CMCI, MSR_LVT_TIMER, MSR_LVT_THERMAL, MSR_LVT_PMC, MSR_LVT_LINT0, MSR_LVT_LINT1, MSR_LVT_ERROR] {
            assert_eq!(rd(&a, msr), 0x1_0040, "{msr:#x}");
        }
    }

    fn software_disabled_lvt_mask_cannot_be_cleared() {
        let mut a = LocalApic::new(config(0));
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_LVT_LINT0, 0x40, 0).unwrap();
        assert_eq!(rd(&a, MSR_LVT_LINT0), 0x1_0040);
    }

    fn software_reenable_does_not_unmask() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT0, 0x40, 0).unwrap();
        a.write_msr(MSR_SVR, 0xFF, 0).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        assert_eq!(rd(&a, MSR_LVT_LINT0), 0x1_0040);
        a.write_msr(MSR_LVT_LINT0, 0x40, 0).unwrap();
        assert_eq!(rd(&a, MSR_LVT_LINT0), 0x40);
    }

    fn software_disabled_drops_fixed_requests_and_keeps_irr_isr() {
        let mut a = x2(0);
        a.request(0x40, Trigger::Edge);
        a.acknowledge(0x40);
        a.request(0x50, Trigger::Edge);
        a.write_msr(MSR_SVR, 0xFF, 0).unwrap();
        assert_eq!(a.request(0x60, Trigger::Edge), RequestOutcome::Dropped);
        assert!(a.irr().contains(0x50) && !a.irr().contains(0x60));
        assert!(a.isr().contains(0x40));
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x40));
    }

    fn software_disabled_timer_expires_masked() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        a.write_msr(MSR_SVR, 0xFF, 0).unwrap();
        assert!(a.poll_timer(10));
        assert!(a.irr().is_empty());
    }
}
