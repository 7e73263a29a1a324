//! Illegal vectors and the error interrupt, path by path against the ESR
//! table (Intel SDM vol. 3A §11.5.3, Table 11-6) and §11.5.2.

use super::*;

const SEND: u32 = Esr::SEND_ILLEGAL_VECTOR.bits();
const RECEIVE: u32 = Esr::RECEIVE_ILLEGAL_VECTOR.bits();

/// An x2APIC APIC whose error interrupt is unmasked with vector 0xFE.
fn with_error_lvt() -> LocalApic {
    let mut a = x2(0);
    a.write_msr(MSR_LVT_ERROR, 0xFE, 0).unwrap();
    a
}

/// The error interrupt fired (0xFE pending); takes and retires it.
fn error_fired(a: &mut LocalApic) -> bool {
    if !a.irr().contains(0xFE) {
        return false;
    }
    assert!(a.acknowledge(0xFE));
    a.eoi();
    true
}

altinj_ktest::suite! {
    // Table 11-6 bit 5: "a write to ... SELF IPI register (x2APIC mode
    // only) with an illegal vector".
    fn self_ipi_illegal_vector_is_a_send_error() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_SELF_IPI, 0x0F, 0), Ok(WriteEffect::None));
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), SEND);
    }

    // Table 11-6 bit 5 (ICR, both modes); the message is stopped at the
    // sender, so the sender does not also receive it (no bit 6).
    fn icr_self_shorthand_illegal_vector_is_a_send_error_only() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_ICR, (1 << 18) | 0x05, 0), Ok(WriteEffect::None));
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), SEND);
    }

    // Table 11-6 bit 5: an IPI to others with an illegal vector is not sent.
    fn icr_illegal_vector_to_others_sends_nothing() {
        let mut a = xa(0);
        a.write_mmio(XAPIC_ICR_HIGH, 0x0100_0000, 0).unwrap();
        assert_eq!(a.write_mmio(XAPIC_ICR_LOW, 0x0F, 0), Ok(WriteEffect::None));
        let mut b = x2(0);
        assert_eq!(b.write_msr(MSR_ICR, (3 << 18) | 0x01, 0), Ok(WriteEffect::None));
        assert_eq!((a.pending_esr(), b.pending_esr()), (SEND, SEND));
    }

    // Table 11-6 bit 5; lowest priority is sendable here (spec §6), so the
    // "redirectable IPI" bit 4 is never set instead.
    fn icr_lowest_priority_illegal_vector_is_a_send_error() {
        let mut a = x2(0);
        assert_eq!(a.write_msr(MSR_ICR, (1 << 32) | (1 << 8) | 0x03, 0), Ok(WriteEffect::None));
        assert_eq!(a.pending_esr(), SEND);
    }

    // §11.6.1: the vector field of NMI / INIT is ignored, of SIPI a page.
    fn icr_nmi_init_sipi_with_vector_below_16_are_legal() {
        let mut a = x2(0);
        for mode in [4u64, 5, 6] {
            assert!(matches!(a.write_msr(MSR_ICR, (1 << 32) | (mode << 8) | (1 << 14), 0), Ok(WriteEffect::SendIpi(_))));
        }
        assert_eq!(a.pending_esr(), 0);
    }

    // Table 11-6 bit 6: "an illegal vector ... in an interrupt message it
    // receives".
    fn received_fixed_ipi_illegal_vector_is_a_receive_error() {
        let mut t = x2(1);
        let ipi = Ipi::decode((1 << 32) | 0x07, ApicMode::X2Apic, 0);
        assert_eq!(t.accept_ipi(&ipi), Received::Requested(RequestOutcome::Illegal));
        assert!(t.irr().is_empty());
        assert_eq!(t.pending_esr(), RECEIVE);
    }

    // Table 11-6 bit 6: "an interrupt generated locally from the local
    // vector table".
    fn lvt_fixed_illegal_vector_firing_is_a_receive_error() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_PMC, 0x09, 0).unwrap();
        a.write_msr(MSR_ESR, 0, 0).unwrap();
        assert_eq!(a.local_interrupt(LocalInterrupt::Pmc), LocalEvent::None);
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), RECEIVE);
    }

    // §11.5.2: "may signal an illegal vector error, without regard to
    // whether the mask bit is set" (project choice: it does), fixed only.
    fn lvt_write_of_fixed_illegal_vector_is_a_receive_error_even_masked() {
        for msr in [MSR_LVT_CMCI, MSR_LVT_TIMER, MSR_LVT_THERMAL, MSR_LVT_PMC, MSR_LVT_LINT0, MSR_LVT_LINT1, MSR_LVT_ERROR] {
            let mut a = x2(0);
            a.write_msr(msr, u64::from(LVT_MASKED) | 0x0F, 0).unwrap();
            assert_eq!(a.pending_esr(), RECEIVE, "{msr:#x}");
        }
    }

    // §11.5.2 speaks of delivery mode fixed only: NMI / ExtINT entries carry
    // no vector.
    fn lvt_write_of_non_fixed_mode_with_vector_0_is_legal() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_LINT0, 0x700, 0).unwrap();
        a.write_msr(MSR_LVT_LINT1, 0x400, 0).unwrap();
        a.write_msr(MSR_LVT_PMC, 0x400, 0).unwrap();
        assert_eq!(a.pending_esr(), 0);
    }

    // §11.5.3: the error interrupt is raised when an error bit is newly
    // latched; a repeat of a latched error raises nothing.
    fn error_interrupt_fires_only_when_an_error_bit_is_newly_set() {
        let mut a = with_error_lvt();
        a.request(1, Trigger::Edge);
        assert!(error_fired(&mut a));
        a.request(2, Trigger::Edge);
        assert!(!error_fired(&mut a), "bit 6 still latched");
        a.write_msr(MSR_SELF_IPI, 3, 0).unwrap();
        assert!(error_fired(&mut a), "bit 5 is new");
        a.write_msr(MSR_SELF_IPI, 4, 0).unwrap();
        assert!(!error_fired(&mut a));
        assert_eq!(a.pending_esr(), SEND | RECEIVE);
    }

    // §11.5.3: the ESR write "rearms the APIC error interrupt triggering
    // mechanism".
    fn esr_write_rearms_the_error_interrupt() {
        let mut a = with_error_lvt();
        a.request(1, Trigger::Edge);
        assert!(error_fired(&mut a));
        a.write_msr(MSR_ESR, 0, 0).unwrap();
        assert_eq!(rd(&a, MSR_ESR), u64::from(RECEIVE));
        a.request(1, Trigger::Edge);
        assert!(error_fired(&mut a));
    }

    // An LVT error write with an illegal vector latches bit 6 (§11.5.2) but
    // cannot raise itself (no recursion).
    fn lvt_error_with_illegal_vector_latches_without_interrupt() {
        let mut a = x2(0);
        a.write_msr(MSR_LVT_ERROR, 0x05, 0).unwrap();
        assert_eq!(a.pending_esr(), RECEIVE);
        a.write_msr(MSR_SELF_IPI, 1, 0).unwrap();
        assert!(a.irr().is_empty());
        assert_eq!(a.pending_esr(), SEND | RECEIVE);
    }

    // Spec §3/§6: a host vector refused by the filter is no guest error.
    fn host_vector_refused_latches_no_error() {
        let mut a = with_error_lvt();
        assert_eq!(a.request_from_host(3, Trigger::Edge), RequestOutcome::Denied);
        assert_eq!(a.pending_esr(), 0);
        assert!(a.irr().is_empty());
    }
}
