//! The EL2 controls that run the host deprivileged at EL1 (each bit's reason
//! is in docs/boot.md, "EL2 register configuration").
//!
//! Invariant: on every CPU, before the first `eret` to the host, HCR_EL2,
//! MDCR_EL2, CPTR_EL2, CNTHCTL_EL2, CNTVOFF_EL2, ICC_SRE_EL2,
//! VTCR_EL2/VTTBR_EL2 and SCTLR_EL1 hold the values below, and every other
//! EL2 register that shapes what EL1 sees or traps has a defined value
//! rather than its reset-UNKNOWN one: VPIDR_EL2/VMPIDR_EL2 = this CPU's
//! MIDR_EL1/MPIDR_EL1, HSTR_EL2 = 0, the GICv3 virtual interface reset, and
//! where they exist HCRX_EL2 and the fine-grained trap registers = 0. Nothing
//! changes them while the host runs (a world switch to a guest will, and
//! must restore them).

use crate::cpu::{read_sysreg, write_sysreg_isb};

/// HCR_EL2.VM: Stage-2 translation on.
pub const HCR_VM: u64 = 1 << 0;
/// HCR_EL2.SWIO: set/way invalidation from EL1 becomes clean+invalidate.
pub const HCR_SWIO: u64 = 1 << 1;
/// HCR_EL2.PTW: a Stage-1 walk that hits Device memory at Stage-2 faults.
pub const HCR_PTW: u64 = 1 << 2;
/// HCR_EL2.TID3: EL1/EL0 reads of the ID group-3 registers trap, so the
/// engine can hide SVE and SME, which it traps (see `trap::sysreg`).
pub const HCR_TID3: u64 = 1 << 18;
/// HCR_EL2.TSC: `smc` from EL1 traps to EL2 (the PSCI relay).
pub const HCR_TSC: u64 = 1 << 19;
/// HCR_EL2.TIDCP: implementation-defined system registers trap.
pub const HCR_TIDCP: u64 = 1 << 20;
/// HCR_EL2.RW: EL1 is AArch64.
pub const HCR_RW: u64 = 1 << 31;
/// HCR_EL2.TLOR: LORegion registers trap.
pub const HCR_TLOR: u64 = 1 << 35;
/// HCR_EL2.TERR: RAS error-record registers trap.
pub const HCR_TERR: u64 = 1 << 36;
/// HCR_EL2.APK: pointer-authentication key registers do not trap.
pub const HCR_APK: u64 = 1 << 40;
/// HCR_EL2.API: pointer-authentication instructions do not trap.
pub const HCR_API: u64 = 1 << 41;

/// HCR_EL2 while the host runs, without Stage-2 (`VM`), which the core turns
/// on with the host's tables. IMO/FMO/AMO stay clear: the host owns the GIC
/// and physical interrupts go straight to EL1.
pub const HCR_HOST: u64 = HCR_SWIO
    | HCR_PTW
    | HCR_TID3
    | HCR_TSC
    | HCR_TIDCP
    | HCR_RW
    | HCR_TLOR
    | HCR_TERR
    | HCR_APK
    | HCR_API;

/// CPTR_EL2 (non-VHE) RES1 bits: 13, 9, 7..0.
const CPTR_RES1: u64 = 1 << 13 | 1 << 9 | 0xff;
/// CPTR_EL2.TZ: SVE traps (the engine's SIMD use would corrupt Z registers).
const CPTR_TZ: u64 = 1 << 8;
/// CPTR_EL2.TSM: SME traps.
const CPTR_TSM: u64 = 1 << 12;
/// CPTR_EL2.TTA: trace registers trap.
const CPTR_TTA: u64 = 1 << 20;
/// CPTR_EL2.TAM: activity-monitor registers trap.
const CPTR_TAM: u64 = 1 << 30;
/// CPTR_EL2.TCPAC: CPACR_EL1 accesses trap (off: the host manages its FP).
/// CPTR_EL2.TFP: FP/SIMD traps (off: the host may use FP/SIMD; the engine
/// saves and restores it on every trap).
pub const CPTR_HOST: u64 = CPTR_RES1 | CPTR_TZ | CPTR_TSM | CPTR_TTA | CPTR_TAM;

/// CNTHCTL_EL2.EL1PCTEN | EL1PCEN: the host owns the physical timer and
/// counter.
pub const CNTHCTL_HOST: u64 = 0b11;

/// MDCR_EL2.HPMD: event counting prohibited at EL2 (PMUv3p1).
const MDCR_HPMD: u64 = 1 << 17;
/// MDCR_EL2.TPMS: statistical-profiling control registers trap.
const MDCR_TPMS: u64 = 1 << 14;
/// MDCR_EL2.TTRF: trace-filter control registers trap.
const MDCR_TTRF: u64 = 1 << 19;
/// MDCR_EL2.HCCD: the cycle counter does not count at EL2 (PMUv3p5).
const MDCR_HCCD: u64 = 1 << 23;

/// ID_AA64DFR0_EL1.PMUVer: 0 = no PMU, 1 = PMUv3, 4 = PMUv3p1, 6 = PMUv3p5,
/// 0xf = an IMPLEMENTATION DEFINED PMU (none of the architected controls).
pub fn pmu_version() -> u64 {
    (read_sysreg!("id_aa64dfr0_el1") >> 8) & 0xf
}

/// Whether this CPU has an architected PMUv3 (its `PMCNTEN*_EL0` exist).
pub fn pmu_v3() -> bool {
    (1..0xf).contains(&pmu_version())
}

/// MDCR_EL2 for the host: every PMU counter (HPMN = PMCR_EL0.N) belongs to
/// the host, event counting at EL2 is prohibited (HPMD) and so is cycle
/// counting where the PMU can say so (HCCD), SPE and trace filtering trap.
/// A guest run keeps all of these and adds its own traps
/// (`world::MDCR_GUEST_TRAPS`).
pub fn mdcr_host() -> u64 {
    let n = (read_sysreg!("pmcr_el0") >> 11) & 0x1f;
    let pmuver = pmu_version();
    // PMUVer 4 is PMUv3p1 (HPMD exists), 6 is PMUv3p5 (HCCD exists); 0xf is
    // IMPLEMENTATION DEFINED (neither). Before PMUv3p5 the cycle counter
    // still counts at EL2 unless the host sets PMCR_EL0.DP: the engine's
    // cycles are no secret (the host can time a hypercall with its own
    // physical counter), its events are.
    // `bench-pmu` (only `cargo xtask bench` builds it) leaves EL2 countable
    // so the host can measure the engine's instruction counts; a production
    // image never lets the host observe the engine through the PMU.
    let prohibit = if cfg!(feature = "bench-pmu") || pmuver == 0xf {
        0
    } else if pmuver >= 6 {
        MDCR_HPMD | MDCR_HCCD
    } else if pmuver >= 4 {
        MDCR_HPMD
    } else {
        0
    };
    n | prohibit | MDCR_TPMS | MDCR_TTRF
}

/// SCTLR_EL1 at the host's entry: MMU and caches off, little-endian; the RES1
/// bits of Armv8.0 (11, 20, 22, 23, 28, 29).
pub const SCTLR_EL1_ENTRY: u64 = 1 << 11 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 28 | 1 << 29;

/// ICC_SRE_EL2 for the host: SRE (EL2's own GIC accesses use system
/// registers), DFB and DIB (no FIQ/IRQ bypass), and Enable (EL1 may use
/// ICC_SRE_EL1, so the host reaches the physical CPU interface through
/// system registers). Linux's arm64 boot protocol requires SRE and Enable
/// when it is entered at EL1 on a GICv3; QEMU's register reads as this value
/// whatever is written, hardware's resets to an UNKNOWN value.
pub const ICC_SRE_HOST: u64 = 0b1111;

/// ID_AA64MMFR1_EL1.HCX (43:40): HCRX_EL2 exists.
fn has_hcx() -> bool {
    (read_sysreg!("id_aa64mmfr1_el1") >> 40) & 0xf != 0
}

/// ID_AA64MMFR0_EL1.FGT (59:56): the fine-grained trap registers exist.
fn has_fgt() -> bool {
    (read_sysreg!("id_aa64mmfr0_el1") >> 56) & 0xf != 0
}

/// Configures this CPU's EL2 controls for running the host.
///
/// # Safety
/// Call at EL2 with interrupts masked, before entering the host on this CPU;
/// the core's host Stage-2 (VTTBR_EL2/VTCR_EL2) must already be installed if
/// `hcr` includes `VM`.
pub unsafe fn configure(hcr: u64) {
    let mdcr = mdcr_host();
    let midr = read_sysreg!("midr_el1");
    let mpidr = read_sysreg!("mpidr_el1");
    let hcx = has_hcx();
    let fgt = has_fgt();
    // SAFETY: these registers control only lower ELs (and EL2's own PMU
    // counting); the caller guarantees we are about to enter the host and
    // that the Stage-2 tables named by VTTBR_EL2 are valid.
    unsafe {
        write_sysreg_isb!("cptr_el2", CPTR_HOST);
        write_sysreg_isb!("mdcr_el2", mdcr);
        write_sysreg_isb!("cnthctl_el2", CNTHCTL_HOST);
        write_sysreg_isb!("cntvoff_el2", 0_u64);
        write_sysreg_isb!("sctlr_el1", SCTLR_EL1_ENTRY);
        write_sysreg_isb!("icc_sre_el2", ICC_SRE_HOST);
        // After ICC_SRE_EL2.SRE: the ICH_* registers need it.
        crate::world::reset_virtual_gic();
        // The host reads its own CPU's identity (a guest run swaps in its
        // VMPIDR_EL2 and restores this one).
        write_sysreg_isb!("vpidr_el2", midr);
        write_sysreg_isb!("vmpidr_el2", mpidr);
        // No AArch32 CP15 traps (EL1 is AArch64 only).
        write_sysreg_isb!("hstr_el2", 0_u64);
        // By encoding, so the assembler needs no feature flag: HCRX_EL2
        // (FEAT_HCX) = 0 leaves every feature it enables for EL1 off.
        if hcx {
            write_sysreg_isb!("s3_4_c1_c2_2", 0_u64);
        }
        // FEAT_FGT: HFGRTR_EL2, HFGWTR_EL2, HFGITR_EL2, HDFGRTR_EL2,
        // HDFGWTR_EL2 = 0, no fine-grained traps beyond the coarse ones.
        if fgt {
            write_sysreg_isb!("s3_4_c1_c1_4", 0_u64);
            write_sysreg_isb!("s3_4_c1_c1_5", 0_u64);
            write_sysreg_isb!("s3_4_c1_c1_6", 0_u64);
            write_sysreg_isb!("s3_4_c3_c1_4", 0_u64);
            write_sysreg_isb!("s3_4_c3_c1_5", 0_u64);
        }
        write_sysreg_isb!("hcr_el2", hcr);
    }
}
