//! Links the kernel at its physical load address (only for `target_os = "none"`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=linker.ld");
    let is_none = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "none");
    if let (true, Ok(dir)) = (is_none, std::env::var("CARGO_MANIFEST_DIR")) {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        // x86_64-unknown-none links static-pie by default, and nothing would apply
        // its relocations: QEMU's PVH loader places the ELF at its physical addresses
        // and jumps in with paging off. A plain static executable needs none.
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
