//! The test's checks and attacks: each counted, each failure printed where
//! it happened.

use core::fmt;

use isola_abi::Status;
use isola_sync::atomic::{AtomicU32, Ordering};

use crate::calls::{St, status};
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
