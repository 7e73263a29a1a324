//! `boot_params`, the "zero page" a 64-bit boot loader fills for Linux, and
//! where the loader places the kernel, command line and initrd.
//!
//! Layout: Linux `Documentation/arch/x86/zero-page.rst`; what the loader
//! fills: `Documentation/arch/x86/boot.rst`, "64-bit boot protocol" (zero the
//! page, copy the setup header to 0x1F1, set the loader fields, the command
//! line, the ramdisk and the e820 map; enter at load address + 0x200 in long
//! mode with RSI = the page's address).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::bzimage::{BzImage, HEADER_OFFSET, LOADER_UNDEFINED, SetupHeader};
use super::e820::{E820Entry, E820Map, MAX_ENTRIES};

/// `boot_params` (4 KiB). Fields the loader does not fill are kept as bytes.
#[derive(Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BootParams {
    /// screen_info, apm_bios_info, padding, tboot_addr, ist_info.
    pub _0x000: [u8; 0x70],
    /// Physical address of the ACPI RSDP (0: the kernel scans for it).
    pub acpi_rsdp_addr: U64,
    /// padding, hd0/hd1_info, sys_desc_table, olpc_ofw_header.
    pub _0x078: [u8; 0x48],
    /// High 32 bits of `ramdisk_image`.
    pub ext_ramdisk_image: U32,
    /// High 32 bits of `ramdisk_size`.
    pub ext_ramdisk_size: U32,
    /// High 32 bits of `cmd_line_ptr`.
    pub ext_cmd_line_ptr: U32,
    /// padding, edid_info, efi_info, alt_mem_k, scratch.
    pub _0x0cc: [u8; 0x11C],
    /// Number of valid entries in `e820_table`.
    pub e820_entries: u8,
    /// eddbuf_entries .. sentinel (0x1EF: must stay 0, or the kernel
    /// assumes a loader that did not zero the page) and padding.
    pub _0x1e9: [u8; 8],
    /// The setup header, copied from the image and updated by the loader.
    pub hdr: SetupHeader,
    /// padding, edd_mbr_sig_buffer.
    pub _0x26c: [u8; 0x64],
    /// The memory map.
    pub e820_table: [E820Entry; MAX_ENTRIES],
    /// padding, eddbuf, padding.
    pub _0xcd0: [u8; 0x330],
}

const _: () = assert!(core::mem::size_of::<BootParams>() == 4096);
const _: () = assert!(core::mem::offset_of!(BootParams, acpi_rsdp_addr) == 0x070);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_ramdisk_image) == 0x0C0);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_cmd_line_ptr) == 0x0C8);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_entries) == 0x1E8);
const _: () = assert!(core::mem::offset_of!(BootParams, hdr) == HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_table) == 0x2D0);

/// Where everything goes in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `boot_params` (4 KiB).
    pub zero_page: u64,
    /// The NUL-terminated command line.
    pub cmdline: u64,
    /// The protected-mode kernel (`init_size` bytes reserved from here).
    pub kernel: u64,
    /// The 64-bit entry point.
    pub entry: u64,
    /// The initrd (0 when there is none).
    pub initrd: u64,
    /// Its length.
    pub initrd_len: u64,
}

/// Why a layout could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The command line is longer than the kernel's `cmdline_size`.
    CmdlineTooLong,
    /// The zero page or the command line is not in RAM.
    LowPagesNotRam,
    /// The kernel's `init_size` region is not in RAM.
    KernelNotInRam,
    /// No RAM below `initrd_addr_max` above the kernel holds the initrd.
    NoRoomForInitrd,
    /// Address arithmetic overflowed.
    Overflow,
    /// Two regions overlap.
    Overlap,
}

const PAGE: u64 = 4096;

/// Places the kernel at its preferred address (or the first aligned address
/// at or above `kernel_at_least`), the initrd as high as allowed in RAM (as
/// boot loaders customarily do, away from the kernel's decompression area),
/// and the zero page and command line at the addresses given.
pub fn plan(
    image: &BzImage<'_>,
    map: &E820Map,
    zero_page: u64,
    cmdline: u64,
    cmdline_len: usize,
    kernel_at_least: u64,
    initrd_len: u64,
) -> Result<Layout, LayoutError> {
    if cmdline_len > image.cmdline_max() {
        return Err(LayoutError::CmdlineTooLong);
    }
    let cmdline_bytes = (cmdline_len as u64)
        .checked_add(1)
        .ok_or(LayoutError::Overflow)?;
    if !map.is_ram(zero_page, PAGE) || !map.is_ram(cmdline, cmdline_bytes) {
        return Err(LayoutError::LowPagesNotRam);
    }
    let kernel = image
        .load_address(kernel_at_least)
        .ok_or(LayoutError::Overflow)?;
    if !map.is_ram(kernel, image.init_size()) {
        return Err(LayoutError::KernelNotInRam);
    }
    let kernel_end = kernel
        .checked_add(image.init_size())
        .ok_or(LayoutError::Overflow)?;
    let regions = [
        (zero_page, PAGE),
        (cmdline, cmdline_bytes),
        (kernel, image.init_size()),
    ];
    let initrd = if initrd_len == 0 {
        0
    } else {
        // The initrd must end at or below initrd_addr_max (inclusive).
        let limit = image.initrd_addr_max().saturating_add(1);
        let top = map.ram_top_below(limit);
        let start = top
            .checked_sub(initrd_len)
            .ok_or(LayoutError::NoRoomForInitrd)?
            & !(PAGE - 1);
        if start < kernel_end || !map.is_ram(start, initrd_len) {
            return Err(LayoutError::NoRoomForInitrd);
        }
        start
    };
    let all = regions
        .iter()
        .copied()
        .chain((initrd_len != 0).then_some((initrd, initrd_len)));
    for (i, (a, alen)) in all.clone().enumerate() {
        for (b, blen) in all.clone().skip(i.saturating_add(1)) {
            if a < b.saturating_add(blen) && b < a.saturating_add(alen) {
                return Err(LayoutError::Overlap);
            }
        }
    }
    Ok(Layout {
        zero_page,
        cmdline,
        kernel,
        entry: BzImage::entry64(kernel).ok_or(LayoutError::Overflow)?,
        initrd,
        initrd_len,
    })
}

impl BootParams {
    /// The zero page for `image` placed by `layout`, with `map` as its e820
    /// table.
    pub fn new(image: &BzImage<'_>, layout: &Layout, map: &E820Map) -> Self {
        let mut params = Self::new_zeroed();
        // Copy the header bytes as the image has them (0x1F1 .. 0x202 + jump),
        // then set the loader's fields.
        if let Some(dst) = params
            .as_mut_bytes()
            .get_mut(HEADER_OFFSET..HEADER_OFFSET.saturating_add(image.header_bytes().len()))
        {
            dst.copy_from_slice(image.header_bytes());
        }
        let hdr = &mut params.hdr;
        hdr.type_of_loader = LOADER_UNDEFINED;
        // "normal" text mode: the loader does not ask for a video mode.
        hdr.vid_mode.set(0xFFFF);
        hdr.code32_start.set(low32(layout.kernel));
        hdr.cmd_line_ptr.set(low32(layout.cmdline));
        hdr.ramdisk_image.set(low32(layout.initrd));
        hdr.ramdisk_size.set(low32(layout.initrd_len));
        params.ext_cmd_line_ptr.set(high32(layout.cmdline));
        params.ext_ramdisk_image.set(high32(layout.initrd));
        params.ext_ramdisk_size.set(high32(layout.initrd_len));
        let entries = map.entries();
        for (dst, src) in params.e820_table.iter_mut().zip(entries) {
            *dst = *src;
        }
        params.e820_entries = u8::try_from(entries.len()).unwrap_or(u8::MAX);
        params
    }
}

fn low32(v: u64) -> u32 {
    (v & 0xFFFF_FFFF) as u32
}

fn high32(v: u64) -> u32 {
    (v >> 32) as u32
}
