//! The host's first tests: every CPU started through the engine's PSCI
//! relay makes a hypercall (`smp`), the engine's memory is out of reach
//! (`probe`), and hypercalls the engine must refuse get their status
//! (`badcall`).
//!
//! Invariant: the boot CPU starts one other CPU at a time and waits for it to
//! report and turn off before going on.

use isola_abi::{HostCall, Status, psci};
use isola_guest_payload::regs;
use isola_sync::atomic::{AtomicBool, Ordering};

use crate::calls::{AFFINITY_INFO, AFFINITY_OFF, hvc, psci as psci_call, status_name};
use crate::console::{fail, say};
use crate::entry::{SEA_COUNT, SEA_FAR, secondary_entry};

/// The engine's image (its load address, in the carve-out the host's device
/// tree no longer shows): what the probe tries to read.
pub const ENGINE_PROBE: u64 = isola_layout::ENGINE_IMAGE_BASE;

/// Makes the `Version` hypercall and describes the answer.
pub fn version_line(cpu: usize) {
    let [s, abi, ..] = hvc(HostCall::Version as u64, 0, 0, 0, 0);
    say!(
        "cpu {cpu} at EL1: Version -> {} (ABI {}.{})",
        status_name(s),
        abi >> 16,
        abi & 0xffff
    );
    if s != Status::Success.raw() || abi != isola_abi::ABI_VERSION {
        fail(format_args!(
            "Version on cpu {cpu} returned status {s:#x}, ABI {abi:#x}"
        ));
    }
}

/// Set by each secondary once it has reported.
static REPORTED: [AtomicBool; isola_layout::MAX_CPUS] =
    [const { AtomicBool::new(false) }; isola_layout::MAX_CPUS];

/// A secondary CPU's part of `smp`: `Version`, report, turn off.
pub fn secondary(i: usize) -> ! {
    version_line(i);
    if let Some(flag) = REPORTED.get(i) {
        flag.store(true, Ordering::Release);
    }
    psci_call(psci::CPU_OFF, 0, 0, 0);
    say!("cpu {i}: PSCI CPU_OFF returned");
    loop {
        // SAFETY: waiting for an event has no effect.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}

/// Starts every other CPU through the relay, one at a time; each makes the
/// `Version` hypercall, reports and turns itself off.
pub fn smp(p: &isola_fdt::Platform) {
    let entry = secondary_entry();
    for (i, &mpidr) in p.cpus().iter().enumerate().skip(1) {
        let r = psci_call(psci::CPU_ON, mpidr, entry, i as u64);
        if r != 0 {
            fail(format_args!("PSCI CPU_ON of cpu {i} returned {r}"));
            continue;
        }
        let Some(flag) = REPORTED.get(i) else {
            continue;
        };
        while !flag.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        // The CPU turns itself off right after reporting; wait for that so
        // a second CPU_ON below sees a settled state.
        while psci_call(AFFINITY_INFO, mpidr, 0, 0) != AFFINITY_OFF {
            core::hint::spin_loop();
        }
    }
    say!("all {} CPUs made the Version hypercall", p.cpu_count);
    if let Some(&me) = p.cpus().first() {
        let r = psci_call(psci::CPU_ON, me, entry, 0);
        say!("PSCI CPU_ON of the running cpu 0 -> {r} (ALREADY_ON is -4)");
        if r != -4 {
            fail(format_args!("CPU_ON of a running CPU returned {r}"));
        }
    }
}

/// Reads the engine's image; the engine must refuse with an SEA.
pub fn probe() {
    SEA_FAR.store(0, Ordering::Relaxed);
    // SAFETY: the engine's memory is not ours; the read is expected to be
    // aborted (SEA), which `host_exception` catches and skips.
    let v = unsafe { core::ptr::read_volatile(ENGINE_PROBE as *const u64) };
    match SEA_FAR.load(Ordering::Relaxed) {
        far if far == ENGINE_PROBE => say!("probe of engine memory at {far:#x} blocked (SEA)"),
        0 => fail(format_args!(
            "read engine memory at {ENGINE_PROBE:#x}: {v:#x}"
        )),
        far => fail(format_args!("SEA at {far:#x}, not at the probe")),
    }
    probe_loop();
}

/// Reads of engine memory in a loop, as a host does that retries an access
/// the engine keeps refusing.
const LOOP_READS: u64 = 150;

/// Reads the engine's memory [`LOOP_READS`] times with one load instruction:
/// every read is refused, the engine counts each (`Accounting::Counter`)
/// and says on its console that the host may be looping (at 64 and 128 in
/// a row).
fn probe_loop() {
    let counted = || {
        let c = isola_abi::counter::HOST_ABORTS;
        let [s, mine, ..] = hvc(
            HostCall::Accounting as u64,
            isola_abi::Accounting::Counter as u64,
            c,
            0,
            0,
        );
        if s != Status::Success.raw() {
            fail(format_args!("Accounting::Counter: {}", status_name(s)));
        }
        mine
    };
    let before = counted();
    let taken = SEA_COUNT.load(Ordering::Relaxed);
    // SAFETY: one load instruction, repeated; each is aborted (SEA), and
    // `host_exception` skips it. No Rust-visible memory is touched.
    unsafe {
        core::arch::asm!(
            "2: ldr {t}, [{a}]",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            a = in(reg) ENGINE_PROBE,
            n = inout(reg) LOOP_READS => _,
            t = out(reg) _,
            options(nostack, readonly),
        )
    };
    let taken = SEA_COUNT.load(Ordering::Relaxed).wrapping_sub(taken);
    let counted = counted().wrapping_sub(before);
    if taken == LOOP_READS && counted == LOOP_READS {
        say!(
            "probe: {LOOP_READS} more reads of it in a loop, each blocked; the engine counted {counted} aborts"
        );
    } else {
        fail(format_args!(
            "{LOOP_READS} reads in a loop: {taken} aborts taken, {counted} counted by the engine"
        ));
    }
}

/// Host RAM the bad-call test lends a VM as its pool (well above the
/// payload and its stacks).
const POOL: u64 = 0x5000_0000;
const POOL_PAGES: u64 = 16;

/// Hypercalls the engine must refuse, with the status each gets. A real VM
/// exists meanwhile, so the page checks are reached (the core checks the
/// handle before ownership).
pub fn bad_calls() {
    let [s, handle, ..] = hvc(HostCall::VmCreate as u64, POOL, POOL_PAGES, 1, 0);
    say!(
        "VmCreate with {POOL_PAGES} pool pages at {POOL:#x} -> {}",
        status_name(s)
    );
    if s != Status::Success.raw() {
        fail(format_args!("VmCreate failed"));
        return;
    }
    let donate = HostCall::Donate as u64;
    let ipa = 0x1000_0000;
    let r = isola_abi::perms::R;
    let cases: [(&str, u64, [u64; 4]); 6] = [
        ("unknown function id 0xc60000ff", 0xC600_00FF, [0; 4]),
        (
            "guest call id from the host",
            isola_abi::GuestCall::Info as u64,
            [0; 4],
        ),
        (
            "Donate of an engine page",
            donate,
            [handle, ENGINE_PROBE, ipa, r],
        ),
        (
            "Donate of 0xfffffffff000",
            donate,
            [handle, 0xFFFF_FFFF_F000, ipa, r],
        ),
        (
            "Donate to a VM that does not exist",
            donate,
            [handle ^ 0x5a5a_0000, POOL + 0x10_0000, ipa, r],
        ),
        (
            "VmCreate with an engine page as pool",
            HostCall::VmCreate as u64,
            [ENGINE_PROBE, 4, 1, 0],
        ),
    ];
    let before = COUNTED.map(calls_returning);
    for (what, fid, a) in cases {
        let [s, ..] = hvc(fid, a[0], a[1], a[2], a[3]);
        say!("bad hypercall ({what}) -> {}", status_name(s));
        if s == Status::Success.raw() {
            fail(format_args!("{what} succeeded"));
        }
    }
    let after = COUNTED.map(calls_returning);
    counted_by_status(before, after);
    registers_kept(handle);
    let [s, ..] = hvc(HostCall::VmDestroy as u64, handle, 0, 0, 0);
    say!("VmDestroy -> {}", status_name(s));
    if s != Status::Success.raw() {
        fail(format_args!("VmDestroy failed"));
    }
}

/// The statuses the bad calls above return, and how many of each.
const COUNTED: [Status; 4] = [
    Status::NotSupported,
    Status::NotOwner,
    Status::InvalidArgument,
    Status::NotFound,
];
const BAD_CALLS_BY_STATUS: [u64; 4] = [2, 2, 1, 1];
/// Unknown ids and `Version`s of the second round of counting.
const SHORT_CALLS: u64 = 8;

/// This CPU's count of host calls that returned `status`
/// (`Accounting::Counter` of CPU 0: the test runs on one CPU), or `None` if
/// the read fails. The read itself counts as a `Success` once it returns.
fn calls_returning(status: Status) -> Option<u64> {
    let [s, mine, ..] = hvc(
        HostCall::Accounting as u64,
        isola_abi::Accounting::Counter as u64,
        isola_abi::counter::host_calls(status),
        0,
        0,
    );
    (s == Status::Success.raw()).then_some(mine)
}

/// The engine counts every host call by its status on the CPU that made it
/// (issue 14's per-CPU counters, which the `hvc` path reaches through
/// `TPIDR_EL2`): the bad calls above by theirs (`before`, `after`), then
/// unknown ids and `Version`s, the two calls the dispatcher answers itself.
fn counted_by_status(before: [Option<u64>; 4], after: [Option<u64>; 4]) {
    let mut wrong = 0_u32;
    for ((b, a), want) in before.into_iter().zip(after).zip(BAD_CALLS_BY_STATUS) {
        if b.zip(a).map(|(b, a)| a.wrapping_sub(b)) != Some(want) {
            wrong = wrong.wrapping_add(1);
        }
    }
    let unknown = calls_returning(Status::NotSupported);
    let ok = calls_returning(Status::Success);
    for _ in 0..SHORT_CALLS {
        hvc(0xC600_00FF, 0, 0, 0, 0);
        hvc(HostCall::Version as u64, 0, 0, 0, 0);
    }
    // The `Version`s and the read of `ok` itself.
    let ok_delta = calls_returning(Status::Success)
        .zip(ok)
        .map(|(a, b)| a.wrapping_sub(b));
    let unknown_delta = calls_returning(Status::NotSupported)
        .zip(unknown)
        .map(|(a, b)| a.wrapping_sub(b));
    if ok_delta != Some(SHORT_CALLS.wrapping_add(1)) || unknown_delta != Some(SHORT_CALLS) {
        wrong = wrong.wrapping_add(1);
    }
    if wrong == 0 {
        say!(
            "the engine counted every call on this CPU by its status: 2 NotSupported, 2 NotOwner, 1 InvalidArgument, 1 NotFound, then {SHORT_CALLS} unknown ids and {SHORT_CALLS} Versions"
        );
    } else {
        fail(format_args!(
            "per-CPU call counters wrong: {wrong} of 5 checks (the bad calls' four statuses, then {SHORT_CALLS} unknown ids and Versions: {unknown_delta:?} NotSupported, {ok_delta:?} Success counted)"
        ));
    }
}

isola_guest_payload::register_probe!("basic_call_probe", isola_guest_payload::regs::HOST);

unsafe extern "C" {
    fn basic_call_probe(id: u64, a1: u64, a2: u64, a3: u64, record: *mut [u64; regs::WORDS]);
}

/// Calls of each path through the engine's `hvc` handler (an unknown id
/// and `Version`, which its dispatcher answers itself; failing and
/// succeeding calls that go out of line) through the register probe: every
/// host register but the results `x0..=x3` must come back as the host left
/// it. The trap saves only the registers its handler's convention lets it
/// clobber (boot/src/vectors.rs), so this is what checks that convention.
fn registers_kept(handle: u64) {
    let calls: [(u64, [u64; 3]); 5] = [
        (0xC600_00FF, [0; 3]),
        (HostCall::Version as u64, [0; 3]),
        (HostCall::VmDestroy as u64, [handle ^ 0x5a5a_0000, 0, 0]),
        (
            HostCall::Accounting as u64,
            [isola_abi::Accounting::Totals as u64, 0, 0],
        ),
        (
            HostCall::Accounting as u64,
            [isola_abi::Accounting::Vm as u64, handle, 0],
        ),
    ];
    let mut lost = 0_u64;
    for (id, [a1, a2, a3]) in calls {
        let mut record = [0u64; regs::WORDS];
        // SAFETY: the routine writes exactly the words of `record`, restores
        // every callee-saved register, SP, FPCR and FPSR, and its `hvc`
        // touches no memory Rust owns (none of these calls takes a page);
        // every caller-saved register is clobbered, which the `extern "C"`
        // call already assumes.
        unsafe { basic_call_probe(id, a1, a2, a3, &raw mut record) };
        lost = lost.wrapping_add(regs::HOST.lost(&record));
    }
    if lost == 0 {
        say!(
            "host registers x4..x30, v0..v31, FPCR and FPSR kept across {} hypercalls",
            calls.len()
        );
    } else {
        fail(format_args!(
            "{lost} host registers changed across {} hypercalls",
            calls.len()
        ));
    }
}
