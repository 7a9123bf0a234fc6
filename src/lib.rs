//! isola's portable engine core.
#![cfg_attr(not(test), no_std)]
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

pub mod abort;
pub mod addr;
pub mod arch;
pub mod engine;
pub mod hypercall;
pub mod mem;
pub mod ownership;
pub mod pool;
pub mod spec;
pub mod stage2;
#[cfg(not(target_os = "none"))]
pub mod testing;
pub mod vcpu;
pub mod vm;
