//! loom models of `RendezvousBarrier`: across several phases every
//! participant's pre-barrier writes and the leader's action are visible to
//! every participant after the barrier, exactly one leader per phase, no
//! participant lost (loom reports a deadlock if one never returns), and no
//! participant of phase k+1 overtakes a straggler of phase k. A flawed copy
//! (leader chosen one arrival early) and, for each ordering of the barrier,
//! the real barrier with that ordering weakened must be rejected.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola_loom_tests::flawed::{ModelBarrier, OffByOneBarrier};
use isola_loom_tests::model::{bounded, exhaustive, twin};
use isola_sync::RendezvousBarrier;
use isola_sync::atomic::{AtomicUsize, Ordering, Site};
use isola_sync::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

/// What the participants share.
struct Shared<B> {
    barrier: B,
    /// `slots[p % 2][i]`: participant `i`'s write in phase `p`. Two rows, so
    /// that a participant starting phase `p + 1` writes a different row from
    /// the one stragglers of phase `p` may still be reading; the row of phase
    /// `p` is rewritten only in phase `p + 2`, after everyone has passed the
    /// barrier of phase `p + 1` (which a correct barrier guarantees). A
    /// barrier that let anyone overtake would make those accesses race.
    slots: [Vec<UnsafeCell<usize>>; 2],
    /// Written only by each phase's leader, in its action.
    completed: UnsafeCell<usize>,
    leaders: AtomicUsize,
}

fn participant<B: ModelBarrier>(shared: &Shared<B>, me: usize, phases: usize) {
    for phase in 0..phases {
        let row = &shared.slots[phase % 2];
        // SAFETY: only participant `me` writes its slot, and the barrier
        // orders this write after every read of it in phase `phase - 2`.
        row[me].with_mut(|v| unsafe { *v = phase + 1 });
        let led = shared.barrier.wait_with(|| {
            // The leader sees every participant's write of this phase...
            for slot in row {
                // SAFETY: reads ordered after the writes by the barrier.
                slot.with(|v| assert_eq!(unsafe { *v }, phase + 1));
            }
            // ...and the previous phase's action.
            // SAFETY: only leaders write `completed`, one per phase, each
            // ordered after the previous phase's readers by the barrier.
            shared.completed.with_mut(|c| unsafe {
                assert_eq!(*c, phase);
                *c = phase + 1;
            });
        });
        if led {
            shared.leaders.fetch_add(1, Ordering::Relaxed);
        }
        // Everyone sees every participant's write and the leader's action.
        for slot in row {
            // SAFETY: as in the action.
            slot.with(|v| assert_eq!(unsafe { *v }, phase + 1));
        }
        // SAFETY: the action's write happens-before this read (barrier).
        shared
            .completed
            .with(|c| assert_eq!(unsafe { *c }, phase + 1));
    }
}

/// `participants` threads pass `phases` barriers together.
fn phases<B: ModelBarrier>(participants: usize, phases: usize) {
    let shared = Arc::new(Shared {
        barrier: B::new(u32::try_from(participants).unwrap()),
        slots: [
            (0..participants).map(|_| UnsafeCell::new(0)).collect(),
            (0..participants).map(|_| UnsafeCell::new(0)).collect(),
        ],
        completed: UnsafeCell::new(0),
        leaders: AtomicUsize::new(0),
    });
    let handles: Vec<_> = (0..participants)
        .map(|me| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || participant(&shared, me, phases))
        })
        .collect();
    // Every participant returns from every phase (a lost participant would
    // leave the others spinning: loom reports that as a failure).
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(shared.leaders.load(Ordering::Relaxed), phases);
    // SAFETY: all participants have been joined.
    shared.completed.with(|c| assert_eq!(unsafe { *c }, phases));
}

#[test]
fn barrier_two_threads_three_phases() {
    exhaustive(|| phases::<RendezvousBarrier>(2, 3));
}

#[test]
fn barrier_three_threads_three_phases() {
    // Preemption bound 2: three threads' full state space is too large.
    bounded(2, || phases::<RendezvousBarrier>(3, 3));
}

#[test]
fn barrier_wait_returns_one_leader_and_single_participant_never_waits() {
    exhaustive(|| {
        let alone = RendezvousBarrier::new(1);
        assert!(alone.wait());
        assert!(alone.wait());
        let pair = Arc::new(RendezvousBarrier::new(2));
        let other = {
            let pair = Arc::clone(&pair);
            thread::spawn(move || pair.wait())
        };
        let mine = pair.wait();
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "exactly one leader");
    });
}

// Broken twins: the real barrier with one ordering weakened. One phase of
// two participants is enough to need each of them.

/// Arrival `Relaxed`: neither half of AcqRel.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_arrival_is_caught() {
    twin(Site::BarrierArrive, Ordering::Relaxed, || {
        phases::<RendezvousBarrier>(2, 1)
    });
}

/// Arrival without its Release half: an earlier arrival's writes do not
/// reach the leader.
#[test]
#[should_panic(expected = "Causality violation")]
fn arrival_without_release_is_caught() {
    twin(Site::BarrierArrive, Ordering::Acquire, || {
        phases::<RendezvousBarrier>(2, 1)
    });
}

/// Arrival without its Acquire half: the leader does not synchronise with
/// the earlier arrivals.
#[test]
#[should_panic(expected = "Causality violation")]
fn arrival_without_acquire_is_caught() {
    twin(Site::BarrierArrive, Ordering::Release, || {
        phases::<RendezvousBarrier>(2, 1)
    });
}

/// The leader's store of the new generation `Relaxed`: the waiters'
/// Acquire has nothing to synchronise with.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_release_of_the_waiters_is_caught() {
    twin(Site::BarrierRelease, Ordering::Relaxed, || {
        phases::<RendezvousBarrier>(2, 1)
    });
}

/// The waiters' spin `Relaxed`: they leave without synchronising with the
/// leader.
#[test]
#[should_panic(expected = "Causality violation")]
fn relaxed_wait_is_caught() {
    twin(Site::BarrierWait, Ordering::Relaxed, || {
        phases::<RendezvousBarrier>(2, 1)
    });
}

#[test]
#[should_panic]
fn off_by_one_leader_is_caught() {
    // Caught either as a race (the early leader reads a slot still being
    // written) or by an assertion (a second leader, or a missing write).
    exhaustive(|| phases::<OffByOneBarrier>(2, 2));
}
