//! The CPU's cache facts, read once at boot, and the instructions behind the
//! core's cache maintenance (`isola::arch::Arch`'s `clean_dcache_page_pou`,
//! `invalidate_icache_page`, `invalidate_icache_all`). What each ownership
//! transition needs is decided in the core (`isola::handover`); this module
//! only reports the facts and executes the requests.
//!
//! Invariant: [`enable_fwb`] runs on the boot CPU before any CPU enters the
//! host, and never again; from then on every `HCR_EL2` value the engine
//! writes (the host's, each guest's) carries `FWB` exactly when the core's
//! Stage-2 leaves use the forced write-back encoding.

use core::arch::asm;

use isola::handover::CachePolicy;
use isola_sync::atomic::{AtomicBool, Ordering};

use crate::cpu::read_sysreg;

/// `HCR_EL2.FWB` (bit 46): Stage-2 attributes override stage 1 (FEAT_S2FWB).
pub const HCR_FWB: u64 = 1 << 46;

/// Set once by [`enable_fwb`]; read by every `HCR_EL2` write.
static FWB: AtomicBool = AtomicBool::new(false);

/// `ID_AA64MMFR2_EL1.FWB` (bits 43:40): the CPU implements FEAT_S2FWB.
pub fn cpu_has_fwb() -> bool {
    (read_sysreg!("id_aa64mmfr2_el1") >> 40) & 0xf != 0
}

/// The policy for this machine: `CTR_EL0.DIC` (bit 29) and `IDC` (bit 28)
/// as the CPU reports them, and FWB if `fwb` (the caller decided that every
/// walker of the engine's tables honours it).
pub fn policy(fwb: bool) -> CachePolicy {
    let ctr = read_sysreg!("ctr_el0");
    CachePolicy {
        fwb,
        dic: (ctr >> 29) & 1 != 0,
        idc: (ctr >> 28) & 1 != 0,
    }
}

/// Turns `HCR_EL2.FWB` on for every later host and guest entry.
pub fn enable_fwb() {
    // Release: pairs with the Acquire in `hcr_fwb`; the boot CPU writes it
    // before starting any other CPU, so every CPU sees it anyway.
    FWB.store(true, Ordering::Release);
}

/// The `HCR_EL2.FWB` bit to OR into an `HCR_EL2` value (0 when off).
#[inline]
pub fn hcr_fwb() -> u64 {
    if FWB.load(Ordering::Acquire) {
        HCR_FWB
    } else {
        0
    }
}

/// Smallest instruction cache line (`CTR_EL0.IminLine`), in bytes.
fn icache_line() -> u64 {
    4_u64 << (read_sysreg!("ctr_el0") & 0xf)
}

/// Cleans the data cache to the PoU (`dc cvau` per line) for `[start, start
/// + len)`; complete at the caller's next `dsb ish`.
pub fn clean_dcache_pou(start: u64, len: u64) {
    let line = crate::cpu::dcache_line();
    let end = start.saturating_add(len);
    let mut va = start & !line.wrapping_sub(1);
    while va < end {
        // SAFETY: cleaning to the PoU writes dirty lines back; it changes no
        // memory contents as any observer sees them. `va` is in the EL2
        // identity map of RAM.
        unsafe { asm!("dc cvau, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(line);
    }
}

/// Invalidates the instruction cache to the PoU, inner shareable (`ic ivau`
/// per line) for `[start, start + len)`; complete at the caller's next
/// `dsb ish`.
pub fn invalidate_icache(start: u64, len: u64) {
    let line = icache_line();
    let end = start.saturating_add(len);
    let mut va = start & !line.wrapping_sub(1);
    while va < end {
        // SAFETY: instruction cache invalidation only drops cached copies;
        // `va` is in the EL2 identity map of RAM (readable).
        unsafe { asm!("ic ivau, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(line);
    }
}

/// Invalidates every instruction cache of the inner shareable domain to the
/// PoU (`ic ialluis`); complete at the caller's next `dsb ish`.
pub fn invalidate_icache_all() {
    // SAFETY: instruction cache invalidation only drops cached copies.
    unsafe { asm!("ic ialluis", options(nostack, preserves_flags)) };
}
