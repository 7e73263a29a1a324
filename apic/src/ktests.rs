//! Unit tests (one definition, host and in-kernel runner).
//!
//! One behaviour per test, named after it. Bodies are `no_std`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use crate::*;

const BASE: u64 = 0xFEE0_0000;
const XAPIC: u64 = BASE | APIC_BASE_EN;
const X2APIC: u64 = BASE | APIC_BASE_EN | APIC_BASE_EXTD;

fn config(id: u32) -> ApicConfig {
    ApicConfig {
        apic_id: id,
        bsp: false,
        ticks_per_bus_cycle: 1,
        directed_eoi: false,
    }
}

/// An APIC in x2APIC mode, software-enabled (spurious vector 0xFF).
fn x2(id: u32) -> LocalApic {
    let mut a = LocalApic::new(config(id));
    a.set_apic_base(X2APIC).unwrap();
    a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
    a
}

/// An APIC in xAPIC mode, software-enabled.
fn xa(id: u32) -> LocalApic {
    let mut a = LocalApic::new(config(id));
    a.write_mmio(XAPIC_SVR, 0x1FF, 0).unwrap();
    a
}

fn rd(a: &LocalApic, msr: u32) -> u64 {
    a.read_msr(msr, 0).unwrap()
}

fn send(a: &mut LocalApic, icr: u64) -> Ipi {
    match a.write_msr(MSR_ICR, icr, 0).unwrap() {
        WriteEffect::SendIpi(ipi) => ipi,
        other => panic!("no IPI: {other:?}"),
    }
}

fn target(id: u32, mode: ApicMode) -> ApicAddress {
    let mut a = LocalApic::new(config(id));
    if mode == ApicMode::X2Apic {
        a.set_apic_base(X2APIC).unwrap();
    }
    a.address()
}

/// Sets the timer LVT (vector 0xEC, unmasked) with `mode`, in x2APIC mode.
fn timer(a: &mut LocalApic, mode: u32, now: u64) {
    a.write_msr(MSR_LVT_TIMER, u64::from(0xEC | (mode << 17)), now)
        .unwrap();
}

ktest::suite! {
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
        let a = x2(0);
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
        let a = xa(0);
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
        assert_eq!(a.write_mmio(XAPIC_ID, 0x3400_0000, 0), Err(RegisterError::WrongDirection));
        assert_eq!(a.read_mmio(XAPIC_ID, 0), Ok(0x1200_0000));
        assert_eq!(a.address().id, 0x12);
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
            Ok(WriteEffect::Eoi(EoiInfo { vector: 0x40, level: false }))
        );
        assert_eq!(a.write_mmio(XAPIC_ESR, 0xFFFF, 0), Ok(WriteEffect::None));
        assert_eq!(a.read_mmio(XAPIC_EOI, 0), Err(RegisterError::WrongDirection));
    }

    // ---- reset values ------------------------------------------------------

    fn reset_values_in_xapic_mode() {
        let a = LocalApic::new(config(7));
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

    // ---- PPR / TPR ---------------------------------------------------------

    fn ppr_equal_class_is_deferred() {
        let mut a = x2(0);
        a.set_tpr(0x50);
        a.request(0x55, Trigger::Edge);
        assert_eq!(a.highest_deliverable(), None);
        a.request(0x60, Trigger::Edge);
        assert_eq!(a.highest_deliverable(), Some(0x60));
    }

    fn ppr_sub_class_does_not_count() {
        let mut a = x2(0);
        a.request(0x51, Trigger::Edge);
        a.acknowledge(0x51);
        // 0x5F is above 0x51 but in the same class: blocked.
        a.request(0x5F, Trigger::Edge);
        assert_eq!(a.ppr(), 0x50);
        assert_eq!(a.highest_deliverable(), None);
        // TPR 0x4F: low nibble ignored for delivery.
        let mut b = x2(0);
        b.set_tpr(0x4F);
        b.request(0x50, Trigger::Edge);
        assert_eq!(b.highest_deliverable(), Some(0x50));
    }

    fn ppr_nested_isr_takes_highest_class() {
        let mut a = x2(0);
        a.request(0x31, Trigger::Edge);
        a.acknowledge(0x31);
        a.request(0x61, Trigger::Edge);
        a.acknowledge(0x61);
        assert_eq!(a.ppr(), 0x60);
        a.eoi();
        assert_eq!(a.ppr(), 0x30);
        a.eoi();
        assert_eq!(a.ppr(), 0);
    }

    fn ppr_is_tpr_when_tpr_class_is_at_least_isr_class() {
        let mut a = x2(0);
        a.request(0x41, Trigger::Edge);
        a.acknowledge(0x41);
        a.set_tpr(0x47);
        assert_eq!(a.ppr(), 0x47);
        a.set_tpr(0x37);
        assert_eq!(a.ppr(), 0x40);
        assert_eq!(rd(&a, MSR_PPR), 0x40);
    }

    fn tpr_low_nibble_is_kept() {
        let mut a = x2(0);
        a.write_msr(MSR_TPR, 0x3C, 0).unwrap();
        assert_eq!(rd(&a, MSR_TPR), 0x3C);
        assert_eq!(a.tpr(), 0x3C);
    }

    fn highest_deliverable_with_full_irr_is_255() {
        let mut a = x2(0);
        for v in 16..=255u8 {
            a.request(v, Trigger::Edge);
        }
        assert_eq!(a.highest_deliverable(), Some(255));
        a.set_tpr(0xF0);
        assert_eq!(a.highest_deliverable(), None);
    }

    // ---- EOI ---------------------------------------------------------------

    fn eoi_retires_highest_in_service_first() {
        let mut a = x2(0);
        for v in [0x30u8, 0x50, 0x80] {
            a.request(v, Trigger::Edge);
            a.acknowledge(v);
        }
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x80));
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x50));
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x30));
        assert_eq!(a.eoi(), None);
    }

    fn eoi_reports_level_from_tmr() {
        let mut a = x2(0);
        a.request(0x70, Trigger::Level);
        a.acknowledge(0x70);
        assert_eq!(
            a.write_msr(MSR_EOI, 0, 0),
            Ok(WriteEffect::Eoi(EoiInfo { vector: 0x70, level: true }))
        );
        a.request(0x71, Trigger::Edge);
        a.acknowledge(0x71);
        assert_eq!(a.eoi(), Some(EoiInfo { vector: 0x71, level: false }));
    }

    fn eoi_with_nothing_in_service_is_no_effect() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_EOI, 0, 0), Ok(WriteEffect::None));
    }

    fn unacknowledge_returns_vector_to_irr() {
        let mut a = x2(0);
        a.request(0x44, Trigger::Edge);
        a.acknowledge(0x44);
        a.unacknowledge(0x44);
        assert!(a.irr().contains(0x44));
        assert!(!a.isr().contains(0x44));
        assert_eq!(a.highest_deliverable(), Some(0x44));
    }

    fn acknowledge_of_vector_not_pending_changes_nothing() {
        let mut a = x2(0);
        a.acknowledge(0x44);
        assert!(a.isr().is_empty());
    }

    fn acknowledge_refuses_vector_not_above_in_service_class() {
        let mut a = x2(0);
        a.request(0x65, Trigger::Edge);
        assert!(a.acknowledge(0x65));
        a.request(0x61, Trigger::Edge);
        a.request(0x41, Trigger::Edge);
        assert!(!a.acknowledge(0x61));
        assert!(!a.acknowledge(0x41));
        assert!(a.irr().contains(0x61) && a.irr().contains(0x41));
        assert_eq!(a.isr().len(), 1);
    }

    // ---- received IPIs, INIT -----------------------------------------------

    fn accepted_fixed_ipi_sets_irr_and_others_are_reported() {
        let mut s = x2(0);
        let mut t = x2(1);
        let fixed = send(&mut s, (1 << 32) | (1 << 15) | (1 << 14) | 0x45);
        assert_eq!(t.accept_ipi(&fixed), Received::Requested(RequestOutcome::Accepted));
        assert!(t.irr().contains(0x45) && !t.tmr().contains(0x45));
        let nmi = send(&mut s, (1 << 32) | (4 << 8) | (1 << 14));
        assert_eq!(t.accept_ipi(&nmi), Received::Nmi);
        let init = send(&mut s, (1 << 32) | (5 << 8) | (1 << 14));
        assert_eq!(t.accept_ipi(&init), Received::Init { assert: true });
        let deassert = send(&mut s, (1 << 32) | (5 << 8) | (1 << 15));
        assert_eq!(t.accept_ipi(&deassert), Received::Init { assert: false });
        let sipi = send(&mut s, (1 << 32) | (6 << 8) | 0x10);
        assert_eq!(t.accept_ipi(&sipi), Received::StartUp(0x10));
        let ext = send(&mut s, (1 << 32) | (7 << 8));
        assert_eq!(t.accept_ipi(&ext), Received::ExtInt);
        let smi = send(&mut s, (1 << 32) | (2 << 8));
        assert_eq!(t.accept_ipi(&smi), Received::Unsupported);
        assert_eq!(t.irr().len(), 1);
        t.set_apic_base(BASE).unwrap();
        assert_eq!(t.accept_ipi(&nmi), Received::Ignored);
    }

    fn software_disabled_apic_still_takes_nmi_init_sipi() {
        let mut s = x2(0);
        let mut t = LocalApic::new(config(1));
        t.set_apic_base(X2APIC).unwrap();
        let fixed = send(&mut s, (1 << 32) | 0x45);
        assert_eq!(
            t.accept_ipi(&fixed),
            Received::Requested(RequestOutcome::Dropped)
        );
        let nmi = send(&mut s, (1 << 32) | (4 << 8) | (1 << 14));
        assert_eq!(t.accept_ipi(&nmi), Received::Nmi);
        let sipi = send(&mut s, (1 << 32) | (6 << 8) | 0x10);
        assert_eq!(t.accept_ipi(&sipi), Received::StartUp(0x10));
    }

    fn init_reset_restores_power_up_registers_but_keeps_mode_and_id() {
        let mut a = x2(9);
        a.request(0x40, Trigger::Edge);
        a.set_tpr(0x30);
        a.write_msr(MSR_LVT_LINT0, 0x41, 0).unwrap();
        a.init_reset();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(rd(&a, MSR_ID), 9);
        assert_eq!(rd(&a, MSR_SVR), 0xFF);
        assert_eq!(rd(&a, MSR_LVT_LINT0), u64::from(LVT_MASKED));
        assert!(a.irr().is_empty());
        assert_eq!(a.tpr(), 0);
    }

    // ---- TMR, coalescing ---------------------------------------------------

    fn tmr_is_set_on_level_acceptance_and_cleared_on_edge() {
        let mut a = x2(0);
        a.request(0x90, Trigger::Level);
        assert!(a.tmr().contains(0x90));
        assert_eq!(rd(&a, MSR_TMR0 + 4), 1 << 16);
        a.acknowledge(0x90);
        a.eoi();
        a.request(0x90, Trigger::Edge);
        assert!(!a.tmr().contains(0x90));
    }

    fn second_request_coalesces() {
        let mut a = x2(0);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Accepted);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Coalesced);
        a.acknowledge(0x40);
        assert!(a.irr().is_empty());
        assert_eq!(a.eoi().map(|e| e.vector), Some(0x40));
        assert_eq!(a.eoi(), None);
    }

    fn vector_can_be_in_service_and_pending_once_more() {
        let mut a = x2(0);
        a.request(0x40, Trigger::Edge);
        a.acknowledge(0x40);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Accepted);
        assert_eq!(a.request(0x40, Trigger::Edge), RequestOutcome::Coalesced);
        assert!(a.isr().contains(0x40) && a.irr().contains(0x40));
        assert_eq!(a.highest_deliverable(), None);
        a.eoi();
        assert_eq!(a.highest_deliverable(), Some(0x40));
    }

    // ---- ESR, illegal vectors, host filter ---------------------------------

    fn request_below_16_is_illegal_and_latches_receive_illegal() {
        let mut a = x2(0);
        for v in 0..16u8 {
            assert_eq!(a.request(v, Trigger::Edge), RequestOutcome::Illegal);
        }
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), Esr::RECEIVE_ILLEGAL_VECTOR.bits());
    }

    fn esr_becomes_visible_on_write() {
        let mut a = x2(0);
        a.request(3, Trigger::Edge);
        assert_eq!(rd(&a, MSR_ESR), 0);
        a.write_msr(MSR_ESR, 0, 0).unwrap();
        assert_eq!(rd(&a, MSR_ESR), 0x40);
        assert_eq!(a.pending_esr(), 0);
        a.write_msr(MSR_ESR, 0, 0).unwrap();
        assert_eq!(rd(&a, MSR_ESR), 0);
    }

    fn self_ipi_with_illegal_vector_latches_receive_illegal() {
        let mut a = x2(0);
        a.write_msr(MSR_SELF_IPI, 0x0F, 0).unwrap();
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), Esr::RECEIVE_ILLEGAL_VECTOR.bits());
    }

    fn lvt_error_interrupt_fires_on_latched_error() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_ERROR, 0xFE, 0).unwrap();
        a.request(1, Trigger::Edge);
        assert!(a.irr().contains(0xFE));
        let mut b = x2(0);
        b.request(1, Trigger::Edge);
        assert!(b.irr().is_empty());
    }

    fn lvt_error_with_illegal_vector_does_not_recurse() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_ERROR, 0x05, 0).unwrap();
        assert_eq!(a.request(2, Trigger::Edge), RequestOutcome::Illegal);
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), 0x40);
    }

    fn host_vectors_need_configure_vector() {
        let mut a = x2(0);
        assert_eq!(a.request_from_host(0x41, Trigger::Edge), RequestOutcome::Denied);
        a.set_host_vector_allowed(0x41, true);
        assert_eq!(a.request_from_host(0x41, Trigger::Level), RequestOutcome::Accepted);
        assert!(a.tmr().contains(0x41));
        a.set_host_vector_allowed(0x41, false);
        assert_eq!(a.request_from_host(0x41, Trigger::Edge), RequestOutcome::Denied);
    }

    fn host_vectors_below_31_are_never_allowed() {
        let mut a = x2(0);
        a.set_all_host_vectors_allowed(true);
        for v in 0..31u8 {
            assert_eq!(a.request_from_host(v, Trigger::Edge), RequestOutcome::Denied);
        }
        a.set_host_vector_allowed(20, true);
        assert!(!a.host_vector_allowed(20));
        assert_eq!(a.request_from_host(31, Trigger::Edge), RequestOutcome::Accepted);
        assert_eq!(a.pending_esr(), 0);
        a.set_all_host_vectors_allowed(false);
        assert_eq!(a.request_from_host(0x80, Trigger::Edge), RequestOutcome::Denied);
    }

    // ---- ICR ---------------------------------------------------------------

    fn icr_reserved_bits_are_gp() {
        let mut a = x2(0);
        for bit in [13u32, 16, 17, 20, 25, 31] {
            assert_eq!(
                a.write_msr(MSR_ICR, 0x40 | (1 << bit), 0),
                Err(RegisterError::InvalidValue),
                "bit {bit}"
            );
        }
        assert_eq!(rd(&a, MSR_ICR), 0);
    }

    fn icr_delivery_status_bit_is_gp() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_ICR, 0x1040, 0), Err(RegisterError::InvalidValue));
    }

    fn icr_fixed_illegal_vector_latches_send_illegal_and_sends_nothing() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_ICR, (1 << 32) | 0x0F, 0), Ok(WriteEffect::None));
        assert_eq!(a.pending_esr(), Esr::SEND_ILLEGAL_VECTOR.bits());
    }

    fn icr_physical_destination_matches_one_id() {
        let mut a = x2(0);
        let ipi = send(&mut a, (0x105 << 32) | 0x40);
        assert_eq!(ipi.mode, DeliveryMode::Fixed);
        assert_eq!(ipi.vector, 0x40);
        assert_eq!(ipi.destination, Destination::Physical { id: 0x105, x2apic: true });
        let hits = (0..512u32)
            .filter(|id| ipi.destination.matches(ipi.source, &target(*id, ApicMode::X2Apic)))
            .count();
        assert_eq!(hits, 1);
        assert!(ipi.destination.matches(0, &target(0x105, ApicMode::X2Apic)));
    }

    fn icr_x2apic_logical_cluster_matches_cluster_and_bits() {
        let mut a = x2(0);
        // Cluster 2, members 0 and 3: IDs 0x20 and 0x23.
        let ipi = send(&mut a, (((2 << 16) | 0b1001) << 32) | (1 << 11) | 0x40);
        assert_eq!(ipi.destination, Destination::Logical { mda: (2 << 16) | 9, x2apic: true });
        let mut hits = [0u32; 4];
        let mut n = 0;
        for id in 0..512u32 {
            if ipi.destination.matches(0, &target(id, ApicMode::X2Apic)) {
                hits[n] = id;
                n += 1;
            }
        }
        assert_eq!(n, 2);
        assert_eq!(&hits[..2], &[0x20, 0x23]);
    }

    fn icr_xapic_logical_flat_matches_common_bit() {
        let mut a = xa(0);
        a.write_mmio(XAPIC_ICR_HIGH, 0x0600_0000, 0).unwrap();
        let ipi = match a.write_mmio(XAPIC_ICR_LOW, 0x0800 | 0x40, 0).unwrap() {
            WriteEffect::SendIpi(ipi) => ipi,
            other => panic!("{other:?}"),
        };
        assert_eq!(ipi.destination, Destination::Logical { mda: 6, x2apic: false });
        let mut t = xa(1);
        for (ldr, hit) in [(1u32, false), (2, true), (4, true), (8, false)] {
            t.write_mmio(XAPIC_LDR, ldr << 24, 0).unwrap();
            assert_eq!(ipi.destination.matches(0, &t.address()), hit, "ldr {ldr}");
        }
    }

    fn icr_xapic_logical_cluster_matches_cluster_and_bits() {
        let d = Destination::Logical { mda: 0x23, x2apic: false };
        let mut t = xa(1);
        t.write_mmio(XAPIC_DFR, 0x0FFF_FFFF, 0).unwrap();
        for (ldr, hit) in [(0x21u32, true), (0x22, true), (0x24, false), (0x31, false)] {
            t.write_mmio(XAPIC_LDR, ldr << 24, 0).unwrap();
            assert_eq!(d.matches(0, &t.address()), hit, "ldr {ldr:#x}");
        }
        // Cluster 0xF addresses every cluster.
        t.write_mmio(XAPIC_LDR, 0x51 << 24, 0).unwrap();
        assert!(Destination::Logical { mda: 0xF1, x2apic: false }.matches(0, &t.address()));
    }

    fn icr_broadcast_reaches_every_enabled_apic() {
        let mut a = x2(0);
        let ipi = send(&mut a, (0xFFFF_FFFF << 32) | 0x40);
        let logical = send(&mut a, (0xFFFF_FFFF << 32) | (1 << 11) | 0x40);
        for id in [0u32, 1, 0x1FF, 0xFFFF] {
            assert!(ipi.destination.matches(0, &target(id, ApicMode::X2Apic)));
            assert!(logical.destination.matches(0, &target(id, ApicMode::X2Apic)));
        }
        let xb = Destination::Physical { id: 0xFF, x2apic: false };
        assert!(xb.matches(0, &target(3, ApicMode::XApic)));
        let mut off = LocalApic::new(config(9));
        off.set_apic_base(BASE).unwrap();
        assert!(!ipi.destination.matches(0, &off.address()));
    }

    fn icr_shorthands_select_self_all_and_others() {
        let mut a = x2(7);
        let me = target(7, ApicMode::X2Apic);
        let other = target(8, ApicMode::X2Apic);
        let s = send(&mut a, (1 << 18) | 0x40);
        assert_eq!((s.destination, s.source), (Destination::ToSelf, 7));
        assert!(s.destination.matches(7, &me) && !s.destination.matches(7, &other));
        let all = send(&mut a, (2 << 18) | 0x40);
        assert_eq!(all.destination, Destination::AllIncludingSelf);
        assert!(all.destination.matches(7, &me) && all.destination.matches(7, &other));
        let others = send(&mut a, (3 << 18) | 0x40);
        assert_eq!(others.destination, Destination::AllExcludingSelf);
        assert!(!others.destination.matches(7, &me) && others.destination.matches(7, &other));
    }

    fn icr_missing_target_matches_nobody() {
        let mut a = x2(0);
        let ipi = send(&mut a, (600 << 32) | 0x40);
        assert!((0..512u32).all(|id| !ipi.destination.matches(0, &target(id, ApicMode::X2Apic))));
        let none = send(&mut a, (3 << 48) | (1 << 11) | 0x40);
        assert!((0..512u32).all(|id| !none.destination.matches(0, &target(id, ApicMode::X2Apic))));
    }

    fn icr_xapic_low_write_sends_with_high_destination() {
        let mut a = xa(0);
        assert_eq!(a.write_mmio(XAPIC_ICR_HIGH, 0x03FF_FFFF, 0), Ok(WriteEffect::None));
        assert_eq!(a.read_mmio(XAPIC_ICR_HIGH, 0), Ok(0x0300_0000));
        match a.write_mmio(XAPIC_ICR_LOW, 0xFFF0_1041, 0).unwrap() {
            WriteEffect::SendIpi(ipi) => {
                assert_eq!(ipi.destination, Destination::Physical { id: 3, x2apic: false });
                assert_eq!(ipi.vector, 0x41);
            }
            other => panic!("{other:?}"),
        }
        // Reserved and delivery-status bits read back as 0.
        assert_eq!(a.read_mmio(XAPIC_ICR_LOW, 0), Ok(0x0000_0041));
    }

    fn icr_fixed_level_is_recorded_edge() {
        let mut a = x2(0);
        let ipi = send(&mut a, (1 << 15) | (1 << 14) | 0x40);
        assert_eq!(ipi.trigger, Trigger::Edge);
    }

    fn icr_init_sipi_nmi_are_decoded_for_the_engine() {
        let mut a = x2(0);
        let init = send(&mut a, (2 << 32) | (5 << 8) | (1 << 15));
        assert_eq!((init.mode, init.trigger, init.assert), (DeliveryMode::Init, Trigger::Level, false));
        let sipi = send(&mut a, (2 << 32) | (6 << 8) | 0x9A);
        assert_eq!((sipi.mode, sipi.vector), (DeliveryMode::StartUp, 0x9A));
        let nmi = send(&mut a, (2 << 32) | (4 << 8) | (1 << 14));
        assert_eq!(nmi.mode, DeliveryMode::Nmi);
        for (code, mode) in [(1u64, DeliveryMode::LowestPriority), (2, DeliveryMode::Smi), (3, DeliveryMode::Reserved), (7, DeliveryMode::ExtInt)] {
            assert_eq!(send(&mut a, (code << 8) | 0x40).mode, mode);
        }
        // Nothing of that enters the sender's IRR.
        assert!(a.irr().is_empty());
    }

    // ---- LINT --------------------------------------------------------------

    fn lint_fixed_sets_irr_with_entry_trigger() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT0, 0x8000 | 0x66, 0).unwrap();
        assert_eq!(a.local_interrupt(Lint::Lint0), LocalEvent::None);
        assert!(a.irr().contains(0x66) && a.tmr().contains(0x66));
    }

    fn lint_nmi_and_extint_are_reported_not_in_irr() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT1, 0x400, 0).unwrap();
        a.write_msr(MSR_LVT_LINT0, 0x700, 0).unwrap();
        assert_eq!(a.local_interrupt(Lint::Lint1), LocalEvent::Nmi);
        assert_eq!(a.local_interrupt(Lint::Lint0), LocalEvent::ExtInt);
        a.write_msr(MSR_LVT_LINT0, 0x500, 0).unwrap();
        assert_eq!(a.local_interrupt(Lint::Lint0), LocalEvent::Unsupported);
        assert!(a.irr().is_empty());
    }

    fn lint_masked_delivers_nothing() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT1, 0x1_0400, 0).unwrap();
        assert_eq!(a.local_interrupt(Lint::Lint1), LocalEvent::None);
    }

    // ---- timer -------------------------------------------------------------

    fn timer_one_shot_expires_exactly_with_every_divider() {
        for (code, div) in [(0u64, 2u64), (1, 4), (2, 8), (3, 16), (8, 32), (9, 64), (0xA, 128), (0xB, 1)] {
            let mut a = LocalApic::new(ApicConfig { ticks_per_bus_cycle: 3, ..config(0) });
            a.set_apic_base(X2APIC).unwrap();
            a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
            a.write_msr(MSR_TIMER_DIVIDE, code, 0).unwrap();
            timer(&mut a, 0, 0);
            let start = 1_000_000u64;
            assert_eq!(a.write_msr(MSR_TIMER_INITIAL, 10, start), Ok(WriteEffect::TimerChanged));
            let end = start + 10 * div * 3;
            assert_eq!(a.next_timer_deadline(), Some(end), "div {div}");
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, start), 10);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, start + div * 3 - 1), 10);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, start + div * 3), 9);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, end - 1), 1);
            assert!(!a.poll_timer(end - 1));
            assert!(a.irr().is_empty());
            assert!(a.poll_timer(end), "div {div}");
            assert!(a.irr().contains(0xEC));
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, end), 0);
            assert_eq!(a.next_timer_deadline(), None);
            assert!(!a.poll_timer(end + 1_000_000));
        }
    }

    fn timer_periodic_reloads_and_fires_every_period() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 50).unwrap();
        for k in 1..=3u64 {
            assert!(!a.poll_timer(50 + 100 * k - 1));
            assert!(a.poll_timer(50 + 100 * k));
            assert_eq!(a.next_timer_deadline(), Some(50 + 100 * (k + 1)));
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 50 + 100 * k), 100);
            assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 50 + 100 * k + 30), 70);
            assert!(a.irr().contains(0xEC));
            a.acknowledge(0xEC);
            a.eoi();
        }
    }

    fn timer_periodic_late_poll_coalesces_and_stays_aligned() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 450), 50);
        assert!(a.poll_timer(450));
        assert_eq!(a.next_timer_deadline(), Some(500));
        assert_eq!(a.irr().len(), 1);
        assert!(!a.poll_timer(499));
    }

    fn timer_masked_expires_without_interrupt() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        a.write_msr(MSR_LVT_TIMER, 0x1_00EC, 0).unwrap();
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        assert!(a.poll_timer(10));
        assert!(a.irr().is_empty());
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_zero_initial_count_stops() {
        let mut a = x2(0);
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        a.write_msr(MSR_TIMER_INITIAL, 0, 5).unwrap();
        assert_eq!(a.next_timer_deadline(), None);
        assert!(!a.poll_timer(1_000));
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 6), 0);
    }

    fn timer_tsc_deadline_fires_at_deadline() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        assert_eq!(a.write_msr(MSR_TSC_DEADLINE, 5000, 0), Ok(WriteEffect::TimerChanged));
        assert_eq!(rd(&a, MSR_TSC_DEADLINE), 5000);
        assert_eq!(a.next_timer_deadline(), Some(5000));
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 10), 0);
        assert!(!a.poll_timer(4999));
        assert!(a.poll_timer(5000));
        assert!(a.irr().contains(0xEC));
        assert_eq!(rd(&a, MSR_TSC_DEADLINE), 0);
        assert_eq!(a.next_timer_deadline(), None);
        a.set_tsc_deadline(7000);
        a.set_tsc_deadline(0);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_tsc_deadline_is_ignored_outside_its_mode() {
        let mut a = x2(0);
        timer(&mut a, 0, 0);
        assert_eq!(a.set_tsc_deadline(5000), WriteEffect::None);
        assert_eq!(a.tsc_deadline(), 0);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_initial_count_is_ignored_in_tsc_deadline_mode() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        assert_eq!(a.write_msr(MSR_TIMER_INITIAL, 10, 0), Ok(WriteEffect::None));
        assert_eq!(rd(&a, MSR_TIMER_INITIAL), 0);
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_switch_one_shot_to_periodic_carries_on() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        timer(&mut a, 1, 40);
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 40), 60);
        assert_eq!(a.next_timer_deadline(), Some(100));
        assert!(a.poll_timer(100));
        assert_eq!(a.next_timer_deadline(), Some(200));
    }

    fn timer_switch_periodic_to_one_shot_carries_on() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 1, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        assert!(a.poll_timer(100));
        timer(&mut a, 0, 130);
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 130), 70);
        assert!(a.poll_timer(200));
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_switch_delivers_expiry_that_already_happened() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 10, 0).unwrap();
        timer(&mut a, 1, 20);
        assert!(a.irr().contains(0xEC));
        assert_eq!(a.next_timer_deadline(), None);
    }

    fn timer_entering_tsc_deadline_disarms() {
        let mut a = x2(0);
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 1000, 0).unwrap();
        assert_eq!(a.write_msr(MSR_LVT_TIMER, 0x4_00EC, 10), Ok(WriteEffect::TimerChanged));
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(rd(&a, MSR_TIMER_INITIAL), 0);
        assert!(!a.poll_timer(u64::MAX));
    }

    fn timer_leaving_tsc_deadline_disarms() {
        let mut a = x2(0);
        timer(&mut a, 2, 0);
        a.set_tsc_deadline(1000);
        timer(&mut a, 0, 10);
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(a.tsc_deadline(), 0);
        assert!(!a.poll_timer(u64::MAX));
    }

    fn timer_reserved_mode_keeps_the_mode() {
        let mut a = x2(0);
        timer(&mut a, 1, 0);
        timer(&mut a, 3, 0);
        assert_eq!(rd(&a, MSR_LVT_TIMER), 0x2_00EC);
    }

    fn timer_divide_change_keeps_current_count() {
        let mut a = x2(0);
        a.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 100, 0).unwrap();
        a.write_msr(MSR_TIMER_DIVIDE, 0, 40).unwrap();
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 40), 60);
        assert_eq!(a.next_timer_deadline(), Some(40 + 60 * 2));
    }

    fn timer_arithmetic_is_overflow_safe() {
        let mut a = LocalApic::new(ApicConfig { ticks_per_bus_cycle: u32::MAX, ..config(0) });
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        a.write_msr(MSR_TIMER_DIVIDE, 0xA, 0).unwrap();
        timer(&mut a, 1, 0);
        // An expiry past the end of time can never happen: not armed, but
        // the count still runs.
        a.write_msr(MSR_TIMER_INITIAL, u64::from(u32::MAX), u64::MAX - (1 << 40)).unwrap();
        assert_eq!(a.next_timer_deadline(), None);
        assert_eq!(rd_now(&a, MSR_TIMER_CURRENT, 0), u64::from(u32::MAX));
        assert!(rd_now(&a, MSR_TIMER_CURRENT, u64::MAX) < u64::from(u32::MAX));
        assert!(!a.poll_timer(u64::MAX));
        // A periodic expiry exactly at the end fires once, then stops.
        let mut b = x2(0);
        b.write_msr(MSR_TIMER_DIVIDE, 0xB, 0).unwrap();
        timer(&mut b, 1, 0);
        b.write_msr(MSR_TIMER_INITIAL, 5, u64::MAX - 5).unwrap();
        assert_eq!(b.next_timer_deadline(), Some(u64::MAX));
        assert!(b.poll_timer(u64::MAX));
        assert_eq!(b.next_timer_deadline(), None);
        assert!(!b.poll_timer(u64::MAX));
    }

    fn timer_zero_ticks_per_bus_cycle_counts_as_one() {
        let mut a = LocalApic::new(ApicConfig { ticks_per_bus_cycle: 0, ..config(0) });
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        timer(&mut a, 0, 0);
        a.write_msr(MSR_TIMER_INITIAL, 5, 0).unwrap();
        assert_eq!(a.next_timer_deadline(), Some(10));
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
        let b = LocalApic::restore(&s);
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

fn rd_now(a: &LocalApic, msr: u32, now: u64) -> u64 {
    a.read_msr(msr, now).unwrap()
}
