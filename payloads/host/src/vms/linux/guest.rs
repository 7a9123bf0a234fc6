//! One Linux guest's host-side records: its VMM (`isola_vmm::vm::Vm`),
//! which host CPU runs which vCPU, what the engine holds in each vCPU's
//! list registers, its console, and the figures the run reports.
//!
//! Invariant: everything but `done` and the fixed facts (handle, memory)
//! is behind the guest's lock; a CPU holds it only between runs, never
//! across a `VcpuRun`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use isola_abi::{Exit, lr};
use isola_sync::Mutex;
// isola-sync's shim has no `AtomicPtr`; this payload is not model-checked.
use core::sync::atomic::AtomicPtr;
use isola_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use isola_vmm::vm::Vm;

use super::MAX_GUESTS;
use crate::console::say;

/// vCPUs of each guest.
pub(super) const VCPUS: usize = 4;

/// A claim: no host CPU runs the vCPU.
pub(super) const FREE: usize = usize::MAX;

/// Exit kinds the figures count, in the order they are printed.
pub(super) const KINDS: [&str; 13] = [
    "mmio-uart",
    "mmio-gic",
    "mmio-none",
    "memfault",
    "wfi",
    "wfe",
    "irq",
    "eoi",
    "sgi",
    "cpu-on",
    "cpu-off",
    "power",
    "error",
];

/// What of a guest's console the host prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// Every line (the guest-only run).
    Everything,
    /// Only its init's `isola-guest: ` lines, and kernel lines that name a
    /// failure (beside the VM test, whose console is judged line by line).
    InitOnly,
}

/// How a guest's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Running,
    /// PSCI `SYSTEM_OFF`.
    PoweredOff,
    /// PSCI `SYSTEM_RESET` (Linux's reaction to a panic with `panic=-1`).
    Reset,
    /// Every vCPU off or stopped without a power-off.
    AllStopped,
    /// No console output for too long (`run::stall_seconds`).
    Stalled,
    /// A call the host needs failed, or an exit it cannot decode.
    HostError,
}

/// What is behind the lock.
pub(super) struct State {
    pub(super) vm: Vm,
    /// The host CPU running each vCPU, or [`FREE`].
    pub(super) claim: [usize; VCPUS],
    /// Where the next search for a vCPU to run starts (round robin).
    pub(super) next: usize,
    /// Runs of each vCPU, and the kind ([`KINDS`]) of its last exit.
    pub(super) runs: [u64; VCPUS],
    pub(super) last_exit: [usize; VCPUS],
    /// `VcpuRun`'s `x3` for each vCPU's next run (an MMIO read's value).
    pub(super) value: [u64; VCPUS],
    /// What the engine holds in each vCPU's list registers.
    pub(super) engine_lrs: [[u64; lr::SLOTS]; VCPUS],
    /// The console line being collected.
    pub(super) line: Vec<u8>,
    /// Exits of each kind ([`KINDS`]) and `VcpuInterrupts` calls.
    pub(super) exits: [u64; KINDS.len()],
    pub(super) interrupt_calls: u64,
    /// Counter values: `VmCreate`, the first userspace line, power-off, the
    /// last console byte.
    pub(super) t_create: u64,
    pub(super) t_first_line: Option<u64>,
    pub(super) t_end: Option<u64>,
    /// The PMU's all-EL instruction count at the same three points, when
    /// it counts (one host CPU, `-icount`: see [`instructions`]).
    pub(super) i_create: u64,
    pub(super) i_first_line: Option<u64>,
    pub(super) i_end: Option<u64>,
    pub(super) t_output: u64,
    /// The first `Exit::Error`'s syndrome, if any.
    pub(super) error_esr: Option<u64>,
    pub(super) outcome: Outcome,
    /// Userspace lines seen (`isola-guest: `).
    pub(super) user_lines: u32,
    pub(super) failures: u32,
}

/// One guest.
pub(super) struct Guest {
    /// Its number (`linux<k>`).
    pub(super) k: usize,
    pub(super) handle: u64,
    /// Guest RAM in host memory: first page and page count.
    pub(super) ram_pa: u64,
    pub(super) ram_pages: u64,
    /// Its VM pool.
    pub(super) pool_pa: u64,
    pub(super) pool_pages: u64,
    pub(super) console: Console,
    /// Set once its run ended (see [`State::outcome`]).
    pub(super) done: AtomicBool,
    pub(super) state: Mutex<State>,
}

impl Guest {
    /// Takes the lock as the console does: spin until free, no queue (with
    /// more emulated CPUs than host threads a queue hands the lock to a CPU
    /// that is not running).
    pub(super) fn lock(&self) -> isola_sync::MutexGuard<'_, State> {
        loop {
            if let Some(g) = self.state.try_lock() {
                return g;
            }
            while self.state.is_locked() {
                isola_sync::spin_hint();
            }
        }
    }
}

impl State {
    /// Counts an exit of vCPU `v`.
    pub(super) fn count(&mut self, v: usize, exit: &Exit, mmio_kind: usize) {
        let kind = match exit {
            Exit::Mmio { .. } => mmio_kind,
            Exit::MemFault { .. } => 3,
            Exit::Wfx { wfe: false, .. } => 4,
            Exit::Wfx { wfe: true, .. } => 5,
            Exit::Irq => 6,
            Exit::Eoi => 7,
            Exit::Sgi { .. } => 8,
            Exit::CpuOn { .. } => 9,
            Exit::CpuOff => 10,
            Exit::SystemOff | Exit::SystemReset => 11,
            Exit::Error { .. } | Exit::HostCall { .. } => 12,
        };
        if let Some(c) = self.exits.get_mut(kind) {
            *c = c.saturating_add(1);
        }
        if let (Some(r), Some(l)) = (self.runs.get_mut(v), self.last_exit.get_mut(v)) {
            *r = r.saturating_add(1);
            *l = kind;
        }
    }
}

/// Every guest, made by the boot CPU before other CPUs run (see the
/// module invariants).
struct Table {
    guests: [AtomicPtr<Guest>; MAX_GUESTS],
    count: AtomicUsize,
}

static TABLE: Table = Table {
    guests: [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_GUESTS],
    count: AtomicUsize::new(0),
};

/// Records a new guest (boot CPU, before other CPUs run).
pub(super) fn add(g: Guest) -> Option<&'static Guest> {
    let n = TABLE.count.load(Ordering::Relaxed);
    let slot = TABLE.guests.get(n)?;
    let p = Box::into_raw(Box::new(g));
    slot.store(p, Ordering::Release);
    TABLE.count.store(n.wrapping_add(1), Ordering::Release);
    // SAFETY: just made from a Box and never freed while any CPU may use
    // it (`clear` runs on the boot CPU after the others are off).
    Some(unsafe { &*p })
}

/// The guests.
pub(super) fn all() -> impl Iterator<Item = &'static Guest> + Clone {
    let n = TABLE.count.load(Ordering::Acquire).min(MAX_GUESTS);
    TABLE.guests.iter().take(n).filter_map(|p| {
        let p = p.load(Ordering::Acquire);
        // SAFETY: a pointer `add` stored, valid until `clear` (see there).
        (!p.is_null()).then(|| unsafe { &*p })
    })
}

/// Frees every guest record (boot CPU, after every other CPU is off).
pub(super) fn clear() {
    let n = TABLE.count.swap(0, Ordering::AcqRel).min(MAX_GUESTS);
    for slot in TABLE.guests.iter().take(n) {
        let p = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: made by `add` from a Box; no CPU but this one runs,
            // and the count is 0, so no reference to it remains in use.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Whether every guest ran to a clean power-off with no failed check.
pub(super) fn all_passed() -> bool {
    all().all(|g| {
        let s = g.lock();
        s.outcome == Outcome::PoweredOff && s.failures == 0
    })
}

/// Whether [`instructions`] counts every instruction the machine executes:
/// set by the guest-only run on a single host CPU once the PMU is set up.
pub(super) static COUNTING: AtomicBool = AtomicBool::new(false);

/// The PMU's count of instructions retired at every EL on this CPU (0 when
/// not [`COUNTING`]). With one host CPU, and an engine that lets EL2 be
/// counted and keeps the host's counters running in guests (the
/// `bench-pmu` image, as `cargo xtask guest --icount` builds it), that is
/// every instruction of host, engine and guest. QEMU counts instructions
/// only under `-icount`.
pub(super) fn instructions() -> u64 {
    if COUNTING.load(Ordering::Relaxed) {
        crate::pmu::read().total
    } else {
        0
    }
}

/// Counter ticks as milliseconds.
fn ms(ticks: u64) -> u64 {
    let f = crate::irq::frequency().max(1);
    ticks.saturating_mul(1000).checked_div(f).unwrap_or(0)
}

/// The figures of every guest of the guest-only run: how long from
/// `VmCreate` to the first userspace line and to power-off (counter ticks:
/// instructions under `-icount shift=0` on QEMU 10, whose counter runs at
/// 1 GHz; and milliseconds), and its exits by kind, per second of counter
/// time.
pub(super) fn report_all() {
    for g in all() {
        let s = g.lock();
        let k = g.k;
        let counted = |i: Option<u64>| match i {
            Some(i) if COUNTING.load(Ordering::Relaxed) => {
                alloc::format!(", {} instructions", i.wrapping_sub(s.i_create))
            }
            _ => alloc::string::String::new(),
        };
        if let Some(t) = s.t_first_line {
            let d = t.wrapping_sub(s.t_create);
            say!(
                "linux{k}: figures: VmCreate to the first userspace line: {d} ticks ({} ms){}",
                ms(d),
                counted(s.i_first_line)
            );
        }
        let Some(end) = s.t_end else { continue };
        let d = end.wrapping_sub(s.t_create);
        say!(
            "linux{k}: figures: VmCreate to power-off: {d} ticks ({} ms){}",
            ms(d),
            counted(s.i_end)
        );
        let total: u64 = s.exits.iter().fold(0, |a, &b| a.saturating_add(b));
        let per_second = |n: u64| n.saturating_mul(1000).checked_div(ms(d)).unwrap_or(0);
        say!(
            "linux{k}: figures: {total} exits, {} per second; VcpuInterrupts calls {}",
            per_second(total),
            s.interrupt_calls
        );
        for (name, n) in KINDS.iter().zip(s.exits) {
            if n > 0 {
                say!(
                    "linux{k}: figures: exit {name}: {n}, {} per second",
                    per_second(n)
                );
            }
        }
    }
}
