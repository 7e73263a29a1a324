//! The CPU model of [`ApicConfig`]: x2APIC support, MAXPHYADDR, CMCI,
//! directed EOI.

use super::*;

altinj_ktest::suite! {
    fn default_config_is_x2apic_maxphyaddr_52_with_cmci() {
        let c = ApicConfig::default();
        assert!(c.x2apic && c.cmci && !c.directed_eoi);
        assert_eq!((c.max_phys_addr, c.ticks_per_bus_cycle), (52, 1));
    }

    // §11.12.1: without x2APIC support (CPUID.01H:ECX[21] = 0) EXTD is
    // reserved.
    fn apic_base_extd_is_gp_without_x2apic() {
        let mut a = LocalApic::new(ApicConfig { x2apic: false, ..config(0) });
        assert_eq!(a.set_apic_base(X2APIC), Err(RegisterError::InvalidValue));
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.write_msr(MSR_APIC_BASE, X2APIC, 0), Err(RegisterError::InvalidValue));
    }

    // §11.4.4, Figure 11-5: base address bits at and above MAXPHYADDR are
    // reserved.
    fn apic_base_bits_from_maxphyaddr_are_gp() {
        let mut a = LocalApic::new(ApicConfig { max_phys_addr: 39, ..config(0) });
        assert_eq!(a.set_apic_base(XAPIC | (1 << 39)), Err(RegisterError::InvalidValue));
        assert_eq!(a.set_apic_base(XAPIC | (1 << 51)), Err(RegisterError::InvalidValue));
        assert_eq!(a.set_apic_base(XAPIC | (1 << 38)), Ok(WriteEffect::None));
        let mut b = LocalApic::new(config(0));
        assert_eq!(b.set_apic_base(XAPIC | (1 << 51)), Ok(WriteEffect::None));
    }

    fn max_phys_addr_outside_32_to_52_is_clamped() {
        assert_eq!(ApicConfig { max_phys_addr: 0, ..config(0) }.phys_addr_bits(), 32);
        assert_eq!(ApicConfig { max_phys_addr: 200, ..config(0) }.phys_addr_bits(), 52);
        let mut a = LocalApic::new(ApicConfig { max_phys_addr: 0, ..config(0) });
        assert_eq!(a.set_apic_base(XAPIC | (1 << 32)), Err(RegisterError::InvalidValue));
    }

    // §11.4.8: the version register's bits 23:16 hold the LVT count - 1:
    // 6 with CMCI, 5 without.
    fn version_max_lvt_follows_cmci() {
        let mut a = LocalApic::new(ApicConfig { cmci: false, ..config(0) });
        assert_eq!(a.read_mmio(XAPIC_VERSION, 0), Ok(0x0005_0014));
        let mut b = LocalApic::new(config(0));
        assert_eq!(b.read_mmio(XAPIC_VERSION, 0), Ok(0x0006_0014));
    }

    // §11.5.1: MSR 0x82F / offset 0x2F0 exist only with CMCI; elsewhere #GP.
    fn lvt_cmci_register_is_invalid_without_cmci() {
        let mut a = LocalApic::new(ApicConfig { cmci: false, ..config(0) });
        assert_eq!(a.read_mmio(XAPIC_LVT_CMCI, 0), Err(RegisterError::Unknown));
        assert_eq!(a.write_mmio(XAPIC_LVT_CMCI, 0x40, 0), Err(RegisterError::Unknown));
        a.set_apic_base(X2APIC).unwrap();
        assert_eq!(a.read_msr(MSR_LVT_CMCI, 0), Err(RegisterError::Unknown));
        assert_eq!(a.write_msr(MSR_LVT_CMCI, 0x40, 0), Err(RegisterError::Unknown));
        let mut b = x2(0);
        assert_eq!(b.read_msr(MSR_LVT_CMCI, 0), Ok(u64::from(LVT_MASKED)));
    }

    fn restore_follows_the_model() {
        let mut s = x2(0).save();
        s.config.x2apic = false;
        s.config.cmci = false;
        s.lvt[LVT_CMCI] = 0x40;
        let a = LocalApic::restore(&s);
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.save().lvt[LVT_CMCI], LVT_MASKED);
        assert_eq!(a.config().apic_id, 0);
    }

    // §11.8.5: a level EOI is broadcast to the IOAPIC unless suppressed by
    // SVR bit 12 (directed EOI); an edge EOI never is.
    fn eoi_info_says_whether_to_broadcast() {
        let mut a = LocalApic::new(ApicConfig { directed_eoi: true, ..config(0) });
        a.set_apic_base(X2APIC).unwrap();
        a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
        for (svr, trigger, broadcast) in [(0x1FFu64, Trigger::Level, true), (0x11FF, Trigger::Level, false), (0x1FF, Trigger::Edge, false)] {
            a.write_msr(MSR_SVR, svr, 0).unwrap();
            a.request(0x70, trigger);
            a.acknowledge(0x70);
            let info = a.eoi().unwrap();
            assert_eq!((info.level, info.broadcast), (trigger == Trigger::Level, broadcast), "{svr:#x}");
        }
    }
}
