//! The test's checks and attacks: each counted, each failure printed where
//! it happened.

use core::fmt;

use isola_abi::{Accounting, HostCall, Status};
use isola_sync::atomic::{AtomicU32, Ordering};

use crate::calls::{St, call, status};
use crate::console::say;

/// Checks made, and how many failed (each printed where it happened).
struct Tally {
    checks: AtomicU32,
    failures: AtomicU32,
}

static TALLY: Tally = Tally {
    checks: AtomicU32::new(0),
    failures: AtomicU32::new(0),
};

/// Failed checks so far.
pub(super) fn failures() -> u32 {
    TALLY.failures.load(Ordering::Acquire)
}

/// Checks made so far.
pub(super) fn checks() -> u32 {
    TALLY.checks.load(Ordering::Relaxed)
}

/// Counts a failure reported by a line of its own.
pub(super) fn count_failure() {
    TALLY.failures.fetch_add(1, Ordering::Relaxed);
}

/// Counts a check; prints and counts a failure.
pub(super) fn check(ok: bool, what: fmt::Arguments<'_>) -> bool {
    TALLY.checks.fetch_add(1, Ordering::Relaxed);
    if !ok {
        TALLY.failures.fetch_add(1, Ordering::Relaxed);
        say!("vms: FAIL {what}");
    }
    ok
}

/// Prints a host-side attack's outcome; refused means any defined error.
pub(super) fn attack(name: &str, x0: u64) {
    let refused = matches!(status(x0), Ok(s) if s != Status::Success);
    TALLY.checks.fetch_add(1, Ordering::Relaxed);
    if refused {
        say!("attack {name}: refused ({})", St(x0));
    } else {
        TALLY.failures.fetch_add(1, Ordering::Relaxed);
        say!("attack {name}: FAIL allowed ({})", St(x0));
    }
}

/// Prints a probe attack's outcome: refused if the engine injected an abort.
pub(super) fn attack_probe(name: &str, r: Result<(), u64>) {
    TALLY.checks.fetch_add(1, Ordering::Relaxed);
    match r {
        Err(esr) if is_sea(esr) => say!("attack {name}: refused (SEA)"),
        Err(esr) => {
            TALLY.failures.fetch_add(1, Ordering::Relaxed);
            say!("attack {name}: FAIL unexpected fault (ESR {esr:#x})");
        }
        Ok(()) => {
            TALLY.failures.fetch_add(1, Ordering::Relaxed);
            say!("attack {name}: FAIL allowed");
        }
    }
}

/// A synchronous external abort (data or instruction abort, FSC 0x10).
pub(super) fn is_sea(esr: u64) -> bool {
    let ec = esr >> 26 & 0x3f;
    matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) && esr & 0x3f == 0x10
}

pub(super) fn attack_outcome(name: &str, ok: bool, what: fmt::Arguments<'_>) {
    TALLY.checks.fetch_add(1, Ordering::Relaxed);
    if ok {
        say!("attack {name}: contained ({what})");
    } else {
        TALLY.failures.fetch_add(1, Ordering::Relaxed);
        say!("attack {name}: FAIL ({what})");
    }
}

/// Runs that ended with `Exit::Irq`, per CPU.
static IRQ_EXITS: [AtomicU32; isola_layout::MAX_CPUS] =
    [const { AtomicU32::new(0) }; isola_layout::MAX_CPUS];
/// CPUs that ticked during the run, took at least one tick, saw at least
/// one run end with `Exit::Irq`, and took no interrupt the engine should
/// have kept from them.
static TICKED: AtomicU32 = AtomicU32::new(0);

/// Counts a run that ended with `Exit::Irq` on this CPU.
pub(super) fn note_irq_exit() {
    if let Some(c) = IRQ_EXITS.get(crate::irq::this_cpu()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// CPU `cpu`'s verdict on its tick, once it stopped ticking: it took timer
/// interrupts, runs ended with `Exit::Irq` on it, and no interrupt of the
/// engine's (maintenance, EL2 timer) reached it.
pub(super) fn note_ticks(cpu: usize, ticking: bool) {
    let ticks = crate::irq::ticks(cpu);
    let exits = IRQ_EXITS.get(cpu).map_or(0, |c| c.load(Ordering::Relaxed));
    let (strays, last) = crate::irq::strays(cpu);
    let ok = check(
        ticking && ticks > 0 && exits > 0 && strays == 0,
        format_args!(
            "cpu {cpu}: ticking {ticking}, {ticks} ticks, {exits} runs ended by Exit::Irq, {strays} stray interrupts (last INTID {last})"
        ),
    );
    if ok {
        TICKED.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many CPUs passed [`note_ticks`].
pub(super) fn ticked() -> u32 {
    TICKED.load(Ordering::Relaxed)
}

/// Accounting totals: `(host, engine, guest)`.
pub(super) fn totals() -> [u64; 3] {
    let r = call(
        HostCall::Accounting,
        [Accounting::Totals as u64, 0, 0, 0, 0, 0],
    );
    [r[1], r[2], r[3]]
}

/// Accounting sharing counts.
pub(super) fn sharing() -> [u64; 3] {
    let r = call(
        HostCall::Accounting,
        [Accounting::Sharing as u64, 0, 0, 0, 0, 0],
    );
    [r[1], r[2], r[3]]
}
