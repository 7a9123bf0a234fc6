//! The host's own interrupts, for running real guests: waking an idle CPU
//! at a guest timer's deadline or when another CPU gives it work, and
//! kicking a CPU out of the guest it runs when that guest's vCPU has a new
//! interrupt to take.
//!
//! The host owns the physical GIC (the engine programs none of it, see
//! boot/src/gic.rs). This module turns on, with interrupts still masked in
//! `PSTATE` (the payload never takes one: `WFI` wakes on a pending
//! interrupt whatever `PSTATE.I` says, and a guest's run ends at EL2 on
//! one, since the engine routes physical IRQs there while a guest runs):
//! - SGI [`KICK_SGI`], which one host CPU sends another;
//! - PPI 30, the EL1 physical timer, the host's alarm clock while idle and
//!   its time slice while a guest runs (a vCPU that spins without exiting
//!   must not keep the CPU from the others);
//! - PPI 27, the virtual timer: a guest's timer, firing while the guest
//!   runs, ends its turn so the host can inject it;
//! - PPI 25, the GIC maintenance interrupt: a guest finished an interrupt
//!   whose list register asked for `EOI` (`Exit::Eoi`).
//!
//! Invariants:
//! - Interrupts are acknowledged only by [`drain`], on the CPU they are
//!   pending on, after the guest's run or the idle wait they ended; the
//!   level-sensitive ones (25, 27) are low again by then, since the host's
//!   timer and virtual-interface state are back in the CPU.
//! - The physical timer is armed only inside [`idle_until`], and between
//!   [`slice_start`] and [`slice_end`] around one guest run; it is disarmed
//!   (its line low) whenever the host does anything else.

use core::arch::asm;

use isola_sync::atomic::{AtomicU64, Ordering};

/// The SGI one host CPU sends another.
pub const KICK_SGI: u32 = 0;
/// The GIC maintenance interrupt (PPI 9).
const MAINTENANCE_PPI: u32 = 25;
/// The virtual timer (PPI 11).
const VTIMER_PPI: u32 = 27;
/// The EL1 physical timer (PPI 14).
const PTIMER_PPI: u32 = 30;

/// `GICD_CTLR`: `EnableGrp1` (bit 1; `EnableGrp1NS` with two security
/// states), `ARE` (bit 4), and `RWP` (bit 31) to wait on.
const GICD_CTLR_GRP1_ARE: u32 = 1 << 1 | 1 << 4;
const GICD_CTLR_RWP: u32 = 1 << 31;
/// `GICR_WAKER`: `ProcessorSleep` (bit 1), `ChildrenAsleep` (bit 2).
const GICR_WAKER: u64 = 0x14;
const WAKER_SLEEP: u32 = 1 << 1;
const WAKER_ASLEEP: u32 = 1 << 2;
/// `GICR_TYPER` (64-bit): affinity in bits 63:32, `Last` bit 4.
const GICR_TYPER: u64 = 0x8;
/// One redistributor: RD frame and SGI frame (no VLPI frames on GICv3).
const GICR_STRIDE: u64 = 0x2_0000;
const SGI_FRAME: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x80;
const GICR_ISENABLER0: u64 = 0x100;

/// This CPU's redistributor, found by [`init_cpu`] (0: not yet).
static GICR_OF: [AtomicU64; isola_layout::MAX_CPUS] =
    [const { AtomicU64::new(0) }; isola_layout::MAX_CPUS];

fn read32(a: u64) -> u32 {
    // SAFETY: a GIC register, device-mapped by the host's stage-1 map
    // (every address below RAM) and given to the host by the engine.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn write32(a: u64, v: u32) {
    // SAFETY: as in `read32`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

fn read64(a: u64) -> u64 {
    // SAFETY: as in `read32` (GICR_TYPER is a 64-bit register).
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

/// Turns on group-1 interrupts with affinity routing at the distributor.
/// Once, on the boot CPU, before any CPU calls [`init_cpu`].
pub fn init_distributor(gicd: u64) {
    write32(gicd, read32(gicd) | GICD_CTLR_GRP1_ARE);
    while read32(gicd) & GICD_CTLR_RWP != 0 {
        isola_sync::spin_hint();
    }
}

/// The redistributor of the CPU whose MPIDR is `mpidr`, in the regions
/// `gicr` (base, size) of the device tree.
fn find_redistributor(gicr: &[(u64, u64)], mpidr: u64) -> Option<u64> {
    let aff = (mpidr & 0xff_ffff) | (mpidr >> 32 & 0xff) << 24;
    for &(base, size) in gicr {
        let mut frame = base;
        while frame < base.saturating_add(size) {
            let typer = read64(frame.wrapping_add(GICR_TYPER));
            if typer >> 32 == aff {
                return Some(frame);
            }
            if typer & 1 << 4 != 0 {
                break;
            }
            frame = frame.wrapping_add(GICR_STRIDE);
        }
    }
    None
}

/// This CPU's MPIDR (the engine shows the host its own).
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// On each CPU that runs guests (host CPU `cpu`): wakes its redistributor,
/// puts the SGIs and PPIs in group 1 and enables the four above, opens the
/// CPU interface to every priority. Whether it found its redistributor.
pub fn init_cpu(cpu: usize, gicr: &[(u64, u64)]) -> bool {
    let Some(rd) = find_redistributor(gicr, mpidr()) else {
        return false;
    };
    if let Some(slot) = GICR_OF.get(cpu) {
        slot.store(rd, Ordering::Relaxed);
    }
    let waker = rd.wrapping_add(GICR_WAKER);
    write32(waker, read32(waker) & !WAKER_SLEEP);
    while read32(waker) & WAKER_ASLEEP != 0 {
        isola_sync::spin_hint();
    }
    let sgi = rd.wrapping_add(SGI_FRAME);
    write32(sgi.wrapping_add(GICR_IGROUPR0), u32::MAX);
    write32(
        sgi.wrapping_add(GICR_ISENABLER0),
        1 << KICK_SGI | 1 << MAINTENANCE_PPI | 1 << VTIMER_PPI | 1 << PTIMER_PPI,
    );
    // SAFETY: the host's own GIC CPU interface (ICC_SRE_EL1.SRE is set by
    // the engine): every priority unmasked, group 1 on. PSTATE.I stays
    // set, so no interrupt is ever taken; they only wake WFI and end guest
    // runs.
    unsafe {
        asm!(
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        );
    }
    drain();
    true
}

/// Sends the kick SGI to the CPU whose MPIDR is `mpidr`.
pub fn kick(mpidr: u64) {
    let aff0 = mpidr & 0xf;
    // Aff0 above 15 needs the range selector.
    let rs = (mpidr & 0xff) >> 4;
    let word = 1u64 << aff0
        | (mpidr >> 8 & 0xff) << 16
        | u64::from(KICK_SGI) << 24
        | (mpidr >> 16 & 0xff) << 32
        | rs << 44
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

/// Acknowledges and ends every interrupt pending on this CPU; how many.
pub fn drain() -> u32 {
    let mut n = 0u32;
    loop {
        let iar: u64;
        // SAFETY: reading ICC_IAR1_EL1 acknowledges the highest pending
        // group-1 interrupt (or reads a special INTID when none is).
        unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack)) };
        let intid = iar & 0xff_ffff;
        if (1020..1024).contains(&intid) {
            return n;
        }
        // SAFETY: ends the interrupt just acknowledged (EOImode 0: priority
        // drop and deactivation together).
        unsafe { asm!("msr icc_eoir1_el1, {}", in(reg) iar, options(nomem, nostack)) };
        n = n.saturating_add(1);
    }
}

/// The physical counter now (what a guest's `Wfx` deadline is measured in:
/// guests run with `CNTVOFF_EL2` = 0).
pub fn now() -> u64 {
    let v: u64;
    // SAFETY: reading the counter has no side effect; the `isb` keeps the
    // read from being taken early.
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Counter ticks per second.
pub fn frequency() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sleeps in `WFI` until an interrupt is pending (a kick) or the counter
/// reaches `deadline`, then acknowledges whatever woke it.
pub fn idle_until(deadline: Option<u64>) {
    if let Some(d) = deadline {
        // SAFETY: the host's own EL1 physical timer: armed, unmasked at the
        // timer (the interrupt stays masked in PSTATE), disarmed below.
        unsafe {
            asm!(
                "msr cntp_cval_el0, {d}",
                "msr cntp_ctl_el0, {one}",
                "isb",
                d = in(reg) d,
                one = in(reg) 1u64,
                options(nomem, nostack, preserves_flags)
            );
        }
    }
    // SAFETY: waits for an interrupt (PSTATE.I masks taking it, not the
    // wake-up); then the timer is disarmed so its line drops before drain.
    unsafe {
        asm!(
            "wfi",
            "msr cntp_ctl_el0, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        );
    }
    drain();
}

/// Arms the physical timer to end the guest run about to start at counter
/// value `deadline` (a time slice).
pub fn slice_start(deadline: u64) {
    // SAFETY: the host's own EL1 physical timer, armed for one guest run
    // (the engine routes its interrupt to EL2 while the guest runs: the run
    // ends as `Exit::Irq`); `slice_end` disarms it.
    unsafe {
        asm!(
            "msr cntp_cval_el0, {d}",
            "msr cntp_ctl_el0, {one}",
            d = in(reg) deadline,
            one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Disarms the time slice after the run (its interrupt, if it fired, is
/// low again and needs no acknowledgement).
pub fn slice_end() {
    // SAFETY: disarming the host's own timer.
    unsafe {
        asm!(
            "msr cntp_ctl_el0, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        )
    };
}
