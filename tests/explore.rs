//! Exhaustive bounded exploration of the engine against the spec: from
//! three start states, every sequence of events up to a depth, drawn from
//! small domains that hold every error class and boundary, is run on the
//! engine and the model side by side, and every step is checked for
//! refinement, the invariants, integrity, break-before-make and (on a twin
//! whose one VM's secrets differ) noninterference. The harness is
//! `spec_common::explore`; the figures and the planted bugs' shortest
//! failing sequences are in `docs/security-properties.md`.
//!
//! Release builds only (`cargo xtask test` runs it so; a debug build is
//! some ten times slower). Deeper: `cargo xtask explore --depth N`, which
//! sets `ISOLA_EXPLORE_DEPTH` (the depth from boot; the other two starts go
//! one less).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "an integration test, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

mod spec_common;

use std::collections::BTreeMap;

use isola::spec::{Config, Event};
use isola::testing::MachineSpec;
use isola_abi::{GuestCall, HostCall, PAGE_SIZE, lr, perms, psci, vcpu_flags};
use spec_common::engine::{Engine, Machine};
use spec_common::explore::{Failure, IPA_A, IPA_B, Report, Setup, explore};
use spec_common::{Bug, Planted, System};

/// The machine: 23 pages of RAM, the first 6 the engine's (its host Stage-2
/// reserve), 17 the host's (room for both VMs of [`two_vms`] and two free
/// pages); two VM slots; two CPUs.
fn machine() -> Machine {
    Machine {
        spec: MachineSpec {
            ram_base: 0x4000_0000,
            ram_pages: 23,
            engine_pages: 6,
            vm_slots: 2,
            shard_shift: 21,
            cpus: 2,
            ..MachineSpec::default()
        },
    }
}

/// Depth from boot: `ISOLA_EXPLORE_DEPTH`, or 4 (about 10 s on 2 cores).
fn depth() -> usize {
    std::env::var("ISOLA_EXPLORE_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(4)
}

fn hvc(cpu: usize, call: HostCall, a: [u64; 5]) -> Event {
    Event::HostHvc {
        cpu,
        regs: [call as u64, a[0], a[1], a[2], a[3], a[4], 0],
    }
}

/// Handles of the first VM in slots 0 and 1.
const A: u64 = 1 << 16;
const B: u64 = 1 << 16 | 1;

/// Boot, then two VMs: A (slot 0, vCPU 0 and a powered-off vCPU 1, a pool
/// with room for one more table, at `IPA_A` a donated page the host wrote
/// first, at `IPA_B` a host page it shares), B (slot 1, one vCPU, a
/// read-only donated page at `IPA_A`); A's vCPU 0, given a pending
/// interrupt whose EOI the host wants to hear of, runs on CPU 0; CPU 1
/// runs the host.
fn two_vms(c: &Config) -> Vec<Event> {
    let page = |i: u64| c.ram_base + (c.engine_pages + i) * PAGE_SIZE;
    let rw = perms::R | perms::W;
    vec![
        hvc(0, HostCall::VmCreate, [page(0), 7, 2, 0, 0]),
        hvc(0, HostCall::VcpuCreate, [A, 0, 0x8000_0000, 0x10, 0]),
        hvc(0, HostCall::VcpuCreate, [A, 1, 0, 0, vcpu_flags::OFF]),
        Event::HostWrite {
            cpu: 0,
            pa: page(7),
            value: 0x4855_0000_0000_0001,
        },
        hvc(0, HostCall::Donate, [A, page(7), IPA_A, rw, 0]),
        hvc(0, HostCall::Share, [A, page(8), IPA_B, rw, 0]),
        hvc(0, HostCall::VmCreate, [page(9), 5, 1, 0, 0]),
        hvc(0, HostCall::VcpuCreate, [B, 0, 0x8000_0000, 0x10, 0]),
        hvc(0, HostCall::Donate, [B, page(14), IPA_A, perms::R, 0]),
        Event::HostHvc {
            cpu: 0,
            regs: [
                HostCall::VcpuInterrupts as u64,
                A,
                0,
                lr::pending(33, 0, true),
                0,
                0,
                0,
            ],
        },
        hvc(0, HostCall::VcpuRun, [A, 0, 0, 0, 0]),
    ]
}

/// [`two_vms`], then A's vCPU 0 starts vCPU 1 (`CPU_ON`), which runs,
/// writes a register and turns itself off (`CPU_OFF`); vCPU 0 runs again,
/// shares its own page with the host, stores into the page the host lent it
/// and stops (`WFI`); B runs on CPU 1. Destroy, reclaim, the return of
/// shared pages and a second `CPU_ON` of a vCPU that ran are a step or two
/// away.
fn teardown(c: &Config) -> Vec<Event> {
    let guest = |regs: [u64; 3]| Event::GuestHvc {
        cpu: 0,
        regs: [regs[0], regs[1], regs[2], 0x20, 0, 0, 0],
    };
    let mut v = two_vms(c);
    v.extend([
        guest([u64::from(psci::CPU_ON), psci::mpidr(1), 0x8000_0000]),
        hvc(0, HostCall::VcpuRun, [A, 1, 0, 0, 0]),
        Event::GuestSetReg {
            cpu: 0,
            reg: 1,
            value: 0x4755_0000_0000_0117,
        },
        guest([u64::from(psci::CPU_OFF), 0, 0]),
        hvc(0, HostCall::VcpuRun, [A, 0, 0, 0, 0]),
        guest([GuestCall::Share as u64, IPA_A, 0]),
        Event::GuestSetReg {
            cpu: 0,
            reg: 1,
            value: 0x4755_0000_0000_0107,
        },
        Event::GuestWrite {
            cpu: 0,
            ipa: IPA_B,
            reg: 1,
            size: 8,
        },
        Event::GuestWfi { cpu: 0 },
        hvc(1, HostCall::VcpuRun, [B, 0, 0, 0, 0]),
    ]);
    v
}

/// The three explorations at `depth` from boot.
fn setups(depth: usize) -> Vec<Setup> {
    let c = machine().config();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let setup = |name, start, depth| Setup {
        name,
        config: c.clone(),
        start,
        depth,
        noninterference: true,
        threads,
    };
    vec![
        setup("boot", vec![], depth),
        setup("two VMs, A running", two_vms(&c), depth.saturating_sub(1)),
        setup(
            "A shared and stopped, B running",
            teardown(&c),
            depth.saturating_sub(1),
        ),
    ]
}

fn engine() -> Box<dyn System> {
    Box::new(Engine::boot_on(machine()))
}

/// One line per exploration, for the docs.
fn summary(s: &Setup, r: &Report) -> String {
    format!(
        "{:<32} start {:>2} events, depth {}: {:>9} states {:?}, {:>10} transitions, {:>10} twin steps, {:>9} boots, {:.0} s",
        s.name,
        s.start.len(),
        s.depth,
        r.states(),
        r.states_per_depth,
        r.transitions,
        r.twin_steps,
        r.boots,
        r.seconds
    )
}

/// What the explorations together must reach, so that they cannot pass by
/// never getting anywhere: every call's success and each error status its
/// checks can return, every exit, and host and guest accesses of each kind.
fn required() -> Vec<String> {
    let mut want: Vec<String> = Vec::new();
    let host = |call: &str, statuses: &[&str]| {
        statuses
            .iter()
            .map(|s| format!("host {call} {s}"))
            .collect::<Vec<_>>()
    };
    let lend = [
        "Success",
        "InvalidArgument",
        "NotFound",
        "NotOwner",
        "AlreadyMapped",
        "NoMemory",
    ];
    want.extend(host("Version", &["Success"]));
    want.extend(host(
        "VmCreate",
        &["Success", "InvalidArgument", "NotOwner", "NoMemory"],
    ));
    want.extend(host("VmDestroy", &["Success", "NotFound", "Busy"]));
    want.extend(host(
        "VmTopup",
        &["Success", "InvalidArgument", "NotFound", "NotOwner"],
    ));
    want.extend(host(
        "VcpuCreate",
        &[
            "Success",
            "InvalidArgument",
            "NotFound",
            "Denied",
            "NoMemory",
        ],
    ));
    want.extend(host(
        "VcpuInterrupts",
        &["Success", "InvalidArgument", "NotFound", "Busy"],
    ));
    want.extend(host(
        "VcpuInjectAbort",
        &["Success", "NotFound", "Busy", "Denied"],
    ));
    want.extend(host("VcpuRun", &["Entered", "NotFound", "Busy", "Denied"]));
    want.extend(host("Donate", &lend));
    want.extend(host("Share", &lend));
    want.extend(host(
        "Unshare",
        &[
            "Success",
            "InvalidArgument",
            "NotFound",
            "NotOwner",
            "NotMapped",
        ],
    ));
    want.extend(host(
        "Reclaim",
        &["Success", "InvalidArgument", "NotOwner", "Denied"],
    ));
    want.extend(host(
        "Accounting",
        &["Success", "InvalidArgument", "NotFound"],
    ));
    want.push("host unknown id NotSupported".into());
    want.push("guest Info Success".into());
    for call in ["Share", "Unshare", "Relinquish"] {
        for s in ["Success", "InvalidArgument", "NotMapped", "NotOwner"] {
            want.push(format!("guest {call} {s}"));
        }
    }
    want.push("guest unknown id NotSupported".into());
    // PSCI: each call, and each error code it can return.
    for (call, rets) in [
        ("VERSION", &[1 << 16][..]),
        ("MIGRATE_INFO_TYPE", &[2]),
        ("FEATURES", &[0, -1]),
        ("AFFINITY_INFO", &[0, 1, -2]),
        ("AFFINITY_INFO32", &[-2]),
        ("CPU_ON", &[-4, -5]),
        ("CPU_ON32", &[-2, -9]),
    ] {
        for r in rets {
            want.push(format!("guest PSCI {call} {r}"));
        }
    }
    for a in [
        "guest sysreg op0 2 done",
        "guest sysreg op0 3 done",
        "guest timer",
        "guest interrupt ack",
        "guest interrupt EOI",
    ] {
        want.push(a.into());
    }
    for exit in [
        "HostCall",
        "Mmio",
        "MemFault",
        "Wfx",
        "Irq",
        "CpuOff",
        "SystemOff",
        "SystemReset",
        "Error",
        "CpuOn",
        "Sgi",
        "Eoi",
    ] {
        want.push(format!("exit {exit}"));
    }
    for a in [
        "host load",
        "host store",
        "host load fault",
        "host store fault",
        "DMA load",
        "DMA store",
        "DMA fault",
        "guest load RAM",
        "guest store RAM",
        "guest register write",
    ] {
        want.push(a.into());
    }
    want
}

/// Every sequence up to the depth, from each start: every step refines the
/// model and keeps every property; together they reach the whole ABI.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p isola --test explore (cargo xtask test runs it)"
)]
fn every_sequence_up_to_the_depth_keeps_every_property() {
    let mut coverage: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines = Vec::new();
    for s in setups(depth()) {
        match explore(&s, &engine) {
            Ok(r) => {
                let line = summary(&s, &r);
                println!("{line}");
                lines.push(line);
                for (k, n) in r.coverage {
                    *coverage.entry(k).or_default() += n;
                }
            }
            Err(f) => panic!("exploring from {}: {f}", s.name),
        }
    }
    if std::env::var_os("ISOLA_EXPLORE_COVERAGE").is_some() {
        for (k, n) in &coverage {
            println!("{n:>10} {k}");
        }
    }
    let missing: Vec<String> = required()
        .into_iter()
        .filter(|k| !coverage.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
}

/// Explores from boot with `bug` planted, as deep as it takes (up to 6):
/// the failure, with the shortest failing sequence.
fn catch(bug: Bug) -> Failure {
    let c = machine().config();
    let setup = Setup {
        name: "boot",
        config: c,
        start: vec![],
        depth: 6,
        noninterference: true,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let boot = move || Box::new(Planted::new(Engine::boot_on(machine()), bug)) as Box<dyn System>;
    match explore(&setup, &boot) {
        Ok(r) => panic!("planted {bug:?} went unnoticed: {r:?}"),
        Err(f) => {
            println!("planted {bug:?}: {f}\n");
            *f
        }
    }
}

/// Pages that reach the host keep their contents: refinement or
/// noninterference fails (whichever sees it in fewer steps).
#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn exploration_catches_a_skipped_scrub() {
    let f = catch(Bug::SkipScrub);
    assert!(
        ["refinement", "noninterference"].contains(&f.property),
        "{f}"
    );
    assert!(f.message.contains("page"), "{f}");
}

/// `Donate` leaves the page in the host's Stage-2: the invariants fail.
#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn exploration_catches_a_kept_host_mapping() {
    let f = catch(Bug::KeepHostMappingOnDonate);
    assert_eq!(f.property, "invariants", "{f}");
    assert!(f.message.contains("host Stage-2 maps"), "{f}");
}

/// `Donate` leaves the page in the host's DMA view: the invariants fail.
#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn exploration_catches_a_donated_page_left_in_the_dma_view() {
    let f = catch(Bug::LeaveDonatedPageInDmaView);
    assert_eq!(f.property, "invariants", "{f}");
    assert!(f.message.contains("DMA view"), "{f}");
}

/// `Wfx` and `Irq` exits carry `x9`: noninterference fails.
#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn exploration_catches_a_register_leaked_into_an_exit() {
    let f = catch(Bug::LeakRegisterIntoExit);
    assert_eq!(f.property, "noninterference", "{f}");
    assert!(f.message.contains("Exit"), "{f}");
}
