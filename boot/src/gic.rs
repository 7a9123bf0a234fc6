//! The GICv3 as EL2 sees it: the system-register interface the host is
//! given, and the virtual CPU interface a guest's `ICC_*_EL1` accesses reach.
//!
//! The host owns the GIC (distributor, redistributors, its physical CPU
//! interface): the engine routes no interrupt to itself and programs nothing
//! but the two things below.
//!
//! Invariant: the virtual CPU interface (`ICH_HCR_EL2`, `ICH_VMCR_EL2`,
//! `ICH_AP<m>R<n>_EL2`) is all zero before every guest entry and at boot
//! ([`reset_virtual_interface`]): no guest reads what another left there.

use crate::sysreg::{
    ICC_SRE_EL2, ICH_AP0R0_EL2, ICH_AP0R1_EL2, ICH_AP0R2_EL2, ICH_AP0R3_EL2, ICH_AP1R0_EL2,
    ICH_AP1R1_EL2, ICH_AP1R2_EL2, ICH_AP1R3_EL2, ICH_HCR_EL2, ICH_VMCR_EL2, ICH_VTR_EL2,
    ID_AA64PFR0_EL1, Readable, Value, write_batched, write_isb,
};

/// ICC_SRE_EL2 for the host: SRE (EL2's own GIC accesses use system
/// registers), DFB and DIB (no FIQ/IRQ bypass), and Enable (EL1 may use
/// ICC_SRE_EL1, so the host reaches the physical CPU interface through
/// system registers). Linux's arm64 boot protocol requires SRE and Enable
/// when it is entered at EL1 on a GICv3; QEMU's register reads as this value
/// whatever is written, hardware's resets to an UNKNOWN value.
pub const ICC_SRE_HOST: Value<ICC_SRE_EL2::Register> = Value::new(&[
    ICC_SRE_EL2::SRE::SET,
    ICC_SRE_EL2::DFB::SET,
    ICC_SRE_EL2::DIB::SET,
    ICC_SRE_EL2::ENABLE::SET,
]);

/// Gives EL1 the GIC's system-register interface.
///
/// # Safety
/// At EL2 with interrupts masked, before entering the host on this CPU.
pub unsafe fn configure_host() {
    // SAFETY: ICC_SRE_EL2 controls how EL2 and EL1 reach the CPU interface;
    // the engine takes no interrupt and EL1 does not run (the caller's
    // contract).
    unsafe { write_isb!(ICC_SRE_EL2, ICC_SRE_HOST) };
}

/// Resets the GICv3 virtual CPU interface: `ICH_HCR_EL2` (virtual
/// interface off), `ICH_VMCR_EL2` and every implemented
/// `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` to 0.
///
/// With `IMO`/`FMO` set a guest's `ICC_PMR_EL1`, `ICC_BPR<n>_EL1`,
/// `ICC_IGRPEN<n>_EL1` and `ICC_AP<m>R<n>_EL1` accesses reach these
/// registers instead of the physical interface. There is no virtual GIC
/// yet, so no guest needs them to persist: resetting them before every
/// guest entry means a guest reads only what it wrote during this run,
/// never what another guest (or an earlier run) left. Called at boot too,
/// so the first guest sees zeros rather than reset-UNKNOWN values. Does
/// nothing without the GIC system-register interface
/// (`ID_AA64PFR0_EL1.GIC` = 0). No `isb`: the registers take effect at the
/// next `eret` to a guest, which synchronises them.
///
/// # Safety
/// At EL2 with interrupts masked, while no guest runs on this CPU, after
/// [`configure_host`] (the `ICH_*` registers need `ICC_SRE_EL2.SRE`).
pub unsafe fn reset_virtual_interface() {
    if ID_AA64PFR0_EL1.read(ID_AA64PFR0_EL1::GIC) == 0 {
        return;
    }
    // ICH_VTR_EL2.PRIbits is the number of priority bits minus one:
    // 5 bits need AP<m>R0, 6 bits AP<m>R0..1, 7 bits AP<m>R0..3.
    let pri_bits = ICH_VTR_EL2.read(ICH_VTR_EL2::PRIbits).wrapping_add(1);
    // SAFETY: the GICv3 system-register interface exists (checked above) and
    // ICC_SRE_EL2.SRE is set (the caller's contract); the registers written
    // exist for this PRIbits; they affect only a guest's virtual CPU
    // interface, and no guest runs here (the caller's contract).
    unsafe {
        write_batched!(ICH_HCR_EL2, Value::raw(0));
        write_batched!(ICH_VMCR_EL2, Value::raw(0));
        write_batched!(ICH_AP0R0_EL2, Value::raw(0));
        write_batched!(ICH_AP1R0_EL2, Value::raw(0));
        if pri_bits >= 6 {
            write_batched!(ICH_AP0R1_EL2, Value::raw(0));
            write_batched!(ICH_AP1R1_EL2, Value::raw(0));
        }
        if pri_bits >= 7 {
            write_batched!(ICH_AP0R2_EL2, Value::raw(0));
            write_batched!(ICH_AP0R3_EL2, Value::raw(0));
            write_batched!(ICH_AP1R2_EL2, Value::raw(0));
            write_batched!(ICH_AP1R3_EL2, Value::raw(0));
        }
    }
}
