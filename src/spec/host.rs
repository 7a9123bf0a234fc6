//! Host calls and host memory accesses.
//!
//! Every call checks, in this order, and fails with the first that applies:
//! function id (`NotSupported`); argument format: alignment, range, flag
//! bits (`InvalidArgument`); handle and vCPU index (`NotFound`); the
//! object's state (`Denied`, `Busy`); page ownership (`NotOwner`); the
//! mapping (`AlreadyMapped`, `NotMapped`); resources (`NoMemory`). Only then
//! does anything change: a failed call leaves the state exactly as it was.

use isola_abi::{
    ABI_VERSION, Accounting, DONATE_MAX_PAGES, HostCall, PAGE_SIZE, Status, lr, perms, vcpu_flags,
};

use super::state::{Contents, Cpu, Handle, Mapping, Owner, PageState, Pending, RunState, Vcpu, Vm};
use super::{Model, Outcome, fail, ok};

/// A call's result registers `x1..=x3`, or the status it fails with.
type CallResult = Result<[u64; 3], Status>;

impl Model {
    /// A host `hvc` on `cpu`.
    pub(super) fn host_call(&mut self, cpu: usize, regs: &[u64; 7]) -> Outcome {
        let [id, a, b, c, d, e, f] = *regs;
        // SMCCC: the function id is `w0`; the upper half of `x0` is ignored.
        let Some(call) = HostCall::from_id(id & 0xffff_ffff) else {
            return Outcome::HostReturn(fail(Status::NotSupported));
        };
        let result = match call {
            HostCall::Version => Ok([ABI_VERSION, self.config.features, self.config.max_vcpus]),
            HostCall::VmCreate => self.vm_create(a, b, c),
            HostCall::VmDestroy => self.vm_destroy(a),
            HostCall::VmTopup => self.vm_topup(a, b, c),
            HostCall::VcpuCreate => self.vcpu_create(a, b, c, d, e),
            HostCall::VcpuRun => match self.vcpu_run(cpu, a, b, c) {
                Ok(()) => return Outcome::Entered,
                Err(e) => Err(e),
            },
            HostCall::Donate => self.donate(a, b, c, d, e),
            HostCall::Share => self.share(a, b, c, d),
            HostCall::Unshare => self.host_unshare(a, b, c),
            HostCall::Reclaim => self.reclaim(a),
            HostCall::Accounting => self.accounting(a, b),
            HostCall::VcpuInterrupts => self.vcpu_interrupts(a, b, [c, d, e, f]),
            HostCall::VcpuInjectAbort => self.vcpu_inject_abort(a, b),
        };
        Outcome::HostReturn(match result {
            Ok(r) => ok(r),
            Err(s) => fail(s),
        })
    }

    /// A host load from `pa`.
    pub(super) fn host_read(&self, pa: u64) -> Outcome {
        match self.host_word(pa) {
            Some((page, word)) => {
                let value = self
                    .state
                    .page(page)
                    .and_then(|p| p.contents.as_ref())
                    .and_then(|c| c.get(&word).copied())
                    .unwrap_or(0);
                Outcome::HostLoaded(value)
            }
            None => Outcome::HostFault,
        }
    }

    /// A DMA access by a device of the host: the host's DMA view is exactly
    /// what its CPUs may access, so it succeeds where a host load or store
    /// would; otherwise the IOMMU refuses it and the engine counts it.
    pub(super) fn dma(&mut self, pa: u64, write: Option<u64>) -> Outcome {
        let cpu = match write {
            Some(v) => self.host_write(pa, v),
            None => self.host_read(pa),
        };
        match cpu {
            Outcome::HostLoaded(v) => Outcome::DmaLoaded(v),
            Outcome::HostStored => Outcome::DmaStored,
            _ => {
                self.state.dma.count = self.state.dma.count.saturating_add(1);
                self.state.dma.last = pa;
                Outcome::DmaFault
            }
        }
    }

    /// A host store to `pa`.
    pub(super) fn host_write(&mut self, pa: u64, value: u64) -> Outcome {
        let Some((page, word)) = self.host_word(pa) else {
            return Outcome::HostFault;
        };
        match self
            .state
            .pages
            .get_mut(&page)
            .and_then(|p| p.contents.as_mut())
        {
            Some(contents) => {
                store(contents, word, value);
                Outcome::HostStored
            }
            None => Outcome::HostFault,
        }
    }

    /// The page and word index of a host access to `pa`, if the host may make it.
    fn host_word(&self, pa: u64) -> Option<(u64, u16)> {
        if !pa.is_multiple_of(8) {
            return None;
        }
        let page = pa & !(PAGE_SIZE - 1);
        let word = u16::try_from((pa % PAGE_SIZE) / 8).ok()?;
        self.state.host_may_access(page).then_some((page, word))
    }

    /// `InvalidArgument` unless `pa..pa + pages * PAGE_SIZE` is a non-empty,
    /// page-aligned run of RAM.
    fn check_pages(&self, pa: u64, pages: u64) -> Result<(), Status> {
        let base = self.config.ram_base;
        let end = self
            .config
            .ram_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| base.checked_add(len));
        let last = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| pa.checked_add(len));
        match (end, last) {
            (Some(end), Some(last))
                if pa.is_multiple_of(PAGE_SIZE) && pages > 0 && pa >= base && last <= end =>
            {
                Ok(())
            }
            _ => Err(Status::InvalidArgument),
        }
    }

    /// `NotOwner` unless every page of the run is the host's and not shared.
    fn check_host_owned(&self, pa: u64, pages: u64) -> Result<(), Status> {
        let all = (0..pages).all(|i| {
            self.state
                .page(super::page_addr(pa, i))
                .is_some_and(|p| p.owner == Owner::Host && p.state == PageState::Owned)
        });
        if all { Ok(()) } else { Err(Status::NotOwner) }
    }

    /// `InvalidArgument` unless `ipa` is a page-aligned guest RAM address.
    pub(super) fn check_ipa(&self, ipa: u64) -> Result<(), Status> {
        let in_space = self.config.ipa_bits < 64 && ipa >> self.config.ipa_bits == 0;
        let mmio = (self.config.mmio_base..self.config.mmio_end).contains(&ipa);
        if ipa.is_multiple_of(PAGE_SIZE) && in_space && !mmio {
            Ok(())
        } else {
            Err(Status::InvalidArgument)
        }
    }

    /// The live VM `h`, or `NotFound`.
    fn vm(&self, h: Handle) -> Result<&Vm, Status> {
        self.state.vms.get(&h).ok_or(Status::NotFound)
    }

    /// Turns the host pages `pa..pa + pages` into pool pages of `h`.
    fn give_to_pool(&mut self, h: Handle, pa: u64, pages: u64) {
        for i in 0..pages {
            if let Some(p) = self.state.pages.get_mut(&super::page_addr(pa, i)) {
                p.owner = Owner::Engine;
                p.state = PageState::Pool { vm: h };
                p.contents = None;
            }
        }
    }

    /// `VmCreate(pa, pages, max_vcpus)`.
    fn vm_create(&mut self, pa: u64, pages: u64, max_vcpus: u64) -> CallResult {
        self.check_pages(pa, pages)?;
        if max_vcpus == 0 || max_vcpus > self.config.max_vcpus {
            return Err(Status::InvalidArgument);
        }
        self.check_host_owned(pa, pages)?;
        // ABI silent: the first `vm_pages` pages of the run become the
        // VM's Stage-2 root, which must be aligned to its size; a run too
        // short or misaligned for it is `NoMemory`, like a full VM table.
        let free = self.slots.iter().position(|s| !s.taken);
        let root_align = self.config.vm_pages.saturating_mul(PAGE_SIZE);
        let root_fits =
            pages >= self.config.vm_pages && root_align != 0 && pa.is_multiple_of(root_align);
        let (Some(index), true) = (free, root_fits) else {
            return Err(Status::NoMemory);
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(Status::NoMemory);
        };
        slot.taken = true;
        let h = slot.handle(index);
        self.give_to_pool(h, pa, pages);
        let vm = Vm {
            max_vcpus,
            vcpus: Default::default(),
            map: Default::default(),
            pool_free: pages.saturating_sub(self.config.vm_pages),
            off: false,
        };
        self.state.vms.insert(h, vm);
        self.tables.insert(h, Default::default());
        Ok([h, 0, 0])
    }

    /// `VmDestroy(h)`: pool pages go back to the host scrubbed, pages the
    /// host lent come back to it, the VM's own pages await `Reclaim`.
    fn vm_destroy(&mut self, h: Handle) -> CallResult {
        let vm = self.vm(h)?;
        if vm
            .vcpus
            .values()
            .any(|v| matches!(v.run, RunState::Loaded { .. }))
        {
            return Err(Status::Busy);
        }
        self.state.vms.remove(&h);
        self.tables.remove(&h);
        let index = slot_index(h);
        if let Some(slot) = self.slots.get_mut(index) {
            slot.generation = slot.generation.wrapping_add(1);
        }
        self.free_slot_if_reclaimed(h);
        for p in self.state.pages.values_mut() {
            match (p.owner, p.state) {
                (Owner::Engine, PageState::Pool { vm }) if vm == h => {
                    p.owner = Owner::Host;
                    p.state = PageState::Owned;
                    p.contents = Some(Contents::new());
                }
                (Owner::Host, PageState::Shared { with: Owner::Vm(b) }) if b == h => {
                    p.state = PageState::Owned
                }
                // ABI silent: a page the guest had shared with the host
                // goes back to plain `Owned` and the host loses access until
                // it reclaims it (zeroed) like any other.
                (Owner::Vm(o), PageState::Shared { .. }) if o == h => p.state = PageState::Owned,
                _ => {}
            }
        }
        Ok([0; 3])
    }

    /// `VmTopup(h, pa, pages)`.
    fn vm_topup(&mut self, h: Handle, pa: u64, pages: u64) -> CallResult {
        self.check_pages(pa, pages)?;
        self.vm(h)?;
        self.check_host_owned(pa, pages)?;
        self.give_to_pool(h, pa, pages);
        if let Some(vm) = self.state.vms.get_mut(&h) {
            vm.pool_free = vm.pool_free.saturating_add(pages);
        }
        Ok([0; 3])
    }

    /// `VcpuCreate(h, index, pc, x0, flags)`.
    fn vcpu_create(&mut self, h: Handle, index: u64, pc: u64, x0: u64, flags: u64) -> CallResult {
        if flags & !vcpu_flags::ALL != 0 {
            return Err(Status::InvalidArgument);
        }
        let vm = self.vm(h)?;
        if index >= vm.max_vcpus {
            return Err(Status::NotFound);
        }
        // ABI silent: creating a vCPU index twice is a state error.
        if vm.vcpus.contains_key(&index) {
            return Err(Status::Denied);
        }
        let pool_free = vm
            .pool_free
            .checked_sub(self.config.vcpu_pages)
            .ok_or(Status::NoMemory)?;
        // ABI: an off vCPU's entry point and x0 are ignored; the model
        // follows the implementation in leaving them zero.
        let vcpu = if flags & vcpu_flags::OFF != 0 {
            Vcpu {
                run: RunState::Off,
                ..Vcpu::reset(0, 0, [0; lr::SLOTS])
            }
        } else {
            Vcpu::reset(pc, x0, [0; lr::SLOTS])
        };
        if let Some(vm) = self.state.vms.get_mut(&h) {
            vm.pool_free = pool_free;
            vm.vcpus.insert(index, vcpu);
        }
        Ok([0; 3])
    }

    /// `VcpuRun(h, index, value)` on `cpu`: delivers what the vCPU awaits
    /// and loads it; the guest then runs until an exit.
    fn vcpu_run(&mut self, cpu: usize, h: Handle, index: u64, value: u64) -> Result<(), Status> {
        let vm = self.vm(h)?;
        let vcpu = vm.vcpus.get(&index).ok_or(Status::NotFound)?;
        match vcpu.run {
            RunState::Loaded { .. } => return Err(Status::Busy),
            RunState::Off | RunState::Stopped => return Err(Status::Denied),
            RunState::Ready | RunState::OnPending if vm.off => return Err(Status::Denied),
            RunState::Ready | RunState::OnPending => {}
        }
        let Some(vcpu) = self
            .state
            .vms
            .get_mut(&h)
            .and_then(|vm| vm.vcpus.get_mut(&index))
        else {
            return Err(Status::NotFound);
        };
        match vcpu.pending {
            Pending::None | Pending::MmioWrite { .. } | Pending::MemFault { .. } => {}
            // The load completes with the host's value and the guest goes
            // on after it (re-executing it would only fault again).
            Pending::MmioRead { reg, size, .. } => {
                super::guest::set_reg(&mut vcpu.regs, reg, truncate(value, size));
                vcpu.pc = vcpu.pc.wrapping_add(4);
            }
            Pending::HostReply => {
                vcpu.regs[0] = Status::Success.raw();
                vcpu.regs[1] = value;
                vcpu.regs[2] = 0;
                vcpu.regs[3] = 0;
            }
        }
        vcpu.pending = Pending::None;
        vcpu.run = RunState::Loaded { cpu };
        if let Some(c) = self.state.cpus.get_mut(cpu) {
            *c = Cpu::Guest { vm: h, vcpu: index };
        }
        Ok(())
    }

    /// `VcpuInterrupts(h, index, lrs)`.
    fn vcpu_interrupts(&mut self, h: Handle, index: u64, lrs: [u64; lr::SLOTS]) -> CallResult {
        // A list-register word is empty (0), or a pending and/or active
        // SGI, PPI or SPI (vINTID <= 1019) with only the priority, group
        // and EOI fields besides; nothing from the engine's count on; no
        // vINTID twice.
        let fields = lr::PENDING | lr::ACTIVE | lr::GROUP1 | lr::EOI | 0xff << 48 | 0xffff_ffff;
        for (n, &w) in lrs.iter().enumerate() {
            let good = w == 0
                || (n < self.config.list_regs
                    && w & !fields == 0
                    && w & (lr::PENDING | lr::ACTIVE) != 0
                    && w & 0xffff_ffff <= 1019);
            let twice = lrs
                .iter()
                .take(n)
                .any(|&o| w != 0 && o != 0 && o & 0xffff_ffff == w & 0xffff_ffff);
            if !good || twice {
                return Err(Status::InvalidArgument);
            }
        }
        let vm = self.vm(h)?;
        let vcpu = vm.vcpus.get(&index).ok_or(Status::NotFound)?;
        if matches!(vcpu.run, RunState::Loaded { .. }) {
            return Err(Status::Busy);
        }
        if let Some(v) = self
            .state
            .vms
            .get_mut(&h)
            .and_then(|vm| vm.vcpus.get_mut(&index))
        {
            v.lrs = lrs;
        }
        Ok([0; 3])
    }

    /// `VcpuInjectAbort(h, index)`: the unanswered `Mmio` or `MemFault`
    /// exit becomes a synchronous external abort at the guest's vector.
    fn vcpu_inject_abort(&mut self, h: Handle, index: u64) -> CallResult {
        let vm = self.vm(h)?;
        let vcpu = vm.vcpus.get(&index).ok_or(Status::NotFound)?;
        match vcpu.run {
            RunState::Loaded { .. } => return Err(Status::Busy),
            RunState::Off | RunState::Stopped => return Err(Status::Denied),
            RunState::Ready | RunState::OnPending if vm.off => return Err(Status::Denied),
            RunState::Ready | RunState::OnPending => {}
        }
        // (faulting instruction, faulting address, store, fetch)
        let (at, far, write, fetch) = match vcpu.pending {
            Pending::MmioRead { far, .. } => (vcpu.pc, far, false, false),
            // The store's exit already stepped the PC past it.
            Pending::MmioWrite { far } => (vcpu.pc.wrapping_sub(4), far, true, false),
            Pending::MemFault { far, write, fetch } => (vcpu.pc, far, write, fetch),
            Pending::None | Pending::HostReply => return Err(Status::Denied),
        };
        if let Some(v) = self
            .state
            .vms
            .get_mut(&h)
            .and_then(|vm| vm.vcpus.get_mut(&index))
        {
            super::guest::take_external_abort(v, at, far, write, fetch);
        }
        Ok([0; 3])
    }

    /// `Share` of host page `pa` to VM `h` at `ipa`.
    fn share(&mut self, h: Handle, pa: u64, ipa: u64, p: u64) -> CallResult {
        self.lend(h, pa, ipa, p, 1, true)
    }

    /// `Donate` of the `pages` host pages from `pa` (0 meaning 1) to VM `h`
    /// from `ipa`: all of them or none.
    fn donate(&mut self, h: Handle, pa: u64, ipa: u64, p: u64, pages: u64) -> CallResult {
        let n = pages.max(1);
        if n > DONATE_MAX_PAGES {
            return Err(Status::InvalidArgument);
        }
        self.lend(h, pa, ipa, p, n, false)
    }

    /// `Donate` (`share == false`) or `Share` (`share == true`) of the `n`
    /// host pages from `pa` to VM `h`, page `i` at `ipa + i * PAGE_SIZE`.
    fn lend(&mut self, h: Handle, pa: u64, ipa: u64, p: u64, n: u64, share: bool) -> CallResult {
        self.check_pages(pa, n)?;
        for i in 0..n {
            self.check_ipa(page_addr(ipa, i).ok_or(Status::InvalidArgument)?)?;
        }
        if p & !perms::ALL != 0 || p == 0 {
            return Err(Status::InvalidArgument);
        }
        let vm = self.vm(h)?;
        self.check_host_owned(pa, n)?;
        let ipas = (0..n).filter_map(|i| page_addr(ipa, i));
        if ipas.clone().any(|ipa| vm.map.contains_key(&ipa)) {
            return Err(Status::AlreadyMapped);
        }
        let mut new_tables = super::alloc::vec::Vec::new();
        for ipa in ipas.clone() {
            for t in self.missing_tables(h, ipa) {
                if !new_tables.contains(&t) {
                    new_tables.push(t);
                }
            }
        }
        let pool_free = vm
            .pool_free
            .checked_sub(len(&new_tables))
            .ok_or(Status::NoMemory)?;
        if let Some(t) = self.tables.get_mut(&h) {
            t.extend(new_tables);
        }
        for (i, ipa) in ipas.enumerate() {
            let pa = super::page_addr(pa, i as u64);
            if let Some(vm) = self.state.vms.get_mut(&h) {
                vm.map.insert(ipa, Mapping { pa, perms: p });
            }
            if let Some(page) = self.state.pages.get_mut(&pa) {
                if share {
                    page.state = PageState::Shared { with: Owner::Vm(h) };
                } else {
                    page.owner = Owner::Vm(h);
                }
            }
        }
        if let Some(vm) = self.state.vms.get_mut(&h) {
            vm.pool_free = pool_free;
        }
        Ok([0; 3])
    }

    /// The Stage-2 tables VM `h` lacks to map `ipa`.
    fn missing_tables(&self, h: Handle, ipa: u64) -> super::alloc::vec::Vec<(u32, u64)> {
        let have = self.tables.get(&h);
        self.config
            .table_shifts
            .iter()
            .map(|&s| (s, ipa.checked_shr(s).unwrap_or(0)))
            .filter(|t| !have.is_some_and(|have| have.contains(t)))
            .collect()
    }

    /// `Unshare(h, pa, ipa)`: ends a host share; `ipa` must be where `h`
    /// maps the lent page (`NotMapped` otherwise).
    fn host_unshare(&mut self, h: Handle, pa: u64, ipa: u64) -> CallResult {
        self.check_pages(pa, 1)?;
        self.check_ipa(ipa)?;
        let vm = self.vm(h)?;
        let shared = self.state.page(pa).is_some_and(|p| {
            p.owner == Owner::Host && p.state == PageState::Shared { with: Owner::Vm(h) }
        });
        if !shared {
            return Err(Status::NotOwner);
        }
        if vm.map.get(&ipa).is_none_or(|m| m.pa != pa) {
            return Err(Status::NotMapped);
        }
        if let Some(vm) = self.state.vms.get_mut(&h) {
            vm.map.remove(&ipa);
        }
        if let Some(page) = self.state.pages.get_mut(&pa) {
            page.state = PageState::Owned;
        }
        Ok([0; 3])
    }

    /// `Reclaim(pa)`: a destroyed VM's page returns to the host, zeroed.
    fn reclaim(&mut self, pa: u64) -> CallResult {
        self.check_pages(pa, 1)?;
        let page = self.state.page(pa).ok_or(Status::InvalidArgument)?;
        match page.owner {
            Owner::Vm(h) if self.state.vms.contains_key(&h) => return Err(Status::Denied),
            Owner::Vm(_) => {}
            Owner::Engine | Owner::Host => return Err(Status::NotOwner),
        }
        let dead = page.owner;
        if let Some(page) = self.state.pages.get_mut(&pa) {
            page.owner = Owner::Host;
            page.state = PageState::Owned;
            page.contents = Some(Contents::new());
        }
        if let Owner::Vm(h) = dead {
            self.free_slot_if_reclaimed(h);
        }
        Ok([0; 3])
    }

    /// Frees the slot of destroyed VM `h` once it owns no page any more.
    fn free_slot_if_reclaimed(&mut self, h: Handle) {
        let owns = self.state.pages.values().any(|p| p.owner == Owner::Vm(h));
        if let (false, Some(slot)) = (owns, self.slots.get_mut(slot_index(h))) {
            slot.taken = false;
        }
    }

    /// `Accounting(selector, h)`.
    fn accounting(&self, selector: u64, h: Handle) -> CallResult {
        let s = &self.state;
        match Accounting::from_raw(selector).ok_or(Status::InvalidArgument)? {
            Accounting::Totals => Ok([
                s.count(|p| p.owner == Owner::Host),
                s.count(|p| p.owner == Owner::Engine),
                s.count(|p| matches!(p.owner, Owner::Vm(_))),
            ]),
            Accounting::Sharing => Ok([
                s.count(|p| p.owner == Owner::Host && matches!(p.state, PageState::Shared { .. })),
                s.count(|p| {
                    matches!(p.owner, Owner::Vm(_))
                        && p.state == PageState::Shared { with: Owner::Host }
                }),
                s.awaiting_reclaim(),
            ]),
            Accounting::Dma => Ok([
                s.dma.count,
                if s.dma.count > 0 {
                    self.config.dma_stream
                } else {
                    0
                },
                s.dma.last,
            ]),
            Accounting::Vm => {
                self.vm(h)?;
                Ok([
                    s.count(|p| p.owner == Owner::Vm(h)),
                    s.count(|p| {
                        p.owner == Owner::Host
                            && p.state == PageState::Shared { with: Owner::Vm(h) }
                    }),
                    s.count(|p| p.state == PageState::Pool { vm: h }),
                ])
            }
            Accounting::Counter => {
                let (mine, sum) = self
                    .counter(h >> 32, h & 0xffff_ffff)
                    .ok_or(Status::InvalidArgument)?;
                Ok([mine, sum, 0])
            }
        }
    }
}

/// The VM-table slot a handle names (its low 16 bits).
fn slot_index(h: Handle) -> usize {
    usize::from(h as u16)
}

/// The address of page `i` of a run from `base`, if it fits in 64 bits.
fn page_addr(base: u64, i: u64) -> Option<u64> {
    i.checked_mul(PAGE_SIZE)
        .and_then(|off| base.checked_add(off))
}

/// Number of items, as `u64`.
fn len<T>(v: &[T]) -> u64 {
    u64::try_from(v.len()).unwrap_or(u64::MAX)
}

/// `value` cut to its low `size` bytes.
pub(super) fn truncate(value: u64, size: u8) -> u64 {
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// Stores `value` at word `word` of a sparse page.
pub(super) fn store(contents: &mut Contents, word: u16, value: u64) {
    if value == 0 {
        contents.remove(&word);
    } else {
        contents.insert(word, value);
    }
}
