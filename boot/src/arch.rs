//! The core's architecture boundary (`isola::arch::Arch`), implemented with
//! instructions: TLB invalidation, barriers and cache maintenance; the host's
//! DMA view is the engine's SMMU (`smmu.rs`). The core asks; this module
//! only executes.

use core::arch::asm;

use crate::sysreg::{Readable, VTTBR_EL2, Value, write_isb};
use crate::{caches, cpu, smmu};

/// The core's architecture boundary at EL2 (see `isola::arch` for the
/// semantics each method must provide).
#[derive(Debug, Default, Clone, Copy)]
pub struct El2Arch;

impl El2Arch {
    /// Runs `f` with VTTBR_EL2's VMID field set to `vmid` (TLBI by IPA and
    /// `vmalle1is` act on the current VMID), waits until its invalidations
    /// have completed on every CPU (`dsb ish`), then restores it: a TLBI is
    /// finished before the VMID it was issued under goes away, so no
    /// in-flight invalidation can be taken for the restored VMID's.
    /// When the VMID is already the current one (the host's, for every
    /// host Stage-2 edit made from a host trap), `f` runs without the two
    /// writes, their `isb`s and the `dsb`: no VMID changes, and the core
    /// issues its own `dsb ish` after the TLBI (`Arch::dsb_ish`).
    fn with_vmid(vmid: isola::arch::Vmid, f: impl FnOnce()) {
        let saved = Value::raw(VTTBR_EL2.get());
        if VTTBR_EL2::VMID.read(saved.bits()) == u64::from(vmid.0) {
            f();
            return;
        }
        let wanted = saved.with(&[VTTBR_EL2::VMID.val(u64::from(vmid.0))]);
        // SAFETY: this CPU is at EL2 with interrupts masked, so no lower EL
        // runs under the temporary VMID; only TLB maintenance happens before
        // the original value is restored.
        unsafe { write_isb!(VTTBR_EL2, wanted) };
        f();
        cpu::dsb_ish();
        // SAFETY: restores the value read above, once `f`'s invalidations
        // are complete.
        unsafe { write_isb!(VTTBR_EL2, saved) };
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
        cpu::dsb_ish();
    }

    fn isb(&self) {
        cpu::isb();
    }

    fn clean_dcache_page(&self, pa: isola::addr::PhysAddr) {
        // No barrier: the trait leaves completion to the caller's next
        // `dsb_ish`, so a batched Donate waits once for a whole run.
        cpu::clean_inval_dcache(pa.raw() & !0xfff, 4096);
    }

    fn clean_dcache_page_pou(&self, pa: isola::addr::PhysAddr) {
        caches::clean_dcache_pou(pa.raw() & !0xfff, 4096);
    }

    fn invalidate_icache_page(&self, pa: isola::addr::PhysAddr) {
        caches::invalidate_icache(pa.raw() & !0xfff, 4096);
    }

    fn invalidate_icache_all(&self) {
        caches::invalidate_icache_all();
    }

    fn dma_invalidate_host(&self, pa: isola::addr::PhysAddr, pages: u64) {
        smmu::invalidate_host(pa.raw(), pages);
    }

    fn dma_faults(&self) -> [u64; 3] {
        smmu::faults()
    }
}
