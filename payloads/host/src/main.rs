//! The test host: a tiny EL1 "hypervisor" that drives the engine in booted
//! tests and prints what it sees, one line per fact, for the harness
//! (xtask/src/qemu.rs) to compare with the expected output.
//!
//! It runs on the boot CPU from `_start` with `x0` = its device tree, and on
//! every other CPU from `_secondary` (started through the engine's PSCI
//! relay) with `x0` = the CPU's index. What it tests is chosen by the boot
//! argument `isola.test=` (`/chosen/bootargs`, set with QEMU's `-append`):
//! `smp`, `probe`, `badcall`, `vms`, `dma` or `all` (the default).
//!
//! Invariant: only one host CPU prints at a time. The boot CPU starts one
//! other CPU at a time and waits for it to report before going on, so the
//! console needs no lock across CPUs (the engine's own lines never overlap
//! either: it prints nothing while the host is starting CPUs).
#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "shared with the engine, which uses a different subset"
)]
#[path = "../../../boot/src/fdt.rs"]
mod fdt;

/// Benchmark mode (`isola.test=bench`), run by `cargo xtask bench`.
mod bench;

/// The VM test (`isola.test=vms`, part of `all`): docs/guests.md.
mod vms;

/// The DMA test (`isola.test=dma`, part of `all`): docs/security.md.
mod dma;

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use isola_abi::{HostCall, Status, psci};

/// The engine's image (its load address, in the carve-out the host's device
/// tree no longer shows): what the probe tries to read.
const ENGINE_PROBE: u64 = 0x4020_0000;
const MAX_CPUS: usize = fdt::MAX_CPUS;
const STACK: u64 = 0x4000;

/// MAIR_EL1: attribute 0 Device-nGnRE, attribute 1 Normal write-back.
const MAIR: u64 = 0x04 | 0xff << 8;
/// TCR_EL1: T0SZ 25 (39-bit VA), write-back walks, inner shareable, 4 KiB
/// granule, no TTBR1 walks (EPD1), 40-bit IPS.
const TCR: u64 = 25 | 0b01 << 8 | 0b01 << 10 | 0b11 << 12 | 1 << 23 | 0b010 << 32;
/// SCTLR_EL1: RES1 bits, MMU, D-cache, SP alignment check, I-cache.
const SCTLR: u64 =
    (1 << 11 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 28 | 1 << 29) | 1 | 1 << 2 | 1 << 3 | 1 << 12;

/// The host's stage-1 map, 1 GiB blocks: devices, then RAM (2 GiB).
#[repr(C, align(4096))]
struct Table([u64; 512]);
static TABLE: Table = {
    let mut t = [0_u64; 512];
    let device = 1 | 1 << 10 | 1 << 53 | 1 << 54;
    let normal = 1 | 1 << 2 | 0b11 << 8 | 1 << 10;
    t[0] = device;
    t[1] = 0x4000_0000 | normal;
    t[2] = 0x8000_0000 | normal;
    Table(t)
};

global_asm!(
    r#"
.section .text.entry, "ax"
.global _start
_start:
    mov x19, x0
    mov x20, #0
    b 1f
.global host_secondary_entry
host_secondary_entry:
    mov x19, x0
    mov x20, x0
1:  cmp x20, #{MAX_CPUS}
    b.hs 3f
    adrp x1, __host_stacks
    add x1, x1, :lo12:__host_stacks
    add x2, x20, #1
    mov x3, #{STACK}
    madd x1, x2, x3, x1
    mov sp, x1
    adrp x1, host_vectors
    add x1, x1, :lo12:host_vectors
    msr vbar_el1, x1
    mov x1, #(3 << 20)
    msr cpacr_el1, x1
    ldr x1, ={MAIR}
    msr mair_el1, x1
    ldr x1, ={TCR}
    msr tcr_el1, x1
    adrp x1, {TABLE}
    add x1, x1, :lo12:{TABLE}
    msr ttbr0_el1, x1
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x1, ={SCTLR}
    msr sctlr_el1, x1
    isb
    cbnz x20, 2f
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
4:  cmp x1, x2
    b.hs 5f
    stp xzr, xzr, [x1], #16
    b 4b
5:  mov x0, x19
    bl host_main
2:  mov x0, x20
    bl host_secondary
3:  wfe
    b 3b
.ltorg

.section .text.vectors, "ax"
.balign 2048
host_vectors:
    .rept 16
    .balign 0x80
    b host_exception_entry
    .endr
    .balign 0x80

host_exception_entry:
    sub sp, sp, #784
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x29, [sp, #144]
    str x30, [sp, #160]
    add x0, sp, #256
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    bl host_exception
    add x0, sp, #256
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q8, q9, [x0, #128]
    ldp q10, q11, [x0, #160]
    ldp q12, q13, [x0, #192]
    ldp q14, q15, [x0, #224]
    ldp q16, q17, [x0, #256]
    ldp q18, q19, [x0, #288]
    ldp q20, q21, [x0, #320]
    ldp q22, q23, [x0, #352]
    ldp q24, q25, [x0, #384]
    ldp q26, q27, [x0, #416]
    ldp q28, q29, [x0, #448]
    ldp q30, q31, [x0, #480]
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x29, [sp, #144]
    ldr x30, [sp, #160]
    add sp, sp, #784
    eret
"#,
    MAX_CPUS = const MAX_CPUS,
    STACK = const STACK,
    MAIR = const MAIR,
    TCR = const TCR,
    SCTLR = const SCTLR,
    TABLE = sym TABLE,
);

unsafe extern "C" {
    fn host_secondary_entry();
}

macro_rules! sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading this EL1 system register has no side effect.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

/// The PL011 the device tree names (QEMU virt's until it is read).
static UART: AtomicU64 = AtomicU64::new(0x0900_0000);

struct Console;

fn put(byte: u8) {
    let base = UART.load(Ordering::Relaxed);
    // SAFETY: the PL011's flag and data registers, device-mapped by the
    // host's stage-1 map; one host CPU prints at a time.
    unsafe {
        while core::ptr::read_volatile(base.wrapping_add(0x18) as *const u32) & (1 << 5) != 0 {}
        core::ptr::write_volatile(base as *mut u32, u32::from(byte));
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

fn line(args: fmt::Arguments<'_>) {
    let _ = Console.write_fmt(format_args!("host: {args}\n"));
}

macro_rules! say {
    ($($arg:tt)*) => { line(format_args!($($arg)*)) };
}

/// `hvc #0` with `x0..=x4` (`x5` zero, so `Donate` moves one page);
/// returns `x0..=x3`.
fn hvc(fid: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> [u64; 4] {
    hvc5(fid, [a1, a2, a3, a4, 0])
}

/// `hvc #0` with `x0..=x5`; returns `x0..=x3`.
fn hvc5(fid: u64, a: [u64; 5]) -> [u64; 4] {
    let [a1, a2, a3, a4, a5] = a;
    let (mut r0, mut r1, mut r2, mut r3) = (fid, a1, a2, a3);
    // SAFETY: a hypercall to the engine; SMCCC lets it clobber x4..x17.
    unsafe {
        asm!("hvc #0",
            inout("x0") r0, inout("x1") r1, inout("x2") r2, inout("x3") r3,
            inout("x4") a4 => _, inout("x5") a5 => _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _, options(nostack));
    }
    [r0, r1, r2, r3]
}

/// A PSCI call through `smc #0` (which the engine traps and relays).
fn smc(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let (mut r0, mut r1, mut r2, mut r3) = (u64::from(fid), a1, a2, a3);
    // SAFETY: a PSCI call; SMCCC lets it clobber x4..x17.
    unsafe {
        asm!("smc #0",
            inout("x0") r0, inout("x1") r1, inout("x2") r2, inout("x3") r3,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _, options(nostack));
    }
    let _ = (r1, r2, r3);
    r0 as i64
}

fn status_name(raw: u64) -> &'static str {
    match Status::from_raw(raw as i64) {
        Some(Status::Success) => "Success",
        Some(Status::NotSupported) => "NotSupported",
        Some(Status::InvalidArgument) => "InvalidArgument",
        Some(Status::NotOwner) => "NotOwner",
        Some(Status::AlreadyMapped) => "AlreadyMapped",
        Some(Status::Busy) => "Busy",
        Some(Status::NoMemory) => "NoMemory",
        Some(Status::NotFound) => "NotFound",
        Some(Status::NotMapped) => "NotMapped",
        Some(Status::Denied) => "Denied",
        None => "undefined status",
    }
}

/// Makes the `Version` hypercall and describes the answer.
fn version_line(cpu: usize) {
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
static REPORTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// FAR of the last SEA the host took, 0 if none.
static SEA_FAR: AtomicU64 = AtomicU64::new(0);
/// Checks that went wrong.
static FAILURES: AtomicU64 = AtomicU64::new(0);

fn fail(args: fmt::Arguments<'_>) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    say!("check failed: {args}");
}

struct PlatformCell(UnsafeCell<fdt::Platform>);
// SAFETY: written only by the boot CPU in `host_main` before it starts any
// other CPU; the secondaries never read it.
unsafe impl Sync for PlatformCell {}
static PLATFORM: PlatformCell = PlatformCell(UnsafeCell::new(fdt::Platform::empty()));

fn power_off() -> ! {
    smc(psci::SYSTEM_OFF, 0, 0, 0);
    loop {
        // SAFETY: waiting for an event has no effect.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

#[unsafe(no_mangle)]
extern "C" fn host_main(dtb: u64) -> ! {
    // SAFETY: the engine hands over a device tree in host RAM; its header
    // says how long it is (bounded below), and nothing else writes it.
    let head = unsafe { core::slice::from_raw_parts(dtb as *const u8, 8) };
    let total = fdt::header_total_size(head).unwrap_or(0).min(0x0100_0000);
    // SAFETY: as above, for the whole tree.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, total as usize) };
    // SAFETY: no other host CPU runs yet (see `PlatformCell`).
    let p = unsafe { &mut *PLATFORM.0.get() };
    let parsed = fdt::Fdt::new(blob).and_then(|t| fdt::parse_platform(&t, p).map(|()| t));
    let tree = match parsed {
        Ok(t) => t,
        Err(e) => {
            say!("cannot read the device tree at {dtb:#x}: {e}");
            power_off();
        }
    };
    if let Some(u) = p.uart {
        UART.store(u.base, Ordering::Relaxed);
    }
    let test = fdt::bootargs(&tree)
        .ok()
        .flatten()
        .and_then(|a| a.split(' ').find_map(|w| w.strip_prefix("isola.test=")))
        .unwrap_or("all");
    let ram = p.ram().first().copied().unwrap_or_default();
    say!(
        "up at EL1 on cpu 0: device tree at {dtb:#x}, {} CPUs, RAM {:#x}..{:#x}, test {test}",
        p.cpu_count,
        ram.base,
        ram.base.wrapping_add(ram.size)
    );
    let v = smc(psci::VERSION, 0, 0, 0);
    say!(
        "PSCI version {}.{} through the engine's relay",
        v >> 16,
        v & 0xffff
    );
    version_line(0);
    if test == "bench" {
        bench::run();
    }
    let all = test == "all";
    if all || test == "smp" {
        smp(p);
    }
    if all || test == "probe" {
        probe();
    }
    if all || test == "badcall" {
        bad_calls();
    }
    if all || test == "dma" {
        let gicr = p.gicr().first().map(|r| r.base);
        if !dma::main(blob, gicr, line) {
            fail(format_args!("the DMA test failed"));
        }
    }
    if all || test == "vms" {
        let entry = host_secondary_entry as *const () as u64;
        if !vms::main(p.cpus(), entry, line) {
            fail(format_args!("the VM test failed"));
        }
    }
    match FAILURES.load(Ordering::Relaxed) {
        0 => say!("verdict: PASS"),
        n => say!("verdict: {n} check(s) FAILED"),
    }
    power_off()
}

/// Starts every other CPU through the relay, one at a time; each makes the
/// `Version` hypercall, reports and turns itself off.
fn smp(p: &fdt::Platform) {
    let entry = host_secondary_entry as *const () as u64;
    for (i, &mpidr) in p.cpus().iter().enumerate().skip(1) {
        let r = smc(psci::CPU_ON, mpidr, entry, i as u64);
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
        while smc(0xC400_0004, mpidr, 0, 0) != 1 {
            core::hint::spin_loop();
        }
    }
    say!("all {} CPUs made the Version hypercall", p.cpu_count);
    if let Some(&me) = p.cpus().first() {
        let r = smc(psci::CPU_ON, me, entry, 0);
        say!("PSCI CPU_ON of the running cpu 0 -> {r} (ALREADY_ON is -4)");
        if r != -4 {
            fail(format_args!("CPU_ON of a running CPU returned {r}"));
        }
    }
}

#[unsafe(no_mangle)]
extern "C" fn host_secondary(index: u64) -> ! {
    let i = index as usize;
    vms::secondary(i, line);
    version_line(i);
    if let Some(flag) = REPORTED.get(i) {
        flag.store(true, Ordering::Release);
    }
    smc(psci::CPU_OFF, 0, 0, 0);
    say!("cpu {i}: PSCI CPU_OFF returned");
    loop {
        // SAFETY: waiting for an event has no effect.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// Reads the engine's image; the engine must refuse with an SEA.
fn probe() {
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
}

/// Host RAM the bad-call test lends a VM as its pool (well above the
/// payload and its stacks).
const POOL: u64 = 0x5000_0000;
const POOL_PAGES: u64 = 16;

/// Hypercalls the engine must refuse, with the status each gets. A real VM
/// exists meanwhile, so the page checks are reached (the core checks the
/// handle before ownership).
fn bad_calls() {
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
    for (what, fid, a) in cases {
        let [s, ..] = hvc(fid, a[0], a[1], a[2], a[3]);
        say!("bad hypercall ({what}) -> {}", status_name(s));
        if s == Status::Success.raw() {
            fail(format_args!("{what} succeeded"));
        }
    }
    let [s, ..] = hvc(HostCall::VmDestroy as u64, handle, 0, 0, 0);
    say!("VmDestroy -> {}", status_name(s));
    if s != Status::Success.raw() {
        fail(format_args!("VmDestroy failed"));
    }
}

/// Every exception the host takes lands here. A synchronous external abort
/// on a data read is the probe's expected outcome: note it and skip the
/// instruction. Anything else ends the run.
#[unsafe(no_mangle)]
extern "C" fn host_exception() {
    let esr = sysreg!("esr_el1");
    let far = sysreg!("far_el1");
    let elr = sysreg!("elr_el1");
    if esr >> 26 == 0x25 && esr & 0x3f == 0x10 {
        SEA_FAR.store(far, Ordering::Relaxed);
        // SAFETY: resuming after the aborted load (a 32-bit instruction);
        // its destination register just keeps a stale value.
        unsafe { asm!("msr elr_el1, {}", in(reg) elr.wrapping_add(4), options(nomem, nostack)) };
        return;
    }
    say!("unexpected exception at EL1: ESR {esr:#x}, ELR {elr:#x}, FAR {far:#x}");
    say!("verdict: FAILED");
    power_off();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {info}");
    power_off()
}
