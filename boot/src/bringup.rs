//! Bring-up: the boot CPU reads the machine, maps it, builds the core and
//! starts every other CPU; each CPU then enters the host at EL1. The
//! sequence is in the crate root's documentation (`main.rs`); the first
//! instructions before it are `entry.rs`'s.

use core::cell::UnsafeCell;

use isola_fdt::{self as fdt, Fdt, Platform, PsciConduit};
use isola_sync::RendezvousBarrier;
use isola_sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::console::say;
use crate::layout::{
    CARVEOUT_BASE, CARVEOUT_END, HOST_DTB, HOST_DTB_MAX, HOST_ENTRY, MAX_CPUS, Sections,
};
use crate::stop::{Verdict, fatal, power_off};
use crate::{
    caches, console, cpu, cpu_state, dma, engine, gic, host, layout, mmu, platform, psci, relay,
    vectors,
};

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
    use vectors::{Probe, probe_faults};
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
    let dtb = find_dtb(x0).unwrap_or_else(|e| fatal(format_args!("device tree: {e}")));
    let tree = Fdt::new(dtb).unwrap_or_else(|e| {
        fatal(format_args!(
            "device tree at {:#x}: {e}",
            dtb.as_ptr() as u64
        ))
    });
    // SAFETY: the boot CPU, before any other CPU runs.
    let p = unsafe {
        platform::set_up(|p| {
            if let Err(e) = fdt::parse_platform(&tree, p) {
                fatal(format_args!("device tree: {e}"));
            }
            if let Err(e) = check_platform(p) {
                say!("the device tree describes a machine the engine cannot use: {e}");
                power_off(Verdict::Failure, "unusable device tree");
            }
            // The boot CPU is index 0 (the percpu contract).
            match p.cpu_index(cpu::mpidr()).and_then(|i| p.cpus.get_mut(..=i)) {
                Some([first, .., found]) => core::mem::swap(first, found),
                Some(_) => {}
                None => fatal(format_args!("the boot CPU is not in /cpus")),
            }
            if let Some(uart) = p.uart {
                console::set_uart(uart.base);
            }
        })
    };
    if let Err(e) = dma::scan(&tree) {
        fatal(format_args!("device tree: {e}"));
    }
    #[cfg(feature = "planted-bug-panic-path")]
    planted_panic_path(p);
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

/// `planted-bug-panic-path` (never a real build): a bounds-checked index the
/// compiler cannot prove in bounds, which `cargo xtask test`'s disassembly
/// of the image must find.
#[cfg(feature = "planted-bug-panic-path")]
#[inline(never)]
fn planted_panic_path(p: &Platform) {
    #[expect(clippy::indexing_slicing, reason = "the planted panic path")]
    let mpidr = p.cpus[core::hint::black_box(p.cpu_count)];
    say!("planted: cpu {mpidr:#x}");
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

/// Copies QEMU's device tree into host memory, removes the engine's
/// carve-out from its `/memory` node and the devices the host does not get
/// (`dma::edit_host_dtb`).
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
    if let Err(e) = engine::install_host_stage2() {
        fatal(format_args!("host Stage-2: {e}"));
    }
    let regions = platform::get().gicr().iter().map(|r| (r.base, r.size));
    // SAFETY: the device tree's redistributor regions, mapped Device in the
    // EL2 map (`build_map`).
    let rd = unsafe { gic::Redistributor::find(regions, cpu::mpidr()) };
    if cpu_state::with_this(|c| c.redistributor = rd.map_or(0, gic::Redistributor::raw)).is_err() {
        fatal(format_args!(
            "cpu {index}: its per-CPU record is not reachable"
        ));
    }
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
    // for this CPU (`install_host_stage2`), and we are about to leave EL2.
    unsafe { host::configure(host::HCR_HOST_STAGE2.union(caches::hcr_fwb_host())) };
    // SAFETY: EL2 is configured for the host; `top` is this CPU's stack top
    // and nothing on the stack is needed again.
    unsafe { vectors::enter_el1(entry, arg, top) }
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
    match relay::take_pending(index) {
        Some(boot) => enter_host(index, boot.entry, boot.context),
        None => {
            say!("cpu {index} started with no host entry pending; turning it off");
            let r = psci::cpu_off();
            fatal(format_args!("PSCI CPU_OFF failed: {r}"))
        }
    }
}
