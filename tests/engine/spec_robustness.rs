//! No panic on any input: every host call and every guest call, with any
//! register contents (not steered towards valid values as the other spec
//! tests are), returns a status the ABI defines — or enters the guest, or
//! exits with a well-formed exit — and leaves the state invariants intact.
//!
//! Deeper run: `PROPTEST_CASES=1000 cargo test -p isola --test engine spec_robustness`.

use crate::spec_common;

use isola::spec::props::invariants;
use isola::spec::{Event, Outcome};
use isola_abi::{Exit, GuestCall, HostCall, Status, psci};
use proptest::prelude::*;
use spec_common::{System, engine, warm_up};

/// A register value: mostly anything, sometimes an edge or a live-looking value.
fn reg() -> impl Strategy<Value = u64> {
    let c = engine::config();
    let end = c.ram_base + c.ram_pages * 4096;
    prop_oneof![
        6 => any::<u64>(),
        1 => Just(0u64),
        1 => 0u64..4,
        1 => Just(u64::MAX),
        1 => (0u64..8).prop_map(|g| g << 16 | 1),
        1 => c.ram_base..end,
        1 => (0u64..16).prop_map(|i| 0x8000_0000 + i * 0x1000),
    ]
}

/// A function id: every defined one of either side, PSCI, or anything.
fn id() -> impl Strategy<Value = u64> {
    let ids: Vec<u64> = (0..=0x0au64)
        .map(|n| HostCall::Version as u64 + n)
        .chain((0..=4).map(|n| GuestCall::Info as u64 + n))
        .chain(
            [
                psci::VERSION,
                psci::CPU_OFF,
                psci::SYSTEM_OFF,
                psci::SYSTEM_RESET,
            ]
            .map(u64::from),
        )
        .collect();
    prop_oneof![
        3 => proptest::sample::select(ids.clone()),
        1 => (proptest::sample::select(ids), any::<u32>()).prop_map(|(id, hi)| id | u64::from(hi) << 32),
        1 => any::<u64>(),
    ]
}

/// One call: side (host or guest), CPU, `x0..=x6`.
fn call() -> impl Strategy<Value = (bool, usize, [u64; 7])> {
    (
        any::<bool>(),
        0usize..3,
        id(),
        proptest::array::uniform6(reg()),
    )
        .prop_map(|(host, cpu, id, a)| (host, cpu, [id, a[0], a[1], a[2], a[3], a[4], a[5]]))
}

fn defined(x0: u64) -> bool {
    Status::from_raw(x0 as i64).is_some()
}

proptest! {
    #![proptest_config(spec_common::cases(16))]

    #[test]
    fn every_call_with_any_arguments_returns_a_defined_status(calls in proptest::collection::vec(call(), 100..300)) {
        let c = engine::config();
        let mut e = engine::Engine::boot();
        warm_up(&mut e, &c);
        for (n, &(host, cpu, regs)) in calls.iter().enumerate() {
            let ev = if host { Event::HostHvc { cpu, regs } } else { Event::GuestHvc { cpu, regs } };
            let out = e.step(&ev);
            let ok = match out {
                // A guest's `PSCI_VERSION` answers with the version, not a
                // status (an id with its upper half set is refused instead).
                Outcome::GuestReturn(r) if !host && regs[0] == u64::from(psci::VERSION) => {
                    r[0] == psci::GUEST_VERSION
                }
                Outcome::HostReturn(r) | Outcome::GuestReturn(r) => defined(r[0]),
                Outcome::Exit(x) => Exit::decode(x).is_some(),
                Outcome::Entered | Outcome::Inapplicable => true,
                _ => false,
            };
            prop_assert!(ok, "step {n}: {ev:?} -> {out:?}");
            let s = e.observe();
            let inv = invariants(&c, &s);
            prop_assert!(inv.is_ok(), "step {n}: {ev:?}: {}", inv.unwrap_err());
        }
    }
}
