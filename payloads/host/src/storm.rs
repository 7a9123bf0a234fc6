//! The storm (`isola.test=storm`): every CPU makes a long run of valid
//! random host calls on its own VMs and pages at once, each timed with the
//! virtual counter, and no call may take longer than [`BOUND`] ticks
//! (docs/perf.md says why that bound holds: which locks a call takes, how
//! many, and how long another CPU can hold each).
//!
//! Every call is valid, so every one must succeed (`VcpuRun` with the
//! guest's `HostCall` exit): the storm measures waiting, not refusals. What
//! the CPUs share is what the engine shares: the VM table (`VmCreate`'s
//! claim), the shards (the CPUs' 256 KiB chunks in turn, so eight CPUs'
//! chunks to a 2 MiB shard), the host's Stage-2, the SMMU's queue and
//! `Accounting`'s counters.
//!
//! Invariants:
//! - A CPU touches only its own [`Cpu`] record (on its stack) and its own
//!   row of [`STATS`]; the boot CPU reads the rows only after every other
//!   CPU is off again (`AFFINITY_INFO`), and the Acquire of the CPU's `done`
//!   flag orders the reads after the CPU's writes.
//! - Memory: `[BASE, BASE + CPUS_MAX * CHUNKS * CHUNK)` (256 MiB of host RAM
//!   no other test uses), in chunks of [`CHUNK_PAGES`] pages; a chunk is
//!   one CPU's, free or in use as one VM's pool, one donation, or the pages
//!   it shares, and goes back to the CPU's free list once the host has it
//!   back whole.
//! - Run under `-icount shift=0`, so a tick of the 1 GHz counter is one
//!   instruction of whichever CPU QEMU runs: the durations repeat from run
//!   to run and do not depend on the build machine's load. Each CPU keeps
//!   its virtual timer armed [`SLICE_TICKS`] ahead (its interrupt masked),
//!   so QEMU's round robin switches CPUs at least that often and the CPUs
//!   interleave finely, as on hardware.

use core::arch::asm;

use isola_abi::{Accounting, Exit, HostCall, Status, perms};
use isola_sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::calls::{AFFINITY_INFO, AFFINITY_OFF, St, hvc5, psci};
use crate::console::{fail, say};

/// First byte of the storm's memory.
const BASE: u64 = 0xB000_0000;
/// Pages in a chunk (256 KiB): the most one donation moves.
const CHUNK_PAGES: u64 = 64;
/// Bytes in a chunk.
const CHUNK: u64 = CHUNK_PAGES * isola_abi::PAGE_SIZE;
/// Chunks per CPU (32 MiB).
const CHUNKS: usize = 128;
/// Most CPUs that take part.
const CPUS_MAX: usize = 8;
/// Calls each CPU makes.
pub const CALLS: u64 = 2000;
/// No call may take longer than this many counter ticks (instructions of
/// the whole machine under `-icount shift=0`): the worst case of the
/// slowest kind, `VmDestroy` (its own work and, for each of its ≤ 50 shard
/// and ≤ 50 host Stage-2 acquisitions, the longest wait those locks allow:
/// 6 other storming CPUs ahead, each holding for its longest), stretched 16
/// times by the CPUs' turns (8 CPUs, doubled for QEMU's uneven turns: plain
/// work is stretched about 11 times); docs/perf.md derives it.
pub const BOUND: u64 = 540_000_000;
/// The calls that take no lock another CPU can hold (`Version`,
/// `Accounting` `Totals` and `Sharing` take none; `Accounting` `Vm` and
/// `VcpuRun` take only their own VM's, which no other CPU of the storm
/// wants): none may be stretched more than
/// plain work of about its length is (the most any [`Kind::Compute`] was
/// stretched, an eighth more), plus two rounds of turns.
const LOCK_FREE: [Kind; 5] = [
    Kind::Version,
    Kind::AccountingTotals,
    Kind::AccountingSharing,
    Kind::AccountingVm,
    Kind::VcpuRun,
];
/// Turns of [`Kind::Compute`]'s loop (two instructions each): about as
/// long as a lock-free `Accounting`.
const COMPUTE_ITERATIONS: u64 = 7_000;
/// How far ahead each CPU keeps its (masked) virtual timer armed, in ticks.
const SLICE_TICKS: u64 = 16_000;
/// Pool pages each VM gets.
const POOL_PAGES: u64 = 32;
/// Pool pages a `VmTopup` adds (once per VM).
const TOPUP_PAGES: u64 = 16;
/// Live VMs per CPU at most.
const VMS: usize = 2;
/// Donations per VM at most.
const DONATIONS: usize = 12;
/// Where each VM's guest code lives, and where donations and shares start.
const CODE_IPA: u64 = 0x4000_0000;
const DONATE_IPA: u64 = 0x4100_0000;
const SHARE_IPA: u64 = 0x4800_0000;

/// The kinds of call the storm times separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Kind {
    Version,
    AccountingTotals,
    AccountingSharing,
    AccountingVm,
    VmCreate,
    VmTopup,
    VcpuCreate,
    Donate1,
    DonateBatch,
    Share,
    Unshare,
    VcpuRun,
    VmDestroy,
    Reclaim,
    /// Not a call: [`COMPUTE_ITERATIONS`] turns of a loop at EL1, timed
    /// the same way, to see how much the CPUs' turns stretch plain work.
    Compute,
}

const KINDS: usize = 15;
const ALL_KINDS: [Kind; KINDS] = [
    Kind::Version,
    Kind::AccountingTotals,
    Kind::AccountingSharing,
    Kind::AccountingVm,
    Kind::VmCreate,
    Kind::VmTopup,
    Kind::VcpuCreate,
    Kind::Donate1,
    Kind::DonateBatch,
    Kind::Share,
    Kind::Unshare,
    Kind::VcpuRun,
    Kind::VmDestroy,
    Kind::Reclaim,
    Kind::Compute,
];

/// One CPU's figures for one kind: calls, total ticks, the most ticks.
struct Stat {
    calls: AtomicU64,
    ticks: AtomicU64,
    max: AtomicU64,
}

impl Stat {
    const fn new() -> Self {
        Self {
            calls: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

/// Per CPU, per kind (see the module invariant: a row has one writer).
static STATS: [[Stat; KINDS]; CPUS_MAX] = [const { [const { Stat::new() }; KINDS] }; CPUS_MAX];
/// The idle machine's time of each [`LOCK_FREE`] kind (the most of a few
/// calls on CPU 0 before any other CPU runs), in ticks.
static IDLE: [AtomicU64; LOCK_FREE.len()] = [const { AtomicU64::new(0) }; LOCK_FREE.len()];
/// The idle machine's time of [`Kind::Compute`].
static IDLE_COMPUTE: AtomicU64 = AtomicU64::new(0);

/// [`COMPUTE_ITERATIONS`] turns of a two-instruction loop.
fn compute() {
    // SAFETY: a register-only loop.
    unsafe {
        asm!(
            "2: subs {n}, {n}, #1",
            "b.ne 2b",
            n = inout(reg) COMPUTE_ITERATIONS => _,
            options(nomem, nostack)
        );
    }
}
/// Per CPU: calls that did not do what they should.
static WRONG: [AtomicU64; CPUS_MAX] = [const { AtomicU64::new(0) }; CPUS_MAX];
/// Per CPU: finished (Release after its last write to its rows).
static DONE: [AtomicBool; CPUS_MAX] = [const { AtomicBool::new(false) }; CPUS_MAX];
/// CPUs taking part (0 when the storm does not run).
static JOIN: AtomicUsize = AtomicUsize::new(0);
/// CPUs ready to start; the storm starts when all are.
static READY: AtomicUsize = AtomicUsize::new(0);

/// The virtual counter.
fn now() -> u64 {
    let t: u64;
    // SAFETY: reading the virtual counter has no side effect; the `isb`
    // keeps it after everything before it.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nostack)) };
    t
}

/// Arms this CPU's virtual timer `SLICE_TICKS` ahead, its interrupt masked
/// (`IMASK`): only QEMU's scheduling sees it (see the module docs).
fn arm_timer() {
    let at = now().wrapping_add(SLICE_TICKS);
    // SAFETY: the host's own EL1 virtual timer; with IMASK set it raises no
    // interrupt, and interrupts are masked at this CPU anyway.
    unsafe {
        asm!(
            "msr cntv_cval_el0, {at}",
            "msr cntv_ctl_el0, {ctl}",
            at = in(reg) at,
            ctl = in(reg) 0b11_u64,
            options(nostack)
        );
    }
}

/// Turns this CPU's virtual timer off again.
fn disarm_timer() {
    // SAFETY: as in `arm_timer`.
    unsafe { asm!("msr cntv_ctl_el0, xzr", options(nostack)) };
}

/// A VM of this CPU's.
#[derive(Clone, Copy)]
struct Vm {
    handle: u64,
    /// Chunks of its pool (the second after a `VmTopup`).
    pool: [Option<usize>; 2],
    /// The chunk whose first page holds its guest code, once its vCPU
    /// exists.
    code: Option<usize>,
    /// Donations: chunk and page count.
    donated: [Option<(usize, u64)>; DONATIONS],
    /// The chunk of the page it borrows (shared by the host), if any.
    shared: Option<usize>,
}

/// Pages of a destroyed VM the host still has to reclaim: chunk, pages.
#[derive(Clone, Copy)]
struct Dead {
    chunk: usize,
    pages: u64,
    next: u64,
}

/// This CPU's state.
struct Cpu {
    cpu: usize,
    rng: u64,
    free: [usize; CHUNKS],
    nfree: usize,
    vms: [Option<Vm>; VMS],
    dead: [Option<Dead>; 2 * (DONATIONS + 1) * VMS],
}

impl Cpu {
    fn new(cpu: usize) -> Self {
        let mut free = [0; CHUNKS];
        for (i, f) in free.iter_mut().enumerate() {
            *f = i;
        }
        Self {
            cpu,
            rng: (cpu as u64).wrapping_add(1).wrapping_mul(0x5702_0000_0001),
            free,
            nfree: CHUNKS,
            vms: [None; VMS],
            dead: [None; 2 * (DONATIONS + 1) * VMS],
        }
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        isola_guest_payload::splitmix64(self.rng)
    }

    /// The address of this CPU's chunk `c`: the CPUs' chunks in turn, so a
    /// 2 MiB shard holds one chunk of each of eight CPUs.
    fn chunk_pa(&self, c: usize) -> u64 {
        let global = c.wrapping_mul(CPUS_MAX).wrapping_add(self.cpu);
        BASE.wrapping_add((global as u64).wrapping_mul(CHUNK))
    }

    fn take_chunk(&mut self) -> Option<usize> {
        self.nfree = self.nfree.checked_sub(1)?;
        self.free.get(self.nfree).copied()
    }

    fn give_chunk(&mut self, c: usize) {
        if let Some(slot) = self.free.get_mut(self.nfree) {
            *slot = c;
            self.nfree = self.nfree.wrapping_add(1);
        }
    }

    /// Makes one call, timed; whether it did what it should is `ok(result)`.
    fn call(
        &self,
        kind: Kind,
        id: HostCall,
        a: [u64; 5],
        mut ok: impl FnMut([u64; 4]) -> bool,
    ) -> bool {
        let t0 = now();
        let r = hvc5(id as u64, a);
        let t = now().wrapping_sub(t0);
        let good = ok(r);
        if let Some(s) = STATS.get(self.cpu).and_then(|row| row.get(kind as usize)) {
            s.calls.fetch_add(1, Ordering::Relaxed);
            s.ticks.fetch_add(t, Ordering::Relaxed);
            s.max.fetch_max(t, Ordering::Relaxed);
        }
        if !good
            && let Some(w) = WRONG.get(self.cpu)
            && w.fetch_add(1, Ordering::Relaxed) < 4
        {
            say!(
                "storm: cpu {} {kind:?}{a:x?} -> {} ({:#x}, {:#x}, {:#x})",
                self.cpu,
                St(r[0]),
                r[1],
                r[2],
                r[3]
            );
        }
        good
    }

    /// Plain work, timed like a call ([`Kind::Compute`]).
    fn compute(&self) {
        let t0 = now();
        compute();
        let t = now().wrapping_sub(t0);
        if let Some(s) = STATS
            .get(self.cpu)
            .and_then(|row| row.get(Kind::Compute as usize))
        {
            s.calls.fetch_add(1, Ordering::Relaxed);
            s.ticks.fetch_add(t, Ordering::Relaxed);
            s.max.fetch_max(t, Ordering::Relaxed);
        }
    }

    /// One random call this CPU's state allows.
    fn step(&mut self) {
        let r = self.random();
        let slot = (r >> 8) as usize % VMS;
        match r % 100 {
            0..=2 => {
                self.call(Kind::Version, HostCall::Version, [0; 5], success);
            }
            3..=4 => self.compute(),
            5..=11 => {
                let sel = if r & 0x100 == 0 {
                    Accounting::Totals
                } else {
                    Accounting::Sharing
                };
                let kind = if sel == Accounting::Totals {
                    Kind::AccountingTotals
                } else {
                    Kind::AccountingSharing
                };
                self.call(
                    kind,
                    HostCall::Accounting,
                    [sel as u64, 0, 0, 0, 0],
                    success,
                );
            }
            12..=15 => match self.vms.get(slot).copied().flatten() {
                Some(vm) => {
                    self.call(
                        Kind::AccountingVm,
                        HostCall::Accounting,
                        [Accounting::Vm as u64, vm.handle, 0, 0, 0],
                        success,
                    );
                }
                None => self.create(slot),
            },
            16..=19 => self.create(slot),
            20..=22 => self.topup(slot),
            23..=44 => self.donate(slot, r >> 16),
            45..=54 => self.share_or_unshare(slot),
            55..=74 => self.run(slot),
            75..=78 => self.destroy(slot),
            _ => self.reclaim_some(),
        }
    }

    fn create(&mut self, slot: usize) {
        if self.vms.get(slot).is_some_and(Option::is_some) {
            return self.run(slot);
        }
        let Some(c) = self.take_chunk() else {
            return self.reclaim_some();
        };
        let pa = self.chunk_pa(c);
        let mut handle = 0;
        let ok = self.call(
            Kind::VmCreate,
            HostCall::VmCreate,
            [pa, POOL_PAGES, 1, 0, 0],
            |r| {
                let good = r[0] == Status::Success.raw();
                if good {
                    handle = r[1];
                }
                good
            },
        );
        if !ok {
            self.give_chunk(c);
            return;
        }
        if let Some(v) = self.vms.get_mut(slot) {
            *v = Some(Vm {
                handle,
                pool: [Some(c), None],
                code: None,
                donated: [None; DONATIONS],
                shared: None,
            });
        }
    }

    fn topup(&mut self, slot: usize) {
        let Some(mut vm) = self.vms.get(slot).copied().flatten() else {
            return self.create(slot);
        };
        if vm.pool[1].is_some() {
            return self.run(slot);
        }
        let Some(c) = self.take_chunk() else {
            return self.reclaim_some();
        };
        let pa = self.chunk_pa(c);
        if self.call(
            Kind::VmTopup,
            HostCall::VmTopup,
            [vm.handle, pa, TOPUP_PAGES, 0, 0],
            success,
        ) {
            vm.pool[1] = Some(c);
            self.set_vm(slot, vm);
        } else {
            self.give_chunk(c);
        }
    }

    fn set_vm(&mut self, slot: usize, vm: Vm) {
        if let Some(v) = self.vms.get_mut(slot) {
            *v = Some(vm);
        }
    }

    fn donate(&mut self, slot: usize, r: u64) {
        let Some(mut vm) = self.vms.get(slot).copied().flatten() else {
            return self.create(slot);
        };
        let Some(at) = vm.donated.iter().position(Option::is_none) else {
            return self.destroy(slot);
        };
        let Some(c) = self.take_chunk() else {
            return self.reclaim_some();
        };
        let pages = if r & 1 == 0 {
            1
        } else {
            ((r >> 1) % CHUNK_PAGES).wrapping_add(1)
        };
        let pa = self.chunk_pa(c);
        let ipa = DONATE_IPA.wrapping_add((at as u64).wrapping_mul(CHUNK));
        let kind = if pages == 1 {
            Kind::Donate1
        } else {
            Kind::DonateBatch
        };
        if self.call(
            kind,
            HostCall::Donate,
            [vm.handle, pa, ipa, perms::R | perms::W, pages],
            success,
        ) {
            if let Some(d) = vm.donated.get_mut(at) {
                *d = Some((c, pages));
            }
            self.set_vm(slot, vm);
        } else {
            self.give_chunk(c);
        }
    }

    fn share_or_unshare(&mut self, slot: usize) {
        let Some(mut vm) = self.vms.get(slot).copied().flatten() else {
            return self.create(slot);
        };
        match vm.shared {
            Some(c) => {
                let pa = self.chunk_pa(c);
                if self.call(
                    Kind::Unshare,
                    HostCall::Unshare,
                    [vm.handle, pa, SHARE_IPA, 0, 0],
                    success,
                ) {
                    vm.shared = None;
                    self.set_vm(slot, vm);
                    self.give_chunk(c);
                }
            }
            None => {
                let Some(c) = self.take_chunk() else {
                    return self.reclaim_some();
                };
                let pa = self.chunk_pa(c);
                if self.call(
                    Kind::Share,
                    HostCall::Share,
                    [vm.handle, pa, SHARE_IPA, perms::R | perms::W, 0],
                    success,
                ) {
                    vm.shared = Some(c);
                    self.set_vm(slot, vm);
                } else {
                    self.give_chunk(c);
                }
            }
        }
    }

    /// Runs the VM's vCPU once (creating it first: the guest code page
    /// donated, then `VcpuCreate`).
    fn run(&mut self, slot: usize) {
        let Some(mut vm) = self.vms.get(slot).copied().flatten() else {
            return self.create(slot);
        };
        if vm.code.is_none() {
            let Some(c) = self.take_chunk() else {
                return self.reclaim_some();
            };
            let pa = self.chunk_pa(c);
            crate::bench::write_guest_code(pa);
            if !self.call(
                Kind::Donate1,
                HostCall::Donate,
                [vm.handle, pa, CODE_IPA, perms::R | perms::X, 1],
                success,
            ) {
                self.give_chunk(c);
                return;
            }
            vm.code = Some(c);
            self.set_vm(slot, vm);
            self.call(
                Kind::VcpuCreate,
                HostCall::VcpuCreate,
                [vm.handle, 0, CODE_IPA, 0, 0],
                success,
            );
            return;
        }
        self.call(
            Kind::VcpuRun,
            HostCall::VcpuRun,
            [vm.handle, 0, 0, 0, 0],
            |r| {
                r[0] == Status::Success.raw()
                    && matches!(
                        Exit::decode([r[1], r[2], r[3]]),
                        Some(Exit::HostCall { .. })
                    )
            },
        );
    }

    fn destroy(&mut self, slot: usize) {
        let Some(vm) = self.vms.get(slot).copied().flatten() else {
            return self.create(slot);
        };
        if !self.call(
            Kind::VmDestroy,
            HostCall::VmDestroy,
            [vm.handle, 0, 0, 0, 0],
            success,
        ) {
            return;
        }
        if let Some(v) = self.vms.get_mut(slot) {
            *v = None;
        }
        // The pool is the host's again at once; a lent page never left it.
        for c in vm.pool.into_iter().flatten().chain(vm.shared) {
            self.give_chunk(c);
        }
        // The VM's own pages wait to be reclaimed.
        let owned = vm
            .donated
            .into_iter()
            .flatten()
            .chain(vm.code.map(|c| (c, 1)));
        for (chunk, pages) in owned {
            if let Some(d) = self.dead.iter_mut().find(|d| d.is_none()) {
                *d = Some(Dead {
                    chunk,
                    pages,
                    next: 0,
                });
            }
        }
    }

    /// Reclaims the next page of a destroyed VM, if any (else `Version`).
    fn reclaim_some(&mut self) {
        let Some(at) = self.dead.iter().position(Option::is_some) else {
            self.call(Kind::Version, HostCall::Version, [0; 5], success);
            return;
        };
        let Some(Some(mut d)) = self.dead.get(at).copied() else {
            return;
        };
        let pa = self
            .chunk_pa(d.chunk)
            .wrapping_add(d.next.wrapping_mul(isola_abi::PAGE_SIZE));
        self.call(Kind::Reclaim, HostCall::Reclaim, [pa, 0, 0, 0, 0], success);
        d.next = d.next.wrapping_add(1);
        let slot = self.dead.get_mut(at);
        if d.next >= d.pages {
            if let Some(s) = slot {
                *s = None;
            }
            self.give_chunk(d.chunk);
        } else if let Some(s) = slot {
            *s = Some(d);
        }
    }

    /// Destroys every VM and reclaims every page: the host gets all of its
    /// memory back.
    fn finish(&mut self) {
        for slot in 0..VMS {
            if self.vms.get(slot).is_some_and(Option::is_some) {
                self.destroy(slot);
            }
        }
        while self.dead.iter().any(Option::is_some) {
            self.reclaim_some();
        }
    }
}

fn success(r: [u64; 4]) -> bool {
    r[0] == Status::Success.raw()
}

/// The boot CPU's part while the others storm: keeps its virtual timer
/// armed [`SLICE_TICKS`] ahead until every other CPU is done. Under `-icount`, QEMU runs the CPUs in turn, each for a
/// slice sized by the nearest virtual timer deadline over the CPUs' count;
/// without a near deadline a slice can last millions of instructions, and
/// every lock wait would become a wait for the holder's next turn (QEMU's
/// lock-holder preemption, not the engine's). A deadline always near keeps
/// the slices short, so the CPUs interleave finely, as they run in
/// parallel on hardware.
fn tick(cpus: usize) {
    READY.fetch_add(1, Ordering::AcqRel);
    let done = || {
        DONE.iter()
            .take(cpus)
            .skip(1)
            .all(|d| d.load(Ordering::Acquire))
    };
    // Re-armed on every pass: QEMU gives this CPU a turn every round, and
    // a round is shorter than the deadline, so it never passes unarmed.
    while !done() {
        arm_timer();
    }
    disarm_timer();
    if let Some(d) = DONE.first() {
        d.store(true, Ordering::Release);
    }
}

/// One storming CPU's part: [`CALLS`] calls, then every VM destroyed and
/// every page reclaimed.
fn storm(cpu: usize, cpus: usize) {
    READY.fetch_add(1, Ordering::AcqRel);
    while READY.load(Ordering::Acquire) < cpus {
        core::hint::spin_loop();
    }
    let mut me = Cpu::new(cpu);
    for _ in 0..CALLS {
        me.step();
    }
    me.finish();
    if let Some(d) = DONE.get(cpu) {
        d.store(true, Ordering::Release);
    }
}

/// The boot CPU's part: starts every other CPU (`mpidrs[i]`) at `entry`,
/// keeps QEMU's round robin fine ([`tick`]) while they storm, waits until
/// they are off, and reports. Whether every call did what it should within
/// the bound.
pub fn main(mpidrs: &[u64], entry: u64) -> bool {
    let cpus = mpidrs.len().clamp(1, CPUS_MAX);
    measure_idle();
    if cpus == 1 {
        // Alone: the figures of the idle machine (each call's own work).
        storm(0, 1);
        return report(1);
    }
    JOIN.store(cpus, Ordering::Release);
    for (i, &mpidr) in mpidrs.iter().enumerate().take(cpus).skip(1) {
        let r = psci(isola_abi::psci::CPU_ON, mpidr, entry, i as u64);
        if r != 0 {
            fail(format_args!("storm: PSCI CPU_ON of cpu {i} returned {r}"));
            JOIN.store(0, Ordering::Release);
            return false;
        }
    }
    tick(cpus);
    for &mpidr in mpidrs.iter().take(cpus).skip(1) {
        while psci(AFFINITY_INFO, mpidr, 0, 0) != AFFINITY_OFF {
            core::hint::spin_loop();
        }
    }
    JOIN.store(0, Ordering::Release);
    report(cpus)
}

/// Times each [`LOCK_FREE`] kind on the idle machine (only this CPU runs):
/// the most of eight calls.
fn measure_idle() {
    for _ in 0..8 {
        let t0 = now();
        compute();
        IDLE_COMPUTE.fetch_max(now().wrapping_sub(t0), Ordering::Relaxed);
    }
    // A VM of its own, for `Accounting` `Vm` and `VcpuRun`, torn down after.
    let mut me = Cpu::new(0);
    me.create(0);
    me.run(0);
    let vm = me.vms.first().copied().flatten().map_or(0, |v| v.handle);
    for (kind, idle) in LOCK_FREE.iter().zip(&IDLE) {
        let (id, args) = match kind {
            Kind::AccountingTotals => (HostCall::Accounting, [Accounting::Totals as u64, 0]),
            Kind::AccountingSharing => (HostCall::Accounting, [Accounting::Sharing as u64, 0]),
            Kind::AccountingVm => (HostCall::Accounting, [Accounting::Vm as u64, vm]),
            Kind::VcpuRun => (HostCall::VcpuRun, [vm, 0]),
            _ => (HostCall::Version, [0, 0]),
        };
        for _ in 0..8 {
            let t0 = now();
            hvc5(id as u64, [args[0], args[1], 0, 0, 0]);
            idle.fetch_max(now().wrapping_sub(t0), Ordering::Relaxed);
        }
    }
    me.finish();
    // What that set-up counted is the storm's business no more.
    if let Some(row) = STATS.first() {
        for s in row {
            s.calls.store(0, Ordering::Relaxed);
            s.ticks.store(0, Ordering::Relaxed);
            s.max.store(0, Ordering::Relaxed);
        }
    }
}

/// A secondary CPU's part: returns at once unless [`main`] started it;
/// then it storms and turns itself off (never returning).
pub fn secondary(index: usize) {
    let cpus = JOIN.load(Ordering::Acquire);
    if cpus == 0 || index >= cpus {
        return;
    }
    storm(index, cpus);
    loop {
        psci(isola_abi::psci::CPU_OFF, 0, 0, 0);
    }
}

/// Prints the figures (`storm stats` lines, which the harness shows but does
/// not compare) and the verdict lines.
fn report(cpus: usize) -> bool {
    // The storming CPUs' rows: every CPU but the ticker (CPU 0), or CPU 0
    // when it storms alone.
    let first = usize::from(cpus > 1);
    let mut all_done = true;
    for d in DONE.iter().take(cpus) {
        all_done &= d.load(Ordering::Acquire);
    }
    let mut slowest = 0_u64;
    let mut calls = 0_u64;
    for kind in ALL_KINDS {
        let (mut n, mut sum, mut max) = (0_u64, 0_u64, 0_u64);
        for row in STATS.iter().take(cpus).skip(first) {
            if let Some(s) = row.get(kind as usize) {
                n = n.wrapping_add(s.calls.load(Ordering::Relaxed));
                sum = sum.wrapping_add(s.ticks.load(Ordering::Relaxed));
                max = max.max(s.max.load(Ordering::Relaxed));
            }
        }
        calls = calls.wrapping_add(n);
        slowest = slowest.max(max);
        say!(
            "storm stats: {kind:?}: {n} calls, mean {} ticks, max {max} ticks",
            sum.checked_div(n).unwrap_or(0)
        );
    }
    // The lock-free calls: stretched no more than plain work was (its
    // worst stretch, an eighth more), plus two rounds of turns (a call may
    // start just after this CPU's turn and end just before its next).
    let most = |kind: Kind| {
        STATS
            .iter()
            .take(cpus)
            .skip(first)
            .filter_map(|row| row.get(kind as usize))
            .map(|s| s.max.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    };
    let idle_compute = IDLE_COMPUTE.load(Ordering::Relaxed);
    // Stretch in hundredths.
    let stretch = most(Kind::Compute)
        .saturating_mul(100)
        .checked_div(idle_compute)
        .unwrap_or(u64::MAX);
    let allowed = stretch.saturating_mul(9) / 8;
    say!(
        "storm stats: plain work: idle {idle_compute} ticks, at most {} ticks: stretched {}.{:02} times; lock-free calls may be stretched {}.{:02} times",
        most(Kind::Compute),
        stretch / 100,
        stretch % 100,
        allowed / 100,
        allowed % 100
    );
    let mut lock_free_ok = true;
    for (kind, idle) in LOCK_FREE.iter().zip(&IDLE) {
        let idle = idle.load(Ordering::Relaxed);
        let bound = (idle.saturating_mul(allowed) / 100).saturating_add(2 * SLICE_TICKS);
        let max = most(*kind);
        say!("storm stats: {kind:?}: idle {idle} ticks, bound {bound}, max {max}");
        if max > bound {
            lock_free_ok = false;
            fail(format_args!(
                "storm: a lock-free {kind:?} took {max} ticks, above {bound} (its idle {idle} stretched as much as plain work, an eighth more, plus two rounds): it waited for something"
            ));
        }
    }
    if lock_free_ok {
        say!(
            "storm: no Version, Accounting or VcpuRun was stretched more than plain work: none waited for another CPU's lock"
        );
    }
    let wrong: u64 = WRONG.iter().map(|w| w.load(Ordering::Relaxed)).sum();
    say!("storm stats: {calls} calls in all, the slowest {slowest} ticks");
    let ok = all_done && wrong == 0;
    if ok {
        say!(
            "storm: {} CPUs, {CALLS} valid random calls each, and every VM torn down: every call did what it should",
            cpus.saturating_sub(first)
        );
    } else {
        fail(format_args!(
            "storm: {wrong} calls did not do what they should (every CPU done: {all_done})"
        ));
    }
    if slowest <= BOUND {
        say!("storm: no call took longer than {BOUND} ticks");
    } else {
        fail(format_args!(
            "storm: a call took {slowest} ticks, above the bound of {BOUND}"
        ));
    }
    ok && lock_free_ok && slowest <= BOUND
}
