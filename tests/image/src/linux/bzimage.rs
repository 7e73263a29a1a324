//! The bzImage setup header and the facts a 64-bit boot loader takes from it.
//!
//! Source: Linux `Documentation/arch/x86/boot.rst` ("The real-mode kernel
//! header", "Details of header fields", "64-bit boot protocol"). The header
//! sits at file offset 0x1F1, the same offset it has in `boot_params`; the
//! protected-mode kernel follows the `(setup_sects + 1)` 512-byte sectors of the
//! real-mode part, and its 64-bit entry point is its load address + 0x200.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// File (and `boot_params`) offset of the setup header.
pub const HEADER_OFFSET: usize = 0x1F1;
/// `boot_flag` (0x1FE).
pub const BOOT_FLAG: u16 = 0xAA55;
/// `header` (0x202): "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// Oldest protocol with `xloadflags` (2.12), which announces the 64-bit entry.
pub const MIN_VERSION: u16 = 0x020C;
/// `xloadflags` bit 0: the kernel has the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1: the kernel, boot_params, command line and ramdisk may
/// be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `loadflags` bit 0: the protected-mode code is loaded at 0x100000 or higher.
pub const LOADED_HIGH: u8 = 1 << 0;
/// Offset of the 64-bit entry from the protected-mode kernel's load address.
pub const ENTRY64_OFFSET: u64 = 0x200;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xFF;

/// The setup header, from `setup_sects` (0x1F1) to `kernel_info_offset`
/// (0x268, protocol 2.15). Offsets in the asserts below are the documented
/// `boot_params` ones minus 0x1F1.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)] // the field names are the documented ones
pub struct SetupHeader {
    pub setup_sects: u8,
    pub root_flags: U16,
    pub syssize: U32,
    pub ram_size: U16,
    pub vid_mode: U16,
    pub root_dev: U16,
    pub boot_flag: U16,
    pub jump: U16,
    pub header: U32,
    pub version: U16,
    pub realmode_swtch: U32,
    pub start_sys_seg: U16,
    pub kernel_version: U16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub setup_move_size: U16,
    pub code32_start: U32,
    pub ramdisk_image: U32,
    pub ramdisk_size: U32,
    pub bootsect_kludge: U32,
    pub heap_end_ptr: U16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    pub cmd_line_ptr: U32,
    pub initrd_addr_max: U32,
    pub kernel_alignment: U32,
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: U16,
    pub cmdline_size: U32,
    pub hardware_subarch: U32,
    pub hardware_subarch_data: U64,
    pub payload_offset: U32,
    pub payload_length: U32,
    pub setup_data: U64,
    pub pref_address: U64,
    pub init_size: U32,
    pub handover_offset: U32,
    pub kernel_info_offset: U32,
}

macro_rules! at {
    ($field:ident, $offset:expr) => {
        const _: () =
            assert!(core::mem::offset_of!(SetupHeader, $field) + HEADER_OFFSET == $offset);
    };
}
at!(setup_sects, 0x1F1);
at!(vid_mode, 0x1FA);
at!(boot_flag, 0x1FE);
at!(jump, 0x200);
at!(header, 0x202);
at!(version, 0x206);
at!(type_of_loader, 0x210);
at!(loadflags, 0x211);
at!(code32_start, 0x214);
at!(ramdisk_image, 0x218);
at!(ramdisk_size, 0x21C);
at!(heap_end_ptr, 0x224);
at!(cmd_line_ptr, 0x228);
at!(initrd_addr_max, 0x22C);
at!(kernel_alignment, 0x230);
at!(relocatable_kernel, 0x234);
at!(xloadflags, 0x236);
at!(cmdline_size, 0x238);
at!(payload_offset, 0x248);
at!(setup_data, 0x250);
at!(pref_address, 0x258);
at!(init_size, 0x260);
at!(kernel_info_offset, 0x268);
const _: () = assert!(core::mem::size_of::<SetupHeader>() + HEADER_OFFSET == 0x26C);

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BzImageError {
    /// Shorter than its header or than its declared setup sectors.
    Truncated,
    /// `boot_flag` is not 0xAA55.
    BadBootFlag,
    /// `header` is not "HdrS": not a bzImage (protocol < 2.00).
    NotBzImage,
    /// Protocol older than 2.12: no `xloadflags`, so no announced 64-bit entry.
    TooOld(u16),
    /// `xloadflags` lacks `XLF_KERNEL_64`.
    No64BitEntry,
    /// `LOADED_HIGH` is clear (a zImage).
    NotLoadedHigh,
    /// `kernel_alignment` is not a power of two (relocatable kernels only).
    BadAlignment(u32),
    /// `init_size` is smaller than the protected-mode kernel itself.
    BadInitSize,
}

/// A validated bzImage: its header and the protected-mode kernel bytes.
#[derive(Clone, Copy, Debug)]
pub struct BzImage<'a> {
    header: SetupHeader,
    header_bytes: &'a [u8],
    kernel: &'a [u8],
}

impl<'a> BzImage<'a> {
    /// Validates `image` as a bzImage with a 64-bit entry point.
    pub fn parse(image: &'a [u8]) -> Result<Self, BzImageError> {
        let rest = image.get(HEADER_OFFSET..).ok_or(BzImageError::Truncated)?;
        let (header, _) =
            SetupHeader::read_from_prefix(rest).map_err(|_| BzImageError::Truncated)?;
        if header.boot_flag.get() != BOOT_FLAG {
            return Err(BzImageError::BadBootFlag);
        }
        if header.header.get() != HDRS_MAGIC {
            return Err(BzImageError::NotBzImage);
        }
        let version = header.version.get();
        if version < MIN_VERSION {
            return Err(BzImageError::TooOld(version));
        }
        if header.xloadflags.get() & XLF_KERNEL_64 == 0 {
            return Err(BzImageError::No64BitEntry);
        }
        if header.loadflags & LOADED_HIGH == 0 {
            return Err(BzImageError::NotLoadedHigh);
        }
        let align = header.kernel_alignment.get();
        if header.relocatable_kernel != 0 && !align.is_power_of_two() {
            return Err(BzImageError::BadAlignment(align));
        }
        // "If this field is 0, the real value is 4" (boot.rst, setup_sects).
        let setup_sects = match header.setup_sects {
            0 => 4,
            n => usize::from(n),
        };
        let kernel_offset = setup_sects
            .checked_add(1)
            .and_then(|s| s.checked_mul(512))
            .ok_or(BzImageError::Truncated)?;
        let kernel = image.get(kernel_offset..).ok_or(BzImageError::Truncated)?;
        if kernel.is_empty() {
            return Err(BzImageError::Truncated);
        }
        if u64::from(header.init_size.get()) < kernel.len() as u64 {
            return Err(BzImageError::BadInitSize);
        }
        // The header's own length: 0x202 + the byte at 0x201 (the jump's
        // displacement), as the 64-bit protocol says to copy it.
        let header_end = image
            .get(0x201)
            .map(|&jump| 0x202usize.saturating_add(usize::from(jump)))
            .ok_or(BzImageError::Truncated)?;
        let header_bytes = image
            .get(HEADER_OFFSET..header_end)
            .ok_or(BzImageError::Truncated)?;
        Ok(Self {
            header,
            header_bytes,
            kernel,
        })
    }

    /// The setup header as read from the image.
    pub fn header(&self) -> &SetupHeader {
        &self.header
    }

    /// The header bytes the loader copies into `boot_params` at 0x1F1.
    pub fn header_bytes(&self) -> &'a [u8] {
        self.header_bytes
    }

    /// The protected-mode kernel, loaded as is at [`Self::load_address`].
    pub fn kernel(&self) -> &'a [u8] {
        self.kernel
    }

    /// Protocol version, e.g. 0x020F for 2.15.
    pub fn version(&self) -> u16 {
        self.header.version.get()
    }

    /// Bytes the kernel needs from its load address on, for decompression
    /// and early boot (`init_size`); nothing else may be placed there.
    pub fn init_size(&self) -> u64 {
        u64::from(self.header.init_size.get())
    }

    /// Whether the kernel may be loaded at any `kernel_alignment` boundary.
    pub fn relocatable(&self) -> bool {
        self.header.relocatable_kernel != 0
    }

    /// Where to load the protected-mode kernel: `pref_address` (the address it
    /// was linked for, so no relocation is done), or for a relocatable kernel
    /// the first `kernel_alignment` boundary at or above `at_least`.
    pub fn load_address(&self, at_least: u64) -> Option<u64> {
        let pref = self.header.pref_address.get();
        if !self.relocatable() || at_least <= pref {
            return Some(pref);
        }
        let align = u64::from(self.header.kernel_alignment.get());
        let mask = align.checked_sub(1)?;
        at_least.checked_add(mask).map(|a| a & !mask)
    }

    /// The 64-bit entry point for a kernel loaded at `load_address`.
    pub fn entry64(load_address: u64) -> Option<u64> {
        load_address.checked_add(ENTRY64_OFFSET)
    }

    /// Highest address (inclusive) the initrd may end at.
    pub fn initrd_addr_max(&self) -> u64 {
        if self.header.xloadflags.get() & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
            u64::MAX
        } else {
            u64::from(self.header.initrd_addr_max.get())
        }
    }

    /// Longest command line, without the terminating NUL (`cmdline_size`).
    pub fn cmdline_max(&self) -> usize {
        self.header.cmdline_size.get() as usize
    }
}
