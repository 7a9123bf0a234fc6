//! The engine's per-CPU event counters (`isola_abi::counter`): calls by
//! status, exits by reason, guest traps answered at EL2, injected
//! exceptions. The host reads them with `Accounting::Counter`.
//!
//! Invariants:
//! - CPU `n`'s counters are written only by code running on CPU `n` (the
//!   record [`Engine::dispatch`](crate::engine::Engine::dispatch) is given,
//!   or the `cpu` index of the other entry points), so an update is a plain
//!   load and store — no atomic read-modify-write on the hot path — and no
//!   two CPUs write the same cache line (each CPU's record is aligned to 64
//!   bytes). Other CPUs only read them; a read racing an update sees the
//!   count before or after it.
//! - A record knows its CPU: [`CpuStats::index`] is fixed when it is built,
//!   and the engine's table holds CPU `n`'s record at position `n`
//!   (`Engine::new` refuses any other table). So the EL2 image can hand the
//!   dispatcher the record itself (it finds it from `TPIDR_EL2`, the
//!   `isola-percpu` contract, whose "first field is the index as a `u64`"
//!   this type keeps: [`CpuStats::INDEX_OFFSET`]) and counting is a load,
//!   an add and a store, with no table lookup and no bounds check.

use isola_abi::counter::COUNT;
use isola_sync::atomic::{AtomicU64, Ordering};

/// One CPU's record: its index, then its counters.
#[repr(C, align(64))]
pub struct CpuStats {
    /// The CPU's dense index. First, a `u64`: `isola-percpu` reads it at
    /// offset 0 of the record `TPIDR_EL2` points to.
    index: u64,
    counts: [AtomicU64; COUNT as usize],
}

impl CpuStats {
    /// Where the index is in the record (0: `isola-percpu`'s contract).
    pub const INDEX_OFFSET: usize = core::mem::offset_of!(Self, index);

    /// CPU `index`'s record, all counts zero (`const`, so the EL2 image
    /// can hold the records in a static, ready before any code runs).
    #[cfg(not(loom))]
    pub const fn new(index: u32) -> Self {
        Self {
            index: index as u64,
            counts: [const { AtomicU64::new(0) }; COUNT as usize],
        }
    }

    /// CPU `index`'s record, all counts zero.
    #[cfg(loom)]
    pub fn new(index: u32) -> Self {
        Self {
            index: u64::from(index),
            counts: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The CPU this record is for.
    #[inline]
    pub fn index(&self) -> u32 {
        // Exact: the field is only ever set from a `u32` (`new`).
        self.index as u32
    }

    /// Adds one to `counter` (ignored if out of range). Only on this
    /// record's own CPU (the module invariant).
    #[inline]
    pub fn add(&self, counter: u64) {
        if let Some(c) = usize::try_from(counter)
            .ok()
            .and_then(|i| self.counts.get(i))
        {
            // Relaxed: a count publishes nothing else. Load and store, not
            // an RMW: this CPU is the only writer.
            c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// The value of `counter` (0 if out of range).
    pub fn get(&self, counter: u64) -> u64 {
        usize::try_from(counter)
            .ok()
            .and_then(|i| self.counts.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl core::fmt::Debug for CpuStats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuStats")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_the_record_without_its_counts() {
        let s = CpuStats::new(3);
        s.counts.first().unwrap().store(7, Ordering::Relaxed);
        assert_eq!(std::format!("{s:?}"), "CpuStats { index: 3, .. }");
    }
}
