//! A reusable rendezvous barrier for a fixed number of participants.
//!
//! Invariants:
//! - `generation` counts completed phases. It is written only by the last
//!   arrival of a phase (the leader), and only after it has reset `arrived`
//!   to 0 and run the phase's action.
//! - A participant records the generation *before* announcing its arrival and
//!   leaves only when `generation` differs from it. Since phase `k + 1`
//!   cannot complete until every participant (including a straggler still
//!   spinning in phase `k`) has arrived again, `generation` can never wrap
//!   back to a value a spinner is waiting on: a fast participant arriving for
//!   phase `k + 1` cannot overtake or release a straggler of phase `k`.
//! - `arrived` and `generation` live in separate cache lines: arrivals write
//!   `arrived` while the waiters poll `generation`.

use crossbeam_utils::CachePadded;

use crate::shim::{AtomicU32, Ordering, Site, SpinWait, ordered};

/// An N-participant barrier, reusable for any number of phases.
#[derive(Debug)]
pub struct RendezvousBarrier {
    participants: u32,
    arrived: CachePadded<AtomicU32>,
    generation: CachePadded<AtomicU32>,
}

impl RendezvousBarrier {
    /// A barrier for `participants` CPUs (0 is treated as 1, so that `wait`
    /// can never hang on an impossible count).
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new(participants: u32) -> Self {
        Self {
            participants: if participants == 0 { 1 } else { participants },
            arrived: CachePadded::new(AtomicU32::new(0)),
            generation: CachePadded::new(AtomicU32::new(0)),
        }
    }

    /// A barrier for `participants` CPUs (not `const` under loom).
    #[cfg(loom)]
    #[must_use]
    pub fn new(participants: u32) -> Self {
        Self {
            participants: if participants == 0 { 1 } else { participants },
            arrived: CachePadded::new(AtomicU32::new(0)),
            generation: CachePadded::new(AtomicU32::new(0)),
        }
    }

    /// How many participants each phase waits for.
    #[inline]
    #[must_use]
    pub fn participants(&self) -> u32 {
        self.participants
    }

    /// Wait until all participants have arrived. Returns `true` for exactly
    /// one participant per phase: the last to arrive (the leader).
    ///
    /// Everything any participant did before `wait` happens-before everything
    /// every participant does after it.
    #[inline]
    pub fn wait(&self) -> bool {
        self.wait_with(|| {})
    }

    /// Like [`RendezvousBarrier::wait`], but the last participant to arrive
    /// runs `action` before anyone is released; every participant observes
    /// its effects once `wait_with` returns. Returns `true` for the
    /// participant that ran `action`.
    ///
    /// Every participant passes an action (usually the same one), since none
    /// knows in advance whether it will arrive last; the others' actions are
    /// dropped unrun. `action` must not wait on this barrier.
    ///
    /// Liveness rests on the callers: exactly `participants` CPUs must call
    /// in each phase (a missing one, or an extra one in the same phase, leaves
    /// the others spinning), and `action` must return (if it panicked, the
    /// waiters would never be released; at EL2 a panic is fatal anyway).
    #[inline]
    pub fn wait_with(&self, action: impl FnOnce()) -> bool {
        // Relaxed: this participant's last contact with `generation` was
        // observing (Acquire) or writing the end of the previous phase, and
        // the current phase cannot end without our arrival below, so by
        // coherence this reads the current phase's generation.
        let generation = self.generation.load(Ordering::Relaxed);
        // AcqRel: the Release half makes each arrival part of the release
        // sequence on `arrived`; the Acquire half lets the last arrival
        // synchronise with every earlier one, so all participants' pre-barrier
        // writes happen-before the leader's action and its release below.
        let before = self
            .arrived
            .fetch_add(1, ordered(Site::BarrierArrive, Ordering::AcqRel));
        if before.wrapping_add(1) == self.participants {
            // Relaxed: the next phase's arrivals happen after they observe
            // the new generation (Release below, Acquire in their spin), and
            // so after this reset.
            self.arrived.store(0, Ordering::Relaxed);
            action();
            // Release: pairs with the Acquire spin below, publishing every
            // participant's pre-barrier writes (gathered above) and the
            // action's effects to all the waiters.
            self.generation.store(
                generation.wrapping_add(1),
                ordered(Site::BarrierRelease, Ordering::Release),
            );
            true
        } else {
            // Acquire: pairs with the leader's Release store of the new
            // generation.
            let mut wait = SpinWait::new();
            while self
                .generation
                .load(ordered(Site::BarrierWait, Ordering::Acquire))
                == generation
            {
                wait.spin();
            }
            false
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn single_participant_never_waits() {
        let b = RendezvousBarrier::new(1);
        assert!(b.wait());
        assert!(b.wait());
        let mut ran = false;
        assert!(b.wait_with(|| ran = true));
        assert!(ran);
        assert_eq!(RendezvousBarrier::new(0).participants(), 1);
        assert!(RendezvousBarrier::new(0).wait());
    }

    #[test]
    fn phases_do_not_overlap_and_one_leader_per_phase() {
        const THREADS: usize = 4;
        const PHASES: usize = if cfg!(miri) { 5 } else { 100 };
        struct Shared {
            barrier: RendezvousBarrier,
            // Arrivals in each phase, and the action count.
            arrivals: Vec<AtomicUsize>,
            actions: AtomicUsize,
            leaders: AtomicUsize,
        }
        let s = Arc::new(Shared {
            barrier: RendezvousBarrier::new(u32::try_from(THREADS).unwrap()),
            arrivals: (0..PHASES).map(|_| AtomicUsize::new(0)).collect(),
            actions: AtomicUsize::new(0),
            leaders: AtomicUsize::new(0),
        });
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for phase in 0..PHASES {
                        s.arrivals[phase].fetch_add(1, Ordering::Relaxed);
                        let leader = s.barrier.wait_with(|| {
                            // The leader sees every arrival of this phase.
                            assert_eq!(s.arrivals[phase].load(Ordering::Relaxed), THREADS);
                            s.actions.fetch_add(1, Ordering::Relaxed);
                        });
                        if leader {
                            s.leaders.fetch_add(1, Ordering::Relaxed);
                        }
                        // Everyone sees every arrival and this phase's action.
                        assert_eq!(s.arrivals[phase].load(Ordering::Relaxed), THREADS);
                        assert!(s.actions.load(Ordering::Relaxed) > phase);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.actions.load(Ordering::Relaxed), PHASES);
        assert_eq!(s.leaders.load(Ordering::Relaxed), PHASES);
    }
}
