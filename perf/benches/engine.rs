//! Per-operation costs of the engine core, on the host (`NoopArch`: the TLBI
//! and barrier instructions are not executed, so these are the engine's own
//! costs; hardware adds the TLBI/DSB latency on top).
//!
//! - `donate_map/isolated`: `Donate` of one page to an IPA 2 MiB away from
//!   any other, so each call also builds a last-level table (worst case).
//! - `donate_map/batch512`: 512 `Donate`s to consecutive IPAs (one table
//!   fill), reported per page.
//! - `unmap/stage2_page`: removing one 4 KiB mapping from a Stage-2
//!   (break-before-make sequence requested, no instruction cost).
//! - `relinquish/page`: a guest gives a page back (unmap + 4 KiB scrub).
//! - `host_abort/block2m` and `host_abort/page4k`: a host Stage-2 fault on
//!   RAM the host may access, in a 2 MiB region that is all the host's or
//!   not. Since the host's RAM is mapped at boot (issue 13) such a fault
//!   only follows a split that failed for want of a table, so this measures
//!   the check and the walk that finds the page mapped (or maps it again).
//! - `walk/translate`: a Stage-2 walk of a mapped IPA.
//!
//! Thread scaling on distinct VMs, against a global lock, is measured by
//! `benches/scaling.rs`.
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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isola::abi::{HostCall, Status, perms};
use isola::addr::{Ipa, PhysAddr};
use isola::arch::NoopArch;
use isola::engine::{Engine, HostAbortAction};
use isola::hypercall::{GuestExitAction, HostCallOutcome};
use isola::testing::MachineSpec;

/// 16 MiB of RAM: shard 0 holds the engine's pages, pools live in shard 1,
/// donated pages come from shards 2..8.
const SPEC: MachineSpec = MachineSpec {
    ram_base: 0x4000_0000,
    ram_pages: 4096,
    engine_pages: 16,
    vm_slots: 4,
    shard_shift: 21,
    cpus: 4,
    caches: isola::handover::CachePolicy::MAINTAIN_ALL,
};
/// Pages available for donation per round.
const ROUND: u64 = 3072;
const FIRST: u64 = 1024;
const POOL_AT: u64 = 512;
const POOL: u64 = 480;

struct Bench {
    e: Engine<NoopArch>,
    vm: u64,
}

fn call(e: &Engine<NoopArch>, c: HostCall, a: [u64; 4]) -> (Status, [u64; 3]) {
    let mut regs = [c as u64, a[0], a[1], a[2], a[3], 0, 0];
    let HostCallOutcome::Done = e.host_call(0, &mut regs) else {
        panic!("unexpected run")
    };
    (
        Status::from_raw(regs[0] as i64).unwrap(),
        [regs[1], regs[2], regs[3]],
    )
}

fn ok(e: &Engine<NoopArch>, c: HostCall, a: [u64; 4]) -> [u64; 3] {
    let (s, r) = call(e, c, a);
    assert_eq!(s, Status::Success, "{c:?} {a:x?}");
    r
}

impl Bench {
    fn new() -> Self {
        let e = SPEC.build(NoopArch);
        let vm = ok(
            &e,
            HostCall::VmCreate,
            [SPEC.page(POOL_AT).raw(), POOL, 1, 0],
        )[0];
        Bench { e, vm }
    }

    /// Untimed: destroy the VM, reclaim what it owned, make a fresh one.
    fn reset(&mut self, donated: u64) {
        ok(&self.e, HostCall::VmDestroy, [self.vm, 0, 0, 0]);
        for i in 0..donated {
            ok(
                &self.e,
                HostCall::Reclaim,
                [SPEC.page(FIRST + i).raw(), 0, 0, 0],
            );
        }
        self.vm = ok(
            &self.e,
            HostCall::VmCreate,
            [SPEC.page(POOL_AT).raw(), POOL, 1, 0],
        )[0];
    }

    /// Donates `n` pages; IPAs `stride` bytes apart. Returns the time taken.
    fn donate(&self, n: u64, stride: u64) -> Duration {
        let t = Instant::now();
        for i in 0..n {
            let args = [
                self.vm,
                SPEC.page(FIRST + i).raw(),
                0x8000_0000 + i * stride,
                perms::R | perms::W,
            ];
            let mut regs = [
                HostCall::Donate as u64,
                args[0],
                args[1],
                args[2],
                args[3],
                0,
                0,
            ];
            black_box(self.e.host_call(0, &mut regs));
            debug_assert_eq!(regs[0], 0);
        }
        t.elapsed()
    }
}

/// Runs `iters` timed operations in rounds of at most `round`, resetting
/// (untimed) between rounds.
fn rounds(
    b: &mut Bench,
    iters: u64,
    round: u64,
    mut f: impl FnMut(&mut Bench, u64) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(round);
        total += f(b, n);
        b.reset(n);
        left -= n;
    }
    total
}

fn donate_map(c: &mut Criterion) {
    let mut g = c.benchmark_group("donate_map");
    let mut b = Bench::new();
    // An isolated page: each donation needs its own L3 table (the pool has
    // room for 480 tables, so rounds stop short of it).
    g.throughput(Throughput::Elements(1));
    g.bench_function("isolated", |bch| {
        bch.iter_custom(|iters| rounds(&mut b, iters, 400, |b, n| b.donate(n, 2 << 20)))
    });
    g.throughput(Throughput::Elements(512));
    g.bench_function("batch512", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += b.donate(512, 4096);
                b.reset(512);
            }
            total
        })
    });
    g.finish();
    let _ = ROUND;
}

fn unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmap");
    g.throughput(Throughput::Elements(1));
    let b = Bench::new();
    ok(&b.e, HostCall::VcpuCreate, [b.vm, 0, 0x8000_0000, 0]);
    g.bench_function("relinquish_page", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(512);
                b.donate(n, 4096);
                let mut regs = [HostCall::VcpuRun as u64, b.vm, 0, 0, 0, 0, 0];
                let HostCallOutcome::Run(l) = b.e.host_call(1, &mut regs) else {
                    panic!()
                };
                let t = Instant::now();
                for i in 0..n {
                    let r = b.e.guest_hvc(
                        &l,
                        [
                            isola::abi::GuestCall::Relinquish as u64,
                            0x8000_0000 + i * 4096,
                            0,
                            0,
                            0,
                            0,
                            0,
                        ],
                    );
                    black_box(r == GuestExitAction::Resume);
                }
                total += t.elapsed();
                b.e.finish_run(l, isola::abi::Exit::WFI, &mut regs);
                left -= n;
            }
            total
        })
    });
    g.finish();
}

fn host_abort(c: &mut Criterion) {
    let mut g = c.benchmark_group("host_abort");
    g.throughput(Throughput::Elements(1));
    let esr = isola::abort::data_abort_esr(8, false, 0, false, true, 0b000111);
    let fault = |e: &Engine<NoopArch>, pa: u64| {
        let r = e.host_abort(0, esr, pa, (pa >> 12) << 4);
        debug_assert_eq!(r, HostAbortAction::Retry);
        black_box(r);
    };
    // A 2 MiB block per fault: shards 2..8 are all the host's. A fresh
    // machine every 6 faults (setup untimed).
    g.bench_function("block2m", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let e = SPEC.build(NoopArch);
                let n = left.min(6);
                let t = Instant::now();
                for i in 0..n {
                    fault(&e, SPEC.page(1024 + i * 512).raw());
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });
    // Shard 0 holds the engine's pages: the host gets 4 KiB pages there.
    g.bench_function("page4k", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let e = SPEC.build(NoopArch);
                let n = left.min(480);
                let t = Instant::now();
                for i in 0..n {
                    fault(&e, SPEC.page(16 + i).raw());
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

fn walk(c: &mut Criterion) {
    let mut g = c.benchmark_group("walk");
    g.throughput(Throughput::Elements(1));
    let b = Bench::new();
    b.donate(512, 4096);
    let mut i = 0u64;
    g.bench_function("translate", |bch| {
        bch.iter(|| {
            i = (i + 1) % 512;
            black_box(
                b.e.vm_translate(b.vm, Ipa::new(0x8000_0000 + i * 4096))
                    .unwrap(),
            )
        })
    });
    let _ = PhysAddr::new(0);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = donate_map, unmap, host_abort, walk
}
criterion_main!(benches);
