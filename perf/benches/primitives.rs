//! isola's primitives beside the usual alternatives, in one criterion run so
//! the groups report them side by side:
//!
//! - `uncontended`: one thread takes and releases the lock (and touches the
//!   data) in a loop; the cost of the lock on the engine's common path.
//! - `handoff`: two threads pass a token through the lock: each waits for its
//!   turn by taking the lock, checking whose turn it is and releasing it; one
//!   iteration is one handoff (the lock line moving between two CPUs).
//! - `barrier`: two threads pass a barrier together; one iteration is one
//!   rendezvous.
//!
//! Run with `cargo bench -p isola-perf --bench primitives`. Measurement time
//! is kept short (the machine is shared); figures are in docs/primitives.md.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a benchmark, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};

/// The one operation every lock under test offers: run `f` on the data
/// while holding the lock.
trait BenchLock: Send + Sync {
    const NAME: &'static str;
    fn new(value: u64) -> Self;
    fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R;
}

impl BenchLock for isola_sync::Mutex<u64> {
    const NAME: &'static str = "isola::Mutex";
    fn new(value: u64) -> Self {
        isola_sync::Mutex::new(value)
    }
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        f(&mut self.lock())
    }
}

/// The raw ticket lock guarding a separate cell, as the engine does where
/// the guarded state cannot live inside the lock.
struct RawTicket {
    lock: isola_sync::TicketLock,
    value: std::cell::UnsafeCell<u64>,
}

// SAFETY: `value` is only accessed while `lock` is held (in `with`).
unsafe impl Sync for RawTicket {}

impl BenchLock for RawTicket {
    const NAME: &'static str = "isola::TicketLock";
    fn new(value: u64) -> Self {
        Self {
            lock: isola_sync::TicketLock::new(),
            value: std::cell::UnsafeCell::new(value),
        }
    }
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        self.lock.lock();
        // SAFETY: we hold the lock, which guards `value`.
        let r = f(unsafe { &mut *self.value.get() });
        // SAFETY: taken just above.
        unsafe { self.lock.unlock() };
        r
    }
}

impl BenchLock for spin::mutex::TicketMutex<u64> {
    const NAME: &'static str = "spin::TicketMutex";
    fn new(value: u64) -> Self {
        spin::mutex::TicketMutex::new(value)
    }
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        f(&mut self.lock())
    }
}

impl BenchLock for spin::Mutex<u64> {
    const NAME: &'static str = "spin::Mutex";
    fn new(value: u64) -> Self {
        spin::Mutex::new(value)
    }
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        f(&mut self.lock())
    }
}

impl BenchLock for std::sync::Mutex<u64> {
    const NAME: &'static str = "std::Mutex";
    fn new(value: u64) -> Self {
        std::sync::Mutex::new(value)
    }
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        f(&mut self.lock().unwrap())
    }
}

fn uncontended_one<L: BenchLock>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let lock = L::new(0);
    group.bench_function(L::NAME, |b| {
        b.iter(|| lock.with(|v| *v = v.wrapping_add(black_box(1))));
    });
}

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("uncontended");
    uncontended_one::<isola_sync::Mutex<u64>>(&mut group);
    uncontended_one::<RawTicket>(&mut group);
    uncontended_one::<spin::mutex::TicketMutex<u64>>(&mut group);
    uncontended_one::<spin::Mutex<u64>>(&mut group);
    uncontended_one::<std::sync::Mutex<u64>>(&mut group);
    group.finish();
}

/// Take turns `me` (0 or 1) of a two-player game for `rounds` rounds: turn
/// number `2k + me` is ours; taking it means incrementing the counter.
fn play<L: BenchLock>(lock: &L, me: u64, rounds: u64) {
    for k in 0..rounds {
        let turn = 2 * k + me;
        while !lock.with(|t| {
            let mine = *t == turn;
            if mine {
                *t += 1;
            }
            mine
        }) {
            std::hint::spin_loop();
        }
    }
}

fn handoff_one<L: BenchLock>(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.bench_function(L::NAME, |b| {
        b.iter_custom(|rounds| {
            let lock = L::new(0);
            let start = Instant::now();
            std::thread::scope(|s| {
                s.spawn(|| play(&lock, 1, rounds));
                play(&lock, 0, rounds);
            });
            let elapsed = start.elapsed();
            assert_eq!(lock.with(|t| *t), 2 * rounds);
            elapsed
        });
    });
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    handoff_one::<isola_sync::Mutex<u64>>(&mut group);
    handoff_one::<RawTicket>(&mut group);
    handoff_one::<spin::mutex::TicketMutex<u64>>(&mut group);
    handoff_one::<spin::Mutex<u64>>(&mut group);
    handoff_one::<std::sync::Mutex<u64>>(&mut group);
    group.finish();
}

/// A barrier under test, for two participants.
trait BenchBarrier: Send + Sync {
    const NAME: &'static str;
    fn new() -> Self;
    fn wait(&self);
}

impl BenchBarrier for isola_sync::RendezvousBarrier {
    const NAME: &'static str = "isola::RendezvousBarrier";
    fn new() -> Self {
        isola_sync::RendezvousBarrier::new(2)
    }
    #[inline]
    fn wait(&self) {
        black_box(isola_sync::RendezvousBarrier::wait(self));
    }
}

impl BenchBarrier for spin::Barrier {
    const NAME: &'static str = "spin::Barrier";
    fn new() -> Self {
        spin::Barrier::new(2)
    }
    #[inline]
    fn wait(&self) {
        black_box(spin::Barrier::wait(self));
    }
}

impl BenchBarrier for std::sync::Barrier {
    const NAME: &'static str = "std::Barrier";
    fn new() -> Self {
        std::sync::Barrier::new(2)
    }
    #[inline]
    fn wait(&self) {
        black_box(std::sync::Barrier::wait(self));
    }
}

fn barrier_one<B: BenchBarrier>(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.bench_function(B::NAME, |b| {
        b.iter_custom(|rounds| {
            let barrier = B::new();
            let start = Instant::now();
            std::thread::scope(|s| {
                s.spawn(|| (0..rounds).for_each(|_| barrier.wait()));
                (0..rounds).for_each(|_| barrier.wait());
            });
            start.elapsed()
        });
    });
}

fn barrier(c: &mut Criterion) {
    let mut group = c.benchmark_group("barrier");
    barrier_one::<isola_sync::RendezvousBarrier>(&mut group);
    barrier_one::<spin::Barrier>(&mut group);
    barrier_one::<std::sync::Barrier>(&mut group);
    group.finish();
}

criterion_group! {
    name = primitives;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = uncontended, handoff, barrier
}
criterion_main!(primitives);
