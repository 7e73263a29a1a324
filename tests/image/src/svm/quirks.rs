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

use altinj_kernel::protocol::{ApicCall, ResultCode};
use altinj_kernel::{EngineConfig, Env, Fabric, VcpuEngine};
use altinj_vmsa::{EventInj, VIntrCtrl, VmsaAccess};

use super::guest::{self, LAST_ERROR};
use super::harness::{RunConfig, init_vmcb};
use super::host::{HostPlatform, RunShared};
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

altinj_ktest::suite! {
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

/// The guest, its engine and what they need, for tests that drive the
/// engine around one real VMRUN at a time.
struct Rig {
    vcpu: Vcpu,
    run: RunShared,
    platform: HostPlatform,
}

impl Rig {
    fn new() -> Self {
        Self {
            vcpu: spinning_guest(),
            run: RunShared::new(RunConfig {
                program: guest::Program::Timer,
                vcpus: 1,
                seed: 0,
                rounds: 0,
                break_recall: false,
                limit_ms: 0,
            }),
            platform: HostPlatform::new(0),
        }
    }

    fn engine(&self) -> VcpuEngine {
        let config = EngineConfig {
            index: 0,
            host_apic_id: 0,
            apic: altinj_apic::ApicConfig {
                apic_id: 0,
                bsp: true,
                ticks_per_bus_cycle: 1,
                directed_eoi: false,
                ..Default::default()
            },
            guest_vmpl: 2,
            notification_vector: crate::svm::host::KICK_VECTOR,
            emulate: true,
        };
        VcpuEngine::new(config, Fabric::new(&self.run.slots, &self.run.vm)).unwrap()
    }
}

fn write(engine: &mut VcpuEngine, rig: &mut Rig, msr: u64, value: u64) {
    let env = Env::new(
        &rig.platform,
        Fabric::new(&rig.run.slots, &rig.run.vm),
        &rig.run.doorbells[0],
    );
    let r = {
        let outcome = engine.handle_apic_call(&env, ApicCall::WriteRegister { msr, value });
        engine.finish_apic_call(&env, &mut rig.vcpu, outcome)
    };
    assert_eq!(r.code, ResultCode::Success, "write {msr:#x}");
}

/// The engine around a V_IRQ delivery QEMU cuts with an exit.
pub mod cut {
    #![allow(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )]
    use super::*;

    altinj_ktest::suite! {
        fn qemu_quirk_v_irq_cut_by_npf_reports_exception_type_and_engine_delivers_once() {
            let mut rig = Rig::new();
            let mut engine = rig.engine();
            // The page the interrupt frame is pushed to is absent: delivering
            // the V_IRQ faults (#NPF) half-way (APM vol. 2 §15.20: EXITINTINFO).
            let frame_page = (guest::stack_top(0) - 8) & !0xFFF;
            rig.vcpu.vmcb.set(off::NESTED_CTL, 1);
            rig.vcpu.vmcb.set(off::NESTED_CR3, crate::svm::npt::nested_cr3_with_hole(frame_page));
            rig.vcpu.vmcb.set(off::G_PAT, 0x0007_0406_0007_0406);
            let base = engine.apic().apic_base();
            write(&mut engine, &mut rig, 0x1B, base | (1 << 10));
            write(&mut engine, &mut rig, 0x80F, 0x1FF);
            write(&mut engine, &mut rig, 0x83F, 0x95);
            // An interrupt shadow makes the engine queue V_IRQ (QEMU 7.2 then
            // ignores the shadow and takes it at once).
            rig.vcpu.set_vintr_ctrl(rig.vcpu.vintr_ctrl().with_int_shadow(true));
            let env = Env::new(&rig.platform, Fabric::new(&rig.run.slots, &rig.run.vm), &rig.run.doorbells[0]);
            let vcpu = &mut rig.vcpu;
            engine.before_run(&env, vcpu).unwrap();
            let ctrl = vcpu.vintr_ctrl();
            assert!(ctrl.v_irq() && ctrl.v_intr_vector() == 0x95, "engine queued V_IRQ");
            assert_eq!(vmcb::run(vcpu), exit::NPF);
            let info = vcpu.exit_int_info();
            assert!(info.valid() && info.vector() == 0x95, "EXITINTINFO {:#x}", info.into_bits());
            assert_eq!(
                info.event_type(),
                altinj_vmsa::EventType::Exception,
                "QEMU reported the cut V_IRQ as {:?}: quirk fixed?",
                info.event_type()
            );
            assert!(vcpu.vintr_ctrl().v_irq(), "QEMU cleared V_IRQ: quirk fixed?");
            assert_eq!(vcpu.fixups.virq_cut_as_exception, 1);
            let before = engine.counters();
            engine.after_exit(&env, vcpu).unwrap();
            let after = engine.counters();
            assert_eq!(after.recalled, before.recalled + 1, "the V_IRQ goes back to IRR");
            assert_eq!(after.forged_exit_events, before.forged_exit_events + 1, "type 3 dropped");
            assert!(!vcpu.event_inj().valid(), "nothing re-injected");
            // Page back: the vector is delivered exactly once.
            crate::svm::npt::fill_hole(frame_page, true);
            for _ in 0..10 {
                engine.before_run(&env, vcpu).unwrap();
                let code = vmcb::run(vcpu);
                engine.after_exit(&env, vcpu).unwrap();
                match code {
                    exit::MSR => {
                        let msr = vcpu.rcx() & 0xFFFF_FFFF;
                        let value = (vcpu.rdx() << 32) | (vcpu.rax() & 0xFFFF_FFFF);
                        let call = ApicCall::WriteRegister { msr, value };
                        let outcome = engine.handle_apic_call(&env, call);
                        let r = engine.finish_apic_call(&env, vcpu, outcome);
                        assert_eq!(r.code, ResultCode::Success);
                        vcpu.skip(2);
                    }
                    exit::VMMCALL => break,
                    other => panic!("exit {other:#x}"),
                }
            }
            assert_eq!(GUEST.get(0, 0x95), 1, "delivered exactly once");
            assert!(engine.apic().irr().is_empty() && engine.apic().isr().is_empty());
        }
    }
}
