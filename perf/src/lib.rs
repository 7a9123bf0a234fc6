//! Helpers for isola's benchmarks: the criterion benches live in `benches/`;
//! this library holds what they and `cargo xtask bench` share: the SVG
//! charts of `docs/figures/` and a reader of criterion's saved estimates.

#![forbid(unsafe_code)]

pub mod estimates;
pub mod svg;
