//! SEV_FEATURES (VMSA 0x3B0) and the SEV_STATUS MSR (spec §2, AMD APM vol. 2
//! §15.34.10 and §15.36).

use bitflags::bitflags;

/// SEV_STATUS MSR: bit n+2 mirrors SEV_FEATURES bit n (spec §2).
pub const SEV_STATUS_MSR: u32 = 0xC001_0131;

bitflags! {
    /// The VMSA `sev_features` word.
    ///
    /// Only the bits this project is sure of are named; every other bit is
    /// kept as read (build values with `from_bits_retain`, never
    /// `from_bits_truncate`), so writing the word back never drops a feature.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SevFeatures: u64 {
        /// Bit 0: SEV-SNP is active.
        const SNP_ACTIVE = 1 << 0;
        /// Bit 1: virtual top of memory.
        const VTOM = 1 << 1;
        /// Bit 2: #VC is reflected to the hypervisor as an automatic exit.
        const REFLECT_VC = 1 << 2;
        /// Bit 3: Restricted Injection (only #HV may be injected).
        const RESTRICTED_INJECTION = 1 << 3;
        /// Bit 4: Alternate Injection (injection state comes from the VMSA).
        const ALTERNATE_INJECTION = 1 << 4;
        /// Bit 5: debug registers are swapped on world switch.
        const DEBUG_SWAP = 1 << 5;
        /// Bit 6: the host may not use IBS on this guest.
        const PREVENT_HOST_IBS = 1 << 6;
        /// Bit 7: branch target buffer isolation.
        const BTB_ISOLATION = 1 << 7;
        /// Bit 8: VMPL supervisor shadow stacks.
        const VMPL_SSS = 1 << 8;
        /// Bit 9: Secure TSC.
        const SECURE_TSC = 1 << 9;
        /// Bit 16: Secure AVIC (excludes Restricted and Alternate Injection).
        const SECURE_AVIC = 1 << 16;
    }
}

impl SevFeatures {
    /// SEV_FEATURES from a SEV_STATUS MSR value (drops status bits 1:0,
    /// SEV and SEV-ES enabled, which have no SEV_FEATURES counterpart).
    pub const fn from_sev_status(status: u64) -> Self {
        Self::from_bits_retain(status >> 2)
    }

    /// The SEV_STATUS bits this SEV_FEATURES value appears as (bits 63:62
    /// of SEV_FEATURES have no SEV_STATUS place and are dropped).
    pub const fn to_sev_status(self) -> u64 {
        self.bits() << 2
    }
}
