//! ICR decoding and destinations, LINT pins.

use super::*;

altinj_ktest::suite! {
    // ---- ICR ---------------------------------------------------------------

    fn icr_fast_path_agrees_with_write_msr() {
        let values = [
            (5u64 << 32) | 0x40,
            (5 << 32) | 0xC040, // level, assert: still a fixed edge IPI
            (3 << 18) | 0x40,   // all but self
            (3 << 18) | (7 << 32) | 0x40,
            (5 << 32) | 0x0F,   // illegal vector
            (3 << 18) | 0x0F,
            (5 << 32) | 0x440,  // NMI
            (5 << 32) | 0x140,  // lowest priority
            (5 << 32) | 0x840,  // logical
            (3 << 18) | 0x840,
            (5 << 32) | 0x1040, // delivery status
            (5 << 32) | 0x2040, // reserved bit 13
            (5 << 32) | (1 << 16) | 0x40,
            (5 << 32) | (1 << 20) | 0x40,
            (1 << 18) | 0x40,   // self
            (2 << 18) | 0x40,   // all including self
            (0xFFFF_FFFF << 32) | 0x40,
            0x40,               // to itself (ID 0)
        ];
        for value in values {
            let mut fast = x2(0);
            let mut general = x2(0);
            let expected = general.write_msr(MSR_ICR, value, 0);
            let Some(got) = fast.write_icr_fast(value) else {
                // Untouched: the caller takes write_msr.
                assert_eq!(rd(&fast, MSR_ICR), 0, "{value:#x}");
                continue;
            };
            let Ok(WriteEffect::SendIpi(ipi)) = expected else {
                panic!("{value:#x}: fast path for {expected:?}");
            };
            assert_eq!((ipi.mode, ipi.trigger), (IcrDeliveryMode::Fixed, Trigger::Edge), "{value:#x}");
            let decoded = match ipi.destination {
                Destination::Physical { id, x2apic: true } => FastIcr::Physical { id, vector: ipi.vector },
                Destination::AllExcludingSelf => FastIcr::AllButSelf { vector: ipi.vector },
                other => panic!("{value:#x}: fast path for {other:?}"),
            };
            assert_eq!(got, decoded, "{value:#x}");
            assert_eq!(rd(&fast, MSR_ICR), rd(&general, MSR_ICR));
        }
        let mut a = xa(0);
        assert_eq!(a.write_icr_fast((5 << 32) | 0x40), None);
    }

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
        for (code, mode) in [(1u64, DeliveryMode::LowestPriority), (2, DeliveryMode::Smi), (3, DeliveryMode::Reserved), (7, DeliveryMode::Reserved)] {
            assert_eq!(send(&mut a, (code << 8) | 0x40).mode, mode);
        }
        // Nothing of that enters the sender's IRR.
        assert!(a.irr().is_empty());
    }

    // §11.6.1, Figure 11-12: 111 is reserved in the ICR (ExtINT exists
    // only in LVT and IOAPIC entries).
    fn icr_delivery_mode_111_is_reserved_not_extint() {
        let mut a = x2(0);
        let ipi = send(&mut a, (1 << 32) | (7 << 8) | 0x40);
        assert_eq!(ipi.mode, IcrDeliveryMode::Reserved);
        let mut t = x2(1);
        assert_eq!(t.accept_ipi(&ipi), Received::Unsupported);
        assert!(t.irr().is_empty());
    }

    // Spec §6 choices: INIT / SIPI / SMI / reserved are accepted and not
    // delivered; lowest priority goes to one target; fixed and NMI to all.
    fn icr_routing_follows_spec_6_choices() {
        let mut a = x2(0);
        for (mode, routing) in [(0u64, Routing::EveryTarget), (1, Routing::LowestIdTarget), (2, Routing::NotDelivered), (3, Routing::NotDelivered), (4, Routing::Nmi), (5, Routing::NotDelivered), (6, Routing::NotDelivered), (7, Routing::NotDelivered)] {
            let icr = (1 << 32) | (mode << 8) | (1 << 14) | 0x40;
            assert_eq!(send(&mut a, icr).routing(), routing, "mode {mode}");
            // The write succeeded and reads back.
            assert_eq!(rd(&a, MSR_ICR), icr);
        }
    }

    // Spec §6 choice: lowest priority goes to the matching APIC with the
    // lowest APIC ID.
    fn lowest_priority_target_is_the_lowest_matching_id() {
        let mut a = x2(0);
        // Cluster 0, members 3, 5 and 9.
        let ipi = send(&mut a, ((0b10_0010_1000u64) << 32) | (1 << 11) | (1 << 8) | 0x40);
        let targets = [9u32, 5, 0x13, 3, 7].map(|id| target(id, ApicMode::X2Apic));
        assert_eq!(ipi.destination.lowest_id_target(0, targets), Some(3));
        let none = Destination::Physical { id: 0x44, x2apic: true };
        assert_eq!(none.lowest_id_target(0, targets), None);
        let all = Destination::AllExcludingSelf;
        assert_eq!(all.lowest_id_target(3, targets), Some(1));
    }

    // §11.6.1: the INIT level de-assert does nothing on current processors;
    // the receiver filters it.
    fn init_level_deassert_is_ignored_by_the_receiver() {
        let mut s = x2(0);
        let mut t = x2(1);
        let deassert = send(&mut s, (1 << 32) | (5 << 8) | (1 << 15));
        assert!(deassert.is_init_deassert());
        assert_eq!(t.accept_ipi(&deassert), Received::Ignored);
        let edge = send(&mut s, (1 << 32) | (5 << 8));
        assert!(!edge.is_init_deassert());
        assert_eq!(t.accept_ipi(&edge), Received::Init);
    }

    // ---- LINT --------------------------------------------------------------

    fn lint_fixed_sets_irr_with_entry_trigger() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT0, 0x8000 | 0x66, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Lint0), LocalEvent::None);
        assert!(a.irr().contains(0x66) && a.tmr().contains(0x66));
    }

    fn lint_nmi_and_extint_are_reported_not_in_irr() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT1, 0x400, 0).unwrap();
        a.write_msr(MSR_LVT_LINT0, 0x700, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Lint1), LocalEvent::Nmi);
        assert_eq!(a.local_interrupt(LocalInterrupt::Lint0), LocalEvent::ExtInt);
        a.write_msr(MSR_LVT_LINT0, 0x500, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Lint0), LocalEvent::Unsupported(LvtDeliveryMode::Init));
        assert!(a.irr().is_empty());
    }

    fn lint_masked_delivers_nothing() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT1, 0x1_0400, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Lint1), LocalEvent::None);
    }
}
