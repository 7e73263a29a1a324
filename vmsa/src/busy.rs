//! VIntrCtrl.BUSY (bit 63 of vintr_ctrl at VMSA offset 0x3B8, spec §2) over
//! an `&AtomicU64`, for an SVSM that keeps its own VMSA type and implements
//! [`VmsaAccess`](crate::VmsaAccess) for it: its `test_and_set_busy` and
//! `clear_busy` can call these on an atomic view of the field instead of
//! writing `unsafe` code for a packed struct.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::VIntrCtrl;

/// Sets BUSY with one atomic `fetch_or` and returns whether it was set.
///
/// Acquire: the edits that follow see what the exit left. Call it right after
/// every exit so that an untrusted hypervisor cannot VMRUN the VMSA on another
/// CPU while VMPL0 edits it (\[impl\], as OpenHCL does).
pub fn test_and_set_busy(vintr_ctrl: &AtomicU64) -> bool {
    vintr_ctrl.fetch_or(VIntrCtrl::BUSY_MASK, Ordering::AcqRel) & VIntrCtrl::BUSY_MASK != 0
}

/// Clears BUSY with one atomic `fetch_and`, release: every edit made while
/// BUSY was set is visible before the VMSA can run again. Call it last.
pub fn clear_busy(vintr_ctrl: &AtomicU64) {
    vintr_ctrl.fetch_and(!VIntrCtrl::BUSY_MASK, Ordering::Release);
}

/// Whether BUSY is set.
pub fn is_busy(vintr_ctrl: &AtomicU64) -> bool {
    vintr_ctrl.load(Ordering::Acquire) & VIntrCtrl::BUSY_MASK != 0
}
