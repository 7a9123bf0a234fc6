//! isola's EL2 image for QEMU virt: bring-up of every CPU at EL2, the EL2
//! stage-1 map, the console, PSCI, and the host deprivileged to EL1.
//!
//! Boot sequence (docs/boot.md has the whole story and the memory map):
//! 1. `_start` (boot CPU, EL2, MMU off): stack of CPU 0, `TPIDR_EL2 = 0`,
//!    vectors, bss zeroed, a bootstrap map (1 GiB blocks) so Rust runs with
//!    caches on, then [`boot_main`].
//! 2. [`boot_main`]: read QEMU's device tree, build and install the real map,
//!    initialise the core, start every other CPU with PSCI `CPU_ON` at
//!    `isola_secondary_entry`, meet them at the bring-up barrier, wait until
//!    they are off again, hand the host a device tree without the engine's
//!    memory, and enter the host at EL1.
//! 3. `isola_secondary_entry` (any other CPU, `x0` = its index): stack,
//!    `TPIDR_EL2`, vectors, the real map, then [`secondary_main`]: during
//!    bring-up it reports in, waits at the barrier and turns itself off;
//!    afterwards (a host `CPU_ON` or a resume) it enters the host at EL1.
//!
//! Invariants:
//! - Nothing but the boot CPU runs until the map, the platform description and
//!   the core are set up; those are read-only afterwards.
//! - Every CPU's `TPIDR_EL2` holds its dense index (the boot CPU is 0) before
//!   any Rust code runs on it (the `isola-percpu` contract).
#![no_std]
#![no_main]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

mod caches;
mod console;
mod cpu;
mod devices;
mod dma;
mod engine;
mod exception;
#[allow(
    dead_code,
    reason = "shared with the host payload, which uses a different subset"
)]
mod fdt;
mod host;
mod layout;
mod mmu;
mod psci;
mod smmu;
mod trap;
mod world;

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::fmt;

use isola_sync::RendezvousBarrier;
use isola_sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use console::say;
use fdt::{Fdt, Platform, PsciConduit};
use layout::{
    CARVEOUT_BASE, CARVEOUT_END, HOST_DTB, HOST_DTB_MAX, HOST_ENTRY, MAX_CPUS, STACK_SLOT, Sections,
};

/// The bootstrap map's level-1 table: 0..1 GiB device, 1..2 GiB normal
/// read-write-execute (the image, its stacks and QEMU's device tree). Only
/// the boot CPU uses it, only until [`mmu::install`].
#[repr(C, align(4096))]
struct BootTable([u64; 512]);

/// Block descriptor bits: valid, AttrIndx 0 (device), AF, AP[1], XN.
const BOOT_DEVICE_BLOCK: u64 = 0x1 | 1 << 10 | 1 << 6 | 1 << 54;
/// Block descriptor bits: valid, AttrIndx 1 (normal), inner shareable, AF,
/// AP[1]; writable and executable (WXN is off in the bootstrap SCTLR).
const BOOT_NORMAL_BLOCK: u64 = 0x1 | 1 << 2 | 0b11 << 8 | 1 << 10 | 1 << 6;

static BOOT_TABLE: BootTable = {
    let mut t = [0_u64; 512];
    t[0] = BOOT_DEVICE_BLOCK;
    t[1] = 0x4000_0000 | BOOT_NORMAL_BLOCK;
    BootTable(t)
};

/// SCTLR_EL2 for the bootstrap map: MMU, caches and SP alignment check on,
/// but not WXN (the bootstrap blocks are writable and executable).
const SCTLR_BOOT: u64 = mmu::SCTLR_ON & !(1 << 19);

global_asm!(
    r#"
.section .text.entry, "ax"
.global _start
_start:
    msr daifset, #0xf
    mov x19, x0
    mrs x1, CurrentEL
    cmp x1, #8
    b.ne 8f
    msr spsel, #1
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    mov x2, #{STACK_SLOT}
    add x1, x1, x2
    mov sp, x1
    msr tpidr_el2, xzr
    adrp x1, isola_vectors
    add x1, x1, :lo12:isola_vectors
    msr vbar_el2, x1
    isb
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
1:  cmp x1, x2
    b.hs 2f
    stp xzr, xzr, [x1], #16
    b 1b
2:  adrp x0, {BOOT_TABLE}
    add x0, x0, :lo12:{BOOT_TABLE}
    ldr x1, ={SCTLR_BOOT}
    bl isola_mmu_on
    mov x0, x19
    bl isola_boot_main
9:  wfe
    b 9b
8:  adr x0, 7f
    b isola_early_fail
7:  .asciz "isola: FATAL: not started at EL2 (QEMU needs -machine virt,virtualization=on); stopped\r\n"
    .balign 4

// Warm entry for every other CPU (PSCI CPU_ON / resume): x0 = CPU index.
.global isola_secondary_entry
isola_secondary_entry:
    msr daifset, #0xf
    mov x19, x0
    cmp x0, #{MAX_CPUS}
    b.hs 6f
    msr spsel, #1
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    add x2, x0, #1
    mov x3, #{STACK_SLOT}
    madd x1, x2, x3, x1
    mov sp, x1
    msr tpidr_el2, x0
    adrp x1, isola_vectors
    add x1, x1, :lo12:isola_vectors
    msr vbar_el2, x1
    isb
    adrp x0, {ROOT}
    add x0, x0, :lo12:{ROOT}
    ldr x1, ={SCTLR_ON}
    bl isola_mmu_on
    mov x0, x19
    bl isola_secondary_main
    b 9b
6:  adr x0, 5f
    b isola_early_fail
5:  .asciz "isola: FATAL: warm entry with a CPU index beyond the image's stacks; CPU stopped\r\n"
    .balign 4

// isola_early_fail(x0 = NUL-terminated message): for failures before the
// engine has a stack or a map. Writes the message to QEMU virt's PL011 with
// plain stores (MMU off: Device memory) and stops this CPU.
isola_early_fail:
    mov x1, #{EARLY_UART}
1:  ldrb w2, [x0], #1
    cbz w2, 3f
2:  ldr w3, [x1, #0x18]
    tbnz w3, #5, 2b
    str w2, [x1]
    b 1b
3:  wfe
    b 3b

// isola_mmu_on(x0 = TTBR0_EL2, x1 = SCTLR_EL2): MAIR, TCR (PS from
// ID_AA64MMFR0_EL1.PARange, capped at 48 bits), tables, TLB clean, MMU on.
// Leaf function, uses x0-x3 only.
isola_mmu_on:
    ldr x2, ={MAIR}
    msr mair_el2, x2
    mrs x2, id_aa64mmfr0_el1
    and x2, x2, #0xf
    mov x3, #5
    cmp x2, x3
    csel x2, x2, x3, ls
    lsl x2, x2, #16
    ldr x3, ={TCR_BASE}
    orr x2, x2, x3
    msr tcr_el2, x2
    msr ttbr0_el2, x0
    isb
    tlbi alle2
    dsb nsh
    isb
    msr sctlr_el2, x1
    isb
    ret
.ltorg
"#,
    STACK_SLOT = const STACK_SLOT,
    EARLY_UART = const console::EARLY_UART,
    MAX_CPUS = const MAX_CPUS,
    SCTLR_BOOT = const SCTLR_BOOT,
    SCTLR_ON = const mmu::SCTLR_ON,
    MAIR = const mmu::MAIR,
    TCR_BASE = const mmu::TCR_BASE,
    ROOT = sym mmu::POOL,
    BOOT_TABLE = sym BOOT_TABLE,
);

/// How the run ended, as the final console line states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The host powered the machine off, the engine saw nothing wrong.
    Ok,
    /// The engine stopped on an error.
    Failure,
}

/// Prints the final status line and powers the machine off. The harness
/// (xtask/src/qemu.rs) reads that line as the run's exit status.
pub fn power_off(verdict: Verdict, why: &str) -> ! {
    let status = match verdict {
        Verdict::Ok => "ok",
        Verdict::Failure => "failure",
    };
    // The last DMA faults the SMMU recorded, before the verdict.
    let _ = smmu::faults();
    console::line(format_args!(
        "isola: power off ({why}); exit status: {status}"
    ));
    psci::system_off();
    // The firmware refused: nothing else can stop the machine.
    cpu::halt()
}

/// Reports a fatal engine error and powers the machine off with a failure
/// status. Usable from any state (it does not need the console lock).
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    cpu::mask_all();
    console::emergency_line(format_args!(
        "isola: FATAL on cpu {}: {args}",
        cpu::cpu_index()
    ));
    console::emergency_line(format_args!(
        "isola: power off (fatal error); exit status: failure"
    ));
    psci::system_off();
    cpu::halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fatal(format_args!("panic: {info}"))
}

/// The platform description, written once by the boot CPU before any other
/// CPU runs.
struct PlatformCell(UnsafeCell<Platform>);

// SAFETY: mutated only by the boot CPU in `boot_main` before `PLATFORM_READY`
// is set and before any other CPU is started; read-only afterwards.
unsafe impl Sync for PlatformCell {}

static PLATFORM: PlatformCell = PlatformCell(UnsafeCell::new(Platform::empty()));
static PLATFORM_READY: AtomicBool = AtomicBool::new(false);

/// The machine as the device tree describes it (after bring-up).
pub fn platform() -> &'static Platform {
    // Acquire: pairs with the Release in `boot_main`.
    if !PLATFORM_READY.load(Ordering::Acquire) {
        fatal(format_args!("platform description used before it was read"));
    }
    // SAFETY: once `PLATFORM_READY` is set nobody writes `PLATFORM` again.
    unsafe { &*PLATFORM.0.get() }
}

/// Set once bring-up is over: a CPU entering the warm entry afterwards was
/// started for the host.
static HOST_PHASE: AtomicBool = AtomicBool::new(false);
/// Participants: every CPU in the tree.
struct BarrierCell(UnsafeCell<RendezvousBarrier>);
// SAFETY: replaced only by the boot CPU before any other CPU starts (see
// `boot_main`); shared read-only (its methods take `&self`) afterwards.
unsafe impl Sync for BarrierCell {}
static BRINGUP: BarrierCell = BarrierCell(UnsafeCell::new(RendezvousBarrier::new(1)));
/// CPUs that reported in at EL2 during bring-up.
static REPORTED: AtomicU32 = AtomicU32::new(0);

fn bringup_barrier() -> &'static RendezvousBarrier {
    // SAFETY: see `BarrierCell`; only shared references are made after the
    // boot CPU's single write.
    unsafe { &*BRINGUP.0.get() }
}

/// Finds QEMU's device tree: `x0` if it points at one, otherwise the start
/// of RAM, where QEMU puts it for an ELF `-kernel` linked above it.
fn find_dtb(x0: u64) -> Result<&'static [u8], &'static str> {
    let sections = Sections::get();
    let max_len = sections.image_start.saturating_sub(CARVEOUT_BASE);
    for candidate in [x0, CARVEOUT_BASE] {
        if candidate < CARVEOUT_BASE || candidate >= sections.image_start || candidate % 8 != 0 {
            continue;
        }
        // SAFETY: `candidate` is 8-byte aligned and in the carve-out below
        // the image, which the bootstrap map covers as normal memory; eight
        // bytes fit since the image starts at least a page higher.
        let head = unsafe { core::slice::from_raw_parts(candidate as *const u8, 8) };
        let Some(total) = fdt::header_total_size(head) else {
            continue;
        };
        let total = u64::from(total);
        if total > max_len.saturating_sub(candidate.saturating_sub(CARVEOUT_BASE)) {
            return Err("the device tree overlaps the engine image");
        }
        // SAFETY: `[candidate, candidate + total)` lies below the image in
        // the carve-out (checked above), mapped and not written by anyone.
        return Ok(unsafe { core::slice::from_raw_parts(candidate as *const u8, total as usize) });
    }
    Err("no device tree at x0 or at the start of RAM")
}

/// Checks that the platform is one the engine can run on.
fn check_platform(p: &Platform) -> Result<(), &'static str> {
    if p.psci != Some(PsciConduit::Smc) {
        return Err("PSCI is missing or not called with smc");
    }
    if p.cpu_count == 0 || p.cpu_count > MAX_CPUS {
        return Err("no CPUs, or more than the image has stacks for");
    }
    if p.uart.is_none() {
        return Err("no PL011 UART");
    }
    if p.gicd.is_none() || p.gicr_count == 0 {
        return Err("no GICv3 distributor and redistributors");
    }
    let covers = p
        .ram()
        .iter()
        .any(|r| r.base <= CARVEOUT_BASE && r.end().is_some_and(|e| e > CARVEOUT_END));
    if !covers {
        return Err("RAM does not contain the engine carve-out and host memory after it");
    }
    Ok(())
}

/// Builds the EL2 stage-1 map (see `mmu`'s invariants).
fn build_map(p: &Platform, s: &Sections) -> Result<(usize, usize), mmu::MapError> {
    use mmu::Attr;
    // SAFETY: called once, on the boot CPU, before any other CPU starts and
    // before `mmu::install`.
    let mut b = unsafe { mmu::Builder::new() };
    for r in p.ram() {
        let end = r.end().ok_or(mmu::MapError::OutOfRange)?;
        // RAM below and above the image (the image area gets finer rights).
        let below_end = end.min(s.image_start);
        if r.base < below_end {
            b.map(r.base, below_end.wrapping_sub(r.base), Attr::ReadWrite)?;
        }
        let above = r.base.max(s.image_end);
        if above < end {
            b.map(above, end.wrapping_sub(above), Attr::ReadWrite)?;
        }
    }
    b.map(
        s.image_start,
        s.text_end.wrapping_sub(s.image_start),
        Attr::Text,
    )?;
    b.map(
        s.text_end,
        s.rodata_end.wrapping_sub(s.text_end),
        Attr::ReadOnly,
    )?;
    b.map(
        s.rodata_end,
        s.data_end.wrapping_sub(s.rodata_end),
        Attr::ReadWrite,
    )?;
    // Stacks: each slot's first page is its guard and stays unmapped.
    for cpu in 0..MAX_CPUS {
        let top = s.stack_top(cpu).ok_or(mmu::MapError::OutOfRange)?;
        b.map(
            top.wrapping_sub(layout::STACK_SIZE),
            layout::STACK_SIZE,
            Attr::ReadWrite,
        )?;
    }
    b.map(
        s.emergency_start,
        s.emergency_end.wrapping_sub(s.emergency_start),
        Attr::ReadWrite,
    )?;
    let page_up = |x: u64| {
        x.checked_add(0xfff)
            .map(|v| v & !0xfff)
            .ok_or(mmu::MapError::OutOfRange)
    };
    let devices = p.uart.iter().chain(p.gicd.iter()).chain(p.gicr().iter());
    for d in devices {
        let base = d.base & !0xfff;
        let end = page_up(d.end().ok_or(mmu::MapError::OutOfRange)?)?;
        b.map(base, end.wrapping_sub(base), Attr::Device)?;
    }
    // The engine's own devices (the SMMU) and the PCIe ECAM it reads once.
    let mut extra = Ok(());
    dma::el2_mmio(|base, size| {
        let base4k = base & !0xfff;
        if extra.is_ok() {
            extra = page_up(base.saturating_add(size))
                .and_then(|end| b.map(base4k, end.wrapping_sub(base4k), Attr::Device));
        }
    });
    extra?;
    Ok(b.tables_used())
}

/// A `ret` (then a `nop`) in writable data: the map self-test branches to
/// it, which must fault (data is XN); were it executable, the branch would
/// simply return.
static RET_IN_DATA: AtomicU64 = AtomicU64::new(0xd503_201f_d65f_03c0);

/// Checks, by touching them, that the installed map enforces what `mmu`
/// promises: each probe must fault (or not) as stated.
fn map_self_test(s: &Sections) -> Result<(), &'static str> {
    use exception::{Probe, probe_faults};
    let data = &raw const RET_IN_DATA as u64;
    let checks = [
        (
            Probe::Load,
            s.stacks_start,
            true,
            "CPU 0's stack guard page is mapped",
        ),
        (Probe::Store, s.image_start, true, "text is writable"),
        (Probe::Store, s.text_end, true, "rodata is writable"),
        (Probe::Load, s.text_end, false, "rodata is not readable"),
        (Probe::Exec, data, true, "data is executable"),
        (Probe::Store, data, false, "data is not writable"),
    ];
    for (probe, addr, should_fault, wrong) in checks {
        // SAFETY: the boot CPU, during bring-up, before any other CPU runs;
        // every address is 8-byte aligned; the store probes write back what
        // they read (text, rodata and `RET_IN_DATA` keep their contents and
        // no other agent writes them); the execute probe's target holds a
        // `ret`.
        if unsafe { probe_faults(probe, addr) } != should_fault {
            return Err(wrong);
        }
    }
    Ok(())
}

/// The boot CPU's Rust entry, on CPU 0's stack with the bootstrap map on.
#[unsafe(no_mangle)]
extern "C" fn isola_boot_main(x0: u64) -> ! {
    let s = Sections::get();
    say!(
        "EL2 engine starting on the boot CPU (mpidr {:#x}, x0 {:#x})",
        cpu::mpidr(),
        x0
    );
    if let Err(e) = s.check() {
        fatal(format_args!("image layout: {e}"));
    }
    let dtb = find_dtb(x0).unwrap_or_else(|e| fatal(format_args!("device tree: {e}")));
    let tree = Fdt::new(dtb).unwrap_or_else(|e| {
        fatal(format_args!(
            "device tree at {:#x}: {e}",
            dtb.as_ptr() as u64
        ))
    });
    {
        // SAFETY: only this CPU runs, and `PLATFORM_READY` is still clear, so
        // no reference to the platform exists yet.
        let p = unsafe { &mut *PLATFORM.0.get() };
        if let Err(e) = fdt::parse_platform(&tree, p) {
            fatal(format_args!("device tree: {e}"));
        }
        if let Err(e) = check_platform(p) {
            say!("the device tree describes a machine the engine cannot use: {e}");
            power_off(Verdict::Failure, "unusable device tree");
        }
        // The boot CPU is index 0 (the percpu contract).
        match p.cpu_index(cpu::mpidr()) {
            Some(0) => {}
            Some(i) => p.cpus.swap(0, i),
            None => fatal(format_args!("the boot CPU is not in /cpus")),
        }
        if let Some(uart) = p.uart {
            console::set_uart(uart.base);
        }
    }
    if let Err(e) = dma::scan(dtb) {
        fatal(format_args!("device tree: {e}"));
    }
    // Release: pairs with `platform()`'s Acquire.
    PLATFORM_READY.store(true, Ordering::Release);
    let p = platform();
    let ram: u64 = p.ram().iter().map(|r| r.size).fold(0, u64::saturating_add);
    say!(
        "device tree at {:#x} ({} bytes): {} CPUs, {} MiB RAM, PSCI via smc, GICv3, PL011 at {:#x}",
        dtb.as_ptr() as u64,
        dtb.len(),
        p.cpu_count,
        ram >> 20,
        p.uart.map_or(0, |u| u.base)
    );
    // The table count depends on the image size, so it is not printed (the
    // harness compares lines exactly); docs/boot.md records it.
    let _tables =
        build_map(p, &s).unwrap_or_else(|e| fatal(format_args!("EL2 stage-1 map: {e:?}")));
    // SAFETY: the new map is an identity map of everything the bootstrap map
    // covered that this CPU uses (image, stacks, device tree, UART); no other
    // CPU runs.
    unsafe { mmu::install() };
    say!("EL2 stage-1 map on: text RX, rodata R, data RW, stack guards unmapped");
    if let Err(e) = map_self_test(&s) {
        fatal(format_args!("EL2 map self-test: {e}"));
    }
    say!("EL2 map self-test: stack guard unmapped, text and rodata read-only, data not executable");

    dma::decide();
    dma::report();
    dma::wake_redistributors(p.gicr());
    engine::init(p, &s).unwrap_or_else(|e| fatal(format_args!("engine core: {e}")));

    // SAFETY: no other CPU runs yet, so nobody holds a reference into the
    // barrier; it is sized for every CPU of the tree.
    unsafe { *BRINGUP.0.get() = RendezvousBarrier::new(p.cpu_count as u32) };
    report_in(0);
    for (index, &mpidr) in p.cpus().iter().enumerate().skip(1) {
        let r = psci::cpu_on(mpidr, index);
        if r != psci::status::SUCCESS {
            fatal(format_args!(
                "PSCI CPU_ON of cpu {index} (mpidr {mpidr:#x}) failed: {r}"
            ));
        }
    }
    meet_at_barrier();
    // Every other CPU turns itself off after the barrier; the host will start
    // them again through the relay, so wait until they really are off.
    for &mpidr in p.cpus().iter().skip(1) {
        while psci::affinity_info(mpidr) != psci::AFFINITY_OFF {
            isola_sync::spin_hint();
        }
    }
    HOST_PHASE.store(true, Ordering::Release);
    prepare_host_dtb(dtb);
    enter_host(0, HOST_ENTRY, HOST_DTB)
}

fn report_in(index: usize) {
    say!("cpu {index} up at EL2 (mpidr {:#x})", cpu::mpidr());
    REPORTED.fetch_add(1, Ordering::Relaxed);
}

fn meet_at_barrier() {
    bringup_barrier().wait_with(|| {
        say!(
            "all {} CPUs met at the bring-up barrier",
            REPORTED.load(Ordering::Relaxed)
        );
    });
}

/// Copies QEMU's device tree into host memory and removes the engine's
/// carve-out from its `/memory` node.
fn prepare_host_dtb(dtb: &[u8]) {
    let len = dtb.len() as u64;
    if len > HOST_DTB_MAX {
        fatal(format_args!(
            "device tree of {len} bytes does not fit the host's slot"
        ));
    }
    // SAFETY: `[HOST_DTB, HOST_DTB + HOST_DTB_MAX)` is host RAM below the
    // host payload, mapped read-write at EL2, and no host CPU runs yet.
    let copy = unsafe { core::slice::from_raw_parts_mut(HOST_DTB as *mut u8, dtb.len()) };
    copy.copy_from_slice(dtb);
    match fdt::clip_memory_below(copy, CARVEOUT_END) {
        Ok(n) if n > 0 => {}
        Ok(_) => fatal(format_args!(
            "the host device tree has no memory range to clip"
        )),
        Err(e) => fatal(format_args!("editing the host device tree: {e}")),
    }
    let removed = dma::edit_host_dtb(copy).unwrap_or_else(|e| fatal(format_args!("{e}")));
    say!(
        "host device tree at {HOST_DTB:#x} shows RAM from {CARVEOUT_END:#x}; engine carve-out {CARVEOUT_BASE:#x}..{CARVEOUT_END:#x} hidden; {removed} device nodes removed"
    );
}

/// Sets up this CPU's EL2 controls for the host and drops to EL1 at `entry`
/// with `x0 = arg`.
fn enter_host(index: usize, entry: u64, arg: u64) -> ! {
    let s = Sections::get();
    let top = s
        .stack_top(index)
        .unwrap_or_else(|| fatal(format_args!("no stack for cpu {index}")));
    let hcr =
        engine::prepare_host_cpu().unwrap_or_else(|e| fatal(format_args!("host Stage-2: {e}")));
    if index == 0 {
        // SAFETY: HOST_ENTRY is host RAM, mapped at EL2; reading it does not
        // change it.
        let first = unsafe { core::ptr::read_volatile(entry as *const u32) };
        if first == 0 {
            say!("no host payload at {entry:#x} (load it with -device loader,file=...)");
            power_off(Verdict::Failure, "no host payload");
        }
        say!("entering the host at {entry:#x} on cpu 0 at EL1");
    }
    // SAFETY: interrupts are masked, the core installed the host's Stage-2
    // for this CPU (`prepare_host_cpu`), and we are about to leave EL2.
    unsafe { host::configure(hcr) };
    // SAFETY: EL2 is configured for the host; `top` is this CPU's stack top
    // and nothing on the stack is needed again.
    unsafe { exception::enter_el1(entry, arg, top) }
}

/// Every other CPU's Rust entry, on its own stack with the real map on.
#[unsafe(no_mangle)]
extern "C" fn isola_secondary_main(index: u64) -> ! {
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    // Acquire: pairs with the Release store before the host was entered.
    if !HOST_PHASE.load(Ordering::Acquire) {
        report_in(index);
        meet_at_barrier();
        let r = psci::cpu_off();
        fatal(format_args!("PSCI CPU_OFF after bring-up failed: {r}"));
    }
    match psci::take_pending(index) {
        Some(boot) => enter_host(index, boot.entry, boot.context),
        None => {
            say!("cpu {index} started with no host entry pending; turning it off");
            let r = psci::cpu_off();
            fatal(format_args!("PSCI CPU_OFF failed: {r}"))
        }
    }
}
