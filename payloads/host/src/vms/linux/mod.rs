//! Real guests: Debian's arm64 Linux kernel, run by the `isola-vmm` VMM on
//! every host CPU (docs/guests.md, "A Linux guest").
//!
//! `cargo xtask guest` stages the kernel `Image` and an initramfs in host
//! RAM with QEMU's generic loader (at `isola_layout::GUEST_KERNEL_STAGE`
//! and `GUEST_INITRD_STAGE`) and puts their lengths on the host's command
//! line (`isola.linux=<kernel bytes>,<initramfs bytes>`). The host copies
//! them, and the device tree the VMM builds, into pages it then donates:
//! every page of guest RAM belongs to the guest before its first
//! instruction, and the host's reads of it are refused.
//!
//! Two ways to run:
//! - `isola.test=guest`: one guest of 4 vCPUs on every host CPU, its whole
//!   console shown, then the figures (time to the first userspace line and
//!   to power-off, exits of each kind) ([`main`]);
//! - `isola.test=vms` with `isola.linux.guests=N`: N such guests beside the
//!   VM test's attack VMs, on the same CPUs at once; only their init's
//!   lines are shown, and the VM test's exact page accounting covers them
//!   ([`setup_beside`], [`step`], [`finish`], [`teardown`]).
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the configuration, the guest-only run on every CPU |
//! | `guest.rs` | one guest's records: its VMM, claims, console, figures |
//! | `create.rs` | memory, loading, `VmCreate`, donation, vCPUs, the host's refused reads |
//! | `run.rs` | claiming vCPUs, running them, their exits, kicks and idling |
//! | `teardown.rs` | destroying, reclaiming, the zero checks, the report |
//!
//! Invariants:
//! - Guest records are made by the boot CPU before it starts any other CPU
//!   and are freed by it after they are all off; in between every CPU only
//!   reaches them through `&'static` references and each guest's lock.
//! - A vCPU runs on at most one host CPU: it is claimed under its guest's
//!   lock and released under it.

mod create;
mod guest;
mod run;
mod teardown;

use isola_sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::probe::{install_vectors, restore_vectors};
use crate::calls::{AFFINITY_INFO, AFFINITY_OFF, psci};
use crate::console::say;

pub(super) use run::{finish, step};
pub(super) use teardown::teardown;

/// Most guests at once (the Linux pool holds three: `isola_layout`).
pub(super) const MAX_GUESTS: usize = 3;

/// Staged kernel bytes (0: no kernel staged, no Linux guests).
static KERNEL_LEN: AtomicU64 = AtomicU64::new(0);
/// Staged initramfs bytes.
static INITRD_LEN: AtomicU64 = AtomicU64::new(0);
/// Guests to run beside the VM test (`isola.linux.guests=`).
static BESIDE: AtomicUsize = AtomicUsize::new(0);

/// Reads `isola.linux=<kernel>,<initramfs>` and `isola.linux.guests=<n>`
/// from the host's command line. Called by the boot CPU before any test.
pub fn configure(bootargs: &str) {
    for word in bootargs.split(' ') {
        if let Some(v) = word.strip_prefix("isola.linux=") {
            let mut it = v.split(',').map(parse_u64);
            if let (Some(Some(k)), Some(Some(i))) = (it.next(), it.next()) {
                KERNEL_LEN.store(k, Ordering::Relaxed);
                INITRD_LEN.store(i, Ordering::Relaxed);
            }
        } else if let Some(v) = word.strip_prefix("isola.linux.guests=") {
            let n = parse_u64(v).unwrap_or(0) as usize;
            BESIDE.store(n.min(MAX_GUESTS), Ordering::Relaxed);
        }
    }
}

/// A decimal or `0x` hexadecimal number.
fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// How many Linux guests the VM test runs beside its own VMs (0 when no
/// kernel is staged).
pub(super) fn beside() -> usize {
    if KERNEL_LEN.load(Ordering::Relaxed) == 0 {
        0
    } else {
        BESIDE.load(Ordering::Relaxed)
    }
}

/// The VM test's setup, after its own VMs: makes the Linux guests that run
/// beside them (CPU 0, alone). Whether every one was made.
pub(super) fn setup_beside(mpidrs: &[u64]) -> bool {
    let n = beside();
    if n == 0 {
        return true;
    }
    run::init(mpidrs);
    (0..n).all(|k| create::create(k, guest::Console::InitOnly).is_some())
}

/// CPUs taking part in the guest-only run (0 when it does not).
static JOIN: AtomicUsize = AtomicUsize::new(0);
/// 1 = go, 2 = give up, set by the boot CPU once it started the others.
static GO: AtomicU32 = AtomicU32::new(0);

/// `isola.test=guest`: one Linux guest of 4 vCPUs on every host CPU (the
/// boot CPU makes it alone, every CPU runs it, the boot CPU tears it down
/// alone once the others are off). Whether every check passed.
pub fn main(mpidrs: &[u64], entry: u64) -> bool {
    if KERNEL_LEN.load(Ordering::Relaxed) == 0 {
        say!("linux: FAIL no kernel staged (isola.linux= is missing; run `cargo xtask guest`)");
        return false;
    }
    let host_vectors = install_vectors();
    let before = teardown::totals();
    // On one CPU the PMU's all-EL count is every instruction the machine
    // runs: the figures give it beside the counter's ticks.
    if mpidrs.len() == 1 && crate::pmu::setup().is_some() {
        let a = crate::pmu::read().total;
        let b = crate::pmu::read().total;
        guest::COUNTING.store(b != a, Ordering::Relaxed);
    }
    run::init(mpidrs);
    let made = create::create(0, guest::Console::Everything).is_some();
    if !made {
        restore_vectors(host_vectors);
        return false;
    }
    let cpus = mpidrs.len().max(1);
    JOIN.store(cpus, Ordering::Release);
    let mut started = true;
    for (i, &mpidr) in mpidrs.iter().enumerate().skip(1) {
        let r = psci(isola_abi::psci::CPU_ON, mpidr, entry, i as u64);
        if r != 0 {
            say!("linux: FAIL PSCI CPU_ON of cpu {i} returned {r}");
            started = false;
        }
    }
    GO.store(if started { 1 } else { 2 }, Ordering::Release);
    if started {
        run_ticking(0);
    }
    for &mpidr in mpidrs.iter().skip(1) {
        while psci(AFFINITY_INFO, mpidr, 0, 0) != AFFINITY_OFF {
            core::hint::spin_loop();
        }
    }
    JOIN.store(0, Ordering::Release);
    guest::report_all();
    let (ticks, kicks) = (0..cpus).fold((0u64, 0u64), |(t, k), c| {
        (
            t.saturating_add(crate::irq::ticks(c)),
            k.saturating_add(crate::irq::kicks(c)),
        )
    });
    say!("linux: figures: the host's CPUs took {ticks} ticks and {kicks} kicks");
    let passed = guest::all_passed();
    let mut ok = teardown(Some(before)) && started && passed;
    // The engine's own interrupts (maintenance, its timer) must never have
    // reached the host, and every CPU ticked.
    for cpu in 0..cpus {
        let (strays, last) = crate::irq::strays(cpu);
        if strays > 0 || TICKING.get(cpu).is_some_and(|t| !t.load(Ordering::Relaxed)) {
            say!(
                "linux: FAIL cpu {cpu}: {strays} interrupts that are not the host's (last INTID {last}), or no tick"
            );
            ok = false;
        }
    }
    // Every guest record and VMM gone: the heap must be empty again.
    let (used, _) = crate::heap::usage();
    if used == 0 {
        say!("linux: host heap empty again after teardown");
    } else {
        say!("linux: FAIL {used} heap bytes still in use after teardown");
        ok = false;
    }
    restore_vectors(host_vectors);
    ok
}

/// The host's tick while it runs Linux guests alone: 250 Hz, as Debian's
/// kernel (and the VM test) ticks.
const TICK_HZ: u64 = 250;

/// Which CPUs of the guest-only run got their tick going.
static TICKING: [isola_sync::atomic::AtomicBool; isola_layout::MAX_CPUS] =
    [const { isola_sync::atomic::AtomicBool::new(false) }; isola_layout::MAX_CPUS];

/// One CPU's part of the guest-only run: its GIC interface on, ticking,
/// guests run until every one is done, the tick stopped.
fn run_ticking(cpu: usize) {
    let ticking = crate::irq::init_cpu();
    if let Some(t) = TICKING.get(cpu) {
        t.store(ticking, Ordering::Relaxed);
    }
    if ticking {
        crate::irq::start_tick(crate::irq::frequency() / TICK_HZ);
    }
    finish(cpu);
    crate::irq::stop_tick();
}

/// A secondary CPU's part of [`main`]: returns at once unless [`main`]
/// started it; then runs guests until they are done and turns the CPU off.
pub fn secondary(index: usize) {
    if JOIN.load(Ordering::Acquire) == 0 {
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
        run_ticking(index);
        restore_vectors(host_vectors);
    }
    loop {
        psci(isola_abi::psci::CPU_OFF, 0, 0, 0);
    }
}
