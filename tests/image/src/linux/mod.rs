//! A Linux x86 64-bit boot protocol loader, for the Linux guest of the SVM
//! harness (docs/testing.md, "The Linux guest"): validate a bzImage
//! ([`bzimage`]), lay out kernel, command line and initrd in guest memory and
//! fill the zero page ([`bootparams`]) with an e820 map ([`e820`]).

pub mod bootparams;
pub mod bzimage;
pub mod e820;
