//! Atomics shim: `core` atomics normally, `loom` atomics under `cfg(feature = "loom")` so
//! the lock-free mailbox can be model-checked (`make loom`).

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(feature = "loom"))]
pub(crate) use core::sync::atomic::{AtomicU64, Ordering};
