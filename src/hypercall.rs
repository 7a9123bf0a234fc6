//! Hypercall dispatch: every `HostCall` and `GuestCall` of `isola_abi`, and
//! the guest-exit path of `VcpuRun`.
//!
//! # Check order (host calls)
//!
//! Every call checks, in this order, and fails with the first that applies;
//! a failed call changes nothing observable (records, counts, mappings,
//! contexts):
//!
//! 1. function id (`w0`; SMCCC: the upper half of `x0` is ignored) → `NotSupported`;
//! 2. argument format: alignment, RAM range, IPA range and the guest MMIO
//!    window, permission bits, `max vcpus`, accounting selector →
//!    `InvalidArgument`;
//! 3. handle, then vCPU index → `NotFound`;
//! 4. the object's state: vCPU loaded → `Busy`; vCPU off or stopped, VM
//!    powered off, vCPU created twice, page of a live VM reclaimed → `Denied`;
//! 5. page ownership → `NotOwner`;
//! 6. the mapping → `AlreadyMapped` / `NotMapped`;
//! 7. resources (VM table, pool) → `NoMemory`.
//!
//! Guest calls (`Share`, `Unshare`, `Relinquish` of an IPA) check format
//! (`InvalidArgument`), then that the IPA is mapped (`NotMapped`), then that
//! the page is the caller's in the state the call needs (`NotOwner`).
//!
//! Results the call does not name are zero in `x1..=x3`; `x4..=x6` are
//! left as the caller passed them (SMCCC: preserved), so they carry nothing
//! of the engine's.
#![deny(unsafe_code)]

use crate::abort::{self, Esr, GuestAbort, ec};
use crate::addr::{Ipa, PAGE_SIZE, Pfn, PhysAddr};
use crate::arch::Arch;
use crate::engine::Engine;
use crate::ownership::{Owner, PageRecord, ShardGuard};
use crate::stage2::{MemType, Perms, S2Error, Stage2, desc};
use crate::vcpu::{Context, MAX_VCPUS, Pending, Regs, VcpuState};
use crate::vm::{SlotState, VcpuSlot, VmHandle, VmInner, vmid_of};
use isola_abi::{
    ABI_VERSION, Accounting, DONATE_MAX_PAGES, Exit, GuestCall, HostCall, Status, features, lr,
    vcpu_flags,
};
use isola_sync::MutexGuard;

/// Feature bits every engine reports by `Version`; an engine with virtual
/// interrupts adds its list-register count ([`Engine::features`]).
pub const FEATURES: u64 = features::GUEST_PSCI | features::ABORT_INJECTION;

/// What the exception vector does after a host `hvc`.
#[derive(Debug, PartialEq, Eq)]
pub enum HostCallOutcome {
    /// The call finished; `regs` hold its result. Return to the host.
    Done,
    /// `VcpuRun` loaded this vCPU: switch to it (world switch), then feed its
    /// exits to [`Engine::guest_exit`] until one says `ExitToHost`, then call
    /// [`Engine::finish_run`].
    Run(LoadedVcpu),
}

/// A vCPU loaded on this physical CPU: the token the world switch holds
/// between `VcpuRun` and the exit back to the host. Not `Clone`: there is one
/// per load, consumed by [`Engine::finish_run`].
#[derive(Debug, PartialEq, Eq)]
pub struct LoadedVcpu {
    slot: u16,
    index: u16,
    cpu: u32,
    ctx: Context,
    vttbr: u64,
    /// The VM's vCPU count (`max vcpus`), for decoding SGI targets.
    vcpus: u16,
}

impl LoadedVcpu {
    /// The context page (registers at the offsets in [`crate::vcpu`]).
    pub fn context(&self) -> Context {
        self.ctx
    }

    /// `VTTBR_EL2` for the guest.
    pub fn vttbr(&self) -> u64 {
        self.vttbr
    }

    /// The vCPU's index in its VM.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The physical CPU it is loaded on.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Its VM's slot in the VM table.
    pub(crate) fn slot(&self) -> u16 {
        self.slot
    }

    /// Its VM's vCPU count.
    pub(crate) fn vcpus(&self) -> u16 {
        self.vcpus
    }
}

/// Why the guest left EL1, as the vector saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// A synchronous exception: ESR_EL2, FAR_EL2, HPFAR_EL2.
    Sync { esr: u64, far: u64, hpfar: u64 },
    /// A physical IRQ (or FIQ) arrived.
    Irq,
}

/// What the world switch does after a guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExitAction {
    /// Re-enter the guest (its context may have changed: reload it).
    Resume,
    /// End `VcpuRun` with this exit.
    ExitToHost(Exit),
}

type CallResult = Result<[u64; 3], Status>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum PageOp {
    Share,
    Unshare,
    Relinquish,
}

fn next_generation(g: u32) -> u32 {
    let n = g.wrapping_add(1);
    if n == 0 { 1 } else { n }
}

impl<A: Arch> Engine<A> {
    /// A host `hvc #0`: `regs` are `x0..=x6` on entry and hold the result on
    /// return (for `Done`).
    pub fn host_call(&self, cpu: u32, regs: &mut [u64; 7]) -> HostCallOutcome {
        let [id, a, b, c, d, e, _] = *regs;
        let result = match HostCall::from_id(id & 0xffff_ffff) {
            None => Err(Status::NotSupported),
            Some(HostCall::Version) => Ok([ABI_VERSION, self.features(), MAX_VCPUS as u64]),
            Some(HostCall::VmCreate) => self.vm_create(PhysAddr::new(a), b, c),
            Some(HostCall::VmDestroy) => self.vm_destroy(a),
            Some(HostCall::VmTopup) => self.vm_topup(a, PhysAddr::new(b), c),
            Some(HostCall::VcpuCreate) => self.vcpu_create(a, b, c, d, e),
            Some(HostCall::VcpuRun) => match self.vcpu_load(cpu, a, b, c) {
                Ok(l) => return HostCallOutcome::Run(l),
                Err(s) => Err(s),
            },
            Some(HostCall::Donate) => self.donate(a, PhysAddr::new(b), Ipa::new(c), d, e),
            Some(HostCall::Share) => self.share(a, PhysAddr::new(b), Ipa::new(c), d),
            Some(HostCall::Unshare) => self.host_unshare(a, PhysAddr::new(b), Ipa::new(c)),
            Some(HostCall::Reclaim) => self.reclaim(PhysAddr::new(a)),
            Some(HostCall::Accounting) => self.accounting(a, b),
            Some(HostCall::VcpuInterrupts) => {
                let [.., l0, l1, l2, l3] = *regs;
                self.vcpu_interrupts(a, b, [l0, l1, l2, l3])
            }
            Some(HostCall::VcpuInjectAbort) => self.vcpu_inject_abort(a, b),
        };
        write_result(regs, result);
        HostCallOutcome::Done
    }

    /// `InvalidArgument` unless `[pa, pa + pages)` is a non-empty,
    /// page-aligned run of RAM.
    fn check_run(&self, pa: PhysAddr, pages: u64) -> Result<(), Status> {
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
    fn check_host_owned(&self, pa: PhysAddr, pages: u64) -> Result<(), Status> {
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
    fn for_each_shard_run(
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

    /// Moves the host's run into `slot`'s pool (caller holds the slot).
    /// All-or-nothing: a page that changed hands since the check undoes the
    /// pages already moved and fails `NotOwner`.
    /// The first `in_use` pages are the engine's at once (the Stage-2 root):
    /// zeroed and counted in the pool but not put on its free list.
    fn take_into_pool(
        &self,
        slot: usize,
        g: &mut VmInner,
        pa: PhysAddr,
        pages: u64,
        in_use: u64,
    ) -> Result<(), Status> {
        let rec = PageRecord::pool(slot as u16);
        let mut p = pa;
        for i in 0..pages {
            let Some(mut pg) = self.db.lock_page(p) else {
                self.give_back(pa, i);
                return Err(Status::NotOwner);
            };
            if pg.get() != PageRecord::HOST {
                drop(pg);
                self.give_back(pa, i);
                return Err(Status::NotOwner);
            }
            pg.set(rec);
            self.host_unmap(&pg, p);
            p = p.wrapping_add_bytes(PAGE_SIZE);
        }
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

    /// Undoes `take_into_pool` for the first `n` pages (never seen by
    /// anyone: not yet in the pool, contents untouched).
    fn give_back(&self, pa: PhysAddr, n: u64) {
        let mut p = pa;
        for _ in 0..n {
            if let Some(mut pg) = self.db.lock_page(p) {
                pg.set(PageRecord::HOST);
            }
            p = p.wrapping_add_bytes(PAGE_SIZE);
        }
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
        // Find a free slot, one slot lock at a time, holding nothing else
        // (lock order). The first pass skips slots another CPU holds, so
        // creations on different CPUs do not queue behind each other's long
        // operations; only if that finds nothing does a second pass wait for
        // the busy ones, so the status depends on state, not on timing.
        for pass in 0..2 {
            let mut skipped = false;
            for (slot, s) in self.vms.iter().enumerate() {
                let mut g = if pass == 0 {
                    match s.inner.try_lock() {
                        Some(g) => g,
                        None => {
                            skipped = true;
                            continue;
                        }
                    }
                } else {
                    s.inner.lock()
                };
                if g.state != SlotState::Free {
                    continue;
                }
                self.take_into_pool(slot, &mut g, pa, pages, root_pages)?;
                let generation = g.generation;
                g.s2 = Some(Stage2::new(pa, self.vm_s2, vmid_of(slot)));
                g.state = SlotState::Live;
                g.max_vcpus = max_vcpus as u16;
                g.vcpus = [VcpuSlot::default(); MAX_VCPUS];
                g.owned = 0;
                g.borrowed = 0;
                g.guest_shared = 0;
                g.off = false;
                return Ok([VmHandle::new(slot as u16, generation).0, 0, 0]);
            }
            if !skipped {
                break;
            }
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
                if r == PageRecord::shared(Owner::Host, me) {
                    pg.set(PageRecord::HOST);
                    borrowed = borrowed.wrapping_add(1);
                    lent_left = lent_left.saturating_sub(1);
                } else if r == PageRecord::shared(me, Owner::Host) {
                    pg.set(PageRecord::owned(me));
                    self.host_unmap(&pg, pa);
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
            self.scrub(p);
            if let Some(mut pg) = self.db.lock_page(p) {
                pg.set(PageRecord::HOST);
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

    /// The first half of `VcpuRun`: checks, loads the vCPU on `cpu` and
    /// delivers the host's `value` to what the vCPU awaits (an MMIO read's
    /// register, or a `HostCall` reply).
    pub fn vcpu_load(
        &self,
        cpu: u32,
        handle: u64,
        index: u64,
        value: u64,
    ) -> Result<LoadedVcpu, Status> {
        let (slot, mut g) = self.lock_vm(handle)?;
        let i = vcpu_index(&g, index)?;
        let v = g.vcpus.get(i).copied().ok_or(Status::NotFound)?;
        match v.state {
            VcpuState::Absent => return Err(Status::NotFound),
            VcpuState::Loaded(_) => return Err(Status::Busy),
            VcpuState::Off | VcpuState::Stopped => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending if g.off => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending => {}
        }
        let ctx = Context::new(PhysAddr::new(v.ctx));
        if let Some(r) = ctx.regs(&self.mem) {
            r.complete_pending(value);
        }
        if let Some(v) = g.vcpus.get_mut(i) {
            v.state = VcpuState::Loaded(cpu);
        }
        let vttbr = g.s2.map_or(0, |s| s.vttbr());
        Ok(LoadedVcpu {
            slot: slot as u16,
            index: i as u16,
            cpu,
            ctx,
            vttbr,
            vcpus: g.max_vcpus,
        })
    }

    /// `VcpuInjectAbort(handle, index)`: the vCPU's unanswered `Mmio` or
    /// `MemFault` exit becomes a synchronous external abort the guest takes
    /// when it next runs ([`Regs::inject_external_abort`]). The vCPU is not
    /// loaded (`Busy` otherwise) and we hold its VM's lock, so its context
    /// is ours to edit.
    fn vcpu_inject_abort(&self, handle: u64, index: u64) -> CallResult {
        let (_, g) = self.lock_vm(handle)?;
        let i = vcpu_index(&g, index)?;
        let v = g.vcpus.get(i).copied().ok_or(Status::NotFound)?;
        match v.state {
            VcpuState::Absent => return Err(Status::NotFound),
            VcpuState::Loaded(_) => return Err(Status::Busy),
            VcpuState::Off | VcpuState::Stopped => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending if g.off => return Err(Status::Denied),
            VcpuState::Idle | VcpuState::OnPending => {}
        }
        let regs = Context::new(PhysAddr::new(v.ctx))
            .regs(&self.mem)
            .ok_or(Status::Denied)?;
        if regs.inject_external_abort() {
            Ok([0; 3])
        } else {
            Err(Status::Denied)
        }
    }

    /// The second half of `VcpuRun`: unloads the vCPU (its state follows the
    /// exit: `CpuOff` turns it off, `Error` stops it) and writes the
    /// `VcpuRun` result (`Success`, the encoded exit) into the host's `regs`.
    ///
    /// The exit word also carries the [`isola_abi::ExitStatus`]: the state
    /// of each list register (registers the guest finished with `EOI` are
    /// cleared here, after being reported as `Invalid`) and the level of
    /// the guest's virtual timer interrupt.
    pub fn finish_run(&self, vcpu: LoadedVcpu, exit: Exit, regs: &mut [u64; 7]) {
        let status = vcpu.ctx.regs(&self.mem).map_or(0, |ctx| {
            let mut lrs: [u64; lr::SLOTS] = core::array::from_fn(|n| ctx.lr(n));
            if crate::vgic::take_eoi_completions(&mut lrs) > 0 {
                for (n, w) in lrs.iter().enumerate() {
                    ctx.set_lr(n, *w);
                }
            }
            crate::vgic::exit_status(&lrs, ctx.sysreg(crate::vcpu::SysReg::CntvCtlEl0)).to_word()
        });
        if let Some(s) = self.vms.get(usize::from(vcpu.slot)) {
            let mut g = s.inner.lock();
            if let Some(v) = g.vcpus.get_mut(usize::from(vcpu.index)) {
                v.state = match exit {
                    Exit::Error { .. } => VcpuState::Stopped,
                    Exit::CpuOff => VcpuState::Off,
                    _ => VcpuState::Idle,
                };
            }
        }
        let [word, a, b] = exit.encode();
        write_result(regs, Ok([word | status, a, b]));
    }

    /// `Share(handle, pa, ipa, perms)`: the host page is lent to the VM.
    fn share(&self, handle: u64, pa: PhysAddr, ipa: Ipa, perms: u64) -> CallResult {
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
        let entry = s2
            .prepare_leaf(&self.mem, &self.arch, &mut g.pool, ipa, 3)
            .map_err(s2_status)?;
        pg.set(PageRecord::shared(Owner::Host, me));
        g.borrowed = g.borrowed.wrapping_add(1);
        s2.install_leaf(
            &self.mem,
            &self.arch,
            entry,
            desc::Desc::leaf(pa, 3, perms, MemType::Normal, desc::SW_BORROWED),
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
    /// shard, the records change and the host loses its mappings (shard lock
    /// → host Stage-2 lock: the lock order; the unmap ends with its TLBI and
    /// `dsb ish`); then every page is cleaned to the PoC with one `dsb ish`
    /// for the run ([`Engine::clean_run`]); last the VM's Stage-2 gets the
    /// whole run with one barrier. Between the ownership check and the
    /// commit of a run crossing shards the shard locks are dropped, so a
    /// page another CPU took in between (a host racing its own calls on the
    /// same pages) undoes the pages already moved and fails `NotOwner`, as
    /// `VmCreate` does. If the mapping step fails after all (it cannot while
    /// [`Stage2::check_run_unmapped`] counts exactly), [`Engine::undo_donate`]
    /// puts every page back, so no error leaves a page the VM's records name
    /// but its count does not.
    fn donate(&self, handle: u64, pa: PhysAddr, ipa: Ipa, perms: u64, pages: u64) -> CallResult {
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
        let mt = MemType::Normal;
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
                let entry = s2
                    .prepare_leaf(&self.mem, &self.arch, &mut g.pool, ipa, 3)
                    .map_err(s2_status)?;
                self.take_from_host(&mut sg, first, 1, me);
                self.clean_run(pa, 1);
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
        self.clean_run(pa, n);
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
    fn map_donated_run(
        &self,
        s2: Stage2,
        g: &mut VmInner,
        ipa: Ipa,
        n: u64,
        leaf: &mut dyn FnMut(u64) -> desc::Desc,
    ) -> Result<(), S2Error> {
        #[cfg(test)]
        if let Some(k) = tests::FAIL_MAP_AFTER.take() {
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
    /// written it; then the pages go back to the host, which refaults them,
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
            if mapped(&s2) {
                let _ = s2.unmap_leaf(&self.mem, &self.arch, at);
                if mapped(&s2) {
                    kept = kept.wrapping_add(1);
                    continue;
                }
                self.scrub(p);
            }
            if let Some(mut pg) = self.db.lock_page(p) {
                pg.set(PageRecord::HOST);
            }
        }
        kept
    }

    /// Gives the first `n` pages of the run from `pa` back to the host, one
    /// shard lock at a time: the undo of a `Donate` that moved them but
    /// never mapped them anywhere.
    fn give_back_run(&self, pa: PhysAddr, n: u64) {
        let _ = self.for_each_shard_run(pa, n, &mut |sg, first, k| {
            for i in 0..k {
                sg.set(Pfn::new(first.raw().wrapping_add(i)), PageRecord::HOST);
            }
            Ok(())
        });
    }

    /// Gives the `k` pages from `first` (all in `sg`'s shard, all checked
    /// host-owned under this same lock hold) the record `to`, and removes
    /// them from the host Stage-2 if the host may have mapped them: the host
    /// loses the pages before the guest gets them.
    fn take_from_host(&self, sg: &mut ShardGuard<'_>, first: Pfn, k: u64, to: PageRecord) {
        for i in 0..k {
            sg.set(Pfn::new(first.raw().wrapping_add(i)), to);
        }
        #[cfg(not(feature = "planted-bug-donate-keeps-host-mapping"))]
        if sg.host_mapped() {
            self.host_unmap_run(first, k);
        }
    }

    /// `InvalidArgument` unless `[ipa, ipa + pages)` are page-aligned guest
    /// RAM IPAs (inside the IPA space, none in the guest MMIO window).
    fn check_guest_ipa_run(&self, ipa: Ipa, pages: u64) -> Result<(), Status> {
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
    fn check_guest_ipa(&self, ipa: Ipa) -> Result<(), Status> {
        if !ipa.is_page_aligned() || ipa.raw() >= self.vm_s2.ipa_limit() || self.in_guest_mmio(ipa)
        {
            return Err(Status::InvalidArgument);
        }
        Ok(())
    }

    /// `Unshare(handle, pa, ipa)`: ends a host `Share`. One walk of the VM's
    /// Stage-2 at `ipa` confirms the lent mapping (the record does not keep
    /// the IPA; the host, which chose it, names it).
    fn host_unshare(&self, handle: u64, pa: PhysAddr, ipa: Ipa) -> CallResult {
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
        pg.set(PageRecord::HOST);
        g.borrowed = g.borrowed.wrapping_sub(1);
        Ok([0; 3])
    }

    /// `Reclaim(pa)`: a destroyed VM's page back to the host, scrubbed.
    fn reclaim(&self, pa: PhysAddr) -> CallResult {
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
        self.scrub(pa);
        pg.set(PageRecord::HOST);
        g.owned = g.owned.wrapping_sub(1);
        if g.owned == 0 {
            g.state = SlotState::Free;
        }
        Ok([0; 3])
    }

    /// `Accounting(selector, handle)`.
    fn accounting(&self, selector: u64, handle: u64) -> CallResult {
        match Accounting::from_raw(selector).ok_or(Status::InvalidArgument)? {
            Accounting::Totals => {
                let c = self.db.totals();
                Ok([c.host, c.engine, c.guest])
            }
            Accounting::Sharing => {
                let c = self.db.totals();
                Ok([c.host_shared, c.guest_shared, self.awaiting_reclaim()])
            }
            Accounting::Vm => {
                let (_, g) = self.lock_vm(handle)?;
                Ok([g.owned, g.borrowed, g.pool.total()])
            }
        }
    }

    // ---- The guest side ----

    /// A guest exit on the CPU where `vcpu` is loaded. The world switch has
    /// saved the guest's registers into its context; on `Resume` it restores
    /// them from there (they may have changed).
    pub fn guest_exit(&self, vcpu: &LoadedVcpu, trap: Trap) -> GuestExitAction {
        let (esr, far, hpfar) = match trap {
            Trap::Irq => {
                // The GIC maintenance interrupt: a list register the guest
                // finished with `EOI` set. Anything else is the host's.
                let eoi = vcpu.ctx.regs(&self.mem).is_some_and(|ctx| {
                    (0..lr::SLOTS).any(|n| crate::vgic::eoi_completed(ctx.lr(n)))
                });
                return GuestExitAction::ExitToHost(if eoi { Exit::Eoi } else { Exit::Irq });
            }
            Trap::Sync { esr, far, hpfar } => (esr, far, hpfar),
        };
        let e = Esr(esr);
        // The context page is checked once per exit, not per register.
        let Some(ctx) = vcpu.ctx.regs(&self.mem) else {
            return GuestExitAction::ExitToHost(Exit::Error { esr });
        };
        match e.ec() {
            ec::HVC64 => self.guest_call(vcpu, ctx),
            ec::SMC64 => {
                // The preferred return of a trapped SMC is the SMC itself.
                ctx.set_pc(ctx.pc().wrapping_add(4));
                self.guest_call(vcpu, ctx)
            }
            ec::WFX => {
                ctx.set_pc(ctx.pc().wrapping_add(4));
                GuestExitAction::ExitToHost(Exit::Wfx {
                    // ISS.TI: 0b00 WFI, 0b01 WFE (WFIT/WFET are not
                    // advertised to guests).
                    wfe: esr & 1 != 0,
                    deadline: crate::vgic::vtimer_deadline(
                        ctx.sysreg(crate::vcpu::SysReg::CntvCtlEl0),
                        ctx.sysreg(crate::vcpu::SysReg::CntvCvalEl0),
                    ),
                })
            }
            ec::SYSREG => self.guest_sysreg(vcpu, ctx, e),
            ec::DABT_LOW | ec::IABT_LOW => {
                let limit = self.vm_s2.ipa_limit();
                match abort::classify_guest_abort(
                    e,
                    far,
                    hpfar,
                    |ipa| self.in_guest_mmio(ipa),
                    limit,
                ) {
                    GuestAbort::Mmio {
                        ipa,
                        size,
                        write: true,
                        reg,
                        ..
                    } => {
                        let value = crate::vcpu::mmio_read_value(ctx.x(reg), size, false, true);
                        ctx.set_pc(ctx.pc().wrapping_add(4));
                        ctx.set_pending_access(Pending::MmioWrite, far);
                        GuestExitAction::ExitToHost(Exit::Mmio {
                            ipa: ipa.raw(),
                            size,
                            write: true,
                            value,
                        })
                    }
                    GuestAbort::Mmio {
                        ipa,
                        size,
                        write: false,
                        reg,
                        sign,
                        sf,
                    } => {
                        ctx.set_pending_access(
                            Pending::MmioRead {
                                reg,
                                size,
                                sign,
                                sf,
                            },
                            far,
                        );
                        GuestExitAction::ExitToHost(Exit::Mmio {
                            ipa: ipa.raw(),
                            size,
                            write: false,
                            value: 0,
                        })
                    }
                    GuestAbort::MemFault { ipa } => {
                        let pending = Pending::MemFault {
                            write: e.ec() == ec::DABT_LOW
                                && e.flags().contains(abort::DataAbortIss::WNR),
                            fetch: e.ec() == ec::IABT_LOW,
                        };
                        ctx.set_pending_access(pending, far);
                        GuestExitAction::ExitToHost(Exit::MemFault { ipa: ipa.raw() })
                    }
                    GuestAbort::Error => GuestExitAction::ExitToHost(Exit::Error { esr }),
                }
            }
            _ => GuestExitAction::ExitToHost(Exit::Error { esr }),
        }
    }

    /// A guest `hvc #0` (or trapped `smc`): `x0..=x6` are in the context.
    fn guest_call(&self, vcpu: &LoadedVcpu, ctx: Regs<'_>) -> GuestExitAction {
        let x = |n| ctx.x(n);
        let id = x(0) & 0xffff_ffff;
        let result = match GuestCall::from_id(id) {
            Some(GuestCall::Info) => {
                let count = self
                    .vms
                    .get(usize::from(vcpu.slot))
                    .map_or(0, |s| s.inner.lock().max_vcpus);
                Ok([ABI_VERSION, u64::from(vcpu.index), u64::from(count)])
            }
            Some(GuestCall::Share) => self.guest_page_op(vcpu, Ipa::new(x(1)), PageOp::Share),
            Some(GuestCall::Unshare) => self.guest_page_op(vcpu, Ipa::new(x(1)), PageOp::Unshare),
            Some(GuestCall::Relinquish) => {
                self.guest_page_op(vcpu, Ipa::new(x(1)), PageOp::Relinquish)
            }
            Some(GuestCall::HostCall) => {
                ctx.set_pending(Pending::HostReply);
                return GuestExitAction::ExitToHost(Exit::HostCall { args: [x(1), x(2)] });
            }
            None if crate::psci::is_psci(id) => return self.guest_psci(vcpu, ctx, id),
            None => Err(Status::NotSupported),
        };
        let r = match result {
            Ok(r) => [Status::Success.raw(), r[0], r[1], r[2]],
            Err(s) => [s.raw(), 0, 0, 0],
        };
        for (n, v) in (0u8..).zip(r) {
            ctx.set_x(n, v);
        }
        GuestExitAction::Resume
    }

    fn guest_page_op(&self, vcpu: &LoadedVcpu, ipa: Ipa, op: PageOp) -> CallResult {
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
                g.guest_shared = g.guest_shared.wrapping_add(1);
            }
            PageOp::Unshare if rec == PageRecord::shared(me, Owner::Host) => {
                pg.set(PageRecord::owned(me));
                self.host_unmap(&pg, pa);
                g.guest_shared = g.guest_shared.wrapping_sub(1);
            }
            PageOp::Relinquish if rec == PageRecord::owned(me) => {
                s2.unmap_page(&self.mem, &self.arch, &mut g.pool, ipa)
                    .map_err(s2_status)?;
                self.scrub(pa);
                pg.set(PageRecord::HOST);
                g.owned = g.owned.wrapping_sub(1);
            }
            _ => return Err(Status::NotOwner),
        }
        Ok([0; 3])
    }

    /// Test and model-checking aid: the guest on `vcpu`'s CPU executes
    /// `hvc #0` with `x0..=x6 = args`. Equivalent to the world switch saving
    /// those registers and calling [`Engine::guest_exit`] with an HVC64
    /// syndrome.
    pub fn guest_hvc(&self, vcpu: &LoadedVcpu, args: [u64; 7]) -> GuestExitAction {
        for (n, v) in (0u8..).zip(args) {
            vcpu.ctx.set_x(&self.mem, n, v);
        }
        let esr = (u64::from(ec::HVC64) << 26) | abort::DataAbortIss::IL.bits();
        self.guest_exit(
            vcpu,
            Trap::Sync {
                esr,
                far: 0,
                hpfar: 0,
            },
        )
    }

    /// Test aid: the guest on `vcpu`'s CPU loads (`write == false`) `size`
    /// bytes at `ipa` into `x[reg]`, or stores them from it. A mapped access
    /// with the right permission happens in memory, as the hardware would do
    /// it; anything else takes the Stage-2 abort path exactly as the
    /// hardware would raise it (a data abort with a valid syndrome).
    pub fn guest_access(
        &self,
        vcpu: &LoadedVcpu,
        ipa: Ipa,
        size: u8,
        write: bool,
        reg: u8,
    ) -> GuestExitAction {
        let mem = &self.mem;
        let t = self
            .vms
            .get(usize::from(vcpu.slot))
            .and_then(|s| s.inner.lock().s2)
            .and_then(|s2| s2.translate(mem, ipa));
        let dfsc = match t {
            Some(t) if (write && t.desc.perms().w) || (!write && t.desc.perms().r) => {
                let word = PhysAddr::new(t.pa.raw() & !7);
                let shift = (t.pa.raw() & 7).wrapping_mul(8) as u32;
                let mask = crate::vcpu::mmio_read_value(u64::MAX, size, false, true);
                let old = mem.read_u64(word).unwrap_or(0);
                if write {
                    let v = vcpu.ctx.x(mem, reg) & mask;
                    let new = (old & !mask.wrapping_shl(shift)) | v.wrapping_shl(shift);
                    let _ = mem.write_u64(word, new);
                } else {
                    vcpu.ctx.set_x(mem, reg, old.wrapping_shr(shift) & mask);
                }
                vcpu.ctx.set_pc(mem, vcpu.ctx.pc(mem).wrapping_add(4));
                return GuestExitAction::Resume;
            }
            Some(_) => 0b001111, // permission fault, level 3
            None => 0b000111,    // translation fault, level 3
        };
        let esr = abort::data_abort_esr(size, write, reg, false, true, dfsc);
        let hpfar = (ipa.raw() >> 12) << 4;
        self.guest_exit(
            vcpu,
            Trap::Sync {
                esr,
                far: ipa.raw(),
                hpfar,
            },
        )
    }
}

/// Whether the `n` pages from `first` (in `sg`'s shard) are all the host's, unshared.
fn all_host(sg: &ShardGuard<'_>, first: Pfn, n: u64) -> bool {
    sg.records(first, n)
        .is_some_and(|r| r.iter().all(|&r| r == PageRecord::HOST))
}

fn vcpu_index(g: &MutexGuard<'_, VmInner>, index: u64) -> Result<usize, Status> {
    if index >= u64::from(g.max_vcpus) {
        return Err(Status::NotFound);
    }
    usize::try_from(index).map_err(|_| Status::NotFound)
}

fn s2_status(e: S2Error) -> Status {
    match e {
        S2Error::NoMemory => Status::NoMemory,
        S2Error::AlreadyMapped => Status::AlreadyMapped,
        S2Error::NotMapped => Status::NotMapped,
        S2Error::OutOfRange => Status::InvalidArgument,
    }
}

fn write_result(regs: &mut [u64; 7], result: CallResult) {
    let r = match result {
        Ok(r) => [Status::Success.raw(), r[0], r[1], r[2]],
        Err(s) => [s.raw(), 0, 0, 0],
    };
    for (dst, v) in regs.iter_mut().zip(r) {
        *dst = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{RecordingArch, check_break_before_make};
    use crate::testing::MachineSpec;
    use core::cell::Cell;
    use isola_abi::{Accounting, HostCall, perms};
    use std::vec::Vec;

    std::thread_local! {
        /// One-shot fault injection for [`Engine::map_donated_run`]: the next
        /// batched `Donate` on this thread maps only this many pages of its
        /// run, then fails `NoMemory`. Thread-local, so parallel tests do
        /// not see each other's.
        pub(super) static FAIL_MAP_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
    }

    const GUEST_RAM: u64 = 0x8000_0000;

    fn call(e: &Engine<RecordingArch>, call: HostCall, args: [u64; 4]) -> (Status, [u64; 3]) {
        let mut regs = [call as u64, args[0], args[1], args[2], args[3], 0, 0];
        assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
        (
            Status::from_raw(regs[0] as i64).unwrap(),
            [regs[1], regs[2], regs[3]],
        )
    }

    /// A batched donate whose mapping step fails after `mapped` of its 4
    /// pages are in the VM's Stage-2 leaves records, counts and the host's
    /// access exactly as before; the pages the guest could have seen are
    /// unmapped (with the VM's TLBI) and scrubbed, the others keep the
    /// host's data. The run can then be donated for real, and after
    /// `VmDestroy` every page is reclaimed: nothing is left naming the slot.
    fn failed_map_step_loses_nothing(mapped: u64) {
        let spec = MachineSpec::default();
        let e = spec.build(RecordingArch::new());
        let totals = |e: &Engine<RecordingArch>| {
            let (s, t) = call(
                e,
                HostCall::Accounting,
                [Accounting::Totals as u64, 0, 0, 0],
            );
            assert_eq!(s, Status::Success);
            t
        };
        let at_start = totals(&e);
        let (s, [vm, ..]) = call(&e, HostCall::VmCreate, [spec.page(16).raw(), 8, 1, 0]);
        assert_eq!(s, Status::Success);
        let run = |i: u64| spec.page(44u64.wrapping_add(i));
        let ipa = |i: u64| Ipa::new(GUEST_RAM.wrapping_add(i.wrapping_mul(PAGE_SIZE)));
        for i in 0..4 {
            assert!(e.mem().write_u64(run(i), 0x5eed + i));
        }
        let before = (totals(&e), e.vm_usage(vm).unwrap()[..3].to_vec());
        let donate = || {
            let args = [vm, run(0).raw(), GUEST_RAM, perms::R, 4];
            let mut regs = [
                HostCall::Donate as u64,
                args[0],
                args[1],
                args[2],
                args[3],
                args[4],
                0,
            ];
            assert_eq!(e.host_call(0, &mut regs), HostCallOutcome::Done);
            Status::from_raw(regs[0] as i64).unwrap()
        };
        e.arch().clear();
        FAIL_MAP_AFTER.set(Some(mapped));
        assert_eq!(donate(), Status::NoMemory);
        assert_eq!(FAIL_MAP_AFTER.get(), None, "the hook fired");
        assert_eq!(
            (totals(&e), e.vm_usage(vm).unwrap()[..3].to_vec()),
            before,
            "records and counts as before ({mapped} mapped)"
        );
        let mut ev = Vec::new();
        e.arch().for_each(|x| ev.push(x));
        assert!(!e.arch().overflowed());
        check_break_before_make(ev.iter().copied()).unwrap();
        for i in 0..4 {
            assert_eq!(e.vm_translate(vm, ipa(i)).unwrap(), None, "page {i}");
            assert_eq!(e.page(run(i)), Some(PageRecord::HOST), "page {i}");
            let data = e.mem().read_u64(run(i)).unwrap();
            let vm_tlbi = ev.iter().any(|x| {
                *x == crate::arch::ArchEvent::TlbiIpa {
                    vmid: vmid_of(0),
                    ipa: ipa(i),
                }
            });
            if i < mapped {
                assert_eq!((data, vm_tlbi), (0, true), "page {i} was in the VM");
            } else {
                assert_eq!((data, vm_tlbi), (0x5eed + i, false), "page {i} was not");
            }
        }
        assert_eq!(donate(), Status::Success, "the run is whole again");
        assert_eq!(e.vm_usage(vm).unwrap()[0], 4);
        assert_eq!(
            call(&e, HostCall::VmDestroy, [vm, 0, 0, 0]).0,
            Status::Success
        );
        for i in 0..4 {
            let (s, _) = call(&e, HostCall::Reclaim, [run(i).raw(), 0, 0, 0]);
            assert_eq!(s, Status::Success, "page {i}");
        }
        assert_eq!(totals(&e), at_start);
        let (s, [.., waiting]) = call(
            &e,
            HostCall::Accounting,
            [Accounting::Sharing as u64, 0, 0, 0],
        );
        assert_eq!((s, waiting), (Status::Success, 0));
    }

    #[test]
    fn a_failed_batched_map_step_undoes_every_page() {
        for mapped in [0, 1, 3] {
            failed_map_step_loses_nothing(mapped);
        }
    }

    #[test]
    fn failures_zero_the_results_and_keep_x4_to_x6() {
        let mut regs = [9, 1, 2, 3, 4, 5, 6];
        write_result(&mut regs, Err(Status::NotOwner));
        assert_eq!(regs, [Status::NotOwner.raw(), 0, 0, 0, 4, 5, 6]);
        write_result(&mut regs, Ok([7, 8, 9]));
        assert_eq!(regs, [0, 7, 8, 9, 4, 5, 6]);
    }

    #[test]
    fn generations_never_return_to_zero() {
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(u32::MAX), 1);
    }

    #[test]
    fn stage2_errors_map_to_abi_statuses() {
        assert_eq!(s2_status(S2Error::NoMemory), Status::NoMemory);
        assert_eq!(s2_status(S2Error::AlreadyMapped), Status::AlreadyMapped);
        assert_eq!(s2_status(S2Error::NotMapped), Status::NotMapped);
        assert_eq!(s2_status(S2Error::OutOfRange), Status::InvalidArgument);
    }
}
