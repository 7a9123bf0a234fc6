//! Helpers for isola's benchmarks: the criterion benches live in `benches/`;
//! this library holds what they and `cargo xtask bench` share: the SVG
//! charts of `docs/figures/` and a reader of criterion's saved estimates.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod estimates;
pub mod svg;
