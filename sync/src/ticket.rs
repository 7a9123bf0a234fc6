//! A FIFO ticket spin lock.
//!
//! Invariants:
//! - `now_serving <= next_ticket` (in wrapping arithmetic, with fewer than
//!   2^32 CPUs waiting at once), and the lock is held exactly when they differ.
//! - Only the holder of ticket `t` (the CPU that saw `now_serving == t`)
//!   writes `now_serving`, and it writes exactly `t + 1`; hence tickets are
//!   served in the order they were drawn (FIFO), so no CPU starves while the
//!   others keep taking the lock.
//! - The lock is two adjacent `u32`s and no padding: a handoff then moves one
//!   line between the releasing and the acquiring CPU, and a `Mutex`'s data
//!   shares that line when it is small (measured: counters on separate
//!   padded lines made a two-CPU handoff 2.3x slower than `spin`'s one-line
//!   ticket mutex; docs/primitives.md). Whoever keeps many locks side by side
//!   (the engine's shards and VM slots) pads its own elements apart, so
//!   unrelated locks never share a line.

use crate::shim::{AtomicU32, Ordering, Site, SpinWait, ordered};

/// A FIFO spin lock guarding no data of its own.
///
/// Prefer [`crate::Mutex`], which ties the data to the lock. Use this raw lock
/// only where the guarded state cannot live inside the lock (e.g. it is
/// spread over several structures in a documented lock order).
#[derive(Debug)]
pub struct TicketLock {
    /// The next ticket to hand out.
    next_ticket: AtomicU32,
    /// The ticket whose holder may enter.
    now_serving: AtomicU32,
}

impl Default for TicketLock {
    fn default() -> Self {
        Self::new()
    }
}

impl TicketLock {
    /// An unlocked lock (`const`, for statics in the EL2 image).
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> Self {
        Self {
            next_ticket: AtomicU32::new(0),
            now_serving: AtomicU32::new(0),
        }
    }

    /// An unlocked lock (not `const` under loom: loom's atomics register with
    /// the model when created).
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> Self {
        Self {
            next_ticket: AtomicU32::new(0),
            now_serving: AtomicU32::new(0),
        }
    }

    /// Take a ticket and spin until it is served.
    ///
    /// Everything the previous holder did before [`TicketLock::unlock`]
    /// happens-before everything this caller does after `lock` returns.
    #[inline]
    pub fn lock(&self) {
        // Relaxed: the ticket only fixes our place in the queue. The
        // modification order of `next_ticket` alone makes tickets unique; no
        // data is published through this counter.
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        // Acquire: pairs with the Release store in `unlock` that wrote
        // `ticket`, so the previous critical section happens-before ours.
        let mut wait = SpinWait::new();
        while self
            .now_serving
            .load(ordered(Site::TicketLockWait, Ordering::Acquire))
            != ticket
        {
            wait.spin();
        }
    }

    /// Take the lock only if it is free right now; never waits.
    ///
    /// Returns `true` if the caller now holds the lock (and must release it
    /// with [`TicketLock::unlock`]). A `false` means someone held or was
    /// queued for the lock at the instant of the attempt.
    #[inline]
    #[must_use = "if try_lock returns true the lock is held and must be unlocked"]
    pub fn try_lock(&self) -> bool {
        // Acquire: if this reads `serving` written by the Release store in
        // `unlock`, the previous critical section happens-before ours should
        // the exchange below succeed.
        let serving = self
            .now_serving
            .load(ordered(Site::TicketTryLockLoad, Ordering::Acquire));
        // The exchange succeeds only if no ticket `serving` has been drawn, so
        // nobody holds or waits for the lock, and `now_serving` (which only
        // the holder of ticket `serving - 1` could have advanced, to exactly
        // `serving`) is still `serving`: ticket `serving` is ours and being
        // served. Relaxed on success: the Acquire load above already made the
        // previous holder's writes visible. A failure means the lock is held
        // or contended, and we return without spinning.
        self.next_ticket
            .compare_exchange(
                serving,
                serving.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Release the lock, admitting the next ticket in FIFO order.
    ///
    /// # Safety
    ///
    /// The caller must hold the lock: it returned from [`TicketLock::lock`]
    /// or got `true` from [`TicketLock::try_lock`] on this CPU (or handed the
    /// ownership over explicitly) and has not unlocked since. Unlocking a lock
    /// one does not hold would admit a second CPU into the critical section
    /// while the first is still in it.
    #[inline]
    pub unsafe fn unlock(&self) {
        // Relaxed: only the holder writes `now_serving`, and the holder
        // already observed its own ticket there (Acquire, in `lock` or
        // `try_lock`), so by coherence this reads that ticket.
        let ticket = self.now_serving.load(Ordering::Relaxed);
        // Release: pairs with the Acquire load in `lock`/`try_lock` of the
        // next holder, publishing everything written in this critical section.
        self.now_serving.store(
            ticket.wrapping_add(1),
            ordered(Site::TicketUnlock, Ordering::Release),
        );
    }

    /// Whether some CPU holds the lock at this instant.
    ///
    /// A snapshot, stale as soon as it is returned: use it for assertions and
    /// diagnostics, never to decide whether taking the lock is safe.
    #[inline]
    #[must_use]
    pub fn is_locked(&self) -> bool {
        self.queue_len() != 0
    }

    /// How many CPUs hold or are queued for the lock at this instant (the
    /// holder counts as one): a contention figure for diagnostics, stale as
    /// soon as it is returned.
    #[inline]
    #[must_use]
    pub fn queue_len(&self) -> u32 {
        // Acquire: if this reads a value `s` stored by `unlock`, it
        // synchronises with that Release store, whose CPU had drawn ticket
        // `s - 1`; so the Relaxed load of `next_ticket` below sees at least
        // `s` and the difference can never wrap to a huge "negative" length.
        // It can only overstate the queue by arrivals racing with this call.
        let serving = self
            .now_serving
            .load(ordered(Site::TicketQueueLenLoad, Ordering::Acquire));
        self.next_ticket
            .load(Ordering::Relaxed)
            .wrapping_sub(serving)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lock_unlock_and_is_locked() {
        let l = TicketLock::new();
        assert!(!l.is_locked());
        assert_eq!(l.queue_len(), 0);
        l.lock();
        assert!(l.is_locked());
        assert_eq!(l.queue_len(), 1);
        // SAFETY: this thread holds the lock, taken just above.
        unsafe { l.unlock() };
        assert!(!l.is_locked());
    }

    #[test]
    fn try_lock_fails_while_held_and_succeeds_when_free() {
        let l = TicketLock::new();
        assert!(l.try_lock());
        assert!(!l.try_lock());
        // SAFETY: held since the successful try_lock above.
        unsafe { l.unlock() };
        assert!(l.try_lock());
        // SAFETY: held since the successful try_lock above.
        unsafe { l.unlock() };
        assert!(!l.is_locked());
    }

    #[test]
    fn counters_wrap_around() {
        let l = TicketLock::new();
        l.next_ticket.store(u32::MAX, Ordering::Relaxed);
        l.now_serving.store(u32::MAX, Ordering::Relaxed);
        for _ in 0..3 {
            assert!(!l.is_locked());
            l.lock();
            assert!(!l.try_lock());
            // SAFETY: held since `lock` above.
            unsafe { l.unlock() };
        }
        assert_eq!(l.now_serving.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn threads_exclude_each_other() {
        const THREADS: usize = 4;
        const ROUNDS: usize = if cfg!(miri) { 50 } else { 2_000 };
        struct Shared {
            lock: TicketLock,
            inside: AtomicU32,
        }
        let s = Arc::new(Shared {
            lock: TicketLock::new(),
            inside: AtomicU32::new(0),
        });
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        s.lock.lock();
                        assert_eq!(s.inside.fetch_add(1, Ordering::Relaxed), 0);
                        s.inside.fetch_sub(1, Ordering::Relaxed);
                        // SAFETY: held since `lock` above.
                        unsafe { s.lock.unlock() };
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(!s.lock.is_locked());
        assert_eq!(
            s.lock.next_ticket.load(Ordering::Relaxed),
            u32::try_from(THREADS * ROUNDS).unwrap()
        );
    }
}
