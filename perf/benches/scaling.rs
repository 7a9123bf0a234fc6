//! Scaling of the engine's ownership operations with CPUs, on the host.
//!
//! Each thread plays one host CPU driving its own VM through rounds of mixed
//! work, every call through `Engine::host_call` exactly as the exception
//! vector makes it: `VmCreate` (a 16-page pool), `Donate` 16 pages,
//! `Accounting(Totals)`, `Share` and `Unshare` one page 16 times,
//! `VmDestroy`, `Accounting(Sharing)`, `Reclaim` the 16 pages. `VmCreate`
//! scans the VM table and `Accounting` reads every shard and every slot, so
//! each round touches the other threads' state too: that they need no lock
//! of the others' is what this measures (issue 17).
//! A round leaves the machine as it found it, so rounds repeat forever.
//! Each thread's pages lie in their own 2 MiB ownership shard.
//!
//! Two variants at every thread count from 1 to `available_parallelism`:
//! - `sharded`: the engine as it is (per-shard and per-VM locks);
//! - `global-lock`: the same calls, each made under one process-wide lock,
//!   the design the sharding is meant to beat.
//!
//! Criterion reports time per round per thread (all threads run `iters`
//! rounds at once; the time is the wall time until the last finishes). The
//! figure of merit is the speed-up over one thread, `n * t(1) / t(n)`,
//! printed per thread count after the run and plotted by `cargo xtask bench`
//! (`docs/figures/scaling.svg`).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a benchmark, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use isola::arch::NoopArch;
use isola::engine::Engine;
use isola::hypercall::HostCallOutcome;
use isola::testing::MachineSpec;
use isola_abi::{Accounting, HostCall, Status, perms};

/// Pages per 2 MiB shard.
const SHARD_PAGES: u64 = 512;
/// Pool pages each round's VM gets.
const POOL: u64 = 16;
/// Guest pages donated (and reclaimed) per round.
const DONATED: u64 = 16;
/// Share/unshare pairs per round.
const SHARES: u64 = 16;
/// Criterion group name (also the directory its estimates are saved in).
const GROUP: &str = "scaling";

/// One benchmark machine: the engine and how many threads it serves.
struct Machine {
    engine: Engine<NoopArch>,
    spec: MachineSpec,
}

impl Machine {
    /// A machine with the engine's own shard first, then one shard per
    /// thread.
    fn new(threads: usize) -> Self {
        let spec = MachineSpec {
            ram_base: 0x4000_0000,
            ram_pages: SHARD_PAGES * (threads as u64 + 1),
            engine_pages: SHARD_PAGES,
            vm_slots: threads.max(2),
            shard_shift: 21,
            cpus: threads + 2,
            caches: isola::handover::CachePolicy::MAINTAIN_ALL,
        };
        Self {
            engine: spec.build(NoopArch),
            spec,
        }
    }

    /// Thread `t`'s page `i` (within its own shard).
    fn page(&self, t: usize, i: u64) -> u64 {
        self.spec.page(SHARD_PAGES * (t as u64 + 1) + i).raw()
    }
}

/// Makes one host call on `cpu`; its `x0..=x1`.
fn call(e: &Engine<NoopArch>, cpu: u32, c: HostCall, a: [u64; 4]) -> [u64; 2] {
    let mut regs = [c as u64, a[0], a[1], a[2], a[3], 0, 0];
    match e.host_call(cpu, &mut regs) {
        HostCallOutcome::Done => [regs[0], regs[1]],
        HostCallOutcome::Run(_) => panic!("not a VcpuRun"),
    }
}

/// One round of thread `t`'s work; `lock` (the global-lock variant) is
/// taken around every call.
fn round(m: &Machine, t: usize, lock: Option<&Mutex<()>>) {
    let cpu = t as u32;
    let e = &m.engine;
    let go = |c: HostCall, a: [u64; 4]| {
        let _g = lock.map(|l| l.lock().unwrap());
        let r = call(e, cpu, c, a);
        assert_eq!(r[0], Status::Success.raw(), "{c:?} {a:x?} on thread {t}");
        r[1]
    };
    let pool = m.page(t, 0);
    let vm = go(HostCall::VmCreate, [pool, POOL, 1, 0]);
    for i in 0..DONATED {
        go(
            HostCall::Donate,
            [
                vm,
                m.page(t, POOL + i),
                0x8000_0000 + i * 4096,
                perms::R | perms::W,
            ],
        );
    }
    go(HostCall::Accounting, [Accounting::Totals as u64, 0, 0, 0]);
    let shared = m.page(t, POOL + DONATED);
    for _ in 0..SHARES {
        go(HostCall::Share, [vm, shared, 0x9000_0000, perms::R]);
        go(HostCall::Unshare, [vm, shared, 0x9000_0000, 0]);
    }
    go(HostCall::VmDestroy, [vm, 0, 0, 0]);
    go(HostCall::Accounting, [Accounting::Sharing as u64, 0, 0, 0]);
    for i in 0..DONATED {
        go(HostCall::Reclaim, [m.page(t, POOL + i), 0, 0, 0]);
    }
}

/// Runs `iters` rounds on each of `threads` threads at once; the wall time
/// from the first thread's start to the last one's end (each thread reads
/// the clock itself: the spawning thread may not run again until they end).
fn timed(m: &Machine, threads: usize, iters: u64, lock: Option<&Mutex<()>>) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        round(black_box(m), t, lock);
                    }
                    (t0, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> =
            workers.into_iter().map(|w| w.join().unwrap()).collect();
        let first = spans.iter().map(|s| s.0).min().unwrap();
        let last = spans.iter().map(|s| s.1).max().unwrap();
        last.saturating_duration_since(first)
    })
}

fn thread_counts() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (1..=n).collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group(GROUP);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let global = Mutex::new(());
    for n in thread_counts() {
        g.throughput(Throughput::Elements(n as u64));
        let sharded = Machine::new(n);
        g.bench_with_input(BenchmarkId::new("sharded", n), &n, |b, &n| {
            b.iter_custom(|iters| timed(&sharded, n, iters, None));
        });
        let locked = Machine::new(n);
        g.bench_with_input(BenchmarkId::new("global-lock", n), &n, |b, &n| {
            b.iter_custom(|iters| timed(&locked, n, iters, Some(&global)));
        });
    }
    g.finish();
}

/// Where criterion saved its estimates (its own rule: `CRITERION_HOME`,
/// else `<CARGO_TARGET_DIR>/criterion`, else `target/criterion`).
fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("criterion")
}

/// Prints the speed-up over one thread for each variant and thread count,
/// from criterion's saved estimates (its headline figure), as `scaling <variant> <threads> <ns per
/// round> <speed-up>` lines (what `cargo xtask bench` plots).
fn report() {
    let dir = criterion_dir();
    for variant in ["sharded", "global-lock"] {
        let one = isola_perf::estimates::load_typical_ns(&dir, GROUP, &format!("{variant}/1"));
        for n in thread_counts() {
            let Some(t) =
                isola_perf::estimates::load_typical_ns(&dir, GROUP, &format!("{variant}/{n}"))
            else {
                println!("scaling {variant} {n}: no estimate in {}", dir.display());
                continue;
            };
            let speedup = one.map_or(f64::NAN, |one| n as f64 * one / t);
            println!("scaling {variant} {n} {t:.0} {speedup:.3}");
        }
    }
}

fn main() {
    // A correctness pass first (also what `cargo test --benches` runs): a
    // round must succeed, and leave the page counts as they were.
    let m = Machine::new(1);
    let before = m.engine.db().totals();
    round(&m, 0, None);
    assert_eq!(
        m.engine.db().totals(),
        before,
        "a round must leave the machine as it found it"
    );

    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    // Only `cargo bench` (which passes `--bench`) measures; `cargo test
    // --benches` runs each benchmark once and leaves nothing to report.
    if std::env::args().any(|a| a == "--bench") {
        report();
    }
}
