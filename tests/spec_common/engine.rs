//! The engine as a [`System`]: events become the engine's entry points
//! (`host_call`, the host Stage-2 abort path, `guest_hvc`, `guest_access`,
//! `guest_exit`, `finish_run`), and `observe` is the abstraction function
//! from the engine's records, tables and vCPU contexts to `isola::spec::State`.
//!
//! The harness plays the hardware: a host access first looks at the host
//! Stage-2 and only on a miss takes the abort path (as a translation fault
//! with a valid syndrome), then retries; a guest access goes through the
//! engine's own `guest_access` test aid, which does the same on the VM's
//! Stage-2; a DMA goes through `isola::testing::SimArch`'s IOMMU, whose TLB
//! caches the host Stage-2's translations until the engine invalidates
//! them. The only state the harness keeps itself is which `LoadedVcpu` token
//! each CPU holds; a VM's `max vcpus` and powered-off flag come from the
//! engine's `vm_summary`.
//!
//! `SimArch` also logs every request the engine makes, so a caller can check
//! that every step kept break-before-make ([`super::System::arch_check`]).
//!
//! Unlike `MachineSpec::build`, which leaks its storage (fine for a test
//! that boots a few engines), [`Engine::boot_on`] frees the engine's RAM and
//! tables when the harness is dropped: the exhaustive exploration boots
//! hundreds of thousands of engines.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use isola::abort::{self, ec};
use isola::addr::{Ipa, PAGE_SIZE, PhysAddr};
use isola::arch::{Arch, check_break_before_make};
use isola::engine::{Engine as Core, EngineStorage};
use isola::hypercall::{GuestExitAction, HostCallOutcome, LoadedVcpu, Trap};
use isola::mem::PhysMem;
use isola::ownership::{Owner as RecOwner, PageDb, PageRecord, PageState as RecState, Shard};
use isola::spec::guest::ESR_UNKNOWN;
use isola::spec::{
    Config, Contents, Cpu, DmaFaults, El1, Event, Handle, Mapping, Outcome, Owner, Page, PageState,
    Pending, RunState, State, Vcpu, Vm,
};
use isola::stats::CpuStats;
use isola::testing::SimArch;
use isola::testing::{GUEST_MMIO, MachineSpec};
use isola::vcpu::{MAX_VCPUS, Pending as CtxPending, SysReg, VcpuState};
use isola::vm::{SlotState, VmHandle, VmSlot};
use isola_abi::{HostCall, Status, lr};

/// List registers the test engine offers (`VcpuInterrupts`).
const LIST_REGS: usize = 4;

/// A machine the harness boots: the engine's shape and how many physical
/// CPUs drive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// RAM, engine pages, VM slots, shards, caches, physical CPUs.
    pub spec: MachineSpec,
}

impl Machine {
    /// The property tests' machine: 96 pages of RAM straddling a 2 MiB
    /// shard boundary (so two shards are in play), 8 engine pages (host
    /// Stage-2 reserve), 4 VM slots, 3 CPUs.
    pub fn standard() -> Self {
        Self {
            spec: MachineSpec {
                ram_base: 0x4020_0000 - 32 * PAGE_SIZE,
                cpus: 3,
                ..MachineSpec::default()
            },
        }
    }

    /// The model's view of this machine.
    pub fn config(&self) -> Config {
        let m = self.spec;
        let vm_s2 = isola::testing::VM_S2;
        let below_root = (vm_s2.start_level() + 1..=3)
            .map(|l| isola::stage2::level_shift(l - 1))
            .collect();
        let storage = Storage::new(&m);
        let features = build(&m, &storage).features();
        Config {
            ram_base: m.ram_base,
            ram_pages: m.ram_pages,
            engine_pages: m.engine_pages,
            cpus: m.cpus,
            max_vms: m.vm_slots,
            max_vcpus: MAX_VCPUS as u64,
            features: features
                | isola_abi::features::VIRTUAL_INTERRUPTS
                | (LIST_REGS as u64) << isola_abi::features::LR_COUNT_SHIFT,
            list_regs: LIST_REGS,
            ipa_bits: u32::from(vm_s2.ipa_bits()),
            mmio_base: GUEST_MMIO.0,
            mmio_end: GUEST_MMIO.1,
            vm_pages: vm_s2.root_pages(),
            vcpu_pages: 1,
            table_shifts: below_root,
            dma_stream: isola::testing::DMA_STREAM,
        }
    }
}

/// The model's view of the property tests' machine ([`Machine::standard`]).
pub fn config() -> Config {
    Machine::standard().config()
}

/// The memory an engine lives in: its RAM and the tables `Engine::new`
/// borrows for `'static`. Owned here and freed on drop, after the engine
/// (see the field order of [`Engine`]).
struct Storage {
    ram: *mut u8,
    ram_layout: Layout,
    shards: *mut [Shard],
    records: *mut [PageRecord],
    vms: *mut [VmSlot],
    stats: *mut [CpuStats],
}

impl Storage {
    /// Zeroed RAM and fresh tables for `spec`.
    fn new(spec: &MachineSpec) -> Self {
        let ram = [(PhysAddr::new(spec.ram_base), spec.ram_pages)];
        let (nshards, nrecords) = PageDb::requirements(&ram, spec.shard_shift).unwrap();
        let ram_layout =
            Layout::from_size_align((spec.ram_pages * PAGE_SIZE) as usize, PAGE_SIZE as usize)
                .unwrap();
        // SAFETY: the layout has a non-zero size (a machine has RAM).
        let base = unsafe { std::alloc::alloc_zeroed(ram_layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(ram_layout);
        }
        Self {
            ram: base,
            ram_layout,
            shards: Box::into_raw((0..nshards).map(|_| Shard::new()).collect()),
            records: Box::into_raw(vec![PageRecord::HOST; nrecords].into_boxed_slice()),
            vms: Box::into_raw((0..spec.vm_slots).map(|_| VmSlot::new()).collect()),
            stats: Box::into_raw(
                (0..spec.cpus)
                    .map(|i| CpuStats::new(u32::try_from(i).unwrap()))
                    .collect(),
            ),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // SAFETY: each pointer came from `Box::into_raw` (or `alloc_zeroed`
        // with `ram_layout`) in `Storage::new` and is freed once, here. The
        // only other user, the engine, is dropped before (it is declared
        // before its storage in `Engine`, and `Machine::config` drops the one
        // it builds first) and keeps nothing that outlives it.
        unsafe {
            drop(Box::from_raw(self.shards));
            drop(Box::from_raw(self.records));
            drop(Box::from_raw(self.vms));
            drop(Box::from_raw(self.stats));
            std::alloc::dealloc(self.ram, self.ram_layout);
        }
    }
}

/// Builds the engine of `spec` on `storage` (`MachineSpec::build_on`, with
/// storage that is freed later instead of leaked), offering [`LIST_REGS`]
/// list registers.
fn build(spec: &MachineSpec, storage: &Storage) -> Core<SimArch> {
    // SAFETY: `storage` holds `ram_pages` pages at `ram`, valid until it is
    // dropped, which happens after the engine built here is dropped (field
    // order of `Engine`); nothing else touches them.
    let mem = unsafe {
        PhysMem::new(
            storage.ram,
            PhysAddr::new(spec.ram_base),
            spec.ram_pages * PAGE_SIZE,
        )
    };
    // SAFETY: as for `mem`: the tables stay allocated, and are reached only
    // through the engine, for as long as the engine exists. The `'static`
    // lifetime `EngineStorage` asks for is upheld by dropping the engine
    // before its storage; no reference escapes the harness.
    let tables = unsafe {
        EngineStorage {
            shards: &*storage.shards,
            records: &mut *storage.records,
            vms: &*storage.vms,
            stats: &*storage.stats,
        }
    };
    let mut core = spec.build_on(SimArch::new(), mem, tables);
    core.set_list_registers(LIST_REGS);
    core
}

/// The engine under test plus the harness's per-CPU tokens.
pub struct Engine {
    // Declared before `storage`, so dropped before it.
    core: Core<SimArch>,
    machine: Machine,
    /// Per CPU: the vCPU loaded there (its VM handle, index and token).
    loaded: Vec<Option<(Handle, u64, LoadedVcpu)>>,
    /// The last Stage-2 walks, valid while RAM holds the same bytes.
    walks: RefCell<Walks>,
    /// Whether anything may have written RAM since the walks were checked.
    dirty: Cell<bool>,
    storage: Storage,
}

/// Results of walking Stage-2 tables, which are a function of the bytes of
/// RAM (where every table lives) and of the root: `observe` runs after
/// every step, most steps change no table, and the walks are most of its
/// cost, so it keeps them while RAM is unchanged.
#[derive(Default)]
struct Walks {
    /// RAM when they were taken.
    ram: Vec<u8>,
    /// Per VM handle and Stage-2 root: its mappings.
    vms: BTreeMap<(Handle, u64), BTreeMap<u64, Mapping>>,
    /// The RAM pages the host Stage-2 maps.
    host: Option<Vec<u64>>,
}

impl Engine {
    /// A freshly booted engine on the property tests' machine.
    pub fn boot() -> Self {
        Self::boot_on(Machine::standard())
    }

    /// A freshly booted engine on `machine`.
    pub fn boot_on(machine: Machine) -> Self {
        let storage = Storage::new(&machine.spec);
        let core = build(&machine.spec, &storage);
        Self {
            core,
            machine,
            loaded: (0..machine.spec.cpus).map(|_| None).collect(),
            walks: RefCell::default(),
            dirty: Cell::new(true),
            storage,
        }
    }

    /// The bytes of the engine's RAM.
    fn ram(&self) -> &[u8] {
        // SAFETY: `storage.ram` holds `ram_layout.size()` initialised
        // (zeroed, then written) bytes for as long as `self` lives. Nothing
        // writes them while this shared borrow lives: the engine runs only
        // inside `&mut self` methods of the harness, on this thread.
        unsafe { std::slice::from_raw_parts(self.storage.ram, self.storage.ram_layout.size()) }
    }

    /// Forgets the cached walks if RAM changed since they were taken (the
    /// host Stage-2 root never moves; a VM's root is part of its key).
    fn refresh_walks(&self) {
        if !self.dirty.replace(false) {
            return;
        }
        let ram = self.ram();
        let mut w = self.walks.borrow_mut();
        if w.ram != ram {
            w.ram.clear();
            w.ram.extend_from_slice(ram);
            w.vms.clear();
            w.host = None;
        }
    }

    /// The engine itself, for checks beyond the abstraction.
    pub fn core(&self) -> &Core<SimArch> {
        &self.core
    }

    /// A host load or store at `pa`, as the CPU would do it: through the
    /// host Stage-2, taking the abort path on a miss.
    fn host_access(&self, cpu: usize, pa: u64, write: Option<u64>) -> Outcome {
        let p = PhysAddr::new(pa);
        let usable = |core: &Core<SimArch>| {
            core.host_translate(p).is_some_and(|t| {
                if write.is_some() {
                    t.desc.perms().w
                } else {
                    t.desc.perms().r
                }
            })
        };
        if !usable(&self.core) {
            let esr = abort::data_abort_esr(8, write.is_some(), 0, false, true, 0b000111);
            let action = self.core.host_abort(cpu as u32, esr, pa, (pa >> 12) << 4);
            if action != isola::engine::HostAbortAction::Retry || !usable(&self.core) {
                return Outcome::HostFault;
            }
        }
        let mem = self.core.mem();
        assert!(
            mem.read_u64(p).is_some(),
            "host access to {pa:#x}: mapped but not RAM (a device?)"
        );
        match write {
            Some(v) => {
                mem.write_u64(p, v);
                Outcome::HostStored
            }
            None => Outcome::HostLoaded(mem.read_u64(p).unwrap_or(0)),
        }
    }

    /// What the guest's exception led to: resume (a guest call's `x0..=x3`,
    /// or a completed access) or the end of `VcpuRun`.
    fn after_guest(&mut self, cpu: usize, action: GuestExitAction, call: bool) -> Outcome {
        match action {
            GuestExitAction::Resume if call => {
                let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                let ctx = l.context();
                let mem = self.core.mem();
                Outcome::GuestReturn([ctx.x(mem, 0), ctx.x(mem, 1), ctx.x(mem, 2), ctx.x(mem, 3)])
            }
            GuestExitAction::Resume => Outcome::GuestDone,
            GuestExitAction::ExitToHost(exit) => {
                let (_, _, l) = self.loaded[cpu].take().unwrap();
                let mut regs = [HostCall::VcpuRun as u64, 0, 0, 0, 0, 0, 0];
                self.core.finish_run(l, exit, &mut regs);
                assert_eq!(
                    regs[0],
                    Status::Success.raw(),
                    "VcpuRun ended with an exit but not Success"
                );
                Outcome::Exit([regs[1], regs[2], regs[3]])
            }
        }
    }

    /// The handle a page record's owner or peer names, live or destroyed.
    fn handle_of(slots: &BTreeMap<u16, Handle>, o: RecOwner) -> Owner {
        match o {
            RecOwner::Host => Owner::Host,
            RecOwner::Engine => Owner::Engine,
            RecOwner::Vm(s) => Owner::Vm(slots.get(&s).copied().unwrap_or(u64::MAX)),
        }
    }
}

impl super::System for Engine {
    fn step(&mut self, event: &Event) -> Outcome {
        self.dirty.set(true);
        match *event {
            Event::DmaRead { pa } => {
                return match isola::testing::dma(&self.core, pa, None) {
                    Ok(v) => Outcome::DmaLoaded(v),
                    Err(()) => Outcome::DmaFault,
                };
            }
            Event::DmaWrite { pa, value } => {
                return match isola::testing::dma(&self.core, pa, Some(value)) {
                    Ok(_) => Outcome::DmaStored,
                    Err(()) => Outcome::DmaFault,
                };
            }
            _ => {}
        }
        let cpu = event.cpu();
        let running = self.loaded.get(cpu).is_some_and(Option::is_some);
        if cpu >= self.machine.spec.cpus || running == event.is_host() {
            return Outcome::Inapplicable;
        }
        let mem = self.core.mem();
        match *event {
            Event::HostHvc { regs, .. } => {
                let mut r = regs;
                match self.core.host_call(cpu as u32, &mut r) {
                    HostCallOutcome::Done => {
                        assert_eq!(r[4..], regs[4..], "x4..=x6 not preserved");
                        Outcome::HostReturn([r[0], r[1], r[2], r[3]])
                    }
                    HostCallOutcome::Run(l) => {
                        self.loaded[cpu] = Some((regs[1], regs[2], l));
                        Outcome::Entered
                    }
                }
            }
            Event::HostRead { cpu, pa } => self.host_access(cpu, pa, None),
            Event::HostWrite { cpu, pa, value } => self.host_access(cpu, pa, Some(value)),
            Event::GuestSetReg { reg, value, .. } => {
                let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                l.context().set_x(mem, reg, value);
                Outcome::GuestDone
            }
            Event::GuestHvc { regs, .. } => {
                let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                let a = self.core.guest_hvc(l, regs);
                self.after_guest(cpu, a, true)
            }
            Event::GuestRead { ipa, reg, size, .. } | Event::GuestWrite { ipa, reg, size, .. } => {
                let write = matches!(event, Event::GuestWrite { .. });
                let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                let a = self.core.guest_access(l, Ipa::new(ipa), size, write, reg);
                self.after_guest(cpu, a, false)
            }
            Event::DmaRead { .. } | Event::DmaWrite { .. } => Outcome::Inapplicable,
            Event::GuestSysReg { access, .. } => {
                let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                let trap = Trap::Sync {
                    esr: access.esr(),
                    far: 0,
                    hpfar: 0,
                };
                let a = self.core.guest_exit(l, trap);
                self.after_guest(cpu, a, false)
            }
            Event::GuestTimer { ctl, cval, .. } => {
                // Not trapped: the registers change in the CPU, which the
                // switch saves into the context at the next exit.
                let ctx = self.loaded[cpu].as_ref().unwrap().2.context();
                ctx.set_sysreg(mem, SysReg::CntvCtlEl0, ctl);
                ctx.set_sysreg(mem, SysReg::CntvCvalEl0, cval);
                Outcome::GuestDone
            }
            Event::GuestIntAck { intid, .. } | Event::GuestIntEoi { intid, .. } => {
                // The virtual CPU interface's work, on the saved words.
                let ack = matches!(event, Event::GuestIntAck { .. });
                let ctx = self.loaded[cpu].as_ref().unwrap().2.context();
                let mut lrs = ctx.lrs(mem);
                let hit = lrs.iter_mut().find(|w| {
                    **w != 0
                        && **w & 0xffff_ffff == intid
                        && if ack {
                            **w >> 62 == 1
                        } else {
                            **w & lr::ACTIVE != 0
                        }
                });
                let mut maintenance = false;
                if let Some(w) = hit {
                    *w = if ack {
                        (*w & !lr::PENDING) | lr::ACTIVE
                    } else {
                        *w & !lr::ACTIVE
                    };
                    // ICH_MISR_EL2.EOI: invalid, EOI requested, not HW.
                    maintenance = !ack && *w >> 62 == 0 && *w & lr::EOI != 0 && *w & lr::HW == 0;
                }
                ctx.set_lrs(mem, lrs);
                if maintenance {
                    let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                    let a = self.core.guest_exit(l, Trap::Irq);
                    self.after_guest(cpu, a, false)
                } else {
                    Outcome::GuestDone
                }
            }
            Event::GuestWfi { .. } | Event::GuestUndefined { .. } | Event::Irq { .. } => {
                let trap = match event {
                    Event::GuestWfi { .. } => Trap::Sync {
                        esr: (u64::from(ec::WFX) << 26) | 1 << 25,
                        far: 0,
                        hpfar: 0,
                    },
                    Event::GuestUndefined { .. } => Trap::Sync {
                        esr: ESR_UNKNOWN,
                        far: 0,
                        hpfar: 0,
                    },
                    _ => Trap::Irq,
                };
                let (_, _, l) = self.loaded[cpu].as_ref().unwrap();
                let a = self.core.guest_exit(l, trap);
                self.after_guest(cpu, a, false)
            }
        }
    }

    fn observe(&self) -> State {
        let core = &self.core;
        let mem = core.mem();
        // Slot → handle of the VM whose pages it holds (a destroyed VM's
        // slot already carries the next generation: its pages are named by
        // the handle the VM had).
        let mut slots = BTreeMap::new();
        let mut live = Vec::new();
        core.for_each_vm(|h, state| {
            let handle = match state {
                SlotState::Dead => {
                    let g = h.generation().unwrap_or(1);
                    VmHandle::new(h.slot() as u16, if g <= 1 { u32::MAX } else { g - 1 }).0
                }
                _ => {
                    live.push(h.0);
                    h.0
                }
            };
            slots.insert(h.slot() as u16, handle);
        });
        let mut pages = BTreeMap::new();
        let ram = self.ram();
        core.for_each_page(|pa, rec| {
            let owner = Self::handle_of(&slots, rec.owner());
            let peer = rec.peer().map(|p| Self::handle_of(&slots, p));
            let state = match (rec.state(), peer) {
                (RecState::Owned, _) => PageState::Owned,
                (RecState::Shared, Some(with)) => PageState::Shared { with },
                (RecState::Pool, Some(Owner::Vm(vm))) => PageState::Pool { vm },
                (s, p) => panic!("record {pa:?}: {s:?} with peer {p:?}"),
            };
            let contents = (owner != Owner::Engine).then(|| {
                let mut c = Contents::new();
                let off = (pa.raw() - self.machine.spec.ram_base) as usize;
                let page = &ram[off..off + PAGE_SIZE as usize];
                for (w, word) in page.chunks_exact(8).enumerate() {
                    let v = u64::from_le_bytes(word.try_into().unwrap());
                    if v != 0 {
                        c.insert(w as u16, v);
                    }
                }
                c
            });
            pages.insert(
                pa.raw(),
                Page {
                    owner,
                    state,
                    contents,
                },
            );
        });
        let mut vms = BTreeMap::new();
        self.refresh_walks();
        for h in live {
            let summary = core.vm_summary(h).unwrap();
            let root = summary.root.map_or(0, PhysAddr::raw);
            let cached = self.walks.borrow().vms.get(&(h, root)).cloned();
            let map = match cached {
                Some(map) => map,
                None => {
                    let mut map = BTreeMap::new();
                    core.vm_mappings(h, |ipa, pa, p, _| {
                        let perms = u64::from(p.r) | u64::from(p.w) << 1 | u64::from(p.x) << 2;
                        map.insert(
                            ipa.raw(),
                            Mapping {
                                pa: pa.raw(),
                                perms,
                            },
                        );
                    })
                    .unwrap();
                    self.walks.borrow_mut().vms.insert((h, root), map.clone());
                    map
                }
            };
            let mut vcpus = BTreeMap::new();
            for i in 0..MAX_VCPUS as u64 {
                let Ok((state, ctx)) = core.vcpu(h, i) else {
                    continue;
                };
                let run = match state {
                    VcpuState::Idle => RunState::Ready,
                    VcpuState::Loaded(c) => RunState::Loaded { cpu: c as usize },
                    VcpuState::Off => RunState::Off,
                    VcpuState::OnPending => RunState::OnPending,
                    VcpuState::Stopped => RunState::Stopped,
                    VcpuState::Absent => unreachable!("vcpu() answers NotFound for absent vCPUs"),
                };
                let far = ctx.pending_far(mem);
                let pending = match ctx.pending(mem) {
                    CtxPending::None => Pending::None,
                    CtxPending::HostReply => Pending::HostReply,
                    CtxPending::MmioRead { reg, size, .. } => Pending::MmioRead { reg, size, far },
                    CtxPending::MmioWrite => Pending::MmioWrite { far },
                    CtxPending::MemFault { write, fetch } => {
                        Pending::MemFault { far, write, fetch }
                    }
                };
                let regs = std::array::from_fn(|n| ctx.x(mem, n as u8));
                let sr = |r| ctx.sysreg(mem, r);
                vcpus.insert(
                    i,
                    Vcpu {
                        regs,
                        pc: ctx.pc(mem),
                        run,
                        pending,
                        pstate: ctx.pstate(mem),
                        el1: El1 {
                            elr: sr(SysReg::ElrEl1),
                            spsr: sr(SysReg::SpsrEl1),
                            esr: sr(SysReg::EsrEl1),
                            far: sr(SysReg::FarEl1),
                        },
                        lrs: ctx.lrs(mem),
                        timer: (sr(SysReg::CntvCtlEl0), sr(SysReg::CntvCvalEl0)),
                    },
                );
            }
            let vm = Vm {
                max_vcpus: summary.max_vcpus,
                vcpus,
                map,
                pool_free: summary.pool_free,
                off: summary.off,
            };
            vms.insert(h, vm);
        }
        let cpus = self
            .loaded
            .iter()
            .map(|l| match l {
                Some((vm, vcpu, _)) => Cpu::Guest {
                    vm: *vm,
                    vcpu: *vcpu,
                },
                None => Cpu::Host,
            })
            .collect();
        let [count, _, last] = core.arch().dma_faults();
        State {
            pages,
            vms,
            cpus,
            dma: DmaFaults { count, last },
        }
    }

    fn poke(&mut self, pa: u64, value: u64) {
        self.dirty.set(true);
        self.core.mem().write_u64(PhysAddr::new(pa), value);
    }

    fn set_reg(&mut self, vm: Handle, vcpu: u64, reg: u8, value: u64) {
        self.dirty.set(true);
        if let Ok((_, ctx)) = self.core.vcpu(vm, vcpu) {
            ctx.set_x(self.core.mem(), reg, value);
        }
    }

    fn arch_check(&mut self) -> Result<(), String> {
        let log = self.core.arch().log();
        let overflowed = log.overflowed();
        let mut events = Vec::with_capacity(log.len());
        log.for_each(|e| events.push(e));
        log.clear();
        if overflowed {
            return Err("the Arch log overflowed: break-before-make unchecked".into());
        }
        check_break_before_make(events).map_err(|v| format!("break-before-make: {v:?}"))
    }

    fn dma_view(&self) -> Vec<u64> {
        let mut v = self.host_mapped();
        v.extend(self.core.arch().cached());
        v.sort_unstable();
        v.dedup();
        v
    }

    fn host_mapped(&self) -> Vec<u64> {
        self.refresh_walks();
        if let Some(v) = &self.walks.borrow().host {
            return v.clone();
        }
        let m = self.machine.spec;
        let end = m.ram_base + m.ram_pages * PAGE_SIZE;
        let mut v = Vec::new();
        self.core.host_mappings(|ipa, _, level| {
            let size = isola::stage2::block_size(level);
            let mut pa = ipa.raw();
            while pa < ipa.raw() + size {
                if (m.ram_base..end).contains(&pa) {
                    v.push(pa);
                }
                pa += PAGE_SIZE;
            }
        });
        v.sort_unstable();
        self.walks.borrow_mut().host = Some(v.clone());
        v
    }
}
