//! Hostile hosts and guests: random function ids and arguments, mixed with
//! plausible ones so calls get past the first checks. Every call must return
//! a status the ABI defines, never panic, and a failed call must leave every
//! observable thing (records, counts, mappings, vCPU states) unchanged.

use isola::addr::PhysAddr;
use isola::arch::NoopArch;
use isola::engine::Engine;
use isola::hypercall::{GuestExitAction, HostCallOutcome};
use isola::ownership::{Owner, PageState};
use isola::testing::MachineSpec;
use isola_abi::{GuestCall, HostCall, Status};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// One VM as observed: handle, mappings (ipa, pa, perms, borrowed), usage, vCPU states.
type VmView = (u64, Vec<(u64, u64, u64, bool)>, [u64; 3], Vec<String>);

/// Everything a caller could observe, as comparable data.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    records: Vec<isola::ownership::PageRecord>,
    vms: Vec<VmView>,
}

fn snapshot(e: &Engine<NoopArch>) -> Snapshot {
    let mut records = Vec::new();
    e.for_each_page(|_, r| records.push(r));
    let mut handles = Vec::new();
    e.for_each_vm(|h, _| handles.push(h.0));
    let vms = handles
        .into_iter()
        .map(|h| {
            let mut maps = Vec::new();
            let _ = e.vm_mappings(h, |i, p, perms, b| {
                maps.push((i.raw(), p.raw(), perms.to_abi(), b))
            });
            let u = e.vm_usage(h).map(|u| [u[0], u[1], u[2]]).unwrap_or([0; 3]);
            let vcpus = (0..8)
                .map(|i| format!("{:?}", e.vcpu(h, i).map(|v| v.0)))
                .collect();
            (h, maps, u, vcpus)
        })
        .collect();
    Snapshot { records, vms }
}

/// How often each (call, status) pair occurred, across all cases: the
/// coverage test below checks the generator reaches success and every
/// interesting error, so the property is not passing on calls that never got
/// past the first check.
static SEEN: std::sync::Mutex<Vec<(u64, i64)>> = std::sync::Mutex::new(Vec::new());

fn record(id: u64, status: Option<Status>) {
    let s = status.map_or(i64::MIN, |s| s as i64);
    let mut seen = SEEN.lock().unwrap();
    if !seen.contains(&(id, s)) {
        seen.push((id, s));
    }
}

const HOST_IDS: [HostCall; 13] = [
    HostCall::Version,
    HostCall::VmCreate,
    HostCall::VmDestroy,
    HostCall::VmTopup,
    HostCall::VcpuCreate,
    HostCall::VcpuRun,
    HostCall::Donate,
    HostCall::Share,
    HostCall::Unshare,
    HostCall::Reclaim,
    HostCall::Accounting,
    HostCall::VcpuInterrupts,
    HostCall::VcpuInjectAbort,
];

/// The kind of value each argument of a call naturally takes (see `arg`).
fn natural(id: u64, pos: usize) -> u8 {
    let k: [u8; 4] = match HostCall::from_id(id) {
        Some(HostCall::VmCreate) => [2, 9, 4, 0],
        Some(HostCall::VmTopup) => [1, 2, 9, 0],
        Some(HostCall::VcpuCreate | HostCall::VcpuRun) => [1, 11, 3, 0],
        Some(HostCall::VcpuInterrupts | HostCall::VcpuInjectAbort) => [1, 11, 12, 12],
        Some(HostCall::Donate | HostCall::Share) => [1, 2, 3, 4],
        Some(HostCall::Unshare) => [1, 10, 3, 0],
        Some(HostCall::Reclaim) => [10, 0, 0, 0],
        Some(HostCall::Accounting) => [4, 1, 0, 0],
        Some(HostCall::VmDestroy) => [1, 0, 0, 0],
        _ => [0; 4],
    };
    k[pos]
}

/// Argument `pos` of call `id`: three times in four the kind of value that
/// position takes (a live handle, a RAM page, a guest IPA, a small number),
/// else any kind, wild values included.
fn pick(
    spec: &MachineSpec,
    handles: &[u64],
    lent: &[u64],
    id: u64,
    pos: usize,
    kind: u8,
    raw: u64,
) -> u64 {
    let k = if !kind.is_multiple_of(4) {
        natural(id, pos)
    } else {
        kind / 2
    };
    if k == 10 {
        // A page an earlier Share or Donate succeeded on, if any.
        return lent
            .get(raw as usize % lent.len().max(1))
            .copied()
            .unwrap_or(raw);
    }
    arg(spec, handles, k, raw)
}

/// An argument of kind `kind`: wild, or a value that names something real.
fn arg(spec: &MachineSpec, handles: &[u64], kind: u8, raw: u64) -> u64 {
    if kind == 9 {
        return 1 + raw % 16; // a page count
    }
    if kind == 11 {
        return raw % 2; // a vCPU index that is often created
    }
    if kind == 12 {
        // A list-register word: mostly one the engine takes.
        return match raw % 4 {
            0 => 0,
            1 => isola_abi::lr::pending((raw >> 8) as u32 % 64, (raw >> 16) as u8, raw & 64 != 0),
            2 => isola_abi::lr::ACTIVE | ((raw >> 8) % 40),
            _ => raw,
        };
    }
    match kind % 8 {
        0 => raw,
        1 => *handles
            .get(raw as usize % handles.len().max(1))
            .unwrap_or(&raw),
        2 => {
            // Mostly a few pages, so calls collide on the same pages.
            let i = if raw.is_multiple_of(8) {
                raw % (spec.ram_pages + 4)
            } else {
                8 + (raw >> 3) % 12
            };
            spec.page(i).raw()
        }
        3 => 0x8000_0000 + (raw % 8) * 0x1000,
        4 => raw % 5,
        5 => spec.page(raw % spec.ram_pages).raw() + (raw % 3),
        6 => 0x0900_0000 + (raw % 4) * 0x1000,
        _ => u64::MAX - (raw % 4),
    }
}

type Call = (u8, u32, [u8; 4], [u64; 4]);

fn calls() -> impl Strategy<Value = Vec<Call>> {
    proptest::collection::vec(
        (
            any::<u8>(),
            any::<u32>(),
            any::<[u8; 4]>(),
            any::<[u64; 4]>(),
        ),
        1..60,
    )
}

/// Runs one sequence of hostile calls on a fresh machine, checking after
/// each one: a defined status, zeroed results on failure, `x4..=x6`
/// preserved, nothing observable changed by a failure, accounting exact.
fn run_case(calls: Vec<Call>) -> Result<(), TestCaseError> {
    let spec = MachineSpec::default();
    let e = spec.build(NoopArch);
    let mut handles = Vec::new();
    let mut lent = Vec::new();
    let mut ipas = Vec::new();
    // Warm-up: a VM with a vCPU, a donated page and a shared page, so the
    // random calls below meet live objects from the start.
    let mut r = [
        HostCall::VmCreate as u64,
        spec.page(60).raw(),
        16,
        2,
        0,
        0,
        0,
    ];
    e.host_call(0, &mut r);
    prop_assert_eq!(r[0], 0);
    handles.push(r[1]);
    for (call, a) in [
        (HostCall::VcpuCreate, [r[1], 0, 0x8000_0000, 0]),
        (HostCall::Donate, [r[1], spec.page(8).raw(), 0x8000_0000, 7]),
        (HostCall::Share, [r[1], spec.page(9).raw(), 0x8000_1000, 3]),
    ] {
        let mut regs = [call as u64, a[0], a[1], a[2], a[3], 0, 0];
        e.host_call(0, &mut regs);
        prop_assert_eq!(regs[0], 0, "warm-up {:?}", call);
    }
    lent.extend([spec.page(8).raw(), spec.page(9).raw()]);
    ipas.extend([0x8000_0000, 0x8000_1000]);
    for (which, wild, kinds, raws) in calls {
        let id = if which % 8 == 7 {
            u64::from(wild)
        } else {
            HOST_IDS[which as usize % HOST_IDS.len()] as u64
        };
        let mut args: Vec<u64> = (0..4)
            .map(|i| pick(&spec, &handles, &lent, id, i, kinds[i], raws[i]))
            .collect();
        // Unshare's IPA: mostly where that page was last lent, if it was.
        if id == HostCall::Unshare as u64
            && !kinds[2].is_multiple_of(4)
            && let Some(i) = lent.iter().rposition(|&pa| pa == args[1])
        {
            args[2] = ipas[i];
        }
        let before = snapshot(&e);
        // `x5` is Donate's page count: mostly 0 or 1, sometimes a short
        // run or one past the limit; VcpuCreate's flags; a list register
        // for VcpuInterrupts; other calls ignore it (and `x6`).
        let (x5, x6) = if id == HostCall::Donate as u64 {
            (
                [0, 1, 0, 1, 2, 3, 513, raws[3]][usize::from(kinds[3] % 8)],
                0xa5,
            )
        } else if id == HostCall::VcpuCreate as u64 {
            (
                [0, 0, 0, 1, 1, 2, raws[3], 0xa4][usize::from(kinds[3] % 8)],
                0xa5,
            )
        } else if id == HostCall::VcpuInterrupts as u64 {
            (0, if kinds[3] % 4 == 0 { 0xa5 } else { 0 })
        } else {
            (0xa4, 0xa5)
        };
        let mut regs = [id, args[0], args[1], args[2], args[3], x5, x6];
        match e.host_call(0, &mut regs) {
            HostCallOutcome::Done => {
                let status = Status::from_raw(regs[0] as i64);
                record(id, status);
                prop_assert!(status.is_some(), "undefined status {:#x}", regs[0]);
                prop_assert_eq!(&regs[4..], &[args[3], x5, x6][..], "x4..x6 preserved");
                if status != Some(Status::Success) {
                    prop_assert_eq!(&regs[1..4], &[0, 0, 0][..], "failed calls return zeroes");
                    prop_assert_eq!(
                        &snapshot(&e),
                        &before,
                        "{:?} failed with {:?} but changed state",
                        HostCall::from_id(id),
                        status
                    );
                } else if id == HostCall::VmCreate as u64 {
                    handles.push(regs[1]);
                } else if id == HostCall::Share as u64 || id == HostCall::Donate as u64 {
                    lent.push(args[1]);
                    ipas.push(args[2]);
                }
            }
            HostCallOutcome::Run(l) => {
                record(id, Some(Status::Success));
                // The guest makes one hostile call, then the run ends.
                let g = [
                    GuestCall::Info as u64,
                    GuestCall::Share as u64,
                    GuestCall::Unshare as u64,
                    GuestCall::Relinquish as u64,
                    u64::from(wild),
                ];
                let gid = g[which as usize % g.len()];
                let gbefore = snapshot(&e);
                let ipa = match kinds[0] % 4 {
                    0 => arg(&spec, &handles, kinds[0] / 4, raws[0]),
                    _ => ipas
                        .get(raws[0] as usize % ipas.len().max(1))
                        .copied()
                        .unwrap_or(0x8000_0000),
                };
                let gargs = [gid, ipa, raws[1], 0, 0, 0, 0];
                if let GuestExitAction::Resume = e.guest_hvc(&l, gargs) {
                    let mem = e.mem();
                    let x0 = l.context().x(mem, 0);
                    let st = Status::from_raw(x0 as i64);
                    record(gid, st);
                    prop_assert!(st.is_some(), "undefined guest status {:#x}", x0);
                    if st != Some(Status::Success) {
                        prop_assert_eq!(&snapshot(&e), &gbefore);
                    }
                }
                let mut r = [0; 7];
                e.finish_run(l, isola_abi::Exit::WFI, &mut r);
            }
        }
        let mut t = [HostCall::Accounting as u64, 0, 0, 0, 0, 0, 0];
        let _ = e.host_call(0, &mut t);
        prop_assert_eq!(
            t[1] + t[2] + t[3],
            spec.ram_pages,
            "every page counted once"
        );
        // The O(shards) counters agree with a scan of every record.
        let (mut by_owner, mut shared) = ([0u64; 3], [0u64; 2]);
        e.for_each_page(|_, r| {
            let i = match r.owner() {
                Owner::Host => 0,
                Owner::Engine => 1,
                Owner::Vm(_) => 2,
            };
            by_owner[i] += 1;
            if r.state() == PageState::Shared {
                shared[if i == 0 { 0 } else { 1 }] += 1;
            }
        });
        prop_assert_eq!(&t[1..4], &by_owner[..]);
        let mut s = [HostCall::Accounting as u64, 1, 0, 0, 0, 0, 0];
        let _ = e.host_call(0, &mut s);
        prop_assert_eq!(&s[1..3], &shared[..]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_call_returns_a_defined_status_and_failures_change_nothing(c in calls()) {
        run_case(c)?;
    }
}

#[test]
fn the_generator_reaches_success_and_each_kind_of_error() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..128 {
        run_case(calls().new_tree(&mut runner).unwrap().current()).unwrap();
    }
    let seen = SEEN.lock().unwrap().clone();
    for call in [
        HostCall::VmCreate,
        HostCall::Donate,
        HostCall::Share,
        HostCall::VcpuCreate,
        HostCall::VcpuRun,
        HostCall::Unshare,
        HostCall::VmDestroy,
    ] {
        assert!(seen.contains(&(call as u64, 0)), "{call:?} never succeeded");
    }
    for call in [GuestCall::Share, GuestCall::Relinquish] {
        assert!(
            seen.contains(&(call as u64, 0)),
            "guest {call:?} never succeeded"
        );
    }
    for st in [
        Status::NotSupported,
        Status::InvalidArgument,
        Status::NotFound,
        Status::NotOwner,
        Status::AlreadyMapped,
        Status::NoMemory,
        Status::NotMapped,
    ] {
        assert!(
            seen.iter().any(|&(_, s)| s == st as i64),
            "{st:?} never seen"
        );
    }
}

#[test]
fn unknown_ids_are_not_supported_on_both_sides() {
    let spec = MachineSpec::default();
    let e = spec.build(NoopArch);
    for id in [
        0u64,
        0xc600_000d,
        0xc600_0100,
        0x8400_0000,
        u64::from(u32::MAX),
    ] {
        let mut regs = [id, 1, 2, 3, 4, 5, 6];
        assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
        assert_eq!(regs[..4], [Status::NotSupported.raw(), 0, 0, 0]);
    }
    let mut r = [
        HostCall::VmCreate as u64,
        spec.page(16).raw(),
        4,
        1,
        0,
        0,
        0,
    ];
    e.host_call(0, &mut r);
    let h = r[1];
    let mut r = [HostCall::VcpuCreate as u64, h, 0, 0x8000_0000, 0, 0, 0];
    e.host_call(0, &mut r);
    let mut r = [HostCall::VcpuRun as u64, h, 0, 0, 0, 0, 0];
    let HostCallOutcome::Run(l) = e.host_call(0, &mut r) else {
        panic!()
    };
    // 0x8400_0012: SYSTEM_RESET2, a PSCI id the engine does not implement.
    for id in [HostCall::Donate as u64, 0xc600_0105, 0x8400_0012] {
        assert_eq!(
            e.guest_hvc(&l, [id, 1, 2, 3, 4, 5, 6]),
            GuestExitAction::Resume
        );
        let c = l.context();
        assert_eq!(
            [
                c.x(e.mem(), 0),
                c.x(e.mem(), 1),
                c.x(e.mem(), 2),
                c.x(e.mem(), 3)
            ],
            [Status::NotSupported.raw(), 0, 0, 0]
        );
    }
    let _ = PhysAddr::new(0);
}
