//! VM and vCPU lifecycle: `VmCreate` (a free slot, the pool taken from
//! the host, the Stage-2 root), `VmDestroy` (lent pages back, shared pages
//! private again, the VMID invalidated, the pool scrubbed back to the host),
//! `VmTopup` and `VcpuCreate`.

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::arch::Arch;
use crate::engine::Engine;
use crate::handover::Transition;
use crate::ownership::{Owner, PageRecord};
use crate::stage2::{PageHint, Stage2};
use crate::vcpu::{Context, MAX_VCPUS, VcpuState};
use crate::vm::{SlotState, VcpuSlot, VmHandle, VmInner, vmid_of};
use isola_abi::{Status, vcpu_flags};

use super::memory::all_host;
use super::*;

impl<A: Arch> Engine<A> {
    /// Moves the host's run into `slot`'s pool (caller holds the slot).
    /// All-or-nothing: a page that changed hands since the check undoes the
    /// pages already moved and fails `NotOwner`.
    /// The first `in_use` pages are the engine's at once (the Stage-2 root):
    /// zeroed and counted in the pool but not put on its free list.
    ///
    /// Shard by shard the records change and the host's Stage-2 loses the
    /// pages (one batch each); then the transition is settled: the host's DMA
    /// view forgets the run, completed, before the engine writes a byte of it
    /// (a zeroed root, the pool's free-list links), so no device of the host
    /// can reach them afterwards.
    pub(super) fn take_into_pool(
        &self,
        slot: usize,
        g: &mut VmInner,
        pa: PhysAddr,
        pages: u64,
        in_use: u64,
    ) -> Result<(), Status> {
        let rec = PageRecord::pool(slot as u16);
        let mut moved = 0u64;
        let taken = self.for_each_shard_run(pa, pages, &mut |sg, first, k| {
            if !all_host(sg, first, k) {
                return Err(Status::NotOwner);
            }
            self.take_from_host(sg, first, k, rec);
            moved = moved.wrapping_add(k);
            Ok(())
        });
        if let Err(e) = taken {
            self.give_back_run(pa, moved);
            return Err(match e {
                Status::InvalidArgument => Status::NotOwner,
                e => e,
            });
        }
        self.settle(Transition::HostToPool, pa, pages);
        let mut p = pa;
        for i in 0..pages {
            if i < in_use {
                let _ = self.mem.zero_page(p);
                g.pool.add_in_use();
            } else {
                let _ = g.pool.add(&self.mem, p);
            }
            p = p.wrapping_add_bytes(PAGE_SIZE);
        }
        Ok(())
    }

    /// `VmCreate(pa, pages, max_vcpus)`.
    pub fn vm_create(&self, pa: PhysAddr, pages: u64, max_vcpus: u64) -> CallResult {
        self.check_run(pa, pages)?;
        if max_vcpus == 0 || max_vcpus > MAX_VCPUS as u64 {
            return Err(Status::InvalidArgument);
        }
        self.check_host_owned(pa, pages)?;
        let root_pages = self.vm_s2.root_pages();
        let root_bytes = root_pages.wrapping_mul(PAGE_SIZE);
        // The root (concatenated tables) is the first `root_pages` of the
        // run, which must be aligned to them.
        if pages < root_pages || !pa.is_aligned(root_bytes) {
            return Err(Status::NoMemory);
        }
        // Find a free slot without waiting on any other VM's lock: claim it
        // by compare-and-swap (`VmSlot::try_claim`), then take its lock,
        // which nobody else wants (a free slot has no VM to operate on).
        for (slot, s) in self.vms.iter().enumerate() {
            if !s.try_claim() {
                continue;
            }
            let mut g = s.inner.lock();
            if g.state != SlotState::Free {
                // Unreachable: an unclaimed slot is free (vm.rs). Leave it
                // claimed, as a slot that is not free must be.
                continue;
            }
            if let Err(e) = self.take_into_pool(slot, &mut g, pa, pages, root_pages) {
                s.publish(&g);
                return Err(e);
            }
            let generation = g.generation;
            g.s2 = Some(Stage2::new(pa, self.vm_s2, vmid_of(slot)));
            g.page_hint = PageHint::NONE;
            g.state = SlotState::Live;
            g.max_vcpus = max_vcpus as u16;
            g.vcpus = [VcpuSlot::default(); MAX_VCPUS];
            g.owned = 0;
            g.borrowed = 0;
            g.guest_shared = 0;
            g.off = false;
            return Ok([VmHandle::new(slot as u16, generation).0, 0, 0]);
        }
        Err(Status::NoMemory)
    }

    /// `VmDestroy(handle)`.
    pub fn vm_destroy(&self, handle: u64) -> CallResult {
        let (slot, mut g) = self.lock_vm(handle)?;
        if g.any_loaded() {
            return Err(Status::Busy);
        }
        let Some(s2) = g.s2.take() else {
            return Err(Status::NotFound);
        };
        let me = Owner::Vm(slot as u16);
        let mut borrowed = 0u64;
        // Only lent pages (marked in their descriptor) and pages the guest
        // shared need their records changed; the counts say how many are
        // left, so the pages are locked only while some are, and a VM with
        // none skips the walk.
        let mut lent_left = g.borrowed;
        let mut shared_left = g.guest_shared;
        if lent_left > 0 || shared_left > 0 {
            s2.for_each_leaf(&self.mem, &mut |_, d, _| {
                if (d.borrowed() && lent_left == 0) || (!d.borrowed() && shared_left == 0) {
                    return;
                }
                let pa = d.addr();
                let Some(mut pg) = self.db.lock_page(pa) else {
                    return;
                };
                let r = pg.get();
                // No vCPU of this VM is loaded, and none can be while the
                // slot is held: the VM has lost its access to every page
                // already, so each transition is settled here, in the walk.
                if r == PageRecord::shared(Owner::Host, me) {
                    self.settle(Transition::LendEnds, pa, 1);
                    pg.set(PageRecord::HOST);
                    borrowed = borrowed.wrapping_add(1);
                    lent_left = lent_left.saturating_sub(1);
                } else if r == PageRecord::shared(me, Owner::Host) {
                    pg.set(PageRecord::owned(me));
                    self.host_unmap(&pg, pa);
                    self.settle(Transition::GuestUnshares, pa, 1);
                    shared_left = shared_left.saturating_sub(1);
                }
            });
        }
        g.guest_shared = 0;
        // No vCPU is loaded, so no CPU runs with this VMID: invalidate it all
        // before the tables are reused and before the VMID can be reused.
        self.arch.dsb_ish();
        self.arch.tlbi_vmid(s2.vmid());
        self.arch.dsb_ish();
        s2.free_tables(&self.mem, &mut g.pool);
        for i in 0..MAX_VCPUS {
            if let Some(v) = g.vcpus.get(i).copied()
                && v.state != VcpuState::Absent
            {
                let _ = g.pool.release(&self.mem, PhysAddr::new(v.ctx));
            }
        }
        while let Some(p) = g.pool.drain_one(&self.mem) {
            if let Some(mut pg) = self.db.lock_page(p) {
                self.settle(Transition::PoolToHost, p, 1);
                pg.set(PageRecord::HOST);
                self.host_map(&mut pg, p);
            }
        }
        g.borrowed = g.borrowed.wrapping_sub(borrowed);
        g.generation = next_generation(g.generation);
        g.vcpus = [VcpuSlot::default(); MAX_VCPUS];
        g.off = false;
        g.state = if g.owned == 0 {
            SlotState::Free
        } else {
            SlotState::Dead
        };
        if let Some(s) = self.vms.get(slot) {
            s.publish(&g);
        }
        Ok([0; 3])
    }

    /// `VmTopup(handle, pa, pages)`.
    pub fn vm_topup(&self, handle: u64, pa: PhysAddr, pages: u64) -> CallResult {
        self.check_run(pa, pages)?;
        let (slot, mut g) = self.lock_vm(handle)?;
        self.check_host_owned(pa, pages)?;
        self.take_into_pool(slot, &mut g, pa, pages, 0)?;
        Ok([0; 3])
    }

    /// `VcpuCreate(handle, index, pc, x0, flags)`: with `vcpu_flags::OFF`
    /// the vCPU starts powered off (its context zeroed but for the reset
    /// PSTATE and SCTLR; `pc` and `x0` are ignored) and waits for a guest's
    /// `CPU_ON`.
    pub fn vcpu_create(&self, handle: u64, index: u64, pc: u64, x0: u64, flags: u64) -> CallResult {
        if flags & !vcpu_flags::ALL != 0 {
            return Err(Status::InvalidArgument);
        }
        let off = flags & vcpu_flags::OFF != 0;
        let (_, mut g) = self.lock_vm(handle)?;
        let i = vcpu_index(&g, index)?;
        if g.vcpus.get(i).is_none_or(|v| v.state != VcpuState::Absent) {
            return Err(Status::Denied);
        }
        let page = g.pool.alloc(&self.mem).ok_or(Status::NoMemory)?;
        let ctx = Context::new(page);
        let (pc, x0, state) = if off {
            (0, 0, VcpuState::Off)
        } else {
            (pc, x0, VcpuState::Idle)
        };
        ctx.init(&self.mem, pc, x0);
        if let Some(v) = g.vcpus.get_mut(i) {
            *v = VcpuSlot {
                state,
                ctx: page.raw(),
            };
        }
        Ok([0; 3])
    }
}

/// The generation after `g`, skipping 0 (no handle has generation 0).
pub(super) fn next_generation(g: u32) -> u32 {
    let n = g.wrapping_add(1);
    if n == 0 { 1 } else { n }
}
