//! Per-CPU state: one slot per physical CPU, reached without locks by the CPU
//! that owns it, and per-CPU event counters.
//!
//! # Which CPU am I?
//!
//! [`current_cpu`] answers. At EL2 (`aarch64`, `target_os = "none"`) it reads
//! `TPIDR_EL2`, then the `u64` at the address it holds. **Contract with the
//! boot code:** before a CPU runs any engine code, boot stores in its
//! `TPIDR_EL2` the address of that CPU's *record*: memory that stays mapped
//! and readable for as long as the CPU runs, 8-byte aligned, whose first
//! field (offset 0) is the CPU's dense index as a `u64` (0 for the boot
//! CPU, then 1, 2, ... in bring-up order, below [`MAX_CPUS`]), holding that
//! index before the CPU runs and never written afterwards; and nothing
//! writes `TPIDR_EL2` afterwards. What else the record holds is the boot
//! code's business ([`current_record`] hands out its address: isola's boot
//! keeps the core's per-CPU counters there, so the hypercall path reaches
//! them without a table lookup). On the host (tests, loom models, benches)
//! the index is a thread-local set with [`set_current_cpu`], and there is
//! no record.
//!
//! # Soundness of [`PerCpu::with_mut`]
//!
//! Invariant: at most one `&mut T` to a slot exists at any time. This is
//! enforced by each slot's `busy` flag, not by the CPU-index contract alone:
//! [`PerCpu::with_mut`] claims the flag with an atomic swap before creating
//! the `&mut T` and clears it when the closure returns (or unwinds), and the
//! reference cannot escape the closure. So
//! - a re-entrant call on the same CPU (an exception handler is meant to run
//!   to completion, but a bug could nest two `with_mut`s on one `PerCpu`)
//!   gets [`PerCpuError::SlotBusy`] instead of a second `&mut T`;
//! - two host threads that were given the same CPU index (a test bug) cannot
//!   alias either; one of them gets `SlotBusy`.
//!
//! On EL2 with the contract respected, a slot's flag is only ever touched by
//! its own CPU, so it never fails and its cache line never moves.
//!
//! Slots (and counters) are aligned to 64 bytes, the cache-line size of the
//! Arm server cores isola targets, so one CPU's updates never invalidate the
//! line another CPU is using. The cost is 64 bytes per CPU per `PerCpu`
//! (32 KiB at [`MAX_CPUS`]).
#![no_std]
#![deny(unsafe_code)]

#[cfg(not(target_os = "none"))]
extern crate std;

use core::fmt;

use isola_sync::atomic::{AtomicBool, AtomicU64, Ordering, Site, ordered};
use isola_sync::cell::UnsafeCell;

/// The most CPUs the EL2 image supports (`isola_layout::MAX_CPUS`): the
/// default capacity of [`PerCpu`] and [`PerCpuCounter`].
pub const MAX_CPUS: usize = isola_layout::MAX_CPUS;

/// Why a per-CPU access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerCpuError {
    /// This thread has no CPU index (host only: [`set_current_cpu`] was not
    /// called).
    NoCurrentCpu,
    /// The current CPU index is not below the structure's capacity.
    CpuOutOfRange,
    /// The current CPU's slot is already borrowed (re-entrant use, or two
    /// host threads sharing one CPU index).
    SlotBusy,
}

impl fmt::Display for PerCpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoCurrentCpu => "no current CPU index",
            Self::CpuOutOfRange => "CPU index out of range",
            Self::SlotBusy => "per-CPU slot already borrowed",
        })
    }
}

/// The address of the running CPU's record: `TPIDR_EL2` (see the module's
/// contract with the boot code). Its first `u64` is the CPU's index; the
/// rest is what the boot code put there.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[inline(always)]
#[must_use]
#[allow(unsafe_code, reason = "reading TPIDR_EL2 is an instruction")]
pub fn current_record() -> *const u64 {
    let value: u64;
    // SAFETY: reading TPIDR_EL2 has no side effects and touches no memory
    // (hence `nomem`); it is legal at EL2, the only exception level this
    // configuration of the crate runs at. The value's meaning is the boot
    // contract in the module documentation.
    unsafe {
        core::arch::asm!(
            "mrs {value}, tpidr_el2",
            value = out(reg) value,
            options(nomem, nostack, preserves_flags)
        );
    }
    // The record was placed by the boot code, outside what Rust tracks:
    // the address has the exposed provenance of that memory.
    core::ptr::with_exposed_provenance(value as usize)
}

/// The index of the CPU running this code.
///
/// At EL2 this is the first `u64` of the record `TPIDR_EL2` points to (see
/// the module's contract with the boot code): one `mrs` and one load.
/// `None` only if it does not fit a `usize`, which cannot happen on
/// AArch64.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[inline(always)]
#[must_use]
#[allow(unsafe_code, reason = "reads the record TPIDR_EL2 points to")]
pub fn current_cpu() -> Option<usize> {
    // SAFETY: by the boot contract (module documentation) the address is
    // that of this CPU's record, mapped, readable and 8-byte aligned for as
    // long as the CPU runs, and its first `u64` holds the index and is
    // never written once the CPU runs, so this read races no write.
    let index = unsafe { current_record().read() };
    usize::try_from(index).ok()
}

#[cfg(all(target_os = "none", not(target_arch = "aarch64")))]
compile_error!("isola-percpu: bare-metal builds are only defined for aarch64 (TPIDR_EL2)");

#[cfg(all(not(target_os = "none"), not(loom)))]
std::thread_local! {
    static CURRENT_CPU: core::cell::Cell<Option<usize>> = const { core::cell::Cell::new(None) };
}

// loom runs its threads as coroutines on one OS thread, so a std
// thread-local would be shared by all of them; loom's is per model thread.
#[cfg(all(not(target_os = "none"), loom))]
loom::thread_local! {
    static CURRENT_CPU: core::cell::Cell<Option<usize>> = core::cell::Cell::new(None);
}

/// The index of the CPU this host thread plays, as set by
/// [`set_current_cpu`].
#[cfg(not(target_os = "none"))]
#[must_use]
pub fn current_cpu() -> Option<usize> {
    CURRENT_CPU.with(core::cell::Cell::get)
}

/// Make this host thread play CPU `cpu` (tests, loom models, benchmarks);
/// returns the index it played before, if any.
///
/// Giving two threads the same index is allowed but makes them contend for
/// the same slots: [`PerCpu::with_mut`] then refuses one of them rather than
/// aliasing.
#[cfg(not(target_os = "none"))]
pub fn set_current_cpu(cpu: usize) -> Option<usize> {
    CURRENT_CPU.with(|c| c.replace(Some(cpu)))
}

/// Make this host thread play no CPU (per-CPU accesses then fail with
/// [`PerCpuError::NoCurrentCpu`]).
#[cfg(not(target_os = "none"))]
pub fn clear_current_cpu() {
    CURRENT_CPU.with(|c| c.set(None));
}

/// One CPU's slot: its value and the flag that proves nobody is using it.
///
/// `repr(C)`, so [`PerCpu::SLOT_STRIDE`] and [`PerCpu::VALUE_OFFSET`] locate
/// a CPU's value for code that cannot call Rust (EL2 assembly).
#[repr(C, align(64))]
pub struct Slot<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

impl<T> Slot<T> {
    /// A free slot holding `value` (`const`, so a `PerCpu` can be a static:
    /// `PerCpu::from_slots([const { Slot::new(0) }; MAX_CPUS])`).
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new(value: T) -> Self {
        Self {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// A free slot holding `value` (not `const` under loom).
    #[cfg(loom)]
    #[must_use]
    pub fn new(value: T) -> Self {
        Self {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }
}

/// Clears a slot's `busy` flag when dropped, including on unwinding.
struct Claim<'a>(&'a AtomicBool);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire swap of the slot's next claimant
        // (normally this same CPU), so our writes to the value happen-before
        // its accesses, whichever thread it is.
        self.0
            .store(false, ordered(Site::PerCpuFree, Ordering::Release));
    }
}

/// One `T` per CPU, for `N` CPUs; each CPU reaches only its own.
pub struct PerCpu<T, const N: usize = MAX_CPUS> {
    slots: [Slot<T>; N],
}

#[allow(
    unsafe_code,
    reason = "the slot flags make sharing sound, which the type system cannot see"
)]
// SAFETY: a `&PerCpu` shared between threads only ever gives a thread `&mut T`
// to one slot while that slot's `busy` flag is claimed by it (see the module
// doc), so no `T` is ever accessed by two threads at once; a `T` may however
// be used by one thread and later by another (e.g. host threads swapping CPU
// indices), which needs `T: Send`.
unsafe impl<T: Send, const N: usize> Sync for PerCpu<T, N> {}

impl<T, const N: usize> PerCpu<T, N> {
    /// Bytes from one CPU's slot to the next: CPU `i`'s value is at
    /// `table + i * SLOT_STRIDE + VALUE_OFFSET`.
    pub const SLOT_STRIDE: usize = core::mem::size_of::<Slot<T>>();
    /// Where a slot's value starts within the slot (outside loom, whose cells
    /// are not laid out like the value).
    pub const VALUE_OFFSET: usize = core::mem::offset_of!(Slot<T>, value);

    /// Build from ready slots (`const`, for statics).
    #[must_use]
    pub const fn from_slots(slots: [Slot<T>; N]) -> Self {
        Self { slots }
    }

    /// Build with `init(cpu)` as the value of each CPU's slot.
    #[must_use]
    pub fn from_fn(mut init: impl FnMut(usize) -> T) -> Self {
        Self {
            slots: core::array::from_fn(|cpu| Slot::new(init(cpu))),
        }
    }

    /// How many CPUs this holds a slot for.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Run `f` on the current CPU's slot.
    ///
    /// # Errors
    ///
    /// [`PerCpuError::NoCurrentCpu`] or [`PerCpuError::CpuOutOfRange`] if
    /// there is no slot for the current CPU; [`PerCpuError::SlotBusy`] if the
    /// slot is already borrowed (a nested `with_mut` on the same `PerCpu`).
    #[inline]
    #[allow(
        unsafe_code,
        reason = "the `&mut T` a claimed flag makes unique, which the type system cannot see"
    )]
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, PerCpuError> {
        let cpu = current_cpu().ok_or(PerCpuError::NoCurrentCpu)?;
        let slot = self.slots.get(cpu).ok_or(PerCpuError::CpuOutOfRange)?;
        // Acquire: pairs with the Release in `Claim::drop` of the previous
        // borrower, so its writes to the value happen-before ours.
        if slot
            .busy
            .swap(true, ordered(Site::PerCpuClaim, Ordering::Acquire))
        {
            return Err(PerCpuError::SlotBusy);
        }
        let _claim = Claim(&slot.busy);
        // SAFETY: we set `busy` (it was clear), so no other `&mut T` to this
        // slot exists until `_claim` clears it; `f` gets a reference whose
        // lifetime is confined to the call, so it cannot outlive the claim.
        Ok(slot.value.with_mut(|p| f(unsafe { &mut *p })))
    }

    /// The slot of CPU `cpu`, through exclusive access to the whole set
    /// (e.g. at boot before secondary CPUs run, or to tear down).
    #[must_use]
    pub fn get_mut(&mut self, cpu: usize) -> Option<&mut T> {
        self.slots.get_mut(cpu).map(|s| s.value.get_mut())
    }

    /// Every CPU's slot, in CPU order, through exclusive access.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().map(|s| s.value.get_mut())
    }
}

impl<T, const N: usize> fmt::Debug for PerCpu<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpu")
            .field("capacity", &N)
            .finish_non_exhaustive()
    }
}

#[repr(align(64))]
struct PaddedCount(AtomicU64);

/// Per-CPU event counters: each CPU increments its own without locks or
/// contention; any CPU can read the total.
///
/// Relaxed ordering throughout: a counter publishes no other data, so no
/// reader needs to see anything *else* when it sees a count. Atomicity alone
/// guarantees that no increment is lost or torn. A [`PerCpuCounter::sum`]
/// taken while CPUs are counting is a snapshot: it includes some subset of
/// the concurrent increments, and is exact once they have finished (e.g.
/// after a rendezvous barrier, whose ordering then makes them visible).
pub struct PerCpuCounter<const N: usize = MAX_CPUS> {
    counts: [PaddedCount; N],
}

impl<const N: usize> Default for PerCpuCounter<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PerCpuCounter<N> {
    /// All counts zero (`const`, for statics).
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> Self {
        Self {
            counts: [const { PaddedCount(AtomicU64::new(0)) }; N],
        }
    }

    /// All counts zero (not `const` under loom).
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> Self {
        Self {
            counts: core::array::from_fn(|_| PaddedCount(AtomicU64::new(0))),
        }
    }

    /// Add 1 to the current CPU's count.
    ///
    /// # Errors
    ///
    /// [`PerCpuError::NoCurrentCpu`] or [`PerCpuError::CpuOutOfRange`] if
    /// there is no counter for the current CPU.
    #[inline]
    pub fn increment(&self) -> Result<(), PerCpuError> {
        self.add(1)
    }

    /// Add `n` to the current CPU's count (wrapping at 2^64).
    ///
    /// # Errors
    ///
    /// As for [`PerCpuCounter::increment`].
    #[inline]
    pub fn add(&self, n: u64) -> Result<(), PerCpuError> {
        let cpu = current_cpu().ok_or(PerCpuError::NoCurrentCpu)?;
        let count = self.counts.get(cpu).ok_or(PerCpuError::CpuOutOfRange)?;
        // Relaxed: see the type's doc. An RMW (not load + store) so that
        // even host threads sharing an index lose no increments.
        count.0.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// CPU `cpu`'s count, or `None` if out of range.
    #[must_use]
    pub fn get(&self, cpu: usize) -> Option<u64> {
        // Relaxed: see the type's doc.
        self.counts.get(cpu).map(|c| c.0.load(Ordering::Relaxed))
    }

    /// The total over all CPUs (wrapping at 2^64).
    #[must_use]
    pub fn sum(&self) -> u64 {
        self.counts
            .iter()
            // Relaxed: see the type's doc.
            .map(|c| c.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl<const N: usize> fmt::Debug for PerCpuCounter<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuCounter")
            .field("sum", &self.sum())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn without_a_cpu_index_access_is_refused() {
        clear_current_cpu();
        let p: PerCpu<u32, 4> = PerCpu::from_fn(|_| 0);
        assert_eq!(p.with_mut(|v| *v), Err(PerCpuError::NoCurrentCpu));
        let c: PerCpuCounter<4> = PerCpuCounter::new();
        assert_eq!(c.increment(), Err(PerCpuError::NoCurrentCpu));
        set_current_cpu(4);
        assert_eq!(p.with_mut(|v| *v), Err(PerCpuError::CpuOutOfRange));
        assert_eq!(c.increment(), Err(PerCpuError::CpuOutOfRange));
        assert_eq!(c.sum(), 0);
    }

    #[test]
    fn each_cpu_sees_only_its_own_slot() {
        let mut p: PerCpu<usize, 4> = PerCpu::from_fn(|cpu| cpu * 10);
        for cpu in 0..4 {
            assert_eq!(set_current_cpu(cpu).is_some(), cpu > 0);
            p.with_mut(|v| {
                assert_eq!(*v, cpu * 10);
                *v += 1;
            })
            .unwrap();
        }
        assert_eq!(
            p.iter_mut().map(|v| *v).collect::<Vec<_>>(),
            [1, 11, 21, 31]
        );
        assert_eq!(p.get_mut(2).copied(), Some(21));
        assert!(p.get_mut(4).is_none());
        assert_eq!(p.capacity(), 4);
    }

    #[test]
    fn nested_borrow_is_refused_and_released_afterwards() {
        set_current_cpu(1);
        let p: PerCpu<u32, 2> = PerCpu::from_fn(|_| 7);
        let inner = p.with_mut(|v| {
            *v = 8;
            p.with_mut(|w| *w)
        });
        assert_eq!(inner, Ok(Err(PerCpuError::SlotBusy)));
        assert_eq!(p.with_mut(|v| *v), Ok(8));
    }

    #[test]
    fn borrow_is_released_when_the_closure_panics() {
        set_current_cpu(0);
        let p: PerCpu<u32, 1> = PerCpu::from_fn(|_| 0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.with_mut(|_| panic!("boom")).unwrap();
        }));
        assert!(r.is_err());
        assert_eq!(p.with_mut(|v| *v), Ok(0));
    }

    #[test]
    #[allow(
        unsafe_code,
        reason = "reads a value by address, as the assembly the layout constants serve does"
    )]
    fn assembly_finds_each_cpus_value_where_the_layout_says() {
        type Table = PerCpu<[u64; 3], 4>;
        let t: Table = PerCpu::from_fn(|cpu| [cpu as u64; 3]);
        let base = core::ptr::from_ref(&t).cast::<u8>();
        for cpu in 0..4 {
            let at = base.wrapping_add(cpu * Table::SLOT_STRIDE + Table::VALUE_OFFSET);
            // SAFETY: within `t`, aligned for the value (slots are 64-byte
            // aligned and the value follows the flag at its alignment); no
            // `&mut` to the value exists.
            let v = unsafe { at.cast::<[u64; 3]>().read() };
            assert_eq!(v, [cpu as u64; 3]);
        }
        assert_eq!(Table::SLOT_STRIDE % 64, 0);
    }

    #[test]
    fn static_per_cpu_and_counter() {
        static SLOTS: PerCpu<u64> = PerCpu::from_slots([const { Slot::new(0) }; MAX_CPUS]);
        static EVENTS: PerCpuCounter = PerCpuCounter::new();
        set_current_cpu(MAX_CPUS - 1);
        SLOTS.with_mut(|v| *v += 3).unwrap();
        EVENTS.add(5).unwrap();
        assert_eq!(SLOTS.with_mut(|v| *v), Ok(3));
        assert_eq!(EVENTS.get(MAX_CPUS - 1), Some(5));
        assert_eq!(EVENTS.get(MAX_CPUS), None);
        assert_eq!(EVENTS.sum(), 5);
    }

    #[test]
    fn threads_as_cpus_count_without_loss() {
        const CPUS: usize = 4;
        const ROUNDS: u64 = if cfg!(miri) { 100 } else { 100_000 };
        let slots: Arc<PerCpu<u64, CPUS>> = Arc::new(PerCpu::from_fn(|_| 0));
        let events: Arc<PerCpuCounter<CPUS>> = Arc::new(PerCpuCounter::new());
        let handles: Vec<_> = (0..CPUS)
            .map(|cpu| {
                let slots = Arc::clone(&slots);
                let events = Arc::clone(&events);
                std::thread::spawn(move || {
                    set_current_cpu(cpu);
                    for _ in 0..ROUNDS {
                        slots.with_mut(|v| *v += 1).unwrap();
                        events.increment().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(events.sum(), ROUNDS * CPUS as u64);
        let mut slots = Arc::into_inner(slots).unwrap();
        assert!(slots.iter_mut().all(|v| *v == ROUNDS));
    }

    #[test]
    fn threads_sharing_an_index_never_alias() {
        const ROUNDS: usize = if cfg!(miri) { 50 } else { 20_000 };
        let p: Arc<PerCpu<u64, 1>> = Arc::new(PerCpu::from_fn(|_| 0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    set_current_cpu(0);
                    let mut done = 0_u64;
                    for _ in 0..ROUNDS {
                        match p.with_mut(|v| *v += 1) {
                            Ok(()) => done += 1,
                            Err(e) => assert_eq!(e, PerCpuError::SlotBusy),
                        }
                    }
                    done
                })
            })
            .collect();
        let done: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        set_current_cpu(0);
        assert_eq!(p.with_mut(|v| *v).unwrap_or(u64::MAX), done);
    }
}
