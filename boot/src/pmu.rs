//! The PMU as EL2 sees it: which counters belong to the host, whether the
//! engine's own work is countable, and the host's counters stopped while a
//! guest runs.
//!
//! Invariants:
//! - Every PMU counter belongs to the host (`MDCR_EL2.HPMN = PMCR_EL0.N`).
//! - A production image never lets the host count the engine's events:
//!   `MDCR_EL2.HPMD` (and `HCCD` where the PMU has it) prohibit counting at
//!   EL2. Only the `bench-pmu` image (`cargo xtask bench`) leaves EL2
//!   countable, so the host can measure the engine's instruction counts.
//! - While a guest runs, every counter the host had enabled is disabled
//!   ([`HostCounters::stop`]) and re-enabled on the way back
//!   ([`HostCounters::resume`]), so they count neither the guest nor the
//!   switch (again except in the `bench-pmu` image).

use crate::sysreg::{
    ID_AA64DFR0_EL1, MDCR_EL2, PMCNTENCLR_EL0, PMCNTENSET_EL0, PMCR_EL0, Readable, Value,
    write_batched,
};

/// ID_AA64DFR0_EL1.PMUVer: 0 = no PMU, 1 = PMUv3, 4 = PMUv3p1, 6 = PMUv3p5,
/// 0xf = an IMPLEMENTATION DEFINED PMU (none of the architected controls).
pub fn version() -> u64 {
    ID_AA64DFR0_EL1.read(ID_AA64DFR0_EL1::PMUVer)
}

/// Whether this CPU has an architected PMUv3 (its `PMCNTEN*_EL0` exist).
pub fn v3() -> bool {
    (1..0xf).contains(&version())
}

/// The PMU's part of `MDCR_EL2` for the host: every counter is the host's
/// (HPMN = PMCR_EL0.N), and event counting at EL2 is prohibited (HPMD)
/// and so is cycle counting where the PMU can say so (HCCD).
pub fn mdcr_host() -> Value<MDCR_EL2::Register> {
    let n = PMCR_EL0.read(PMCR_EL0::N);
    let pmuver = version();
    // PMUVer 4 is PMUv3p1 (HPMD exists), 6 is PMUv3p5 (HCCD exists); 0xf is
    // IMPLEMENTATION DEFINED (neither). Before PMUv3p5 the cycle counter
    // still counts at EL2 unless the host sets PMCR_EL0.DP: the engine's
    // cycles are no secret (the host can time a hypercall with its own
    // physical counter), its events are.
    let prohibit: &[_] = if cfg!(feature = "bench-pmu") || pmuver == 0xf {
        &[]
    } else if pmuver >= 6 {
        &[MDCR_EL2::HPMD::SET, MDCR_EL2::HCCD::SET]
    } else if pmuver >= 4 {
        &[MDCR_EL2::HPMD::SET]
    } else {
        &[]
    };
    Value::new(&[MDCR_EL2::HPMN.val(n)]).with(prohibit)
}

/// Whether a guest run stops the host's PMU counters. The `bench-pmu`
/// image, in which the host deliberately counts the engine's EL2
/// instructions, leaves them running so `cargo xtask bench` still measures
/// the whole run path; every other image stops them.
const STOP_FOR_GUESTS: bool = !cfg!(feature = "bench-pmu");

/// The host's enabled counters (`PMCNTENSET_EL0`) while a guest runs:
/// `None` without a PMUv3 or in the `bench-pmu` image.
#[derive(Clone, Copy)]
pub struct HostCounters(Option<u64>);

impl HostCounters {
    /// Which counters the host has enabled now.
    pub fn save() -> Self {
        Self((STOP_FOR_GUESTS && v3()).then(|| PMCNTENSET_EL0.get()))
    }

    /// Stops the host's enabled counters for the guest's run.
    ///
    /// # Safety
    /// Only between [`HostCounters::save`] and [`HostCounters::resume`] on
    /// this CPU, before the guest's `eret` (or an `isb`), which puts it in
    /// force.
    pub unsafe fn stop(self) {
        if let Some(enabled) = self.0 {
            // SAFETY: disables exactly the counters the host had enabled
            // (PMUv3 exists: `save` checked); `resume` re-enables them before
            // the host runs again.
            unsafe { write_batched!(PMCNTENCLR_EL0, Value::raw(enabled)) };
        }
    }

    /// Re-enables the counters [`HostCounters::stop`] stopped.
    ///
    /// # Safety
    /// Only on the way back to the host, before the `isb` (or `eret`) that
    /// puts the host's state in force.
    pub unsafe fn resume(self) {
        if let Some(enabled) = self.0 {
            // SAFETY: the host's own enable bits, read by `save` on this CPU.
            unsafe { write_batched!(PMCNTENSET_EL0, Value::raw(enabled)) };
        }
    }
}
