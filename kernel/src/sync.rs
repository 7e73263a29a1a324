//! Atomics shim: `core` atomics normally, `loom` atomics under `cfg(loom)` so
//! the lock-free mailbox can be model-checked (`make loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU64, Ordering};
