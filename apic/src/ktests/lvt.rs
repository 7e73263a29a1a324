//! The LVT interrupt sources beyond the LINT pins: thermal, PMC, CMCI
//! (Intel SDM vol. 3A §11.5.1, Figure 11-8).

use super::*;

altinj_ktest::suite! {
    // §11.5.1: fixed delivers the entry's vector (edge: only LINT entries
    // have a trigger bit).
    fn thermal_pmc_cmci_fixed_set_irr_edge() {
        for (msr, src, v) in [(MSR_LVT_THERMAL, LocalInterrupt::Thermal, 0x61u8), (MSR_LVT_PMC, LocalInterrupt::Pmc, 0x62), (MSR_LVT_CMCI, LocalInterrupt::Cmci, 0x63)] {
            let mut a = x2(0);
            a.write_msr(msr, u64::from(v), 0).unwrap();
            assert_eq!(a.local_interrupt(src), LocalEvent::None);
            assert!(a.irr().contains(v) && !a.tmr().contains(v), "{src:?}");
        }
    }

    // §11.5.1: a masked entry delivers nothing (power-up: every LVT masked).
    fn thermal_pmc_cmci_masked_deliver_nothing() {
        let mut a = x2(0);
        for src in [LocalInterrupt::Thermal, LocalInterrupt::Pmc, LocalInterrupt::Cmci] {
            assert_eq!(a.local_interrupt(src), LocalEvent::None);
        }
        a.write_msr(MSR_LVT_PMC, 0x1_0400, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Pmc), LocalEvent::None);
        assert!(a.irr().is_empty());
    }

    // §11.5.1 "NMI via LVT": delivery mode 100 reports an NMI, no IRR bit.
    fn pmc_nmi_is_reported_outside_irr() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_PMC, 0x400, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Pmc), LocalEvent::Nmi);
        a.write_msr(MSR_LVT_THERMAL, 0x400, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Thermal), LocalEvent::Nmi);
        assert!(a.irr().is_empty());
    }

    // Figure 11-8 notes: INIT and ExtINT are not supported for the CMCI,
    // thermal and PMC entries: reserved there.
    fn thermal_pmc_cmci_init_and_extint_are_reserved() {
        let mut a = x2(0);
        for bits in [0x500u64, 0x700] {
            a.write_msr(MSR_LVT_THERMAL, bits | 0x40, 0).unwrap();
            assert_eq!(a.local_interrupt(LocalInterrupt::Thermal), LocalEvent::Unsupported(LvtDeliveryMode::Reserved));
        }
        a.write_msr(MSR_LVT_CMCI, 0x240, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Cmci), LocalEvent::Unsupported(LvtDeliveryMode::Smi));
        assert!(a.irr().is_empty());
    }

    // §11.5.1: LVT CMCI exists only on models with CMCI.
    fn cmci_source_absent_without_cmci_delivers_nothing() {
        let mut a = LocalApic::new(ApicConfig { cmci: false, ..config(0) });
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Cmci), LocalEvent::None);
        assert!(a.irr().is_empty());
    }

    // §11.4.7.2: software-disabled masks every LVT, so nothing is raised.
    fn software_disabled_local_sources_deliver_nothing() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_PMC, 0x400, 0).unwrap();
        a.write_msr(MSR_SVR, 0xFF, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Pmc), LocalEvent::None);
    }

    // LvtDeliveryMode and IcrDeliveryMode are distinct: 111 is ExtINT in a
    // LINT entry, reserved in the ICR (§11.5.1 vs §11.6.1).
    fn lvt_and_icr_decode_111_differently() {
        assert_eq!(LvtDeliveryMode::decode(7, true), LvtDeliveryMode::ExtInt);
        assert_eq!(LvtDeliveryMode::decode(7, false), LvtDeliveryMode::Reserved);
        assert_eq!(IcrDeliveryMode::decode(7), IcrDeliveryMode::Reserved);
        assert_eq!(LvtDeliveryMode::decode(1, true), LvtDeliveryMode::Reserved);
        assert_eq!(IcrDeliveryMode::decode(1), IcrDeliveryMode::LowestPriority);
    }
}
