//! The test host's heap: the global allocator behind `alloc`, which the VMM
//! (`isola-vmm`: device models, device trees, console buffers) needs.
//!
//! It manages `[HOST_HEAP_BASE, HOST_HEAP_END)` from `isola_layout`, host
//! RAM nothing else uses, with `linked_list_allocator`'s first-fit free
//! list (why that crate: payloads/host/Cargo.toml) behind one `isola-sync`
//! mutex, taken the way the console takes its lock (spinning until free,
//! not queueing, since QEMU may not be running the CPU next in a queue).
//!
//! Invariants:
//! - The heap is set up, once, by the first allocation on any CPU, under
//!   the lock; every later use sees it set up.
//! - Freed blocks merge with their free neighbours, so a guest that runs
//!   for a long time (the VMM allocates on every exit) uses a bounded heap.
//! - Running out is not an error path the VMM can handle: `alloc` returns
//!   null and Rust's allocation-error handler ends the run with a panic
//!   line, which fails every booted scenario.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use isola_layout::{HOST_HEAP_BASE, HOST_HEAP_END};
use isola_sync::{Mutex, MutexGuard};
use linked_list_allocator::Heap;

/// The heap and whether it has been given its memory.
struct State {
    heap: Heap,
    ready: bool,
}

/// The global allocator.
pub struct HostHeap(Mutex<State>);

#[global_allocator]
static HEAP: HostHeap = HostHeap(Mutex::new(State {
    heap: Heap::empty(),
    ready: false,
}));

impl HostHeap {
    fn lock(&self) -> MutexGuard<'_, State> {
        loop {
            if let Some(g) = self.0.try_lock() {
                return g;
            }
            while self.0.is_locked() {
                isola_sync::spin_hint();
            }
        }
    }
}

// SAFETY: every method takes the lock, so the free list is only ever
// changed by one CPU at a time; the memory it hands out lies in the heap
// range, which nothing else uses (`isola_layout`), is mapped Normal
// read-write by the host's stage-1 map, and is handed to one caller at a
// time until freed.
unsafe impl GlobalAlloc for HostHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut s = self.lock();
        if !s.ready {
            let size = (HOST_HEAP_END - HOST_HEAP_BASE) as usize;
            // SAFETY: the range is host RAM reserved for this heap by the
            // memory plan, valid for the whole run and used by nothing else.
            unsafe {
                s.heap.init(
                    ptr::with_exposed_provenance_mut(HOST_HEAP_BASE as usize),
                    size,
                );
            }
            s.ready = true;
        }
        s.heap
            .allocate_first_fit(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        // SAFETY: the caller passes a block `alloc` returned with this
        // layout and not yet freed (GlobalAlloc's contract).
        unsafe { self.lock().heap.deallocate(p, layout) };
    }
}

/// Bytes in use and bytes free (0, 0 before the first allocation).
pub fn usage() -> (usize, usize) {
    let s = HEAP.lock();
    (s.heap.used(), s.heap.free())
}
