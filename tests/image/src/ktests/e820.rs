//! The e820 map builder.

use crate::linux::e820::{E820Error, E820Map, MAX_ENTRIES, RAM, RESERVED};

altinj_ktest::suite! {
    fn add_keeps_entries_sorted_by_address() {
        let mut map = E820Map::new();
        map.add(0x10_0000, 0x100_0000, RAM).unwrap();
        map.add(0, 0x9_F000, RAM).unwrap();
        map.add(0xF_0000, 0x1_0000, RESERVED).unwrap();
        let addrs: [u64; 3] = core::array::from_fn(|i| map.entries()[i].addr.get());
        assert_eq!(addrs, [0, 0xF_0000, 0x10_0000]);
        assert_eq!(map.entries()[1].kind.get(), RESERVED);
    }

    fn add_refuses_overlapping_empty_and_wrapping_ranges() {
        let mut map = E820Map::new();
        map.add(0x1000, 0x2000, RAM).unwrap();
        assert_eq!(map.add(0x2FFF, 1, RAM), Err(E820Error::Overlap));
        assert_eq!(map.add(0, 0x1001, RAM), Err(E820Error::Overlap));
        assert_eq!(map.add(0x5000, 0, RAM), Err(E820Error::BadRange));
        assert_eq!(map.add(u64::MAX, 2, RAM), Err(E820Error::BadRange));
        map.add(0x3000, 0x1000, RAM).unwrap();
        assert_eq!(map.entries().len(), 2);
    }

    fn add_refuses_more_than_the_zero_page_holds() {
        let mut map = E820Map::new();
        for i in 0..MAX_ENTRIES as u64 {
            map.add(i * 0x2000, 0x1000, RAM).unwrap();
        }
        assert_eq!(map.add(0x1000_0000, 0x1000, RAM), Err(E820Error::Full));
    }

    fn is_ram_requires_the_whole_range_inside_one_ram_entry() {
        let mut map = E820Map::new();
        map.add(0, 0x9_F000, RAM).unwrap();
        map.add(0x9_F000, 0x1000, RESERVED).unwrap();
        map.add(0x10_0000, 0x10_0000, RAM).unwrap();
        assert!(map.is_ram(0x7000, 0x1000));
        assert!(!map.is_ram(0x9_E000, 0x2000));
        assert!(!map.is_ram(0x1F_F000, 0x2000));
        assert!(!map.is_ram(u64::MAX, 2));
    }

    fn ram_top_below_clips_to_the_limit() {
        let mut map = E820Map::new();
        map.add(0x10_0000, 0x1000_0000, RAM).unwrap();
        map.add(0xFEC0_0000, 0x1000, RESERVED).unwrap();
        assert_eq!(map.ram_top_below(u64::MAX), 0x1010_0000);
        assert_eq!(map.ram_top_below(0x800_0000), 0x800_0000);
        assert_eq!(map.ram_top_below(0x1000), 0);
    }
}
