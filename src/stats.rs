//! The engine's per-CPU event counters (`isola_abi::counter`): calls by
//! status, exits by reason, guest traps answered at EL2, injected
//! exceptions. The host reads them with `Accounting::Counter`.
//!
//! Invariant: CPU `n`'s counters are written only by code running on CPU
//! `n` (the `cpu` every entry point of the engine is given), so an update
//! is a plain load and store — no atomic read-modify-write on the hot path
//! — and no two CPUs write the same cache line (each CPU's record is
//! aligned to 64 bytes). Other CPUs only read them; a read racing an update
//! sees the count before or after it.

use isola_abi::counter::COUNT;
use isola_sync::atomic::{AtomicU64, Ordering};

/// One CPU's counters.
#[repr(C, align(64))]
pub struct CpuStats {
    counts: [AtomicU64; COUNT as usize],
}

impl Default for CpuStats {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuStats {
    /// All zero (`const`, so the EL2 image can build them in place).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; COUNT as usize],
        }
    }

    /// All zero.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            counts: core::array::from_fn(|_| AtomicU64::new(0)),
        }
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
        f.debug_struct("CpuStats").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_the_record_without_its_counts() {
        let s = CpuStats::new();
        s.counts.first().unwrap().store(7, Ordering::Relaxed);
        assert_eq!(std::format!("{s:?}"), "CpuStats { .. }");
    }
}
