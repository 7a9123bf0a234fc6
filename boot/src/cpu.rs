//! Typed access to the CPU: system registers, barriers, cache and TLB
//! maintenance, and the exception-return paths.
//!
//! Reading a register is harmless and safe. Writing one that changes what
//! memory means or where exceptions go (SCTLR_EL2, TTBR0_EL2, VBAR_EL2,
//! HCR_EL2, VTTBR_EL2, ...) is `unsafe`, and each such write is followed by an
//! explicit `isb` so the new value is in force when the function returns.
//! These wrappers are deliberately not `nomem`: the compiler must not move
//! memory accesses across a change of the memory map.

use core::arch::asm;

/// Reads a system register by name.
macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading this system register has no side effect (none of
        // the registers read through this macro are read-sensitive).
        unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}
pub(crate) use read_sysreg;

/// Writes a system register by name, then `isb`. The caller's `unsafe`
/// block carries the justification.
macro_rules! write_sysreg_isb {
    ($name:literal, $v:expr) => {
        core::arch::asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) $v, options(nostack, preserves_flags))
    };
}
pub(crate) use write_sysreg_isb;

/// This CPU's MPIDR affinity fields (Aff3..Aff0), as the device tree's
/// `/cpus/cpu@*/reg` and PSCI name CPUs.
pub fn mpidr() -> u64 {
    read_sysreg!("mpidr_el1") & 0xff_00ff_ffff
}

/// The index this CPU was given at bring-up (kept in `TPIDR_EL2`, the
/// contract `isola-percpu` reads).
pub fn cpu_index() -> u64 {
    read_sysreg!("tpidr_el2")
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
    4_u64 << ((read_sysreg!("ctr_el0") >> 16) & 0xf)
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

/// Stops this CPU for good: interrupts masked, waiting for events forever.
/// Used where nothing else can be done (e.g. no console and no PSCI).
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

/// The core's architecture boundary, implemented with instructions (see
/// `isola::arch` for the semantics each method must provide).
#[derive(Debug, Default, Clone, Copy)]
pub struct El2Arch;

/// VTTBR_EL2.VMID (8-bit VMIDs) position.
const VTTBR_VMID_SHIFT: u32 = 48;
const VTTBR_VMID_MASK: u64 = 0xffff << VTTBR_VMID_SHIFT;

impl El2Arch {
    /// Runs `f` with VTTBR_EL2's VMID field set to `vmid` (TLBI by IPA and
    /// `vmalle1is` act on the current VMID), then restores it.
    fn with_vmid(vmid: isola::arch::Vmid, f: impl FnOnce()) {
        let saved = read_sysreg!("vttbr_el2");
        let wanted = (saved & !VTTBR_VMID_MASK) | u64::from(vmid.0) << VTTBR_VMID_SHIFT;
        // SAFETY: this CPU is at EL2 with interrupts masked, so no lower EL
        // runs under the temporary VMID; only TLB maintenance happens before
        // the original value is restored.
        unsafe { write_sysreg_isb!("vttbr_el2", wanted) };
        f();
        // SAFETY: restores the value read above.
        unsafe { write_sysreg_isb!("vttbr_el2", saved) };
    }
}

impl isola::arch::Arch for El2Arch {
    fn tlbi_ipa(&self, vmid: isola::arch::Vmid, ipa: isola::addr::Ipa) {
        Self::with_vmid(vmid, || {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe {
                asm!(
                    "tlbi ipas2e1is, {}",
                    "dsb ish",
                    "tlbi vmalle1is",
                    in(reg) ipa.raw() >> 12,
                    options(nostack, preserves_flags)
                );
            }
        });
    }

    fn tlbi_vmid(&self, vmid: isola::arch::Vmid) {
        Self::with_vmid(vmid, || {
            // SAFETY: TLB invalidation only drops cached translations.
            unsafe { asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)) };
        });
    }

    fn tlbi_all(&self) {
        // SAFETY: TLB invalidation only drops cached translations.
        unsafe { asm!("tlbi alle1is", options(nostack, preserves_flags)) };
    }

    fn dsb_ish(&self) {
        dsb_ish();
    }

    fn isb(&self) {
        isb();
    }

    fn clean_dcache_page(&self, pa: isola::addr::PhysAddr) {
        // No barrier: the trait leaves completion to the caller's next
        // `dsb_ish`, so a batched Donate waits once for a whole run.
        clean_inval_dcache(pa.raw() & !0xfff, 4096);
    }

    fn clean_dcache_page_pou(&self, pa: isola::addr::PhysAddr) {
        crate::caches::clean_dcache_pou(pa.raw() & !0xfff, 4096);
    }

    fn invalidate_icache_page(&self, pa: isola::addr::PhysAddr) {
        crate::caches::invalidate_icache(pa.raw() & !0xfff, 4096);
    }

    fn invalidate_icache_all(&self) {
        crate::caches::invalidate_icache_all();
    }

    fn dma_invalidate_host(&self, pa: isola::addr::PhysAddr, pages: u64) {
        crate::smmu::invalidate_host(pa.raw(), pages);
    }

    fn dma_faults(&self) -> [u64; 3] {
        crate::smmu::faults()
    }
}
