//! Vector sets, APIC_BASE modes, reset values, save/restore.

use super::*;

altinj_ktest::suite! {
    // ---- VectorSet -------------------------------------------------------

    fn vector_set_word_layout_is_register_order() {
        let mut s = VectorSet::EMPTY;
        assert!(s.insert(0x21));
        assert!(s.insert(0xFF));
        assert_eq!(s.word(1), 1 << 1);
        assert_eq!(s.word(7), 1 << 31);
        assert_eq!(s.word(8), 0);
        assert_eq!(VectorSet::from_words(s.words()), s);
        assert_eq!(s.len(), 2);
    }

    fn vector_set_insert_remove_report_change() {
        let mut s = VectorSet::EMPTY;
        assert!(s.insert(0x40));
        assert!(!s.insert(0x40));
        assert!(s.contains(0x40));
        assert!(s.remove(0x40));
        assert!(!s.remove(0x40));
        assert!(s.is_empty());
    }

    fn vector_set_highest_and_iter_cover_every_word() {
        let mut s = VectorSet::EMPTY;
        assert_eq!(s.highest(), None);
        for v in [0u8, 63, 64, 127, 128, 191, 192, 255] {
            s.insert(v);
            assert_eq!(s.highest(), Some(v));
        }
        let mut it = s.iter();
        for v in [0u8, 63, 64, 127, 128, 191, 192, 255] {
            assert_eq!(it.next(), Some(v));
        }
        assert_eq!(it.next(), None);
        assert_eq!(VectorSet::ALL.len(), 256);
        assert_eq!(VectorSet::LEGAL.len(), 240);
        assert_eq!(VectorSet::ALL.intersection(&s), s);
        assert_eq!(VectorSet::EMPTY.union(&s), s);
        assert_eq!(s.difference(&s), VectorSet::EMPTY);
    }

    // ---- size --------------------------------------------------------------

    fn local_apic_state_fits_in_256_bytes() {
        assert!(core::mem::size_of::<LocalApic>() <= 256);
        assert!(core::mem::size_of::<ApicState>() <= 256);
    }

    // ---- APIC_BASE ---------------------------------------------------------

    fn apic_base_resets_to_xapic_enabled_at_default_base() {
        let a = LocalApic::new(ApicConfig { bsp: true, ..config(0) });
        assert_eq!(a.apic_base(), BASE | APIC_BASE_EN | APIC_BASE_BSP);
        assert_eq!(a.mode(), ApicMode::XApic);
        let b = LocalApic::new(config(1));
        assert_eq!(b.apic_base(), BASE | APIC_BASE_EN);
    }

    fn apic_base_xapic_to_x2apic_is_legal() {
        let mut a = LocalApic::new(config(3));
        assert_eq!(a.set_apic_base(X2APIC), Ok(WriteEffect::ModeChanged(ApicMode::X2Apic)));
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.read_msr(MSR_APIC_BASE, 0), Ok(X2APIC));
    }

    fn apic_base_x2apic_to_xapic_is_gp() {
        let mut a = x2(0);
        assert_eq!(a.set_apic_base(XAPIC), Err(RegisterError::InvalidValue));
        assert_eq!(a.mode(), ApicMode::X2Apic);
    }

    fn apic_base_disabled_to_x2apic_is_gp() {
        let mut a = LocalApic::new(config(0));
        assert_eq!(a.set_apic_base(BASE), Ok(WriteEffect::ModeChanged(ApicMode::Disabled)));
        assert_eq!(a.set_apic_base(X2APIC), Err(RegisterError::InvalidValue));
        assert_eq!(a.mode(), ApicMode::Disabled);
    }

    fn apic_base_x2apic_to_disabled_to_xapic_is_legal() {
        let mut a = x2(0);
        assert_eq!(a.set_apic_base(BASE), Ok(WriteEffect::ModeChanged(ApicMode::Disabled)));
        assert_eq!(a.set_apic_base(XAPIC), Ok(WriteEffect::ModeChanged(ApicMode::XApic)));
        assert_eq!(a.mode(), ApicMode::XApic);
    }

    fn apic_base_extd_without_en_is_gp() {
        let mut a = LocalApic::new(config(0));
        assert_eq!(
            a.set_apic_base(BASE | APIC_BASE_EXTD),
            Err(RegisterError::InvalidValue)
        );
        a.set_apic_base(BASE).unwrap();
        assert_eq!(
            a.set_apic_base(BASE | APIC_BASE_EXTD),
            Err(RegisterError::InvalidValue)
        );
    }

    fn apic_base_reserved_bits_are_gp() {
        let mut a = LocalApic::new(config(0));
        for bit in [0u32, 7, 9, 52, 63] {
            assert_eq!(
                a.set_apic_base(XAPIC | (1 << bit)),
                Err(RegisterError::InvalidValue),
                "bit {bit}"
            );
        }
        assert_eq!(a.apic_base(), XAPIC);
    }

    fn apic_base_bsp_bit_is_read_only() {
        let mut a = LocalApic::new(config(0));
        a.set_apic_base(XAPIC | APIC_BASE_BSP).unwrap();
        assert_eq!(a.apic_base(), XAPIC);
        let mut b = LocalApic::new(ApicConfig { bsp: true, ..config(0) });
        b.set_apic_base(XAPIC).unwrap();
        assert_eq!(b.apic_base() & APIC_BASE_BSP, APIC_BASE_BSP);
    }

    fn apic_base_same_mode_write_relocates_without_mode_change() {
        let mut a = LocalApic::new(config(0));
        assert_eq!(a.set_apic_base(0xFED0_0000 | APIC_BASE_EN), Ok(WriteEffect::None));
        assert_eq!(a.apic_base(), 0xFED0_0000 | APIC_BASE_EN);
    }

    fn apic_base_disable_resets_registers() {
        let mut a = x2(0);
        a.request(0x40, Trigger::Level);
        a.write_msr(MSR_TPR, 0x20, 0).unwrap();
        a.write_msr(MSR_LVT_LINT0, 0x30, 0).unwrap();
        a.set_apic_base(BASE).unwrap();
        a.set_apic_base(XAPIC).unwrap();
        assert!(a.irr().is_empty());
        assert!(a.tmr().is_empty());
        assert_eq!(a.tpr(), 0);
        assert_eq!(a.read_mmio(XAPIC_SVR, 0), Ok(0xFF));
        assert_eq!(a.read_mmio(XAPIC_LVT_LINT0, 0), Ok(LVT_MASKED));
    }

    fn apic_base_disabled_apic_drops_requests_and_refuses_registers() {
        let mut a = LocalApic::new(config(0));
        a.set_apic_base(BASE).unwrap();
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Dropped);
        assert_eq!(a.read_mmio(XAPIC_TPR, 0), Err(RegisterError::WrongMode));
        assert_eq!(a.read_msr(MSR_TPR, 0), Err(RegisterError::WrongMode));
        assert_eq!(a.read_msr(MSR_APIC_BASE, 0), Ok(BASE));
    }

    fn apic_base_switch_to_x2apic_keeps_xapic_state() {
        // OVMF programs the APIC in xAPIC mode, then switches to x2APIC.
        let mut a = xa(5);
        a.write_mmio(XAPIC_TPR, 0x30, 0).unwrap();
        a.write_mmio(XAPIC_LVT_LINT1, 0x400, 0).unwrap();
        a.write_mmio(XAPIC_LDR, 0x0100_0000, 0).unwrap();
        a.request(0x80, Trigger::Edge);
        a.set_apic_base(X2APIC).unwrap();
        assert_eq!(rd(&a, MSR_TPR), 0x30);
        assert_eq!(rd(&a, MSR_SVR), 0x1FF);
        assert_eq!(rd(&a, MSR_LVT_LINT1), 0x400);
        assert_eq!(rd(&a, MSR_IRR0 + 4), 1);
        assert_eq!(rd(&a, MSR_ID), 5);
        assert_eq!(rd(&a, MSR_LDR), 1 << 5);
    }

    // ---- reset values ------------------------------------------------------

    fn reset_values_in_xapic_mode() {
        let mut a = LocalApic::new(config(7));
        for (off, v) in [
            (XAPIC_ID, 0x0700_0000u32),
            (XAPIC_VERSION, 0x0006_0014),
            (XAPIC_TPR, 0),
            (XAPIC_APR, 0),
            (XAPIC_PPR, 0),
            (XAPIC_LDR, 0),
            (XAPIC_DFR, 0xFFFF_FFFF),
            (XAPIC_SVR, 0xFF),
            (XAPIC_ESR, 0),
            (XAPIC_ICR_LOW, 0),
            (XAPIC_ICR_HIGH, 0),
            (XAPIC_LVT_CMCI, LVT_MASKED),
            (XAPIC_LVT_TIMER, LVT_MASKED),
            (XAPIC_LVT_THERMAL, LVT_MASKED),
            (XAPIC_LVT_PMC, LVT_MASKED),
            (XAPIC_LVT_LINT0, LVT_MASKED),
            (XAPIC_LVT_LINT1, LVT_MASKED),
            (XAPIC_LVT_ERROR, LVT_MASKED),
            (XAPIC_TIMER_INITIAL, 0),
            (XAPIC_TIMER_CURRENT, 0),
            (XAPIC_TIMER_DIVIDE, 0),
        ] {
            assert_eq!(a.read_mmio(off, 0), Ok(v), "{off:#x}");
        }
        for n in 0..8 {
            assert_eq!(a.read_mmio(XAPIC_ISR0 + 0x10 * n, 0), Ok(0));
            assert_eq!(a.read_mmio(XAPIC_TMR0 + 0x10 * n, 0), Ok(0));
            assert_eq!(a.read_mmio(XAPIC_IRR0 + 0x10 * n, 0), Ok(0));
        }
        assert_eq!(a.tsc_deadline(), 0);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn reset_values_in_x2apic_mode() {
        let mut a = LocalApic::new(config(0x21));
        a.set_apic_base(X2APIC).unwrap();
        for (msr, v) in [
            (MSR_ID, 0x21u64),
            (MSR_VERSION, 0x0006_0014),
            (MSR_TPR, 0),
            (MSR_PPR, 0),
            (MSR_LDR, (2 << 16) | 2),
            (MSR_SVR, 0xFF),
            (MSR_ESR, 0),
            (MSR_ICR, 0),
            (MSR_LVT_TIMER, 0x1_0000),
            (MSR_LVT_ERROR, 0x1_0000),
            (MSR_TIMER_CURRENT, 0),
            (MSR_TSC_DEADLINE, 0),
        ] {
            assert_eq!(rd(&a, msr), v, "{msr:#x}");
        }
    }

    // ---- save / restore ----------------------------------------------------

    fn save_restore_round_trips_exactly() {
        let mut a = x2(3);
        a.request(0x40, Trigger::Level);
        a.acknowledge(0x40);
        a.request(0x41, Trigger::Edge);
        a.set_tpr(0x21);
        a.set_host_vector_allowed(0x99, true);
        a.write_msr(MSR_LVT_ERROR, 0x33, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 77, 123).unwrap();
        a.request(2, Trigger::Edge);
        let s = a.save();
        let mut b = LocalApic::restore(&s);
        assert_eq!(b.save(), s);
        assert_eq!(b.next_timer_deadline(), a.next_timer_deadline());
        assert_eq!(b.highest_deliverable(), a.highest_deliverable());
        assert_eq!(b.read_msr(MSR_TIMER_CURRENT, 150), a.read_msr(MSR_TIMER_CURRENT, 150));
    }

    fn restore_drops_illegal_vectors() {
        let mut s = x2(0).save();
        s.irr = VectorSet::ALL;
        s.isr = VectorSet::ALL;
        s.host_allowed = VectorSet::ALL;
        s.apic_base = BASE | APIC_BASE_EXTD;
        let a = LocalApic::restore(&s);
        assert_eq!(a.irr().highest(), Some(255));
        assert!((0..16u8).all(|v| !a.irr().contains(v) && !a.isr().contains(v)));
        assert!(!a.host_vector_allowed(30));
        assert_eq!(a.mode(), ApicMode::Disabled);
    }
}
