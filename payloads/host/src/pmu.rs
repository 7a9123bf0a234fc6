//! The host's PMU as the benchmark (`bench.rs`) and the Linux guest's
//! figures (`vms/linux/`) use it: three event counters counting
//! `INST_RETIRED` (event 0x08) with different exception-level filters
//! (`PMEVTYPER<n>_EL0`): counter 0 EL2 only, counter 1 every EL, counter 2
//! EL1 only. On QEMU TCG the event counts only under `-icount`; EL2 is
//! counted only with an engine that leaves `MDCR_EL2.HPMD` clear (the
//! `bench-pmu` image).

use core::arch::asm;

/// `INST_RETIRED`, the architectural instructions-retired event.
const INST_RETIRED: u64 = 0x08;
/// PMEVTYPER<n>_EL0.P: do not count at EL1.
const FILTER_P: u64 = 1 << 31;
/// PMEVTYPER<n>_EL0.U: do not count at EL0.
const FILTER_U: u64 = 1 << 30;
/// PMEVTYPER<n>_EL0.NSH: count at (non-secure) EL2.
const FILTER_NSH: u64 = 1 << 27;
/// PMCR_EL0.E (enable) and P (reset the event counters).
const PMCR_E: u64 = 1 << 0;
const PMCR_P: u64 = 1 << 1;

/// One reading of the three counters.
#[derive(Clone, Copy)]
pub struct Reading {
    /// EL2 only.
    pub el2: u64,
    /// Every EL.
    pub total: u64,
    /// EL1 only.
    pub el1: u64,
}

#[inline(always)]
pub fn read() -> Reading {
    let (el2, total, el1): (u64, u64, u64);
    // SAFETY: reading the PMU's event counters has no side effect; the `isb`
    // makes the reads happen after everything before them retired.
    unsafe {
        asm!(
            "isb",
            "mrs {0}, pmevcntr0_el0",
            "mrs {1}, pmevcntr1_el0",
            "mrs {2}, pmevcntr2_el0",
            out(reg) el2, out(reg) total, out(reg) el1,
            options(nostack, preserves_flags)
        );
    }
    Reading { el2, total, el1 }
}

/// Programs the three counters; `None` if the PMU has fewer than three.
pub fn setup() -> Option<()> {
    let pmcr: u64;
    // SAFETY: reading PMCR_EL0 has no side effect.
    unsafe { asm!("mrs {}, pmcr_el0", out(reg) pmcr, options(nomem, nostack)) };
    if (pmcr >> 11) & 0x1f < 3 {
        return None;
    }
    let el2 = FILTER_P | FILTER_U | FILTER_NSH | INST_RETIRED;
    let all = FILTER_NSH | INST_RETIRED;
    let el1 = FILTER_U | INST_RETIRED;
    // SAFETY: programming the host's own PMU counters (MDCR_EL2.HPMN gives
    // them to EL1); only the benchmark and the Linux guest's figures use them,
    // never in the same run.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {el2}",
            "msr pmevtyper1_el0, {all}",
            "msr pmevtyper2_el0, {el1}",
            "msr pmcntenset_el0, {mask}",
            "msr pmcr_el0, {pmcr}",
            "isb",
            el2 = in(reg) el2, all = in(reg) all, el1 = in(reg) el1,
            mask = in(reg) 0b111_u64, pmcr = in(reg) pmcr | PMCR_E | PMCR_P,
            options(nostack)
        );
    }
    Some(())
}
