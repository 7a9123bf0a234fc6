//! Model checks of isola's primitives (and, in `tests/ownership*.rs`, of the
//! engine's ownership protocols). The models live in `tests/` and only build
//! with `RUSTFLAGS="--cfg loom"`; without it this crate is empty.
//!
//! This library holds what the models share: [`model`] (how a model is run:
//! exhaustively, with a stated preemption bound, or as a broken twin of the
//! real code with one memory ordering weakened) and [`flawed`] (a
//! deliberately broken copy of the barrier that loom must reject). So every
//! passing model is known to be able to fail. They are built only from
//! `isola_sync`'s public shim re-exports, so they never leak into the engine
//! API.
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

    /// Explore every interleaving (no preemption bound; the spin-loop
    /// reduction of `isola_sync::SpinWait` still applies). Returns how many
    /// executions loom explored: the number loom itself reports as
    /// "Completed in N iterations" under `LOOM_LOG=info` when a model runs
    /// through `loom::model` (these helpers use `Builder::check` to set the
    /// bound in code, which installs no logger, so they count themselves).
    pub fn exhaustive<F>(f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        run(None, f)
    }

    /// [`exhaustive`] for a model whose executions take more than loom's
    /// default 1 000 branches (scheduling points), e.g. a call that changes
    /// a 2 MiB shard's 512 records, each change an atomic store of the
    /// shard's published counts: every interleaving still, with
    /// `max_branches` as the per-execution limit (loom panics if exceeded).
    pub fn exhaustive_long<F>(max_branches: usize, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        run_with(None, max_branches, f)
    }

    /// Explore every interleaving with at most `bound` preemptions per
    /// execution. Used for the models of three threads spinning on one
    /// lock or barrier, whose full state space is too large for the suite's
    /// time budget. Returns how many executions loom explored.
    pub fn bounded<F>(bound: usize, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        run(Some(bound), f)
    }

    /// A broken twin: `f` explored with no preemption bound while the
    /// access at `site` uses `to` instead of its own ordering (see
    /// `isola_sync::atomic::Site`). For `#[should_panic]` tests: a model that
    /// passes on the real code must fail here, or the ordering is not needed.
    pub fn twin<F>(site: isola_sync::atomic::Site, to: isola_sync::atomic::Ordering, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        eprintln!("loom: twin with {site:?} weakened to {to:?}");
        isola_sync::atomic::weakened(site, to, || run(None, f))
    }

    fn run<F>(bound: Option<usize>, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        run_with(bound, loom::model::Builder::new().max_branches, f)
    }

    fn run_with<F>(bound: Option<usize>, max_branches: usize, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        // A real (not loom) atomic: it counts model executions from outside
        // the model and must not be part of what loom explores.
        let executions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&executions);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = bound;
        builder.max_branches = max_branches;
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
pub mod flawed {
    //! A deliberately broken copy of a primitive, for a flaw that is not an
    //! ordering (ordering flaws are made in the real code instead, with
    //! [`crate::model::twin`]). A `#[should_panic]` model shows that loom
    //! rejects it.

    use isola_sync::SpinWait;
    use isola_sync::atomic::{AtomicU32, Ordering};

    /// The barrier API the barrier models are written against, so the same
    /// model runs on the real barrier and on the flawed one.
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

    /// The real barrier's algorithm with the leader chosen one arrival
    /// early (`before + 2 == participants`), so a phase ends before the last
    /// participant has arrived.
    #[derive(Debug)]
    pub struct OffByOneBarrier {
        participants: u32,
        arrived: AtomicU32,
        generation: AtomicU32,
    }

    impl ModelBarrier for OffByOneBarrier {
        fn new(participants: u32) -> Self {
            Self {
                participants,
                arrived: AtomicU32::new(0),
                generation: AtomicU32::new(0),
            }
        }

        fn wait_with(&self, action: impl FnOnce()) -> bool {
            let generation = self.generation.load(Ordering::Relaxed);
            let before = self.arrived.fetch_add(1, Ordering::AcqRel);
            // THE FLAW: should be `before + 1`.
            if before.wrapping_add(2) == self.participants {
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
}
