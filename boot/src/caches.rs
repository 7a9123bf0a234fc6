//! The CPU's cache facts, read once at boot, and the instructions behind the
//! core's cache maintenance (`isola::arch::Arch`'s `clean_dcache_page_pou`,
//! `invalidate_icache_page`, `invalidate_icache_all`, which `arch.rs`
//! forwards here). What each ownership transition needs is decided in the
//! core (`isola::handover`); this module only reports the facts and executes
//! the requests.
//!
//! Invariant: [`enable_fwb`] runs on the boot CPU before any CPU enters the
//! host, and never again; from then on every `HCR_EL2` value the engine
//! writes (the host's, each guest's) carries `FWB` exactly when the core's
//! Stage-2 leaves use the forced write-back encoding.

use core::arch::asm;

use isola::handover::CachePolicy;
use isola_sync::atomic::{AtomicBool, Ordering};

use crate::sysreg::{CTR_EL0, HCR_EL2, ID_AA64MMFR2_EL1, Readable, Value};

/// Set once by [`enable_fwb`]; read by every `HCR_EL2` value built for a
/// lower EL.
static FWB: AtomicBool = AtomicBool::new(false);

/// `ID_AA64MMFR2_EL1.FWB`: the CPU implements FEAT_S2FWB.
pub fn cpu_has_fwb() -> bool {
    ID_AA64MMFR2_EL1.read(ID_AA64MMFR2_EL1::FWB) != 0
}

/// The policy for this machine: `CTR_EL0.DIC` and `IDC` as the CPU reports
/// them, and FWB if `fwb` (the caller decided that every walker of the
/// engine's tables honours it).
pub fn policy(fwb: bool) -> CachePolicy {
    CachePolicy {
        fwb,
        dic: CTR_EL0.read(CTR_EL0::DIC) != 0,
        idc: CTR_EL0.read(CTR_EL0::IDC) != 0,
    }
}

/// Turns `HCR_EL2.FWB` on for every later host and guest entry.
pub fn enable_fwb() {
    // Release: pairs with the Acquire in `hcr_fwb`; the boot CPU writes it
    // before starting any other CPU, so every CPU sees it anyway.
    FWB.store(true, Ordering::Release);
}

/// `HCR_EL2.FWB` alone when it is on, else nothing: to add (`union`) to an
/// `HCR_EL2` value for a lower EL.
#[inline]
pub fn hcr_fwb() -> Value<HCR_EL2::Register> {
    if FWB.load(Ordering::Acquire) {
        Value::new(&[HCR_EL2::FWB::SET])
    } else {
        Value::raw(0)
    }
}

/// Smallest data cache line, in bytes.
fn dcache_line() -> u64 {
    4_u64 << CTR_EL0.read(CTR_EL0::DminLine)
}

/// Smallest instruction cache line, in bytes.
fn icache_line() -> u64 {
    4_u64 << CTR_EL0.read(CTR_EL0::IminLine)
}

/// Cleans the data cache to the PoU (`dc cvau` per line) for `[start, start
/// + len)`; complete at the caller's next `dsb ish`.
pub fn clean_dcache_pou(start: u64, len: u64) {
    let line = dcache_line();
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
