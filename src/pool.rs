//! A page pool: a free list of engine-owned pages, linked through the pages
//! themselves (the first word of a free page holds the next free page's
//! address), so it needs no storage of its own.
//!
//! Invariants: every page on the list is engine-owned and reachable through
//! the memory window; a page is on at most one pool's list; `free <= total`.
//! Each pool is guarded by its owner's lock (a VM's pool by that VM's mutex,
//! the host Stage-2 pool by its own, `stage2::shared::SharedPool`).

use crate::addr::PhysAddr;
use crate::mem::PhysMem;

const NIL: u64 = u64::MAX;

/// A free list of pages plus the count of every page given to the pool.
#[derive(Debug, Clone, Copy)]
pub struct PagePool {
    head: u64,
    free: u64,
    total: u64,
}

impl Default for PagePool {
    fn default() -> Self {
        Self::new()
    }
}

impl PagePool {
    /// An empty pool.
    pub const fn new() -> Self {
        Self {
            head: NIL,
            free: 0,
            total: 0,
        }
    }

    /// Pages currently free.
    pub const fn free(&self) -> u64 {
        self.free
    }

    /// Pages given to the pool and not taken back with [`Self::drain_one`].
    pub const fn total(&self) -> u64 {
        self.total
    }

    /// Adds a new page to the pool (it now counts in `total`).
    pub fn add(&mut self, mem: &PhysMem, pa: PhysAddr) -> bool {
        if !self.push(mem, pa) {
            return false;
        }
        self.total = self.total.saturating_add(1);
        true
    }

    /// Counts a new page that the owner uses at once (it is never on the
    /// free list until released with [`Self::release`]).
    pub fn add_in_use(&mut self) {
        self.total = self.total.saturating_add(1);
    }

    /// Returns a page taken with [`Self::alloc`] to the free list.
    pub fn release(&mut self, mem: &PhysMem, pa: PhysAddr) -> bool {
        self.push(mem, pa)
    }

    fn push(&mut self, mem: &PhysMem, pa: PhysAddr) -> bool {
        if !pa.is_page_aligned() || !mem.write_u64(pa, self.head) {
            return false;
        }
        self.head = pa.raw();
        self.free = self.free.saturating_add(1);
        true
    }

    /// Takes a page off the free list, zeroed. It still counts in `total`.
    pub fn alloc(&mut self, mem: &PhysMem) -> Option<PhysAddr> {
        if self.head == NIL {
            return None;
        }
        let pa = PhysAddr::new(self.head);
        let next = mem.read_u64(pa)?;
        if !mem.zero_page(pa) {
            return None;
        }
        self.head = next;
        self.free = self.free.saturating_sub(1);
        Some(pa)
    }

    /// Takes a free page out of the pool for good (it leaves `total`), not
    /// zeroed: the caller scrubs it before it changes hands.
    pub fn drain_one(&mut self, mem: &PhysMem) -> Option<PhysAddr> {
        if self.head == NIL {
            return None;
        }
        let pa = PhysAddr::new(self.head);
        self.head = mem.read_u64(pa)?;
        self.free = self.free.saturating_sub(1);
        self.total = self.total.saturating_sub(1);
        Some(pa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo_with_zeroed_allocations() {
        let m = PhysMem::leak_host(PhysAddr::new(0x10_0000), 3);
        let mut p = PagePool::new();
        assert!(m.write_bytes(PhysAddr::new(0x10_1010), &[9; 8]));
        assert!(p.add(&m, PhysAddr::new(0x10_0000)));
        assert!(p.add(&m, PhysAddr::new(0x10_1000)));
        assert!(!p.add(&m, PhysAddr::new(0x20_0000)), "outside the window");
        assert_eq!((p.free(), p.total()), (2, 2));
        let a = p.alloc(&m).unwrap();
        assert_eq!(a, PhysAddr::new(0x10_1000));
        assert_eq!(m.page_is_zero(a), Some(true));
        assert_eq!((p.free(), p.total()), (1, 2));
        assert!(p.release(&m, a));
        assert_eq!(p.drain_one(&m), Some(a));
        assert_eq!(p.drain_one(&m), Some(PhysAddr::new(0x10_0000)));
        assert_eq!(p.drain_one(&m), None);
        assert_eq!(p.alloc(&m), None);
        assert_eq!((p.free(), p.total()), (0, 0));
    }
}
