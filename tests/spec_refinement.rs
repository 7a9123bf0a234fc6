//! Refinement: the engine, run side by side with the model on long random
//! sequences of host calls, guest calls, memory accesses and interrupts
//! (invalid arguments included), gives the same status and results for
//! every event and is in the same abstract state after every step.
//!
//! Deeper run: `PROPTEST_CASES=1000 cargo test -p isola --test spec_refinement`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "an integration test, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

mod spec_common;

use isola::spec::{Model, Outcome};
use proptest::prelude::*;
use spec_common::{Bug, Op, Planted, System, engine, event, ops, warm_up};

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
    let mut runner = spec_common::planted_runner(24);
    let found = runner.run(&ops(150..400), |ops| {
        let r = refines(
            &mut Planted::new(engine::Engine::boot(), Bug::SkipScrub),
            &ops,
        );
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        Ok(())
    });
    let msg = format!("{found:?}");
    assert!(found.is_err(), "the planted bug went unnoticed");
    assert!(msg.contains("page"), "unexpected counterexample: {msg}");
}
