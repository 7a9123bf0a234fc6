//! The loom shim: the one place that chooses between the real atomics and
//! loom's model-checked ones.
//!
//! Invariant: nothing in this crate (and, through [`crate::atomic`] and
//! [`crate::cell`], nothing in the engine) names `core::sync::atomic`,
//! `core::cell::UnsafeCell` or `core::hint::spin_loop` directly. Under
//! `--cfg loom` every atomic access, every access to shared data through
//! [`UnsafeCell`] and every spin-loop iteration is therefore visible to loom's
//! scheduler, which is what lets the models in `loom-tests/` explore all
//! interleavings and detect data races.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

/// Tell the CPU (or loom's scheduler) that this thread is busy-waiting.
///
/// On hardware this is `core::hint::spin_loop` (`yield` on AArch64, `pause`
/// on x86-64). Under loom it is `loom::thread::yield_now`: loom's scheduler
/// is not fair, so a spin loop that never yields would let the model explore
/// unboundedly many iterations of the spinning thread.
#[inline(always)]
pub fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// An `UnsafeCell` whose every access goes through a closure, so that under
/// loom each access is recorded and checked for data races (the access is
/// checked at the moment the closure runs).
///
/// The closures receive raw pointers; dereferencing them is the caller's
/// responsibility and needs a `// SAFETY:` argument (typically "we hold the
/// lock that guards this cell").
#[derive(Debug)]
pub struct UnsafeCell<T> {
    #[cfg(not(loom))]
    inner: core::cell::UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::cell::UnsafeCell<T>,
}

impl<T> UnsafeCell<T> {
    /// Wrap `value` (a `const fn`, so cells can live in statics).
    #[cfg(not(loom))]
    #[inline]
    pub const fn new(value: T) -> Self {
        Self {
            inner: core::cell::UnsafeCell::new(value),
        }
    }

    /// Wrap `value` (not `const` under loom: loom's cells register with the
    /// model when created).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Run `f` with a shared (read) pointer to the contents.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(not(loom))]
        {
            f(self.inner.get())
        }
        #[cfg(loom)]
        {
            self.inner.with(f)
        }
    }

    /// Run `f` with an exclusive (write) pointer to the contents.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        {
            f(self.inner.get())
        }
        #[cfg(loom)]
        {
            self.inner.with_mut(f)
        }
    }

    /// Exclusive access through `&mut self`: no other reference can exist,
    /// so no synchronisation is needed.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        {
            self.inner.get_mut()
        }
        #[cfg(loom)]
        {
            // SAFETY: `&mut self` proves that no other reference to the cell
            // or its contents exists, so handing out `&mut T` for the
            // lifetime of that borrow cannot alias.
            self.inner.with_mut(|p| unsafe { &mut *p })
        }
    }

    /// Unwrap the contents.
    #[inline]
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}
