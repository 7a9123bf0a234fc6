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
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

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
    /// `(x1 = handle, x2 = vcpu index, x3 = entry pc, x4 = initial x0) -> ()`.
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
    Accounting
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
}

impl Accounting {
    /// Decodes `x1`.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Totals),
            1 => Some(Self::Sharing),
            2 => Some(Self::Vm),
            3 => Some(Self::Dma),
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
    /// The guest executed `WFI` or `WFE`.
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
    /// stopped; further `VcpuRun` calls fail `Denied`.
    Error = 9,
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
    Wfx,
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
}

const MMIO_SIZE_SHIFT: u32 = 8;
const MMIO_WRITE: u64 = 1 << 16;

impl Exit {
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
            Exit::Wfx => [ExitReason::Wfx as u64, 0, 0],
            Exit::Irq => [ExitReason::Irq as u64, 0, 0],
            Exit::CpuOff => [ExitReason::CpuOff as u64, 0, 0],
            Exit::SystemOff => [ExitReason::SystemOff as u64, 0, 0],
            Exit::SystemReset => [ExitReason::SystemReset as u64, 0, 0],
            Exit::Error { esr } => [ExitReason::Error as u64, esr, 0],
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
            4 => Exit::Wfx,
            5 => Exit::Irq,
            6 => Exit::CpuOff,
            7 => Exit::SystemOff,
            8 => Exit::SystemReset,
            9 => Exit::Error { esr: a },
            _ => return None,
        })
    }
}

/// PSCI function ids (Arm DEN0022) the engine relays or interprets.
pub mod psci {
    /// `PSCI_VERSION`.
    pub const VERSION: u32 = 0x8400_0000;
    /// `CPU_SUSPEND` (SMC64).
    pub const CPU_SUSPEND: u32 = 0xC400_0001;
    /// `CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `CPU_ON` (SMC64).
    pub const CPU_ON: u32 = 0xC400_0003;
    /// `SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `SYSTEM_RESET`.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// `PSCI_FEATURES`.
    pub const FEATURES: u32 = 0x8400_000A;
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
            Exit::Wfx,
            Exit::Irq,
            Exit::CpuOff,
            Exit::SystemOff,
            Exit::SystemReset,
            Exit::Error { esr: 0x9600_0000 },
        ];
        for e in exits {
            assert_eq!(Exit::decode(e.encode()), Some(e));
        }
        assert_eq!(Exit::decode([0, 0, 0]), None);
    }
}
