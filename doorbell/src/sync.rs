//! Atomic types: core's normally, loom's when model checking (feature `loom`, `make loom`).

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, Ordering};

#[cfg(not(feature = "loom"))]
pub(crate) use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};
