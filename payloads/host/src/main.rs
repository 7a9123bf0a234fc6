//! The test host: a tiny EL1 "hypervisor" that drives the engine in booted
//! tests and prints what it sees, one line per fact, for the harness
//! (xtask's console judge) to compare with the expected output.
//!
//! It runs on the boot CPU from `_start` with `x0` = its device tree, and on
//! every other CPU from `host_secondary_entry` (started through the engine's
//! PSCI relay) with `x0` = the CPU's index. What it tests is chosen by the
//! boot argument `isola.test=` (`/chosen/bootargs`, set with QEMU's
//! `-append`): `smp`, `probe`, `badcall`, `dma`, `vms`, `bench`, `guest`
//! (a Linux guest, `cargo xtask guest`), `census`, `psci`, `storm` or `all`
//! (the default: `smp`, `probe`, `badcall`, `dma` and `vms`).
//!
//! | module | job |
//! |---|---|
//! | `entry` | first instructions, the stage-1 map, the exception vectors |
//! | `console` | whole lines under a lock, the failed-check count |
//! | `calls` | `hvc` and PSCI calls, status names |
//! | `irq` | the GIC and the host's tick on the virtual timer |
//! | `basic` | the `smp`, `probe` and `badcall` tests |
//! | `dma` | the DMA test: a PCI device's and fw_cfg's DMA, the LPI tables (docs/devices.md) |
//! | `vms` | the VM test (docs/guests.md), a folder of its own, with the Linux guests (`vms/linux/`) |
//! | `census` | the register census (docs/guests.md) |
//! | `races` | PSCI races through the relay |
//! | `storm` | valid random calls on every CPU at once, each timed against a bound |
//! | `bench` | the instruction-count benchmark (`cargo xtask bench`) |
//! | `heap` | the global allocator the VMM (`isola-vmm`) needs |
//! | `pmu` | the instruction counters the benchmark and the Linux guest's figures read |
#![no_std]
#![no_main]
#![deny(unsafe_code)]

/// Assembly (for `global_asm!`) that stores `q0..=q31` at `[x0]`, 512
/// bytes: the FP/SIMD half of the frames the host's exception and IRQ
/// entries save around a Rust handler.
macro_rules! save_q0_to_q31_at_x0 {
    () => {
        "stp q0, q1, [x0, #0]\nstp q2, q3, [x0, #32]\nstp q4, q5, [x0, #64]\nstp q6, q7, [x0, #96]\n\
         stp q8, q9, [x0, #128]\nstp q10, q11, [x0, #160]\nstp q12, q13, [x0, #192]\nstp q14, q15, [x0, #224]\n\
         stp q16, q17, [x0, #256]\nstp q18, q19, [x0, #288]\nstp q20, q21, [x0, #320]\nstp q22, q23, [x0, #352]\n\
         stp q24, q25, [x0, #384]\nstp q26, q27, [x0, #416]\nstp q28, q29, [x0, #448]\nstp q30, q31, [x0, #480]"
    };
}

/// Assembly that loads `q0..=q31` back from `[x0]`, where
/// `save_q0_to_q31_at_x0!` put them.
macro_rules! load_q0_to_q31_at_x0 {
    () => {
        "ldp q0, q1, [x0, #0]\nldp q2, q3, [x0, #32]\nldp q4, q5, [x0, #64]\nldp q6, q7, [x0, #96]\n\
         ldp q8, q9, [x0, #128]\nldp q10, q11, [x0, #160]\nldp q12, q13, [x0, #192]\nldp q14, q15, [x0, #224]\n\
         ldp q16, q17, [x0, #256]\nldp q18, q19, [x0, #288]\nldp q20, q21, [x0, #320]\nldp q22, q23, [x0, #352]\n\
         ldp q24, q25, [x0, #384]\nldp q26, q27, [x0, #416]\nldp q28, q29, [x0, #448]\nldp q30, q31, [x0, #480]"
    };
}

#[allow(unsafe_code, reason = "the probe of engine memory is a raw read")]
mod basic;
/// Benchmark mode (`isola.test=bench`), run by `cargo xtask bench`.
#[allow(
    unsafe_code,
    reason = "PMU registers, the benchmark guest's code, its sample buffers"
)]
mod bench;
#[allow(unsafe_code, reason = "`hvc` and `smc` are instructions")]
mod calls;
/// The register census (`isola.test=census`): docs/guests.md.
#[allow(
    unsafe_code,
    reason = "reads every system register by an instruction it writes and runs; its own vectors; the guest image and pool pages"
)]
mod census;
#[allow(unsafe_code, reason = "the UART's registers are memory-mapped I/O")]
mod console;
/// The DMA test (`isola.test=dma`, part of `all`): docs/devices.md.
#[allow(
    unsafe_code,
    reason = "the device's registers and PCI config space are MMIO; the guest's code; the probes of the pages the device wrote"
)]
mod dma;
#[allow(
    unsafe_code,
    reason = "the first instructions, the stage-1 map, the exception vectors"
)]
mod entry;
#[allow(
    unsafe_code,
    reason = "a global allocator hands out raw memory from the heap's range"
)]
mod heap;
#[allow(
    unsafe_code,
    reason = "the GIC's registers, the timer and the IRQ vector entry are the CPU's"
)]
mod irq;
#[allow(unsafe_code, reason = "PMU registers are system registers")]
mod pmu;
/// PSCI races through the engine's relay (`isola.test=psci`).
mod races;
/// The storm (`isola.test=storm`): valid random calls on every CPU at once,
/// each timed against a bound (docs/perf.md).
#[allow(
    unsafe_code,
    reason = "the virtual counter and timer are system registers"
)]
mod storm;
/// The VM test (`isola.test=vms`, part of `all`): docs/guests.md.
#[allow(
    unsafe_code,
    reason = "its probes, the register probe, cache maintenance, and the vCPU records only the claiming CPU touches"
)]
mod vms;

extern crate alloc;

use core::cell::UnsafeCell;

use isola_abi::psci;
use isola_fdt as fdt;

use calls::power_off;
use console::{fail, say};

struct PlatformCell(UnsafeCell<fdt::Platform>);
#[allow(unsafe_code, reason = "one writer before any reader, by construction")]
// SAFETY: written only by the boot CPU in `host_main` before it starts any
// other CPU; the secondaries never read it.
unsafe impl Sync for PlatformCell {}
static PLATFORM: PlatformCell = PlatformCell(UnsafeCell::new(fdt::Platform::empty()));

#[unsafe(no_mangle)]
#[allow(
    unsafe_code,
    reason = "the entry the assembly calls by name; reads the device tree the engine handed over"
)]
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
        console::set_uart(u.base);
    }
    irq::init_distributor(p);
    let args = fdt::bootargs(&tree).ok().flatten().unwrap_or("");
    let test = args
        .split(' ')
        .find_map(|w| w.strip_prefix("isola.test="))
        .unwrap_or("all");
    vms::linux::configure(args);
    let ram = p.ram().first().copied().unwrap_or_default();
    say!(
        "up at EL1 on cpu 0: device tree at {dtb:#x}, {} CPUs, RAM {:#x}..{:#x}, test {test}",
        p.cpu_count,
        ram.base,
        ram.base.wrapping_add(ram.size)
    );
    let v = calls::psci(psci::VERSION, 0, 0, 0);
    say!(
        "PSCI version {}.{} through the engine's relay",
        v >> 16,
        v & 0xffff
    );
    basic::version_line(0);
    if test == "bench" {
        bench::run();
    }
    let all = test == "all";
    if all || test == "smp" {
        basic::smp(p);
    }
    if all || test == "probe" {
        basic::probe();
    }
    if all || test == "badcall" {
        basic::bad_calls();
    }
    if (all || test == "dma") && !dma::main(&tree, p.gicr().first().map(|r| r.base)) {
        fail(format_args!("the DMA test failed"));
    }
    if (all || test == "vms") && !vms::main(p.cpus(), entry::secondary_entry()) {
        fail(format_args!("the VM test failed"));
    }
    if test == "guest" && !vms::linux::main(p.cpus(), entry::secondary_entry()) {
        fail(format_args!("the Linux guest test failed"));
    }
    if test == "census" && !census::main() {
        fail(format_args!("the register census failed"));
    }
    if test == "psci" && !races::main(p, entry::secondary_entry()) {
        fail(format_args!("the PSCI races failed"));
    }
    if test == "storm" && !storm::main(p.cpus(), entry::secondary_entry()) {
        fail(format_args!("the storm failed"));
    }
    match console::failures() {
        0 => say!("verdict: PASS"),
        n => say!("verdict: {n} check(s) FAILED"),
    }
    power_off()
}

#[unsafe(no_mangle)]
#[allow(unsafe_code, reason = "the entry the assembly calls by name")]
extern "C" fn host_secondary(index: u64) -> ! {
    let i = index as usize;
    if let Some(never) = races::secondary(i) {
        match never {}
    }
    storm::secondary(i);
    vms::secondary(i);
    vms::linux::secondary(i);
    basic::secondary(i)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {info}");
    power_off()
}
