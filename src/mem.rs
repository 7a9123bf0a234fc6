//! The physical memory window: how the core reaches the bytes of a physical
//! page. This is the only module of the core that contains `unsafe`.
//!
//! At EL2 RAM is identity-mapped (VA == PA), so the window is
//! [`PhysMem::identity`]. In host tests "RAM" is a leaked, page-aligned
//! allocation standing in for physical memory at a fake base
//! ([`PhysMem::leak_host`]), so table edits, scrubs and vCPU contexts run
//! unchanged under `cargo test` and Miri.
//!
//! # Invariants the engine keeps when it calls this module
//!
//! Every access is bounds-checked against the window and alignment-checked;
//! an address outside it yields `None`/`false`, never an access. Beyond that,
//! soundness rests on the ownership invariant (see `docs/ownership.md`):
//!
//! - the engine writes only pages it owns (its own reserve, a VM's donated
//!   pool while holding that VM's lock, the host Stage-2 pool while holding
//!   its lock), or a page it has just taken out of every Stage-2 (after the
//!   break-before-make TLBI), e.g. to scrub it before handing it on;
//! - Stage-2 descriptors are read and written with 64-bit aligned volatile
//!   accesses, which are single-copy atomic on AArch64, because hardware
//!   table walkers on other CPUs read them concurrently;
//! - every other access is volatile as well: the other agents touching RAM
//!   (the host and guests at EL1) are outside the Rust abstract machine, so
//!   the compiler must neither elide nor invent accesses to these bytes.

use crate::addr::{PAGE_SIZE, PhysAddr};

/// A window onto physical memory: `[pa_base, pa_base + len)` is reachable at
/// `base + (pa - pa_base)`.
#[derive(Debug, Clone, Copy)]
pub struct PhysMem {
    base: *mut u8,
    pa_base: u64,
    len: u64,
}

// SAFETY: `PhysMem` is a description of memory, not an owner of it: copying
// it to another CPU gives that CPU the same window. Every access through it is
// volatile and covered by the ownership discipline in the module docs (a CPU
// touches a page only while the ownership state gives it that page), so
// sharing the window across threads introduces no unsynchronised access by
// itself.
unsafe impl Send for PhysMem {}
// SAFETY: as for `Send`: all methods take `&self` and perform only volatile
// accesses whose exclusivity the engine's locks and ownership states provide.
unsafe impl Sync for PhysMem {}

impl PhysMem {
    /// A window that maps physical address `pa_base` at `base`, `len` bytes.
    ///
    /// # Safety
    ///
    /// `[base, base + len)` must be valid for reads and writes for the rest
    /// of the program, and no Rust code may access it except through a
    /// `PhysMem` (other agents, such as EL1 software on other CPUs, may). The
    /// engine then only accesses it as the module docs describe.
    pub unsafe fn new(base: *mut u8, pa_base: PhysAddr, len: u64) -> Self {
        Self {
            base,
            pa_base: pa_base.raw(),
            len,
        }
    }

    /// The EL2 window: physical memory identity-mapped, `[0, limit)`.
    ///
    /// # Safety
    ///
    /// The current translation regime must map every RAM address below
    /// `limit` to itself, readable and writable, for the rest of the program,
    /// and the engine's own image, stack and statics must not lie in RAM the
    /// engine hands to the host or guests (they are `Reserved` pages).
    pub unsafe fn identity(limit: u64) -> Self {
        Self {
            base: core::ptr::with_exposed_provenance_mut(0),
            pa_base: 0,
            len: limit,
        }
    }

    /// Host tests: allocate `pages` zeroed pages, leak them, and present them
    /// as physical memory starting at `pa_base`.
    #[cfg(not(target_os = "none"))]
    pub fn leak_host(pa_base: PhysAddr, pages: u64) -> Self {
        extern crate std;
        let len = pages.saturating_mul(PAGE_SIZE);
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        let layout = std::alloc::Layout::from_size_align(size.max(1), 4096)
            .unwrap_or(std::alloc::Layout::new::<u8>());
        // SAFETY: the layout has non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: the allocation is `len` bytes, never freed (leaked), and
        // only reachable through the returned window.
        unsafe { Self::new(base, pa_base, len) }
    }

    /// First physical address of the window.
    pub fn pa_base(&self) -> PhysAddr {
        PhysAddr::new(self.pa_base)
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to `len` bytes at `pa` if they lie inside the window and `pa`
    /// is aligned to `align`.
    fn ptr(&self, pa: PhysAddr, len: u64, align: u64) -> Option<*mut u8> {
        if !pa.is_aligned(align) {
            return None;
        }
        let off = pa.raw().checked_sub(self.pa_base)?;
        if off.checked_add(len)? > self.len {
            return None;
        }
        let off = usize::try_from(off).ok()?;
        Some(self.base.wrapping_add(off))
    }

    /// Reads the aligned 64-bit word at `pa` (single-copy atomic).
    pub fn read_u64(&self, pa: PhysAddr) -> Option<u64> {
        let p = self.ptr(pa, 8, 8)?.cast::<u64>();
        // SAFETY: `ptr` checked that the 8 bytes lie inside the window, which
        // `new`'s contract makes valid memory, and that `p` is 8-aligned. The
        // caller reads a word it may read per the module invariants.
        Some(unsafe { p.read_volatile() })
    }

    /// Writes the aligned 64-bit word at `pa` (single-copy atomic). Returns
    /// `false`, writing nothing, if `pa` is outside the window or unaligned.
    pub fn write_u64(&self, pa: PhysAddr, value: u64) -> bool {
        match self.ptr(pa, 8, 8) {
            Some(p) => {
                // SAFETY: in bounds and aligned (checked by `ptr`); the caller
                // owns the word per the module invariants (an engine-owned
                // page under its lock, or a descriptor in a table it owns).
                unsafe { p.cast::<u64>().write_volatile(value) };
                true
            }
            None => false,
        }
    }

    /// Fills the page at `pa` with zeroes. `false` if not a page in the window.
    ///
    /// 16-byte volatile stores, eight to a loop iteration: on AArch64 each is
    /// one `stp xzr, xzr` (no FP/SIMD register, so it suits a softfloat EL2
    /// image), 256 stores and 32 loop steps a page instead of 512 8-byte
    /// stores and 512 steps. Volatile, so the compiler can neither drop the
    /// stores (nothing it can see reads the page again: the next reader is
    /// another world) nor turn the loop into a `memset` call of unknown cost.
    pub fn zero_page(&self, pa: PhysAddr) -> bool {
        let Some(p) = self.ptr(pa, PAGE_SIZE, PAGE_SIZE) else {
            return false;
        };
        let chunks = p.cast::<u128>();
        let mut i = 0usize;
        while i < (PAGE_SIZE / 16) as usize {
            // SAFETY: `i` is a multiple of 8 below 256, so `i | k` is
            // `i + k < 256` for `k < 8`: every store stays inside the page
            // that `ptr` checked, 16-byte aligned (the page is 4 KiB
            // aligned). The engine zeroes only pages it owns exclusively
            // (taken out of every Stage-2, TLBs invalidated), so no other
            // CPU or world accesses them meanwhile.
            unsafe {
                chunks.wrapping_add(i).write_volatile(0);
                chunks.wrapping_add(i | 1).write_volatile(0);
                chunks.wrapping_add(i | 2).write_volatile(0);
                chunks.wrapping_add(i | 3).write_volatile(0);
                chunks.wrapping_add(i | 4).write_volatile(0);
                chunks.wrapping_add(i | 5).write_volatile(0);
                chunks.wrapping_add(i | 6).write_volatile(0);
                chunks.wrapping_add(i | 7).write_volatile(0);
            }
            i = i.wrapping_add(8);
        }
        true
    }

    /// The page at `pa`, checked once to lie in the window (and be page
    /// aligned), for many word accesses without a check each: the vCPU
    /// context on the run path. `None` if not a page in the window.
    pub fn page(&self, pa: PhysAddr) -> Option<Page<'_>> {
        let base = self.ptr(pa, PAGE_SIZE, PAGE_SIZE)?;
        Some(Page {
            base,
            _window: core::marker::PhantomData,
        })
    }

    /// Whether every byte of the page at `pa` is zero; `None` if not a page.
    pub fn page_is_zero(&self, pa: PhysAddr) -> Option<bool> {
        let p = self.ptr(pa, PAGE_SIZE, PAGE_SIZE)?.cast::<u64>();
        let mut zero = true;
        for i in 0..(PAGE_SIZE / 8) as usize {
            // SAFETY: inside the checked page and aligned, as in `zero_page`;
            // reading is permitted to the engine for pages in the window.
            zero &= unsafe { p.wrapping_add(i).read_volatile() } == 0;
        }
        Some(zero)
    }

    /// Copies `out.len()` bytes starting at `pa` into `out`. `false`, copying
    /// nothing, if the range leaves the window.
    pub fn read_bytes(&self, pa: PhysAddr, out: &mut [u8]) -> bool {
        let Some(p) = self.ptr(pa, out.len() as u64, 1) else {
            return false;
        };
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `i < out.len()`, and `ptr` checked the whole range.
            *b = unsafe { p.wrapping_add(i).read_volatile() };
        }
        true
    }

    /// Copies `data` to `pa`. `false`, writing nothing, if the range leaves
    /// the window. Used by the engine for pages it owns and by host tests to
    /// play the part of the host or a guest writing to its own memory.
    pub fn write_bytes(&self, pa: PhysAddr, data: &[u8]) -> bool {
        let Some(p) = self.ptr(pa, data.len() as u64, 1) else {
            return false;
        };
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `i < data.len()`, and `ptr` checked the whole range.
            unsafe { p.wrapping_add(i).write_volatile(*b) };
        }
        true
    }
}

/// One page of the window, bounds-checked when made ([`PhysMem::page`]).
/// Word offsets are masked into the page (`off & 0xff8`), so no access can
/// leave it whatever the offset; the callers pass constant, aligned offsets.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    base: *mut u8,
    _window: core::marker::PhantomData<&'a PhysMem>,
}

impl Page<'_> {
    /// Pointer to the 8-byte word at `off` (rounded down to 8, taken modulo
    /// the page size).
    fn word(&self, off: u64) -> *mut u64 {
        let off = (off & (PAGE_SIZE - 8)) as usize;
        self.base.wrapping_add(off).cast::<u64>()
    }

    /// Reads the word at `off` (see [`Page`] for how `off` is taken).
    pub fn read_u64(&self, off: u64) -> u64 {
        // SAFETY: `PhysMem::page` checked that the whole page lies in the
        // window (valid memory by `PhysMem::new`'s contract) and is page
        // aligned; `word` keeps the 8-aligned offset below `PAGE_SIZE`. The
        // caller reads a word it may read per the module invariants.
        unsafe { self.word(off).read_volatile() }
    }

    /// Writes the word at `off` (see [`Page`] for how `off` is taken).
    pub fn write_u64(&self, off: u64, v: u64) {
        // SAFETY: inside the checked page and aligned, as in `read_u64`; the
        // caller writes a word it owns per the module invariants (a vCPU
        // context of the vCPU loaded on this CPU).
        unsafe { self.word(off).write_volatile(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_empty_only_without_pages() {
        let m = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 2);
        assert!(!m.is_empty());
        assert_eq!(m.len(), 2 * PAGE_SIZE);
        assert!(PhysMem::leak_host(PhysAddr::new(0x4000_0000), 0).is_empty());
    }

    #[test]
    fn window_checks_bounds_and_alignment() {
        let m = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 2);
        assert_eq!(m.read_u64(PhysAddr::new(0x3fff_fff8)), None);
        assert_eq!(m.read_u64(PhysAddr::new(0x4000_2000)), None);
        assert_eq!(m.read_u64(PhysAddr::new(0x4000_0004)), None);
        assert!(!m.write_u64(PhysAddr::new(0x4000_1ffc), 1));
        assert!(m.write_u64(PhysAddr::new(0x4000_1ff8), 7));
        assert_eq!(m.read_u64(PhysAddr::new(0x4000_1ff8)), Some(7));
        assert!(!m.write_bytes(PhysAddr::new(0x4000_1fff), &[1, 2]));
        assert!(!m.zero_page(PhysAddr::new(0x4000_0800)));
    }

    #[test]
    fn a_checked_page_keeps_every_offset_inside_it() {
        let m = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 2);
        assert!(m.page(PhysAddr::new(0x4000_0800)).is_none());
        assert!(m.page(PhysAddr::new(0x4000_2000)).is_none());
        let p = m.page(PhysAddr::new(0x4000_1000)).unwrap();
        p.write_u64(0xff8, 5);
        p.write_u64(0x1008, 6); // wraps to offset 8 of the same page
        p.write_u64(0x13, 7); // rounds down to offset 0x10
        assert_eq!(m.read_u64(PhysAddr::new(0x4000_1ff8)), Some(5));
        assert_eq!(m.read_u64(PhysAddr::new(0x4000_1008)), Some(6));
        assert_eq!(p.read_u64(0x10), 7);
        assert_eq!(m.page_is_zero(PhysAddr::new(0x4000_0000)), Some(true));
    }

    #[test]
    fn scrub_zeroes_exactly_one_page() {
        let m = PhysMem::leak_host(PhysAddr::new(0x4000_0000), 2);
        assert!(m.write_bytes(PhysAddr::new(0x4000_0ff0), &[0xaa; 0x20]));
        assert_eq!(m.page_is_zero(PhysAddr::new(0x4000_0000)), Some(false));
        assert!(m.zero_page(PhysAddr::new(0x4000_0000)));
        assert_eq!(m.page_is_zero(PhysAddr::new(0x4000_0000)), Some(true));
        let mut b = [0u8; 0x10];
        assert!(m.read_bytes(PhysAddr::new(0x4000_1000), &mut b));
        assert_eq!(b, [0xaa; 0x10]);
    }
}
