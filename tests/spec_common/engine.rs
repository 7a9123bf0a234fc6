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
//! caches the host Stage-2's translations until the engine invalidates them. The only state the harness keeps itself is what the engine has
//! no read-only view of: which `LoadedVcpu` token each CPU holds, a VM's
//! `max vcpus` and whether it powered off (both recorded from the calls and
//! exits that set them, and both checked through statuses anyway).

use std::collections::BTreeMap;

use isola::abort::{self, ec};
use isola::addr::{Ipa, PAGE_SIZE, PhysAddr};
use isola::arch::Arch;
use isola::engine::Engine as Core;
use isola::hypercall::{GuestExitAction, HostCallOutcome, LoadedVcpu, Trap};
use isola::ownership::{Owner as RecOwner, PageState as RecState};
use isola::spec::guest::ESR_UNKNOWN;
use isola::spec::{
    Config, Contents, Cpu, DmaFaults, El1, Event, Handle, Mapping, Outcome, Owner, Page, PageState,
    Pending, RunState, State, Vcpu, Vm,
};
use isola::testing::SimArch;
use isola::testing::{GUEST_MMIO, MachineSpec};
use isola::vcpu::{MAX_VCPUS, Pending as CtxPending, SysReg, VcpuState};
use isola::vm::{SlotState, VmHandle};
use isola_abi::{Exit, HostCall, Status, lr};

/// List registers the test engine offers (`VcpuInterrupts`).
const LIST_REGS: usize = 4;

/// The test machine: 96 pages of RAM straddling a 2 MiB shard boundary (so
/// two shards are in play), 8 engine pages (host Stage-2 reserve), 4 VM slots.
fn machine() -> MachineSpec {
    MachineSpec {
        ram_base: 0x4020_0000 - 32 * PAGE_SIZE,
        cpus: CPUS,
        ..MachineSpec::default()
    }
}

/// Physical CPUs the tests use.
const CPUS: usize = 3;

/// The model's view of the same machine.
pub fn config() -> Config {
    let m = machine();
    let vm_s2 = isola::testing::VM_S2;
    let below_root = (vm_s2.start_level() + 1..=3)
        .map(|l| isola::stage2::level_shift(l - 1))
        .collect();
    Config {
        ram_base: m.ram_base,
        ram_pages: m.ram_pages,
        engine_pages: m.engine_pages,
        cpus: CPUS,
        max_vms: m.vm_slots,
        max_vcpus: MAX_VCPUS as u64,
        features: machine().build(SimArch::new()).features()
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

/// The engine under test plus the harness's per-CPU tokens.
pub struct Engine {
    core: Core<SimArch>,
    /// Per CPU: the vCPU loaded there (its VM handle, index and token).
    loaded: Vec<Option<(Handle, u64, LoadedVcpu)>>,
    /// `max vcpus` of each VM, as created.
    max_vcpus: BTreeMap<Handle, u64>,
    /// VMs that called `SYSTEM_OFF` or `SYSTEM_RESET`.
    off: Vec<Handle>,
}

impl Engine {
    /// A freshly booted engine.
    pub fn boot() -> Self {
        let mut core = machine().build(SimArch::new());
        core.set_list_registers(LIST_REGS);
        Self {
            core,
            loaded: (0..CPUS).map(|_| None).collect(),
            max_vcpus: BTreeMap::new(),
            off: Vec::new(),
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
                let (h, _, l) = self.loaded[cpu].take().unwrap();
                if matches!(exit, Exit::SystemOff | Exit::SystemReset) {
                    self.off.push(h);
                }
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
        if cpu >= CPUS || running == event.is_host() {
            return Outcome::Inapplicable;
        }
        let mem = self.core.mem();
        match *event {
            Event::HostHvc { regs, .. } => {
                let mut r = regs;
                match self.core.host_call(cpu as u32, &mut r) {
                    HostCallOutcome::Done => {
                        if r[0] == 0 && regs[0] & 0xffff_ffff == HostCall::VmCreate as u64 {
                            self.max_vcpus.insert(r[1], regs[3]);
                        }
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
                if mem.page_is_zero(pa) == Some(true) {
                    return c;
                }
                for w in 0..PAGE_SIZE / 8 {
                    let v = mem.read_u64(PhysAddr::new(pa.raw() + 8 * w)).unwrap();
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
        for h in live {
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
            let usage = core.vm_usage(h).unwrap();
            let vm = Vm {
                max_vcpus: self.max_vcpus.get(&h).copied().unwrap_or(0),
                vcpus,
                map,
                pool_free: usage[3],
                off: self.off.contains(&h),
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
        self.core.mem().write_u64(PhysAddr::new(pa), value);
    }

    fn dma_view(&self) -> Vec<u64> {
        let mut v = self.host_mapped();
        v.extend(self.core.arch().cached());
        v.sort_unstable();
        v.dedup();
        v
    }

    fn host_mapped(&self) -> Vec<u64> {
        let c = config();
        let end = c.ram_base + c.ram_pages * PAGE_SIZE;
        let mut v = Vec::new();
        self.core.host_mappings(|ipa, _, level| {
            let size = isola::stage2::block_size(level);
            let mut pa = ipa.raw();
            while pa < ipa.raw() + size {
                if (c.ram_base..end).contains(&pa) {
                    v.push(pa);
                }
                pa += PAGE_SIZE;
            }
        });
        v.sort_unstable();
        v
    }
}
