//! The host's interrupts: the GICv3 (distributor, this CPU's
//! redistributor, the system-register CPU interface), a periodic tick on
//! the EL1 virtual timer (`CNTV_*`, PPI 27), as Linux at EL1 ticks, and
//! the kick SGI one CPU sends another ([`kick`], for the Linux guests'
//! host: to wake an idle CPU or end the guest run it is in). Guests
//! then run while the GIC delivers the host's timer on every CPU, so their
//! runs end with `Exit::Irq` and the host takes its interrupt right after.
//!
//! Invariants:
//! - The IRQ handler ([`host_irq`]) touches only this CPU's tick counters
//!   and timer, and never the console (the code it interrupted may hold the
//!   console's lock); the vector entry saves and restores every register
//!   the handler may clobber, FP/SIMD included, so interrupted code —
//!   including the register probe around `VcpuRun` — sees nothing.
//! - A CPU's counters are written only by that CPU's handler and read by
//!   others only after the CPU has stopped ticking.
//! - The maintenance interrupt (PPI 25) is enabled like the tick: the
//!   engine must never let it reach the host (it clears `ICH_HCR_EL2.En`
//!   before the host runs), so the handler counts any that arrives as a
//!   failure.

use core::arch::{asm, global_asm};

use isola_layout::MAX_CPUS;
use isola_sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The SGI one host CPU sends another to wake it from `WFI` or to end the
/// guest run it is in (the Linux guests' host, `vms/linux/`).
pub const KICK_SGI: u32 = 0;
/// The virtual timer's PPI.
pub const VTIMER_PPI: u32 = 27;
/// The GIC maintenance interrupt's PPI.
pub const MAINTENANCE_PPI: u32 = 25;

/// The distributor's base (0: no GIC known).
static GICD: AtomicU64 = AtomicU64::new(0);
/// Redistributor regions `(base, size)`, as the device tree gives them.
static GICR: [(AtomicU64, AtomicU64); isola_fdt::MAX_GICR] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; isola_fdt::MAX_GICR];

/// One CPU's interrupt record.
struct CpuIrqs {
    /// Timer interrupts taken.
    ticks: AtomicU64,
    /// Kicks taken ([`KICK_SGI`]).
    kicks: AtomicU64,
    /// Interrupts that should never reach the host (the maintenance PPI,
    /// the EL2 timer's PPI), and unknown ones.
    stray: AtomicU64,
    /// The last stray INTID (for the report).
    last_stray: AtomicU64,
    /// The tick's period in counter ticks (0: not ticking).
    period: AtomicU64,
}

static CPUS: [CpuIrqs; MAX_CPUS] = [const {
    CpuIrqs {
        ticks: AtomicU64::new(0),
        kicks: AtomicU64::new(0),
        stray: AtomicU64::new(0),
        last_stray: AtomicU64::new(0),
        period: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// How many CPUs initialised their CPU interface.
static READY: AtomicUsize = AtomicUsize::new(0);

macro_rules! sysreg_read {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading this EL1/EL0 system register has no side effect.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

macro_rules! sysreg_write {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the callers write only the host's own GIC CPU interface
        // and virtual timer registers, with the `isb` that puts them in force.
        unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) v, options(nostack, preserves_flags)) };
    }};
}

/// This CPU's index, which the entry put in `TPIDR_EL1`.
pub fn this_cpu() -> usize {
    sysreg_read!("tpidr_el1") as usize
}

fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the callers pass a GIC register inside the device window of
    // the host's stage-1 map (1 GiB of Device memory at 0); reads of these
    // registers have no side effect.
    unsafe { core::ptr::with_exposed_provenance::<u32>(addr as usize).read_volatile() }
}

fn mmio_read64(addr: u64) -> u64 {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::with_exposed_provenance::<u64>(addr as usize).read_volatile() }
}

fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as for `mmio_read32`; the host owns the GIC, and each write
    // here configures an interrupt of its own CPU (or the distributor once).
    unsafe { core::ptr::with_exposed_provenance_mut::<u32>(addr as usize).write_volatile(v) }
}

fn mmio_write8(addr: u64, v: u8) {
    // SAFETY: as for `mmio_write32` (the priority registers are
    // byte-accessible).
    unsafe { core::ptr::with_exposed_provenance_mut::<u8>(addr as usize).write_volatile(v) }
}

/// Records the GIC's addresses and enables the distributor (affinity
/// routing, group 1). Boot CPU, before it starts any other.
pub fn init_distributor(p: &isola_fdt::Platform) {
    let Some(d) = p.gicd else { return };
    for (slot, r) in GICR.iter().zip(p.gicr()) {
        slot.0.store(r.base, Ordering::Relaxed);
        slot.1.store(r.size, Ordering::Relaxed);
    }
    GICD.store(d.base, Ordering::Release);
    // GICD_CTLR (one security state, as QEMU virt without EL3 has it):
    // ARE (bit 4), EnableGrp1 (bit 1); then wait for RWP (bit 31).
    mmio_write32(d.base, 1 << 4 | 1 << 1);
    while mmio_read32(d.base) & 1 << 31 != 0 {
        core::hint::spin_loop();
    }
}

/// This CPU's redistributor `RD_base`, found by affinity.
fn redistributor() -> Option<u64> {
    let mpidr = sysreg_read!("mpidr_el1");
    let want = (mpidr >> 32 & 0xff) << 24 | (mpidr & 0xff_ffff);
    for (b, s) in &GICR {
        let (base, size) = (b.load(Ordering::Relaxed), s.load(Ordering::Relaxed));
        let mut frame = base;
        while frame < base.saturating_add(size) {
            let typer = mmio_read64(frame.wrapping_add(8));
            if typer >> 32 == want {
                return Some(frame);
            }
            if typer & 1 << 4 != 0 {
                break;
            }
            frame = frame.saturating_add(if typer & 2 != 0 { 0x4_0000 } else { 0x2_0000 });
        }
    }
    None
}

/// Wakes this CPU's redistributor, puts its PPIs in group 1 at priority
/// 0xa0, enables the timer and maintenance PPIs and the CPU interface
/// (priority mask open, group 1 on). Interrupts stay masked (`PSTATE.I`).
/// Returns whether the GIC was found.
pub fn init_cpu() -> bool {
    if GICD.load(Ordering::Acquire) == 0 {
        return false;
    }
    let Some(rd) = redistributor() else {
        return false;
    };
    let sgi = rd.wrapping_add(0x1_0000);
    // GICR_WAKER: clear ProcessorSleep (bit 1), wait for ChildrenAsleep
    // (bit 2) to clear.
    let waker = rd.wrapping_add(0x14);
    mmio_write32(waker, mmio_read32(waker) & !(1 << 1));
    while mmio_read32(waker) & 1 << 2 != 0 {
        core::hint::spin_loop();
    }
    // GICR_IGROUPR0: every SGI/PPI in group 1.
    mmio_write32(sgi.wrapping_add(0x80), u32::MAX);
    for ppi in [VTIMER_PPI, MAINTENANCE_PPI, KICK_SGI] {
        mmio_write8(sgi.wrapping_add(0x400).wrapping_add(u64::from(ppi)), 0xa0);
    }
    // GICR_ISENABLER0.
    mmio_write32(
        sgi.wrapping_add(0x100),
        1 << VTIMER_PPI | 1 << MAINTENANCE_PPI | 1 << KICK_SGI,
    );
    // ICC_SRE_EL1.SRE, then the CPU interface: every priority passes, no
    // preemption grouping, group 1 on.
    sysreg_write!("icc_sre_el1", sysreg_read!("icc_sre_el1") | 1);
    sysreg_write!("icc_pmr_el1", 0xff);
    sysreg_write!("icc_bpr1_el1", 0);
    sysreg_write!("icc_igrpen1_el1", 1);
    READY.fetch_add(1, Ordering::Relaxed);
    true
}

/// Starts this CPU's tick: the virtual timer fires every `period` counter
/// ticks; interrupts are unmasked (`PSTATE.I` clear) until [`stop_tick`].
pub fn start_tick(period: u64) {
    let Some(c) = CPUS.get(this_cpu()) else {
        return;
    };
    c.period.store(period, Ordering::Relaxed);
    arm(period);
    // SAFETY: unmasking IRQs: the vectors of this CPU send them to
    // `host_irq_entry`, which preserves every register.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack, preserves_flags)) };
}

/// Stops this CPU's tick and masks interrupts again.
pub fn stop_tick() {
    // SAFETY: masking IRQs only defers them.
    unsafe { asm!("msr daifset, #2", "isb", options(nostack, preserves_flags)) };
    sysreg_write!("cntv_ctl_el0", 0);
    if let Some(c) = CPUS.get(this_cpu()) {
        c.period.store(0, Ordering::Relaxed);
    }
}

/// The next deadline `period` ticks from now, enabled and unmasked.
fn arm(period: u64) {
    let now = sysreg_read!("cntvct_el0");
    sysreg_write!("cntv_cval_el0", now.wrapping_add(period));
    sysreg_write!("cntv_ctl_el0", 1);
}

/// Timer ticks CPU `cpu` has taken.
pub fn ticks(cpu: usize) -> u64 {
    CPUS.get(cpu).map_or(0, |c| c.ticks.load(Ordering::Relaxed))
}

/// Interrupts that should never have reached CPU `cpu`'s host: how many,
/// and the last one's INTID.
pub fn strays(cpu: usize) -> (u64, u64) {
    CPUS.get(cpu).map_or((0, 0), |c| {
        (
            c.stray.load(Ordering::Relaxed),
            c.last_stray.load(Ordering::Relaxed),
        )
    })
}

/// Sends the kick SGI to the CPU whose MPIDR is `mpidr`.
pub fn kick(mpidr: u64) {
    // Aff0 above 15 needs the range selector.
    let word = 1u64 << (mpidr & 0xf)
        | (mpidr >> 8 & 0xff) << 16
        | u64::from(KICK_SGI) << 24
        | (mpidr >> 16 & 0xff) << 32
        | (mpidr >> 4 & 0xf) << 44
        | (mpidr >> 32 & 0xff) << 48;
    // SAFETY: the barrier makes this CPU's earlier stores visible before
    // the SGI can be seen; the write only raises an interrupt.
    unsafe {
        asm!(
            "dsb ishst",
            "msr icc_sgi1r_el1, {w}",
            "isb",
            w = in(reg) word,
            options(nostack, preserves_flags)
        );
    }
}

/// Kicks CPU `cpu` has taken.
pub fn kicks(cpu: usize) -> u64 {
    CPUS.get(cpu).map_or(0, |c| c.kicks.load(Ordering::Relaxed))
}

/// The physical counter now (what a guest's `Wfx` deadline is measured
/// in: guests run with `CNTVOFF_EL2` = 0).
pub fn now() -> u64 {
    let v: u64;
    // SAFETY: reading the counter has no side effect; the `isb` keeps the
    // read from being taken early.
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Waits for an interrupt unless `work()` finds something first: with
/// IRQs masked, `work()` looks; if it found nothing, `WFI` (which an
/// interrupt pending since the look, say a kick, ends at once); then IRQs
/// are unmasked again and the interrupt is taken. So no kick sent after
/// the look is lost. Call with IRQs unmasked (while ticking).
pub fn wait_unless(work: impl FnOnce() -> bool) {
    // SAFETY: masking IRQs only defers them.
    unsafe { asm!("msr daifset, #2", "isb", options(nostack, preserves_flags)) };
    if !work() {
        // SAFETY: waiting for an interrupt has no other effect.
        unsafe { asm!("dsb sy", "wfi", options(nostack, preserves_flags)) };
    }
    // SAFETY: unmasking IRQs: the vectors send them to `host_irq_entry`.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack, preserves_flags)) };
}

/// The counter frequency.
pub fn frequency() -> u64 {
    sysreg_read!("cntfrq_el0")
}

/// The Rust side of an IRQ: acknowledge, count, re-arm the tick, end.
#[unsafe(no_mangle)]
extern "C" fn host_irq() {
    let iar = sysreg_read!("icc_iar1_el1");
    let intid = iar & 0xff_ffff;
    if intid >= 1020 {
        return; // Spurious: nothing to end.
    }
    if let Some(c) = CPUS.get(this_cpu()) {
        if intid == u64::from(VTIMER_PPI) {
            c.ticks.fetch_add(1, Ordering::Relaxed);
            match c.period.load(Ordering::Relaxed) {
                0 => sysreg_write!("cntv_ctl_el0", 0),
                p => arm(p),
            }
        } else if intid == u64::from(KICK_SGI) {
            // Its work was done by arriving: the guest run or the `WFI` it
            // ended.
            c.kicks.fetch_add(1, Ordering::Relaxed);
        } else {
            c.stray.fetch_add(1, Ordering::Relaxed);
            c.last_stray.store(intid, Ordering::Relaxed);
        }
    }
    sysreg_write!("icc_eoir1_el1", iar);
}

// The IRQ vector entry both of the host's vector tables branch to: saves
// every register the AAPCS64 lets `host_irq` clobber, FP/SIMD and their
// status included, and the exception registers (a nested synchronous
// exception in the handler would overwrite them), then returns to the
// interrupted code exactly as it was.
global_asm!(
    r#"
    .section .text.host_irq_entry, "ax"
    .global host_irq_entry
host_irq_entry:
    sub sp, sp, #816
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
    mrs x0, elr_el1
    mrs x1, spsr_el1
    stp x0, x1, [sp, #176]
    mrs x0, fpcr
    mrs x1, fpsr
    stp x0, x1, [sp, #192]
    add x0, sp, #256
"#,
    save_q0_to_q31_at_x0!(),
    r#"
    bl host_irq
    add x0, sp, #256
"#,
    load_q0_to_q31_at_x0!(),
    r#"
    ldp x0, x1, [sp, #192]
    msr fpcr, x0
    msr fpsr, x1
    ldp x0, x1, [sp, #176]
    msr elr_el1, x0
    msr spsr_el1, x1
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
    add sp, sp, #816
    eret
"#
);
