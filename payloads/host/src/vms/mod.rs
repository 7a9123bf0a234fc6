//! The host's VM test: create VMs from the guest image, run their vCPUs on
//! every host CPU at once, emulate their console, answer their calls, back
//! their memory faults, attack the engine from the host side, tear every VM
//! down and check every page came back zeroed and the engine's accounting
//! is exact.
//!
//! [`main`] runs on the boot CPU: it sets up alone, starts every other host
//! CPU into [`secondary`], and all of them run vCPUs, making a bounded storm
//! of random host calls between runs; two CPUs together attack a running
//! vCPU; the others turn off and the boot CPU tears down alone.
//!
//! Invariants:
//! - A vCPU's host-side record is touched only by the CPU that claimed it
//!   (state `READY -> RUNNING` by compare-exchange, Acquire; released with a
//!   Release store), so each vCPU runs on at most one host CPU at a time by
//!   the host's own choice — the engine's `Busy` is tested separately.
//! - VM records are written by CPU 0 only before it starts the other CPUs
//!   and after they are off again; in between every CPU only reads them (or
//!   uses atomics).
//! - Pages come from `[POOL_BASE, POOL_END)`, host RAM no one else uses, by a
//!   bump allocator; none is reused, so a page's history is simple.
//! - Every access the host makes to a page it may not own (attacks, shared
//!   pages) goes through a probe that catches the injected synchronous
//!   external abort, so an engine bug is reported instead of crashing.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the test's phases on every CPU |
//! | `plan.rs` | what the test makes: its memory, VMs, vCPUs and their roles |
//! | `probe.rs` | the probe vectors and probes, cache maintenance, `VcpuRun` around the register probe |
//! | `records.rs` | the host-side record of every VM and vCPU |
//! | `pages.rs` | the pool of host pages the test donates from |
//! | `tally.rs` | checks and attacks counted and reported |
//! | `setup.rs` | creating the VMs and the attacks that need no running vCPU |
//! | `run.rs` | running vCPUs on every CPU, their exits, the storm, the running-vCPU attacks |
//! | `teardown.rs` | destroying, reclaiming, reporting every vCPU, the accounting |
//! | `linux/` | Debian's Linux kernel as a guest through the VMM, alone (`isola.test=guest`) or beside the VMs above (`isola.linux.guests=`) |

pub mod linux;
mod pages;
mod plan;
mod probe;
mod records;
mod run;
mod setup;
mod tally;
mod teardown;

use core::cell::UnsafeCell;

use isola_sync::RendezvousBarrier;
use isola_sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::calls::{AFFINITY_INFO, AFFINITY_OFF, psci};
use probe::{install_vectors, restore_vectors};
use run::{hold_run, run_vcpus, spin_attacks};
use setup::setup;
use tally::check;
use teardown::teardown;

// ---------------------------------------------------------------------------
// The phases.

/// CPUs taking part while the test runs (0 when it does not).
static JOIN: AtomicUsize = AtomicUsize::new(0);

/// Set by the boot CPU once every other CPU was started: 1 = go, 2 = give up.
static GO: AtomicU32 = AtomicU32::new(0);

/// The rendezvous of the CPUs taking part, sized by the boot CPU before it
/// starts the others.
struct BarrierCell(UnsafeCell<RendezvousBarrier>);
// SAFETY: replaced only by the boot CPU in `main` before it starts any other
// CPU (the Release store of `JOIN`, which every other CPU reads with Acquire
// before it waits); shared read-only (its methods take `&self`) afterwards.
unsafe impl Sync for BarrierCell {}
static BARRIER: BarrierCell = BarrierCell(UnsafeCell::new(RendezvousBarrier::new(1)));

fn barrier() -> &'static RendezvousBarrier {
    // SAFETY: see `BarrierCell`; only shared references are made after the
    // boot CPU's single write.
    unsafe { &*BARRIER.0.get() }
}

/// The boot CPU's part. Sets up every VM alone, then starts every other CPU
/// (`mpidrs[i]`, the boot CPU first) at the host's secondary `entry` with
/// context id `i` through PSCI `CPU_ON`, runs the vCPUs on all of them, waits
/// until the others are off again and tears down alone. (Other CPUs would
/// only spin during setup and teardown, and under TCG a spinning CPU takes
/// real time from the working one.) Returns whether every check passed.
pub fn main(mpidrs: &[u64], entry: u64) -> bool {
    let cpus = mpidrs.len().max(1);
    // SAFETY: no other CPU of the test runs yet (see `BarrierCell`).
    unsafe { *BARRIER.0.get() = RendezvousBarrier::new(cpus as u32) };
    let host_vectors = install_vectors();
    if setup(cpus).is_none() || !linux::setup_beside(mpidrs) {
        restore_vectors(host_vectors);
        return false;
    }
    JOIN.store(cpus, Ordering::Release);
    let mut started = true;
    for (i, &mpidr) in mpidrs.iter().enumerate().skip(1) {
        let r = psci(isola_abi::psci::CPU_ON, mpidr, entry, i as u64);
        if r != 0 {
            check(false, format_args!("PSCI CPU_ON of cpu {i} returned {r}"));
            started = false;
        }
    }
    GO.store(if started { 1 } else { 2 }, Ordering::Release);
    if started {
        run_phases(0, cpus);
    }
    for &mpidr in mpidrs.iter().skip(1) {
        while psci(AFFINITY_INFO, mpidr, 0, 0) != AFFINITY_OFF {
            core::hint::spin_loop();
        }
    }
    JOIN.store(0, Ordering::Release);
    if started {
        teardown(cpus);
    }
    restore_vectors(host_vectors);
    tally::failures() == 0
}

/// A secondary CPU's part, called first thing on every CPU the host starts.
/// Returns at once unless [`main`] started this CPU for the test; then it
/// takes part and turns the CPU off (never returning).
pub fn secondary(index: usize) {
    let cpus = JOIN.load(Ordering::Acquire);
    if cpus == 0 {
        return;
    }
    let go = loop {
        match GO.load(Ordering::Acquire) {
            0 => core::hint::spin_loop(),
            g => break g,
        }
    };
    if go == 1 {
        let host_vectors = install_vectors();
        run_phases(index, cpus);
        restore_vectors(host_vectors);
    }
    loop {
        psci(isola_abi::psci::CPU_OFF, 0, 0, 0);
    }
}

/// The host's tick while guests run, on the virtual timer: 250 Hz, as
/// Debian's kernel ticks.
const TICK_HZ: u64 = 250;

/// What every CPU does together, ticking on its virtual timer: run the
/// vCPUs (and any Linux guests beside them, to their end), then the
/// running-vCPU attacks, then one run each of a vCPU that never exits by
/// itself, which the host's tick must end.
fn run_phases(cpu: usize, cpus: usize) {
    barrier().wait();
    let ticking = crate::irq::init_cpu();
    if ticking {
        crate::irq::start_tick(crate::irq::frequency() / TICK_HZ);
    }
    run_vcpus(cpu, cpus);
    linux::finish(cpu);
    barrier().wait();
    spin_attacks(cpu, cpus);
    if ticking {
        // Again: the spinner's CPU stopped its tick for the attacks.
        crate::irq::start_tick(crate::irq::frequency() / TICK_HZ);
        hold_run(cpu, cpus);
    }
    crate::irq::stop_tick();
    tally::note_ticks(cpu, ticking);
    barrier().wait();
}
