//! The VMSA `vintr_ctrl` word (spec §2, AMD APM vol. 2 §15.36.16 and §15.21).

use bitfield_struct::bitfield;

/// The virtual-interrupt control word at VMSA offset 0x3B8.
///
/// With Alternate Injection, VMRUN reads V_TPR, V_IRQ, VGIF, V_INTR_PRIO,
/// V_IGN_TPR, V_INTR_VECTOR, V_NMI, V_NMI_MASK, V_NMI_ENABLE and INT_SHADOW from
/// here; #VMEXIT writes back only V_TPR, V_IRQ, V_NMI, V_NMI_MASK and
/// INT_SHADOW (spec §2). Reserved bits are kept as read (`from_bits` keeps
/// every bit), so a read-modify-write never clears them.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct VIntrCtrl {
    /// Bits 7:0: virtual TPR; the priority class (the guest's CR8) is in 3:0.
    pub v_tpr: u8,
    /// Bit 8: a virtual interrupt (V_INTR_VECTOR) is pending.
    pub v_irq: bool,
    /// Bit 9: virtual global interrupt flag; a queued V_IRQ is only taken
    /// while it is set (\[impl\], spec §2).
    pub vgif: bool,
    /// Bit 10: the guest is in an interrupt shadow (after STI / MOV SS).
    pub int_shadow: bool,
    /// Bit 11: a virtual NMI is pending (used when V_NMI_ENABLE is set).
    pub v_nmi: bool,
    /// Bit 12: virtual NMIs are masked (the guest is in its NMI handler).
    pub v_nmi_mask: bool,
    #[bits(3)]
    __rsvd_15_13: u8,
    /// Bits 19:16: priority of the pending virtual interrupt, compared with
    /// V_TPR[3:0] unless V_IGN_TPR is set.
    #[bits(4)]
    pub v_intr_prio: u8,
    /// Bit 20: deliver the virtual interrupt regardless of V_TPR.
    pub v_ign_tpr: bool,
    #[bits(5)]
    __rsvd_25_21: u8,
    /// Bit 26: enables virtual NMI (V_NMI / V_NMI_MASK).
    pub v_nmi_enable: bool,
    #[bits(5)]
    __rsvd_31_27: u8,
    /// Bits 39:32: vector of the pending virtual interrupt.
    pub v_intr_vector: u8,
    #[bits(23)]
    __rsvd_62_40: u32,
    /// Bit 63: BUSY. VMRUN of this VMSA fails with VMEXIT_BUSY while set;
    /// software sets it to keep the VMSA from running while it edits it.
    pub busy: bool,
}

impl VIntrCtrl {
    /// The BUSY bit as a mask of the raw word, for atomic `fetch_or`/`fetch_and`.
    pub const BUSY_MASK: u64 = 1 << Self::BUSY_OFFSET;
}
