//! A real VMCB behind the engine's `altinj_vmsa::VmsaAccess`, and the "hardware"
//! the engine drives: QEMU's VMRUN plus the harness fix-ups that make it
//! behave as the APM says (docs/testing.md, "QEMU's SVM quirks").
//!
//! Field mapping (VMSA spec §2 -> VMCB, APM vol. 2 appendix B): the VMSA's
//! VIntrCtrl is the VMCB's int_ctl/int_vector word (0x60) with INT_SHADOW
//! taken from int_state bit 0 (0x68) and V_INTR_MASKING (bit 24, always set
//! by the harness) hidden; RCX/RDX/R8/R9 come from the saved GPRs; BUSY has
//! no VMCB bit, so it is an atomic beside the VMCB, and [`run`] refuses to
//! VMRUN while it is set, reporting VMEXIT_BUSY as the VMSA would.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use altinj_vmsa::{EventInj, ExitCode, SevFeatures, VIntrCtrl, VmsaAccess};

use super::hw::{self, Gprs, Page, V_INTR_MASKING, VMSA_INT_SHADOW, exit, off};

/// Bits of the VMSA VIntrCtrl the VMCB word carries (everything but
/// INT_SHADOW, V_INTR_MASKING and BUSY; VGIF-enable bit 25 stays clear).
const CTRL_MASK: u64 = !(VMSA_INT_SHADOW | V_INTR_MASKING | (1 << 25) | (1 << 63));

/// The `mov cr8, rax` encoding guests use (REX.R 0F 22 /r), the only CR8
/// write the harness emulates.
const MOV_CR8_RAX: [u8; 4] = [0x44, 0x0F, 0x22, 0xC0];

/// What the harness did to QEMU's behaviour around one [`run`].
#[derive(Clone, Copy, Default, Debug)]
pub struct Fixups {
    /// VMRUNs executed.
    pub vmruns: u64,
    /// V_IRQ withheld from QEMU because its priority did not exceed V_TPR
    /// (QEMU takes it at >=; APM: >).
    pub virq_withheld: u64,
    /// Guest CR8 writes applied to V_TPR by the harness.
    pub cr8_writes: u64,
    /// VMRUNs refused because BUSY was set (reported as VMEXIT_BUSY).
    pub busy_refused: u64,
    /// VMEXIT_INVALID read as 0xFFFF_FFFF and widened.
    pub invalid_widened: u64,
    /// Exits whose EXITINTINFO was type 3 with a vector >= 32 while V_IRQ
    /// stayed set (a V_IRQ delivery cut by the exit, reported as exception).
    pub virq_cut_as_exception: u64,
}

/// One guest vCPU's VMCB, its saved GPRs, SEV features and BUSY.
pub struct Vcpu {
    pub vmcb: Page,
    pub gprs: Gprs,
    pub busy: AtomicBool,
    pub sev_features: AtomicU64,
    pub fixups: Fixups,
    /// Test-only break (docs/testing.md): make undelivered V_IRQ and
    /// EVENTINJ look delivered before the engine's `after_exit`, so its
    /// recall never fires.
    pub break_recall: bool,
}

impl Vcpu {
    pub const fn new() -> Self {
        Self {
            vmcb: Page::new(),
            gprs: Gprs {
                rbx: 0,
                rcx: 0,
                rdx: 0,
                rsi: 0,
                rdi: 0,
                rbp: 0,
                r8: 0,
                r9: 0,
                r10: 0,
                r11: 0,
                r12: 0,
                r13: 0,
                r14: 0,
                r15: 0,
            },
            busy: AtomicBool::new(false),
            sev_features: AtomicU64::new(0),
            fixups: Fixups {
                vmruns: 0,
                virq_withheld: 0,
                cr8_writes: 0,
                busy_refused: 0,
                invalid_widened: 0,
                virq_cut_as_exception: 0,
            },
            break_recall: false,
        }
    }

    /// Guest RIP.
    pub fn rip(&self) -> u64 {
        self.vmcb.get(off::RIP)
    }

    /// Moves the guest RIP on by `len` bytes (QEMU never writes NRIP) for
    /// an instruction the harness emulated. That instruction retired, so an
    /// interrupt shadow it sat in (`sti; hlt`) is over, as KVM's
    /// skip_emulated_instruction clears it too.
    pub fn skip(&self, len: u64) {
        self.vmcb.set(off::RIP, self.rip().wrapping_add(len));
        let state = self.vmcb.get(off::INT_STATE);
        self.vmcb.set(off::INT_STATE, state & !1);
    }

    /// The raw exit code.
    pub fn exit_code(&self) -> u64 {
        self.vmcb.get(off::EXIT_CODE)
    }

    fn ctrl_word(&self) -> u64 {
        self.vmcb.get(off::INT_CTL)
    }
}

impl Default for Vcpu {
    fn default() -> Self {
        Self::new()
    }
}

impl VmsaAccess for Vcpu {
    fn efer(&self) -> u64 {
        self.vmcb.get(off::EFER)
    }
    fn set_efer(&mut self, value: u64) {
        self.vmcb.set(off::EFER, value);
    }
    fn rflags(&self) -> u64 {
        self.vmcb.get(off::RFLAGS)
    }
    fn set_rflags(&mut self, value: u64) {
        self.vmcb.set(off::RFLAGS, value);
    }
    fn rip(&self) -> u64 {
        self.vmcb.get(off::RIP)
    }
    fn set_rip(&mut self, value: u64) {
        self.vmcb.set(off::RIP, value);
    }
    fn rax(&self) -> u64 {
        self.vmcb.get(off::RAX)
    }
    fn set_rax(&mut self, value: u64) {
        self.vmcb.set(off::RAX, value);
    }
    fn rcx(&self) -> u64 {
        self.gprs.rcx
    }
    fn set_rcx(&mut self, value: u64) {
        self.gprs.rcx = value;
    }
    fn rdx(&self) -> u64 {
        self.gprs.rdx
    }
    fn set_rdx(&mut self, value: u64) {
        self.gprs.rdx = value;
    }
    fn r8(&self) -> u64 {
        self.gprs.r8
    }
    fn set_r8(&mut self, value: u64) {
        self.gprs.r8 = value;
    }
    fn r9(&self) -> u64 {
        self.gprs.r9
    }
    fn set_r9(&mut self, value: u64) {
        self.gprs.r9 = value;
    }
    fn exit_info_1(&self) -> u64 {
        self.vmcb.get(off::EXIT_INFO_1)
    }
    fn set_exit_info_1(&mut self, value: u64) {
        self.vmcb.set(off::EXIT_INFO_1, value);
    }
    fn exit_info_2(&self) -> u64 {
        self.vmcb.get(off::EXIT_INFO_2)
    }
    fn set_exit_info_2(&mut self, value: u64) {
        self.vmcb.set(off::EXIT_INFO_2, value);
    }
    fn exit_int_info(&self) -> EventInj {
        EventInj::from_bits(self.vmcb.get(off::EXIT_INT_INFO))
    }
    fn set_exit_int_info(&mut self, value: EventInj) {
        self.vmcb.set(off::EXIT_INT_INFO, value.into_bits());
    }
    fn nrip(&self) -> u64 {
        self.vmcb.get(off::NRIP)
    }
    fn set_nrip(&mut self, value: u64) {
        self.vmcb.set(off::NRIP, value);
    }
    fn sev_features(&self) -> SevFeatures {
        SevFeatures::from_bits_retain(self.sev_features.load(Ordering::SeqCst))
    }
    fn set_sev_features(&mut self, value: SevFeatures) {
        self.sev_features.store(value.bits(), Ordering::SeqCst);
    }
    fn vintr_ctrl(&self) -> VIntrCtrl {
        let shadow = if self.vmcb.get(off::INT_STATE) & 1 != 0 {
            VMSA_INT_SHADOW
        } else {
            0
        };
        let busy = if self.busy.load(Ordering::SeqCst) {
            VIntrCtrl::BUSY_MASK
        } else {
            0
        };
        VIntrCtrl::from_bits((self.ctrl_word() & CTRL_MASK) | shadow | busy)
    }
    fn set_vintr_ctrl(&mut self, value: VIntrCtrl) {
        let bits = value.into_bits();
        self.vmcb
            .set(off::INT_CTL, (bits & CTRL_MASK) | V_INTR_MASKING);
        let state = self.vmcb.get(off::INT_STATE) & !1;
        self.vmcb.set(
            off::INT_STATE,
            state | u64::from(bits & VMSA_INT_SHADOW != 0),
        );
        self.busy.store(value.busy(), Ordering::SeqCst);
    }
    fn exit_code(&self) -> ExitCode {
        ExitCode(self.vmcb.get(off::EXIT_CODE))
    }
    fn set_exit_code(&mut self, value: ExitCode) {
        self.vmcb.set(off::EXIT_CODE, value.0);
    }
    fn event_inj(&self) -> EventInj {
        EventInj::from_bits(self.vmcb.get(off::EVENT_INJ))
    }
    fn set_event_inj(&mut self, value: EventInj) {
        self.vmcb.set(off::EVENT_INJ, value.into_bits());
    }
    fn test_and_set_busy(&mut self) -> bool {
        self.busy.swap(true, Ordering::AcqRel)
    }
    fn clear_busy(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// Whether the APM would let the queued V_IRQ in `ctrl` through V_TPR
/// (V_INTR_PRIO > V_TPR\[3:0\] or V_IGN_TPR; APM vol. 2 §15.21.4).
pub fn apm_virq_deliverable(ctrl: VIntrCtrl) -> bool {
    ctrl.v_irq() && (ctrl.v_ign_tpr() || ctrl.v_intr_prio() > ctrl.v_tpr() & 0xF)
}

/// Reads the guest's code bytes at `rip` (identity-mapped image memory).
pub fn code_at(rip: u64) -> Option<[u8; 4]> {
    if !(0x10_0000..(1 << 30) - 4).contains(&rip) {
        return None;
    }
    // SAFETY: guests run only code of this image, in the identity-mapped
    // first GiB (checked above); the bytes are read, never written.
    Some(unsafe { core::ptr::read_unaligned(rip as *const [u8; 4]) })
}

/// One run of the guest as the APM describes it: VMRUN (refused while BUSY
/// is set), with the harness's fix-ups for QEMU's quirks. Returns the exit
/// code (also in the VMCB). Only the `CR8_WRITE` exit never reaches the
/// caller: the harness applies it to V_TPR and re-enters, as CR8 writes do
/// not exit on the APM's hardware.
pub fn run(vcpu: &mut Vcpu) -> u64 {
    if vcpu.busy.load(Ordering::Acquire) {
        vcpu.fixups.busy_refused = vcpu.fixups.busy_refused.saturating_add(1);
        vcpu.vmcb.set(off::EXIT_CODE, exit::BUSY);
        return exit::BUSY;
    }
    loop {
        let word = vcpu.ctrl_word();
        let ctrl = VIntrCtrl::from_bits(word);
        // QEMU takes V_IRQ when V_INTR_PRIO >= V_TPR: withhold what the APM
        // would not deliver. CR8 writes exit (below), so V_TPR cannot drop
        // while it is withheld.
        let withhold = ctrl.v_irq() && !apm_virq_deliverable(ctrl);
        if withhold {
            vcpu.vmcb.set(off::INT_CTL, word & !(1 << 8));
            vcpu.fixups.virq_withheld = vcpu.fixups.virq_withheld.saturating_add(1);
        }
        vcpu.vmcb.set(off::EXIT_INT_INFO, 0);
        vcpu.fixups.vmruns = vcpu.fixups.vmruns.saturating_add(1);
        hw::vmrun(&vcpu.vmcb, &mut vcpu.gprs);
        if withhold {
            let after = vcpu.ctrl_word();
            vcpu.vmcb.set(off::INT_CTL, after | (1 << 8));
        }
        let mut code = vcpu.exit_code();
        if code == exit::INVALID_QEMU {
            vcpu.fixups.invalid_widened = vcpu.fixups.invalid_widened.saturating_add(1);
            code = exit::INVALID;
            vcpu.vmcb.set(off::EXIT_CODE, code);
        }
        let info = EventInj::from_bits(vcpu.vmcb.get(off::EXIT_INT_INFO));
        if info.valid()
            && info.event_type() == altinj_vmsa::EventType::Exception
            && info.vector() >= 32
            && VIntrCtrl::from_bits(vcpu.ctrl_word()).v_irq()
        {
            vcpu.fixups.virq_cut_as_exception = vcpu.fixups.virq_cut_as_exception.saturating_add(1);
        }
        if code == exit::CR8_WRITE && code_at(vcpu.rip()) == Some(MOV_CR8_RAX) {
            let rax = vcpu.vmcb.get(off::RAX);
            let w = vcpu.ctrl_word();
            vcpu.vmcb.set(off::INT_CTL, (w & !0xFF) | (rax & 0xF));
            vcpu.skip(4);
            vcpu.fixups.cr8_writes = vcpu.fixups.cr8_writes.saturating_add(1);
            continue;
        }
        if vcpu.break_recall {
            // Test-only: pretend hardware took whatever was still presented.
            let w = vcpu.ctrl_word();
            vcpu.vmcb.set(off::INT_CTL, w & !(1 << 8));
            let ev = vcpu.vmcb.get(off::EVENT_INJ);
            vcpu.vmcb.set(off::EVENT_INJ, ev & !(1 << 31));
        }
        return code;
    }
}
