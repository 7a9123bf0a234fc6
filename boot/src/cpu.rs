//! The CPU's plain instructions: barriers, cache maintenance, waiting,
//! masking interrupts, the firmware call, and who this CPU is (its index
//! and its record, from `TPIDR_EL2`).
//!
//! Nothing here changes what memory means; system registers are
//! `sysreg.rs`'s, the core's architecture boundary is `arch.rs`'s.

use core::arch::asm;

use isola::stats::CpuStats;

use crate::sysreg::{CTR_EL0, MPIDR_EL1, Readable};

/// This CPU's MPIDR affinity fields (Aff3..Aff0), as the device tree's
/// `/cpus/cpu@*/reg` and PSCI name CPUs.
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// The index this CPU was given at bring-up: `isola-percpu`'s answer (it
/// reads the index from this CPU's record, whose address bring-up put in
/// `TPIDR_EL2` before any Rust code ran here and nothing writes again; an
/// index is below `MAX_CPUS`, so the `u32` is exact).
#[inline]
pub fn index() -> u32 {
    isola_percpu::current_cpu().map_or(u32::MAX, |i| i as u32)
}

/// This CPU's record of the core's counters (`cpu_state::records`), as the
/// dispatcher wants it: straight from `TPIDR_EL2`, no lookup.
#[inline(always)]
pub fn this_record() -> &'static CpuStats {
    let at = isola_percpu::current_record().cast::<CpuStats>();
    // SAFETY: `cpu_state`'s invariants: `TPIDR_EL2` holds the address of
    // this CPU's record in `cpu_state::records()` from the CPU's first
    // instruction on, and nothing writes it again; the records are valid,
    // aligned and initialised before any Rust runs, mapped for the whole
    // run, and only ever shared (the counters are atomics), so a shared
    // `'static` reference is sound.
    unsafe { &*at }
}

/// Data synchronisation barrier, inner shareable.
#[inline]
pub fn dsb_ish() {
    // SAFETY: a barrier has no effect but ordering.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// Instruction synchronisation barrier.
#[inline]
pub fn isb() {
    // SAFETY: a barrier has no effect but ordering.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Smallest data cache line (CTR_EL0.DminLine), in bytes.
pub fn dcache_line() -> u64 {
    4_u64 << CTR_EL0.read(CTR_EL0::DminLine)
}

/// Issues clean-and-invalidate to the point of coherency for every line of
/// `[start, start + len)`. No barrier: the maintenance is complete only after
/// the caller's next `dsb ish` (so a run of pages pays for one).
pub fn clean_inval_dcache(start: u64, len: u64) {
    let line = dcache_line();
    let end = start.saturating_add(len);
    let mut va = start & !(line.wrapping_sub(1));
    // Eight lines a step while eight whole lines remain: a 4 KiB page of
    // 64-byte lines pays the loop's compare and branch 8 times, not 64
    // (donate cleans every page it moves, so this is on its hot path).
    let eight = line.wrapping_mul(8);
    while end.saturating_sub(va) >= eight {
        // SAFETY: as below, for the eight lines from `va`; the adds stay
        // below `end` because eight whole lines remain.
        unsafe {
            asm!(
                "dc civac, {va}",
                "add {t}, {va}, {line}",
                "dc civac, {t}",
                "add {t}, {t}, {line}",
                "dc civac, {t}",
                "add {t}, {t}, {line}",
                "dc civac, {t}",
                "add {t}, {t}, {line}",
                "dc civac, {t}",
                "add {t}, {t}, {line}",
                "dc civac, {t}",
                "add {t}, {t}, {line}",
                "dc civac, {t}",
                "add {t}, {t}, {line}",
                "dc civac, {t}",
                va = in(reg) va,
                line = in(reg) line,
                t = out(reg) _,
                options(nostack, preserves_flags)
            )
        };
        va = va.wrapping_add(eight);
    }
    while va < end {
        // SAFETY: `dc civac` writes dirty lines back and drops them; it
        // changes no memory contents as seen by any observer.
        unsafe { asm!("dc civac, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(line);
    }
}

/// Waits for an event (low-power spin).
#[inline]
pub fn wfe() {
    // SAFETY: `wfe` only waits.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// Masks every interrupt class at EL2 (the engine never takes interrupts).
#[inline]
pub fn mask_all() {
    // SAFETY: masking exceptions at EL2 only stops asynchronous exceptions
    // from being taken here, which the engine never wants.
    unsafe {
        asm!(
            "msr daifset, #0xf",
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Parks this CPU for good: interrupts masked, waiting for events forever.
/// Used where nothing else can be done (no console, no PSCI).
pub fn halt() -> ! {
    mask_all();
    loop {
        wfe();
    }
}

/// An SMCCC call through `smc #0`: function id and three arguments; returns
/// `x0..=x3`. Registers `x4..=x17` are treated as clobbered (SMCCC v1.0).
pub fn smc(fid: u64, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    let (mut r0, mut r1, mut r2, mut r3) = (fid, a1, a2, a3);
    // SAFETY: the callee is the platform firmware (QEMU's PSCI); it may
    // change CPU power state but touches no memory the compiler knows of.
    // Every register SMCCC lets it clobber is declared.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") r0, inout("x1") r1, inout("x2") r2, inout("x3") r3,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    [r0, r1, r2, r3]
}
