//! The VM table: fixed-size slots in the engine's own memory, addressed by
//! handles that carry a generation.
//!
//! Invariants:
//! - A slot's generation changes when its VM is destroyed, so a handle from
//!   before the destroy never matches again (`NotFound`), even after the slot
//!   holds a new VM.
//! - A slot is `Dead` from destroy until every page the dead VM owned has
//!   been reclaimed (`owned == 0`); only then is it `Free` for reuse, because
//!   page records name the owner by slot.
//! - Everything proportional to the guest (Stage-2 tables, vCPU contexts)
//!   lives in pages of the VM's donated pool; the slot itself is small and
//!   fixed (see `docs/ownership.md` for the measured size).
//! - All fields of [`VmInner`] are guarded by the slot's mutex; lock order:
//!   slot → shard → host Stage-2 table pool.
//! - Two atomics beside the mutex let calls that only *look for* a slot or
//!   *count* skip the locks (issue 17: no host call waits on other VMs):
//!   `claimed` is false exactly when the slot is `Free` and no `VmCreate`
//!   has claimed it (a creation claims it by compare-and-swap before taking
//!   its lock); `dead_owned` is `owned` while the slot is `Dead`, else 0.
//!   Both are written only by the holder of the slot's lock
//!   ([`VmSlot::publish`]), except the claim itself.

use crate::arch::Vmid;
use crate::pool::PagePool;
use crate::stage2::{PageHint, Stage2};
use crate::vcpu::{MAX_VCPUS, VcpuState};
use isola_sync::Mutex;
use isola_sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A VM handle as the host sees it: `generation << 16 | slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmHandle(pub u64);

impl VmHandle {
    /// The handle of `slot` at `generation`.
    pub const fn new(slot: u16, generation: u32) -> Self {
        Self(((generation as u64) << 16) | slot as u64)
    }

    /// The slot index the handle names.
    pub const fn slot(self) -> usize {
        (self.0 & 0xffff) as usize
    }

    /// The generation the handle names (`None` if bits above 47 are set:
    /// such a handle was never issued).
    pub const fn generation(self) -> Option<u32> {
        if self.0 >> 48 != 0 {
            None
        } else {
            Some((self.0 >> 16) as u32)
        }
    }
}

/// Lifecycle of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SlotState {
    /// Unused.
    #[default]
    Free,
    /// Holds a live VM.
    Live,
    /// Its VM was destroyed; `owned` pages still await `Reclaim`.
    Dead,
}

/// One vCPU's entry in its VM's slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSlot {
    /// Where it is.
    pub state: VcpuState,
    /// Its context page (meaningful unless `Absent`).
    pub ctx: u64,
}

/// The state behind a slot's lock.
#[derive(Debug)]
pub struct VmInner {
    /// Lifecycle.
    pub state: SlotState,
    /// Current generation (starts at 1; 0 is never a live generation).
    pub generation: u32,
    /// The VM's Stage-2 (its root is in the pool).
    pub s2: Option<Stage2>,
    /// Where the last one-page mapping found its level-3 table; reset
    /// whenever `s2` is built (see [`PageHint`]: its root is checked too).
    pub page_hint: PageHint,
    /// Pages donated for metadata, contexts and tables.
    pub pool: PagePool,
    /// vCPU count the VM was created with.
    pub max_vcpus: u16,
    /// The vCPUs.
    pub vcpus: [VcpuSlot; MAX_VCPUS],
    /// Pages the VM owns (any state), live or dead.
    pub owned: u64,
    /// Host pages shared with the VM.
    pub borrowed: u64,
    /// Pages the VM owns and has shared with the host (guest `Share`):
    /// with `borrowed`, tells `VmDestroy` whether any mapping needs its
    /// record changed, so a VM with neither skips that walk.
    pub guest_shared: u64,
    /// The VM called PSCI `SYSTEM_OFF` or `SYSTEM_RESET`: no vCPU runs again.
    pub off: bool,
}

impl VmInner {
    const EMPTY: VmInner = VmInner {
        state: SlotState::Free,
        generation: 1,
        s2: None,
        page_hint: PageHint::NONE,
        pool: PagePool::new(),
        max_vcpus: 0,
        vcpus: [VcpuSlot {
            state: VcpuState::Absent,
            ctx: 0,
        }; MAX_VCPUS],
        owned: 0,
        borrowed: 0,
        guest_shared: 0,
        off: false,
    };

    /// Whether any vCPU is loaded on some CPU.
    pub fn any_loaded(&self) -> bool {
        self.vcpus
            .iter()
            .any(|v| matches!(v.state, VcpuState::Loaded(_)))
    }
}

/// One slot of the VM table. The caller of `Engine::new` provides the table
/// (a static array at EL2, `Vec::leak` in tests).
#[derive(Debug)]
// Padded to 128 bytes (the pair of 64-byte lines that adjacent-line prefetch
// moves together on x86-64 and AArch64), so two CPUs working on neighbouring
// elements never bounce one line: the lock itself is unpadded.
#[repr(align(128))]
pub struct VmSlot {
    pub(crate) inner: Mutex<VmInner>,
    /// See the module's invariants: false iff free and unclaimed.
    claimed: AtomicBool,
    /// See the module's invariants: the dead VM's pages awaiting `Reclaim`.
    dead_owned: AtomicU64,
}

// Two 128-byte pairs of lines: every call that names a VM finds its slot
// with a shift. A field that pushed it to 384 bytes would make that a
// multiply on every such call (it did once: +2 on every vCPU run).
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<VmSlot>() == 256);

impl VmSlot {
    /// An empty slot.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(VmInner::EMPTY),
            claimed: AtomicBool::new(false),
            dead_owned: AtomicU64::new(0),
        }
    }

    /// An empty slot.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(VmInner::EMPTY),
            claimed: AtomicBool::new(false),
            dead_owned: AtomicU64::new(0),
        }
    }

    /// Claims the slot for a `VmCreate` without taking its lock: true if it
    /// was free and unclaimed (then the caller alone may make it `Live`, or
    /// give it back with [`VmSlot::publish`] while it is still `Free`).
    pub(crate) fn try_claim(&self) -> bool {
        // Acquire: pairs with `publish`'s Release, so the claimer's lock sees
        // the slot as the last holder left it (the lock orders that anyway;
        // this keeps the claim's own meaning exact).
        !self.claimed.load(Ordering::Relaxed)
            && self
                .claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Publishes `g` (this slot's locked state) to the lock-free readers: a
    /// `Free` slot becomes claimable, a `Dead` one counts its pages. Called by
    /// the lock holder after every change of `state` or of a dead VM's
    /// `owned`.
    pub(crate) fn publish(&self, g: &VmInner) {
        let dead = if g.state == SlotState::Dead {
            g.owned
        } else {
            0
        };
        self.dead_owned.store(dead, Ordering::Relaxed);
        if g.state == SlotState::Free {
            // Release: the next claimer's Acquire sees the slot's final state.
            self.claimed.store(false, Ordering::Release);
        }
    }

    /// Pages of this slot's destroyed VM awaiting `Reclaim` (0 unless dead),
    /// without the lock.
    pub(crate) fn awaiting_reclaim(&self) -> u64 {
        self.dead_owned.load(Ordering::Relaxed)
    }
}

impl Default for VmSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The VMID of slot `slot`: fixed per slot, `slot + 1` (VMID 0 is the
/// host's). A slot is reused only after its VM's destroy issued
/// `tlbi vmalls12e1is` for this VMID, so no TLB holds an old translation
/// when a new VM gets it. 8-bit VMIDs allow 255 slots.
pub const fn vmid_of(slot: usize) -> Vmid {
    Vmid((slot as u16).wrapping_add(1))
}

/// The most slots a VM table may have (8-bit VMIDs, host has VMID 0).
pub const MAX_SLOTS: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_carry_slot_and_generation() {
        let h = VmHandle::new(3, 7);
        assert_eq!((h.slot(), h.generation()), (3, Some(7)));
        assert_eq!(VmHandle(u64::MAX).generation(), None);
        assert_ne!(VmHandle::new(3, 7), VmHandle::new(3, 8));
        assert_eq!(vmid_of(0), Vmid(1));
    }

    #[test]
    fn a_slot_is_claimed_once_until_published_free() {
        let s = VmSlot::new();
        assert!(s.try_claim(), "an empty slot is free");
        assert!(!s.try_claim(), "and then claimed");
        let mut g = s.inner.lock();
        g.state = SlotState::Live;
        s.publish(&g);
        assert!(!s.try_claim(), "a live VM's slot");
        g.state = SlotState::Dead;
        s.publish(&g);
        assert!(!s.try_claim(), "a dead VM's slot");
        g.state = SlotState::Free;
        s.publish(&g);
        drop(g);
        assert!(s.try_claim(), "free again");
        assert!(!s.try_claim());
    }
}
