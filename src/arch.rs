//! The architecture boundary: everything the portable core asks of the CPU.
//!
//! The core never executes a TLB, barrier or cache instruction itself; it
//! asks through [`Arch`]. `boot/` implements the trait with instructions; host
//! tests use [`RecordingArch`], which logs every request in order, together
//! with every Stage-2 descriptor write the core makes (reported through
//! [`Arch::pte_written`]), so tests can check break-before-make on x86-64:
//! *entry invalidated → DSB → TLBI → DSB → new entry written*.
//!
//! Semantics the implementation must provide (all "inner shareable", i.e.
//! visible to every CPU of the machine):
//! - [`Arch::tlbi_ipa`]: remove every TLB entry that may hold a translation of
//!   `ipa` for `vmid`, including combined Stage-1+2 entries (on Armv8:
//!   `tlbi ipas2e1is` with VTTBR_EL2 briefly holding `vmid`, `dsb ish`, then
//!   `tlbi vmalle1is` for that VMID). The caller issues the DSBs around it.
//! - [`Arch::tlbi_vmid`]: remove every entry of `vmid` (`tlbi vmalls12e1is`).
//! - [`Arch::tlbi_all`]: every guest entry of every VMID (`tlbi alle1is`).
//! - [`Arch::dsb_ish`], [`Arch::isb`]: the barriers of the same name.
//! - [`Arch::clean_dcache_page`]: clean (and invalidate) a page to the point
//!   of coherency (`dc civac` per line). It issues the maintenance only: the
//!   caller's next [`Arch::dsb_ish`] is what waits for it to complete, so a
//!   run of pages is cleaned with one barrier. Used on every page that leaves
//!   an owner whose lines may be dirty (a donated host page, after the host's
//!   mapping is gone; a scrubbed page), because with `HCR_EL2.FWB = 0` the
//!   new owner may access it non-cacheably (a guest with its MMU off): a
//!   stale line left dirty by the old owner must be neither seen by it nor
//!   evicted later over what it wrote. Whether a transition needs it is
//!   decided in one place, [`crate::handover`].
//! - [`Arch::clean_dcache_page_pou`]: clean a page to the point of
//!   unification (`dc cvau` per line), so instruction fetches see its data;
//!   completes at the next [`Arch::dsb_ish`].
//! - [`Arch::invalidate_icache_page`]: invalidate the instruction cache
//!   lines of a page to the point of unification, inner shareable (`ic
//!   ivau` per line); [`Arch::invalidate_icache_all`]: every instruction
//!   cache of the inner shareable domain (`ic ialluis`). Both complete at the
//!   next [`Arch::dsb_ish`]; the new owner's next entry (an `eret`) is its
//!   context synchronisation.
//! - [`Arch::dma_invalidate_host`]: the host's DMA view (an IOMMU that
//!   translates the host's devices through the host's Stage-2) forgets every
//!   cached translation of `[pa, pa + pages)`, and the IOMMU has *completed*
//!   that (a `CMD_SYNC` consumed) when the call returns: after it no device
//!   access can use a translation of those pages that the host Stage-2 no
//!   longer holds. The caller has already removed them from the host
//!   Stage-2 and completed the CPU's TLBI.
//! - [`Arch::dma_faults`]: the IOMMU's fault records drained and counted.

use crate::addr::{Ipa, PhysAddr};
use isola_sync::Mutex;

/// A Stage-2 VMID (8-bit VMIDs: `VTCR_EL2.VS = 0`). VMID 0 is the host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vmid(pub u16);

impl Vmid {
    /// The host's VMID.
    pub const HOST: Vmid = Vmid(0);
}

/// What the core needs from the CPU. Implementations must be callable from
/// every CPU at once (`Sync`).
pub trait Arch: Sync {
    /// Invalidate TLB entries for one IPA of one VMID (see module docs).
    fn tlbi_ipa(&self, vmid: Vmid, ipa: Ipa);
    /// Invalidate every TLB entry of one VMID.
    fn tlbi_vmid(&self, vmid: Vmid);
    /// Invalidate every Stage-1+2 TLB entry of every VMID.
    fn tlbi_all(&self);
    /// Data synchronisation barrier, inner shareable.
    fn dsb_ish(&self);
    /// Instruction synchronisation barrier.
    fn isb(&self);
    /// Clean and invalidate the data cache lines of a page to the PoC
    /// (complete only after the caller's next [`Arch::dsb_ish`]).
    fn clean_dcache_page(&self, pa: PhysAddr);
    /// Clean the data cache lines of a page to the PoU (complete only after
    /// the caller's next [`Arch::dsb_ish`]).
    fn clean_dcache_page_pou(&self, pa: PhysAddr);
    /// Invalidate the instruction cache lines of a page to the PoU, inner
    /// shareable (complete only after the caller's next [`Arch::dsb_ish`]).
    fn invalidate_icache_page(&self, pa: PhysAddr);
    /// Invalidate every instruction cache of the inner shareable domain to
    /// the PoU (complete only after the caller's next [`Arch::dsb_ish`]).
    fn invalidate_icache_all(&self);
    /// Remove `[pa, pa + pages)` from the host's DMA view and wait for the
    /// IOMMU to complete it (see the module docs).
    fn dma_invalidate_host(&self, pa: PhysAddr, pages: u64);
    /// The host's DMA faults so far: `[count, StreamID of the last, address
    /// of the last]` (zeros without an IOMMU). Drains the IOMMU's fault
    /// records first.
    fn dma_faults(&self) -> [u64; 3] {
        [0; 3]
    }
    /// Hook: the core just wrote the Stage-2 descriptor at `entry` (the
    /// physical address of the 8-byte entry) from `old` to `new`. Hardware
    /// needs nothing here; the recorder logs it to check ordering.
    fn pte_written(&self, entry: PhysAddr, old: u64, new: u64) {
        let _ = (entry, old, new);
    }
}

/// An `Arch` that does nothing: for benchmarks and loom models, where the
/// instructions do not exist and ordering is checked elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopArch;

impl Arch for NoopArch {
    fn tlbi_ipa(&self, _: Vmid, _: Ipa) {}
    fn tlbi_vmid(&self, _: Vmid) {}
    fn tlbi_all(&self) {}
    fn dsb_ish(&self) {}
    fn isb(&self) {}
    fn clean_dcache_page(&self, _: PhysAddr) {}
    fn clean_dcache_page_pou(&self, _: PhysAddr) {}
    fn invalidate_icache_page(&self, _: PhysAddr) {}
    fn invalidate_icache_all(&self) {}
    fn dma_invalidate_host(&self, _: PhysAddr, _: u64) {}
}

/// One request the core made, as logged by [`RecordingArch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchEvent {
    /// [`Arch::tlbi_ipa`].
    TlbiIpa { vmid: Vmid, ipa: Ipa },
    /// [`Arch::tlbi_vmid`].
    TlbiVmid(Vmid),
    /// [`Arch::tlbi_all`].
    TlbiAll,
    /// [`Arch::dsb_ish`].
    DsbIsh,
    /// [`Arch::isb`].
    Isb,
    /// [`Arch::clean_dcache_page`].
    CleanDcache(PhysAddr),
    /// [`Arch::clean_dcache_page_pou`].
    CleanDcachePou(PhysAddr),
    /// [`Arch::invalidate_icache_page`].
    InvalIcache(PhysAddr),
    /// [`Arch::invalidate_icache_all`].
    InvalIcacheAll,
    /// [`Arch::dma_invalidate_host`].
    DmaInvalidate { pa: PhysAddr, pages: u64 },
    /// [`Arch::pte_written`].
    PteWrite { entry: PhysAddr, old: u64, new: u64 },
}

/// How many events [`RecordingArch`] keeps before it counts overflow.
pub const RECORD_CAPACITY: usize = 4096;

struct Log {
    events: [Option<ArchEvent>; RECORD_CAPACITY],
    len: usize,
    overflowed: bool,
}

/// An `Arch` for host tests: logs every request, in order, into a fixed
/// buffer (no allocator needed). Tests read it with [`RecordingArch::for_each`]
/// and empty it with [`RecordingArch::clear`]. If more than
/// [`RECORD_CAPACITY`] events arrive between clears, the excess is dropped and
/// [`RecordingArch::overflowed`] turns true, so a test cannot silently check a
/// truncated log.
pub struct RecordingArch {
    log: Mutex<Log>,
}

impl Default for RecordingArch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingArch {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            log: Mutex::new(Log {
                events: [None; RECORD_CAPACITY],
                len: 0,
                overflowed: false,
            }),
        }
    }

    fn push(&self, e: ArchEvent) {
        let mut log = self.log.lock();
        let len = log.len;
        match log.events.get_mut(len) {
            Some(slot) => {
                *slot = Some(e);
                log.len = len.wrapping_add(1);
            }
            None => log.overflowed = true,
        }
    }

    /// Calls `f` with every event since the last clear, in order.
    pub fn for_each(&self, mut f: impl FnMut(ArchEvent)) {
        let log = self.log.lock();
        for e in log.events.iter().take(log.len).flatten() {
            f(*e);
        }
    }

    /// Copies the events since the last clear into `out`; returns how many
    /// were written (at most `out.len()`).
    pub fn events_into(&self, out: &mut [ArchEvent]) -> usize {
        let mut n = 0usize;
        let mut it = out.iter_mut();
        self.for_each(|e| {
            if let Some(slot) = it.next() {
                *slot = e;
                n = n.wrapping_add(1);
            }
        });
        n
    }

    /// Number of events since the last clear.
    pub fn len(&self) -> usize {
        self.log.lock().len
    }

    /// Whether no event arrived since the last clear.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether events were dropped since the last clear.
    pub fn overflowed(&self) -> bool {
        self.log.lock().overflowed
    }

    /// Forget every event.
    pub fn clear(&self) {
        let mut log = self.log.lock();
        log.len = 0;
        log.overflowed = false;
    }
}

impl Arch for RecordingArch {
    fn tlbi_ipa(&self, vmid: Vmid, ipa: Ipa) {
        self.push(ArchEvent::TlbiIpa { vmid, ipa });
    }
    fn tlbi_vmid(&self, vmid: Vmid) {
        self.push(ArchEvent::TlbiVmid(vmid));
    }
    fn tlbi_all(&self) {
        self.push(ArchEvent::TlbiAll);
    }
    fn dsb_ish(&self) {
        self.push(ArchEvent::DsbIsh);
    }
    fn isb(&self) {
        self.push(ArchEvent::Isb);
    }
    fn clean_dcache_page(&self, pa: PhysAddr) {
        self.push(ArchEvent::CleanDcache(pa));
    }
    fn clean_dcache_page_pou(&self, pa: PhysAddr) {
        self.push(ArchEvent::CleanDcachePou(pa));
    }
    fn invalidate_icache_page(&self, pa: PhysAddr) {
        self.push(ArchEvent::InvalIcache(pa));
    }
    fn invalidate_icache_all(&self) {
        self.push(ArchEvent::InvalIcacheAll);
    }
    fn dma_invalidate_host(&self, pa: PhysAddr, pages: u64) {
        self.push(ArchEvent::DmaInvalidate { pa, pages });
    }
    fn pte_written(&self, entry: PhysAddr, old: u64, new: u64) {
        self.push(ArchEvent::PteWrite { entry, old, new });
    }
}

/// A break-before-make violation found by [`check_break_before_make`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BbmViolation {
    /// A valid descriptor was overwritten by a different valid one.
    ValidToValid { entry: PhysAddr },
    /// An invalidated entry got a new valid descriptor before the
    /// `DSB, TLBI, DSB` sequence completed.
    RemadeTooEarly { entry: PhysAddr },
    /// The log ended with an invalidation whose TLBI sequence is incomplete.
    Unfinished { entry: PhysAddr },
    /// More concurrent invalidations than the checker tracks
    /// ([`BBM_PENDING`]).
    TooMany,
}

/// How many invalidations [`check_break_before_make`] tracks at once: a
/// batched unmap invalidates a whole level-3 table's entries (512) before
/// its one TLBI.
pub const BBM_PENDING: usize = 1024;

/// Checks a log for break-before-make: every valid entry that is replaced or
/// removed goes *valid → invalid*, then `dsb ish`, a TLBI, `dsb ish`, and only
/// then (if at all) *invalid → new valid*. The TLBI's scope is not matched
/// against the entry here (the log does not say which IPA an entry maps);
/// tests check that separately.
pub fn check_break_before_make(
    events: impl IntoIterator<Item = ArchEvent>,
) -> Result<(), BbmViolation> {
    // (entry, stage): 0 = needs DSB, 1 = needs TLBI, 2 = needs DSB, 3 = done.
    let mut pending: [Option<(PhysAddr, u8)>; BBM_PENDING] = [None; BBM_PENDING];
    for e in events {
        match e {
            ArchEvent::DsbIsh => {
                for (_, st) in pending.iter_mut().flatten() {
                    if *st == 0 || *st == 2 {
                        *st = st.wrapping_add(1);
                    }
                }
            }
            ArchEvent::TlbiIpa { .. } | ArchEvent::TlbiVmid(_) | ArchEvent::TlbiAll => {
                for (_, st) in pending.iter_mut().flatten() {
                    if *st == 1 {
                        *st = 2;
                    }
                }
            }
            ArchEvent::PteWrite { entry, old, new } => {
                let old_valid = old & 1 != 0;
                let new_valid = new & 1 != 0;
                if old_valid && new_valid && old != new {
                    return Err(BbmViolation::ValidToValid { entry });
                }
                if let Some(p) = pending
                    .iter_mut()
                    .find(|p| matches!(p, Some((e, _)) if *e == entry))
                    && let Some((_, st)) = *p
                {
                    if new_valid && st < 3 {
                        return Err(BbmViolation::RemadeTooEarly { entry });
                    }
                    if st == 3 {
                        *p = None;
                    }
                }
                if old_valid && !new_valid {
                    let slot = pending
                        .iter_mut()
                        .find(|p| p.is_none())
                        .ok_or(BbmViolation::TooMany)?;
                    *slot = Some((entry, 0));
                }
            }
            ArchEvent::Isb
            | ArchEvent::CleanDcache(_)
            | ArchEvent::CleanDcachePou(_)
            | ArchEvent::InvalIcache(_)
            | ArchEvent::InvalIcacheAll
            | ArchEvent::DmaInvalidate { .. } => {}
        }
    }
    match pending.iter().flatten().find(|(_, st)| *st < 3) {
        Some((entry, _)) => Err(BbmViolation::Unfinished { entry: *entry }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_order_and_reports_overflow() {
        let r = RecordingArch::new();
        r.dsb_ish();
        r.tlbi_ipa(Vmid(3), Ipa::new(0x1000));
        r.isb();
        let mut v = Vec::new();
        r.for_each(|e| v.push(e));
        assert_eq!(
            v,
            [
                ArchEvent::DsbIsh,
                ArchEvent::TlbiIpa {
                    vmid: Vmid(3),
                    ipa: Ipa::new(0x1000)
                },
                ArchEvent::Isb
            ]
        );
        for _ in 0..RECORD_CAPACITY {
            r.isb();
        }
        assert!(r.overflowed());
        assert_eq!(r.len(), RECORD_CAPACITY);
        r.clear();
        assert!(r.is_empty() && !r.overflowed());
    }

    #[test]
    fn recorder_logs_every_request_with_its_arguments() {
        let r = RecordingArch::new();
        let pa = PhysAddr::new(0x4000_2000);
        r.tlbi_ipa(Vmid(1), Ipa::new(0x3000));
        r.tlbi_vmid(Vmid(2));
        r.tlbi_all();
        r.dsb_ish();
        r.isb();
        r.clean_dcache_page(pa);
        r.clean_dcache_page_pou(pa);
        r.invalidate_icache_page(pa);
        r.invalidate_icache_all();
        r.dma_invalidate_host(pa, 3);
        r.pte_written(pa, 1, 0);
        assert!(!r.is_empty());
        let mut out = [ArchEvent::Isb; 16];
        let n = r.events_into(&mut out);
        assert_eq!(
            out.get(..n).unwrap(),
            [
                ArchEvent::TlbiIpa {
                    vmid: Vmid(1),
                    ipa: Ipa::new(0x3000)
                },
                ArchEvent::TlbiVmid(Vmid(2)),
                ArchEvent::TlbiAll,
                ArchEvent::DsbIsh,
                ArchEvent::Isb,
                ArchEvent::CleanDcache(pa),
                ArchEvent::CleanDcachePou(pa),
                ArchEvent::InvalIcache(pa),
                ArchEvent::InvalIcacheAll,
                ArchEvent::DmaInvalidate { pa, pages: 3 },
                ArchEvent::PteWrite {
                    entry: pa,
                    old: 1,
                    new: 0
                },
            ]
        );
        // Without an IOMMU there are no DMA faults to report.
        assert_eq!(r.dma_faults(), [0; 3]);
        assert_eq!(NoopArch.dma_faults(), [0; 3]);
    }

    #[test]
    fn bbm_checker_has_teeth() {
        let e = PhysAddr::new(0x1000);
        let w = |old, new| ArchEvent::PteWrite { entry: e, old, new };
        let tlbi = ArchEvent::TlbiVmid(Vmid(1));
        let good = [w(3, 0), ArchEvent::DsbIsh, tlbi, ArchEvent::DsbIsh, w(0, 7)];
        assert_eq!(check_break_before_make(good), Ok(()));
        assert_eq!(
            check_break_before_make([w(3, 7)]),
            Err(BbmViolation::ValidToValid { entry: e })
        );
        let no_tlbi = [w(3, 0), ArchEvent::DsbIsh, ArchEvent::DsbIsh, w(0, 7)];
        assert_eq!(
            check_break_before_make(no_tlbi),
            Err(BbmViolation::RemadeTooEarly { entry: e })
        );
        let no_dsb = [w(3, 0), tlbi, ArchEvent::DsbIsh, w(0, 7)];
        assert_eq!(
            check_break_before_make(no_dsb),
            Err(BbmViolation::RemadeTooEarly { entry: e })
        );
        // An entry that was never valid cannot be in a TLB: writing it,
        // invalid or valid, needs no invalidation.
        assert_eq!(check_break_before_make([w(0, 0), w(0, 7)]), Ok(()));
        // Writing the broken entry again, still invalid, finishes nothing.
        assert_eq!(
            check_break_before_make([w(3, 0), w(0, 0)]),
            Err(BbmViolation::Unfinished { entry: e })
        );
        let unfinished = [w(3, 0), ArchEvent::DsbIsh, tlbi];
        assert_eq!(
            check_break_before_make(unfinished),
            Err(BbmViolation::Unfinished { entry: e })
        );
    }
}
