//! Running the Linux guests' vCPUs on every host CPU: claim a runnable
//! vCPU under its guest's lock, hand the engine its list registers, run it
//! to its next exit, give the exit to the VMM and do what it says; kick a
//! CPU whose running vCPU has a new interrupt; sleep in `WFI` when nothing
//! is runnable.
//!
//! Every CPU that runs them ticks (`crate::irq`, 250 Hz on its virtual
//! timer, interrupts unmasked), and the engine ends a guest's run at the
//! host's timer deadline: so no run lasts longer than a tick, and an idle
//! CPU wakes at least at every tick to look again (a waiting vCPU's timer
//! deadline, a stalled guest).
//!
//! Invariants:
//! - A CPU holds a guest's lock only between runs, never across a
//!   `VcpuRun`, and never two guests' locks at once.
//! - A CPU that finds nothing to run marks itself idle, then, with IRQs
//!   masked, looks once more and only then waits; a CPU that makes a vCPU
//!   runnable kicks every idle CPU after making it so (each side fences
//!   between its store and its load, and a kick pending since the look
//!   ends the `WFI` at once), so a wake-up is never lost.

use alloc::vec::Vec;

use isola_abi::{Exit, ExitStatus, HostCall, LrState, Status, lr};
use isola_sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use isola_vmm::vm::{Action, VcpuState};

use super::guest::Console;
use super::guest::{self, FREE, Guest, Outcome, State, VCPUS};
use crate::calls::{St, call};
use crate::console::say;
use crate::irq;

/// A guest that prints nothing for this long (counter time) has stopped
/// making progress: its run ends as `Stalled`. With its whole console
/// shown the kernel prints all through its boot; with `quiet` (beside the
/// VM test) it prints nothing until init, which on a loaded 2-core
/// machine, sharing the CPUs with the VM test, takes more than a minute.
fn stall_seconds(console: Console) -> u64 {
    match console {
        Console::Everything => 60,
        Console::InitOnly => 300,
    }
}

/// A vCPU's turn on a CPU lasts at most 1/this of a second (counter time):
/// 10 ms, a few runs (each ends at the host's next tick at the latest).
const TURNS_PER_SECOND: u64 = 100;

/// Looks made, on every CPU: where the next look starts.
static ROUND: AtomicUsize = AtomicUsize::new(0);

/// Which CPUs wait in `WFI` for work.
static IDLE: [AtomicBool; isola_layout::MAX_CPUS] =
    [const { AtomicBool::new(false) }; isola_layout::MAX_CPUS];
/// Each host CPU's MPIDR (for kicks).
static MPIDR: [AtomicU64; isola_layout::MAX_CPUS] =
    [const { AtomicU64::new(0) }; isola_layout::MAX_CPUS];

/// Boot CPU, before any guest runs: the CPUs' MPIDRs.
pub(super) fn init(mpidrs: &[u64]) {
    for (slot, &m) in MPIDR.iter().zip(mpidrs) {
        slot.store(m, Ordering::Relaxed);
    }
}

fn all_done() -> bool {
    guest::all().all(|g| g.done.load(Ordering::Acquire))
}

/// Kicks every idle CPU but `me`.
fn wake_idle(me: usize) {
    fence(Ordering::SeqCst);
    for (c, idle) in IDLE.iter().enumerate() {
        if c != me && idle.load(Ordering::Relaxed) {
            irq::kick(MPIDR.get(c).map_or(0, |m| m.load(Ordering::Relaxed)));
        }
    }
}

/// Beside the VM test, between its own runs: one look for a Linux vCPU to
/// run, and a turn of it if there is one (never waits).
pub fn step(cpu: usize) {
    if guest::all().next().is_some() {
        look(cpu);
    }
}

/// Runs Linux vCPUs until every guest is done, idling when none is
/// runnable. On a ticking CPU (see the module docs).
pub fn finish(cpu: usize) {
    if guest::all().next().is_none() {
        return;
    }
    let Some(idle) = IDLE.get(cpu) else { return };
    while !all_done() {
        if look(cpu) {
            continue;
        }
        idle.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        irq::wait_unless(|| all_done() || any_runnable());
        idle.store(false, Ordering::Relaxed);
    }
}

/// Whether some guest has a runnable vCPU no CPU runs (looks only).
fn any_runnable() -> bool {
    let now = irq::now();
    guest::all().any(|g| {
        if g.done.load(Ordering::Acquire) {
            return false;
        }
        let mut s = g.lock();
        let ready = s.vm.runnable(now);
        ready.iter().any(|&v| s.claim.get(v) == Some(&FREE))
    })
}

/// One pass over the guests: a turn of the first runnable, unclaimed vCPU;
/// whether there was one.
fn look(cpu: usize) -> bool {
    let now = irq::now();
    let freq = irq::frequency();
    // Each look starts at another guest, so no guest is always served last.
    let first = ROUND.fetch_add(1, Ordering::Relaxed);
    let count = guest::all().count().max(1);
    let skip = first.checked_rem(count).unwrap_or(0);
    for g in guest::all().cycle().skip(skip).take(count) {
        if g.done.load(Ordering::Acquire) {
            continue;
        }
        let mut s = g.lock();
        if s.outcome != Outcome::Running {
            continue;
        }
        if now.saturating_sub(s.t_output) > freq.saturating_mul(stall_seconds(g.console)) {
            finish_guest(g, &mut s, Outcome::Stalled, now);
            continue;
        }
        // Round robin from the vCPU after the last one run: a vCPU that
        // spins without exiting (waiting for another vCPU) must not keep
        // the others from ever running on a single host CPU.
        let ready = s.vm.runnable(now);
        let pick = (0..VCPUS)
            .map(|i| s.next.wrapping_add(i) % VCPUS)
            .find(|v| ready.contains(v) && s.claim.get(*v) == Some(&FREE));
        let Some(v) = pick else {
            let running = s.claim.iter().any(|&c| c != FREE);
            let alive = (0..VCPUS).any(|v| s.vm.state(v) != Some(VcpuState::Off));
            if !running && !alive {
                finish_guest(g, &mut s, Outcome::AllStopped, now);
            }
            continue;
        };
        if let Some(c) = s.claim.get_mut(v) {
            *c = cpu;
        }
        s.next = v.wrapping_add(1);
        let lrs = s.vm.list_registers(v);
        let value = s.value.get(v).copied().unwrap_or(0);
        let same = s.engine_lrs.get(v) == Some(&lrs);
        if !same {
            s.interrupt_calls = s.interrupt_calls.saturating_add(1);
        }
        drop(s);
        turn(g, v, Next { lrs, same, value }, cpu);
        return true;
    }
    false
}

/// Ends a guest's run.
fn finish_guest(g: &Guest, s: &mut State, outcome: Outcome, now: u64) {
    s.outcome = outcome;
    s.t_end = Some(now);
    s.i_end = Some(guest::instructions());
    g.done.store(true, Ordering::Release);
    let k = g.k;
    match outcome {
        Outcome::PoweredOff => say!("linux{k}: powered off (PSCI SYSTEM_OFF)"),
        Outcome::Reset => {
            say!("linux{k}: FAIL the guest reset itself (PSCI SYSTEM_RESET: a kernel panic?)")
        }
        Outcome::AllStopped => match s.error_esr {
            Some(esr) => {
                say!("linux{k}: FAIL every vCPU stopped; the engine stopped one on ESR {esr:#x}")
            }
            None => say!("linux{k}: FAIL every vCPU turned off without a power-off"),
        },
        Outcome::Stalled => {
            say!(
                "linux{k}: FAIL no console output for {} s: the guest stopped making progress",
                stall_seconds(g.console)
            );
            // What each vCPU was doing, for whoever reads the log.
            for v in 0..VCPUS {
                say!(
                    "linux{k}: vCPU {v}: {:?}, {}, {} runs, last exit {}, interrupt waiting {}, list registers {:x?}",
                    s.vm.state(v),
                    if s.claim.get(v) == Some(&FREE) {
                        "not running"
                    } else {
                        "running"
                    },
                    s.runs.get(v).copied().unwrap_or(0),
                    s.last_exit
                        .get(v)
                        .and_then(|&k| guest::KINDS.get(k))
                        .unwrap_or(&"-"),
                    s.vm.gic.has_pending(v),
                    s.engine_lrs.get(v)
                );
            }
        }
        Outcome::HostError | Outcome::Running => {}
    }
    if outcome != Outcome::PoweredOff {
        s.failures = s.failures.saturating_add(1);
        crate::vms::tally::count_failure();
    }
}

/// The engine's list registers after an exit: what it held, with the
/// states the exit reports (an invalid one is empty: taken and done).
fn after_exit(held: [u64; lr::SLOTS], status: &ExitStatus) -> [u64; lr::SLOTS] {
    let mut out = held;
    for (w, st) in out.iter_mut().zip(status.lrs) {
        let bits = match st {
            LrState::Invalid => {
                *w = 0;
                continue;
            }
            LrState::Pending => lr::PENDING,
            LrState::Active => lr::ACTIVE,
            LrState::PendingActive => lr::PENDING | lr::ACTIVE,
        };
        *w = (*w & !(lr::PENDING | lr::ACTIVE)) | bits;
    }
    out
}

/// What a vCPU's next run needs: the list registers to hand the engine
/// (and whether it holds them already), and `VcpuRun`'s `x3`.
struct Next {
    lrs: [u64; lr::SLOTS],
    same: bool,
    value: u64,
}

/// Runs vCPU `v` of `g` (claimed by this CPU) for one turn: run after run
/// until its turn (10 ms) is over, it waits or stops, or its guest ends.
/// Exits the VMM answers at once (an interrupt to inject, its completion,
/// MMIO) do not end the turn: a vCPU that got only one interrupt handled
/// per turn would, on an overcommitted CPU, spend every turn in its timer
/// handler and never get further.
fn turn(g: &Guest, v: usize, first: Next, cpu: usize) {
    let end = irq::now().saturating_add(irq::frequency() / TURNS_PER_SECOND);
    let mut next = first;
    while let Some(n) = run_vcpu(g, v, next, cpu, end) {
        next = n;
    }
}

/// Runs vCPU `v` of `g` (claimed by this CPU) to its next exit and handles
/// it; what its next run needs if its turn (ending at counter value `end`)
/// goes on, else `None` (and the claim is released).
fn run_vcpu(g: &Guest, v: usize, next: Next, cpu: usize, end: u64) -> Option<Next> {
    let Next { lrs, same, value } = next;
    let h = g.handle;
    let mut failed: Option<(&str, u64)> = None;
    if !same {
        let [a, b, c, d] = lrs;
        let r = call(HostCall::VcpuInterrupts, [h, v as u64, a, b, c, d]);
        if r[0] != Status::Success.raw() {
            failed = Some(("VcpuInterrupts", r[0]));
        }
    }
    let r = if failed.is_none() {
        call(HostCall::VcpuRun, [h, v as u64, value, 0, 0, 0])
    } else {
        [0; 4]
    };
    if failed.is_none() && r[0] != Status::Success.raw() {
        failed = Some(("VcpuRun", r[0]));
    }
    #[cfg(feature = "planted-bug-lose-timer")]
    let r = [r[0], r[1] & !isola_abi::EXIT_VTIMER, r[2], r[3]];
    let regs = [r[1], r[2], r[3]];
    let exit = Exit::decode(regs);
    let now = irq::now();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut s = g.lock();
    if failed == Some(("VcpuRun", Status::Denied.raw())) && s.outcome == Outcome::Running {
        // The engine refuses every run from the moment one vCPU calls
        // `SYSTEM_OFF`; the CPU that ran that vCPU records the power-off
        // once its exit is back, which can be a moment after this refusal.
        // Wait a second for it before calling the refusal a failure.
        drop(s);
        let deadline = now.saturating_add(irq::frequency());
        while g.lock().outcome == Outcome::Running && irq::now() < deadline {
            isola_sync::spin_hint();
        }
        s = g.lock();
    }
    if s.outcome != Outcome::Running {
        // The guest powered off (or failed) while this vCPU ran or was
        // about to: the engine refuses its run (`Denied`), and nothing of
        // its exit matters any more.
        release(&mut s, v);
        return None;
    }
    if let Some((what, st)) = failed {
        say!("linux{}: FAIL {what} of vCPU {v}: {}", g.k, St(st));
        release(&mut s, v);
        finish_guest(g, &mut s, Outcome::HostError, now);
        return None;
    }
    let status = ExitStatus::from_word(regs[0]);
    if let Some(held) = s.engine_lrs.get_mut(v) {
        *held = after_exit(lrs, &status);
    }
    let mmio_kind = match exit {
        Some(Exit::Mmio { ipa, .. }) => {
            let (uart, size) = s.vm.layout.uart();
            if (uart..uart.wrapping_add(size)).contains(&ipa) {
                0
            } else if s.vm.gic.claims(ipa) {
                1
            } else {
                2
            }
        }
        _ => 0,
    };
    if let Some(e) = &exit {
        s.count(v, e, mmio_kind);
        if let Exit::Error { esr } = e {
            s.error_esr.get_or_insert(*esr);
            say!(
                "linux{}: vCPU {v} stopped by the engine (Exit::Error, ESR {esr:#x})",
                g.k
            );
        }
    }
    let before: Vec<bool> = (0..VCPUS)
        .map(|w| s.vm.state(w) == Some(VcpuState::Ready))
        .collect();
    let action = s.vm.exit(v, regs);
    match action {
        Action::Run { value } => {
            if let Some(x) = s.value.get_mut(v) {
                *x = value;
            }
        }
        Action::InjectAbort => {
            let r = call(HostCall::VcpuInjectAbort, [h, v as u64, 0, 0, 0, 0]);
            if r[0] != Status::Success.raw() {
                say!(
                    "linux{}: FAIL VcpuInjectAbort of vCPU {v}: {}",
                    g.k,
                    St(r[0])
                );
                finish_guest(g, &mut s, Outcome::HostError, now);
            }
        }
        Action::Wait { .. } | Action::Stop => {}
        Action::PowerOff { reset } => {
            take_lines(g, &mut s, now, &mut lines);
            let outcome = if reset {
                Outcome::Reset
            } else {
                Outcome::PoweredOff
            };
            print_lines(g, &lines);
            lines.clear();
            finish_guest(g, &mut s, outcome, now);
        }
        Action::Malformed => {
            say!("linux{}: FAIL undecodable exit {:#x}", g.k, regs[0]);
            finish_guest(g, &mut s, Outcome::HostError, now);
        }
    }
    take_lines(g, &mut s, now, &mut lines);
    // Kicks: a running vCPU with an interrupt it does not hold yet exits
    // to see it; vCPUs that just became runnable wake an idle CPU; after a
    // power-off every running vCPU is made to stop.
    let done = s.outcome != Outcome::Running;
    let mut kick: Vec<usize> = Vec::new();
    let mut woke = false;
    for w in (0..VCPUS).filter(|&w| w != v) {
        let c = s.claim.get(w).copied().unwrap_or(FREE);
        if c != FREE && c != cpu && (done || s.vm.needs_kick(w)) {
            kick.push(c);
        }
        let ready = s.vm.state(w) == Some(VcpuState::Ready);
        if c == FREE && ready && !before.get(w).copied().unwrap_or(true) {
            woke = true;
        }
    }
    // The turn goes on while the vCPU can run and its turn lasts.
    let goes_on = !done
        && now < end
        && matches!(action, Action::Run { .. } | Action::InjectAbort)
        && s.vm.state(v) == Some(VcpuState::Ready);
    let next = if goes_on {
        let lrs = s.vm.list_registers(v);
        let same = s.engine_lrs.get(v) == Some(&lrs);
        if !same {
            s.interrupt_calls = s.interrupt_calls.saturating_add(1);
        }
        let value = s.value.get(v).copied().unwrap_or(0);
        Some(Next { lrs, same, value })
    } else {
        // Still runnable (its turn is over): an idle CPU may take it.
        woke |= !done && s.vm.state(v) == Some(VcpuState::Ready);
        release(&mut s, v);
        None
    };
    drop(s);
    for c in kick {
        irq::kick(MPIDR.get(c).map_or(0, |m| m.load(Ordering::Relaxed)));
    }
    if woke {
        wake_idle(cpu);
    }
    print_lines(g, &lines);
    next
}

/// Ends this CPU's claim on vCPU `v`.
fn release(s: &mut State, v: usize) {
    if let Some(c) = s.claim.get_mut(v) {
        *c = FREE;
    }
}

/// Moves the complete lines the guest's UART sent into `lines`, noting the
/// time of the first userspace line and of the last output.
fn take_lines(g: &Guest, s: &mut State, now: u64, lines: &mut Vec<Vec<u8>>) {
    if s.vm.uart.output.is_empty() {
        return;
    }
    s.t_output = now;
    let out = core::mem::take(&mut s.vm.uart.output);
    for b in out {
        match b {
            b'\n' => {
                let line = core::mem::take(&mut s.line);
                if line.starts_with(USER) {
                    s.user_lines = s.user_lines.saturating_add(1);
                    if s.t_first_line.is_none() {
                        s.t_first_line = Some(now);
                        s.i_first_line = Some(guest::instructions());
                    }
                }
                if wanted(g, &line) {
                    lines.push(line);
                }
            }
            b'\r' => {}
            b => {
                if s.line.len() < 512 {
                    s.line.push(b);
                }
            }
        }
    }
}

/// The prefix of every line the guest's init prints.
const USER: &[u8] = b"isola-guest: ";

/// Kernel messages that mean the guest is broken: shown (and failed) even
/// when only the init's lines are.
const ALARMS: [&[u8]; 6] = [
    b"Kernel panic",
    b"Oops",
    b"BUG:",
    b"WARNING:",
    b"Call trace:",
    b"Internal error",
];

fn wanted(g: &Guest, line: &[u8]) -> bool {
    match g.console {
        Console::Everything => true,
        Console::InitOnly => {
            line.starts_with(USER)
                || ALARMS
                    .iter()
                    .any(|a| line.windows(a.len()).any(|w| w == *a))
        }
    }
}

fn print_lines(g: &Guest, lines: &[Vec<u8>]) {
    for l in lines {
        let text = core::str::from_utf8(l).unwrap_or("<not utf-8>");
        say!("linux{}: {text}", g.k);
    }
}
