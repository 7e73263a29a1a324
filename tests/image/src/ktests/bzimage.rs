//! The setup header parser.

use super::{SYNTHETIC_LEN, synthetic};
use crate::linux::bzimage::{BzImage, BzImageError};

fn image() -> [u8; SYNTHETIC_LEN] {
    let mut buf = [0; SYNTHETIC_LEN];
    synthetic(&mut buf);
    buf
}

altinj_ktest::suite! {
    fn parse_accepts_a_64bit_bzimage_and_finds_its_kernel() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        assert_eq!(bz.version(), 0x020F);
        assert_eq!(bz.kernel().len(), SYNTHETIC_LEN - 0x800);
        assert_eq!(&bz.kernel()[..6], b"KERNEL");
        assert_eq!(bz.header_bytes().len(), 0x26C - 0x1F1);
        assert_eq!(bz.init_size(), 0x80_0000);
        assert_eq!(bz.cmdline_max(), 0x7FF);
        assert!(bz.relocatable());
    }

    fn parse_refuses_a_wrong_boot_flag() {
        let mut buf = image();
        buf[0x1FE] = 0;
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::BadBootFlag);
    }

    fn parse_refuses_an_image_without_hdrs() {
        let mut buf = image();
        buf[0x202] = b'X';
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::NotBzImage);
    }

    fn parse_refuses_a_protocol_older_than_2_12() {
        let mut buf = image();
        buf[0x206] = 0x0B;
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::TooOld(0x020B));
    }

    fn parse_refuses_a_kernel_without_64bit_entry() {
        let mut buf = image();
        buf[0x236] = 0x02;
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::No64BitEntry);
    }

    fn parse_refuses_a_zimage() {
        let mut buf = image();
        buf[0x211] = 0;
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::NotLoadedHigh);
    }

    fn parse_refuses_an_alignment_that_is_not_a_power_of_two() {
        let mut buf = image();
        buf[0x230..0x234].copy_from_slice(&0x0030_0000u32.to_le_bytes());
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::BadAlignment(0x30_0000));
    }

    fn parse_refuses_an_image_cut_before_its_kernel() {
        let buf = image();
        assert_eq!(BzImage::parse(&buf[..0x800]).unwrap_err(), BzImageError::Truncated);
        assert_eq!(BzImage::parse(&buf[..0x200]).unwrap_err(), BzImageError::Truncated);
        assert_eq!(BzImage::parse(&[]).unwrap_err(), BzImageError::Truncated);
    }

    fn parse_refuses_an_init_size_below_the_kernel_size() {
        let mut buf = image();
        buf[0x260..0x264].copy_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(BzImage::parse(&buf).unwrap_err(), BzImageError::BadInitSize);
    }

    fn setup_sects_zero_means_four() {
        let mut buf = image();
        buf[0x1F1] = 0;
        let bz = BzImage::parse(&buf).unwrap();
        assert_eq!(bz.kernel().len(), SYNTHETIC_LEN - 0xA00);
    }

    fn load_address_is_pref_address_or_the_next_alignment_boundary() {
        let buf = image();
        let bz = BzImage::parse(&buf).unwrap();
        assert_eq!(bz.load_address(0), Some(0x100_0000));
        assert_eq!(bz.load_address(0x100_0000), Some(0x100_0000));
        assert_eq!(bz.load_address(0x100_0001), Some(0x120_0000));
        assert_eq!(bz.load_address(0x300_0000), Some(0x300_0000));
    }

    fn a_non_relocatable_kernel_loads_only_at_pref_address() {
        let mut buf = image();
        buf[0x234] = 0;
        let bz = BzImage::parse(&buf).unwrap();
        assert_eq!(bz.load_address(0x300_0000), Some(0x100_0000));
    }

    fn entry64_is_the_load_address_plus_0x200() {
        assert_eq!(BzImage::entry64(0x100_0000), Some(0x100_0200));
        assert_eq!(BzImage::entry64(u64::MAX), None);
    }

    fn initrd_limit_follows_xloadflags() {
        let mut buf = image();
        assert_eq!(BzImage::parse(&buf).unwrap().initrd_addr_max(), u64::MAX);
        buf[0x236] = 0x01;
        assert_eq!(BzImage::parse(&buf).unwrap().initrd_addr_max(), 0x7FFF_FFFF);
    }
}
