//! The executable specification: what isola does, as plain data and pure functions.
//!
//! [`Model::step`] takes the abstract [`State`] and one [`Event`] — a host
//! call, a host memory access, a guest call, a guest memory access or an
//! interrupt, on one physical CPU — and gives the [`Outcome`] and the next
//! state. The property tests in `tests/engine/spec_*.rs` run the implementation and
//! this model side by side and compare them after every step; everything the
//! security argument rests on is stated here, in terms of pages, owners and
//! mappings, rather than tables, locks and per-CPU slots.
//!
//! The model follows `isola_abi` to the letter. Where the ABI is silent the
//! model follows the implementation, and each such decision is written next
//! to the rule it concerns (search for "ABI silent").
//!
//! What the model abstracts away: caches, TLBs and break-before-make (an
//! access either sees a mapping or not), the Arm memory model and concurrency
//! (events are atomic and totally ordered; the loom tests cover the
//! interleavings), the layout of tables and metadata inside a pool (only the
//! number of pool pages they use), and guest instructions (a guest is a
//! sequence of register writes, memory accesses and calls).
//!
//! Invariants of a reachable state are listed in [`state`] and checked by
//! [`props::invariants`].
//!
//! This module is compiled for hosted targets only: it uses `alloc`, and the
//! EL2 image (`aarch64-unknown-none`) has no allocator and no need of it.
#![cfg(not(target_os = "none"))]

extern crate alloc;

pub mod guest;
mod host;
pub mod props;
pub mod state;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

pub use state::{
    Contents, Cpu, DmaFaults, El1, Handle, Mapping, Owner, Page, PageState, Pending, RunState,
    State, Vcpu, Vm,
};

/// The fixed shape of the machine and the implementation's sizing choices
/// that the ABI leaves open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Physical address of the first page of RAM.
    pub ram_base: u64,
    /// Pages of RAM.
    pub ram_pages: u64,
    /// The first `engine_pages` pages of RAM belong to the engine at boot;
    /// the host owns the rest.
    pub engine_pages: u64,
    /// Physical CPUs.
    pub cpus: usize,
    /// Live VMs the engine's VM table holds.
    pub max_vms: usize,
    /// Largest `max vcpus` a VM may ask for; reported by `Version`.
    pub max_vcpus: u64,
    /// Feature bits reported by `Version`.
    pub features: u64,
    /// List registers the host may fill (`VcpuInterrupts`).
    pub list_regs: usize,
    /// Guest IPAs are below `1 << ipa_bits`.
    pub ipa_bits: u32,
    /// Guest IPAs in `mmio_base..mmio_end` are MMIO: an access exits to the host.
    pub mmio_base: u64,
    /// End (exclusive) of the MMIO window.
    pub mmio_end: u64,
    /// Pool pages `VmCreate` uses at once: the VM's Stage-2 root, which must
    /// also be aligned to its size. (The VM table itself is the engine's.)
    pub vm_pages: u64,
    /// Pool pages each `VcpuCreate` uses (the context).
    pub vcpu_pages: u64,
    /// Shifts of the Stage-2 table levels below the root: mapping an IPA
    /// needs, for each shift `s`, one table covering `ipa >> s`; each table
    /// the VM does not have yet costs one pool page. Tables live until the
    /// VM is destroyed.
    pub table_shifts: Vec<u32>,
    /// The StreamID of the host's DMA-capable device (`Accounting(Dma)`
    /// names it for the last refused access).
    pub dma_stream: u64,
}

/// One thing that happens on one physical CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The host on `cpu` issues `hvc #0` with `x0..=x6`.
    HostHvc {
        /// Physical CPU.
        cpu: usize,
        /// `x0` (function id) and `x1..=x6`.
        regs: [u64; 7],
    },
    /// The host on `cpu` loads the 64-bit word at `pa`.
    HostRead {
        /// Physical CPU.
        cpu: usize,
        /// 8-byte aligned physical address.
        pa: u64,
    },
    /// The host on `cpu` stores `value` at `pa`.
    HostWrite {
        /// Physical CPU.
        cpu: usize,
        /// 8-byte aligned physical address.
        pa: u64,
        /// Stored value.
        value: u64,
    },
    /// The guest on `cpu` sets register `reg` to `value` (guest computation).
    GuestSetReg {
        /// Physical CPU.
        cpu: usize,
        /// Register number, 0..=30.
        reg: u8,
        /// New value.
        value: u64,
    },
    /// The guest on `cpu` puts `regs` in `x0..=x6` and issues `hvc #0`.
    GuestHvc {
        /// Physical CPU.
        cpu: usize,
        /// `x0` (function id) and `x1..=x6`.
        regs: [u64; 7],
    },
    /// The guest on `cpu` loads `size` bytes at `ipa` into register `reg`.
    GuestRead {
        /// Physical CPU.
        cpu: usize,
        /// Address, aligned to `size`.
        ipa: u64,
        /// Destination register, 0..=30.
        reg: u8,
        /// 1, 2, 4 or 8.
        size: u8,
    },
    /// The guest on `cpu` stores the low `size` bytes of register `reg` at `ipa`.
    GuestWrite {
        /// Physical CPU.
        cpu: usize,
        /// Address, aligned to `size`.
        ipa: u64,
        /// Source register, 0..=30.
        reg: u8,
        /// 1, 2, 4 or 8.
        size: u8,
    },
    /// The guest on `cpu` executes `WFI`.
    GuestWfi {
        /// Physical CPU.
        cpu: usize,
    },
    /// The guest on `cpu` takes an exception the engine does not handle
    /// (an undefined instruction): `Exit::Error`, and the vCPU stops.
    GuestUndefined {
        /// Physical CPU.
        cpu: usize,
    },
    /// A physical interrupt arrives at `cpu` while a guest runs there.
    Irq {
        /// Physical CPU.
        cpu: usize,
    },
    /// The guest on `cpu` executes an `MRS`/`MSR` the engine traps.
    GuestSysReg {
        /// Physical CPU.
        cpu: usize,
        /// The register and direction.
        access: crate::hypercall::sysreg::Access,
    },
    /// The guest on `cpu` programs its virtual timer, which then reads
    /// `ctl` (with `ISTATUS` as the counter makes it) and `cval`.
    GuestTimer {
        /// Physical CPU.
        cpu: usize,
        /// `CNTV_CTL_EL0`.
        ctl: u64,
        /// `CNTV_CVAL_EL0`.
        cval: u64,
    },
    /// The guest on `cpu` acknowledges virtual interrupt `intid`: a list
    /// register holding it pending makes it active.
    GuestIntAck {
        /// Physical CPU.
        cpu: usize,
        /// The vINTID.
        intid: u64,
    },
    /// The guest on `cpu` deactivates virtual interrupt `intid`: a list
    /// register holding it active drops the active state; if that leaves
    /// it invalid with `EOI` set, the maintenance interrupt ends the run.
    GuestIntEoi {
        /// Physical CPU.
        cpu: usize,
        /// The vINTID.
        intid: u64,
    },
    /// A device of the host reads the 64-bit word at `pa` by DMA, through
    /// the IOMMU: on no CPU, whatever the CPUs run.
    DmaRead {
        /// 8-byte aligned physical address.
        pa: u64,
    },
    /// A device of the host writes `value` at `pa` by DMA, through the IOMMU.
    DmaWrite {
        /// 8-byte aligned physical address.
        pa: u64,
        /// Written value.
        value: u64,
    },
}

impl Event {
    /// The physical CPU the event happens on (0 for DMA, which happens on
    /// none: see [`Event::is_dma`]).
    pub fn cpu(&self) -> usize {
        match *self {
            Event::DmaRead { .. } | Event::DmaWrite { .. } => 0,
            Event::HostHvc { cpu, .. }
            | Event::HostRead { cpu, .. }
            | Event::HostWrite { cpu, .. }
            | Event::GuestSetReg { cpu, .. }
            | Event::GuestHvc { cpu, .. }
            | Event::GuestRead { cpu, .. }
            | Event::GuestWrite { cpu, .. }
            | Event::GuestWfi { cpu }
            | Event::GuestUndefined { cpu }
            | Event::Irq { cpu }
            | Event::GuestSysReg { cpu, .. }
            | Event::GuestTimer { cpu, .. }
            | Event::GuestIntAck { cpu, .. }
            | Event::GuestIntEoi { cpu, .. } => cpu,
        }
    }

    /// Whether the event is something the host does on a CPU (else a
    /// guest, an interrupt in a guest, or DMA).
    pub fn is_host(&self) -> bool {
        matches!(
            self,
            Event::HostHvc { .. } | Event::HostRead { .. } | Event::HostWrite { .. }
        )
    }

    /// Whether the event is a DMA access by a device of the host (applicable
    /// whatever the CPUs run; the host is its actor).
    pub fn is_dma(&self) -> bool {
        matches!(self, Event::DmaRead { .. } | Event::DmaWrite { .. })
    }
}

/// What an event produces, as seen by whoever caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The event cannot happen in this state (a guest event on a CPU running
    /// the host, or the reverse); the test harness does not replay it.
    Inapplicable,
    /// A host call returned `x0..=x3` to the host.
    HostReturn([u64; 4]),
    /// `VcpuRun` entered the guest; it returns to the host at the next [`Outcome::Exit`].
    Entered,
    /// The guest's vCPU exited: its `VcpuRun` returns `Success` with these
    /// `x1..=x3` (an encoded [`isola_abi::Exit`]).
    Exit([u64; 3]),
    /// A host load returned this value.
    HostLoaded(u64),
    /// A host store took effect.
    HostStored,
    /// A host access to a page it may not touch was refused (an abort is
    /// injected into the host); nothing changed.
    HostFault,
    /// A DMA read returned this value.
    DmaLoaded(u64),
    /// A DMA write took effect.
    DmaStored,
    /// The IOMMU refused a DMA access: the page is not in the host's DMA
    /// view. Nothing changed but the engine's count of refused accesses.
    DmaFault,
    /// The guest continues: a guest call returned `x0..=x3` to it.
    GuestReturn([u64; 4]),
    /// The guest continues: a load or store to its RAM, or a register write, took effect.
    GuestDone,
}

/// The model: the abstract state plus the bookkeeping that decides handles
/// and pool usage, which the host can observe only through statuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// The machine's shape.
    pub config: Config,
    /// The abstract state.
    pub state: State,
    /// Per live VM, the Stage-2 tables below the root it has, as `(shift, ipa >> shift)`.
    tables: BTreeMap<Handle, BTreeSet<(u32, u64)>>,
    /// The VM table: which handle each slot gives out next, and whether it
    /// is taken (by a live VM, or a destroyed one whose pages await reclaim).
    slots: Vec<Slot>,
    /// Per physical CPU, the engine's event counters (`isola_abi::counter`),
    /// which `Accounting::Counter` reads.
    counters: Vec<[u64; isola_abi::counter::COUNT as usize]>,
}

/// One slot of the VM table.
///
/// ABI silent: handles are the implementation's `generation << 16 | slot`.
/// `VmCreate` takes the lowest free slot; destroy bumps the generation, so a
/// stale handle never names a new VM; a destroyed VM keeps its slot until
/// its last page is reclaimed. The host can observe all of this (handle
/// values, `NoMemory` from a full table), so the model pins it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    /// Generation of the handle the slot's current or next VM has.
    generation: u64,
    /// Whether a live or destroyed VM holds the slot.
    taken: bool,
}

impl Slot {
    /// The handle of this slot's VM.
    fn handle(self, index: usize) -> Handle {
        self.generation << 16 | index as u64
    }
}

impl Model {
    /// The machine after boot: engine pages first, the host owns the rest, no VM.
    pub fn new(config: Config) -> Self {
        let mut pages = BTreeMap::new();
        for i in 0..config.ram_pages {
            let pa = page_addr(config.ram_base, i);
            let (owner, contents) = if i < config.engine_pages {
                (Owner::Engine, None)
            } else {
                (Owner::Host, Some(Contents::new()))
            };
            pages.insert(
                pa,
                Page {
                    owner,
                    state: PageState::Owned,
                    contents,
                },
            );
        }
        let slots = alloc::vec![Slot { generation: 1, taken: false }; config.max_vms];
        let state = State {
            pages,
            vms: BTreeMap::new(),
            cpus: alloc::vec![Cpu::Host; config.cpus],
            dma: DmaFaults::default(),
        };
        let counters = alloc::vec![[0; isola_abi::counter::COUNT as usize]; config.cpus];
        Model {
            config,
            state,
            tables: BTreeMap::new(),
            slots,
            counters,
        }
    }

    /// Whether `self` and `other` differ at most in the event counters:
    /// for a harness that runs events which change nothing else on one
    /// engine instead of a fresh one each (the exhaustive exploration).
    pub fn same_but_counters(&self, other: &Self) -> bool {
        self.config == other.config
            && self.state == other.state
            && self.tables == other.tables
            && self.slots == other.slots
    }

    /// The pure transition function: the outcome of `event` in this state,
    /// and the state after it. `self` is unchanged.
    pub fn step(&self, event: &Event) -> (Outcome, Model) {
        let mut next = self.clone();
        let outcome = next.apply(event);
        (outcome, next)
    }

    /// The Stage-2 tables below the root each live VM has, as
    /// `(shift, ipa >> shift)`: hidden bookkeeping that decides `NoMemory`,
    /// so two models with equal states but different tables are different
    /// models (the exhaustive exploration's canonical form needs it).
    pub fn tables(&self) -> &BTreeMap<Handle, BTreeSet<(u32, u64)>> {
        &self.tables
    }

    /// Per VM-table slot: the generation of the handle its current or next
    /// VM has, and whether a live or destroyed VM holds it.
    pub fn slots(&self) -> impl Iterator<Item = (u64, bool)> + '_ {
        self.slots.iter().map(|s| (s.generation, s.taken))
    }

    /// [`Model::step`] in place.
    pub fn apply(&mut self, event: &Event) -> Outcome {
        match *event {
            Event::DmaRead { pa } => return self.dma(pa, None),
            Event::DmaWrite { pa, value } => return self.dma(pa, Some(value)),
            _ => {}
        }
        let Some(&cpu_state) = self.state.cpus.get(event.cpu()) else {
            return Outcome::Inapplicable;
        };
        let outcome = match (cpu_state, event) {
            (Cpu::Host, Event::HostHvc { cpu, regs }) => self.host_call(*cpu, regs),
            (Cpu::Host, Event::HostRead { pa, .. }) => self.host_read(*pa),
            (Cpu::Host, Event::HostWrite { pa, value, .. }) => self.host_write(*pa, *value),
            (Cpu::Guest { vm, vcpu }, _) if !event.is_host() => {
                self.guest_event(event.cpu(), vm, vcpu, event)
            }
            _ => Outcome::Inapplicable,
        };
        self.count_outcome(event, outcome);
        outcome
    }

    /// The counters an event moves, once its outcome is known (after it:
    /// an `Accounting::Counter` read does not count itself). Every host call
    /// by its status (a `VcpuRun` when it returns); every exit by reason;
    /// guest calls the engine answered; aborts injected into the host and,
    /// by `VcpuInjectAbort`, into guests. The system-register counters move
    /// in [`Model::guest_event`]'s handling of the access, which alone knows
    /// whether it was emulated or refused.
    fn count_outcome(&mut self, event: &Event, outcome: Outcome) {
        use isola_abi::counter;
        let status = |x0: u64| {
            isola_abi::Status::from_raw(x0 as i64).unwrap_or(isola_abi::Status::NotSupported)
        };
        let cpu = event.cpu();
        match (event, outcome) {
            (Event::HostHvc { regs, .. }, Outcome::HostReturn(r)) => {
                self.count(cpu, counter::host_calls(status(r[0])));
                let injected = regs[0] & 0xffff_ffff == isola_abi::HostCall::VcpuInjectAbort as u64;
                if injected && r[0] == isola_abi::Status::Success.raw() {
                    self.count(cpu, counter::GUEST_ABORTS);
                }
            }
            (Event::HostRead { .. } | Event::HostWrite { .. }, Outcome::HostFault) => {
                self.count(cpu, counter::HOST_ABORTS);
            }
            (Event::GuestHvc { .. }, Outcome::GuestReturn(_)) => {
                self.count(cpu, counter::GUEST_CALLS);
            }
            (_, Outcome::Exit([word, ..])) => {
                self.count(cpu, counter::EXITS.wrapping_add(word & 0xff));
                self.count(cpu, counter::host_calls(isola_abi::Status::Success));
            }
            _ => {}
        }
    }

    /// Adds one to `counter` of `cpu`.
    fn count(&mut self, cpu: usize, counter: u64) {
        let slot = self
            .counters
            .get_mut(cpu)
            .and_then(|c| c.get_mut(usize::try_from(counter).ok()?));
        if let Some(c) = slot {
            *c = c.wrapping_add(1);
        }
    }

    /// `counter` of `cpu` and its sum over every CPU, as
    /// `Accounting::Counter` answers; `None` for an unknown counter or CPU.
    fn counter(&self, cpu: u64, counter: u64) -> Option<(u64, u64)> {
        let i = usize::try_from(counter)
            .ok()
            .filter(|&i| i < isola_abi::counter::COUNT as usize)?;
        let mine = self.counters.get(usize::try_from(cpu).ok()?)?;
        let sum = self
            .counters
            .iter()
            .filter_map(|c| c.get(i))
            .fold(0u64, |a, &b| a.wrapping_add(b));
        Some((mine.get(i).copied().unwrap_or(0), sum))
    }
}

/// Address of page `index` counted from `base`, saturating (RAM never ends
/// near the top of the address space, so saturation is never reached).
fn page_addr(base: u64, index: u64) -> u64 {
    base.saturating_add(index.saturating_mul(isola_abi::PAGE_SIZE))
}

/// Returns `x0..=x3` for a call that fails with `status`: results are zero.
fn fail(status: isola_abi::Status) -> [u64; 4] {
    [status.raw(), 0, 0, 0]
}

/// Returns `x0..=x3` for a call that succeeds with results `r`.
fn ok(r: [u64; 3]) -> [u64; 4] {
    [isola_abi::Status::Success.raw(), r[0], r[1], r[2]]
}
