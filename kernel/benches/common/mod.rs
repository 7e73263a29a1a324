//! What both engine benches share: a platform whose GHCB calls are stubbed
//! (the #HV IPI calls counted) and the engine configuration of vCPU `i`.

use std::cell::Cell;

use altinj_apic::ApicConfig;
use altinj_kernel::platform::{DisableAiRequest, DoorbellRequest, NoTimer, PlatformError};
use altinj_kernel::{EngineConfig, Platform};

/// The guest VMPL of the benches.
pub const VMPL: u8 = 2;
/// APIC_BASE in x2APIC mode, enabled.
pub const X2APIC_BASE: u64 = 0xFEE0_0000 | (1 << 11) | (1 << 10);

/// GHCB calls stubbed; #HV IPI calls counted.
#[derive(Default)]
pub struct CountingPlatform {
    pub hv_ipis: Cell<u64>,
}

impl Platform for CountingPlatform {
    fn hv_ipi(&self, _icr: u64) -> Result<(), PlatformError> {
        self.hv_ipis.set(self.hv_ipis.get().wrapping_add(1));
        Ok(())
    }
    fn specific_eoi(&self, _: u8, _: u8) -> Result<(), PlatformError> {
        Ok(())
    }
    fn disable_alternate_injection(&self, _: DisableAiRequest) -> Result<(), PlatformError> {
        Ok(())
    }
    fn configure_notification_vector(&self, _: u8) -> Result<(), PlatformError> {
        Ok(())
    }
    fn doorbell_page(&self, _: DoorbellRequest) -> Result<u64, PlatformError> {
        Ok(0)
    }
    fn now(&self) -> u64 {
        0
    }
    fn has_timer(&self) -> bool {
        true
    }
    fn arm_timer(&self, _: Option<u64>) -> Result<(), NoTimer> {
        Ok(())
    }
}

/// vCPU `i`: APIC ID `i`, notification vector 0x50, emulated.
pub fn config(i: usize) -> EngineConfig {
    EngineConfig {
        index: i,
        host_apic_id: i as u32,
        apic: ApicConfig {
            apic_id: i as u32,
            bsp: i == 0,
            ..ApicConfig::default()
        },
        guest_vmpl: VMPL,
        notification_vector: 0x50,
        emulate: true,
    }
}
