//! The CPU's cache facts, read once at boot, and the instructions behind the
//! core's cache maintenance (`isola::arch::Arch`'s `clean_dcache_page_pou`,
//! `invalidate_icache_page`, `invalidate_icache_all`, which `arch.rs`
//! forwards here). What each ownership transition needs is decided in the
//! core (`isola::handover`); this module only reports the facts and executes
//! the requests.
//!
//! Invariant: [`enable_fwb`] runs on the boot CPU before any CPU enters the
//! host, and never again; from then on every `HCR_EL2` value the engine
//! writes carries `FWB` exactly when the Stage-2 leaves it puts in force use
//! the forced write-back encoding: a guest's ([`hcr_fwb`], the core's
//! `CachePolicy::fwb_guest`) and the host's ([`hcr_fwb_host`],
//! `CachePolicy::fwb_host`) separately. Each VMID is therefore only ever
//! used with one value of `HCR_EL2.FWB` (the host's VMID 0 with the host's,
//! every guest VMID with the guests'), so a TLB entry cached under one
//! value is never used under the other, whether or not the CPU caches the
//! bit in its TLB entries.

use core::arch::asm;

use isola::handover::CachePolicy;
use isola_sync::atomic::{AtomicBool, Ordering};

use crate::sysreg::{CTR_EL0, HCR_EL2, ID_AA64MMFR2_EL1, Readable, Value};

/// Set once by [`enable_fwb`]: guests run with `HCR_EL2.FWB`.
static FWB_GUEST: AtomicBool = AtomicBool::new(false);
/// Set once by [`enable_fwb`]: the host runs with `HCR_EL2.FWB`.
static FWB_HOST: AtomicBool = AtomicBool::new(false);

/// `ID_AA64MMFR2_EL1.FWB`: the CPU implements FEAT_S2FWB.
pub fn cpu_has_fwb() -> bool {
    ID_AA64MMFR2_EL1.read(ID_AA64MMFR2_EL1::FWB) != 0
}

/// The policy for this machine: `CTR_EL0.DIC` and `IDC` as the CPU reports
/// them; FWB for guests wherever the CPU has it (only the CPU walks a VM's
/// Stage-2), and for the host if `fwb_host` (the caller decided that every
/// walker of the host's tables honours it).
pub fn policy(fwb_host: bool) -> CachePolicy {
    let fwb_guest = cpu_has_fwb();
    CachePolicy {
        fwb_guest,
        fwb_host: fwb_host && fwb_guest,
        dic: CTR_EL0.read(CTR_EL0::DIC) != 0,
        idc: CTR_EL0.read(CTR_EL0::IDC) != 0,
    }
}

/// Puts `p`'s FWB choices in force for every later host and guest entry.
pub fn enable_fwb(p: CachePolicy) {
    // Release: pairs with the Acquire in `hcr_fwb*`; the boot CPU writes
    // them before starting any other CPU, so every CPU sees them anyway.
    FWB_GUEST.store(p.fwb_guest, Ordering::Release);
    FWB_HOST.store(p.fwb_host, Ordering::Release);
}

/// `HCR_EL2.FWB` alone when guests run with it, else nothing: to add
/// (`union`) to a guest's `HCR_EL2`.
#[inline]
pub fn hcr_fwb() -> Value<HCR_EL2::Register> {
    if FWB_GUEST.load(Ordering::Acquire) {
        Value::new(&[HCR_EL2::FWB::SET])
    } else {
        Value::raw(0)
    }
}

/// `HCR_EL2.FWB` alone when the host runs with it, else nothing: to add
/// (`union`) to the host's `HCR_EL2`.
#[inline]
pub fn hcr_fwb_host() -> Value<HCR_EL2::Register> {
    if FWB_HOST.load(Ordering::Acquire) {
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
