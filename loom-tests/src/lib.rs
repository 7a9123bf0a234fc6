//! Model checks of isola's primitives (and, in `tests/ownership*.rs`, of the
//! engine's ownership protocols). The models live in `tests/` and only build
//! with `RUSTFLAGS="--cfg loom"`; without it this crate is empty.
//!
//! This library holds what the models share: [`model`] (how a model is run:
//! exhaustively or with a stated preemption bound) and [`flawed`]
//! (deliberately broken copies of the primitives that loom must reject, so
//! that every passing model is known to be able to fail). They are built
//! only from `isola_sync`'s public shim re-exports, so they never leak into
//! the engine API.
#![deny(unsafe_code)]

#[cfg(loom)]
pub mod model {
    //! How the models are run.
    //!
    //! `loom::model::Builder::new()` takes its defaults from `LOOM_*`
    //! environment variables; these helpers override the preemption bound in
    //! code, so a model's bound is what its source says whatever the
    //! environment.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Explore every interleaving (no preemption bound). Used for the
    /// two-thread models. Returns how many executions loom explored.
    pub fn exhaustive<F>(f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        run(None, f)
    }

    /// Explore every interleaving with at most `bound` preemptions per
    /// execution. Used for the three-thread models, whose full state space
    /// is too large for the suite's time budget. Returns how many executions
    /// loom explored.
    pub fn bounded<F>(bound: usize, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        run(Some(bound), f)
    }

    fn run<F>(bound: Option<usize>, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        // A real (not loom) atomic: it counts model executions from outside
        // the model and must not be part of what loom explores.
        let executions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&executions);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = bound;
        builder.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        });
        let n = executions.load(Ordering::Relaxed);
        eprintln!("loom: {n} executions (preemption bound {bound:?})");
        n
    }
}

#[cfg(loom)]
#[allow(
    unsafe_code,
    reason = "the broken twins reach their data as the primitives they copy do"
)]
pub mod flawed {
    //! Deliberately broken copies of the primitives. Each differs from the
    //! real one in exactly the way its doc comment states, and a
    //! `#[should_panic]` model shows that loom rejects it.

    use isola_sync::SpinWait;
    use isola_sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A ticket lock whose `unlock` stores `now_serving` with `Relaxed`
    /// instead of `Release`: the next holder's Acquire spin then has nothing
    /// to synchronise with, so the previous critical section's writes do not
    /// happen-before the next one's reads.
    #[derive(Debug)]
    pub struct RelaxedUnlockTicketLock {
        next_ticket: AtomicU32,
        now_serving: AtomicU32,
    }

    impl Default for RelaxedUnlockTicketLock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl RelaxedUnlockTicketLock {
        pub fn new() -> Self {
            Self {
                next_ticket: AtomicU32::new(0),
                now_serving: AtomicU32::new(0),
            }
        }

        pub fn lock(&self) {
            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            let mut wait = SpinWait::new();
            while self.now_serving.load(Ordering::Acquire) != ticket {
                wait.spin();
            }
        }

        /// Release the lock. (Not `unsafe` only because this type exists to
        /// be misused in a model.)
        pub fn unlock(&self) {
            let ticket = self.now_serving.load(Ordering::Relaxed);
            // THE FLAW: should be `Release`.
            self.now_serving
                .store(ticket.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// The barrier API the barrier models are written against, so the same
    /// model runs on the real barrier and on the flawed ones.
    pub trait ModelBarrier: Send + Sync + 'static {
        fn new(participants: u32) -> Self;
        fn wait_with(&self, action: impl FnOnce()) -> bool;
    }

    impl ModelBarrier for isola_sync::RendezvousBarrier {
        fn new(participants: u32) -> Self {
            isola_sync::RendezvousBarrier::new(participants)
        }
        fn wait_with(&self, action: impl FnOnce()) -> bool {
            isola_sync::RendezvousBarrier::wait_with(self, action)
        }
    }

    /// How a [`FlawedBarrier`] is broken.
    #[derive(Clone, Copy, Debug)]
    pub enum BarrierFlaw {
        /// Arrivals are counted with a `Relaxed` RMW instead of `AcqRel`, so
        /// a participant's pre-barrier writes need not reach the others.
        RelaxedArrival,
        /// The leader is chosen one arrival early (`before + 2 ==
        /// participants`), so the phase ends before the last participant
        /// has arrived.
        OffByOneLeader,
    }

    /// The real barrier's algorithm with one [`BarrierFlaw`], chosen by the
    /// type parameter (0 = `RelaxedArrival`, 1 = `OffByOneLeader`) so that it
    /// can implement [`ModelBarrier::new`].
    #[derive(Debug)]
    pub struct FlawedBarrier<const FLAW: u8> {
        participants: u32,
        arrived: AtomicU32,
        generation: AtomicU32,
    }

    /// [`BarrierFlaw::RelaxedArrival`].
    pub type RelaxedArrivalBarrier = FlawedBarrier<0>;
    /// [`BarrierFlaw::OffByOneLeader`].
    pub type OffByOneBarrier = FlawedBarrier<1>;

    impl<const FLAW: u8> FlawedBarrier<FLAW> {
        pub fn flaw(&self) -> BarrierFlaw {
            if FLAW == 0 {
                BarrierFlaw::RelaxedArrival
            } else {
                BarrierFlaw::OffByOneLeader
            }
        }
    }

    impl<const FLAW: u8> ModelBarrier for FlawedBarrier<FLAW> {
        fn new(participants: u32) -> Self {
            Self {
                participants,
                arrived: AtomicU32::new(0),
                generation: AtomicU32::new(0),
            }
        }

        fn wait_with(&self, action: impl FnOnce()) -> bool {
            let flaw = self.flaw();
            let generation = self.generation.load(Ordering::Relaxed);
            let arrival_order = match flaw {
                // THE FLAW: should be `AcqRel`.
                BarrierFlaw::RelaxedArrival => Ordering::Relaxed,
                BarrierFlaw::OffByOneLeader => Ordering::AcqRel,
            };
            let before = self.arrived.fetch_add(1, arrival_order);
            let leader_at = match flaw {
                BarrierFlaw::RelaxedArrival => before.wrapping_add(1),
                // THE FLAW: should be `before + 1`.
                BarrierFlaw::OffByOneLeader => before.wrapping_add(2),
            };
            if leader_at == self.participants {
                self.arrived.store(0, Ordering::Relaxed);
                action();
                self.generation
                    .store(generation.wrapping_add(1), Ordering::Release);
                true
            } else {
                let mut wait = SpinWait::new();
                while self.generation.load(Ordering::Acquire) == generation {
                    wait.spin();
                }
                false
            }
        }
    }

    /// A per-CPU slot claim whose flag is taken and cleared with `Relaxed`
    /// instead of `Acquire`/`Release`: exclusion still holds (the swap is
    /// atomic) but one claimant's writes need not happen-before the next
    /// claimant's reads when two threads share a CPU index.
    #[derive(Debug)]
    pub struct RelaxedClaimSlot<T> {
        busy: AtomicBool,
        value: isola_sync::cell::UnsafeCell<T>,
    }

    impl<T> RelaxedClaimSlot<T> {
        pub fn new(value: T) -> Self {
            Self {
                busy: AtomicBool::new(false),
                value: isola_sync::cell::UnsafeCell::new(value),
            }
        }

        /// Run `f` on the value if the slot is free; `None` if busy.
        pub fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
            // THE FLAW: should be `Acquire`.
            if self.busy.swap(true, Ordering::Relaxed) {
                return None;
            }
            // SAFETY: the swap above claimed the slot, so no other `&mut T`
            // exists until the store below; the reference does not escape
            // `f`. (The flaw is in ordering, which loom catches, not in
            // exclusion.)
            let r = self.value.with_mut(|p| f(unsafe { &mut *p }));
            // THE FLAW: should be `Release`.
            self.busy.store(false, Ordering::Relaxed);
            Some(r)
        }
    }

    // SAFETY: as for `isola_percpu::PerCpu`: the flag gives one thread at a
    // time access to the value (the flawed ordering is a visibility bug that
    // loom reports, not an aliasing one).
    unsafe impl<T: Send> Sync for RelaxedClaimSlot<T> {}
}
