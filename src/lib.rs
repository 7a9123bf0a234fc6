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

pub mod addr;
pub mod arch;
pub mod mem;
pub mod pool;
pub mod stage2;
pub mod spec;
