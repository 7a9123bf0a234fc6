//! A data-owning mutex on top of [`TicketLock`].
//!
//! Invariant: the data in `data` is reached only (a) through a live
//! [`MutexGuard`], which exists only while its CPU holds `lock`, or (b)
//! through `&mut Mutex` / by value, which proves no guard exists. So at most
//! one `&mut T` exists at a time and every access is ordered after the
//! previous holder's by the lock's release/acquire pair.

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use crate::shim::UnsafeCell;
use crate::ticket::TicketLock;

/// A FIFO spin mutex owning its data.
pub struct Mutex<T> {
    lock: TicketLock,
    data: UnsafeCell<T>,
}

// SAFETY: a `Mutex<T>` moved to another thread carries its `T`, so `T: Send`
// is needed and suffices (as for `std::sync::Mutex`).
unsafe impl<T: Send> Send for Mutex<T> {}
// SAFETY: through `&Mutex<T>` a thread can only reach `T` while holding the
// lock, which gives it exclusive access, so `T` is never shared between
// threads, only handed from one to the next: `T: Send` suffices (as for
// `std::sync::Mutex`).
unsafe impl<T: Send> Sync for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unlocked mutex owning `value` (`const`, for statics in the EL2
    /// image).
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            lock: TicketLock::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// An unlocked mutex owning `value` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            lock: TicketLock::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Wait for the lock (FIFO) and return a guard giving access to the data.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.lock.lock();
        MutexGuard {
            mutex: self,
            _not_send: PhantomData,
        }
    }

    /// Take the lock only if it is free right now; never waits.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // `then`, not `then_some`: the guard must be built only on success,
        // since dropping a guard unlocks.
        self.lock.try_lock().then(|| MutexGuard {
            mutex: self,
            _not_send: PhantomData,
        })
    }

    /// Whether some CPU holds the lock at this instant (a snapshot, for
    /// assertions and diagnostics only).
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// Direct access through `&mut self`: no guard can exist, so no locking.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Consume the mutex and return the data.
    #[inline]
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The data is not printed: that would need the lock, and a Debug
        // impl that can spin forever is a trap.
        f.debug_struct("Mutex")
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

/// Proof that the current CPU holds a [`Mutex`]; gives access to its data
/// and releases the lock when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    /// Not `Send`, like `std::sync::MutexGuard`: the lock is released by the
    /// CPU that took it, which keeps per-CPU lock-order reasoning simple.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: `&MutexGuard<T>` only yields `&T`, so sharing the guard between
// threads is sharing `&T`, which is sound exactly when `T: Sync`.
unsafe impl<T: Sync> Sync for MutexGuard<'_, T> {}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this CPU holds the lock, so no
        // other CPU accesses the data; the returned `&T` borrows the guard,
        // so it cannot outlive the lock being held, and no `&mut T` can be
        // made while it lives (that needs `&mut self` on the guard).
        self.mutex.data.with(|p| unsafe { &*p })
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only
        // reference derived from the guard while it lives.
        self.mutex.data.with_mut(|p| unsafe { &mut *p })
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its CPU holds the lock, and each
        // guard unlocks exactly once, here.
        unsafe { self.mutex.lock.unlock() };
    }
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn guard_gives_access_and_unlocks_on_drop() {
        let m = Mutex::new(5_u32);
        {
            let mut g = m.lock();
            *g += 1;
            assert!(m.is_locked());
            assert!(m.try_lock().is_none());
        }
        assert!(!m.is_locked());
        assert_eq!(*m.try_lock().unwrap(), 6);
        assert!(!m.is_locked());
    }

    #[test]
    fn get_mut_and_into_inner_bypass_the_lock() {
        let mut m = Mutex::new(vec![1, 2]);
        m.get_mut().push(3);
        assert!(!m.is_locked());
        assert_eq!(m.into_inner(), vec![1, 2, 3]);
    }

    #[test]
    fn works_in_a_static() {
        static COUNTER: Mutex<u64> = Mutex::new(0);
        *COUNTER.lock() += 2;
        assert_eq!(*COUNTER.lock(), 2);
    }

    #[test]
    fn no_increment_is_lost() {
        const THREADS: usize = 4;
        const ROUNDS: usize = if cfg!(miri) { 50 } else { 2_000 };
        let m = Arc::new(Mutex::new(0_usize));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        // A non-atomic read-modify-write, split so that a
                        // broken lock would lose updates.
                        let mut g = m.lock();
                        let v = *g;
                        std::hint::black_box(());
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), THREADS * ROUNDS);
    }

    #[test]
    fn debug_does_not_lock() {
        let m = Mutex::new(1);
        let g = m.lock();
        assert_eq!(format!("{m:?}"), "Mutex { locked: true, .. }");
        assert_eq!(format!("{g:?}"), "1");
    }
}
