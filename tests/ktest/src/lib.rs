//! One definition per unit test, run in two places.
//!
//! A library crate writes its unit tests once, inside [`suite!`], in a module
//! compiled under `cfg(any(test, feature = "ktests"))`. The macro emits:
//! - each body as a plain `pub fn`, so the bootable test image (`tests/image`)
//!   can call it from its `no_std` kernel;
//! - a `TESTS` table of [`Test`] for that in-kernel runner;
//! - under `cfg(test)`, one `#[test]` wrapper per body for `cargo test`.
//!
//! Test bodies must therefore be `no_std` (no `Vec`, no `format!`) and report
//! failure by panicking (`assert!`), never by returning a value.

#![no_std]

/// One unit test as the in-kernel runner sees it.
#[derive(Clone, Copy, Debug)]
pub struct Test {
    /// `crate::module::name`, as `cargo test` would print it.
    pub name: &'static str,
    /// The test body: returns on success, panics on failure.
    pub run: fn(),
}

/// Defines unit tests once for the host and the in-kernel runner.
///
/// ```
/// mod ktests {
///     altinj_ktest::suite! {
///         fn one_plus_one_is_two() {
///             assert_eq!(1 + 1, 2);
///         }
///     }
/// }
/// assert_eq!(ktests::TESTS.len(), 1);
/// assert!(ktests::TESTS[0].name.ends_with("ktests::one_plus_one_is_two"));
/// (ktests::TESTS[0].run)();
/// ```
#[macro_export]
macro_rules! suite {
    ($($(#[$attr:meta])* fn $name:ident() $body:block)*) => {
        $(
            $(#[$attr])*
            #[allow(
                clippy::unwrap_used,
                clippy::expect_used,
                clippy::panic,
                clippy::indexing_slicing,
                clippy::arithmetic_side_effects,
                missing_docs
            )]
            pub fn $name() $body
        )*

        /// Every test of this module, for the in-kernel runner.
        pub const TESTS: &[$crate::Test] = &[
            $($crate::Test {
                name: concat!(module_path!(), "::", stringify!($name)),
                run: $name,
            }),*
        ];

        #[cfg(test)]
        mod host {
            $(
                #[test]
                fn $name() {
                    super::$name()
                }
            )*
        }
    };
}
