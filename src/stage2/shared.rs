//! One table pool for CPUs that edit disjoint parts of one Stage-2 at once:
//! the host's, whose RAM entries each CPU edits under the lock of the shard
//! the pages belong to, not under one lock for the whole Stage-2.
//!
//! Invariants:
//! - The pool's free list is touched only under its own lock, held for one
//!   allocation or one release and nothing else (no table walk, no other
//!   lock taken inside it): it is a leaf of the engine's lock order.
//! - A [`SharedAlloc`] made with `lowest` hands out tables only for entries
//!   at level `lowest` or deeper. The host's RAM edits use `lowest = 2`, so
//!   whatever a bug made them try, they can never install a table into an
//!   entry above level 2, the entries that RAM of several shards (and
//!   devices) share: those tables are built at boot
//!   ([`super::Stage2::build_tables`]) and never change (`docs/ownership.md`).

use super::TableAlloc;
use crate::addr::PhysAddr;
use crate::mem::PhysMem;
use crate::pool::PagePool;
use isola_sync::Mutex;

/// A [`PagePool`] behind its own lock.
#[derive(Debug)]
pub struct SharedPool {
    pool: Mutex<PagePool>,
}

impl SharedPool {
    /// Wraps `pool`.
    pub fn new(pool: PagePool) -> Self {
        Self {
            pool: Mutex::new(pool),
        }
    }

    /// An allocator over this pool for an edit that may install tables
    /// into entries at level `lowest` or deeper (0: any level).
    pub const fn alloc(&self, lowest: u8) -> SharedAlloc<'_> {
        SharedAlloc { pool: self, lowest }
    }

    /// Pages free now (a snapshot: other CPUs may allocate right after).
    pub fn free(&self) -> u64 {
        self.pool.lock().free()
    }

    /// Takes every free page out of the pool, as if the tables had used them
    /// all: for tests of the paths that run out.
    #[cfg(test)]
    pub(crate) fn exhaust(&self, mem: &PhysMem) {
        let mut p = self.pool.lock();
        while p.alloc(mem).is_some() {}
    }
}

/// A [`TableAlloc`] view of a [`SharedPool`], limited to tables installed
/// at level `lowest` or deeper. Each call takes the pool's lock for itself.
#[derive(Debug)]
pub struct SharedAlloc<'a> {
    pool: &'a SharedPool,
    lowest: u8,
}

impl TableAlloc for SharedAlloc<'_> {
    fn alloc_table(&mut self, mem: &PhysMem, level: u8) -> Option<PhysAddr> {
        if level < self.lowest {
            return None;
        }
        self.pool.pool.lock().alloc(mem)
    }

    fn free_table(&mut self, mem: &PhysMem, pa: PhysAddr) {
        // A page that was allocated from this pool is in the window, so the
        // push cannot fail; there is nothing better to do if it did.
        let _ = self.pool.pool.lock().release(mem, pa);
    }

    fn available(&self) -> u64 {
        self.pool.free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_view_refuses_tables_above_its_level() {
        let m = PhysMem::leak_host(PhysAddr::new(0x10_0000), 2);
        let mut p = PagePool::new();
        assert!(p.add(&m, PhysAddr::new(0x10_0000)));
        assert!(p.add(&m, PhysAddr::new(0x10_1000)));
        let shared = SharedPool::new(p);
        let mut ram = shared.alloc(2);
        assert_eq!(ram.alloc_table(&m, 1), None, "level 1: refused");
        assert_eq!(ram.alloc_table(&m, 0), None, "level 0: refused");
        assert_eq!(ram.available(), 2, "a refusal takes nothing");
        assert!(ram.alloc_table(&m, 2).is_some());
        let mut any = shared.alloc(0);
        let t = any.alloc_table(&m, 1).unwrap();
        assert_eq!(shared.free(), 0);
        any.free_table(&m, t);
        assert_eq!(ram.available(), 1);
    }
}
