//! Refinement: the engine, run side by side with the model on long random
//! sequences of host calls, guest calls, memory accesses and interrupts
//! (invalid arguments included), gives the same status and results for
//! every event and is in the same abstract state after every step.
//!
//! Deeper run: `PROPTEST_CASES=1000 cargo test -p isola --test engine spec_refinement`.

use crate::spec_common;

use isola::spec::{Model, Outcome};
use proptest::prelude::*;
use spec_common::{Bug, Op, System, engine, event, ops, warm_up};

/// Runs `ops` on `sys` and on the model in lockstep; the first difference
/// in outcome or abstract state is the counterexample.
fn refines(sys: &mut dyn System, ops: &[Op]) -> Result<(), String> {
    let c = engine::config();
    let mut model = Model::new(c.clone());
    warm_up(&mut model, &c);
    warm_up(sys, &c);
    if sys.observe() != model.state {
        return Err(diff("after warm-up", &model.state, &sys.observe()));
    }
    for (n, op) in ops.iter().enumerate() {
        let e = event(op, &model.state, &c);
        let want = model.apply(&e);
        if want == Outcome::Inapplicable {
            continue;
        }
        let got = sys.step(&e);
        if got != want {
            return Err(format!("step {n}: {e:?}: engine {got:?}, model {want:?}"));
        }
        let s = sys.observe();
        if s != model.state {
            return Err(diff(
                &format!("step {n}: {e:?} -> {got:?}"),
                &model.state,
                &s,
            ));
        }
    }
    Ok(())
}

/// The first differing part of two states, for a readable counterexample.
fn diff(at: &str, want: &isola::spec::State, got: &isola::spec::State) -> String {
    for (pa, p) in &want.pages {
        if got.pages.get(pa) != Some(p) {
            return format!(
                "{at}: page {pa:#x}: engine {:?}, model {p:?}",
                got.pages.get(pa)
            );
        }
    }
    for (h, vm) in &want.vms {
        if got.vms.get(h) != Some(vm) {
            return format!("{at}: VM {h:#x}: engine {:?}, model {vm:?}", got.vms.get(h));
        }
    }
    format!("{at}: engine {got:?}, model {want:?}")
}

fn cases() -> ProptestConfig {
    spec_common::cases(24)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn engine_refines_the_model(ops in ops(150..400)) {
        let r = refines(&mut engine::Engine::boot(), &ops);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// The same check finds a planted bug: pages that reach the host unscrubbed.
#[test]
fn refinement_catches_a_skipped_scrub() {
    let found = spec_common::planted_run(24, Bug::SkipScrub, refines);
    let msg = format!("{found:?}");
    assert!(found.is_err(), "the planted bug went unnoticed");
    assert!(msg.contains("page"), "unexpected counterexample: {msg}");
}

/// The generator reaches what the real-guest ABI adds: every new exit, the
/// timer level and deadline, accepted and refused list registers, answered
/// faults, and each PSCI result of `CPU_ON` and `AFFINITY_INFO` — so the
/// refinement test above compares the engine with the model on all of them.
#[test]
fn the_generator_reaches_the_real_guest_abi() {
    use isola::spec::Event;
    use isola_abi::{EXIT_VTIMER, HostCall, psci};
    use proptest::strategy::ValueTree;
    let c = engine::config();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    // 64 sequences: one event in sixteen is a DMA by the host's device, so
    // the rarest results (AFFINITY_INFO's ON_PENDING) need more of them.
    for _ in 0..64 {
        let ops = ops(150..400).new_tree(&mut runner).unwrap().current();
        let mut m = Model::new(c.clone());
        warm_up(&mut m, &c);
        for op in &ops {
            let e = event(op, &m.state, &c);
            match (&e, m.apply(&e)) {
                (_, Outcome::Exit([w, a, _])) => {
                    seen.insert(format!("exit {}", w & 0xff));
                    if w & EXIT_VTIMER != 0 {
                        seen.insert("vtimer asserted".into());
                    }
                    if w & 0xff == 4 && w & 1 << 18 != 0 && a != 0 {
                        seen.insert("wfx deadline".into());
                    }
                    if w >> 32 != 0 {
                        seen.insert("lr states".into());
                    }
                }
                (Event::HostHvc { regs, .. }, Outcome::HostReturn([st, ..])) => {
                    if let Some(call @ (HostCall::VcpuInterrupts | HostCall::VcpuInjectAbort)) =
                        HostCall::from_id(regs[0])
                    {
                        seen.insert(format!("{call:?} {}", st as i64));
                    }
                }
                (Event::GuestHvc { regs, .. }, Outcome::GuestReturn([x0, ..])) => {
                    // SMC32 and SMC64 ids count as one.
                    let id = regs[0] as u32 | 0x4000_0000;
                    if id == psci::CPU_ON || id == psci::AFFINITY_INFO {
                        seen.insert(format!("psci {id:#x} {}", x0 as i64));
                    }
                }
                _ => {}
            }
        }
    }
    for want in [
        "exit 10",
        "exit 11",
        "exit 12",
        "vtimer asserted",
        "wfx deadline",
        "lr states",
        "VcpuInterrupts 0",
        "VcpuInterrupts -2",
        "VcpuInjectAbort 0",
        "VcpuInjectAbort -9",
        "psci 0xc4000003 -2",
        "psci 0xc4000003 -4",
        "psci 0xc4000003 -5",
        "psci 0xc4000003 -9",
        "psci 0xc4000004 0",
        "psci 0xc4000004 1",
        "psci 0xc4000004 2",
    ] {
        assert!(seen.contains(want), "never reached: {want} (saw {seen:?})");
    }
}
