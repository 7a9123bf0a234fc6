//! The host-side record of every VM and vCPU the test makes.
//!
//! Invariant: a vCPU's record is touched only by the CPU that claimed it
//! (state `READY -> RUNNING` by compare-exchange, Acquire; released with a
//! Release store); a VM's record is written by CPU 0 only before it starts
//! the other CPUs and after they are off again, and otherwise only read (or
//! changed through its atomics).

use core::cell::UnsafeCell;

use isola_sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::plan::{MAX_DEMAND, MAX_VCPUS, Role, VM_RECORDS};

pub(super) const ABSENT: u32 = 0;

pub(super) const READY: u32 = 1;

pub(super) const RUNNING: u32 = 2;

pub(super) const DONE: u32 = 3;

/// Not for the general scheduler (the spin vCPU).
pub(super) const RESERVED: u32 = 4;

/// How a vCPU ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    Running,
    CpuOff,
    SystemOff,
    SystemReset,
    Error(u64),
    Unbacked(u64),
    RunFailed(u64),
}

/// A vCPU's host-side record, owned by whichever CPU claimed it.
pub(super) struct VcpuData {
    pub(super) role: Role,
    pub(super) x3: u64,
    pub(super) line: [u8; 96],
    pub(super) len: usize,
    pub(super) end: End,
    pub(super) info_ok: bool,
    pub(super) checks_failed: u32,
    pub(super) reports: u32,
    pub(super) reports_after_storm: u32,
    pub(super) value: u64,
    pub(super) message: u64,
    /// Runs that ended with `Exit::Irq`.
    pub(super) irq_exits: u32,
    /// The list-register words this host gave the vCPU, as it last set
    /// them (their states as the last exit reported).
    pub(super) lrs: [u64; isola_abi::lr::SLOTS],
    /// Runs that ended with `Exit::Eoi`.
    pub(super) eoi_exits: u32,
    /// Interrupts injected (`VcpuInterrupts` that succeeded).
    pub(super) injected: u32,
}

impl VcpuData {
    pub(super) const fn new() -> Self {
        Self {
            role: Role::Checksum,
            x3: 0,
            line: [0; 96],
            len: 0,
            end: End::Running,
            info_ok: false,
            checks_failed: 0,
            reports: 0,
            reports_after_storm: 0,
            value: 0,
            message: 0,
            irq_exits: 0,
            lrs: [0; isola_abi::lr::SLOTS],
            eoi_exits: 0,
            injected: 0,
        }
    }
}

pub(super) struct VcpuSlot {
    pub(super) state: AtomicU32,
    pub(super) data: UnsafeCell<VcpuData>,
}

impl VcpuSlot {
    pub(super) const fn new() -> Self {
        Self {
            state: AtomicU32::new(ABSENT),
            data: UnsafeCell::new(VcpuData::new()),
        }
    }
}

/// A VM's host-side record.
pub(super) struct Vm {
    pub(super) handle: AtomicU64,
    pub(super) vcpus: AtomicUsize,
    pub(super) image_pa: AtomicU64,
    pub(super) data_pa: AtomicU64,
    pub(super) share_pa: AtomicU64,
    pub(super) borrow_pa: AtomicU64,
    pub(super) pool_pa: AtomicU64,
    pub(super) counter: AtomicU64,
    pub(super) demand: [AtomicU64; MAX_DEMAND],
    pub(super) demand_ipa: [AtomicU64; MAX_DEMAND],
    pub(super) demand_len: AtomicUsize,
    pub(super) slots: [VcpuSlot; MAX_VCPUS],
}

impl Vm {
    pub(super) const fn new() -> Self {
        Self {
            handle: AtomicU64::new(0),
            vcpus: AtomicUsize::new(0),
            image_pa: AtomicU64::new(0),
            data_pa: AtomicU64::new(0),
            share_pa: AtomicU64::new(0),
            borrow_pa: AtomicU64::new(0),
            pool_pa: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            demand: [const { AtomicU64::new(0) }; MAX_DEMAND],
            demand_ipa: [const { AtomicU64::new(0) }; MAX_DEMAND],
            demand_len: AtomicUsize::new(0),
            slots: [const { VcpuSlot::new() }; MAX_VCPUS],
        }
    }

    pub(super) fn handle(&self) -> u64 {
        self.handle.load(Ordering::Relaxed)
    }

    pub(super) fn slot(&self, i: usize) -> Option<&VcpuSlot> {
        self.slots.get(i)
    }
}

/// Every VM record: ordinary VMs from 0, then the attacker, the power VMs
/// and the hold VM (`plan.rs`).
pub(super) struct World {
    pub(super) vms: [Vm; VM_RECORDS],
}

// SAFETY: the `UnsafeCell`s inside are reached only by the CPU that holds the
// vCPU's claim (see the module invariants); everything else is atomic.
unsafe impl Sync for World {}

pub(super) static WORLD: World = World {
    vms: [const { Vm::new() }; VM_RECORDS],
};

/// VM record `k`'s seed: its data pattern and its messages derive from it.
pub(super) fn seed_of(k: usize) -> u64 {
    isola_guest_payload::splitmix64(k as u64 ^ 0x1501_a5ee_d000_0000)
}
