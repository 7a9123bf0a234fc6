//! PSCI races through the engine's relay (`isola.test=psci`, 4 CPUs): two
//! CPUs `CPU_ON` a third at the same moment; one CPU `CPU_ON`s another
//! while that one enters a power-down `CPU_SUSPEND`; a power-down suspend
//! alone. Each has its defined result, and nothing is lost: the target
//! starts exactly once per successful `CPU_ON`, and no pending entry stays
//! behind (a later `CPU_ON` of a CPU that is off succeeds).
//!
//! QEMU's firmware implements `CPU_SUSPEND` as a standby (`WFI`, then
//! `SUCCESS`) whatever the state asked for: a power-down suspend returns to
//! its caller, so the relay's return path is what runs here; a CPU resuming
//! at its entry point after a real power-down (the engine's warm entry
//! taking the resume entry) is the path every started CPU takes, which the
//! first race exercises.
//!
//! Invariant: the boot CPU commands; CPUs 1 and 2 obey their mailbox
//! (`MAILBOX`), one command at a time, and each CPU that starts counts
//! itself (`STARTS`).

use isola_abi::psci;
use isola_sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::calls::{AFFINITY_INFO, AFFINITY_OFF, psci as call};
use crate::console::{fail, say};

/// Rounds of each race.
const ROUNDS: u32 = 16;
/// PSCI's `ALREADY_ON` and `ON_PENDING`.
const ALREADY_ON: i64 = -4;
const ON_PENDING: i64 = -5;
/// `CPU_SUSPEND`'s power state: a power-down state (`StateType`, bit 16).
const POWER_DOWN: u64 = 1 << 16;

/// Whether this test runs (the secondaries' entry asks).
static ACTIVE: AtomicU32 = AtomicU32::new(0);
/// What each CPU last started for: how many times it entered.
static STARTS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
/// Commands for CPUs 1 and 2 (0: wait; see [`Command`]), with the round
/// they are for in bits 8.., and their results.
static MAILBOX: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static RESULT: [AtomicU64; 4] = [const { AtomicU64::new(NONE) }; 4];
/// No result yet.
const NONE: u64 = u64::MAX;
/// The round everybody starts on at once.
static GO: AtomicU32 = AtomicU32::new(0);
/// CPU 3, started, stays on until this reaches the round: both `CPU_ON`s
/// of it have returned by then, so the second cannot start it again.
static RELEASE: AtomicU32 = AtomicU32::new(0);
/// MPIDRs and the secondary entry, for the commanded CPUs.
static MPIDR: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static ENTRY: AtomicU64 = AtomicU64::new(0);

/// A command in a mailbox.
#[repr(u64)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    /// `CPU_ON` of CPU 3 when the round starts.
    StartThree = 1,
    /// `CPU_ON` of CPU 1 when the round starts.
    StartOne = 2,
    /// A power-down `CPU_SUSPEND` when the round starts, woken by its own
    /// timer a little later.
    Suspend = 3,
    /// `CPU_OFF`.
    Off = 4,
}

/// The boot CPU's part; `false` if a check failed.
pub fn main(p: &isola_fdt::Platform, entry: u64) -> bool {
    let cpus = p.cpus();
    if cpus.len() < 4 {
        fail(format_args!("psci: needs 4 CPUs, has {}", cpus.len()));
        return false;
    }
    for (m, &id) in MPIDR.iter().zip(cpus) {
        m.store(id, Ordering::Relaxed);
    }
    ENTRY.store(entry, Ordering::Relaxed);
    ACTIVE.store(1, Ordering::Release);
    let mut ok = true;
    for i in [1usize, 2] {
        ok &= call(psci::CPU_ON, mpidr(i), entry, i as u64) == 0;
    }
    ok &= two_starts_at_once() && start_against_suspend() && power_down_alone();
    for i in [1usize, 2] {
        command(i, Command::Off, 0);
        wait_off(i);
    }
    // Nothing left pending: CPU 1, off again, starts once more.
    let before = starts(1);
    let r = call(psci::CPU_ON, mpidr(1), entry, 1);
    if r == 0 {
        wait_starts(1, before.wrapping_add(1));
    }
    command(1, Command::Off, 0);
    wait_off(1);
    if r == 0 && starts(1) == before.wrapping_add(1) {
        say!("psci: afterwards cpu 1, off, started once more: nothing was left pending");
    } else {
        fail(format_args!(
            "psci: CPU_ON of cpu 1 at the end: {r}, started {} times",
            starts(1).wrapping_sub(before)
        ));
        ok = false;
    }
    ACTIVE.store(0, Ordering::Release);
    ok
}

fn mpidr(i: usize) -> u64 {
    MPIDR.get(i).map_or(0, |m| m.load(Ordering::Relaxed))
}

fn starts(i: usize) -> u32 {
    STARTS.get(i).map_or(0, |s| s.load(Ordering::Acquire))
}

/// Waits until CPU `i` has started `n` times in all.
fn wait_starts(i: usize, n: u32) {
    while starts(i) < n {
        core::hint::spin_loop();
    }
}

fn wait_off(i: usize) {
    while call(AFFINITY_INFO, mpidr(i), 0, 0) != AFFINITY_OFF {
        core::hint::spin_loop();
    }
}

/// Gives CPU `i` a command for `round` (its result slot emptied).
fn command(i: usize, c: Command, round: u32) {
    if let (Some(m), Some(r)) = (MAILBOX.get(i), RESULT.get(i)) {
        r.store(NONE, Ordering::Relaxed);
        m.store(c as u64 | u64::from(round) << 8, Ordering::Release);
    }
}

/// CPU `i`'s result, once it has one.
fn result(i: usize) -> i64 {
    let Some(r) = RESULT.get(i) else {
        return i64::MIN;
    };
    loop {
        let v = r.load(Ordering::Acquire);
        if v != NONE {
            return v as i64;
        }
        core::hint::spin_loop();
    }
}

/// Race 1: CPUs 1 and 2 `CPU_ON` CPU 3 at the same moment, `ROUNDS` times.
/// Exactly one gets `SUCCESS`, the other `ALREADY_ON` or `ON_PENDING`; CPU
/// 3 starts exactly once each round.
fn two_starts_at_once() -> bool {
    let mut ok = true;
    for round in 1..=ROUNDS {
        let before = starts(3);
        command(1, Command::StartThree, round);
        command(2, Command::StartThree, round);
        GO.store(round, Ordering::Release);
        let (a, b) = (result(1), result(2));
        // QEMU's firmware starts a CPU a moment after its CPU_ON returns
        // (AFFINITY_INFO says OFF until then): wait for each start the
        // results announce, let CPU 3 go, wait until it is off.
        let successes = u32::from(a == 0).wrapping_add(u32::from(b == 0));
        wait_starts(3, before.wrapping_add(successes));
        RELEASE.store(round, Ordering::Release);
        wait_off(3);
        let one_won = matches!(
            (a, b),
            (0, ALREADY_ON | ON_PENDING) | (ALREADY_ON | ON_PENDING, 0)
        );
        if !one_won || starts(3) != before.wrapping_add(1) {
            fail(format_args!(
                "psci: round {round}: CPU_ON of cpu 3 from cpus 1 and 2 returned {a} and {b}; it started {} times",
                starts(3).wrapping_sub(before)
            ));
            ok = false;
        }
    }
    if ok {
        say!(
            "psci: {ROUNDS} rounds of two CPU_ONs of cpu 3 at once: one SUCCESS, the other ALREADY_ON or ON_PENDING; cpu 3 started once each"
        );
    }
    ok
}

/// Race 2: CPU 1 enters a power-down `CPU_SUSPEND` while CPU 2 `CPU_ON`s
/// it. The suspend returns `SUCCESS` (QEMU suspends in standby); the
/// `CPU_ON` is `ALREADY_ON` (the CPU is on, suspending or not); CPU 1 does
/// not start again.
fn start_against_suspend() -> bool {
    let mut ok = true;
    for round in 1..=ROUNDS {
        let before = starts(1);
        let go = ROUNDS.wrapping_add(round);
        command(1, Command::Suspend, go);
        command(2, Command::StartOne, go);
        GO.store(go, Ordering::Release);
        let (s, on) = (result(1), result(2));
        if s != 0 || on != ALREADY_ON || starts(1) != before {
            fail(format_args!(
                "psci: round {round}: CPU_SUSPEND returned {s}, CPU_ON against it {on}; cpu 1 started {} times",
                starts(1).wrapping_sub(before)
            ));
            ok = false;
        }
    }
    if ok {
        say!(
            "psci: {ROUNDS} rounds of CPU_ON of cpu 1 against its power-down CPU_SUSPEND: the suspend returned SUCCESS, the CPU_ON ALREADY_ON"
        );
    }
    ok
}

/// A power-down `CPU_SUSPEND` alone: `SUCCESS` once CPU 1's timer wakes it
/// (QEMU's standby), and its resume entry is gone (a `CPU_ON` of it is
/// `ALREADY_ON`, not `ON_PENDING`).
fn power_down_alone() -> bool {
    let round = ROUNDS.wrapping_mul(2).wrapping_add(1);
    command(1, Command::Suspend, round);
    GO.store(round, Ordering::Release);
    let s = result(1);
    let on = call(psci::CPU_ON, mpidr(1), ENTRY.load(Ordering::Relaxed), 1);
    if s == 0 && on == ALREADY_ON {
        say!(
            "psci: a power-down CPU_SUSPEND alone returned SUCCESS; no resume entry stayed pending"
        );
        true
    } else {
        fail(format_args!(
            "psci: CPU_SUSPEND alone returned {s}; CPU_ON of it then {on}"
        ));
        false
    }
}

/// A secondary CPU's entry while this test runs (`Some` never returns);
/// `None` when it does not.
pub fn secondary(i: usize) -> Option<core::convert::Infallible> {
    if ACTIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    if let Some(s) = STARTS.get(i) {
        s.fetch_add(1, Ordering::AcqRel);
    }
    if i == 3 {
        // CPU 3 only shows it started: on until both CPU_ONs of this round
        // returned, then off.
        let round = GO.load(Ordering::Acquire);
        while RELEASE.load(Ordering::Acquire) < round {
            core::hint::spin_loop();
        }
        loop {
            call(psci::CPU_OFF, 0, 0, 0);
        }
    }
    let initialised = crate::irq::init_cpu();
    let Some(mailbox) = MAILBOX.get(i) else {
        loop {
            call(psci::CPU_OFF, 0, 0, 0);
        }
    };
    loop {
        let m = mailbox.swap(0, Ordering::Acquire);
        if m == 0 {
            core::hint::spin_loop();
            continue;
        }
        let round = (m >> 8) as u32;
        let c = m & 0xff;
        if c == Command::Off as u64 {
            loop {
                call(psci::CPU_OFF, 0, 0, 0);
            }
        }
        // All at once: wait for the round to start.
        while GO.load(Ordering::Acquire) < round {
            core::hint::spin_loop();
        }
        let r = match c {
            x if x == Command::StartThree as u64 => {
                call(psci::CPU_ON, mpidr(3), ENTRY.load(Ordering::Relaxed), 3)
            }
            x if x == Command::StartOne as u64 => {
                call(psci::CPU_ON, mpidr(1), ENTRY.load(Ordering::Relaxed), 1)
            }
            _ => suspend(initialised),
        };
        if let Some(res) = RESULT.get(i) {
            res.store(r as u64, Ordering::Release);
        }
    }
}

/// A power-down `CPU_SUSPEND`, woken by this CPU's own timer two
/// milliseconds on (`WFI` wakes on a pending interrupt, masked or not).
fn suspend(timer: bool) -> i64 {
    if timer {
        crate::irq::start_tick(crate::irq::frequency() / 500);
    }
    let r = call(
        psci::CPU_SUSPEND,
        POWER_DOWN,
        ENTRY.load(Ordering::Relaxed),
        1,
    );
    crate::irq::stop_tick();
    r
}
