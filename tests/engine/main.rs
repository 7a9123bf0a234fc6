//! The engine's integration tests, one binary: scenario stories, hostile
//! input, cache maintenance at every handover, and the executable spec's
//! properties (refinement, integrity, confidentiality, invariants,
//! robustness), each a module named for what it checks.
//!
//! One binary rather than one per file: each test crate monomorphizes the
//! generic engine again and links on its own, so nine crates cost about
//! three times the build of one, paid on every change and on every mutant
//! of `cargo xtask mutants`. `cargo test -p isola --test engine spec_model`
//! runs one module. The exhaustive exploration stays its own binary
//! (`explore.rs`): it runs only in release, in its own step.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "integration tests, not engine code: their helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

#[path = "../spec_common/mod.rs"]
mod spec_common;

mod bad_input;
mod handover;
mod scenario;
mod spec_confidentiality;
mod spec_integrity;
mod spec_invariants;
mod spec_model;
mod spec_refinement;
mod spec_robustness;
