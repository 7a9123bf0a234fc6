//! loom models of `TicketLock` and `Mutex`: mutual exclusion, data
//! visibility from one critical section to the next, FIFO order of tickets,
//! `try_lock` never blocking, `queue_len` never wrapping; and, for each
//! ordering of the lock, the real lock with that ordering weakened, which
//! loom must reject (for `queue_len`'s, a litmus model instead: see there).
//!
//! Data races are detected by loom itself: the data lives in
//! `isola_sync::cell::UnsafeCell` (loom's cell under `--cfg loom`), and an
//! access not ordered by happens-before after a conflicting one panics with
//! "Causality violation". The explicit asserts check what a race detector
//! cannot: counts, order, and return values.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola_loom_tests::model::{bounded, exhaustive, twin};
use isola_sync::atomic::{AtomicU32, Ordering, Site};
use isola_sync::cell::UnsafeCell;
use isola_sync::{Mutex, SpinWait, TicketLock};
use loom::sync::Arc;
use loom::thread;

/// `threads` threads each do a split read-modify-write of a counter inside
/// the mutex; with a yield between read and write so a missing exclusion
/// would lose an update.
fn mutex_counter(threads: usize) {
    let m = Arc::new(Mutex::new(0_usize));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                let mut g = m.lock();
                let v = *g;
                *g = v + 1;
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let g = m.try_lock().expect("free after all threads are done");
    assert_eq!(*g, threads);
}

#[test]
fn mutex_two_threads_exclude_and_publish() {
    exhaustive(|| mutex_counter(2));
}

#[test]
fn mutex_three_threads_exclude_and_publish() {
    // Preemption bound 3: without one, three threads took more than five
    // minutes (two of them spin at once).
    bounded(3, || mutex_counter(3));
}

/// A thread that takes the raw lock and appends `id` to the log it guards.
fn enter_and_log(
    shared: &Arc<(TicketLock, UnsafeCell<Vec<u32>>)>,
    id: u32,
) -> thread::JoinHandle<()> {
    let shared = Arc::clone(shared);
    thread::spawn(move || {
        shared.0.lock();
        // SAFETY: we hold the lock that guards the log.
        shared.1.with_mut(|log| unsafe { (*log).push(id) });
        // SAFETY: held since `lock` above.
        unsafe { shared.0.unlock() };
    })
}

/// The main thread holds the lock while `waiters` threads queue up one after
/// another (each spawned only once the previous one has drawn its ticket);
/// they must then enter in the order they queued.
fn fifo(waiters: u32) {
    let shared = Arc::new((TicketLock::new(), UnsafeCell::new(Vec::new())));
    shared.0.lock();
    let mut handles = Vec::new();
    for id in 1..=waiters {
        handles.push(enter_and_log(&shared, id));
        // Wait until this waiter has drawn its ticket (holder + id waiters).
        let mut wait = SpinWait::new();
        while shared.0.queue_len() != id + 1 {
            wait.spin();
        }
        // A latecomer's try_lock must not barge ahead of the queue.
        assert!(!shared.0.try_lock());
    }
    // SAFETY: the main thread took the lock above.
    unsafe { shared.0.unlock() };
    for h in handles {
        h.join().unwrap();
    }
    assert!(shared.0.try_lock());
    // SAFETY: we hold the lock (try_lock succeeded).
    let log = shared.1.with(|log| unsafe { (*log).clone() });
    // SAFETY: held since the successful try_lock above.
    unsafe { shared.0.unlock() };
    assert_eq!(log, (1..=waiters).collect::<Vec<_>>());
}

#[test]
fn tickets_are_served_in_fifo_order_two_waiters() {
    exhaustive(|| fifo(2));
}

#[test]
fn tickets_are_served_in_fifo_order_three_waiters() {
    // Preemption bound 3 (four threads in all).
    bounded(3, || fifo(3));
}

#[test]
fn try_lock_never_blocks_while_held() {
    exhaustive(|| {
        let lock = Arc::new(TicketLock::new());
        lock.lock();
        let other = {
            let lock = Arc::clone(&lock);
            // If `try_lock` waited, this thread would never finish while the
            // main thread holds the lock and joins it: loom would report the
            // livelock instead of passing.
            thread::spawn(move || lock.try_lock())
        };
        assert!(!other.join().unwrap());
        // SAFETY: the main thread took the lock above.
        unsafe { lock.unlock() };
        assert!(!lock.is_locked());
    });
}

#[test]
fn try_lock_contended_excludes_and_succeeds_when_free() {
    exhaustive(|| {
        let m = Arc::new(Mutex::new(0_u32));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let m = Arc::clone(&m);
                thread::spawn(move || match m.try_lock() {
                    Some(mut g) => {
                        *g += 1;
                        true
                    }
                    None => false,
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| u32::from(h.join().unwrap()))
            .sum::<u32>();
        // A try_lock fails only if the other thread held the lock at that
        // moment, so at least one of the two always gets in.
        assert!(wins >= 1);
        let g = m.try_lock().expect("nobody holds the lock any more");
        assert_eq!(*g, wins);
    });
}

/// Two threads each take the lock with `try_lock` and, if they got it,
/// bump the counter.
fn try_lock_contended() {
    let m = Arc::new(Mutex::new(0_u32));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let m = Arc::clone(&m);
            thread::spawn(move || match m.try_lock() {
                Some(mut g) => {
                    *g += 1;
                    true
                }
                None => false,
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| u32::from(h.join().unwrap()))
        .sum::<u32>();
    assert!(wins >= 1);
    let g = m.try_lock().expect("nobody holds the lock any more");
    assert_eq!(*g, wins);
}

/// `queue_len` read while another thread takes and releases the lock: the
/// holder and waiters only, never a wrapped "negative" length.
fn queue_len_racing_a_handoff() {
    let lock = Arc::new(TicketLock::new());
    let other = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || {
            lock.lock();
            unsafe { lock.unlock() };
        })
    };
    let n = lock.queue_len();
    assert!(n <= 1, "queue_len wrapped: {n}");
    other.join().unwrap();
}

#[test]
fn queue_len_never_wraps() {
    exhaustive(queue_len_racing_a_handoff);
}

// Broken twins: the real lock with one ordering weakened to `Relaxed`.

/// Without Acquire on the spin, the critical section is not ordered after
/// the previous one: the counter's read races with its last write.
#[test]
#[should_panic(expected = "Causality violation")]
fn weakened_lock_wait_is_caught() {
    twin(Site::TicketLockWait, Ordering::Relaxed, || mutex_counter(2));
}

/// Without Release on unlock, the next holder's Acquire has nothing to
/// synchronise with.
#[test]
#[should_panic(expected = "Causality violation")]
fn weakened_unlock_is_caught() {
    twin(Site::TicketUnlock, Ordering::Relaxed, || mutex_counter(2));
}

/// Without Acquire in `try_lock`, a successful attempt after a release
/// reads the counter unordered after the previous holder's write.
#[test]
#[should_panic(expected = "Causality violation")]
fn weakened_try_lock_load_is_caught() {
    twin(
        Site::TicketTryLockLoad,
        Ordering::Relaxed,
        try_lock_contended,
    );
}

/// `queue_len`'s Acquire has no twin that fails: with it weakened, the real
/// lock still passes [`queue_len_never_wraps`], because the unlocking thread
/// loads `now_serving` (in `lock` and `unlock`) before it stores it, and
/// such an extra load makes loom skip the execution that reads a stale
/// `next_ticket` (tokio-rs/loom#166, open). C11 and the Arm architecture
/// both allow that execution (two loads from different locations, the
/// first not Acquire), so the ordering stays. These litmus models are the
/// same two loads against a thread that draws ticket 0 and publishes
/// `now_serving = 1` without loading it first: loom finds the wrap with a
/// `Relaxed` first load, and none with `Acquire`.
fn queue_len_litmus(first_load: Ordering) {
    let counters = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
    let holder = {
        let c = Arc::clone(&counters);
        thread::spawn(move || {
            c.0.fetch_add(1, Ordering::Relaxed);
            c.1.store(1, Ordering::Release);
        })
    };
    let (next_ticket, now_serving) = (&counters.0, &counters.1);
    let serving = now_serving.load(first_load);
    let n = next_ticket.load(Ordering::Relaxed).wrapping_sub(serving);
    assert!(n <= 1, "queue_len wrapped: {n}");
    holder.join().unwrap();
}

#[test]
#[should_panic(expected = "queue_len wrapped")]
fn queue_len_litmus_with_a_relaxed_load_wraps() {
    exhaustive(|| queue_len_litmus(Ordering::Relaxed));
}

#[test]
fn queue_len_litmus_with_an_acquire_load_never_wraps() {
    exhaustive(|| queue_len_litmus(Ordering::Acquire));
}
