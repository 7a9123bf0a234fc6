//! loom models of the engine's ownership protocols: two or three CPUs making
//! conflicting calls at once, every interleaving of their lock operations
//! explored.
//!
//! What these check: the lock order and the state checks under the locks
//! make conflicting calls serialise with one defined winner, and no
//! interleaving leaves records, mappings or counts inconsistent. What they
//! cannot check: the Arm memory model's effects on page-table walkers and
//! TLBs (loom models C++11 atomics, not the MMU), nor load buffering; the
//! break-before-make sequence is checked separately, on the recorded order
//! of TLBI and barrier requests (`src/stage2`, `tests/engine/scenario.rs`).
//!
//! Models stay small (a 24-page machine, 2 VM slots, 2–3 threads) and run
//! with no preemption bound (the three-CPU one explores about 100 000
//! executions in some 15 seconds); the spin-loop reduction of
//! `isola_sync::SpinWait` still applies to the locks they take.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola::abi::{Accounting, Exit, HostCall, Status, perms};
use isola::addr::{Ipa, PhysAddr};
use isola::arch::NoopArch;
use isola::engine::Engine;
use isola::hypercall::HostCallOutcome;
use isola::ownership::{Owner, PageRecord};
use isola::testing::MachineSpec;
use isola::vm::VmHandle;
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

/// A host call that is not `VcpuRun` (or whose run ends at once with a WFI
/// exit); returns the status and `x1..=x3`.
fn call(e: E, cpu: u32, c: HostCall, a: [u64; 4]) -> (Status, [u64; 3]) {
    let mut regs = [c as u64, a[0], a[1], a[2], a[3], 0, 0];
    if let HostCallOutcome::Run(l) = e.host_call(cpu, &mut regs) {
        e.finish_run(l, Exit::WFI, &mut regs);
    }
    (
        Status::from_raw(regs[0] as i64).unwrap(),
        [regs[1], regs[2], regs[3]],
    )
}

fn ok(e: E, c: HostCall, a: [u64; 4]) -> [u64; 3] {
    let (s, r) = call(e, 0, c, a);
    assert_eq!(s, Status::Success, "{c:?}");
    r
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    isola_loom_tests::model::exhaustive(f);
}

/// Every page counted exactly once, by owner.
fn totals_exact(e: E) {
    let [h, en, g] = ok(
        e,
        HostCall::Accounting,
        [Accounting::Totals as u64, 0, 0, 0],
    );
    assert_eq!(h + en + g, SPEC.ram_pages);
}

#[test]
fn two_cpus_donating_the_same_page_to_two_vms_exactly_one_wins() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        let [b, ..] = ok(e, HostCall::VmCreate, [page(9), 5, 1, 0]);
        let t = thread::spawn(move || {
            call(
                e,
                1,
                HostCall::Donate,
                [a, page(20), IPA, perms::R | perms::W],
            )
            .0
        });
        let sb = call(
            e,
            2,
            HostCall::Donate,
            [b, page(20), IPA, perms::R | perms::W],
        )
        .0;
        let sa = t.join().unwrap();
        let (winner, loser) = match (sa, sb) {
            (Status::Success, Status::NotOwner) => (a, b),
            (Status::NotOwner, Status::Success) => (b, a),
            other => panic!("both or neither won: {other:?}"),
        };
        let owner = e.page(PhysAddr::new(page(20))).unwrap().owner();
        // The winner's slot owns it (two live VMs never share a slot).
        let slot = u16::try_from(VmHandle(winner).slot()).unwrap();
        assert_eq!(owner, Owner::Vm(slot));
        assert!(e.vm_translate(winner, Ipa::new(IPA)).unwrap().is_some());
        assert!(e.vm_translate(loser, Ipa::new(IPA)).unwrap().is_none());
        assert_eq!(
            ok(
                e,
                HostCall::Accounting,
                [Accounting::Vm as u64, winner, 0, 0]
            )[0],
            1
        );
        assert_eq!(
            ok(
                e,
                HostCall::Accounting,
                [Accounting::Vm as u64, loser, 0, 0]
            )[0],
            0
        );
        totals_exact(e);
    });
}

#[test]
fn two_cpus_reclaiming_the_same_page_exactly_one_wins() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        ok(e, HostCall::Donate, [a, page(20), IPA, perms::R | perms::W]);
        // A second page keeps the dead VM's slot from being freed when the
        // first is reclaimed: the loser then finds the slot still dead and
        // only the page's record tells it the page is gone.
        ok(e, HostCall::Donate, [a, page(21), IPA + 0x1000, perms::R]);
        ok(e, HostCall::VmDestroy, [a, 0, 0, 0]);
        let t = thread::spawn(move || call(e, 1, HostCall::Reclaim, [page(20), 0, 0, 0]).0);
        let s2 = call(e, 2, HostCall::Reclaim, [page(20), 0, 0, 0]).0;
        let s1 = t.join().unwrap();
        assert!(
            matches!(
                (s1, s2),
                (Status::Success, Status::NotOwner) | (Status::NotOwner, Status::Success)
            ),
            "both or neither won: {s1:?} {s2:?}"
        );
        assert_eq!(e.page(PhysAddr::new(page(20))), Some(PageRecord::HOST));
        totals_exact(e);
        ok(e, HostCall::Reclaim, [page(21), 0, 0, 0]);
        totals_exact(e);
    });
}

#[test]
fn unshare_racing_teardown_returns_the_page_to_the_host_once() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        ok(e, HostCall::Share, [a, page(20), IPA, perms::R]);
        let t = thread::spawn(move || call(e, 1, HostCall::Unshare, [a, page(20), IPA, 0]).0);
        let sd = call(e, 2, HostCall::VmDestroy, [a, 0, 0, 0]).0;
        let su = t.join().unwrap();
        assert_eq!(
            sd,
            Status::Success,
            "no vCPU is loaded: destroy always succeeds"
        );
        assert!(
            matches!(su, Status::Success | Status::NotFound),
            "unshare: {su:?}"
        );
        assert_eq!(e.page(PhysAddr::new(page(20))), Some(PageRecord::HOST));
        assert_eq!(
            ok(
                e,
                HostCall::Accounting,
                [Accounting::Sharing as u64, 0, 0, 0]
            ),
            [0, 0, 0]
        );
        totals_exact(e);
    });
}

#[test]
fn share_racing_teardown_never_leaves_a_page_lent_to_a_dead_vm() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        let t = thread::spawn(move || call(e, 1, HostCall::Share, [a, page(20), IPA, perms::R]).0);
        let sd = call(e, 2, HostCall::VmDestroy, [a, 0, 0, 0]).0;
        let ss = t.join().unwrap();
        assert_eq!(sd, Status::Success);
        assert!(
            matches!(ss, Status::Success | Status::NotFound),
            "share: {ss:?}"
        );
        assert_eq!(e.page(PhysAddr::new(page(20))), Some(PageRecord::HOST));
        let mut pool_back = true;
        for i in 4..9 {
            pool_back &= e.page(PhysAddr::new(page(i))) == Some(PageRecord::HOST);
        }
        assert!(pool_back, "every pool page is the host's again");
        totals_exact(e);
    });
}

#[test]
fn two_cpus_running_the_same_vcpu_one_wins_the_other_is_busy() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        ok(e, HostCall::VcpuCreate, [a, 0, IPA, 0]);
        // Each CPU tries to load the vCPU and keeps it loaded (the world
        // switch would be running it) until both attempts are over.
        let run = move |cpu: u32| {
            let mut regs = [HostCall::VcpuRun as u64, a, 0, 0, 0, 0, 0];
            match e.host_call(cpu, &mut regs) {
                HostCallOutcome::Run(l) => {
                    assert_eq!(l.cpu(), cpu);
                    Some(l)
                }
                HostCallOutcome::Done => {
                    assert_eq!(regs[0], Status::Busy.raw());
                    None
                }
            }
        };
        let t = thread::spawn(move || run(1));
        let r2 = run(2);
        let r1 = t.join().unwrap();
        let winner = match (r1, r2) {
            (Some(l), None) | (None, Some(l)) => l,
            (a, b) => panic!(
                "both or neither loaded: {:?} {:?}",
                a.is_some(),
                b.is_some()
            ),
        };
        let mut regs = [0; 7];
        e.finish_run(winner, Exit::WFI, &mut regs);
        let (state, _) = e.vcpu(a, 0).unwrap();
        assert_eq!(state, isola::vcpu::VcpuState::Idle);
    });
}

#[test]
fn destroy_racing_a_vcpu_load_is_busy_or_the_run_finds_nothing() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        ok(e, HostCall::VcpuCreate, [a, 0, IPA, 0]);
        let t = thread::spawn(move || {
            let mut regs = [HostCall::VcpuRun as u64, a, 0, 0, 0, 0, 0];
            match e.host_call(1, &mut regs) {
                HostCallOutcome::Run(l) => {
                    // While loaded, a destroy on another CPU must fail Busy;
                    // give it a chance to run here.
                    thread::yield_now();
                    e.finish_run(l, Exit::WFI, &mut regs);
                    Status::Success
                }
                HostCallOutcome::Done => Status::from_raw(regs[0] as i64).unwrap(),
            }
        });
        let sd = call(e, 2, HostCall::VmDestroy, [a, 0, 0, 0]).0;
        let sr = t.join().unwrap();
        match (sr, sd) {
            (Status::Success, Status::Success | Status::Busy)
            | (Status::NotFound, Status::Success) => {}
            other => panic!("run/destroy: {other:?}"),
        }
        if sd == Status::Success {
            for i in 4..9 {
                assert_eq!(e.page(PhysAddr::new(page(i))), Some(PageRecord::HOST));
            }
        } else {
            assert!(matches!(
                e.page(PhysAddr::new(page(4))).unwrap().owner(),
                Owner::Engine
            ));
        }
        totals_exact(e);
    });
}

/// The checker can fail: claiming that the first-spawned CPU always wins the
/// donation race is false, and loom must find the interleaving that shows it.
#[test]
#[should_panic(expected = "assertion `left == right` failed")]
fn teeth_the_spawned_cpu_does_not_always_win() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        let [b, ..] = ok(e, HostCall::VmCreate, [page(9), 5, 1, 0]);
        let t = thread::spawn(move || call(e, 1, HostCall::Donate, [a, page(20), IPA, perms::R]).0);
        let _ = call(e, 2, HostCall::Donate, [b, page(20), IPA, perms::R]).0;
        assert_eq!(t.join().unwrap(), Status::Success);
    });
}

/// The host faulting a page in while another CPU donates it: whatever the
/// order, once the donation succeeded the host's Stage-2 does not map the
/// page (the shard lock orders the host-abort path against the record
/// change and the host unmap). With the core's
/// `planted-bug-donate-keeps-host-mapping` feature this model fails
/// ("host still maps a donated page"), which shows it has teeth.
#[test]
fn host_fault_racing_donate_never_leaves_the_host_a_mapping() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        let pa = page(20);
        let t = thread::spawn(move || {
            let esr = isola::abort::data_abort_esr(8, true, 0, false, true, 0b000111);
            e.host_abort(1, esr, pa, (pa >> 12) << 4)
        });
        let sd = call(e, 2, HostCall::Donate, [a, pa, IPA, perms::R]).0;
        let fault = t.join().unwrap();
        assert_eq!(sd, Status::Success);
        // Either the fault came first (mapped, then unmapped by the donation)
        // or second (refused): never a surviving mapping.
        assert!(matches!(
            fault,
            isola::engine::HostAbortAction::Retry | isola::engine::HostAbortAction::InjectSea
        ));
        assert!(
            e.host_translate(PhysAddr::new(pa)).is_none(),
            "host still maps a donated page"
        );
        totals_exact(e);
    });
}

/// Three CPUs: one shares a page with a VM, one unshares it, one destroys
/// the VM. Every order must end with the page plain host-owned, no sharing
/// left in the accounting, and each call's status one the order allows.
#[test]
fn share_unshare_and_teardown_on_three_cpus() {
    model(|| {
        let e = machine();
        let [a, ..] = ok(e, HostCall::VmCreate, [page(4), 5, 1, 0]);
        let pa = page(20);
        let t1 = thread::spawn(move || call(e, 1, HostCall::Share, [a, pa, IPA, perms::R]).0);
        let t2 = thread::spawn(move || call(e, 2, HostCall::Unshare, [a, pa, IPA, 0]).0);
        let sd = call(e, 3, HostCall::VmDestroy, [a, 0, 0, 0]).0;
        let ss = t1.join().unwrap();
        let su = t2.join().unwrap();
        assert_eq!(sd, Status::Success);
        assert!(
            matches!(ss, Status::Success | Status::NotFound),
            "share: {ss:?}"
        );
        assert!(
            matches!(su, Status::Success | Status::NotOwner | Status::NotFound),
            "unshare: {su:?}"
        );
        if su == Status::Success {
            assert_eq!(ss, Status::Success, "only a share can be unshared");
        }
        assert_eq!(e.page(PhysAddr::new(pa)), Some(PageRecord::HOST));
        assert_eq!(
            ok(
                e,
                HostCall::Accounting,
                [Accounting::Sharing as u64, 0, 0, 0]
            ),
            [0, 0, 0]
        );
        totals_exact(e);
    });
}
