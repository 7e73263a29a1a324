//! The loader on Debian's real cloud kernel, when `make linux-guest`
//! (tests/image/linux/fetch.sh) has fetched it into target/linux; without
//! the file the test says so and passes (no network in unit tests).

use std::path::PathBuf;

use guest_boot::linux::bootparams::{BootParams, plan};
use guest_boot::linux::bzimage::BzImage;
use guest_boot::linux::e820::{E820Map, RAM, RESERVED};
use zerocopy::IntoBytes;

fn fetched(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("LINUX_GUEST_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/linux"),
        PathBuf::from,
    );
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            eprintln!("{} not fetched (make linux-guest): skipped", path.display());
            None
        }
    }
}

#[test]
fn debian_cloud_kernel_parses_and_lays_out_with_its_initramfs() {
    let Some(vmlinuz) = fetched("vmlinuz") else {
        return;
    };
    let bz = BzImage::parse(&vmlinuz).expect("Debian's vmlinuz is a 64-bit bzImage");
    assert!(bz.version() >= 0x020C, "protocol {:#x}", bz.version());
    assert!(bz.relocatable());
    assert!(bz.init_size() >= bz.kernel().len() as u64);
    assert_eq!(
        bz.header_bytes().len(),
        0x202 + usize::from(vmlinuz[0x201]) - 0x1F1
    );
    let initrd_len = fetched("initramfs.cpio").map_or(2 << 20, |i| i.len() as u64);
    let mut map = E820Map::new();
    map.add(0, 0x9_F000, RAM).unwrap();
    map.add(0xF_0000, 0x1_0000, RESERVED).unwrap();
    map.add(0x10_0000, 0xFF0_0000, RAM).unwrap();
    let layout = plan(&bz, &map, 0x7000, 0x2_0000, 64, 0x100_0000, initrd_len).unwrap();
    assert_eq!(layout.kernel, bz.header().pref_address.get());
    assert_eq!(layout.entry, layout.kernel + 0x200);
    assert!(layout.initrd >= layout.kernel + bz.init_size());
    let params = BootParams::new(&bz, &layout, &map);
    assert_eq!(&params.as_bytes()[0x202..0x206], b"HdrS");
    eprintln!(
        "vmlinuz: protocol {:#x}, kernel {} bytes at {:#x}, init_size {:#x}, entry {:#x}, initrd {:#x}+{:#x}",
        bz.version(),
        bz.kernel().len(),
        layout.kernel,
        bz.init_size(),
        layout.entry,
        layout.initrd,
        initrd_len
    );
}
