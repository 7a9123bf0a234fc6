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
//! changes them while the host runs (a world switch to a guest does, and
//! restores them: `world.rs`).

use crate::sysreg::{
    CNTHCTL_EL2, CNTVOFF_EL2, CPTR_EL2, HCR_EL2, HCRX_EL2, HDFGRTR_EL2, HDFGWTR_EL2, HFGITR_EL2,
    HFGRTR_EL2, HFGWTR_EL2, HSTR_EL2, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, MDCR_EL2, MIDR_EL1,
    MPIDR_EL1, Readable, SCTLR_EL1, VMPIDR_EL2, VPIDR_EL2, Value, write_isb,
};
use crate::{gic, pmu, timer};

/// HCR_EL2 while the host runs, without Stage-2 (`VM`), which
/// [`HCR_HOST_STAGE2`] adds once the core has installed the host's tables:
/// - `SWIO`: set/way invalidation from EL1 becomes clean+invalidate;
/// - `PTW`: a Stage-1 walk that hits Device memory at Stage-2 faults;
/// - `TID3`: EL1/EL0 reads of the ID group-3 registers trap, so the engine
///   can hide SVE and SME, which it traps (`idregs.rs`);
/// - `TSC`: `smc` from EL1 traps to EL2 (the PSCI relay);
/// - `TIDCP`: implementation-defined system registers trap;
/// - `RW`: EL1 is AArch64;
/// - `TLOR`, `TERR`: LORegion and RAS error-record registers trap;
/// - `APK`, `API`: pointer-authentication keys and instructions do not trap.
///
/// IMO/FMO/AMO stay clear: the host owns the GIC and physical interrupts go
/// straight to EL1.
pub const HCR_HOST: Value<HCR_EL2::Register> = Value::new(&[
    HCR_EL2::SWIO::SET,
    HCR_EL2::PTW::SET,
    HCR_EL2::TID3::SET,
    HCR_EL2::TSC::SET,
    HCR_EL2::TIDCP::SET,
    HCR_EL2::RW::EL1IsAarch64,
    HCR_EL2::TLOR::SET,
    HCR_EL2::TERR::SET,
    HCR_EL2::APK::SET,
    HCR_EL2::API::SET,
]);

/// [`HCR_HOST`] with the host's Stage-2 translation on (`VM`).
pub const HCR_HOST_STAGE2: Value<HCR_EL2::Register> = HCR_HOST.with(&[HCR_EL2::VM::SET]);

/// CPTR_EL2 (non-VHE) RES1 bits: 13, 9, 7..0.
const CPTR_RES1: u64 = 1 << 13 | 1 << 9 | 0xff;

/// CPTR_EL2 for the host: `TZ` and `TSM`, SVE and SME trap (the engine does
/// not switch their state, and the host is told they are absent); `TTA`,
/// trace registers; `TAM`, activity monitors. Left clear: `TCPAC` (the host
/// manages its own CPACR_EL1) and `TFP` (the host uses FP/SIMD; the trap
/// vector leaves those registers live and the world switch exchanges them).
pub const CPTR_HOST: Value<CPTR_EL2::Register> = Value::new(&[
    CPTR_EL2::TZ::SET,
    CPTR_EL2::TSM::SET,
    CPTR_EL2::TTA::SET,
    CPTR_EL2::TAM::SET,
])
.with_res1(CPTR_RES1);

/// MDCR_EL2's traps for the host, beside the PMU's part ([`pmu::mdcr_host`]):
/// statistical-profiling (`TPMS`) and trace-filter (`TTRF`) control
/// registers trap. A guest run keeps all of these and adds its own traps
/// (`world::MDCR_GUEST_TRAPS`).
const MDCR_HOST_TRAPS: [crate::sysreg::FieldValue<u64, MDCR_EL2::Register>; 2] =
    [MDCR_EL2::TPMS::SET, MDCR_EL2::TTRF::SET];

/// MDCR_EL2 for the host on this CPU.
pub fn mdcr_host() -> Value<MDCR_EL2::Register> {
    pmu::mdcr_host().with(&MDCR_HOST_TRAPS)
}

/// SCTLR_EL1 at the host's entry: MMU and caches off, little-endian; the
/// bits that are RES1 in Armv8.0.
pub const SCTLR_EL1_ENTRY: Value<SCTLR_EL1::Register> = Value::new(&[
    SCTLR_EL1::EOS::SET,
    SCTLR_EL1::TSCXT::SET,
    SCTLR_EL1::EIS::SET,
    SCTLR_EL1::SPAN::SET,
    SCTLR_EL1::NTLSMD::SET,
    SCTLR_EL1::LSMAOE::SET,
]);

/// Configures this CPU's EL2 controls for running the host.
///
/// # Safety
/// Call at EL2 with interrupts masked, before entering the host on this CPU;
/// the core's host Stage-2 (VTTBR_EL2/VTCR_EL2) must already be installed if
/// `hcr` includes `VM`.
pub unsafe fn configure(hcr: Value<HCR_EL2::Register>) {
    let mdcr = mdcr_host();
    let midr = Value::raw(MIDR_EL1.get());
    let mpidr = Value::raw(MPIDR_EL1.get());
    let hcx = ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::HCX) != 0;
    let fgt = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::FGT) != 0;
    // SAFETY: these registers control only lower ELs (and EL2's own PMU
    // counting); the caller guarantees we are about to enter the host and
    // that the Stage-2 tables named by VTTBR_EL2 are valid.
    unsafe {
        write_isb!(CPTR_EL2, CPTR_HOST);
        write_isb!(MDCR_EL2, mdcr);
        write_isb!(CNTHCTL_EL2, timer::CNTHCTL_HOST);
        write_isb!(CNTVOFF_EL2, timer::CNTVOFF_HOST);
        write_isb!(SCTLR_EL1, SCTLR_EL1_ENTRY);
        gic::configure_host();
        // After ICC_SRE_EL2.SRE: the ICH_* registers need it.
        gic::reset_virtual_interface();
        // The host reads its own CPU's identity (a guest run swaps in its
        // VMPIDR_EL2 and restores this one).
        write_isb!(VPIDR_EL2, midr);
        write_isb!(VMPIDR_EL2, mpidr);
        // No AArch32 CP15 traps (EL1 is AArch64 only).
        write_isb!(HSTR_EL2, Value::raw(0));
        // By encoding, so the assembler needs no feature flag: HCRX_EL2
        // (FEAT_HCX) = 0 leaves every feature it enables for EL1 off.
        if hcx {
            write_isb!(HCRX_EL2 as "s3_4_c1_c2_2", Value::raw(0));
        }
        // FEAT_FGT: no fine-grained traps beyond the coarse ones.
        if fgt {
            write_isb!(HFGRTR_EL2 as "s3_4_c1_c1_4", Value::raw(0));
            write_isb!(HFGWTR_EL2 as "s3_4_c1_c1_5", Value::raw(0));
            write_isb!(HFGITR_EL2 as "s3_4_c1_c1_6", Value::raw(0));
            write_isb!(HDFGRTR_EL2 as "s3_4_c3_c1_4", Value::raw(0));
            write_isb!(HDFGWTR_EL2 as "s3_4_c3_c1_5", Value::raw(0));
        }
        write_isb!(HCR_EL2, hcr);
    }
}
