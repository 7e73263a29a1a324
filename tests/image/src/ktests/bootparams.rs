//! Placement and the zero page.

use zerocopy::IntoBytes;

use super::{SYNTHETIC_LEN, synthetic};
use crate::linux::bootparams::{BootParams, LayoutError, plan};
use crate::linux::bzimage::BzImage;
use crate::linux::e820::{E820Map, RAM, RESERVED};

fn image() -> [u8; SYNTHETIC_LEN] {
    let mut buf = [0; SYNTHETIC_LEN];
    synthetic(&mut buf);
    buf
}

/// 0-640 KiB and 1 MiB-256 MiB of RAM, the BIOS area reserved.
fn map() -> E820Map {
    let mut map = E820Map::new();
    map.add(0, 0xA_0000, RAM).unwrap();
    map.add(0xF_0000, 0x1_0000, RESERVED).unwrap();
    map.add(0x10_0000, 0xFF0_0000, RAM).unwrap();
    map
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

altinj_ktest::suite! {
    fn plan_puts_the_kernel_at_pref_address_and_the_initrd_at_the_top_of_ram() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        let layout = plan(&bz, &map(), 0x7000, 0x2_0000, 100, 0, 0x1234).unwrap();
        assert_eq!(layout.kernel, 0x100_0000);
        assert_eq!(layout.entry, 0x100_0200);
        assert_eq!(layout.initrd, (0x1000_0000 - 0x1234) & !0xFFF);
        assert_eq!(layout.initrd_len, 0x1234);
    }

    fn plan_keeps_the_initrd_below_initrd_addr_max() {
        let mut buf = image();
        buf[0x236] = 0x01; // not above 4 GiB: initrd_addr_max counts
        buf[0x22C..0x230].copy_from_slice(&0x0400_0000u32.to_le_bytes());
        let bz = BzImage::parse(&buf).unwrap();
        let layout = plan(&bz, &map(), 0x7000, 0x2_0000, 100, 0, 0x1000).unwrap();
        assert!(layout.initrd + layout.initrd_len <= 0x0400_0000);
    }

    fn plan_refuses_a_kernel_outside_ram() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        let mut small = E820Map::new();
        small.add(0, 0xA_0000, RAM).unwrap();
        small.add(0x10_0000, 0x100_0000, RAM).unwrap();
        assert_eq!(plan(&bz, &small, 0x7000, 0x2_0000, 10, 0, 0), Err(LayoutError::KernelNotInRam));
    }

    fn plan_refuses_an_initrd_that_only_fits_over_the_kernel() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        let err = plan(&bz, &map(), 0x7000, 0x2_0000, 10, 0, 0xF00_0000);
        assert_eq!(err, Err(LayoutError::NoRoomForInitrd));
    }

    fn plan_refuses_a_command_line_longer_than_cmdline_size() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        assert_eq!(plan(&bz, &map(), 0x7000, 0x2_0000, 0x800, 0, 0), Err(LayoutError::CmdlineTooLong));
    }

    fn plan_refuses_low_pages_outside_ram_or_overlapping() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        assert_eq!(plan(&bz, &map(), 0xF_0000, 0x2_0000, 10, 0, 0), Err(LayoutError::LowPagesNotRam));
        assert_eq!(plan(&bz, &map(), 0x7000, 0x7800, 10, 0, 0), Err(LayoutError::Overlap));
    }

    fn boot_params_carry_the_header_the_loader_fields_and_the_map() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        let map = map();
        let layout = plan(&bz, &map, 0x7000, 0x2_0000, 10, 0, 0x1000).unwrap();
        let params = BootParams::new(&bz, &layout, &map);
        let bytes = params.as_bytes();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[0x202..0x206], b"HdrS");
        assert_eq!(bytes[0x1F1], 3);
        assert_eq!(bytes[0x210], 0xFF, "type_of_loader");
        assert_eq!(u32_at(bytes, 0x214), 0x100_0000, "code32_start");
        assert_eq!(u32_at(bytes, 0x218), layout.initrd as u32, "ramdisk_image");
        assert_eq!(u32_at(bytes, 0x21C), 0x1000, "ramdisk_size");
        assert_eq!(u32_at(bytes, 0x228), 0x2_0000, "cmd_line_ptr");
        assert_eq!(u32_at(bytes, 0x0C8), 0, "ext_cmd_line_ptr");
        assert_eq!(bytes[0x1E8], 3, "e820_entries");
        assert_eq!(bytes[0x1EF], 0, "sentinel");
        // Second e820 entry: the reserved BIOS area, 20 bytes per entry.
        assert_eq!(u32_at(bytes, 0x2D0 + 20), 0xF_0000);
        assert_eq!(u32_at(bytes, 0x2D0 + 20 + 16), RESERVED);
        // Nothing past the copied header is taken from the image.
        assert!(bytes[0x26C..0x2D0].iter().all(|&b| b == 0));
    }
}
