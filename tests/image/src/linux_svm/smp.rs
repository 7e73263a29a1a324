//! vCPU creation: the BSP's engine at boot, and each AP's when Linux asks
//! for it with INIT/SIPI.
//!
//! The engine keeps refusing INIT and SIPI in the ICR (spec §6): in an SNP
//! guest an AP is started by the SVSM's AP-creation call, not by an IPI.
//! Linux (unmodified) sends INIT and SIPI instead, so the harness takes an
//! ICR write with delivery mode INIT or STARTUP before the engine sees it
//! and treats it as that request: INIT creates the target's engine (its
//! fabric slot becomes present, so IPIs reach it from then on), the first
//! SIPI creates its VMCB in the INIT state at the start-up vector's page
//! (Intel SDM vol. 3A §9.4.4.1, AMD APM vol. 2 §15.19 for the real-mode
//! VMCB) and lets the run loop schedule it. Later SIPIs are ignored, as a
//! started CPU ignores them.

use altinj_apic::ApicConfig;
use altinj_kernel::{EngineConfig, Fabric, VcpuEngine};

use super::host::{GUEST_VMPL, SLOTS, VM};
use crate::svm::hw::{self, Page, off};

/// APIC_BASE as firmware leaves a CPU in x2APIC mode (SDM vol. 3A §11.12.5).
const APIC_BASE_X2APIC: u64 = 0xFEE0_0000 | (1 << 11) | (1 << 10);
/// APIC_BASE BSP flag.
const APIC_BASE_BSP: u64 = 1 << 8;

/// ICR delivery modes the harness serves itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartIpi {
    /// INIT (level assert or de-assert).
    Init,
    /// STARTUP with its vector (start at vector << 12).
    Startup(u8),
}

/// The INIT/STARTUP request in an ICR value (bits 10:8 delivery mode,
/// 7:0 vector; SDM vol. 3A §11.6.1), if it is one.
pub fn start_ipi(icr_low: u64) -> Option<StartIpi> {
    match (icr_low >> 8) & 7 {
        5 => Some(StartIpi::Init),
        6 => Some(StartIpi::Startup((icr_low & 0xFF) as u8)),
        _ => None,
    }
}

/// Creates vCPU `k`'s engine (APIC ID `k`), with every host vector
/// allowed (Linux never calls CONFIGURE_VECTOR) and, when `x2apic`, the
/// APIC in x2APIC mode as firmware leaves it.
pub fn new_engine(k: usize, x2apic: bool, ticks_per_bus_cycle: u32) -> Option<VcpuEngine> {
    let config = EngineConfig {
        index: k,
        host_apic_id: 0,
        apic: ApicConfig {
            apic_id: k as u32,
            bsp: k == 0,
            ticks_per_bus_cycle,
            directed_eoi: false,
            ..Default::default()
        },
        guest_vmpl: GUEST_VMPL,
        notification_vector: altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR,
        emulate: true,
    };
    let mut engine = VcpuEngine::new(config, Fabric::new(&SLOTS, &VM)).ok()?;
    engine.apic_mut().set_all_host_vectors_allowed(true);
    if x2apic {
        let bsp = if k == 0 { APIC_BASE_BSP } else { 0 };
        engine
            .apic_mut()
            .set_apic_base(APIC_BASE_X2APIC | bsp)
            .ok()?;
    }
    Some(engine)
}

/// Puts an AP's VMCB in the state INIT + STARTUP(`vector`) leaves a CPU
/// in: real mode, CS = vector << 8 (base vector << 12), IP 0, interrupts
/// off, paging off (the nested page tables stay).
pub fn init_ap_vmcb(vmcb: &Page, bsp_vmcb: &Page, vector: u8) {
    vmcb.clear();
    // The control area is the BSP's (intercepts, maps, NPT, ASID).
    for o in (0..0x100).step_by(8) {
        vmcb.set(o, bsp_vmcb.get(o));
    }
    vmcb.set(off::ASID, 1 | (1 << 32));
    vmcb.set(off::EXIT_CODE, 0);
    vmcb.set(off::EVENT_INJ, 0);
    vmcb.set(off::INT_CTL, hw::V_INTR_MASKING);
    vmcb.set(off::INT_STATE, 0);
    let base = u64::from(vector) << 12;
    hw::set_segment(vmcb, off::CS, u16::from(vector) << 8, 0x009B, 0xFFFF, base);
    for seg in [off::ES, off::SS, off::DS, 0x440, 0x450] {
        hw::set_segment(vmcb, seg, 0, 0x0093, 0xFFFF, 0);
    }
    hw::set_segment(vmcb, off::GDTR, 0, 0, 0xFFFF, 0);
    hw::set_segment(vmcb, off::IDTR, 0, 0, 0xFFFF, 0);
    hw::set_segment(vmcb, 0x470, 0, 0x0082, 0xFFFF, 0); // LDTR
    hw::set_segment(vmcb, off::TR, 0, 0x008B, 0xFFFF, 0);
    vmcb.set(off::EFER, 1 << 12); // SVME (VMRUN requires it)
    vmcb.set(off::CR0, 0x10); // ET
    vmcb.set(off::CR3, 0);
    vmcb.set(off::CR4, 0);
    vmcb.set(off::DR6, 0xFFFF_0FF0);
    vmcb.set(off::DR7, 0x400);
    vmcb.set(off::RFLAGS, 0x2);
    vmcb.set(off::RIP, 0);
    vmcb.set(off::RSP, 0);
    vmcb.set(off::RAX, 0);
    // Guest PAT as at reset (the BSP's value).
    vmcb.set(0x668, bsp_vmcb.get(0x668));
}
