//! The test image's host-testable parts (library `guest_boot`): the Linux
//! boot protocol loader ([`linux`]) and the xAPIC MMIO instruction decoder
//! ([`mmio`]) the SVM harness uses to run a real Linux guest. `no_std` like
//! the kernel that links them; their unit tests run with `cargo test -p image`
//! and in the image's in-kernel runner.
#![cfg_attr(not(test), no_std)]

pub mod linux;
pub mod mmio;

#[cfg(any(test, feature = "ktests"))]
pub mod ktests;
