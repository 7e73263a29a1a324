//! Guest exit codes (VMSA `guest_exit_code`, 0x3C0; spec §2, AMD APM vol. 2
//! appendix C).

/// A raw 64-bit exit code. Every value is representable; [`ExitCode::kind`]
/// classifies it without panicking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExitCode(pub u64);

impl ExitCode {
    /// VMEXIT_VINTR (0x064).
    pub const VINTR: Self = Self(0x064);
    /// VMEXIT_MSR (0x07C).
    pub const MSR: Self = Self(0x07C);
    /// VMEXIT_NPF (0x400).
    pub const NPF: Self = Self(0x400);
    /// VMEXIT_VMGEXIT (0x403).
    pub const VMGEXIT: Self = Self(0x403);
    /// VMEXIT_INVALID (-1): VMRUN found illegal guest state.
    pub const INVALID: Self = Self(0xFFFF_FFFF_FFFF_FFFF);
    /// VMEXIT_BUSY (-2): VMRUN found BUSY set in the VMSA.
    pub const BUSY: Self = Self(0xFFFF_FFFF_FFFF_FFFE);
    /// VMEXIT_IDLE_REQUIRED (-3).
    pub const IDLE_REQUIRED: Self = Self(0xFFFF_FFFF_FFFF_FFFD);

    /// Classifies the code.
    pub const fn kind(self) -> ExitKind {
        match self {
            Self::INVALID => ExitKind::Invalid,
            Self::BUSY => ExitKind::Busy,
            Self::IDLE_REQUIRED => ExitKind::IdleRequired,
            Self::VINTR => ExitKind::Vintr,
            Self::MSR => ExitKind::Msr,
            Self::NPF => ExitKind::Npf,
            Self::VMGEXIT => ExitKind::Vmgexit,
            Self(other) => ExitKind::Other(other),
        }
    }
}

/// What an exit code means to the interrupt-injection code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// VMEXIT_INVALID: VMRUN did not enter the guest (illegal state).
    Invalid,
    /// VMEXIT_BUSY: VMRUN did not enter the guest because BUSY was set.
    Busy,
    /// VMEXIT_IDLE_REQUIRED: VMRUN did not enter the guest.
    IdleRequired,
    /// The guest opened its interrupt window for a V_IRQ (VINTR intercept).
    Vintr,
    /// MSR access intercept.
    Msr,
    /// Nested page fault.
    Npf,
    /// VMGEXIT (GHCB call, e.g. an SVSM call).
    Vmgexit,
    /// Any other code, kept raw.
    Other(u64),
}

impl ExitKind {
    /// Whether VMRUN failed before the guest ran (the negative codes).
    pub const fn is_vmrun_failure(self) -> bool {
        matches!(self, Self::Invalid | Self::Busy | Self::IdleRequired)
    }
}
