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

/// An atomic access in `sync/` or `percpu/` whose ordering is stronger than
/// `Relaxed`, by name. Each such access states its ordering through
/// [`ordered`], so that a loom model can run with exactly one of them
/// weakened ([`weakened`]) and show, by failing, that the ordering is
/// needed: a broken twin of the real code rather than of a copy.
/// `Relaxed` accesses have no site: nothing is weaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// `TicketLock::lock`: the spin on `now_serving` (Acquire).
    TicketLockWait,
    /// `TicketLock::try_lock`: the load of `now_serving` (Acquire).
    TicketTryLockLoad,
    /// `TicketLock::unlock`: the store of `now_serving` (Release).
    TicketUnlock,
    /// `TicketLock::queue_len` (and `is_locked`): the load of
    /// `now_serving` (Acquire).
    TicketQueueLenLoad,
    /// `RendezvousBarrier::wait_with`: the arrival `fetch_add` (AcqRel).
    BarrierArrive,
    /// `RendezvousBarrier::wait_with`: the leader's store of the new
    /// generation (Release).
    BarrierRelease,
    /// `RendezvousBarrier::wait_with`: the waiters' spin on `generation`
    /// (Acquire).
    BarrierWait,
    /// `PerCpu::with_mut`: the swap that claims a slot (Acquire).
    PerCpuClaim,
    /// `PerCpu::with_mut`: the store that frees a slot (Release).
    PerCpuFree,
}

impl Site {
    /// Every site.
    pub const ALL: [Site; 9] = [
        Site::TicketLockWait,
        Site::TicketTryLockLoad,
        Site::TicketUnlock,
        Site::TicketQueueLenLoad,
        Site::BarrierArrive,
        Site::BarrierRelease,
        Site::BarrierWait,
        Site::PerCpuClaim,
        Site::PerCpuFree,
    ];
}

/// The ordering of the access at `site`: `ordering`. Normally exactly that
/// (the call compiles away); under loom, the weaker ordering a model chose
/// for this site with [`weakened`], if it chose this one.
#[inline(always)]
#[must_use]
pub fn ordered(site: Site, ordering: Ordering) -> Ordering {
    #[cfg(loom)]
    if let Some((weak, to)) = WEAKENED.with(core::cell::Cell::get)
        && weak == site
    {
        return to;
    }
    let _ = site;
    ordering
}

#[cfg(loom)]
std::thread_local! {
    /// The site a model weakened, and to what. Loom runs a model's threads
    /// on the OS thread that called it, so this is per model run.
    static WEAKENED: core::cell::Cell<Option<(Site, Ordering)>> =
        const { core::cell::Cell::new(None) };
}

/// Runs `f` (a loom model) with the access at `site` using `to` instead of
/// its own ordering, everywhere `f` reaches it; restored afterwards, also
/// when `f` panics (as a broken twin should).
#[cfg(loom)]
pub fn weakened<R>(site: Site, to: Ordering, f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            WEAKENED.with(|w| w.set(None));
        }
    }
    WEAKENED.with(|w| w.set(Some((site, to))));
    let _restore = Restore;
    f()
}

/// Tell the CPU (or loom's scheduler) that this thread is busy-waiting.
///
/// On hardware this is `core::hint::spin_loop` (`yield` on AArch64, `pause`
/// on x86-64). Under loom it is `loom::thread::yield_now`: loom's scheduler
/// is not fair, so a spin loop that never yields would let the model explore
/// unboundedly many iterations of the spinning thread. Loops that wait for
/// another CPU should prefer [`SpinWait`], which also bounds the model.
#[inline(always)]
pub fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Under loom, how many fruitless iterations of one wait loop are explored
/// before the rest of that execution is left unbranched (see [`SpinWait`]).
#[cfg(loom)]
pub const LOOM_SPIN_LIMIT: u32 = 3;

/// The state of one busy-wait loop: call [`SpinWait::spin`] each time the
/// awaited condition is found false.
///
/// On hardware this is [`spin_hint`] and the type is empty. Under loom it
/// also counts the loop's fruitless iterations, and after
/// [`LOOM_SPIN_LIMIT`] of them calls `loom::skip_branch`, so that loom stops
/// branching in this execution (which then runs to completion under loom's
/// default, progress-making schedule).
///
/// Why that is sound for the loops in this crate: a fruitless iteration only
/// loads (no stores, no RMWs), so it changes no shared state; the states
/// reachable after k fruitless iterations are those reachable after one,
/// which other executions already branch from. Without this, two threads
/// spinning at once can hand the CPU back and forth forever (a yield lets
/// loom run any other runnable thread, and both spinners are runnable), and
/// loom gives up with "exceeded maximum number of branches". This is the
/// classic spin-loop reduction (treating a side-effect-free wait loop as a
/// blocking wait) done by stopping exploration rather than blocking.
#[derive(Debug, Default)]
pub struct SpinWait {
    #[cfg(loom)]
    fruitless: u32,
}

impl SpinWait {
    /// A fresh wait loop.
    #[inline(always)]
    #[must_use]
    pub const fn new() -> Self {
        Self {
            #[cfg(loom)]
            fruitless: 0,
        }
    }

    /// The awaited condition was false: pause before re-checking.
    #[inline(always)]
    pub fn spin(&mut self) {
        #[cfg(loom)]
        {
            self.fruitless = self.fruitless.saturating_add(1);
            if self.fruitless > LOOM_SPIN_LIMIT {
                loom::skip_branch();
            }
        }
        spin_hint();
    }
}

/// An `UnsafeCell` whose every access goes through a closure, so that under
/// loom each access is recorded and checked for data races (the access is
/// checked at the moment the closure runs).
///
/// The closures receive raw pointers; dereferencing them is the caller's
/// responsibility and needs a `// SAFETY:` argument (typically "we hold the
/// lock that guards this cell").
///
/// `repr(transparent)`: the contents start where the cell does, so code that
/// must reach them by address (EL2 assembly, through `isola-percpu`) may
/// rely on it.
#[derive(Debug)]
#[repr(transparent)]
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
