//! isola's hypercall ABI, shared by the engine, the test payloads and host drivers.
//!
//! Every call is an SMCCC (Arm DEN0028) fast call, SMC64 convention, in the
//! vendor-specific hypervisor service range (owning entity 6): function id in
//! `w0`, arguments in `x1..=x6`, status in `x0` (a [`Status`] as `i64`),
//! results in `x1..=x3`. Registers a call does not name as a result are
//! returned as zero, so nothing of the engine's or another VM's state leaks
//! through them.
//!
//! Host calls are issued with `hvc #0` from the host at EL1; guest calls with
//! `hvc #0` from a guest at EL1. The two sets have disjoint function numbers,
//! and a caller using the other side's id gets [`Status::NotSupported`].
#![no_std]
#![forbid(unsafe_code)]

/// SMCCC function id bits: fast call (bit 31), SMC64 (bit 30), owning entity
/// 6 (vendor-specific hypervisor service, bits 29:24).
pub const VENDOR_HYP_FAST64: u32 = 0xC600_0000;

/// ABI version reported by [`HostCall::Version`] and [`GuestCall::Info`]:
/// major in bits 31:16, minor in bits 15:0.
pub const ABI_VERSION: u64 = 1 << 16;

/// Size of a page, the unit of ownership and of every address argument.
pub const PAGE_SIZE: u64 = 4096;

/// The most pages one [`HostCall::Donate`] moves: 2 MiB, one level-3
/// table's worth, which bounds how long the engine holds the VM's lock.
pub const DONATE_MAX_PAGES: u64 = 512;

/// Calls the host makes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostCall {
    /// `() -> (x1 = ABI_VERSION, x2 = feature bits, x3 = max vCPUs per VM)`.
    Version = VENDOR_HYP_FAST64,
    /// `(x1 = pa, x2 = pages, x3 = max vcpus) -> (x1 = VM handle)`.
    /// Donates `pages` host pages starting at `pa` as the new VM's pool: its
    /// metadata, vCPU contexts and Stage-2 tables come from there.
    VmCreate = VENDOR_HYP_FAST64 | 0x01,
    /// `(x1 = handle) -> ()`. Fails `Busy` while any vCPU is loaded. Pool pages
    /// return to the host scrubbed at once; guest pages wait for `Reclaim`.
    VmDestroy = VENDOR_HYP_FAST64 | 0x02,
    /// `(x1 = handle, x2 = pa, x3 = pages) -> ()`: more pool pages for a VM.
    VmTopup = VENDOR_HYP_FAST64 | 0x03,
    /// `(x1 = handle, x2 = vcpu index, x3 = entry pc, x4 = initial x0,
    /// x5 = flags) -> ()`. Flags are [`vcpu_flags`]; any other bit is
    /// `InvalidArgument`. With [`vcpu_flags::OFF`] the vCPU starts powered
    /// off (PSCI): `x3`/`x4` are ignored, `VcpuRun` fails `Denied` until a
    /// guest's `CPU_ON` names it.
    VcpuCreate = VENDOR_HYP_FAST64 | 0x04,
    /// `(x1 = handle, x2 = vcpu index, x3 = value for a pending MMIO read)
    /// -> (x1 = exit word, x2, x3)`; see [`Exit`].
    VcpuRun = VENDOR_HYP_FAST64 | 0x05,
    /// `(x1 = handle, x2 = pa, x3 = ipa, x4 = perms, x5 = pages) -> ()`: the
    /// `pages` host pages from `pa` become the VM's, mapped at the same
    /// offsets from `ipa`. The host loses all access. `pages == 0` means 1;
    /// more than [`DONATE_MAX_PAGES`] is `InvalidArgument`. All or nothing:
    /// every page is checked (format, ownership, mapping, tables) before any
    /// changes hands.
    Donate = VENDOR_HYP_FAST64 | 0x06,
    /// `(x1 = handle, x2 = pa, x3 = ipa, x4 = perms) -> ()`: the host page is
    /// lent to the VM at `ipa`; the host keeps access.
    Share = VENDOR_HYP_FAST64 | 0x07,
    /// `(x1 = handle, x2 = pa, x3 = ipa) -> ()`: ends a `Share`. `ipa` is
    /// where the page was lent: the engine checks that the VM maps `pa`
    /// there as a borrowed page (`NotMapped` otherwise), so the call costs
    /// one Stage-2 walk whatever the VM's size.
    Unshare = VENDOR_HYP_FAST64 | 0x08,
    /// `(x1 = pa) -> ()`: a page of a destroyed VM returns to the host, zeroed.
    Reclaim = VENDOR_HYP_FAST64 | 0x09,
    /// `(x1 = selector, x2 = handle) -> (x1, x2, x3)`; see [`Accounting`].
    Accounting = VENDOR_HYP_FAST64 | 0x0a,
    /// `(x1 = handle, x2 = vcpu index, x3..=x6 = list registers 0..=3) -> ()`:
    /// the virtual interrupts the vCPU's next runs present, as
    /// `ICH_LR<n>_EL2` words (see [`lr`]). Replaces all of them at once;
    /// all or nothing. A word the engine does not accept (see [`lr`]), two
    /// valid words with one vINTID, or a non-zero word at or beyond the
    /// engine's list-register count ([`features::list_registers`]) is
    /// `InvalidArgument`. `Busy` while the vCPU is loaded.
    VcpuInterrupts = VENDOR_HYP_FAST64 | 0x0b,
    /// `(x1 = handle, x2 = vcpu index) -> ()`: answers the vCPU's last
    /// `Mmio` or `MemFault` exit with a synchronous external abort: the
    /// guest takes it at its own vector (`ESR_EL1`/`FAR_EL1`/`ELR_EL1`/
    /// `SPSR_EL1` as the architecture sets them) when it next runs, and the
    /// access does not happen. `Denied` unless that exit is still
    /// unanswered (no `VcpuRun` since); `Busy` while loaded.
    VcpuInjectAbort = VENDOR_HYP_FAST64 | 0x0c,
}

/// Flags of [`HostCall::VcpuCreate`] (`x5`).
pub mod vcpu_flags {
    /// The vCPU is created powered off; a guest `CPU_ON` starts it.
    pub const OFF: u64 = 1 << 0;
    /// Every defined bit.
    pub const ALL: u64 = OFF;
}

/// Feature bits reported by [`HostCall::Version`] in `x2`.
pub mod features {
    /// Guest PSCI beyond `CPU_OFF`/`SYSTEM_*`: `PSCI_VERSION`,
    /// `PSCI_FEATURES`, `CPU_ON`, `AFFINITY_INFO`, `CPU_SUSPEND`,
    /// `MIGRATE_INFO_TYPE`, and [`super::vcpu_flags::OFF`].
    pub const GUEST_PSCI: u64 = 1 << 0;
    /// [`super::HostCall::VcpuInjectAbort`].
    pub const ABORT_INJECTION: u64 = 1 << 1;
    /// [`super::HostCall::VcpuInterrupts`] presents what it is given (the
    /// engine switches the virtual CPU interface): at least one list
    /// register, the count in bits `LR_COUNT_SHIFT..+4`.
    pub const VIRTUAL_INTERRUPTS: u64 = 1 << 2;
    /// Where the number of usable list registers sits in the feature word.
    pub const LR_COUNT_SHIFT: u32 = 8;

    /// The number of list registers the host may fill, from the feature
    /// word (0: no virtual interrupts).
    pub const fn list_registers(features: u64) -> usize {
        if features & VIRTUAL_INTERRUPTS == 0 {
            0
        } else {
            ((features >> LR_COUNT_SHIFT) & 0xf) as usize
        }
    }
}

/// GICv3 list-register words as [`HostCall::VcpuInterrupts`] takes them:
/// the architecture's `ICH_LR<n>_EL2` layout. The engine accepts a word
/// when it is 0 (an empty register), or when its state is not invalid and
/// - its vINTID (bits 31:0) is an SGI, PPI or SPI (0..=[`lr::MAX_INTID`]):
///   no LPI, no extended or special INTID;
/// - `HW` (bit 61) is clear: the engine gives no physical interrupt to a
///   guest (its timer is handled without it, see [`ExitStatus`]);
/// - the RES0 bits (59:56, 47:42, 40:32) are clear; `EOI` (bit 41) asks
///   for an [`Exit::Eoi`] when the guest deactivates the interrupt.
pub mod lr {
    /// List registers [`super::HostCall::VcpuInterrupts`] carries.
    pub const SLOTS: usize = 4;
    /// Largest vINTID a list register may carry (the last SPI).
    pub const MAX_INTID: u64 = 1019;
    /// State: pending.
    pub const PENDING: u64 = 1 << 62;
    /// State: active.
    pub const ACTIVE: u64 = 1 << 63;
    /// Hardware interrupt (refused by the engine).
    pub const HW: u64 = 1 << 61;
    /// Group 1 (else group 0).
    pub const GROUP1: u64 = 1 << 60;
    /// Maintenance interrupt when the guest deactivates it (with `HW` clear).
    pub const EOI: u64 = 1 << 41;
    /// Priority field shift (8 bits).
    pub const PRIORITY_SHIFT: u32 = 48;
    /// The bits a word may have set: every defined field but `HW`.
    pub const ALLOWED: u64 =
        PENDING | ACTIVE | GROUP1 | (0xff << PRIORITY_SHIFT) | EOI | 0xffff_ffff;

    /// A pending group-1 interrupt `intid` at `priority`, with `eoi` asking
    /// for an [`super::Exit::Eoi`] when the guest is done with it.
    pub const fn pending(intid: u32, priority: u8, eoi: bool) -> u64 {
        PENDING
            | GROUP1
            | (priority as u64) << PRIORITY_SHIFT
            | if eoi { EOI } else { 0 }
            | intid as u64
    }

    /// The vINTID of a word.
    pub const fn intid(word: u64) -> u64 {
        word & 0xffff_ffff
    }

    /// The state of a word.
    pub const fn state(word: u64) -> super::LrState {
        super::LrState::from_bits(word >> 62)
    }

    /// Whether the engine accepts `word` in a list register (see the
    /// module's rules). Duplicates across registers are checked by the call.
    pub const fn acceptable(word: u64) -> bool {
        word == 0 || (word & !ALLOWED == 0 && word >> 62 != 0 && intid(word) <= MAX_INTID)
    }
}

/// The state of one list register, as an exit reports it (see [`ExitStatus`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LrState {
    /// Empty, or the guest has deactivated its interrupt.
    #[default]
    Invalid = 0,
    /// Not yet acknowledged by the guest.
    Pending = 1,
    /// Acknowledged, not yet deactivated.
    Active = 2,
    /// Active, and pending again.
    PendingActive = 3,
}

impl LrState {
    /// From the two state bits.
    pub const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => Self::Invalid,
            1 => Self::Pending,
            2 => Self::Active,
            _ => Self::PendingActive,
        }
    }
}

/// What every exit word (`x1` of a successful `VcpuRun`) reports beside the
/// reason: the state of each list register after the run (bits
/// `32 + 2n..=33 + 2n` for register `n`), and whether the guest's virtual
/// timer interrupt is asserted (bit 24: `CNTV_CTL_EL0` has `ENABLE` and
/// `ISTATUS` set and `IMASK` clear), the level the host's distributor
/// gives PPI [`vgic::VTIMER_INTID`] of this vCPU. While the engine has seen
/// it asserted, it keeps the physical timer interrupt from reaching the
/// guest's CPU until the guest deactivates the virtual one or re-arms its
/// timer, so the host's injection is the guest's only timer interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExitStatus {
    /// Bit 24.
    pub vtimer: bool,
    /// Bits 32..=39.
    pub lrs: [LrState; lr::SLOTS],
}

/// Exit-word bit: the guest's virtual timer interrupt is asserted.
pub const EXIT_VTIMER: u64 = 1 << 24;
/// Exit-word shift of list register 0's state.
pub const EXIT_LR_SHIFT: u32 = 32;

impl ExitStatus {
    /// The bits of the exit word.
    pub fn to_word(self) -> u64 {
        let mut w = if self.vtimer { EXIT_VTIMER } else { 0 };
        for (n, s) in (0u32..).zip(self.lrs) {
            w |= (s as u64).wrapping_shl(EXIT_LR_SHIFT.wrapping_add(n.wrapping_mul(2)));
        }
        w
    }

    /// From an exit word.
    pub fn from_word(word: u64) -> Self {
        let mut lrs = [LrState::Invalid; lr::SLOTS];
        for (n, s) in (0u32..).zip(lrs.iter_mut()) {
            *s = LrState::from_bits(
                word.wrapping_shr(EXIT_LR_SHIFT.wrapping_add(n.wrapping_mul(2))),
            );
        }
        Self {
            vtimer: word & EXIT_VTIMER != 0,
            lrs,
        }
    }
}

/// Interrupt numbers of the virtual GIC the engine relies on.
pub mod vgic {
    /// The virtual timer's PPI (`CNTV_*`): the interrupt the host injects
    /// when [`super::ExitStatus::vtimer`] is set.
    pub const VTIMER_INTID: u32 = 27;
    /// The GIC maintenance interrupt's PPI (the engine's, never a guest's).
    pub const MAINTENANCE_INTID: u32 = 25;
}

/// Calls a guest makes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestCall {
    /// `() -> (x1 = ABI_VERSION, x2 = this vCPU's index, x3 = vCPU count)`.
    Info = VENDOR_HYP_FAST64 | 0x100,
    /// `(x1 = ipa) -> ()`: declassify one of the guest's own pages to the host.
    Share = VENDOR_HYP_FAST64 | 0x101,
    /// `(x1 = ipa) -> ()`: end a guest `Share`; the host loses access.
    Unshare = VENDOR_HYP_FAST64 | 0x102,
    /// `(x1 = ipa) -> ()`: give an owned page back to the host, zeroed, and
    /// unmap it from the guest.
    Relinquish = VENDOR_HYP_FAST64 | 0x103,
    /// `(x1, x2) -> (x1 = reply)`: exit to the host with `x1, x2` as the
    /// message; the host's reply arrives in `x1` on resume.
    HostCall = VENDOR_HYP_FAST64 | 0x104,
}

macro_rules! from_id {
    ($ty:ident { $($v:ident),* $(,)? }) => {
        impl $ty {
            /// The call for a function id, or `None` for any other id.
            pub const fn from_id(id: u64) -> Option<Self> {
                $(if id == Self::$v as u64 { return Some(Self::$v); })*
                None
            }
        }
    };
}
from_id!(HostCall {
    Version,
    VmCreate,
    VmDestroy,
    VmTopup,
    VcpuCreate,
    VcpuRun,
    Donate,
    Share,
    Unshare,
    Reclaim,
    Accounting,
    VcpuInterrupts,
    VcpuInjectAbort
});
from_id!(GuestCall {
    Info,
    Share,
    Unshare,
    Relinquish,
    HostCall
});

/// The status in `x0`. Negative values are errors; the values are part of the ABI.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The call did what it says.
    Success = 0,
    /// Unknown function id (SMCCC's `NOT_SUPPORTED`).
    NotSupported = -1,
    /// An argument is malformed: unaligned, out of range, unknown flag bits.
    InvalidArgument = -2,
    /// The caller does not own the page in the state the call needs.
    NotOwner = -3,
    /// The IPA is already mapped in the target VM.
    AlreadyMapped = -4,
    /// The object is in use (a loaded vCPU, a VM with live vCPUs).
    Busy = -5,
    /// The VM's donated pool, or the engine's VM table, is exhausted.
    NoMemory = -6,
    /// The handle or vCPU index names nothing (or something since destroyed).
    NotFound = -7,
    /// The IPA is not mapped where the call needs a mapping.
    NotMapped = -8,
    /// The call is not allowed in the object's current state (e.g. running a
    /// vCPU of a VM that was destroyed, reclaiming a page of a live VM).
    Denied = -9,
}

impl Status {
    /// Decodes `x0`; `None` for a value the ABI does not define.
    pub const fn from_raw(raw: i64) -> Option<Self> {
        Some(match raw {
            0 => Self::Success,
            -1 => Self::NotSupported,
            -2 => Self::InvalidArgument,
            -3 => Self::NotOwner,
            -4 => Self::AlreadyMapped,
            -5 => Self::Busy,
            -6 => Self::NoMemory,
            -7 => Self::NotFound,
            -8 => Self::NotMapped,
            -9 => Self::Denied,
            _ => return None,
        })
    }

    /// The value as it travels in `x0`.
    pub const fn raw(self) -> u64 {
        self as i64 as u64
    }
}

/// Stage-2 permissions requested by `Donate` and `Share` (`x4`). Any other
/// bit set is `InvalidArgument`; so is a mapping with no permission at all.
pub mod perms {
    /// Readable.
    pub const R: u64 = 1 << 0;
    /// Writable.
    pub const W: u64 = 1 << 1;
    /// Executable.
    pub const X: u64 = 1 << 2;
    /// Every defined bit.
    pub const ALL: u64 = R | W | X;
}

/// Selectors for [`HostCall::Accounting`] (`x1`). `Totals` and `Sharing` are
/// read without locks: every page is counted exactly once, by the owner its
/// record names at the moment the engine reads its part of memory, so a
/// transition running at the same time may be seen part done, never a page
/// twice or missing.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accounting {
    /// `-> (x1 = host pages, x2 = engine pages, x3 = guest pages)`: every page
    /// of RAM is counted exactly once, by owner.
    Totals = 0,
    /// `-> (x1 = pages the host has shared out, x2 = guest pages shared with
    /// the host, x3 = pages of destroyed VMs awaiting reclaim)`.
    Sharing = 1,
    /// `(x2 = handle) -> (x1 = pages the VM owns, x2 = pages it borrows,
    /// x3 = pool pages)`.
    Vm = 2,
    /// `-> (x1 = DMA accesses of the host's devices the IOMMU refused so
    /// far, x2 = the StreamID of the last, x3 = the address it aimed at)`:
    /// the engine drains the IOMMU's fault records first. All zero on a
    /// machine whose host gets no DMA-capable device.
    Dma = 3,
    /// `(x2 = counter | cpu << 32) -> (x1 = CPU cpu's count, x2 = the sum
    /// over every CPU, x3 = 0)`: one of the engine's per-CPU event counters
    /// ([`counter`]). `InvalidArgument` for a counter at or above
    /// [`counter::COUNT`] or a CPU the engine does not have. Read without
    /// locks: a count another CPU is updating may be one behind.
    Counter = 4,
}

/// The engine's per-CPU event counters, read with [`Accounting::Counter`].
/// Each counts on the physical CPU where the event happened; nothing here
/// says anything about a guest's state beyond what the host already saw
/// (the exits it was told of, the calls it made, the aborts it took) or the
/// number of a guest's traps the engine answered itself.
pub mod counter {
    /// Host calls by the status they returned: `HOST_CALLS + n` counts
    /// status `-n` (`Success` 0 .. `Denied` 9). A `VcpuRun` counts when it
    /// returns.
    pub const HOST_CALLS: u64 = 0;
    /// `VcpuRun`s that returned an exit of reason `r`
    /// ([`super::ExitReason`], 1..=12): `EXITS + r`.
    pub const EXITS: u64 = 16;
    /// Guest calls (`hvc`, trapped `smc`) the engine answered itself: the
    /// guest went on without the host running.
    pub const GUEST_CALLS: u64 = 32;
    /// Trapped guest system-register accesses the engine emulated (read as
    /// zero, ID registers, SGIs to nobody): the guest went on.
    pub const GUEST_SYSREGS: u64 = 33;
    /// Undefined-instruction exceptions the engine injected into guests:
    /// their accesses to system registers it neither switches nor emulates.
    pub const GUEST_UNDEFINED: u64 = 34;
    /// Synchronous external aborts injected into the host (its accesses to
    /// memory it may not touch).
    pub const HOST_ABORTS: u64 = 35;
    /// External aborts injected into guests (`VcpuInjectAbort`).
    pub const GUEST_ABORTS: u64 = 36;
    /// Counters there are (ids below this; unused ids read 0).
    pub const COUNT: u64 = 40;

    /// The counter of host calls that returned `status`.
    pub const fn host_calls(status: super::Status) -> u64 {
        HOST_CALLS.wrapping_add((status as i64).wrapping_neg() as u64)
    }

    /// The counter of runs that ended with `reason`.
    pub const fn exits(reason: super::ExitReason) -> u64 {
        EXITS.wrapping_add(reason as u64)
    }
}

impl Accounting {
    /// Decodes `x1`.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Totals),
            1 => Some(Self::Sharing),
            2 => Some(Self::Vm),
            3 => Some(Self::Dma),
            4 => Some(Self::Counter),
            _ => None,
        }
    }
}

/// Why `VcpuRun` returned, in the low byte of the exit word (`x1`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest made `GuestCall::HostCall`: `x2, x3` = its two arguments.
    HostCall = 1,
    /// MMIO access: `x2` = IPA; exit word bits 8..=15 = access size in bytes,
    /// bit 16 = write; `x3` = the value written (zero for a read). For a read
    /// the host passes the value in `x3` of the next `VcpuRun`.
    Mmio = 2,
    /// Access to unmapped guest RAM: `x2` = the faulting page's IPA.
    MemFault = 3,
    /// The guest executed `WFI` or `WFE` (or `CPU_SUSPEND`, which the engine
    /// treats as `WFI`): exit word bit 17 = `WFE`; bit 18 = the guest's
    /// virtual timer is armed (`ENABLE` set, `IMASK` clear) and `x2` = its
    /// deadline (`CNTV_CVAL_EL0`, in the guest's virtual count, which is the
    /// physical count: guests run with `CNTVOFF_EL2` = 0).
    Wfx = 4,
    /// A physical interrupt arrived while the guest ran.
    Irq = 5,
    /// The guest called PSCI `CPU_OFF`; the vCPU is off.
    CpuOff = 6,
    /// The guest called PSCI `SYSTEM_OFF`.
    SystemOff = 7,
    /// The guest called PSCI `SYSTEM_RESET`.
    SystemReset = 8,
    /// The engine would not handle the exception: `x2` = ESR_EL2. The vCPU is
    /// stopped; further `VcpuRun` calls fail `Denied`. (A trapped access to
    /// a system register the engine neither switches nor emulates is not
    /// one: the guest takes an Undefined Instruction exception instead.)
    Error = 9,
    /// The guest's PSCI `CPU_ON` turned vCPU `x2` on: it is runnable (its
    /// `VcpuRun` starts it at the guest's entry point). The caller got
    /// `SUCCESS` and resumes after the call.
    CpuOn = 10,
    /// The guest wrote `ICC_SGI1R_EL1`: `x2` = bitmap of the target vCPU
    /// indices (bit n = vCPU n; `IRM` = every vCPU but the writer), `x3` =
    /// the SGI's INTID (0..=15). The write is complete.
    Sgi = 11,
    /// The guest deactivated an interrupt whose list register had `EOI`
    /// set; the exit's list-register states say which (now `Invalid`).
    Eoi = 12,
}

/// A decoded `VcpuRun` result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// See [`ExitReason::HostCall`].
    HostCall { args: [u64; 2] },
    /// See [`ExitReason::Mmio`].
    Mmio {
        ipa: u64,
        size: u8,
        write: bool,
        value: u64,
    },
    /// See [`ExitReason::MemFault`].
    MemFault { ipa: u64 },
    /// See [`ExitReason::Wfx`].
    Wfx {
        /// `WFE` rather than `WFI`: a hint to yield, not to sleep.
        wfe: bool,
        /// The guest's virtual timer deadline, if armed.
        deadline: Option<u64>,
    },
    /// See [`ExitReason::Irq`].
    Irq,
    /// See [`ExitReason::CpuOff`].
    CpuOff,
    /// See [`ExitReason::SystemOff`].
    SystemOff,
    /// See [`ExitReason::SystemReset`].
    SystemReset,
    /// See [`ExitReason::Error`].
    Error { esr: u64 },
    /// See [`ExitReason::CpuOn`].
    CpuOn { vcpu: u16 },
    /// See [`ExitReason::Sgi`].
    Sgi { targets: u16, intid: u8 },
    /// See [`ExitReason::Eoi`].
    Eoi,
}

const MMIO_SIZE_SHIFT: u32 = 8;
const MMIO_WRITE: u64 = 1 << 16;
const WFX_WFE: u64 = 1 << 17;
const WFX_TIMER: u64 = 1 << 18;

impl Exit {
    /// A `WFI` with the guest's timer not armed.
    pub const WFI: Exit = Exit::Wfx {
        wfe: false,
        deadline: None,
    };

    /// The `(x1, x2, x3)` registers that carry this exit to the host.
    pub const fn encode(self) -> [u64; 3] {
        match self {
            Exit::HostCall { args } => [ExitReason::HostCall as u64, args[0], args[1]],
            Exit::Mmio {
                ipa,
                size,
                write,
                value,
            } => {
                let word = ExitReason::Mmio as u64
                    | (size as u64) << MMIO_SIZE_SHIFT
                    | if write { MMIO_WRITE } else { 0 };
                [word, ipa, value]
            }
            Exit::MemFault { ipa } => [ExitReason::MemFault as u64, ipa, 0],
            Exit::Wfx { wfe, deadline } => {
                let w = ExitReason::Wfx as u64 | if wfe { WFX_WFE } else { 0 };
                match deadline {
                    Some(d) => [w | WFX_TIMER, d, 0],
                    None => [w, 0, 0],
                }
            }
            Exit::Irq => [ExitReason::Irq as u64, 0, 0],
            Exit::CpuOff => [ExitReason::CpuOff as u64, 0, 0],
            Exit::SystemOff => [ExitReason::SystemOff as u64, 0, 0],
            Exit::SystemReset => [ExitReason::SystemReset as u64, 0, 0],
            Exit::Error { esr } => [ExitReason::Error as u64, esr, 0],
            Exit::CpuOn { vcpu } => [ExitReason::CpuOn as u64, vcpu as u64, 0],
            Exit::Sgi { targets, intid } => [ExitReason::Sgi as u64, targets as u64, intid as u64],
            Exit::Eoi => [ExitReason::Eoi as u64, 0, 0],
        }
    }

    /// Decodes `(x1, x2, x3)` of a successful `VcpuRun`; `None` if malformed.
    pub const fn decode(regs: [u64; 3]) -> Option<Self> {
        let [word, a, b] = regs;
        Some(match word & 0xff {
            1 => Exit::HostCall { args: [a, b] },
            2 => Exit::Mmio {
                ipa: a,
                size: ((word >> MMIO_SIZE_SHIFT) & 0xff) as u8,
                write: word & MMIO_WRITE != 0,
                value: b,
            },
            3 => Exit::MemFault { ipa: a },
            4 => Exit::Wfx {
                wfe: word & WFX_WFE != 0,
                deadline: if word & WFX_TIMER != 0 { Some(a) } else { None },
            },
            5 => Exit::Irq,
            6 => Exit::CpuOff,
            7 => Exit::SystemOff,
            8 => Exit::SystemReset,
            9 => Exit::Error { esr: a },
            10 => Exit::CpuOn { vcpu: a as u16 },
            11 => Exit::Sgi {
                targets: a as u16,
                intid: b as u8,
            },
            12 => Exit::Eoi,
            _ => return None,
        })
    }
}

/// PSCI function ids (Arm DEN0022) the engine relays or interprets, the
/// values it returns, and how a guest names its vCPUs.
///
/// A guest's vCPU `n` has `MPIDR_EL1` = `1 << 31 | n` (Aff0 = n, higher
/// affinity levels 0): the value PSCI calls take as a target and
/// `ICC_SGI1R_EL1` names in its target list.
pub mod psci {
    /// `PSCI_VERSION`.
    pub const VERSION: u32 = 0x8400_0000;
    /// `CPU_SUSPEND` (SMC32).
    pub const CPU_SUSPEND32: u32 = 0x8400_0001;
    /// `CPU_SUSPEND` (SMC64).
    pub const CPU_SUSPEND: u32 = 0xC400_0001;
    /// `CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `CPU_ON` (SMC32).
    pub const CPU_ON32: u32 = 0x8400_0003;
    /// `CPU_ON` (SMC64).
    pub const CPU_ON: u32 = 0xC400_0003;
    /// `AFFINITY_INFO` (SMC32).
    pub const AFFINITY_INFO32: u32 = 0x8400_0004;
    /// `AFFINITY_INFO` (SMC64).
    pub const AFFINITY_INFO: u32 = 0xC400_0004;
    /// `MIGRATE_INFO_TYPE`.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// `SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `SYSTEM_RESET`.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// `PSCI_FEATURES`.
    pub const FEATURES: u32 = 0x8400_000A;

    /// What `PSCI_VERSION` returns to a guest: 1.0.
    pub const GUEST_VERSION: u64 = 1 << 16;
    /// What `MIGRATE_INFO_TYPE` returns: no Trusted OS needs migrating.
    pub const MIGRATE_NONE: u64 = 2;

    /// PSCI return values (in `x0`, as 64-bit two's complement).
    pub mod ret {
        /// `SUCCESS`.
        pub const SUCCESS: i64 = 0;
        /// `NOT_SUPPORTED`.
        pub const NOT_SUPPORTED: i64 = -1;
        /// `INVALID_PARAMETERS`.
        pub const INVALID_PARAMETERS: i64 = -2;
        /// `ALREADY_ON`.
        pub const ALREADY_ON: i64 = -4;
        /// `ON_PENDING`.
        pub const ON_PENDING: i64 = -5;
        /// `INVALID_ADDRESS`.
        pub const INVALID_ADDRESS: i64 = -9;
    }

    /// `AFFINITY_INFO` results.
    pub mod affinity {
        /// The vCPU is on.
        pub const ON: u64 = 0;
        /// The vCPU is off.
        pub const OFF: u64 = 1;
        /// `CPU_ON` named it and it has not run yet.
        pub const ON_PENDING: u64 = 2;
    }

    /// The MPIDR of a guest's vCPU `index`.
    pub const fn mpidr(index: u16) -> u64 {
        1 << 31 | (index as u64 & 0xff)
    }

    /// The vCPU index a PSCI target names: `Some(Aff0)` when every other
    /// affinity field and bit is zero (bit 31, RES1 in `MPIDR_EL1`, is
    /// accepted either way), else `None`.
    pub const fn target_index(mpidr: u64) -> Option<u16> {
        if mpidr & !(0xff | 1 << 31) != 0 {
            None
        } else {
            Some((mpidr & 0xff) as u16)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_smccc_fast64_vendor_hyp() {
        for id in [
            HostCall::Version as u32,
            HostCall::Accounting as u32,
            GuestCall::HostCall as u32,
        ] {
            assert_eq!(id >> 24, 0xC6, "fast call, SMC64, owning entity 6");
        }
        assert_eq!(
            HostCall::from_id(HostCall::Donate as u64),
            Some(HostCall::Donate)
        );
        assert_eq!(HostCall::from_id(GuestCall::Share as u64), None);
        assert_eq!(GuestCall::from_id(HostCall::Share as u64), None);
        assert_eq!(HostCall::from_id(u64::MAX), None);
    }

    #[test]
    fn status_round_trips_through_x0() {
        for raw in -20..20i64 {
            if let Some(s) = Status::from_raw(raw) {
                assert_eq!(s.raw() as i64, raw);
            }
        }
        assert_eq!(Status::NotSupported.raw(), u64::MAX);
    }

    #[test]
    fn exits_round_trip() {
        let exits = [
            Exit::HostCall {
                args: [1, u64::MAX],
            },
            Exit::Mmio {
                ipa: 0x900_0000,
                size: 4,
                write: true,
                value: 0xdead_beef,
            },
            Exit::Mmio {
                ipa: 0x900_0008,
                size: 8,
                write: false,
                value: 0,
            },
            Exit::MemFault { ipa: 0x8000_0000 },
            Exit::Wfx {
                wfe: false,
                deadline: None,
            },
            Exit::Wfx {
                wfe: true,
                deadline: Some(0),
            },
            Exit::Wfx {
                wfe: false,
                deadline: Some(u64::MAX),
            },
            Exit::Irq,
            Exit::CpuOff,
            Exit::SystemOff,
            Exit::SystemReset,
            Exit::Error { esr: 0x9600_0000 },
            Exit::CpuOn { vcpu: 7 },
            Exit::Sgi {
                targets: 0b1010,
                intid: 15,
            },
            Exit::Eoi,
        ];
        for e in exits {
            assert_eq!(Exit::decode(e.encode()), Some(e));
            // The status bits never disturb the exit itself.
            let [w, a, b] = e.encode();
            let status = ExitStatus {
                vtimer: true,
                lrs: [
                    LrState::PendingActive,
                    LrState::Invalid,
                    LrState::Active,
                    LrState::Pending,
                ],
            };
            assert_eq!(Exit::decode([w | status.to_word(), a, b]), Some(e));
            assert_eq!(ExitStatus::from_word(w | status.to_word()), status);
            assert_eq!(ExitStatus::from_word(w), ExitStatus::default());
        }
        assert_eq!(Exit::decode([0, 0, 0]), None);
        assert_eq!(Exit::decode([13, 0, 0]), None);
    }

    #[test]
    fn list_register_words() {
        let w = lr::pending(33, 0xa0, true);
        assert!(lr::acceptable(w));
        assert_eq!((lr::intid(w), lr::state(w)), (33, LrState::Pending));
        assert!(lr::acceptable(0));
        assert!(lr::acceptable(lr::ACTIVE | 1019));
        // Refused: LPIs and special INTIDs, HW, RES0 bits, invalid with content.
        assert!(!lr::acceptable(lr::PENDING | 8192));
        assert!(!lr::acceptable(lr::PENDING | 1020));
        assert!(!lr::acceptable(lr::PENDING | lr::HW | 27 | 27 << 32));
        assert!(!lr::acceptable(w | 1 << 56));
        assert!(!lr::acceptable(w | 1 << 32));
        assert!(!lr::acceptable(lr::GROUP1 | 33));
    }

    #[test]
    fn features_carry_the_list_register_count() {
        assert_eq!(features::list_registers(0), 0);
        assert_eq!(features::list_registers(4 << features::LR_COUNT_SHIFT), 0);
        assert_eq!(
            features::list_registers(features::VIRTUAL_INTERRUPTS | 4 << features::LR_COUNT_SHIFT),
            4
        );
    }

    #[test]
    fn psci_targets_name_aff0() {
        for i in 0..8u16 {
            assert_eq!(psci::target_index(psci::mpidr(i)), Some(i));
            assert_eq!(psci::target_index(u64::from(i)), Some(i));
        }
        assert_eq!(psci::target_index(1 << 8), None);
        assert_eq!(psci::target_index(1 << 32), None);
        assert_eq!(psci::target_index(u64::MAX), None);
    }
}
