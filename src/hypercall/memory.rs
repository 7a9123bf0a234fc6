//! Page transitions: the host's `Share`, `Donate`, `Unshare` and `Reclaim`,
//! the guest's `Share`, `Unshare` and `Relinquish`, and the helpers that
//! check and move runs of pages one shard lock at a time.
//!
//! Every transition takes the VM's slot lock first, then page or shard
//! locks, under which it edits the host Stage-2 (taking the host table
//! pool's lock only for a table: the lock order of docs/ownership.md),
//! removes the losing side's mapping (with its TLBI), settles the transition
//! (the maintenance [`crate::handover::plan`] decides: the host's DMA view,
//! the scrub, the caches) and only then writes the new side's mapping.

use crate::addr::{Ipa, PAGE_SIZE, Pfn, PhysAddr};
use crate::arch::Arch;
use crate::engine::Engine;
use crate::handover::Transition;
use crate::ownership::{Owner, PageRecord, ShardGuard};
use crate::stage2::{Perms, S2Error, Stage2, desc};
use crate::vm::{SlotState, VmInner};
use isola_abi::{DONATE_MAX_PAGES, Status};

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PageOp {
    Share,
    Unshare,
    Relinquish,
}

impl<A: Arch> Engine<A> {
    /// `InvalidArgument` unless `[pa, pa + pages)` is a non-empty,
    /// page-aligned run of RAM.
    pub(super) fn check_run(&self, pa: PhysAddr, pages: u64) -> Result<(), Status> {
        if pages == 0 || !pa.is_page_aligned() {
            return Err(Status::InvalidArgument);
        }
        if self.db.in_one_range(pa, pages) {
            return Ok(());
        }
        let mut p = pa;
        for _ in 0..pages {
            if !self.db.is_ram(p) {
                return Err(Status::InvalidArgument);
            }
            p = p.checked_add(PAGE_SIZE).ok_or(Status::InvalidArgument)?;
        }
        Ok(())
    }

    /// `NotOwner` unless every page of the run is the host's, unshared.
    /// One shard lock per shard the run crosses, not one per page.
    pub(super) fn check_host_owned(&self, pa: PhysAddr, pages: u64) -> Result<(), Status> {
        self.for_each_shard_run(pa, pages, &mut |sg, first, n| {
            if all_host(sg, first, n) {
                Ok(())
            } else {
                Err(Status::NotOwner)
            }
        })
    }

    /// Calls `f(shard, first, n)` for each part of the RAM run `[pa, pa +
    /// pages)` that lies in one shard, in ascending order, holding that
    /// shard's lock (one at a time: lock order), and stops at the first
    /// error. A page that is not RAM is `InvalidArgument`.
    pub(super) fn for_each_shard_run(
        &self,
        pa: PhysAddr,
        pages: u64,
        f: &mut dyn FnMut(&mut ShardGuard<'_>, Pfn, u64) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let mut pfn = Pfn::from_aligned(pa).ok_or(Status::InvalidArgument)?;
        let mut left = pages;
        while left > 0 {
            let (shard, idx) = self.db.locate(pfn).ok_or(Status::InvalidArgument)?;
            let mut sg = self.db.lock_shard(shard).ok_or(Status::InvalidArgument)?;
            let n = sg.pages().saturating_sub(idx as u64).min(left);
            if n == 0 {
                return Err(Status::InvalidArgument);
            }
            f(&mut sg, pfn, n)?;
            drop(sg);
            left = left.wrapping_sub(n);
            pfn = Pfn::new(pfn.raw().wrapping_add(n));
        }
        Ok(())
    }

    /// `Share(handle, pa, ipa, perms)`: the host page is lent to the VM.
    pub(super) fn share(&self, handle: u64, pa: PhysAddr, ipa: Ipa, perms: u64) -> CallResult {
        self.check_run(pa, 1)?;
        self.check_guest_ipa(ipa)?;
        let perms = Perms::from_abi(perms).ok_or(Status::InvalidArgument)?;
        let (slot, mut g) = self.lock_vm(handle)?;
        let me = Owner::Vm(slot as u16);
        let mut pg = self.db.lock_page(pa).ok_or(Status::InvalidArgument)?;
        if pg.get() != PageRecord::HOST {
            return Err(Status::NotOwner);
        }
        let s2 = g.s2.ok_or(Status::NotFound)?;
        let g = &mut *g;
        let entry = s2
            .prepare_page(&self.mem, &self.arch, &mut g.pool, ipa, &mut g.page_hint)
            .map_err(s2_status)?;
        pg.set(PageRecord::shared(Owner::Host, me));
        g.borrowed = g.borrowed.wrapping_add(1);
        self.settle(Transition::HostLends { exec: perms.x }, pa, 1);
        s2.install_leaf(
            &self.mem,
            &self.arch,
            entry,
            desc::Desc::leaf(pa, 3, perms, self.vm_normal, desc::SW_BORROWED),
        );
        Ok([0; 3])
    }

    /// `Donate(handle, pa, ipa, perms, pages)`: `pages` (0 meaning 1) host
    /// pages from `pa` become the VM's, mapped from `ipa`.
    ///
    /// All or nothing. Under the VM's lock (which alone guards its Stage-2
    /// and pool) every page is checked in the documented order: format, the
    /// handle, ownership (one shard lock per shard crossed), every IPA
    /// unmapped and the pool holding the tables needed. Then, shard by
    /// shard, the records change and the host loses its mappings (under the
    /// shard lock, the pool's lock only for a split's table: the lock order;
    /// the unmap of a shard's part is one batch with one TLBI and `dsb
    /// ish`); then the run is settled once
    /// ([`Engine::settle`]: one DMA-view invalidation and sync for the whole
    /// run, the clean to the PoC unless FWB, the instruction cache if the
    /// mapping is executable, one `dsb ish`); last the VM's Stage-2 gets the
    /// whole run with one barrier. Between the ownership check and the
    /// commit of a run crossing shards the shard locks are dropped, so a
    /// page another CPU took in between (a host racing its own calls on the
    /// same pages) undoes the pages already moved and fails `NotOwner`, as
    /// `VmCreate` does. If the mapping step fails after all (it cannot while
    /// [`Stage2::check_run_unmapped`] counts exactly), [`Engine::undo_donate`]
    /// puts every page back, so no error leaves a page the VM's records name
    /// but its count does not.
    pub(super) fn donate(
        &self,
        handle: u64,
        pa: PhysAddr,
        ipa: Ipa,
        perms: u64,
        pages: u64,
    ) -> CallResult {
        let n = pages.max(1);
        if n > DONATE_MAX_PAGES {
            return Err(Status::InvalidArgument);
        }
        self.check_run(pa, n)?;
        self.check_guest_ipa_run(ipa, n)?;
        let perms = Perms::from_abi(perms).ok_or(Status::InvalidArgument)?;
        let (slot, mut g) = self.lock_vm(handle)?;
        let me = PageRecord::owned(Owner::Vm(slot as u16));
        let s2 = g.s2.ok_or(Status::NotFound)?;
        let mt = self.vm_normal;
        let handover = Transition::HostDonates { exec: perms.x };
        let leaf = |i: u64| {
            desc::Desc::leaf(
                pa.wrapping_add_bytes(i.wrapping_mul(PAGE_SIZE)),
                3,
                perms,
                mt,
                0,
            )
        };
        let first = Pfn::from_aligned(pa).ok_or(Status::InvalidArgument)?;
        let (shard, idx) = self.db.locate(first).ok_or(Status::InvalidArgument)?;
        let mut sg = self.db.lock_shard(shard).ok_or(Status::InvalidArgument)?;
        if sg.pages().saturating_sub(idx as u64) >= n {
            // The run lies in one shard (always so for one page): its lock
            // is held from the ownership check to the commit, so nothing
            // can change in between and there is nothing to undo.
            if !all_host(&sg, first, n) {
                return Err(Status::NotOwner);
            }
            if n == 1 {
                // `prepare_leaf` checks the mapping, then the tables, and
                // changes nothing unless both pass; after it nothing fails.
                let g = &mut *g;
                let entry = s2
                    .prepare_page(&self.mem, &self.arch, &mut g.pool, ipa, &mut g.page_hint)
                    .map_err(s2_status)?;
                self.take_from_host(&mut sg, first, 1, me);
                self.settle(handover, pa, 1);
                s2.install_leaf(&self.mem, &self.arch, entry, leaf(0));
                g.owned = g.owned.wrapping_add(1);
                return Ok([0; 3]);
            }
            let tables = s2
                .check_run_unmapped(&self.mem, ipa, n)
                .map_err(s2_status)?;
            if tables > g.pool.free() {
                return Err(Status::NoMemory);
            }
            self.take_from_host(&mut sg, first, n, me);
            // The records are committed; the clean and the mapping need no
            // shard lock, and an undo takes it again.
            drop(sg);
        } else {
            drop(sg);
            // The run crosses shards: check every page one shard at a time,
            // then the mapping and tables, then move the pages shard by shard.
            self.check_host_owned(pa, n)?;
            let tables = s2
                .check_run_unmapped(&self.mem, ipa, n)
                .map_err(s2_status)?;
            if tables > g.pool.free() {
                return Err(Status::NoMemory);
            }
            let mut moved = 0u64;
            let taken = self.for_each_shard_run(pa, n, &mut |sg, first, k| {
                if !all_host(sg, first, k) {
                    return Err(Status::NotOwner);
                }
                self.take_from_host(sg, first, k, me);
                moved = moved.wrapping_add(k);
                Ok(())
            });
            if let Err(e) = taken {
                // Only the first `moved` pages changed; nobody saw them
                // mapped in the VM, and the host refaults the ones it lost.
                self.give_back_run(pa, moved);
                return Err(e);
            }
        }
        self.settle(handover, pa, n);
        if let Err(e) = self.map_donated_run(s2, &mut g, ipa, n, &mut |i| leaf(i)) {
            let kept = self.undo_donate(s2, pa, ipa, n);
            g.owned = g.owned.wrapping_add(kept);
            return Err(s2_status(e));
        }
        g.owned = g.owned.wrapping_add(n);
        Ok([0; 3])
    }

    /// The mapping step of a batched `Donate`: [`Stage2::map_run`]. In unit
    /// tests a one-shot hook makes it map only a prefix of the run and fail,
    /// which no reachable state does, so [`Engine::undo_donate`] can be
    /// exercised.
    pub(super) fn map_donated_run(
        &self,
        s2: Stage2,
        g: &mut VmInner,
        ipa: Ipa,
        n: u64,
        leaf: &mut dyn FnMut(u64) -> desc::Desc,
    ) -> Result<(), S2Error> {
        #[cfg(test)]
        if let Some(k) = super::tests::FAIL_MAP_AFTER.take() {
            s2.map_run(&self.mem, &self.arch, &mut g.pool, ipa, k.min(n), leaf)?;
            return Err(S2Error::NoMemory);
        }
        s2.map_run(&self.mem, &self.arch, &mut g.pool, ipa, n, leaf)
    }

    /// Undoes a `Donate` of the `n` pages from `pa` to `ipa` whose records
    /// are already the VM's but whose mapping failed part way (the caller
    /// holds the VM's lock; the VM's count does not include the run yet).
    ///
    /// Every page the VM's Stage-2 maps at its IPA is unmapped (break-before-
    /// make, with the VM's TLBI) and scrubbed, since a running vCPU may have
    /// written it; then the pages go back to the host and into its Stage-2,
    /// so ownership is as before the call. Two traces stay, neither of them
    /// ownership: the scrubbed pages lost the host's data (a guest may have
    /// replaced it), and tables `map_run` built stay in the VM's Stage-2,
    /// empty, for its next mapping. A page whose leaf cannot be
    /// removed (none can fail: `map_run` writes level-3 leaves only) stays
    /// the VM's; the count of those is returned for the caller to add to
    /// the VM's owned pages, so Reclaim finds them after `VmDestroy`.
    pub(crate) fn undo_donate(&self, s2: Stage2, pa: PhysAddr, ipa: Ipa, n: u64) -> u64 {
        let mut kept = 0u64;
        for i in 0..n {
            let off = i.wrapping_mul(PAGE_SIZE);
            let p = pa.wrapping_add_bytes(off);
            let at = Ipa::new(ipa.raw().wrapping_add(off));
            let mapped = |s2: &Stage2| s2.translate(&self.mem, at).is_some_and(|t| t.pa == p);
            let transition = if mapped(&s2) {
                let _ = s2.unmap_leaf(&self.mem, &self.arch, at);
                if mapped(&s2) {
                    kept = kept.wrapping_add(1);
                    continue;
                }
                Transition::VmToHost
            } else {
                Transition::HostTakesBack
            };
            if let Some(mut pg) = self.db.lock_page(p) {
                self.settle(transition, p, 1);
                pg.set(PageRecord::HOST);
                self.host_map(&mut pg, p);
            }
        }
        kept
    }

    /// Gives the first `n` pages of the run from `pa` back to the host, one
    /// shard lock at a time, records and Stage-2: the undo of a `Donate`,
    /// `VmCreate` or `VmTopup` that took them from the host but let no other
    /// world see them (contents unchanged, nothing to maintain).
    pub(super) fn give_back_run(&self, pa: PhysAddr, n: u64) {
        if n == 0 {
            return;
        }
        self.settle(Transition::HostTakesBack, pa, n);
        let _ = self.for_each_shard_run(pa, n, &mut |sg, first, k| {
            for i in 0..k {
                sg.set(Pfn::new(first.raw().wrapping_add(i)), PageRecord::HOST);
            }
            self.host_map_run(sg, first, k);
            Ok(())
        });
    }

    /// Gives the `k` pages from `first` (all in `sg`'s shard, all checked
    /// host-owned under this same lock hold) the record `to`, and removes
    /// them from the host Stage-2 as one batch: the host's CPUs lose the
    /// pages before anyone else gets them (its DMA view loses them when the
    /// caller settles the transition).
    pub(super) fn take_from_host(
        &self,
        sg: &mut ShardGuard<'_>,
        first: Pfn,
        k: u64,
        to: PageRecord,
    ) {
        for i in 0..k {
            sg.set(Pfn::new(first.raw().wrapping_add(i)), to);
        }
        #[cfg(not(feature = "planted-bug-donate-keeps-host-mapping"))]
        if sg.host_mapped() {
            match first.checked_addr() {
                Some(pa) if k == 1 => self.host_unmap_page(sg.host_l2(), pa),
                _ => self.host_unmap_run(first, k),
            }
        }
    }

    /// `InvalidArgument` unless `[ipa, ipa + pages)` are page-aligned guest
    /// RAM IPAs (inside the IPA space, none in the guest MMIO window).
    pub(super) fn check_guest_ipa_run(&self, ipa: Ipa, pages: u64) -> Result<(), Status> {
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| ipa.raw().checked_add(len))
            .ok_or(Status::InvalidArgument)?;
        let (mmio_start, mmio_end) = self.guest_mmio;
        if !ipa.is_page_aligned()
            || end > self.vm_s2.ipa_limit()
            || (ipa.raw() < mmio_end && end > mmio_start)
        {
            return Err(Status::InvalidArgument);
        }
        Ok(())
    }

    /// `InvalidArgument` unless `ipa` is a page-aligned guest RAM IPA.
    pub(super) fn check_guest_ipa(&self, ipa: Ipa) -> Result<(), Status> {
        if !ipa.is_page_aligned() || ipa.raw() >= self.vm_s2.ipa_limit() || self.in_guest_mmio(ipa)
        {
            return Err(Status::InvalidArgument);
        }
        Ok(())
    }

    /// `Unshare(handle, pa, ipa)`: ends a host `Share`. One walk of the VM's
    /// Stage-2 at `ipa` confirms the lent mapping (the record does not keep
    /// the IPA; the host, which chose it, names it).
    pub(super) fn host_unshare(&self, handle: u64, pa: PhysAddr, ipa: Ipa) -> CallResult {
        self.check_run(pa, 1)?;
        self.check_guest_ipa(ipa)?;
        let (slot, mut g) = self.lock_vm(handle)?;
        let me = Owner::Vm(slot as u16);
        let mut pg = self.db.lock_page(pa).ok_or(Status::InvalidArgument)?;
        if pg.get() != PageRecord::shared(Owner::Host, me) {
            return Err(Status::NotOwner);
        }
        let s2 = g.s2.ok_or(Status::NotFound)?;
        // `Share` maps at level 3 only, so a borrowed leaf naming `pa` at
        // `ipa` is exactly the mapping the share made.
        match s2.translate(&self.mem, ipa) {
            Some(t) if t.pa == pa && t.desc.borrowed() => {}
            _ => return Err(Status::NotMapped),
        }
        s2.unmap_page(&self.mem, &self.arch, &mut g.pool, ipa)
            .map_err(s2_status)?;
        self.settle(Transition::LendEnds, pa, 1);
        pg.set(PageRecord::HOST);
        g.borrowed = g.borrowed.wrapping_sub(1);
        Ok([0; 3])
    }

    /// `Reclaim(pa)`: a destroyed VM's page back to the host, scrubbed.
    pub(super) fn reclaim(&self, pa: PhysAddr) -> CallResult {
        self.check_run(pa, 1)?;
        let rec = self.db.record(pa).ok_or(Status::InvalidArgument)?;
        let Owner::Vm(slot) = rec.owner() else {
            return Err(Status::NotOwner);
        };
        let s = self.vms.get(usize::from(slot)).ok_or(Status::NotOwner)?;
        let mut g = s.inner.lock();
        if g.state == SlotState::Live {
            return Err(Status::Denied);
        }
        let mut pg = self.db.lock_page(pa).ok_or(Status::InvalidArgument)?;
        if pg.get() != PageRecord::owned(Owner::Vm(slot)) || g.state != SlotState::Dead {
            return Err(Status::NotOwner);
        }
        self.settle(Transition::VmToHost, pa, 1);
        pg.set(PageRecord::HOST);
        self.host_map(&mut pg, pa);
        g.owned = g.owned.wrapping_sub(1);
        if g.owned == 0 {
            g.state = SlotState::Free;
        }
        s.publish(&g);
        Ok([0; 3])
    }

    pub(super) fn guest_page_op(&self, vcpu: &LoadedVcpu, ipa: Ipa, op: PageOp) -> CallResult {
        if !ipa.is_page_aligned() || ipa.raw() >= self.vm_s2.ipa_limit() {
            return Err(Status::InvalidArgument);
        }
        let slot = vcpu.slot;
        let mut g = self
            .vms
            .get(usize::from(slot))
            .ok_or(Status::NotFound)?
            .inner
            .lock();
        let s2: Stage2 = g.s2.ok_or(Status::NotFound)?;
        let t = s2.translate(&self.mem, ipa).ok_or(Status::NotMapped)?;
        let pa = t.pa;
        let mut pg = self.db.lock_page(pa).ok_or(Status::NotOwner)?;
        let me = Owner::Vm(slot);
        let rec = pg.get();
        match op {
            PageOp::Share if rec == PageRecord::owned(me) => {
                pg.set(PageRecord::shared(me, Owner::Host));
                self.settle(Transition::GuestShares, pa, 1);
                self.host_map(&mut pg, pa);
                g.guest_shared = g.guest_shared.wrapping_add(1);
            }
            PageOp::Unshare if rec == PageRecord::shared(me, Owner::Host) => {
                pg.set(PageRecord::owned(me));
                self.host_unmap(&pg, pa);
                self.settle(Transition::GuestUnshares, pa, 1);
                g.guest_shared = g.guest_shared.wrapping_sub(1);
            }
            PageOp::Relinquish if rec == PageRecord::owned(me) => {
                s2.unmap_page(&self.mem, &self.arch, &mut g.pool, ipa)
                    .map_err(s2_status)?;
                self.settle(Transition::VmToHost, pa, 1);
                pg.set(PageRecord::HOST);
                self.host_map(&mut pg, pa);
                g.owned = g.owned.wrapping_sub(1);
            }
            _ => return Err(Status::NotOwner),
        }
        Ok([0; 3])
    }
}

/// Whether the `n` pages from `first` (in `sg`'s shard) are all the host's, unshared.
pub(super) fn all_host(sg: &ShardGuard<'_>, first: Pfn, n: u64) -> bool {
    sg.records(first, n)
        .is_some_and(|r| r.iter().all(|&r| r == PageRecord::HOST))
}
