//! The part of every vCPU the other vCPUs can see: its mailbox, its
//! published APIC address and a running flag (cross-vCPU delivery).
//!
//! The SVSM owns one [`VcpuShared`] per possible vCPU (a `[VcpuShared; N]`,
//! `const`-constructible for a static, or one in each CPU's own per-CPU
//! allocation) and hands them to every engine as a [`Fabric`]: a contiguous
//! `&[VcpuShared]` ([`Fabric::new`]) or any [`VcpuSlots`] lookup
//! ([`Fabric::with_slots`]). A slot is absent until the vCPU's engine is
//! created (an AP created later just fills its slot); there is no global
//! state and no lock.
//!
//! The owner publishes its [`ApicAddress`] packed into one `AtomicU64` each
//! time the APIC's mode, ID or logical ID may have changed, so a sender
//! reads a target's address with one load and never sees a torn mix of two
//! versions. Packing \[choice\]: bits 31:0 ID, 39:32 xAPIC logical ID
//! (LDR bits 31:24), bit 40 xAPIC cluster model, bits 42:41 mode (0 = slot
//! absent, 1 disabled, 2 xAPIC, 3 x2APIC). The x2APIC LDR is not stored: it
//! is derived from the ID (Intel SDM vol. 3A §11.12.10.2).

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use altinj_apic::{ApicAddress, ApicMode, Destination, DestinationFormat};

use crate::mailbox::Mailbox;
use crate::registration::RegistrationCount;

const MODE_SHIFT: u32 = 41;
const MODE_ABSENT: u64 = 0;
const MODE_DISABLED: u64 = 1;
const MODE_XAPIC: u64 = 2;
const MODE_X2APIC: u64 = 3;
const CLUSTER_BIT: u64 = 1 << 40;

/// Packs an address for publication (never 0: the mode field is non-zero).
pub fn pack_address(address: &ApicAddress) -> u64 {
    let mode = match address.mode {
        ApicMode::Disabled => MODE_DISABLED,
        ApicMode::XApic => MODE_XAPIC,
        ApicMode::X2Apic => MODE_X2APIC,
    };
    let cluster = match address.format {
        DestinationFormat::Flat => 0,
        DestinationFormat::Cluster => CLUSTER_BIT,
    };
    let ldr = match address.mode {
        ApicMode::X2Apic => 0,
        ApicMode::XApic | ApicMode::Disabled => u64::from(address.ldr & 0xFF) << 32,
    };
    u64::from(address.id) | ldr | cluster | (mode << MODE_SHIFT)
}

/// The x2APIC logical ID derived from the x2APIC ID (spec §6).
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xF))
}

/// Unpacks a published address; `None` for an absent slot.
pub fn unpack_address(packed: u64) -> Option<ApicAddress> {
    // Lossless: masked to 32 bits.
    let id = (packed & 0xFFFF_FFFF) as u32;
    let mode = match (packed >> MODE_SHIFT) & 3 {
        MODE_DISABLED => ApicMode::Disabled,
        MODE_XAPIC => ApicMode::XApic,
        MODE_X2APIC => ApicMode::X2Apic,
        _ => return None,
    };
    let format = if packed & CLUSTER_BIT != 0 {
        DestinationFormat::Cluster
    } else {
        DestinationFormat::Flat
    };
    let ldr = match mode {
        ApicMode::X2Apic => x2apic_ldr(id),
        // Lossless: masked to 8 bits.
        ApicMode::XApic | ApicMode::Disabled => ((packed >> 32) & 0xFF) as u32,
    };
    Some(ApicAddress {
        id,
        ldr,
        format,
        mode,
    })
}

/// What one vCPU shows the others. The first cache line holds everything a
/// sender touches (mailbox, published address, host APIC ID), so a post to
/// an empty mailbox costs one line; the owner's own flags live on the
/// second line so that its run loop does not bounce the posters' line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct VcpuShared {
    mailbox: Mailbox,
    address: AtomicU64,
    host_apic_id: AtomicU32,
    owner: OwnerLine,
}

/// The owner's flags, on their own cache line.
#[derive(Debug)]
#[repr(C, align(64))]
struct OwnerLine {
    running: AtomicBool,
    hv_events: AtomicU8,
    timer_fired: AtomicBool,
}

const _: () = {
    assert!(core::mem::size_of::<Mailbox>() <= 40);
    assert!(core::mem::offset_of!(VcpuShared, host_apic_id) < 64);
    assert!(core::mem::offset_of!(VcpuShared, owner) == 64);
    assert!(core::mem::size_of::<VcpuShared>() == 128);
};

impl Default for VcpuShared {
    fn default() -> Self {
        Self::new()
    }
}

impl VcpuShared {
    /// An absent slot.
    pub const fn new() -> Self {
        Self {
            mailbox: Mailbox::new(),
            address: AtomicU64::new(0),
            host_apic_id: AtomicU32::new(0),
            owner: OwnerLine {
                running: AtomicBool::new(false),
                hv_events: AtomicU8::new(0),
                timer_fired: AtomicBool::new(false),
            },
        }
    }

    /// The posted-interrupt mailbox.
    #[inline]
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Whether the vCPU's engine exists (or the AP was announced,
    /// [`VcpuShared::announce`]) and the SVSM emulates its APIC (false
    /// before either and after the hand-back).
    pub fn present(&self) -> bool {
        self.address.load(Ordering::Acquire) >> MODE_SHIFT != MODE_ABSENT && !self.handed_back()
    }

    /// Whether the vCPU's APIC was handed back to the host: its mailbox is
    /// closed, and IPIs to it go to the host (GHCB #HV IPI). Its last
    /// published address stays, so destinations still match it.
    pub fn handed_back(&self) -> bool {
        self.mailbox.closed()
    }

    /// Whether a failed kick to this vCPU waits for its retry
    /// ([`Mailbox::mark_kick_failed`]).
    pub fn kick_failed(&self) -> bool {
        self.mailbox.kick_failed()
    }

    /// The published APIC address; `None` when absent.
    pub fn address(&self) -> Option<ApicAddress> {
        unpack_address(self.address.load(Ordering::Acquire))
    }

    /// The packed published address (0 when absent).
    #[inline]
    pub fn packed_address(&self) -> u64 {
        self.address.load(Ordering::Acquire)
    }

    /// Whether the published address is x2APIC mode with ID `id` (one
    /// load and compare: the engine's fast IPI path).
    #[inline]
    pub(crate) fn is_x2apic_id(&self, id: u32) -> bool {
        // An x2APIC address has no xAPIC logical ID (bits 39:32); the DFR
        // model bit does not matter for a physical destination.
        self.packed_address() & !CLUSTER_BIT == u64::from(id) | (MODE_X2APIC << MODE_SHIFT)
    }

    /// Whether a broadcast reaches this slot: present, APIC enabled (the
    /// test of [`Fabric::for_each_target`]'s broadcast walk).
    #[inline]
    pub(crate) fn takes_broadcast(&self) -> bool {
        self.packed_address() >> MODE_SHIFT >= MODE_XAPIC
    }

    /// The APIC ID the host knows this vCPU by (destination of its kick).
    #[inline]
    pub fn host_apic_id(&self) -> u32 {
        self.host_apic_id.load(Ordering::Relaxed)
    }

    /// Whether the vCPU is inside a guest run (between `before_run` and
    /// `after_exit`). Informative: kicks do not depend on it.
    pub fn running(&self) -> bool {
        self.owner.running.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_running(&self, running: bool) {
        self.owner.running.store(running, Ordering::Relaxed);
    }

    /// Notes per-VMPL doorbell events (bit `VMPL - 1`) seen by the #HV
    /// handler; safe from interrupt context.
    pub(crate) fn note_hv_events(&self, events: u8) {
        if events != 0 {
            self.owner.hv_events.fetch_or(events, Ordering::AcqRel);
        }
    }

    /// Takes the per-VMPL events noted since the last call (owner only).
    #[inline]
    pub(crate) fn take_hv_events(&self) -> u8 {
        if self.owner.hv_events.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.owner.hv_events.swap(0, Ordering::AcqRel)
    }

    /// Notes that the platform's one-shot timer for this vCPU fired (the
    /// SVSM calls it from its timer interrupt; atomics only). The next
    /// `before_run` re-arms it when it fired before the APIC deadline
    /// (`Counters::timer_early`), so an early fire never stalls the timer.
    pub fn note_timer_fired(&self) {
        self.owner.timer_fired.store(true, Ordering::Release);
    }

    /// Takes the note of [`VcpuShared::note_timer_fired`] (owner only).
    #[inline]
    pub(crate) fn take_timer_fired(&self) -> bool {
        self.owner.timer_fired.load(Ordering::Relaxed)
            && self.owner.timer_fired.swap(false, Ordering::AcqRel)
    }

    /// Whether a platform timer fire was noted and not yet taken.
    #[inline]
    pub(crate) fn timer_fire_noted(&self) -> bool {
        self.owner.timer_fired.load(Ordering::Acquire)
    }

    /// Announces an AP from the CPU that handles the guest's request to
    /// create it, before the AP's own engine exists (its CPU has not started
    /// yet and the creating CPU cannot reach its per-CPU data): `config` is
    /// the [`crate::EngineConfig`] the AP's engine will be created with.
    /// From now on the slot is present with the address the AP's APIC has
    /// at reset, so IPIs to it post into its mailbox (and kick its host APIC
    /// ID) instead of being dropped; the mailbox is kept when the engine is
    /// created ([`crate::VcpuEngine::new`]) and drained by its first
    /// `before_run`, so each is delivered exactly once. Atomics only, callable from any CPU;
    /// nothing happens for a configuration without emulation.
    pub fn announce(&self, config: &crate::EngineConfig) {
        if config.emulate {
            let apic = altinj_apic::LocalApic::new(config.apic);
            self.activate(config.host_apic_id, &apic.address());
        }
    }

    /// Makes the slot absent again (an announced vCPU whose engine came up
    /// without emulation): what was posted meanwhile is dropped, as for a
    /// CPU that does not exist.
    pub(crate) fn withdraw(&self) {
        self.address.store(0, Ordering::Release);
        let _ = self.mailbox.drain();
    }

    /// Makes the slot present (the owner's engine was created, or the AP
    /// announced). A slot whose APIC had been handed back gets an empty,
    /// open mailbox again; an open one keeps what was posted.
    pub(crate) fn activate(&self, host_apic_id: u32, address: &ApicAddress) {
        self.host_apic_id.store(host_apic_id, Ordering::Relaxed);
        if self.mailbox.closed() {
            self.mailbox.reopen();
        }
        self.publish_packed(pack_address(address));
    }

    /// Publishes a new packed address if it changed (owner only).
    pub(crate) fn publish_packed(&self, packed: u64) {
        if self.address.load(Ordering::Relaxed) != packed {
            self.address.store(packed, Ordering::Release);
        }
    }
}

/// What is shared by the whole VM rather than per vCPU: today the APIC
/// registration count (spec §5). The SVSM owns one per VM (`const`, so it
/// can be a static) and passes it in every [`Fabric`].
#[derive(Debug, Default)]
pub struct VmShared {
    registrations: RegistrationCount,
}

impl VmShared {
    /// A VM booted with Alternate Injection: registration count 1.
    pub const fn new() -> Self {
        Self {
            registrations: RegistrationCount::new(),
        }
    }

    /// The VM-wide registration count.
    pub fn registrations(&self) -> &RegistrationCount {
        &self.registrations
    }
}

/// Which slots one destination walks (see [`Fabric::for_each_target`]).
#[derive(Clone, Copy)]
enum Scan {
    /// Exactly this slot (self, or a physical ID found at its own index).
    Only(usize),
    /// Every present, enabled slot, except `skip` (broadcast shorthands).
    All { skip: Option<usize> },
    /// Every slot whose published address matches; stop at the first one
    /// when `first_only` (a physical ID not at its own index).
    Match { first_only: bool },
}

/// How the engine finds vCPU `index`'s [`VcpuShared`]: a contiguous table
/// (`[VcpuShared]`, `[VcpuShared; N]`), a table of references into the
/// per-CPU allocations an SVSM keeps (`[&VcpuShared]`), or the SVSM's own
/// lookup. Every vCPU's engine must see the same slot at the same index,
/// for as long as the VM runs; lookups run on every IPI, lock-free.
pub trait VcpuSlots: Sync {
    /// The slot of vCPU `index`; `None` for an index without one (IPIs to
    /// it are dropped, as for a CPU that does not exist).
    fn slot(&self, index: usize) -> Option<&VcpuShared>;

    /// One past the highest index that may have a slot (broadcasts walk
    /// `0..len()`).
    fn len(&self) -> usize;

    /// Whether no index has a slot.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slots as one contiguous table, when they are: the fast paths
    /// walk it directly (a broadcast to idle vCPUs); otherwise `None`.
    fn as_slice(&self) -> Option<&[VcpuShared]> {
        None
    }
}

impl VcpuSlots for [VcpuShared] {
    #[inline]
    fn slot(&self, index: usize) -> Option<&VcpuShared> {
        self.get(index)
    }

    #[inline]
    fn len(&self) -> usize {
        <[VcpuShared]>::len(self)
    }

    #[inline]
    fn as_slice(&self) -> Option<&[VcpuShared]> {
        Some(self)
    }
}

impl<const N: usize> VcpuSlots for [VcpuShared; N] {
    #[inline]
    fn slot(&self, index: usize) -> Option<&VcpuShared> {
        self.get(index)
    }

    #[inline]
    fn len(&self) -> usize {
        N
    }

    #[inline]
    fn as_slice(&self) -> Option<&[VcpuShared]> {
        Some(self)
    }
}

/// References into separate per-CPU allocations.
impl<const N: usize> VcpuSlots for [&VcpuShared; N] {
    #[inline]
    fn slot(&self, index: usize) -> Option<&VcpuShared> {
        self.get(index).copied()
    }

    #[inline]
    fn len(&self) -> usize {
        N
    }
}

/// References into separate per-CPU allocations, `None` where no vCPU is.
impl<const N: usize> VcpuSlots for [Option<&VcpuShared>; N] {
    #[inline]
    fn slot(&self, index: usize) -> Option<&VcpuShared> {
        self.get(index).copied().flatten()
    }

    #[inline]
    fn len(&self) -> usize {
        N
    }
}

/// Every vCPU's shared part (through [`VcpuSlots`]) and the VM-wide state,
/// owned by the SVSM.
#[derive(Clone, Copy)]
pub struct Fabric<'a> {
    /// The contiguous table, looked up first with no indirection (empty
    /// when the slots come from a lookup).
    table: &'a [VcpuShared],
    /// The SVSM's lookup, when the slots are not one table.
    lookup: Option<&'a dyn VcpuSlots>,
    /// Number of indexes (read once from a lookup).
    len: usize,
    vm: &'a VmShared,
}

impl core::fmt::Debug for Fabric<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fabric")
            .field("len", &self.len)
            .field("contiguous", &self.lookup.is_none())
            .field("vm", self.vm)
            .finish()
    }
}

impl<'a> Fabric<'a> {
    /// Wraps the SVSM's contiguous table (slot `i` belongs to vCPU index
    /// `i`) and the VM-wide state.
    pub const fn new(slots: &'a [VcpuShared], vm: &'a VmShared) -> Self {
        Self {
            table: slots,
            lookup: None,
            len: slots.len(),
            vm,
        }
    }

    /// Wraps any slot lookup (per-CPU allocations, a table of references)
    /// and the VM-wide state; its `len()` is read once, here. A lookup
    /// that is a contiguous table ([`VcpuSlots::as_slice`]) is used as one.
    pub fn with_slots(slots: &'a dyn VcpuSlots, vm: &'a VmShared) -> Self {
        match slots.as_slice() {
            Some(table) => Self::new(table, vm),
            None => Self {
                table: &[],
                lookup: Some(slots),
                len: slots.len(),
                vm,
            },
        }
    }

    /// The VM-wide state.
    pub fn vm(&self) -> &'a VmShared {
        self.vm
    }

    /// The slot of vCPU `index`.
    #[inline]
    pub fn slot(&self, index: usize) -> Option<&'a VcpuShared> {
        // The table first: a hit costs what a slice index costs.
        match self.table.get(index) {
            Some(slot) => Some(slot),
            None => self.lookup.and_then(|lookup| lookup.slot(index)),
        }
    }

    /// Every slot, in index order, when they form one table (the fast
    /// paths walk it); empty for a lookup.
    #[inline]
    pub(crate) fn table(&self) -> &'a [VcpuShared] {
        self.table
    }

    /// Whether the slots form one table.
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        self.lookup.is_none()
    }

    /// Number of indexes (slots or not).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(index, slot)` for every vCPU that `destination` (sent by the
    /// APIC `source_id` on vCPU `sender`) reaches. Lock-free; absent slots
    /// and hardware-disabled APICs are skipped (a disabled APIC accepts no
    /// interrupt, Intel SDM vol. 3A §11.4.3). A single physical ID is looked
    /// up directly at slot `id` first (IDs normally equal vCPU indexes) and
    /// only scanned for when that slot does not hold it.
    pub fn for_each_target(
        &self,
        sender: usize,
        source_id: u32,
        destination: &Destination,
        mut f: impl FnMut(usize, &'a VcpuShared),
    ) {
        let scan = match *destination {
            Destination::ToSelf => Scan::Only(sender),
            Destination::AllIncludingSelf => Scan::All { skip: None },
            Destination::AllExcludingSelf => Scan::All { skip: Some(sender) },
            Destination::Physical { id, x2apic } => {
                let broadcast = if x2apic { id == u32::MAX } else { id == 0xFF };
                let direct = usize::try_from(id)
                    .ok()
                    .filter(|_| !broadcast)
                    .filter(|&i| {
                        self.slot(i)
                            .is_some_and(|slot| Self::accepts(slot, source_id, destination))
                    });
                match direct {
                    Some(index) => Scan::Only(index),
                    // Physical IDs are unique: one target at most.
                    None => Scan::Match {
                        first_only: !broadcast,
                    },
                }
            }
            Destination::Logical { .. } => Scan::Match { first_only: false },
        };
        // A single call of `f` (in `visit`), so that the caller's closure
        // (the per-target work of a broadcast) is inlined once per walk.
        let mut visit = |index: usize, slot: &'a VcpuShared| {
            let hit = match scan {
                Scan::Only(_) => true,
                Scan::All { skip } => skip != Some(index) && slot.takes_broadcast(),
                Scan::Match { .. } => Self::accepts(slot, source_id, destination),
            };
            if hit {
                f(index, slot);
            }
            // Stop after the first hit of a unique physical ID.
            hit && matches!(scan, Scan::Match { first_only: true })
        };
        match self.lookup {
            None => {
                let table = self.table;
                let (first, slots) = match scan {
                    Scan::Only(index) => (index, table.get(index..=index).unwrap_or(&[])),
                    Scan::All { .. } | Scan::Match { .. } => (0, table),
                };
                for (index, slot) in (first..).zip(slots) {
                    if visit(index, slot) {
                        return;
                    }
                }
            }
            Some(lookup) => {
                let range = match scan {
                    Scan::Only(index) => index..index.saturating_add(1),
                    Scan::All { .. } | Scan::Match { .. } => 0..self.len,
                };
                for index in range {
                    if let Some(slot) = lookup.slot(index)
                        && visit(index, slot)
                    {
                        return;
                    }
                }
            }
        }
    }

    fn accepts(slot: &VcpuShared, source_id: u32, destination: &Destination) -> bool {
        match slot.address() {
            Some(address) if address.mode != ApicMode::Disabled => {
                destination.matches(source_id, &address)
            }
            _ => false,
        }
    }
}
