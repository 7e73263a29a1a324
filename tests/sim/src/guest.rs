//! The guest OS model of one vCPU: its boot script, its interrupt handlers
//! and its workload, as the operations the hardware model executes.
//!
//! The guest reaches its APIC only through SVSM APIC protocol calls (spec
//! §1: its #VC handler turns x2APIC MSR accesses into protocol 3 calls);
//! CR8 writes land in V_TPR without an exit; EOIs are lazy when the calling
//! area's `no_eoi_required` byte says so. After a hand-back its APIC
//! accesses go to the host instead.

use alloc::vec::Vec;

use altinj_kernel::protocol::ResultCode;

use crate::scenario::Profile;

/// Vector of the guest's APIC timer (Linux's LOCAL_TIMER_VECTOR).
pub const TIMER_VECTOR: u8 = 0xEC;
/// Vectors the guests use for IPIs.
pub const IPI_VECTORS: [u8; 4] = [0xFB, 0xFC, 0xFD, 0x41];
/// Vector of self-IPIs.
pub const SELF_IPI_VECTOR: u8 = 0xF3;
/// Vectors edge devices of the host use (vector 31 is legal, spec §6).
pub const DEVICE_VECTORS: [u8; 6] = [0x31, 0x3A, 0xA2, 0xA7, 0xB1, 31];
/// A vector no source uses; hostile guests deny it with CONFIGURE_VECTOR.
pub const UNUSED_VECTOR: u8 = 0xE7;

/// One step of the guest's boot script (each one protocol call).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SetupStep {
    /// SVR = 0x1FF in xAPIC mode (MMIO 0xF0 through the protocol).
    XapicSvr,
    /// ICR high (destination) in xAPIC mode.
    XapicIcrHigh,
    /// ICR low in xAPIC mode: a fixed IPI to itself.
    XapicIcrLow,
    /// APIC_BASE: EN | EXTD (xAPIC -> x2APIC).
    X2apic,
    /// SVR = 0x1FF in x2APIC mode.
    Svr,
    /// CONFIGURE_VECTOR: allow every host vector.
    AllowHost,
    /// CONFIGURE: register.
    Register,
    /// Timer divide by 1.
    TimerDivide,
    /// LVT timer: periodic, [`TIMER_VECTOR`].
    TimerLvt,
    /// Timer initial count = the period.
    TimerInitial,
    /// IA32_TSC_DEADLINE = now + the period (TSC-deadline mode).
    TscDeadline,
    /// APIC_BASE: EN (disabled -> xAPIC, after an APIC disable).
    XapicEnable,
}

/// An IPI destination as the guest chose it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dest {
    /// Physical APIC ID.
    Physical(u32),
    /// Every other vCPU (shorthand 11b).
    AllButSelf,
    /// Itself (SELF_IPI MSR).
    SelfIpi,
}

/// A protocol call the guest is waiting on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Call {
    /// A boot step.
    Setup(SetupStep),
    /// EOI of the top handler frame.
    Eoi,
    /// An IPI.
    Ipi {
        /// Where to.
        dest: Dest,
        /// Vector (ignored for NMI).
        vector: u8,
        /// NMI delivery mode.
        nmi: bool,
    },
    /// An entry of [`HOSTILE_CALLS`].
    Hostile(usize),
    /// EOI with nothing in service.
    EoiNothing,
    /// CONFIGURE with this operation (registration games, deregistration).
    Configure(u64),
    /// READ_REGISTER of TPR after the hand-back (INVALID_REQUEST).
    ReadWhenHandedBack,
    /// WRITE_REGISTER IA32_TSC_DEADLINE (re-arm or rewrite).
    TscDeadline(u64),
    /// APIC_BASE with EN = 0 (`apic-disable`).
    ApicDisable,
}

/// An illegal or odd protocol call and its architected answer (spec §5, §6).
#[derive(Clone, Copy, Debug)]
pub struct HostileCall {
    /// What it tries.
    pub what: &'static str,
    /// Protocol number (RAX 63:32).
    pub protocol: u32,
    /// Call number (RAX 31:0).
    pub call: u32,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// The answer the spec requires.
    pub expect: ResultCode,
}

const fn hc(what: &'static str, call: u32, rcx: u64, rdx: u64, expect: ResultCode) -> HostileCall {
    HostileCall {
        what,
        protocol: 3,
        call,
        rcx,
        rdx,
        expect,
    }
}

/// The hostile guest's repertoire (x2APIC mode). Expectations: unknown
/// register INVALID_ADDRESS; wrong direction, reserved bits, refused
/// delivery modes INVALID_PARAMETER (spec §5, §6 choices); illegal IPI
/// vectors are accepted as writes and only latch ESR (Intel SDM vol. 3A
/// §11.5.3), so nothing may be delivered.
pub const HOSTILE_CALLS: [HostileCall; 27] = [
    hc(
        "read DFR 0x80E in x2APIC mode",
        2,
        0x80E,
        0,
        ResultCode::InvalidAddress,
    ),
    hc(
        "read ICR2 0x831 in x2APIC mode",
        2,
        0x831,
        0,
        ResultCode::InvalidAddress,
    ),
    hc(
        "write reserved MSR 0x8FF",
        3,
        0x8FF,
        0,
        ResultCode::InvalidAddress,
    ),
    hc(
        "read MSR 0x900 (outside the APIC range)",
        2,
        0x900,
        0,
        ResultCode::InvalidAddress,
    ),
    hc(
        "read EFER through the APIC protocol",
        2,
        0xC000_0080,
        0,
        ResultCode::InvalidAddress,
    ),
    hc(
        "TPR reserved bits 31:8",
        3,
        0x808,
        0x100,
        ResultCode::InvalidParameter,
    ),
    hc(
        "SVR bits 63:32",
        3,
        0x80F,
        (1 << 32) | 0x1FF,
        ResultCode::InvalidParameter,
    ),
    hc(
        "non-zero EOI write",
        3,
        0x80B,
        1,
        ResultCode::InvalidParameter,
    ),
    hc(
        "read of write-only EOI",
        2,
        0x80B,
        0,
        ResultCode::InvalidParameter,
    ),
    hc(
        "write of read-only ID",
        3,
        0x802,
        5,
        ResultCode::InvalidParameter,
    ),
    hc(
        "write of read-only PPR",
        3,
        0x80A,
        0,
        ResultCode::InvalidParameter,
    ),
    hc(
        "ICR delivery-status bit 12",
        3,
        0x830,
        (1 << 12) | 0x40,
        ResultCode::InvalidParameter,
    ),
    hc(
        "ICR reserved bit 20",
        3,
        0x830,
        (1 << 20) | 0x40,
        ResultCode::InvalidParameter,
    ),
    hc(
        "ICR INIT to all",
        3,
        0x830,
        (3 << 18) | (5 << 8),
        ResultCode::Success,
    ),
    hc(
        "ICR start-up to all",
        3,
        0x830,
        (3 << 18) | (6 << 8) | 0x10,
        ResultCode::Success,
    ),
    hc(
        "ICR SMI to all",
        3,
        0x830,
        (3 << 18) | (2 << 8),
        ResultCode::Success,
    ),
    hc(
        "ICR ExtINT to all",
        3,
        0x830,
        (3 << 18) | (7 << 8),
        ResultCode::Success,
    ),
    hc(
        "ICR lowest priority",
        3,
        0x830,
        (3 << 18) | (1 << 8) | 0x40,
        ResultCode::Success,
    ),
    hc(
        "ICR fixed illegal vector 3 to all",
        3,
        0x830,
        (3 << 18) | 3,
        ResultCode::Success,
    ),
    hc(
        "SELF_IPI illegal vector 7",
        3,
        0x83F,
        7,
        ResultCode::Success,
    ),
    hc(
        "SELF_IPI reserved bits",
        3,
        0x83F,
        0x100,
        ResultCode::InvalidParameter,
    ),
    hc(
        "non-zero ESR write",
        3,
        0x828,
        1,
        ResultCode::InvalidParameter,
    ),
    hc(
        "CONFIGURE operation 5",
        1,
        5,
        0,
        ResultCode::InvalidParameter,
    ),
    hc(
        "CONFIGURE_VECTOR reserved bit 10",
        4,
        1 << 10,
        0,
        ResultCode::InvalidParameter,
    ),
    hc(
        "CONFIGURE_VECTOR allow vector 5",
        4,
        (1 << 8) | 5,
        0,
        ResultCode::InvalidParameter,
    ),
    hc("unknown APIC call 9", 9, 0, 0, ResultCode::UnsupportedCall),
    hc(
        "deny an unused host vector",
        4,
        UNUSED_VECTOR as u64,
        0,
        ResultCode::Success,
    ),
];

/// Index in [`HOSTILE_CALLS`] of the calls that are not APIC protocol
/// (the protocol number is changed on the fly): none; a call with protocol
/// 7 is made separately.
pub const OTHER_PROTOCOL: u32 = 7;

/// What the guest is running.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameKind {
    /// A maskable interrupt handler (needs an EOI).
    Intr,
    /// The NMI handler (ends with IRET, which unmasks NMIs).
    Nmi,
}

/// One handler in progress.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Frame {
    /// Which handler.
    pub kind: FrameKind,
    /// Its vector.
    pub vector: u8,
    /// Operations of work left before it finishes.
    pub work: u8,
    /// RFLAGS.IF to restore at IRET.
    pub saved_if: bool,
}

/// The guest of one vCPU.
#[derive(Clone, Debug)]
pub struct Guest {
    /// vCPU index (= APIC ID).
    pub id: usize,
    /// The boot script.
    pub setup: Vec<SetupStep>,
    /// Next boot step.
    pub setup_pos: usize,
    /// x2APIC mode (as the guest set it).
    pub x2apic: bool,
    /// SVR enable bit set.
    pub sw_enabled: bool,
    /// Host vectors allowed (CONFIGURE_VECTOR all).
    pub host_allowed: bool,
    /// The periodic timer runs.
    pub timer_on: bool,
    /// Last IA32_TSC_DEADLINE written (TSC-deadline mode; 0: none).
    pub tsc_deadline: u64,
    /// The registration count the guest expects.
    pub registered: u32,
    /// Handlers in progress, innermost last.
    pub frames: Vec<Frame>,
    /// In the NMI handler.
    pub in_nmi: bool,
    /// The call in flight.
    pub call: Option<Call>,
    /// Operations left with interrupts disabled (CLI section).
    pub cli_left: u8,
    /// Operations left with CR8 raised.
    pub cr8_left: u8,
    /// IPIs left in the current burst.
    pub burst_left: u32,
    /// The current burst goes to all.
    pub burst_all: bool,
    /// Step at which the guest deregisters (deregister scenario).
    pub deregister_step: Option<u64>,
    /// The guest asked for the hand-back (count reached 0).
    pub deregistered: bool,
    /// Post-hand-back registration games left (hostile guest).
    pub games_after_handback: u8,
    /// Hand-backs whose disable-AI call failed (`handback-fail`).
    pub handback_failures: u8,
    /// Handler frames (innermost depth) taken before an APIC disable: they
    /// end without an EOI (the APIC that would take it is gone).
    pub stale_frames: usize,
}

impl Guest {
    /// A guest about to boot.
    pub fn new(id: usize, profile: &Profile, deregister_step: Option<u64>) -> Self {
        let mut setup = Vec::new();
        if profile.boot_xapic {
            setup.push(SetupStep::XapicSvr);
            setup.push(SetupStep::AllowHost);
            if id < 0xFF {
                setup.push(SetupStep::XapicIcrHigh);
                setup.push(SetupStep::XapicIcrLow);
            }
            setup.push(SetupStep::X2apic);
            setup.push(SetupStep::Register);
        } else {
            setup.push(SetupStep::X2apic);
            setup.push(SetupStep::Svr);
            setup.push(SetupStep::AllowHost);
            if profile.deregister {
                setup.push(SetupStep::Register);
            }
        }
        if profile.timer_period.is_some() {
            setup.push(SetupStep::TimerDivide);
            setup.push(SetupStep::TimerLvt);
            setup.push(if profile.tsc_deadline {
                SetupStep::TscDeadline
            } else {
                SetupStep::TimerInitial
            });
        }
        Self {
            id,
            setup,
            setup_pos: 0,
            x2apic: false,
            sw_enabled: false,
            host_allowed: false,
            timer_on: false,
            tsc_deadline: 0,
            registered: 1,
            frames: Vec::with_capacity(16),
            in_nmi: false,
            call: None,
            cli_left: 0,
            cr8_left: 0,
            burst_left: 0,
            burst_all: false,
            deregister_step,
            deregistered: false,
            games_after_handback: 0,
            handback_failures: 0,
            stale_frames: 0,
        }
    }

    /// Whether the boot script is done.
    pub fn booted(&self) -> bool {
        self.setup_pos >= self.setup.len()
    }

    /// Whether the guest's APIC accepts fixed interrupts now.
    pub fn accepts_fixed(&self) -> bool {
        self.sw_enabled
    }

    /// Whether host-presented vectors pass the guest's filter.
    pub fn accepts_host(&self) -> bool {
        self.sw_enabled && self.host_allowed
    }

    /// Highest class in service, from the guest's own handler stack.
    pub fn in_service_class(&self) -> u8 {
        self.frames
            .iter()
            .filter(|f| f.kind == FrameKind::Intr)
            .map(|f| f.vector >> 4)
            .max()
            .unwrap_or(0)
    }

    /// Whether a maskable-interrupt handler is in progress.
    pub fn has_intr_frame(&self) -> bool {
        self.frames.iter().any(|f| f.kind == FrameKind::Intr)
    }
}
