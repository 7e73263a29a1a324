//! Bringing vCPUs up (docs/integration.md, "Bringing a vCPU up"): the BSP
//! at boot, and an AP the guest asks for on some other vCPU, which cannot
//! reach the AP's per-CPU data: it publishes and announces the AP's slot,
//! so IPIs sent before the AP's own engine exists wait in its mailbox.

use altinj_doorbell::DoorbellPage;
use altinj_kernel::platform::{DEFAULT_NOTIFICATION_VECTOR, DoorbellGpa, setup_vcpu};
use altinj_kernel::{Fatal, PlatformError, VcpuEngine, VcpuShared};

use crate::ghcb::GhcbPlatform;
use crate::percpu::{CaaByte, PerCpu, SLOTS, engine_config, fabric};

/// Why a vCPU could not be brought up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BringUpError {
    /// The index is out of range or already has a slot.
    Slot,
    /// A GHCB call failed (doorbell page, notification vector).
    Ghcb(PlatformError),
    /// The doorbell page mapping is not 4 KiB-aligned.
    Doorbell,
    /// The engine refused the configuration.
    Engine(Fatal),
}

/// On the CPU that handles the guest's request to create vCPU `index`
/// (SVSM core protocol, CREATE_VCPU): publishes the AP's slot (its per-CPU
/// allocation) and announces it with the configuration its engine will
/// have, before the AP's VMSA is made runnable.
pub fn announce_ap(
    index: usize,
    apic_id: u32,
    slot: &'static VcpuShared,
) -> Result<(), BringUpError> {
    if !SLOTS.register(index, slot) {
        return Err(BringUpError::Slot);
    }
    slot.announce(&engine_config(index, apic_id));
    Ok(())
}

/// On the vCPU's own CPU, when it starts (the BSP at boot after
/// `announce_ap` for itself): the GHCB set-up, the doorbell page view and
/// the engine. IPIs posted since the announcement are kept for the first
/// `before_run`.
pub fn start_vcpu(
    index: usize,
    apic_id: u32,
    slot: &'static VcpuShared,
    doorbell_gpa: u64,
    doorbell_page: &'static mut [u8; 4096],
) -> Result<PerCpu, BringUpError> {
    let platform = GhcbPlatform::default();
    // #HV doorbell page at a shared page the SVSM allocated
    // (`DoorbellGpa::HostPreferred` asks the host for its preferred GPA
    // instead, where the host has that sub-function), then the
    // notification vector.
    setup_vcpu(
        &platform,
        DoorbellGpa::At(doorbell_gpa),
        DEFAULT_NOTIFICATION_VECTOR,
    )
    .map_err(BringUpError::Ghcb)?;
    let doorbell: &'static DoorbellPage =
        DoorbellPage::from_bytes_mut(doorbell_page).ok_or(BringUpError::Doorbell)?;
    let engine =
        VcpuEngine::new(engine_config(index, apic_id), fabric()).map_err(BringUpError::Engine)?;
    Ok(PerCpu {
        index,
        shared: slot,
        doorbell,
        caa: CaaByte::new(),
        platform,
        engine,
    })
}
