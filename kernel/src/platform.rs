//! What the engine needs from the platform (spec §4), behind one trait.
//!
//! A real SVSM implements [`Platform`] with GHCB calls made on the current
//! vCPU's GHCB; the simulator implements it with a model hypervisor; the
//! unit tests use `testing::MockPlatform`. The engine calls it from
//! the run loop only (never from the #HV handler), so an implementation may
//! use the per-CPU GHCB without extra locking.
//!
//! Run VMPL (GHCB 0x8000_0018) is deliberately not here: running the guest
//! is the SVSM's own loop (`before_run` -> Run VMPL -> `after_exit`, see
//! `docs/integration.md`).

/// GHCB NAE exit codes the platform uses (GHCB spec 56421; spec §4).
pub mod ghcb {
    /// #HV doorbell page: EXITINFO1 = sub-function, EXITINFO2 = GPA.
    pub const HV_DOORBELL_PAGE: u64 = 0x8000_0014;
    /// #HV IPI: EXITINFO1 = 64-bit x2APIC ICR.
    pub const HV_IPI: u64 = 0x8000_0015;
    /// #HV timer (parameters not public).
    pub const HV_TIMER: u64 = 0x8000_0016;
    /// Run VMPL (MSR protocol request 0x016, VMPL in GHCBData bits 39:32).
    pub const RUN_VMPL: u64 = 0x8000_0018;
    /// Configure the interrupt-injection notification vector \[impl\].
    pub const CONFIGURE_NOTIFICATION_VECTOR: u64 = 0x8000_001B;
    /// Disable alternate injection: the host takes the APIC back \[impl\].
    pub const DISABLE_ALTERNATE_INJECTION: u64 = 0x8000_001C;
    /// Specific EOI of a host-presented level-triggered vector \[impl\].
    pub const SPECIFIC_EOI: u64 = 0x8000_001D;

    /// Doorbell sub-function 0: get the preferred GPA.
    pub const DOORBELL_GET_PREFERRED: u64 = 0;
    /// Doorbell sub-function 1: set (EXITINFO2 = GPA).
    pub const DOORBELL_SET: u64 = 1;
    /// Doorbell sub-function 2: query the current GPA.
    pub const DOORBELL_QUERY: u64 = 2;
    /// Doorbell sub-function 3: clear.
    pub const DOORBELL_CLEAR: u64 = 3;
}

/// Vector COCONUT-SVSM configures as the notification vector \[impl\].
pub const DEFAULT_NOTIFICATION_VECTOR: u8 = 0x50;

/// The hypervisor failed or refused a GHCB call, with what it returned
/// (GHCB spec 56421: SW_EXITINFO1 non-zero, SW_EXITINFO2 the reason), so
/// the SVSM's own logs can tell one failure from another. The engine only
/// counts (`Counters::platform_errors`) and logs it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PlatformError {
    /// SW_EXITINFO1 as the host left it (non-zero on error).
    pub exit_info1: u64,
    /// SW_EXITINFO2 as the host left it (the error detail, if any).
    pub exit_info2: u64,
}

impl PlatformError {
    /// A failure with no GHCB detail (a platform that is not a GHCB, a
    /// call the platform refused before reaching the host).
    pub const UNSPECIFIED: Self = Self {
        exit_info1: 0,
        exit_info2: 0,
    };

    /// The failure the host reported in the GHCB.
    pub const fn ghcb(exit_info1: u64, exit_info2: u64) -> Self {
        Self {
            exit_info1,
            exit_info2,
        }
    }
}

/// The platform has no one-shot timer for VMPL0 (no #HV timer feature, bit 3
/// of the hypervisor features): the guest must use the host's timer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NoTimer;

/// #HV doorbell page sub-functions (GHCB 0x8000_0014).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DoorbellRequest {
    /// Sub-function 0: the hypervisor's preferred GPA.
    GetPreferred,
    /// Sub-function 1: register the page at this GPA.
    Set(u64),
    /// Sub-function 2: the GPA currently registered.
    Query,
    /// Sub-function 3: unregister.
    Clear,
}

impl DoorbellRequest {
    /// (EXITINFO1, EXITINFO2) for the GHCB call.
    pub fn exit_info(self) -> (u64, u64) {
        match self {
            Self::GetPreferred => (ghcb::DOORBELL_GET_PREFERRED, 0),
            Self::Set(gpa) => (ghcb::DOORBELL_SET, gpa),
            Self::Query => (ghcb::DOORBELL_QUERY, 0),
            Self::Clear => (ghcb::DOORBELL_CLEAR, 0),
        }
    }
}

/// The guest state the host needs when it takes the APIC back
/// (GHCB 0x8000_001C).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DisableAiRequest {
    /// The guest's VMPL.
    pub vmpl: u8,
    /// The guest's TPR (V_TPR).
    pub tpr: u8,
    /// The guest is in an interrupt shadow.
    pub int_shadow: bool,
    /// The guest's RFLAGS.IF.
    pub interrupts_enabled: bool,
}

impl DisableAiRequest {
    /// EXITINFO1: VMPL<<16 | TPR<<8 | INT_SHADOW<<1 | IF \[impl\].
    pub fn exit_info1(&self) -> u64 {
        (u64::from(self.vmpl) << 16)
            | (u64::from(self.tpr) << 8)
            | (u64::from(self.int_shadow) << 1)
            | u64::from(self.interrupts_enabled)
    }
}

/// The guest's APIC timer as the host needs it to keep the timer running
/// once it emulates the APIC (after disable-AI, spec §5 CONFIGURE): the
/// registers that define it and where it stands. \[choice\] The GHCB has
/// no public call for it; the SVSM passes it on however its host takes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GuestTimer {
    /// LVT timer (MSR 0x832): mode (bits 18:17), mask (bit 16), vector.
    pub lvt_timer: u32,
    /// Divide configuration (MSR 0x83E).
    pub divide_config: u32,
    /// Initial count (MSR 0x838): the reload value in periodic mode.
    pub initial_count: u32,
    /// Current count (MSR 0x839) at the hand-back.
    pub current_count: u32,
    /// IA32_TSC_DEADLINE (TSC-deadline mode; 0 disarmed).
    pub tsc_deadline: u64,
    /// When the timer next expires, in [`Platform::now`] ticks (`None`:
    /// not armed). A due expiry is already in the handed-back IRR.
    pub deadline: Option<u64>,
}

/// EXITINFO1 of a specific EOI: VMPL<<16 | vector \[impl\].
pub fn specific_eoi_info(vmpl: u8, vector: u8) -> u64 {
    (u64::from(vmpl) << 16) | u64::from(vector)
}

/// ICR of the #HV IPI that kicks `host_apic_id`'s VMPL0: fixed, physical,
/// edge, the notification vector, destination in bits 63:32 (x2APIC ICR
/// format, Intel SDM vol. 3A §11.12.9).
pub fn notification_icr(host_apic_id: u32, vector: u8) -> u64 {
    (u64::from(host_apic_id) << 32) | u64::from(vector)
}

/// ICR of one #HV IPI that kicks the VMPL0 of every vCPU but the caller:
/// fixed, edge, the notification vector, shorthand all-excluding-self
/// (bits 19:18 = 11b; x2APIC ICR format, Intel SDM vol. 3A §11.12.9).
pub fn notification_icr_all_but_self(vector: u8) -> u64 {
    (3 << 18) | u64::from(vector)
}

/// ICR of one #HV IPI that kicks the VMPL0 of the members `members` (bit
/// `ID[3:0]`) of x2APIC cluster `cluster` (`ID[19:4]`): fixed, edge, the
/// notification vector, logical destination mode (bit 11) with the x2APIC
/// logical ID `cluster << 16 | members` in bits 63:32 (Intel SDM vol. 3A
/// §11.12.10.2: x2APIC LDR = `ID[19:4] << 16 | 1 << ID[3:0]`).
pub fn notification_icr_cluster(cluster: u16, members: u16, vector: u8) -> u64 {
    let destination = (u64::from(cluster) << 16) | u64::from(members);
    (destination << 32) | (1 << 11) | u64::from(vector)
}

/// ICR of the #HV IPI that forwards a guest IPI to a vCPU whose APIC the
/// host emulates (handed back, spec §5 CONFIGURE): physical destination
/// `host_apic_id` in bits 63:32, edge, and either fixed delivery of the
/// guest's `vector` or NMI delivery (mode 100b in bits 10:8, vector 0)
/// (x2APIC ICR format, Intel SDM vol. 3A §11.12.9). \[choice\] (the GHCB
/// text for this is not public) the host tells the two uses of the #HV IPI
/// apart by vector: the notification vector (GHCB 0x8000_001B) is a kick
/// for the target's VMPL0; any other vector, or NMI delivery, is for the
/// guest APIC the host emulates after disable-AI (GHCB 0x8000_001C). A
/// guest IPI that uses the notification vector itself is therefore
/// ambiguous to the host; the engine forwards it all the same.
pub fn forward_icr(host_apic_id: u32, vector: u8, nmi: bool) -> u64 {
    let low = if nmi { 0b100 << 8 } else { u64::from(vector) };
    (u64::from(host_apic_id) << 32) | low
}

/// The platform services one vCPU's engine uses. `&self` everywhere: one
/// implementation object may serve every vCPU (it knows the current CPU).
pub trait Platform {
    /// #HV IPI (GHCB 0x8000_0015): asks the host to send `icr` (x2APIC
    /// format); the engine uses it to kick other vCPUs' VMPL0 (one physical
    /// destination, [`notification_icr`]; every other vCPU,
    /// [`notification_icr_all_but_self`]; one x2APIC cluster,
    /// [`notification_icr_cluster`]: the kicks of one guest ICR write go
    /// out as one call where one ICR can name them) and to forward a guest
    /// IPI to a vCPU whose APIC the host emulates ([`forward_icr`]). Pass
    /// the ICR to the GHCB unchanged.
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError>;

    /// Specific EOI (GHCB 0x8000_001D) of host-presented level vector
    /// `vector` for `vmpl`.
    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError>;

    /// Disable alternate injection (GHCB 0x8000_001C): the host emulates
    /// this vCPU's APIC from now on.
    fn disable_alternate_injection(&self, request: DisableAiRequest) -> Result<(), PlatformError>;

    /// Configure the notification vector (GHCB 0x8000_001B).
    fn configure_notification_vector(&self, vector: u8) -> Result<(), PlatformError>;

    /// #HV doorbell page call (GHCB 0x8000_0014); returns the GPA the
    /// hypervisor reports (0 when the sub-function has no result).
    fn doorbell_page(&self, request: DoorbellRequest) -> Result<u64, PlatformError>;

    /// Monotonic time in the ticks the APIC timer is configured with
    /// (`ApicConfig::ticks_per_bus_cycle`), normally the TSC.
    fn now(&self) -> u64;

    /// Whether [`Platform::arm_timer`] works on this platform.
    fn has_timer(&self) -> bool;

    /// Arms (replacing any earlier one) a one-shot timer that signals this
    /// vCPU's VMPL0 at `deadline` (`None`: disarm). When it fires the SVSM
    /// leaves the guest run and calls `before_run`, which polls the APIC
    /// timer.
    fn arm_timer(&self, deadline: Option<u64>) -> Result<(), NoTimer>;

    /// Gives the host the guest VMPL's APIC timer after a successful
    /// disable-AI (see [`GuestTimer`]). The default takes nothing
    /// (`Err`): the engine then logs that the guest's timer stops with the
    /// hand-back unless the host keeps it some other way.
    fn hand_back_timer(&self, vmpl: u8, timer: &GuestTimer) -> Result<(), PlatformError> {
        let _ = (vmpl, timer);
        Err(PlatformError::UNSPECIFIED)
    }
}

/// Where the #HV doorbell page of a vCPU lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DoorbellGpa {
    /// A page the SVSM allocated itself (shared/unencrypted): works with
    /// every host that offers the doorbell call.
    At(u64),
    /// Ask the host for its preferred GPA first (sub-function 0). Not every
    /// host implements that sub-function; use `At` where it fails.
    HostPreferred,
}

/// The GHCB set-up of one vCPU before its engine is created: registers the
/// #HV doorbell page and configures the notification vector. Returns the
/// GPA of the registered page, which the SVSM then maps (shared) and views
/// with `DoorbellPage::from_bytes_mut`. Nothing is registered when asking
/// for the host's preferred GPA fails.
pub fn setup_vcpu<P: Platform + ?Sized>(
    platform: &P,
    doorbell: DoorbellGpa,
    notification_vector: u8,
) -> Result<u64, PlatformError> {
    let gpa = match doorbell {
        DoorbellGpa::At(gpa) => gpa,
        DoorbellGpa::HostPreferred => platform.doorbell_page(DoorbellRequest::GetPreferred)?,
    };
    platform.doorbell_page(DoorbellRequest::Set(gpa))?;
    platform.configure_notification_vector(notification_vector)?;
    Ok(gpa)
}
