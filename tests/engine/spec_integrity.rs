//! Integrity: whatever the host or one VM does — any call with any
//! arguments, any memory access, any exit — no *other* VM's private pages
//! (owner, state, contents), mappings or vCPU registers change, except by
//! what the ABI lets the host do to a VM on purpose (give it pages, take back
//! a lent page, run its vCPU, destroy it). Checked on the engine alone, so a
//! mistake the model shares would still show.
//!
//! Deeper run: `PROPTEST_CASES=1000 cargo test -p isola --test engine spec_integrity`.

use crate::spec_common;

use isola::spec::props::integrity;
use proptest::prelude::*;
use spec_common::{Bug, Op, System, engine, ops, run};

fn holds(sys: &mut dyn System, ops: &[Op]) -> Result<(), String> {
    run(sys, &engine::config(), ops, |before, e, _, after, _| {
        integrity(before, after, e)
    })
}

fn cases() -> ProptestConfig {
    spec_common::cases(16)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn no_actor_changes_another_vm(ops in ops(150..400)) {
        let r = holds(&mut engine::Engine::boot(), &ops);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// A planted bug breaks it: after `Donate` the host can still write the page.
#[test]
fn integrity_catches_host_writes_through_a_stale_mapping() {
    let found = spec_common::planted_run(16, Bug::KeepHostMappingOnDonate, holds);
    let msg = format!("{found:?}");
    assert!(
        msg.contains("changed VM"),
        "the planted bug went unnoticed: {msg}"
    );
}

/// A planted bug breaks it: after `Donate` the host's device can still
/// write the page by DMA (the IOMMU's TLB kept the translation).
#[test]
fn integrity_catches_dma_through_a_stale_iommu_translation() {
    let found = spec_common::planted_run(16, Bug::LeaveDonatedPageInDmaView, holds);
    let msg = format!("{found:?}");
    assert!(
        msg.contains("changed VM") && msg.contains("DmaWrite"),
        "the planted bug went unnoticed: {msg}"
    );
}
