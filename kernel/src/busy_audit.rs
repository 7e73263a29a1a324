//! The BUSY auditor: a [`VmsaAccess`] wrapper that counts every write the
//! engine makes to a VMSA whose BUSY bit is clear.
//!
//! Spec §2: BUSY marks a VMSA not runnable while VMPL0 edits it; with BUSY
//! clear an untrusted hypervisor may VMRUN it on another CPU at any moment,
//! so every edit must happen between a test-and-set of BUSY and its clear.
//! The wrapper sits between the engine and the page (the simulator's and the
//! kernel fixture's engine calls go through it), so what the hardware model
//! writes at VMRUN/#VMEXIT is not audited, only the engine.
//!
//! Not audited: [`VmsaAccess::test_and_set_busy`] (it is the guard) and
//! [`VmsaAccess::clear_busy`] (the last write), and a `set_vintr_ctrl` that
//! only raises BUSY.

use altinj_vmsa::{EventInj, ExitCode, SevFeatures, VIntrCtrl, VmsaAccess};

/// Wraps `&mut V` and counts writes made while BUSY is clear.
#[derive(Debug)]
pub struct BusyAudit<'a, V: VmsaAccess + ?Sized> {
    inner: &'a mut V,
    writes_while_runnable: u32,
    first: Option<&'static str>,
}

impl<'a, V: VmsaAccess + ?Sized> BusyAudit<'a, V> {
    /// Audits the engine's accesses to `inner`.
    pub fn new(inner: &'a mut V) -> Self {
        Self {
            inner,
            writes_while_runnable: 0,
            first: None,
        }
    }

    /// Writes made while BUSY was clear (each one a violation).
    pub fn writes_while_runnable(&self) -> u32 {
        self.writes_while_runnable
    }

    /// The field of the first such write.
    pub fn first_field(&self) -> Option<&'static str> {
        self.first
    }

    fn note(&mut self, field: &'static str) {
        if !self.inner.vintr_ctrl().busy() {
            self.writes_while_runnable = self.writes_while_runnable.saturating_add(1);
            self.first.get_or_insert(field);
        }
    }
}

macro_rules! audited {
    ($($get:ident / $set:ident : $ty:ty),* $(,)?) => {
        $(
            fn $get(&self) -> $ty {
                self.inner.$get()
            }
            fn $set(&mut self, value: $ty) {
                self.note(stringify!($get));
                self.inner.$set(value);
            }
        )*
    };
}

impl<V: VmsaAccess + ?Sized> VmsaAccess for BusyAudit<'_, V> {
    audited! {
        efer / set_efer: u64,
        rflags / set_rflags: u64,
        rip / set_rip: u64,
        rax / set_rax: u64,
        rcx / set_rcx: u64,
        rdx / set_rdx: u64,
        r8 / set_r8: u64,
        r9 / set_r9: u64,
        exit_info_1 / set_exit_info_1: u64,
        exit_info_2 / set_exit_info_2: u64,
        exit_int_info / set_exit_int_info: EventInj,
        nrip / set_nrip: u64,
        sev_features / set_sev_features: SevFeatures,
        exit_code / set_exit_code: ExitCode,
        event_inj / set_event_inj: EventInj,
    }

    fn vintr_ctrl(&self) -> VIntrCtrl {
        self.inner.vintr_ctrl()
    }

    fn set_vintr_ctrl(&mut self, value: VIntrCtrl) {
        let old = self.inner.vintr_ctrl();
        // Raising BUSY and nothing else is the guard itself.
        if value != old.with_busy(true) || !value.busy() {
            self.note("vintr_ctrl");
        }
        self.inner.set_vintr_ctrl(value);
    }

    fn test_and_set_busy(&mut self) -> bool {
        self.inner.test_and_set_busy()
    }

    fn clear_busy(&mut self) {
        self.inner.clear_busy();
    }
}
