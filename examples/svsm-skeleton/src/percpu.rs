//! Per-CPU data (docs/integration.md, "What the SVSM owns"): each vCPU's
//! `VcpuShared` lives in its own per-CPU allocation, found by index through
//! a `VcpuSlots` table every CPU shares; the engine lives in the vCPU's
//! per-CPU data, `&mut` from its run loop only.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use altinj_apic::ApicConfig;
use altinj_doorbell::DoorbellPage;
use altinj_kernel::caa::{GuestMemoryError, NoEoiByte};
use altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR;
use altinj_kernel::{EngineConfig, Env, Fabric, VcpuEngine, VcpuShared, VcpuSlots, VmShared};

use crate::ghcb::GhcbPlatform;
use crate::{GUEST_VMPL, MAX_CPUS};

/// The VM's one `VmShared` (the APIC registration count): every vCPU's
/// `Fabric` carries this one.
pub static VM: VmShared = VmShared::new();

/// Every vCPU's shared slot, by index, wherever its per-CPU allocation is.
pub static SLOTS: SlotTable = SlotTable::new();

/// The fabric every engine call gets.
pub fn fabric() -> Fabric<'static> {
    Fabric::with_slots(&SLOTS, &VM)
}

/// Pointers to per-CPU `VcpuShared`s, published once per vCPU (by the CPU
/// that creates it) and never removed.
pub struct SlotTable {
    slots: [AtomicPtr<VcpuShared>; MAX_CPUS],
}

impl SlotTable {
    const fn new() -> Self {
        Self {
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CPUS],
        }
    }

    /// Publishes vCPU `index`'s slot (its per-CPU allocation lives for the
    /// whole VM). False when the index is out of range or already taken.
    pub fn register(&self, index: usize, slot: &'static VcpuShared) -> bool {
        let Some(entry) = self.slots.get(index) else {
            return false;
        };
        let new = ptr::from_ref(slot).cast_mut();
        entry
            .compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl VcpuSlots for SlotTable {
    fn slot(&self, index: usize) -> Option<&VcpuShared> {
        let p = self.slots.get(index)?.load(Ordering::Acquire);
        // SAFETY: only `&'static VcpuShared` are stored (`register`), never
        // removed, and `VcpuShared` is only used through shared references.
        unsafe { p.as_ref() }
    }

    fn len(&self) -> usize {
        MAX_CPUS
    }
}

/// Byte 2 (`no_eoi_required`) of the guest's calling area, reached through
/// the SVSM's fallible guest-memory access (stub: a byte and a "mapped"
/// flag; COCONUT reads it through its guest-memory accessors).
#[derive(Debug, Default)]
pub struct CaaByte {
    mapped: AtomicBool,
    byte: AtomicU8,
    /// The guest's `call_pending` byte (byte 0), stubbed alongside.
    call_pending: AtomicU8,
}

impl CaaByte {
    /// A calling area the guest has not set yet.
    pub const fn new() -> Self {
        Self {
            mapped: AtomicBool::new(false),
            byte: AtomicU8::new(0),
            call_pending: AtomicU8::new(0),
        }
    }

    /// Whether the guest has an SVSM call pending (CAA byte 0), cleared.
    pub fn take_call_pending(&self) -> bool {
        self.mapped.load(Ordering::Acquire) && self.call_pending.swap(0, Ordering::AcqRel) != 0
    }
}

impl NoEoiByte for CaaByte {
    fn store(&self, value: u8) -> Result<(), GuestMemoryError> {
        if !self.mapped.load(Ordering::Acquire) {
            return Err(GuestMemoryError);
        }
        self.byte.store(value, Ordering::Release);
        Ok(())
    }

    fn swap(&self, value: u8) -> Result<u8, GuestMemoryError> {
        if !self.mapped.load(Ordering::Acquire) {
            return Err(GuestMemoryError);
        }
        Ok(self.byte.swap(value, Ordering::AcqRel))
    }
}

/// How vCPU `index` with APIC ID `apic_id` is set up: the same on the CPU
/// that announces it and on its own CPU that creates its engine.
pub fn engine_config(index: usize, apic_id: u32) -> EngineConfig {
    EngineConfig {
        index,                 // slot in the fabric
        host_apic_id: apic_id, // the APIC ID the host knows the vCPU by
        // The CPU model as the guest's CPUID shows it: CPUID.01H:ECX[21]
        // (x2APIC), CPUID.80000008H:EAX[7:0] (MAXPHYADDR), CMCI in the LVT,
        // directed EOI. The defaults are x2APIC, MAXPHYADDR 52, CMCI, no
        // directed EOI and 1 tick per bus cycle: without a platform timer
        // (`has_timer()` false, QUERY_FEATURES bit 0 clear)
        // ticks_per_bus_cycle never matters.
        apic: ApicConfig {
            apic_id,
            bsp: index == 0,
            ..Default::default()
        },
        guest_vmpl: GUEST_VMPL, // 1-3, else Err(Fatal::BadVmpl)
        notification_vector: DEFAULT_NOTIFICATION_VECTOR,
        emulate: true, // SEV_FEATURES has Alternate Injection
    }
}

/// One vCPU's per-CPU data.
pub struct PerCpu {
    /// Index in the fabric.
    pub index: usize,
    /// Its shared slot (also reachable through [`SLOTS`]).
    pub shared: &'static VcpuShared,
    /// Its #HV doorbell page (shared memory).
    pub doorbell: &'static DoorbellPage,
    /// The guest's calling area.
    pub caa: CaaByte,
    /// This CPU's GHCB as the engine's platform.
    pub platform: GhcbPlatform,
    /// The engine (`&mut` from the run loop only).
    pub engine: VcpuEngine,
}

/// Splits `cpu` into the engine, the environment of one engine call (which
/// borrows the other per-CPU fields) and the calling area.
pub fn engine_and_env(cpu: &mut PerCpu) -> (&mut VcpuEngine, Env<'_, GhcbPlatform>, &CaaByte) {
    let PerCpu {
        engine,
        platform,
        doorbell,
        caa,
        ..
    } = cpu;
    let caa = &*caa;
    // Lazy EOI (optional): byte 2 of the guest's calling area through the
    // SVSM's own fallible guest-memory access (`altinj_kernel::caa::NoEoiByte`;
    // `AtomicU8` implements it for a calling area the SVSM keeps mapped).
    let env = Env::new(&*platform, fabric(), doorbell).with_no_eoi_byte(Some(caa));
    (engine, env, caa)
}
