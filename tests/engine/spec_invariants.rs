//! Invariants of the engine's state after every step of long random
//! sequences: every page of RAM has exactly one owner; every valid Stage-2
//! entry of a VM maps a page that VM owns or borrows, with known, non-empty
//! permissions; the host's Stage-2 maps exactly the pages the host owns or
//! borrows, so engine pages, pools and VM pages are mapped nowhere; the
//! host's DMA view (the IOMMU: the host Stage-2 it walks, and its TLB) is
//! exactly the same set; and the engine's own accounting adds up to all of
//! RAM.
//!
//! Deeper run: `PROPTEST_CASES=1000 cargo test -p isola --test engine spec_invariants`.

use crate::spec_common;

use isola::spec::props::invariants;
use isola::spec::{Config, Cpu, Event, Outcome, Owner, State};
use isola_abi::HostCall;
use proptest::prelude::*;
use spec_common::{Bug, Op, System, engine, ops, run};

/// The invariants of `s` as the engine holds it, plus what only the engine
/// can show: its host Stage-2 and its `Accounting` answers.
fn check(c: &Config, s: &State, sys: &mut dyn System) -> Result<(), String> {
    invariants(c, s)?;
    for pa in sys.host_mapped() {
        if !s.host_may_access(pa) {
            let p = s.page(pa);
            return Err(format!("host Stage-2 maps {pa:#x}, which is {p:?}"));
        }
    }
    let accessible: Vec<u64> = s
        .pages
        .keys()
        .copied()
        .filter(|&pa| s.host_may_access(pa))
        .collect();
    if sys.host_mapped() != accessible {
        let missing: Vec<_> = accessible
            .iter()
            .filter(|pa| !sys.host_mapped().contains(pa))
            .collect();
        return Err(format!(
            "host Stage-2 does not map pages the host may access: {missing:x?}"
        ));
    }
    let view = sys.dma_view();
    if view != accessible {
        let extra: Vec<_> = view.iter().filter(|pa| !s.host_may_access(**pa)).collect();
        return Err(format!(
            "the DMA view reaches {extra:x?}, which the host may not access"
        ));
    }
    // The engine's own totals count every page of RAM exactly once, by owner.
    let Some(cpu) = s.cpus.iter().position(|c| *c == Cpu::Host) else {
        return Ok(());
    };
    let regs = [HostCall::Accounting as u64, 0, 0, 0, 0, 0, 0];
    let Outcome::HostReturn([0, host, engine, guest]) = sys.step(&Event::HostHvc { cpu, regs })
    else {
        return Err("Accounting(Totals) failed".into());
    };
    let want = (
        s.count(|p| p.owner == Owner::Host),
        s.count(|p| p.owner == Owner::Engine),
        s.count(|p| matches!(p.owner, Owner::Vm(_))),
    );
    if (host, engine, guest) != want || host + engine + guest != c.ram_pages {
        return Err(format!(
            "Accounting(Totals) = {:?}, pages say {want:?}, RAM is {} pages",
            (host, engine, guest),
            c.ram_pages
        ));
    }
    Ok(())
}

fn holds(sys: &mut dyn System, ops: &[Op]) -> Result<(), String> {
    let c = engine::config();
    let initial = sys.observe();
    check(&c, &initial, sys)?;
    run(sys, &c, ops, |_, _, _, after, sys| check(&c, after, sys))
}

fn cases() -> ProptestConfig {
    spec_common::cases(16)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn engine_keeps_its_invariants(ops in ops(150..400)) {
        let r = holds(&mut engine::Engine::boot(), &ops);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// A planted bug breaks them: `Donate` that leaves the page in the host's
/// DMA view (the IOMMU's TLB keeps its translation).
#[test]
fn invariants_catch_a_page_left_in_the_dma_view_after_donate() {
    let found = spec_common::planted_run(16, Bug::LeaveDonatedPageInDmaView, holds);
    let msg = format!("{found:?}");
    assert!(
        msg.contains("the DMA view reaches"),
        "the planted bug went unnoticed: {msg}"
    );
}

/// A planted bug breaks them: `Donate` that leaves the page in the host's Stage-2.
#[test]
fn invariants_catch_a_forgotten_unmap_on_donate() {
    let found = spec_common::planted_run(16, Bug::KeepHostMappingOnDonate, holds);
    let msg = format!("{found:?}");
    assert!(
        msg.contains("host Stage-2 maps"),
        "the planted bug went unnoticed: {msg}"
    );
}
