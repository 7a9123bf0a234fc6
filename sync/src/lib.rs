//! Synchronisation primitives for the engine's shared state.
//!
//! - [`TicketLock`]: a FIFO spin lock with no data (next-ticket / now-serving).
//! - [`Mutex`]: a data-owning lock on top of it; the data is reachable only
//!   through a [`MutexGuard`].
//! - [`RendezvousBarrier`]: a reusable N-participant barrier, optionally
//!   running an action on the last arrival before anyone is released.
//! - [`atomic`], [`cell`], [`spin_hint`], [`SpinWait`]: the public face of the loom shim.
//!   The engine uses these and never `core::sync::atomic` directly, so that
//!   `--cfg loom` swaps every atomic, cell and spin loop for loom's.
//!
//! Every memory ordering in this crate is the weakest correct one and carries
//! a comment naming the happens-before edge it creates; `docs/primitives.md`
//! collects them, with what loom checked and what it cannot.
#![cfg_attr(not(any(test, loom)), no_std)]
#![deny(unsafe_code)]

mod barrier;
#[allow(
    unsafe_code,
    reason = "the mutex hands out its data only to the lock's holder, which the type system cannot see"
)]
mod mutex;
#[allow(
    unsafe_code,
    reason = "the loom shim's cell: exclusive access through `&mut self` made explicit for loom's cell"
)]
mod shim;
#[allow(
    unsafe_code,
    reason = "a ticket lock's `unlock` is unsafe: only its holder may call it"
)]
mod ticket;

pub use barrier::RendezvousBarrier;
pub use mutex::{Mutex, MutexGuard};
pub use shim::{SpinWait, spin_hint};
pub use ticket::TicketLock;

/// Atomics: `core::sync::atomic`'s normally, loom's under `--cfg loom`;
/// and the named ordering sites ([`atomic::Site`], [`atomic::ordered`]) that
/// loom models weaken one at a time.
pub mod atomic {
    #[cfg(loom)]
    pub use crate::shim::weakened;
    pub use crate::shim::{
        AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, Site, fence, ordered,
    };
}

/// Interior mutability whose accesses loom can track.
pub mod cell {
    pub use crate::shim::UnsafeCell;
}
