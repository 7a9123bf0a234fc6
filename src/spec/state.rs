//! The abstract state: what an observer of the whole machine can know.
//!
//! It holds no table layout, no lock and no address of a metadata structure:
//! only who owns each page, in which state, what the page holds where someone
//! other than the engine can see it, every VM's IPA map and pool, and every
//! vCPU's registers. An implementation is correct when its state, seen
//! through the same lens, equals the model's after every step.
//!
//! Invariants (checked by [`crate::spec::props::invariants`]):
//! - every page of RAM has exactly one owner, and one entry in `pages`;
//! - a page in state [`PageState::Shared`] is mapped by exactly its borrower;
//! - a page owned by a live VM is mapped exactly once in that VM;
//! - engine and pool pages are mapped nowhere and their contents are opaque;
//! - pages owned by a VM that is not live await `Reclaim` and are mapped
//!   nowhere;
//! - the host's DMA view (what its devices reach through the IOMMU) is
//!   exactly what its CPUs may reach ([`State::host_may_access`]).

use super::alloc::collections::BTreeMap;

use isola_abi::PAGE_SIZE;

/// A VM handle as the host sees it in `x1`.
pub type Handle = u64;

/// Who owns a page. Exactly one, always.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The engine: its own image and data, and every VM's pool.
    Engine,
    /// The untrusted hypervisor at EL1.
    Host,
    /// A VM, live or destroyed and awaiting reclaim.
    Vm(Handle),
}

/// What the owner has done with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageState {
    /// Only the owner may touch it.
    Owned,
    /// The owner lent it to `with`, who borrows it; both may touch it.
    Shared {
        /// The borrower: a VM for a host share, the host for a guest share.
        with: Owner,
    },
    /// Engine-owned page in the pool donated for VM `vm`.
    Pool {
        /// The VM whose Stage-2 tables and vCPU contexts live here.
        vm: Handle,
    },
}

/// One page's contents as 64-bit little-endian words, only the non-zero
/// ones: an absent word reads as zero, so `clear()` is a scrub.
pub type Contents = BTreeMap<u16, u64>;

/// Number of 64-bit words in a page.
pub const WORDS_PER_PAGE: u64 = PAGE_SIZE / 8;

/// One physical page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The one owner.
    pub owner: Owner,
    /// The owner's use of it.
    pub state: PageState,
    /// What the host or a guest reads there; `None` where only the engine
    /// can look (its own pages, pools), which the model does not describe.
    pub contents: Option<Contents>,
}

/// A Stage-2 mapping of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// Physical address of the page.
    pub pa: u64,
    /// Subset of [`isola_abi::perms::ALL`], never empty.
    pub perms: u64,
}

/// Why a vCPU is not running guest code right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// May be run.
    Ready,
    /// Loaded on physical CPU `cpu`, running the guest.
    Loaded {
        /// Index of the physical CPU.
        cpu: usize,
    },
    /// Powered off: created off, or the guest called PSCI `CPU_OFF`.
    Off,
    /// A guest's `CPU_ON` started it; it has not run since. Runs like `Ready`.
    OnPending,
    /// The engine refused an exception; further runs fail `Denied`.
    Stopped,
}

/// What the next `VcpuRun` delivers into the guest before it resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing: the guest resumes where it stopped.
    None,
    /// A guest MMIO read of `size` bytes into register `reg` awaits the host's value.
    MmioRead {
        /// Destination general-purpose register.
        reg: u8,
        /// Access size in bytes (1, 2, 4 or 8).
        size: u8,
        /// The faulting address (for an abort the host may inject instead).
        far: u64,
    },
    /// A guest `HostCall` awaits the host's reply.
    HostReply,
    /// A guest MMIO store the host has seen (the PC is past it); the host
    /// may still answer it with an abort.
    MmioWrite {
        /// The faulting address.
        far: u64,
    },
    /// An access to unmapped guest RAM: it runs again unless the host
    /// answers it with an abort.
    MemFault {
        /// The faulting address.
        far: u64,
        /// A store.
        write: bool,
        /// An instruction fetch (never, for the model's guests).
        fetch: bool,
    },
}

/// The EL1 exception registers an injected abort writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct El1 {
    /// `ELR_EL1`.
    pub elr: u64,
    /// `SPSR_EL1`.
    pub spsr: u64,
    /// `ESR_EL1`.
    pub esr: u64,
    /// `FAR_EL1`.
    pub far: u64,
}

/// Number of general-purpose registers a vCPU context holds (x0..=x30).
pub const GPRS: usize = 31;

/// One vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vcpu {
    /// x0..=x30 as the guest last left them (or as the engine set them).
    pub regs: [u64; GPRS],
    /// The address the guest resumes at.
    pub pc: u64,
    /// Whether it may be run.
    pub run: RunState,
    /// What the next run delivers.
    pub pending: Pending,
    /// PSTATE.
    pub pstate: u64,
    /// The EL1 exception registers.
    pub el1: El1,
    /// The list-register words (the host's, as the guest's CPU interface
    /// changed their states).
    pub lrs: [u64; isola_abi::lr::SLOTS],
    /// The guest's virtual timer: `(CNTV_CTL_EL0, CNTV_CVAL_EL0)`.
    pub timer: (u64, u64),
}

impl Vcpu {
    /// A vCPU as created or reset: `x0` and `pc` set, everything else at
    /// its reset value, except the list registers given.
    pub fn reset(pc: u64, x0: u64, lrs: [u64; isola_abi::lr::SLOTS]) -> Self {
        let mut regs = [0; GPRS];
        regs[0] = x0;
        Vcpu {
            regs,
            pc,
            run: RunState::Ready,
            pending: Pending::None,
            pstate: INITIAL_PSTATE,
            el1: El1::default(),
            lrs,
            timer: (0, 0),
        }
    }
}

/// PSTATE of a vCPU at reset: EL1h with D, A, I, F masked.
pub const INITIAL_PSTATE: u64 = 0x3c5;

/// One live VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    /// `max vcpus` given at create.
    pub max_vcpus: u64,
    /// Created vCPUs by index.
    pub vcpus: BTreeMap<u64, Vcpu>,
    /// IPA (page aligned) → mapping.
    pub map: BTreeMap<u64, Mapping>,
    /// Pool pages not yet used for Stage-2 tables or vCPU contexts.
    pub pool_free: u64,
    /// The guest called PSCI `SYSTEM_OFF` or `SYSTEM_RESET`: no vCPU runs again.
    pub off: bool,
}

/// What a physical CPU is doing between two events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// Running the host, which may issue calls and touch memory.
    Host,
    /// Running vCPU `vcpu` of VM `vm`, whose host call `VcpuRun` is pending.
    Guest {
        /// The VM.
        vm: Handle,
        /// The vCPU index.
        vcpu: u64,
    },
}

/// What the engine reports of the DMA its IOMMU refused (`Accounting(Dma)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaFaults {
    /// Refused accesses so far.
    pub count: u64,
    /// The address the last one aimed at (0 before any).
    pub last: u64,
}

/// The whole abstract machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Every page of RAM, by physical address.
    pub pages: BTreeMap<u64, Page>,
    /// Live VMs by handle.
    pub vms: BTreeMap<Handle, Vm>,
    /// Every physical CPU.
    pub cpus: super::alloc::vec::Vec<Cpu>,
    /// The host's DMA the IOMMU refused.
    pub dma: DmaFaults,
}

impl State {
    /// The page at `pa` (page aligned), if it is RAM.
    pub fn page(&self, pa: u64) -> Option<&Page> {
        self.pages.get(&pa)
    }

    /// Whether the host may touch the page at `pa`: it owns it, or a guest
    /// shared it with the host. This is also the host's DMA view: a device
    /// of the host reaches exactly these pages.
    pub fn host_may_access(&self, pa: u64) -> bool {
        self.page(pa).is_some_and(|p| {
            matches!(
                (p.owner, p.state),
                (Owner::Host, PageState::Owned | PageState::Shared { .. })
                    | (Owner::Vm(_), PageState::Shared { with: Owner::Host })
            ) && self.owner_is_live(p.owner)
        })
    }

    /// Whether `owner` is the engine, the host or a live VM (not a destroyed
    /// one whose pages await reclaim).
    pub fn owner_is_live(&self, owner: Owner) -> bool {
        match owner {
            Owner::Engine | Owner::Host => true,
            Owner::Vm(h) => self.vms.contains_key(&h),
        }
    }

    /// Pages awaiting `Reclaim`: owned by a VM that is no longer live.
    pub fn awaiting_reclaim(&self) -> u64 {
        self.count(|p| matches!(p.owner, Owner::Vm(h) if !self.vms.contains_key(&h)))
    }

    /// Number of pages satisfying `f`.
    pub fn count(&self, f: impl Fn(&Page) -> bool) -> u64 {
        self.pages
            .values()
            .filter(|p| f(p))
            .fold(0u64, |n, _| n.saturating_add(1))
    }
}
