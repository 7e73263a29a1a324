//! Unit tests of the loader and the MMIO decoder (`altinj_ktest::suite!`: run by
//! `cargo test -p image` and by the image's in-kernel runner). The test on
//! Debian's real kernel needs the file and std: `tests/debian_kernel.rs`.
// Test code: a failing unwrap or index is a failing test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod bootparams;
pub mod bzimage;
pub mod e820;
pub mod mmio;

/// Every suite, for the in-kernel runner.
pub const ALL: &[&[altinj_ktest::Test]] =
    &[bzimage::TESTS, e820::TESTS, bootparams::TESTS, mmio::TESTS];

/// A synthetic bzImage: protocol 2.15, relocatable, 64-bit entry, setup_sects
/// = 3 (kernel at file offset 0x800), 0x800 bytes of "kernel", preferred
/// address 16 MiB, alignment 2 MiB, init_size 8 MiB.
pub const SYNTHETIC_LEN: usize = 0x1000;

/// Builds [`SYNTHETIC_LEN`] bytes of synthetic image into `buf`.
pub fn synthetic(buf: &mut [u8; SYNTHETIC_LEN]) {
    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }
    buf.fill(0);
    put(buf, 0x1F1, &[3]); // setup_sects
    put(buf, 0x1FE, &0xAA55u16.to_le_bytes());
    put(buf, 0x200, &[0xEB, 0x6A]); // jmp to 0x26C: header ends at 0x202 + 0x6A
    put(buf, 0x202, b"HdrS");
    put(buf, 0x206, &0x020Fu16.to_le_bytes());
    put(buf, 0x211, &[0x01]); // LOADED_HIGH
    put(buf, 0x214, &0x0010_0000u32.to_le_bytes());
    put(buf, 0x22C, &0x7FFF_FFFFu32.to_le_bytes());
    put(buf, 0x230, &0x0020_0000u32.to_le_bytes());
    put(buf, 0x234, &[1, 21]); // relocatable, min_alignment
    put(buf, 0x236, &0x0003u16.to_le_bytes()); // XLF_KERNEL_64 | above 4G
    put(buf, 0x238, &0x07FFu32.to_le_bytes());
    put(buf, 0x258, &0x0100_0000u64.to_le_bytes());
    put(buf, 0x260, &0x0080_0000u32.to_le_bytes());
    put(buf, 0x800, b"KERNEL");
}
