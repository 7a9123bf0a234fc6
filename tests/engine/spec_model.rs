//! The model on its own: hand-written scenarios pin its key rules to the ABI
//! text, and random sequences check that it keeps its own invariants and
//! integrity (a model that broke them would make every refinement test
//! vacuous).

use crate::spec_common;

use isola::spec::Config;
use isola::spec::props::{integrity, invariants};
use isola::spec::{Event, Model, Outcome, Owner, PageState};
use isola_abi::{Exit, GuestCall, HostCall, PAGE_SIZE, Status, perms};
use proptest::prelude::*;
use spec_common::{System, config, ops, run};

fn host(m: &mut Model, call: HostCall, a: [u64; 4]) -> [u64; 4] {
    match m.apply(&Event::HostHvc {
        cpu: 0,
        regs: [call as u64, a[0], a[1], a[2], a[3], 0, 0],
    }) {
        Outcome::HostReturn(r) => r,
        o => panic!("{call:?}: {o:?}"),
    }
}

fn status(r: [u64; 4]) -> Status {
    Status::from_raw(r[0] as i64).unwrap()
}

const BASE: u64 = 0x4000_0000;

/// A machine for the hand-written scenarios, fixed here so they do not
/// move when the engine's test machine does: 96 pages, 8 for the engine, a
/// two-page VM root and two table levels below it.
fn model_config() -> Config {
    Config {
        ram_base: BASE,
        ram_pages: 96,
        engine_pages: 8,
        cpus: 3,
        max_vms: 4,
        max_vcpus: 4,
        features: 0,
        list_regs: 4,
        ipa_bits: 40,
        mmio_base: 0x0900_0000,
        mmio_end: 0x0a00_0000,
        vm_pages: 2,
        vcpu_pages: 1,
        table_shifts: vec![30, 21],
        dma_stream: 0x8,
    }
}
const fn page(i: u64) -> u64 {
    BASE + i * PAGE_SIZE
}

/// A model with one VM (pool at pages 8..16) and vCPU 0.
fn one_vm() -> (Model, u64) {
    let mut m = Model::new(model_config());
    let r = host(&mut m, HostCall::VmCreate, [page(8), 8, 2, 0]);
    assert_eq!(status(r), Status::Success);
    let h = r[1];
    assert_eq!(
        host(&mut m, HostCall::VcpuCreate, [h, 0, 0x8000_0000, 7]),
        [0; 4]
    );
    (m, h)
}

#[test]
fn donate_takes_the_page_from_the_host_and_reclaim_scrubs_it() {
    let (mut m, h) = one_vm();
    let pa = page(20);
    assert_eq!(
        m.apply(&Event::HostWrite {
            cpu: 0,
            pa,
            value: 5
        }),
        Outcome::HostStored
    );
    assert_eq!(
        host(
            &mut m,
            HostCall::Donate,
            [h, pa, 0x8000_0000, perms::R | perms::W]
        ),
        [0; 4]
    );
    // The guest sees what the host put there; the host sees nothing any more.
    assert_eq!(m.apply(&Event::HostRead { cpu: 0, pa }), Outcome::HostFault);
    assert_eq!(
        m.apply(&Event::HostHvc {
            cpu: 1,
            regs: [HostCall::VcpuRun as u64, h, 0, 0, 0, 0, 0]
        }),
        Outcome::Entered
    );
    assert_eq!(
        m.apply(&Event::GuestRead {
            cpu: 1,
            ipa: 0x8000_0000,
            reg: 3,
            size: 8
        }),
        Outcome::GuestDone
    );
    assert_eq!(m.state.vms[&h].vcpus[&0].regs[3], 5);
    assert_eq!(
        m.apply(&Event::GuestSetReg {
            cpu: 1,
            reg: 4,
            value: 0xdead
        }),
        Outcome::GuestDone
    );
    assert_eq!(
        m.apply(&Event::GuestWrite {
            cpu: 1,
            ipa: 0x8000_0008,
            reg: 4,
            size: 8
        }),
        Outcome::GuestDone
    );
    // Busy while loaded; after the exit, destroy leaves the page awaiting reclaim.
    assert_eq!(
        status(host(&mut m, HostCall::VmDestroy, [h, 0, 0, 0])),
        Status::Busy
    );
    assert_eq!(
        m.apply(&Event::GuestWfi { cpu: 1 }),
        Outcome::Exit(Exit::WFI.encode())
    );
    assert_eq!(
        status(host(&mut m, HostCall::Reclaim, [pa, 0, 0, 0])),
        Status::Denied
    );
    assert_eq!(host(&mut m, HostCall::VmDestroy, [h, 0, 0, 0]), [0; 4]);
    assert_eq!(
        host(&mut m, HostCall::Accounting, [1, 0, 0, 0]),
        [0, 0, 0, 1]
    );
    assert_eq!(m.apply(&Event::HostRead { cpu: 0, pa }), Outcome::HostFault);
    assert_eq!(host(&mut m, HostCall::Reclaim, [pa, 0, 0, 0]), [0; 4]);
    assert_eq!(
        m.apply(&Event::HostRead { cpu: 0, pa: pa + 8 }),
        Outcome::HostLoaded(0)
    );
    assert_eq!(
        status(host(&mut m, HostCall::Reclaim, [pa, 0, 0, 0])),
        Status::NotOwner
    );
    // The pool came back at destroy.
    assert_eq!(
        host(&mut m, HostCall::Accounting, [0, 0, 0, 0]),
        [0, 88, 8, 0]
    );
}

#[test]
fn status_order_follows_the_abi() {
    let (mut m, h) = one_vm();
    let d = |m: &mut Model, a: [u64; 4]| status(host(m, HostCall::Donate, a));
    // Format before handle, handle before ownership, ownership before mapping.
    assert_eq!(
        d(&mut m, [99, page(20) + 8, 0x8000_0000, perms::R]),
        Status::InvalidArgument
    );
    assert_eq!(
        d(&mut m, [99, page(20), 0x8000_0000, 0]),
        Status::InvalidArgument
    );
    assert_eq!(
        d(&mut m, [99, page(20), 0x0900_0000, perms::R]),
        Status::InvalidArgument
    );
    assert_eq!(
        d(&mut m, [99, page(2), 0x8000_0000, perms::R]),
        Status::NotFound
    );
    assert_eq!(
        d(&mut m, [h, page(2), 0x8000_0000, perms::R]),
        Status::NotOwner
    );
    assert_eq!(
        d(&mut m, [h, page(20), 0x8000_0000, perms::R]),
        Status::Success
    );
    assert_eq!(
        d(&mut m, [h, page(9), 0x8000_0000, perms::R]),
        Status::NotOwner
    );
    assert_eq!(
        d(&mut m, [h, page(21), 0x8000_0000, perms::R]),
        Status::AlreadyMapped
    );
    assert_eq!(
        status(host(&mut m, HostCall::Accounting, [4, h, 0, 0])),
        Status::InvalidArgument
    );
    let unknown = m.apply(&Event::HostHvc {
        cpu: 0,
        regs: [GuestCall::Info as u64, 0, 0, 0, 0, 0, 0],
    });
    assert_eq!(
        unknown,
        Outcome::HostReturn([Status::NotSupported.raw(), 0, 0, 0])
    );
}

#[test]
fn pool_runs_out_of_table_pages() {
    let mut m = Model::new(model_config());
    // A misaligned root is no VM; two pages are the root only, nothing
    // left for a vCPU or a table.
    assert_eq!(
        status(host(&mut m, HostCall::VmCreate, [page(9), 3, 1, 0])),
        Status::NoMemory
    );
    let h = host(&mut m, HostCall::VmCreate, [page(8), 2, 1, 0])[1];
    assert_eq!(
        status(host(&mut m, HostCall::VcpuCreate, [h, 0, 0, 0])),
        Status::NoMemory
    );
    assert_eq!(
        status(host(&mut m, HostCall::Donate, [h, page(20), 0, perms::R])),
        Status::NoMemory
    );
    assert_eq!(
        m.state.page(page(20)).unwrap().owner,
        Owner::Host,
        "a failed call changes nothing"
    );
    assert_eq!(host(&mut m, HostCall::VmTopup, [h, page(30), 2, 0]), [0; 4]);
    assert_eq!(
        host(&mut m, HostCall::Donate, [h, page(20), 0, perms::R]),
        [0; 4]
    );
    // The same 2 MiB region needs no new table.
    assert_eq!(
        host(&mut m, HostCall::Donate, [h, page(21), 0x1000, perms::R]),
        [0; 4]
    );
    assert_eq!(
        status(host(
            &mut m,
            HostCall::Donate,
            [h, page(22), 0x4000_0000, perms::R]
        )),
        Status::NoMemory
    );
}

#[test]
fn guest_share_declassifies_and_relinquish_scrubs() {
    let (mut m, h) = one_vm();
    let pa = page(20);
    host(&mut m, HostCall::Donate, [h, pa, 0x8000_0000, perms::ALL]);
    m.apply(&Event::HostHvc {
        cpu: 1,
        regs: [HostCall::VcpuRun as u64, h, 0, 0, 0, 0, 0],
    });
    m.apply(&Event::GuestSetReg {
        cpu: 1,
        reg: 9,
        value: 42,
    });
    m.apply(&Event::GuestWrite {
        cpu: 1,
        ipa: 0x8000_0010,
        reg: 9,
        size: 8,
    });
    let call = |id: GuestCall, ipa: u64| Event::GuestHvc {
        cpu: 1,
        regs: [id as u64, ipa, 0, 0, 0, 0, 0],
    };
    assert_eq!(
        m.apply(&call(GuestCall::Share, 0x8000_0000)),
        Outcome::GuestReturn([0; 4])
    );
    assert_eq!(
        m.state.page(pa).unwrap().state,
        PageState::Shared { with: Owner::Host }
    );
    assert_eq!(
        m.apply(&Event::HostRead {
            cpu: 0,
            pa: pa + 0x10
        }),
        Outcome::HostLoaded(42)
    );
    let r = m.apply(&call(GuestCall::Relinquish, 0x8000_0000));
    assert_eq!(r, Outcome::GuestReturn([Status::NotOwner.raw(), 0, 0, 0]));
    m.apply(&call(GuestCall::Unshare, 0x8000_0000));
    assert_eq!(m.apply(&Event::HostRead { cpu: 0, pa }), Outcome::HostFault);
    assert_eq!(
        m.apply(&call(GuestCall::Relinquish, 0x8000_0000)),
        Outcome::GuestReturn([0; 4])
    );
    assert_eq!(
        m.apply(&Event::HostRead {
            cpu: 0,
            pa: pa + 0x10
        }),
        Outcome::HostLoaded(0)
    );
    let r = m.apply(&Event::GuestRead {
        cpu: 1,
        ipa: 0x8000_0000,
        reg: 0,
        size: 8,
    });
    assert_eq!(
        r,
        Outcome::Exit(Exit::MemFault { ipa: 0x8000_0000 }.encode())
    );
}

#[test]
fn mmio_read_completes_on_the_next_run() {
    let (mut m, h) = one_vm();
    let run = |v: u64| Event::HostHvc {
        cpu: 0,
        regs: [HostCall::VcpuRun as u64, h, 0, v, 0, 0, 0],
    };
    m.apply(&run(0));
    let r = m.apply(&Event::GuestRead {
        cpu: 0,
        ipa: 0x0900_0004,
        reg: 5,
        size: 4,
    });
    assert_eq!(
        r,
        Outcome::Exit(
            Exit::Mmio {
                ipa: 0x0900_0004,
                size: 4,
                write: false,
                value: 0
            }
            .encode()
        )
    );
    m.apply(&run(0x1_2345_6789));
    let v = &m.state.vms[&h].vcpus[&0];
    assert_eq!((v.regs[5], v.pc), (0x2345_6789, 0x8000_0004));
}

fn cases() -> ProptestConfig {
    spec_common::cases(32)
}

proptest! {
    #![proptest_config(cases())]

    /// The model keeps its own invariants and integrity over random sequences.
    #[test]
    fn model_keeps_invariants_and_integrity(ops in ops(100..400)) {
        let c = config();
        let mut m = Model::new(c.clone());
        let r = run(&mut m, &c, &ops, |before, e, _, after, _| {
            invariants(&c, after)?;
            integrity(before, after, e)
        });
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        let _ = m.observe();
    }
}

/// The generator reaches what the properties are about: every host call and
/// guest call succeeds somewhere, every error status and exit kind shows up,
/// and guests touch RAM and MMIO. Without this, a property could pass
/// because the random sequences never got anywhere.
#[test]
fn generator_covers_the_abi() {
    use proptest::strategy::{Strategy, ValueTree};
    use std::collections::BTreeMap;
    let c = config();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..24 {
        let ops = ops(300..301).new_tree(&mut runner).unwrap().current();
        let mut m = Model::new(c.clone());
        run(&mut m, &c, &ops, |_, e, out, _, _| {
            let what = match (e, out) {
                (Event::HostHvc { regs, .. }, Outcome::HostReturn(r)) => {
                    if regs[0] == HostCall::Donate as u64 && regs[5] > 1 && r[0] == 0 {
                        *seen.entry("host Donate run Success".into()).or_default() += 1;
                    }
                    format!(
                        "host {:?} {:?}",
                        HostCall::from_id(regs[0]),
                        Status::from_raw(r[0] as i64)
                    )
                }
                (Event::HostHvc { regs, .. }, o) => {
                    format!("host {:?} {o:?}", HostCall::from_id(regs[0]))
                }
                (Event::GuestHvc { regs, .. }, Outcome::GuestReturn(r)) => {
                    format!(
                        "guest {:?} {:?}",
                        GuestCall::from_id(regs[0]),
                        Status::from_raw(r[0] as i64)
                    )
                }
                (_, Outcome::Exit(x)) => format!("exit {}", x[0] & 0xff),
                (Event::GuestRead { .. } | Event::GuestWrite { .. }, o) => {
                    format!("guest access {o:?}")
                }
                (Event::HostRead { .. } | Event::HostWrite { .. }, Outcome::HostFault) => {
                    "host fault".into()
                }
                (Event::HostRead { .. } | Event::HostWrite { .. }, _) => "host access".into(),
                (Event::DmaRead { .. } | Event::DmaWrite { .. }, Outcome::DmaFault) => {
                    "dma fault".into()
                }
                (Event::DmaRead { .. }, _) => "dma read".into(),
                (Event::DmaWrite { .. }, _) => "dma write".into(),
                _ => return Ok(()),
            };
            *seen.entry(what).or_default() += 1;
            Ok(())
        })
        .unwrap();
    }
    if std::env::var_os("SPEC_COVERAGE").is_some() {
        for (k, v) in &seen {
            println!("{v:6} {k}");
        }
    }
    let ok = |call: HostCall| format!("host Some({call:?}) Some(Success)");
    let gok = |call: GuestCall| format!("guest Some({call:?}) Some(Success)");
    let mut want: Vec<String> = [
        HostCall::Version,
        HostCall::VmCreate,
        HostCall::VmDestroy,
        HostCall::VmTopup,
        HostCall::VcpuCreate,
        HostCall::Donate,
        HostCall::Share,
        HostCall::Unshare,
        HostCall::Reclaim,
        HostCall::Accounting,
    ]
    .into_iter()
    .map(ok)
    .collect();
    want.extend(
        [
            GuestCall::Info,
            GuestCall::Share,
            GuestCall::Unshare,
            GuestCall::Relinquish,
        ]
        .map(gok),
    );
    want.extend((1..=9).map(|k| format!("exit {k}")));
    want.extend(
        [
            "host fault",
            "host access",
            "guest access GuestDone",
            "dma fault",
            "dma read",
            "dma write",
        ]
        .map(String::from),
    );
    want.push("host Some(VcpuRun) Entered".into());
    want.push("host Donate run Success".into());
    for s in [
        "NotSupported",
        "InvalidArgument",
        "NotOwner",
        "AlreadyMapped",
        "Busy",
        "NoMemory",
        "NotFound",
        "Denied",
    ] {
        assert!(
            seen.keys().any(|k| k.ends_with(&format!("Some({s})"))),
            "no call ever failed {s}: {seen:#?}"
        );
    }
    assert!(
        seen.keys()
            .any(|k| k.starts_with("guest") && k.ends_with("Some(NotMapped)")),
        "{seen:#?}"
    );
    for w in want {
        assert!(seen.contains_key(&w), "never seen: {w}\n{seen:#?}");
    }
}
