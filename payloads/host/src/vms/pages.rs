//! The host pages the test donates, from `[POOL_BASE, POOL_END)`, host RAM
//! no one else uses, by a bump allocator: none is reused, so a page's
//! history is simple.

use isola_abi::PAGE_SIZE;
use isola_sync::atomic::{AtomicU64, Ordering};

use super::plan::{POOL_BASE, POOL_END};
use super::probe::{clean_page, probe_read, probe_write};

/// Next free page of the pool.
static NEXT_PAGE: AtomicU64 = AtomicU64::new(POOL_BASE);

/// Allocates `n` contiguous pool pages.
pub(super) fn alloc(n: u64) -> Option<u64> {
    alloc_aligned(n, PAGE_SIZE)
}

/// Allocates `n` contiguous pool pages starting at a multiple of `align`
/// (a power of two): a VM's pool starts with its Stage-2 root, which the
/// engine needs aligned to the root's (possibly concatenated) size.
pub(super) fn alloc_aligned(n: u64, align: u64) -> Option<u64> {
    let bytes = n.checked_mul(PAGE_SIZE)?;
    let mask = align.checked_sub(1)?;
    let mut next = NEXT_PAGE.load(Ordering::Relaxed);
    loop {
        let pa = next.checked_add(mask)? & !mask;
        let end = pa.checked_add(bytes)?;
        if end > POOL_END {
            return None;
        }
        match NEXT_PAGE.compare_exchange_weak(next, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(pa),
            Err(now) => next = now,
        }
    }
}

/// Alignment of a VM's pool: enough for a root of up to 16 concatenated
/// tables, the most VMSAv8-64 allows.
pub(super) const POOL_ALIGN: u64 = 16 * PAGE_SIZE;

/// Fills a page with `f(word index)` and cleans it to memory.
pub(super) fn fill(pa: u64, f: impl Fn(u64) -> u64) -> bool {
    let ok =
        (0..PAGE_SIZE / 8).all(|i| probe_write(pa.wrapping_add(i.wrapping_mul(8)), f(i)).is_ok());
    clean_page(pa);
    ok
}

/// Whether every word of a page reads zero.
pub(super) fn page_is_zero(pa: u64) -> bool {
    (0..PAGE_SIZE / 8).all(|i| probe_read(pa.wrapping_add(i.wrapping_mul(8))) == Ok(0))
}
