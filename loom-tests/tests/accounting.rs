//! loom models of the lock-free paths of issue 17: `VmCreate` claiming a
//! slot by compare-and-swap instead of waiting on other VMs' locks, and
//! `Accounting` summing the shards' published counts and the slots'
//! published dead-page counts without taking any lock.
//!
//! What these check: whatever the interleaving, a slot is never given to two
//! VMs, a slot freed by a racing `Reclaim` is either taken or left free (no
//! VM lost, none doubled), and a lock-free total always counts every page
//! exactly once. The claim is only a hint: the slot's state under its lock
//! stays the guard (see `src/vm.rs`), which is why no broken twin of the
//! claim can fail here (a racy claim still ends in one winner); the twin
//! that would fail, counts published in two words, is the reason they are
//! packed in one (`src/ownership/mod.rs`).
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola::abi::{Accounting, HostCall, Status, perms};
use isola::addr::PhysAddr;
use isola::arch::NoopArch;
use isola::engine::Engine;
use isola::hypercall::HostCallOutcome;
use isola::testing::MachineSpec;
use loom::thread;

const SPEC: MachineSpec = MachineSpec {
    ram_base: 0x4000_0000,
    ram_pages: 24,
    engine_pages: 4,
    vm_slots: 2,
    shard_shift: 21,
    cpus: 4,
    caches: isola::handover::CachePolicy::MAINTAIN_ALL,
};
const IPA: u64 = 0x8000_0000;

type E = &'static Engine<NoopArch>;

fn machine() -> E {
    Box::leak(Box::new(SPEC.build(NoopArch)))
}

fn page(i: u64) -> u64 {
    SPEC.page(i).raw()
}

fn call(e: E, c: HostCall, a: [u64; 4]) -> (Status, [u64; 3]) {
    let mut regs = [c as u64, a[0], a[1], a[2], a[3], 0, 0];
    assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
    (
        Status::from_raw(regs[0] as i64).unwrap(),
        [regs[1], regs[2], regs[3]],
    )
}

fn ok(e: E, c: HostCall, a: [u64; 4]) -> [u64; 3] {
    let (s, r) = call(e, c, a);
    assert_eq!(s, Status::Success, "{c:?}");
    r
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    isola_loom_tests::model::exhaustive(f);
}

fn live_vms(e: E) -> usize {
    let mut n = 0;
    e.for_each_vm(|_, s| n += usize::from(s == isola::vm::SlotState::Live));
    n
}

#[test]
fn two_creates_for_the_last_free_slot_one_wins_the_other_gets_no_memory() {
    model(|| {
        let e = machine();
        ok(e, HostCall::VmCreate, [page(4), 2, 1, 0]);
        let t = thread::spawn(move || call(e, HostCall::VmCreate, [page(8), 2, 1, 0]).0);
        let mine = call(e, HostCall::VmCreate, [page(12), 2, 1, 0]).0;
        let theirs = t.join().unwrap();
        match (mine, theirs) {
            (Status::Success, Status::NoMemory) | (Status::NoMemory, Status::Success) => {}
            other => panic!("one slot, two outcomes {other:?}"),
        }
        assert_eq!(live_vms(e), 2);
        let [h, en, g] = ok(
            e,
            HostCall::Accounting,
            [Accounting::Totals as u64, 0, 0, 0],
        );
        assert_eq!((h + en + g, en), (SPEC.ram_pages, SPEC.engine_pages + 4));
    });
}

#[test]
fn a_create_racing_the_reclaim_that_frees_a_slot_takes_it_or_leaves_it_free() {
    model(|| {
        let e = machine();
        ok(e, HostCall::VmCreate, [page(4), 2, 1, 0]);
        // Five pool pages: the root and the three tables the donation needs.
        let [b, ..] = ok(e, HostCall::VmCreate, [page(8), 5, 1, 0]);
        ok(e, HostCall::Donate, [b, page(20), IPA, perms::R]);
        ok(e, HostCall::VmDestroy, [b, 0, 0, 0]);
        // Slot 1 is dead with one page awaiting reclaim: no slot is free.
        let t = thread::spawn(move || call(e, HostCall::Reclaim, [page(20), 0, 0, 0]).0);
        let created = call(e, HostCall::VmCreate, [page(14), 2, 1, 0]).0;
        assert_eq!(t.join().unwrap(), Status::Success);
        assert!(
            matches!(created, Status::Success | Status::NoMemory),
            "{created:?}"
        );
        let [.., waiting] = ok(
            e,
            HostCall::Accounting,
            [Accounting::Sharing as u64, 0, 0, 0],
        );
        assert_eq!(waiting, 0, "the reclaimed page is counted back");
        if created == Status::NoMemory {
            // The slot was freed after the scan passed it: it is free now.
            ok(e, HostCall::VmCreate, [page(14), 2, 1, 0]);
        }
        assert_eq!(live_vms(e), 2);
    });
}

#[test]
fn lock_free_totals_count_every_page_once_during_a_cross_shard_donate() {
    // Two shards of 2 MiB would need 1024 pages; a machine whose RAM starts
    // 8 pages below a 2 MiB boundary puts pages 0..8 in one shard and the
    // rest in the next, so a run from page 6 crosses shards.
    // The host's Stage-2 maps its RAM at boot, a level-3 table for each
    // shard: 6 pages of pool (pages 0..6, below the run).
    const SPLIT: MachineSpec = MachineSpec {
        ram_base: 0x401f_8000,
        ram_pages: 24,
        engine_pages: 6,
        vm_slots: 1,
        shard_shift: 21,
        cpus: 4,
        caches: isola::handover::CachePolicy::MAINTAIN_ALL,
    };
    model(|| {
        let e: E = Box::leak(Box::new(SPLIT.build(NoopArch)));
        let [vm, ..] = ok(e, HostCall::VmCreate, [SPLIT.page(12).raw(), 4, 1, 0]);
        // Pages 6 and 7 lie in the first shard, 8 and 9 in the second.
        let run = SPLIT.page(6).raw();
        let t = thread::spawn(move || {
            let mut regs = [HostCall::Donate as u64, vm, run, IPA, perms::R, 4, 0];
            e.host_call(1, &mut regs);
            regs[0]
        });
        let [h, en, g] = ok(
            e,
            HostCall::Accounting,
            [Accounting::Totals as u64, 0, 0, 0],
        );
        assert_eq!(h + en + g, SPLIT.ram_pages, "each page exactly once");
        assert_eq!(en, SPLIT.engine_pages + 4, "reserve and pool");
        // The records change one page at a time (each change published at
        // once), so the donation may be seen part way, even inside a shard:
        // but never a page twice or not at all.
        assert!(g <= 4, "{g}");
        assert_eq!(t.join().unwrap(), Status::Success.raw());
        assert_eq!(
            e.page(PhysAddr::new(run)).map(|r| r.owner()),
            Some(isola::ownership::Owner::Vm(0))
        );
    });
}
