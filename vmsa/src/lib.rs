//! VMSA interrupt fields for SEV-SNP Alternate Injection (spec §2).
//!
//! The SVSM (VMPL0) injects interrupts into a lower-VMPL guest whose VMSA has
//! `SEV_FEATURES.AlternateInjection` set: hardware then takes event injection
//! and virtual-interrupt state from fields *inside the guest VMSA* (AMD APM
//! vol. 2 §15.36.16). This crate gives
//! - the register layouts: [`VIntrCtrl`], [`EventInj`] (EVENTINJ and
//!   EXITINTINFO), [`SevFeatures`] and [`ExitCode`];
//! - [`VmsaAccess`], the field access a VMSA type provides (COCONUT-SVSM's own
//!   VMSA type can implement it), with an atomic BUSY test-and-set;
//! - [`VmsaPage`], this project's 4 KiB VMSA page with every offset checked at
//!   compile time, which can view any mapped VMSA page ([`VmsaPage::view_mut`]);
//! - [`busy`], BUSY test-and-set and clear over an `&AtomicU64`;
//! - [`rules`], the entry/exit rules of spec §2 as functions generic over
//!   [`VmsaAccess`].
//!
//! Nothing here panics on values read from a VMSA: every bit pattern decodes.
#![no_std]

mod access;
pub mod busy;
mod event;
mod exit;
mod features;
mod intr;
mod page;
pub mod rules;

pub use access::{EFER_SVME, RFLAGS_IF, VmsaAccess};
pub use event::{EventInj, EventType};
pub use exit::{ExitCode, ExitKind};
pub use features::{SEV_STATUS_MSR, SevFeatures};
pub use intr::VIntrCtrl;
pub use page::{VmsaPage, offset};

#[cfg(any(test, feature = "ktests"))]
pub mod ktests;
