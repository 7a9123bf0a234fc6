//! Unit tests of the hypercall layer that need its internals (fault
//! injection into the mapping step of `Donate`, the result registers).

use super::lifecycle::next_generation;
use super::*;
use crate::addr::PAGE_SIZE;
use crate::arch::{RecordingArch, check_break_before_make};
use crate::ownership::PageRecord;
use crate::testing::MachineSpec;
use crate::vm::vmid_of;
use core::cell::Cell;
use isola_abi::{Accounting, HostCall, perms};
use std::vec::Vec;

std::thread_local! {
    /// One-shot fault injection for [`Engine::map_donated_run`]: the next
    /// batched `Donate` on this thread maps only this many pages of its
    /// run, then fails `NoMemory`. Thread-local, so parallel tests do
    /// not see each other's.
    pub(super) static FAIL_MAP_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
}

const GUEST_RAM: u64 = 0x8000_0000;

fn call(e: &Engine<RecordingArch>, call: HostCall, args: [u64; 4]) -> (Status, [u64; 3]) {
    let mut regs = [call as u64, args[0], args[1], args[2], args[3], 0, 0];
    assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
    (
        Status::from_raw(regs[0] as i64).unwrap(),
        [regs[1], regs[2], regs[3]],
    )
}

/// A batched donate whose mapping step fails after `mapped` of its 4
/// pages are in the VM's Stage-2 leaves records, counts and the host's
/// access exactly as before; the pages the guest could have seen are
/// unmapped (with the VM's TLBI) and scrubbed, the others keep the
/// host's data. The run can then be donated for real, and after
/// `VmDestroy` every page is reclaimed: nothing is left naming the slot.
fn failed_map_step_loses_nothing(mapped: u64) {
    let spec = MachineSpec::default();
    let e = spec.build(RecordingArch::new());
    let totals = |e: &Engine<RecordingArch>| {
        let (s, t) = call(
            e,
            HostCall::Accounting,
            [Accounting::Totals as u64, 0, 0, 0],
        );
        assert_eq!(s, Status::Success);
        t
    };
    let at_start = totals(&e);
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 8, 1, 0]);
    assert_eq!(s, Status::Success);
    let run = |i: u64| spec.page(44u64.wrapping_add(i));
    let ipa = |i: u64| Ipa::new(GUEST_RAM.wrapping_add(i.wrapping_mul(PAGE_SIZE)));
    for i in 0..4 {
        assert!(e.mem().write_u64(run(i), 0x5eed_u64.wrapping_add(i)));
    }
    let before = (totals(&e), e.vm_usage(vm).unwrap()[..3].to_vec());
    let donate = || {
        let args = [vm, run(0).raw(), GUEST_RAM, perms::R, 4];
        let mut regs = [
            HostCall::Donate as u64,
            args[0],
            args[1],
            args[2],
            args[3],
            args[4],
            0,
        ];
        assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
        Status::from_raw(regs[0] as i64).unwrap()
    };
    e.arch().clear();
    FAIL_MAP_AFTER.set(Some(mapped));
    assert_eq!(donate(), Status::NoMemory);
    assert_eq!(FAIL_MAP_AFTER.get(), None, "the hook fired");
    assert_eq!(
        (totals(&e), e.vm_usage(vm).unwrap()[..3].to_vec()),
        before,
        "records and counts as before ({mapped} mapped)"
    );
    let mut ev = Vec::new();
    e.arch().for_each(|x| ev.push(x));
    assert!(!e.arch().overflowed());
    check_break_before_make(ev.iter().copied()).unwrap();
    for i in 0..4 {
        assert_eq!(e.vm_translate(vm, ipa(i)).unwrap(), None, "page {i}");
        assert_eq!(e.page(run(i)), Some(PageRecord::HOST), "page {i}");
        let data = e.mem().read_u64(run(i)).unwrap();
        let vm_tlbi = ev.iter().any(|x| {
            *x == crate::arch::ArchEvent::TlbiIpa {
                vmid: vmid_of(0),
                ipa: ipa(i),
            }
        });
        if i < mapped {
            assert_eq!((data, vm_tlbi), (0, true), "page {i} was in the VM");
        } else {
            assert_eq!(
                (data, vm_tlbi),
                (0x5eed_u64.wrapping_add(i), false),
                "page {i} was not"
            );
        }
    }
    assert_eq!(donate(), Status::Success, "the run is whole again");
    assert_eq!(e.vm_usage(vm).unwrap()[0], 4);
    assert_eq!(
        call(&e, HostCall::VmDestroy, [vm, 0, 0, 0]).0,
        Status::Success
    );
    for i in 0..4 {
        let (s, _) = call(&e, HostCall::Reclaim, [run(i).raw(), 0, 0, 0]);
        assert_eq!(s, Status::Success, "page {i}");
    }
    assert_eq!(totals(&e), at_start);
    let (s, [.., waiting]) = call(
        &e,
        HostCall::Accounting,
        [Accounting::Sharing as u64, 0, 0, 0],
    );
    assert_eq!((s, waiting), (Status::Success, 0));
}

#[test]
fn a_failed_batched_map_step_undoes_every_page() {
    for mapped in [0, 1, 3] {
        failed_map_step_loses_nothing(mapped);
    }
}

#[test]
fn failures_zero_the_results_and_keep_x4_to_x6() {
    let mut regs = [9, 1, 2, 3, 4, 5, 6];
    write_result(&mut regs, Err(Status::NotOwner));
    assert_eq!(regs, [Status::NotOwner.raw(), 0, 0, 0, 4, 5, 6]);
    write_result(&mut regs, Ok([7, 8, 9]));
    assert_eq!(regs, [0, 7, 8, 9, 4, 5, 6]);
}

#[test]
fn generations_never_return_to_zero() {
    assert_eq!(next_generation(1), 2);
    assert_eq!(next_generation(u32::MAX), 1);
}

#[test]
fn stage2_errors_map_to_abi_statuses() {
    assert_eq!(s2_status(S2Error::NoMemory), Status::NoMemory);
    assert_eq!(s2_status(S2Error::AlreadyMapped), Status::AlreadyMapped);
    assert_eq!(s2_status(S2Error::NotMapped), Status::NotMapped);
    assert_eq!(s2_status(S2Error::OutOfRange), Status::InvalidArgument);
}

/// The per-CPU counters: every host call by its status on the CPU that made
/// it (not counting the read itself), the sum over CPUs beside it, and
/// `InvalidArgument` for an unknown counter or CPU.
#[test]
fn counters_count_calls_by_status_per_cpu() {
    use isola_abi::counter;
    let spec = MachineSpec::default();
    let e = spec.build(RecordingArch::new());
    let on = |cpu: u32, id: u64, args: [u64; 2]| {
        let mut regs = [id, args[0], args[1], 0, 0, 0, 0];
        assert_eq!(e.host_call(cpu, &mut regs), HostCallOutcome::Done);
        regs
    };
    let read = |cpu: u32, c: u64, of: u64| {
        let r = on(
            cpu,
            HostCall::Accounting as u64,
            [Accounting::Counter as u64, c | of << 32],
        );
        (r[0], r[1], r[2])
    };
    let ok = counter::host_calls(Status::Success);
    let unknown = counter::host_calls(Status::NotSupported);
    assert_eq!(read(0, ok, 0), (0, 0, 0), "the read does not count itself");
    on(1, HostCall::Version as u64, [0, 0]);
    on(1, 0xc600_00ff, [0, 0]);
    on(2, 0xc600_00ff, [0, 0]);
    // CPU 0 made one successful call (the first read); CPU 1 one more.
    assert_eq!(read(1, ok, 1), (0, 1, 2));
    assert_eq!(read(0, unknown, 2), (0, 1, 2));
    assert_eq!(read(0, unknown, 1), (0, 1, 2));
    for bad in [counter::COUNT, ok | (spec.cpus as u64) << 32] {
        let r = on(
            0,
            HostCall::Accounting as u64,
            [Accounting::Counter as u64, bad],
        );
        assert_eq!(r[..4], [Status::InvalidArgument.raw(), 0, 0, 0]);
    }
}

#[test]
fn a_vm_takes_one_to_max_vcpus() {
    let spec = MachineSpec::default();
    let e = spec.build(RecordingArch::new());
    let at = spec.page(16).raw();
    let max = crate::vcpu::MAX_VCPUS as u64;
    for n in [0, max.wrapping_add(1)] {
        assert_eq!(
            call(&e, HostCall::VmCreate, [at, 8, n, 0]).0,
            Status::InvalidArgument,
            "{n} vCPUs"
        );
    }
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [at, 8, max, 0]);
    assert_eq!(s, Status::Success, "{max} vCPUs");
    assert_eq!(
        call(&e, HostCall::VmDestroy, [vm, 0, 0, 0]).0,
        Status::Success
    );
}

#[test]
fn a_donate_takes_up_to_its_limit_and_to_the_last_ipa() {
    // 1024 pages: a VM pool at 16, then 512 host pages to donate at once.
    let spec = MachineSpec {
        ram_pages: 1024,
        ..MachineSpec::default()
    };
    let e = spec.build(RecordingArch::new());
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 16, 1, 0]);
    assert_eq!(s, Status::Success);
    let max = isola_abi::DONATE_MAX_PAGES;
    let run = spec.page(512).raw();
    let donate = |pa: u64, ipa: u64, n: u64| -> Status {
        let mut regs = [HostCall::Donate as u64, vm, pa, ipa, perms::R, n, 0];
        assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
        Status::from_raw(regs[0] as i64).unwrap()
    };
    assert_eq!(
        donate(run, GUEST_RAM, max.wrapping_add(1)),
        Status::InvalidArgument
    );
    assert_eq!(donate(run, GUEST_RAM, max), Status::Success, "{max} pages");
    // The VM's IPA space ends at 2^40: its last page can be donated, a run
    // past it cannot.
    let last = crate::testing::VM_S2.ipa_limit().wrapping_sub(PAGE_SIZE);
    assert_eq!(
        donate(spec.page(100).raw(), last, 2),
        Status::InvalidArgument
    );
    assert_eq!(donate(spec.page(100).raw(), last, 1), Status::Success);
    let t = e.vm_translate(vm, Ipa::new(last)).unwrap().unwrap();
    assert_eq!(t.pa, spec.page(100));
}

/// The undo of a run taken from the host halfway (a `Donate` or `VmCreate`
/// that found a page gone in a later shard, which only another CPU's call
/// can cause): every page taken is the host's again, mapped for it, and a
/// run of none changes nothing.
#[test]
fn giving_back_a_taken_run_restores_the_host() {
    let spec = MachineSpec::default();
    let e = spec.build(RecordingArch::new());
    let pa = spec.page(40);
    let taken = PageRecord::pool(1);
    e.for_each_shard_run(pa, 4, &mut |sg, first, k| {
        e.take_from_host(sg, first, k, taken);
        Ok(())
    })
    .unwrap();
    let page = |i: u64| pa.wrapping_add_bytes(i.wrapping_mul(PAGE_SIZE));
    let record = |i: u64| e.db.lock_page(page(i)).unwrap().get();
    for i in 0..4 {
        assert_eq!(record(i), taken);
        assert_eq!(e.host_translate(page(i)), None);
    }
    e.give_back_run(pa, 0);
    assert_eq!(record(0), taken, "nothing given back");
    e.give_back_run(pa, 3);
    for i in 0..3 {
        assert_eq!(record(i), PageRecord::HOST, "page {i}");
        assert_eq!(e.host_translate(page(i)).map(|t| t.pa), Some(page(i)));
    }
    assert_eq!(record(3), taken, "only the pages given back");
}

/// A list register whose interrupt the guest completed with `EOI` is
/// cleared in the context when the run ends (after being reported), so the
/// next run does not load it again; the others stay.
#[test]
fn a_completed_eoi_is_cleared_at_the_end_of_the_run() {
    let spec = MachineSpec::default();
    let mut e = spec.build(RecordingArch::new());
    e.set_list_registers(4);
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 8, 1, 0]);
    assert_eq!(s, Status::Success);
    let (s, _) = call(&e, HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0]);
    assert_eq!(s, Status::Success);
    let eoi = isola_abi::lr::PENDING | isola_abi::lr::EOI | 27;
    let pending = isola_abi::lr::PENDING | 33;
    assert_eq!(e.vcpu_interrupts(vm, 0, [eoi, pending, 0, 0]), Ok([0; 3]));
    let run = |e: &Engine<RecordingArch>| {
        let mut regs = [HostCall::VcpuRun as u64, vm, 0, 0, 0, 0, 0];
        match e.host_call(1, &mut regs) {
            HostCallOutcome::Run(l) => l,
            HostCallOutcome::Done => panic!("VcpuRun: {:x?}", regs),
        }
    };
    let l = run(&e);
    // The guest took interrupt 27 and deactivated it: the world switch
    // saves its register invalid, with EOI still set.
    let ctx = l.context().regs(e.mem()).unwrap();
    ctx.set_lr(0, isola_abi::lr::EOI | 27);
    let mut regs = [0; 7];
    e.finish_run(l, isola_abi::Exit::WFI, &mut regs);
    assert_eq!(regs[0], Status::Success.raw());
    let l = run(&e);
    let ctx = l.context().regs(e.mem()).unwrap();
    assert_eq!((ctx.lr(0), ctx.lr(1)), (0, pending));
    e.finish_run(l, isola_abi::Exit::WFI, &mut regs);
}

/// A batched `Donate`'s IPA run may end where the guest MMIO window begins
/// and may begin where it ends; a run with one page in the window is
/// refused and changes nothing.
#[test]
fn a_donated_run_may_touch_the_guest_mmio_window_but_not_enter_it() {
    let spec = MachineSpec::default();
    let e = spec.build(RecordingArch::new());
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 8, 1, 0]);
    assert_eq!(s, Status::Success);
    let (mmio_start, mmio_end) = crate::testing::GUEST_MMIO;
    let donate = |pa: PhysAddr, ipa: u64| {
        let mut regs = [
            HostCall::Donate as u64,
            vm,
            pa.raw(),
            ipa,
            perms::R | perms::W,
            2,
            0,
        ];
        assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
        Status::from_raw(regs[0] as i64).unwrap()
    };
    let two_pages = 2 * PAGE_SIZE;
    assert_eq!(
        donate(spec.page(40), mmio_end - PAGE_SIZE),
        Status::InvalidArgument,
        "the window's last page"
    );
    assert_eq!(
        donate(spec.page(40), mmio_start - PAGE_SIZE),
        Status::InvalidArgument,
        "the window's first page"
    );
    assert_eq!(e.page(spec.page(40)), Some(PageRecord::HOST));
    assert_eq!(
        donate(spec.page(40), mmio_end),
        Status::Success,
        "just after"
    );
    assert_eq!(
        donate(spec.page(42), mmio_start - two_pages),
        Status::Success,
        "just before"
    );
    for ipa in [mmio_end, mmio_start - two_pages] {
        assert!(e.vm_translate(vm, Ipa::new(ipa)).unwrap().is_some());
    }
}

/// A `Donate` run across two ownership shards checks its tables against
/// the VM's pool before moving anything: a pool holding exactly the tables
/// the run needs is enough.
#[test]
fn a_run_across_shards_fits_a_pool_of_exactly_its_tables() {
    let spec = MachineSpec {
        ram_pages: 1024,
        ..MachineSpec::default()
    };
    let e = spec.build(RecordingArch::new());
    // A root and the three tables below it that one IPA needs (40-bit IPA
    // from level 0: levels 1, 2 and 3).
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 4, 1, 0]);
    assert_eq!(s, Status::Success);
    assert_eq!(e.vm_summary(vm).unwrap().pool_free, 3);
    // Pages 511 and 512: the last of the first 2 MiB shard, the first of
    // the next.
    let mut regs = [
        HostCall::Donate as u64,
        vm,
        spec.page(511).raw(),
        GUEST_RAM,
        perms::R,
        2,
        0,
    ];
    assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
    assert_eq!(Status::from_raw(regs[0] as i64), Some(Status::Success));
    assert_eq!(e.vm_summary(vm).unwrap().pool_free, 0);
    for i in [511, 512] {
        assert_eq!(
            e.page(spec.page(i)).map(|r| r.owner()),
            Some(crate::ownership::Owner::Vm(0))
        );
    }
}

/// A one-page `Donate` takes the page out of the host Stage-2 starting at
/// its shard's level-2 table: with the GiB's root entry cut meanwhile, a
/// walk from the root could not find the page, and the host would keep it.
#[test]
fn a_one_page_donate_unmaps_the_host_from_its_shards_level_2_table() {
    let spec = MachineSpec::default();
    let e = spec.build(RecordingArch::new());
    let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 8, 1, 0]);
    assert_eq!(s, Status::Success);
    let page = spec.page(50);
    assert_eq!(e.host_translate(page).map(|t| t.level), Some(3));
    let root = PhysAddr::new(e.host_vttbr() & crate::stage2::desc::OA_MASK);
    let entry = root.wrapping_add_bytes((page.raw() >> 30 & 0x3ff).wrapping_mul(8));
    let saved = e.mem().read_u64(entry).unwrap();
    assert!(e.mem().write_u64(entry, 0));
    let (s, _) = call(
        &e,
        HostCall::Donate,
        [vm, page.raw(), GUEST_RAM, perms::R | perms::W],
    );
    assert!(e.mem().write_u64(entry, saved));
    assert_eq!(s, Status::Success);
    assert_eq!(e.host_translate(page), None);
    assert!(e.host_translate(spec.page(51)).is_some());
}
