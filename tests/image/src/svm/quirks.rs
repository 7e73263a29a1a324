//! In-kernel tests that pin QEMU's SVM quirks (docs/testing.md lists them)
//! and the harness's fix-ups of them. A QEMU whose SVM behaves as the APM
//! fails the pinning test, so the upgrade is noticed and the fix-up can go.
// Test code: a failing unwrap or index is a failing test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use vmsa::{EventInj, VIntrCtrl, VmsaAccess};

use super::guest::{self, LAST_ERROR};
use super::harness::init_vmcb;
use super::hw::{self, exit, off};
use super::ledger;
use super::ledger::GUEST;
use super::vmcb::{self, Vcpu};

/// A VMCB whose guest (vCPU 0's stack) only VMMCALLs, RFLAGS.IF = 1.
fn spinning_guest() -> Vcpu {
    super::init().expect("SVM");
    ledger::reset();
    guest::reset();
    guest::set_x2apic(0);
    let mut vcpu = Vcpu::new();
    init_vmcb(&mut vcpu, 0, guest::spin_vmmcall as *const () as u64, false);
    vcpu.vmcb.set(off::RFLAGS, 0x202);
    vcpu
}

/// Queues `vector` in V_IRQ with V_TPR `tpr` (engine-style: prio = class).
fn queue(vcpu: &mut Vcpu, vector: u8, tpr: u8) {
    let ctrl = vcpu
        .vintr_ctrl()
        .with_v_irq(true)
        .with_v_intr_vector(vector)
        .with_v_intr_prio(vector >> 4)
        .with_v_tpr(tpr);
    vcpu.set_vintr_ctrl(ctrl);
}

ktest::suite! {
    fn svm_vmrun_runs_a_guest_to_its_vmmcall() {
        let mut vcpu = spinning_guest();
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        assert_eq!(vcpu.exit_code(), exit::VMMCALL);
        assert_eq!(vcpu.rax(), guest::HCALL | guest::OP_DONE);
    }

    fn qemu_quirk_nrip_is_never_written() {
        let mut vcpu = spinning_guest();
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        assert_eq!(vcpu.exit_code(), exit::VMMCALL);
        // APM: NRIP = RIP + 3 on a VMMCALL exit with NRIPS.
        assert_eq!(vcpu.nrip(), 0, "QEMU wrote NRIP: quirk fixed?");
    }

    fn qemu_quirk_cpuid_has_no_vnmi_and_no_nrips() {
        let f = super::init().unwrap();
        assert!(f.npt && f.vgif, "SVM features {f:?}");
        assert!(!f.vnmi && !f.nrips, "QEMU now has vNMI/NRIPS: {f:?}");
    }

    fn qemu_quirk_vmexit_invalid_reads_as_u32_minus_one() {
        let mut vcpu = spinning_guest();
        vcpu.vmcb.set(off::ASID, 0); // ASID 0 is illegal (APM §15.5.1)
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        assert_eq!(vcpu.exit_code(), exit::INVALID_QEMU, "VMEXIT_INVALID now 64-bit?");
    }

    fn harness_widens_vmexit_invalid() {
        let mut vcpu = spinning_guest();
        vcpu.vmcb.set(off::ASID, 0);
        assert_eq!(vmcb::run(&mut vcpu), exit::INVALID);
        assert_eq!(vcpu.fixups.invalid_widened, 1);
    }

    fn qemu_quirk_v_irq_taken_when_prio_equals_v_tpr() {
        let mut vcpu = spinning_guest();
        queue(&mut vcpu, 0x85, 8);
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        // APM: taken only when V_INTR_PRIO > V_TPR; QEMU takes it (the
        // handler's EOI write is the exit).
        assert_eq!(GUEST.get(0, 0x85), 1, "QEMU held V_IRQ at prio == V_TPR: quirk fixed?");
        assert_eq!(vcpu.exit_code(), exit::MSR);
    }

    fn harness_withholds_v_irq_at_prio_equal_to_v_tpr() {
        let mut vcpu = spinning_guest();
        queue(&mut vcpu, 0x85, 8);
        assert_eq!(vmcb::run(&mut vcpu), exit::VMMCALL);
        assert_eq!(GUEST.get(0, 0x85), 0);
        assert!(vcpu.vintr_ctrl().v_irq(), "the withheld V_IRQ is still queued");
        assert_eq!(vcpu.fixups.virq_withheld, 1);
    }

    fn qemu_v_irq_above_v_tpr_is_taken_and_cleared() {
        let mut vcpu = spinning_guest();
        queue(&mut vcpu, 0x95, 8);
        assert_eq!(vmcb::run(&mut vcpu), exit::MSR);
        assert_eq!(GUEST.get(0, 0x95), 1);
        let ctrl = vcpu.vintr_ctrl();
        assert!(!ctrl.v_irq() && ctrl.v_intr_vector() == 0x95);
    }

    fn qemu_quirk_eventinj_ev_bit_ignored_error_code_pushed() {
        let mut vcpu = spinning_guest();
        // #GP with EV = 0 and an error code: the APM pushes none.
        let ev = EventInj::from_bits(EventInj::exception(13, Some(0x1234)).into_bits() & !(1 << 11));
        assert!(!ev.error_code_valid());
        vcpu.set_event_inj(ev);
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        assert_eq!(GUEST.get(0, ledger::GP), 1);
        assert_eq!(
            LAST_ERROR[0].load(core::sync::atomic::Ordering::SeqCst),
            0x1234,
            "QEMU honoured EV = 0: quirk fixed?"
        );
    }

    fn qemu_quirk_int_shadow_ignored_at_vmrun() {
        let mut vcpu = spinning_guest();
        queue(&mut vcpu, 0x95, 0);
        vcpu.set_vintr_ctrl(vcpu.vintr_ctrl().with_int_shadow(true));
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        // APM: the shadow holds the interrupt for one instruction, so the
        // VMMCALL exits first; QEMU 7.2 delivers at once.
        assert_eq!(vcpu.exit_code(), exit::MSR, "QEMU honoured INT_SHADOW: quirk fixed?");
        assert_eq!(GUEST.get(0, 0x95), 1);
    }

    fn harness_refuses_vmrun_while_busy_as_vmexit_busy() {
        let mut vcpu = spinning_guest();
        assert!(!vcpu.test_and_set_busy());
        assert_eq!(vmcb::run(&mut vcpu), exit::BUSY);
        assert_eq!(vcpu.vmcb.get(off::EXIT_CODE), exit::BUSY);
        assert_eq!(vcpu.fixups.vmruns, 0);
        assert_eq!(vcpu.fixups.busy_refused, 1);
        vcpu.clear_busy();
        assert_eq!(vmcb::run(&mut vcpu), exit::VMMCALL);
    }

    fn vmcb_view_keeps_busy_and_shadow_beside_int_ctl() {
        let mut vcpu = spinning_guest();
        let ctrl = VIntrCtrl::new().with_v_tpr(3).with_int_shadow(true).with_busy(true);
        vcpu.set_vintr_ctrl(ctrl);
        assert_eq!(vcpu.vintr_ctrl(), ctrl);
        assert_eq!(vcpu.vmcb.get(off::INT_CTL), 3 | hw::V_INTR_MASKING);
        assert_eq!(vcpu.vmcb.get(off::INT_STATE), 1);
    }
}
