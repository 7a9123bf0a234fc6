//! The GICv3 as EL2 sees it: the system-register interface the host is
//! given, and the virtual CPU interface a guest's `ICC_*_EL1` accesses reach.
//!
//! The host owns the GIC (distributor, redistributors, its physical CPU
//! interface): the engine routes no interrupt to itself and programs nothing
//! but the two things below.
//!
//! Invariants:
//! - While a guest runs, the virtual CPU interface holds exactly that
//!   vCPU's state from its context page ([`VcpuInterface::load`]): its list
//!   registers (the first [`Shape::lrs`]; every other implemented one is 0
//!   since boot), `ICH_VMCR_EL2`, its active-priority registers, and
//!   `ICH_HCR_EL2` = `En`. So no guest ever reads what another left there.
//! - While the host runs, `ICH_HCR_EL2` is 0 ([`VcpuInterface::save`] after
//!   every run, [`reset_virtual_interface`] at boot): the interface signals
//!   no virtual interrupt and no maintenance interrupt, so the host never
//!   takes PPI 25 on a guest's behalf. The list registers, `ICH_VMCR_EL2`
//!   and the active priorities keep the last guest's values meanwhile: only
//!   EL2 can read them, and the next entry overwrites every one a guest can
//!   observe.
//! - This CPU's redistributor ([`Redistributor`]) is the host's; the engine
//!   touches only two enable bits of it, and gives each back as it found it
//!   (see [`Redistributor::mask_ppi`]).

use core::arch::asm;

use isola::vcpu::{OFF_AP0R, OFF_AP1R, OFF_LR, OFF_VMCR};
use isola_sync::atomic::{AtomicU32, Ordering};

use crate::sysreg::{
    ICC_SRE_EL2, ICH_HCR_EL2, ICH_VTR_EL2, ID_AA64PFR0_EL1, Readable, Value, write_batched,
    write_isb,
};

/// ICC_SRE_EL2 for the host: SRE (EL2's own GIC accesses use system
/// registers), DFB and DIB (no FIQ/IRQ bypass), and Enable (EL1 may use
/// ICC_SRE_EL1, so the host reaches the physical CPU interface through
/// system registers). Linux's arm64 boot protocol requires SRE and Enable
/// when it is entered at EL1 on a GICv3; QEMU's register reads as this value
/// whatever is written, hardware's resets to an UNKNOWN value.
pub const ICC_SRE_HOST: Value<ICC_SRE_EL2::Register> = Value::new(&[
    ICC_SRE_EL2::SRE::SET,
    ICC_SRE_EL2::DFB::SET,
    ICC_SRE_EL2::DIB::SET,
    ICC_SRE_EL2::ENABLE::SET,
]);

/// Gives EL1 the GIC's system-register interface.
///
/// # Safety
/// At EL2 with interrupts masked, before entering the host on this CPU.
pub unsafe fn configure_host() {
    // SAFETY: ICC_SRE_EL2 controls how EL2 and EL1 reach the CPU interface;
    // the engine takes no interrupt and EL1 does not run (the caller's
    // contract).
    unsafe { write_isb!(ICC_SRE_EL2, ICC_SRE_HOST) };
}

/// How much of the virtual CPU interface this machine has and the engine
/// uses: list registers handed to guests (`ICH_VTR_EL2.ListRegs + 1`,
/// capped at the core's [`isola_abi::lr::SLOTS`]) and active-priority
/// registers per group (`2^(PRIbits - 4)`: 1, 2 or 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// List registers a vCPU's context holds and the switch loads.
    pub lrs: u8,
    /// `ICH_AP0R<n>_EL2` (and `ICH_AP1R<n>_EL2`) registers, n below this.
    pub aprs: u8,
    /// List registers the CPU implements (all zeroed at boot).
    pub implemented: u8,
}

/// The [`Shape`], as [`read_shape`] found it on the boot CPU: `lrs` in bits
/// 0..8, `aprs` in 8..16, `implemented` in 16..24 (0: no virtual CPU
/// interface). Written once at boot before any other CPU starts.
static SHAPE: AtomicU32 = AtomicU32::new(0);

/// Reads this CPU's virtual CPU interface shape and records it for
/// [`shape`]: `None` without the GIC system-register interface
/// (`ID_AA64PFR0_EL1.GIC` = 0). Every CPU of a machine the engine runs on
/// has the same GIC implementation, so the boot CPU's answer is everyone's.
pub fn read_shape() -> Option<Shape> {
    if ID_AA64PFR0_EL1.read(ID_AA64PFR0_EL1::GIC) == 0 {
        return None;
    }
    let implemented = ICH_VTR_EL2.read(ICH_VTR_EL2::ListRegs).wrapping_add(1);
    // ICH_VTR_EL2.PRIbits is the number of priority bits minus one:
    // 5 bits need AP<m>R0, 6 bits AP<m>R0..1, 7 bits AP<m>R0..3.
    let aprs: u8 = match ICH_VTR_EL2.read(ICH_VTR_EL2::PRIbits).wrapping_add(1) {
        0..=5 => 1,
        6 => 2,
        _ => 4,
    };
    let s = Shape {
        lrs: implemented.min(isola_abi::lr::SLOTS as u64) as u8,
        aprs,
        implemented: implemented.min(16) as u8,
    };
    SHAPE.store(
        u32::from(s.lrs) | u32::from(s.aprs) << 8 | u32::from(s.implemented) << 16,
        Ordering::Relaxed,
    );
    Some(s)
}

/// The shape [`read_shape`] recorded at boot (`None` before, or without a
/// virtual CPU interface).
#[inline]
pub fn shape() -> Option<Shape> {
    // Relaxed: written once by the boot CPU before any other CPU started
    // (the PSCI CPU_ON that starts them orders it).
    let s = SHAPE.load(Ordering::Relaxed);
    (s != 0).then_some(Shape {
        lrs: s as u8,
        aprs: (s >> 8) as u8,
        implemented: (s >> 16) as u8,
    })
}

/// Resets the GICv3 virtual CPU interface: `ICH_HCR_EL2` (interface off),
/// `ICH_VMCR_EL2`, every implemented list register and active-priority
/// register to 0. At boot on every CPU, so the first guest sees zeros
/// rather than reset-UNKNOWN values and the list registers the engine never
/// hands out stay empty. Does nothing without the GIC system-register
/// interface. No `isb`: the registers take effect at the next `eret` to a
/// guest, which synchronises them.
///
/// # Safety
/// At EL2 with interrupts masked, while no guest runs on this CPU, after
/// [`configure_host`] (the `ICH_*` registers need `ICC_SRE_EL2.SRE`).
pub unsafe fn reset_virtual_interface() {
    let Some(s) = shape().or_else(read_shape) else {
        return;
    };
    // SAFETY: the interface exists (a shape was read) and ICC_SRE_EL2.SRE is
    // set (the caller's contract); only implemented registers are written;
    // they affect only a guest's virtual CPU interface, and no guest runs
    // here (the caller's contract).
    unsafe {
        write_batched!(ICH_HCR_EL2, Value::raw(0));
        let zero = [0u64; 16];
        write_lrs(&zero, usize::from(s.implemented));
        write_vmcr_aprs(0, &[0; 4], &[0; 4], s.aprs);
    }
}

/// One vCPU's virtual CPU interface, as its context page keeps it (the
/// core's layout: `OFF_LR`, `OFF_VMCR`, `OFF_AP0R`, `OFF_AP1R`).
pub struct VcpuInterface;

impl VcpuInterface {
    /// Puts the vCPU's state in the interface and enables it
    /// (`ICH_HCR_EL2.En`; no other control: the host asks for maintenance
    /// per list register with `EOI`).
    ///
    /// # Safety
    /// At EL2 with interrupts masked, on the way into a guest (the `eret`
    /// synchronises the writes); `ctx` is the loaded vCPU's context page,
    /// this CPU's alone; `s` is [`shape`]'s.
    #[inline]
    pub unsafe fn load(ctx: *const u8, s: Shape) {
        if s.lrs == 4 && s.aprs == 1 {
            // SAFETY: as below; the common shape (4 list registers, 5
            // priority bits: QEMU's, Arm's Neoverse cores') in one straight
            // run of loads and writes.
            unsafe { load_4_1(ctx) };
            return;
        }
        let word = |off: u64| {
            // SAFETY: within the context page (the core's layout test keeps
            // the virtual-interface area inside it), 8-byte aligned.
            unsafe { ctx.wrapping_add(off as usize).cast::<u64>().read_volatile() }
        };
        let lrs: [u64; 4] =
            core::array::from_fn(|n| word(OFF_LR.wrapping_add((n as u64).wrapping_mul(8))));
        let ap0: [u64; 4] =
            core::array::from_fn(|n| word(OFF_AP0R.wrapping_add((n as u64).wrapping_mul(8))));
        let ap1: [u64; 4] =
            core::array::from_fn(|n| word(OFF_AP1R.wrapping_add((n as u64).wrapping_mul(8))));
        // SAFETY: registers of the interface `s` describes; they take
        // effect for the guest at the `eret` (the caller's contract).
        unsafe {
            write_lrs(&lrs, usize::from(s.lrs));
            write_vmcr_aprs(word(OFF_VMCR), &ap0, &ap1, s.aprs);
            write_batched!(ICH_HCR_EL2, Value::new(&[ICH_HCR_EL2::En::SET]));
        }
    }

    /// Saves the vCPU's state from the interface into its context page and
    /// disables the interface (`ICH_HCR_EL2` = 0), which also drops the
    /// maintenance interrupt: EL2 never acknowledges it.
    ///
    /// # Safety
    /// At EL2 with interrupts masked, right after the guest's exit, before
    /// the host runs; `ctx` and `s` as for [`VcpuInterface::load`].
    #[inline]
    pub unsafe fn save(ctx: *mut u8, s: Shape) {
        if s.lrs == 4 && s.aprs == 1 {
            // SAFETY: as below, for the common shape.
            unsafe { save_4_1(ctx) };
            return;
        }
        let mut lrs = [0u64; 4];
        let mut ap0 = [0u64; 4];
        let mut ap1 = [0u64; 4];
        // SAFETY: reads of the interface `s` describes.
        let vmcr = unsafe {
            read_lrs(&mut lrs, usize::from(s.lrs));
            read_vmcr_aprs(&mut ap0, &mut ap1, s.aprs)
        };
        let put = |off: u64, v: u64| {
            // SAFETY: as in `load`.
            unsafe {
                ctx.wrapping_add(off as usize)
                    .cast::<u64>()
                    .write_volatile(v)
            }
        };
        for (n, w) in lrs.iter().enumerate().take(usize::from(s.lrs)) {
            put(OFF_LR.wrapping_add((n as u64).wrapping_mul(8)), *w);
        }
        put(OFF_VMCR, vmcr);
        for n in 0..usize::from(s.aprs).min(4) {
            put(
                OFF_AP0R.wrapping_add((n as u64).wrapping_mul(8)),
                ap0.get(n).copied().unwrap_or(0),
            );
            put(
                OFF_AP1R.wrapping_add((n as u64).wrapping_mul(8)),
                ap1.get(n).copied().unwrap_or(0),
            );
        }
        // SAFETY: turning the interface off affects only guests; in force
        // before the host runs (the `isb` of the return path, or its
        // `eret`).
        unsafe { write_batched!(ICH_HCR_EL2, Value::raw(0)) };
    }
}

/// [`VcpuInterface::load`] for 4 list registers and one active-priority
/// register per group.
///
/// # Safety
/// As for [`VcpuInterface::load`], with that shape.
#[inline(always)]
unsafe fn load_4_1(ctx: *const u8) {
    // SAFETY: the caller's contract; the offsets are the core's layout,
    // 8-byte aligned within the page (`ldp` needs LR0/LR1 and LR2/LR3
    // adjacent, which `OFF_LR + 8 * n` gives).
    unsafe {
        asm!(
            "add {p}, {ctx}, #{lr}",
            "ldp {a}, {b}, [{p}]",
            "msr ich_lr0_el2, {a}",
            "msr ich_lr1_el2, {b}",
            "ldp {a}, {b}, [{p}, #16]",
            "msr ich_lr2_el2, {a}",
            "msr ich_lr3_el2, {b}",
            "ldr {a}, [{p}, #{vmcr}]",
            "msr ich_vmcr_el2, {a}",
            "ldr {a}, [{p}, #{ap0}]",
            "msr ich_ap0r0_el2, {a}",
            "ldr {a}, [{p}, #{ap1}]",
            "msr ich_ap1r0_el2, {a}",
            "mov {a}, #1",
            "msr ich_hcr_el2, {a}",
            ctx = in(reg) ctx,
            p = out(reg) _,
            a = out(reg) _,
            b = out(reg) _,
            lr = const OFF_LR,
            vmcr = const OFF_VMCR - OFF_LR,
            ap0 = const OFF_AP0R - OFF_LR,
            ap1 = const OFF_AP1R - OFF_LR,
            options(nostack, preserves_flags, readonly)
        );
    }
}

/// [`VcpuInterface::save`] for 4 list registers and one active-priority
/// register per group.
///
/// # Safety
/// As for [`VcpuInterface::save`], with that shape.
#[inline(always)]
unsafe fn save_4_1(ctx: *mut u8) {
    // SAFETY: as in `load_4_1`; the stores go to the context page, this
    // CPU's alone.
    unsafe {
        asm!(
            "add {p}, {ctx}, #{lr}",
            "mrs {a}, ich_lr0_el2",
            "mrs {b}, ich_lr1_el2",
            "stp {a}, {b}, [{p}]",
            "mrs {a}, ich_lr2_el2",
            "mrs {b}, ich_lr3_el2",
            "stp {a}, {b}, [{p}, #16]",
            "mrs {a}, ich_vmcr_el2",
            "str {a}, [{p}, #{vmcr}]",
            "mrs {a}, ich_ap0r0_el2",
            "str {a}, [{p}, #{ap0}]",
            "mrs {a}, ich_ap1r0_el2",
            "str {a}, [{p}, #{ap1}]",
            "msr ich_hcr_el2, xzr",
            ctx = in(reg) ctx,
            p = out(reg) _,
            a = out(reg) _,
            b = out(reg) _,
            lr = const OFF_LR,
            vmcr = const OFF_VMCR - OFF_LR,
            ap0 = const OFF_AP0R - OFF_LR,
            ap1 = const OFF_AP1R - OFF_LR,
            options(nostack, preserves_flags)
        );
    }
}

// The straight-run paths: `add` takes a 12-bit immediate; the words after
// OFF_LR are within `ldr`'s reach and follow it.
const _: () = assert!(OFF_LR < 4096 && OFF_LR.is_multiple_of(8));
const _: () = assert!(OFF_VMCR > OFF_LR && OFF_AP0R > OFF_VMCR && OFF_AP1R > OFF_AP0R);
const _: () = assert!(OFF_AP1R - OFF_LR < 4096);

/// Writes `ICH_LR<n>_EL2` = `words[n]` for n < `count` (at most 16).
///
/// # Safety
/// The list registers below `count` exist; no guest runs on this CPU.
#[inline(always)]
unsafe fn write_lrs(words: &[u64], count: usize) {
    macro_rules! lr {
        ($($n:literal $name:literal),*) => {$(
            if count > $n {
                let v = words.get($n).copied().unwrap_or(0);
                // SAFETY: the caller's contract: the register exists and
                // only a guest's virtual interface sees it.
                unsafe {
                    asm!(concat!("msr ", $name, ", {}"), in(reg) v,
                         options(nomem, nostack, preserves_flags))
                };
            }
        )*};
    }
    lr!(0 "ich_lr0_el2", 1 "ich_lr1_el2", 2 "ich_lr2_el2", 3 "ich_lr3_el2",
        4 "ich_lr4_el2", 5 "ich_lr5_el2", 6 "ich_lr6_el2", 7 "ich_lr7_el2",
        8 "ich_lr8_el2", 9 "ich_lr9_el2", 10 "ich_lr10_el2", 11 "ich_lr11_el2",
        12 "ich_lr12_el2", 13 "ich_lr13_el2", 14 "ich_lr14_el2", 15 "ich_lr15_el2");
}

/// Reads `ICH_LR<n>_EL2` into `words[n]` for n < `count` (at most 4).
///
/// # Safety
/// The list registers below `count` exist.
#[inline(always)]
unsafe fn read_lrs(words: &mut [u64; 4], count: usize) {
    macro_rules! lr {
        ($($n:literal $name:literal),*) => {$(
            if count > $n {
                let v: u64;
                // SAFETY: reading a list register has no side effect.
                unsafe {
                    asm!(concat!("mrs {}, ", $name), out(reg) v,
                         options(nomem, nostack, preserves_flags))
                };
                if let Some(w) = words.get_mut($n) {
                    *w = v;
                }
            }
        )*};
    }
    lr!(0 "ich_lr0_el2", 1 "ich_lr1_el2", 2 "ich_lr2_el2", 3 "ich_lr3_el2");
}

/// Writes `ICH_VMCR_EL2` and `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` for
/// n < `aprs` (1, 2 or 4).
///
/// # Safety
/// As for [`write_lrs`]; `aprs` is [`Shape::aprs`].
#[inline(always)]
unsafe fn write_vmcr_aprs(vmcr: u64, ap0: &[u64; 4], ap1: &[u64; 4], aprs: u8) {
    let [a0, a1, a2, a3] = *ap0;
    let [b0, b1, b2, b3] = *ap1;
    // SAFETY: the caller's contract; the registers written exist for this
    // number of priority bits.
    unsafe {
        asm!("msr ich_vmcr_el2, {}", "msr ich_ap0r0_el2, {}", "msr ich_ap1r0_el2, {}",
             in(reg) vmcr, in(reg) a0, in(reg) b0, options(nomem, nostack, preserves_flags));
        if aprs >= 2 {
            asm!("msr ich_ap0r1_el2, {}", "msr ich_ap1r1_el2, {}",
                 in(reg) a1, in(reg) b1, options(nomem, nostack, preserves_flags));
        }
        if aprs >= 4 {
            asm!("msr ich_ap0r2_el2, {}", "msr ich_ap0r3_el2, {}",
                 "msr ich_ap1r2_el2, {}", "msr ich_ap1r3_el2, {}",
                 in(reg) a2, in(reg) a3, in(reg) b2, in(reg) b3,
                 options(nomem, nostack, preserves_flags));
        }
    }
}

/// Reads `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` for n < `aprs`; returns
/// `ICH_VMCR_EL2`.
///
/// # Safety
/// As for [`read_lrs`]; `aprs` is [`Shape::aprs`].
#[inline(always)]
unsafe fn read_vmcr_aprs(ap0: &mut [u64; 4], ap1: &mut [u64; 4], aprs: u8) -> u64 {
    let (vmcr, a0, b0): (u64, u64, u64);
    // SAFETY: reads without side effects, of registers that exist for this
    // number of priority bits.
    unsafe {
        asm!("mrs {}, ich_vmcr_el2", "mrs {}, ich_ap0r0_el2", "mrs {}, ich_ap1r0_el2",
             out(reg) vmcr, out(reg) a0, out(reg) b0, options(nomem, nostack, preserves_flags));
        ap0[0] = a0;
        ap1[0] = b0;
        if aprs >= 2 {
            asm!("mrs {}, ich_ap0r1_el2", "mrs {}, ich_ap1r1_el2",
                 out(reg) ap0[1], out(reg) ap1[1], options(nomem, nostack, preserves_flags));
        }
        if aprs >= 4 {
            asm!("mrs {}, ich_ap0r2_el2", "mrs {}, ich_ap0r3_el2",
                 "mrs {}, ich_ap1r2_el2", "mrs {}, ich_ap1r3_el2",
                 out(reg) ap0[2], out(reg) ap0[3], out(reg) ap1[2], out(reg) ap1[3],
                 options(nomem, nostack, preserves_flags));
        }
    }
    vmcr
}

/// This CPU's GICv3 redistributor (its `RD_base`), found by affinity in
/// the regions the device tree names. The host owns it; the engine only
/// masks and unmasks a PPI of its own CPU around a guest run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redistributor {
    rd_base: u64,
}

/// `GICR_CTLR` (RD frame).
const GICR_CTLR: u64 = 0x0;
/// `GICR_CTLR.RWP`: a register write's effect is not yet visible.
const GICR_CTLR_RWP: u32 = 1 << 3;
/// `GICR_TYPER` (RD frame, 64 bits).
const GICR_TYPER: u64 = 0x8;
/// `GICR_TYPER.Last`: the last frame of its region.
const GICR_TYPER_LAST: u64 = 1 << 4;
/// `GICR_TYPER.VLPIS`: GICv4 frames (two more 64 KiB frames each).
const GICR_TYPER_VLPIS: u64 = 1 << 1;
/// The SGI/PPI frame, 64 KiB after the RD frame.
const SGI_FRAME: u64 = 0x1_0000;
/// `GICR_ISENABLER0` (SGI frame): set-enable, one bit per SGI/PPI.
const GICR_ISENABLER0: u64 = SGI_FRAME + 0x100;
/// `GICR_ICENABLER0` (SGI frame): clear-enable.
const GICR_ICENABLER0: u64 = SGI_FRAME + 0x180;
/// `GICR_IGROUPR0` (SGI frame): group 1 when set.
const GICR_IGROUPR0: u64 = SGI_FRAME + 0x80;
/// `GICR_IPRIORITYR<n>` (SGI frame): one byte per SGI/PPI.
const GICR_IPRIORITYR: u64 = SGI_FRAME + 0x400;

impl Redistributor {
    /// The frame of the CPU with MPIDR `mpidr` in `regions` (`(base,
    /// size)`, as the device tree gives them), if any.
    ///
    /// # Safety
    /// Every region is the GIC's redistributor space, mapped as Device
    /// memory in the EL2 map.
    pub unsafe fn find(regions: impl Iterator<Item = (u64, u64)>, mpidr: u64) -> Option<Self> {
        // GICR_TYPER.Affinity (63:32) is Aff3.Aff2.Aff1.Aff0, 8 bits each.
        let want = (mpidr >> 32 & 0xff) << 24 | (mpidr & 0xff_ffff);
        for (base, size) in regions {
            let end = base.saturating_add(size);
            let mut frame = base;
            while frame < end {
                // SAFETY: `frame` is inside a redistributor region (the
                // caller's contract), at a frame boundary; a read of
                // GICR_TYPER has no side effect.
                let typer = unsafe { mmio_read64(frame.wrapping_add(GICR_TYPER)) };
                if typer >> 32 == want {
                    return Some(Self { rd_base: frame });
                }
                if typer & GICR_TYPER_LAST != 0 {
                    break;
                }
                let stride = if typer & GICR_TYPER_VLPIS != 0 {
                    0x4_0000
                } else {
                    0x2_0000
                };
                frame = frame.saturating_add(stride);
            }
        }
        None
    }

    /// From the `RD_base` [`Redistributor::find`] gave (`raw`), as kept in
    /// the per-CPU record; `None` for 0 (not found).
    pub const fn from_raw(raw: u64) -> Option<Self> {
        if raw == 0 {
            None
        } else {
            Some(Self { rd_base: raw })
        }
    }

    /// `RD_base`, for the per-CPU record.
    pub const fn raw(self) -> u64 {
        self.rd_base
    }

    /// Whether PPI (or SGI) `intid` (< 32) is enabled.
    pub fn ppi_enabled(self, intid: u32) -> bool {
        // SAFETY: this CPU's redistributor, mapped Device (`find`'s
        // contract); the read has no side effect.
        let bits = unsafe { mmio_read32(self.rd_base.wrapping_add(GICR_ISENABLER0)) };
        bits & 1u32.wrapping_shl(intid) != 0
    }

    /// Enables PPI `intid` (< 32).
    ///
    /// # Safety
    /// Only to give back an enable the engine took away ([`Self::mask_ppi`]),
    /// or for an interrupt of the engine's own (the EL2 timer's).
    pub unsafe fn enable_ppi(self, intid: u32) {
        // SAFETY: a write-one-to-set of this CPU's own enable (the caller's
        // contract says it is the engine's to set).
        unsafe {
            mmio_write32(
                self.rd_base.wrapping_add(GICR_ISENABLER0),
                1 << (intid & 31),
            )
        };
    }

    /// Makes sure the engine's own PPI `intid` (< 32; the EL2 timer's) can
    /// be signalled: if it is not enabled (a host that configures its GIC
    /// clears every PPI's enable, not knowing this one), puts it in group 1
    /// at the highest priority and enables it. One register read when it
    /// already is.
    ///
    /// # Safety
    /// `intid` is an interrupt no host can raise (only EL2 can program its
    /// source), so the host's configuration of it is meaningless.
    pub unsafe fn claim_ppi(self, intid: u32) {
        if self.ppi_enabled(intid) {
            return;
        }
        let bit = 1u32.wrapping_shl(intid);
        let group = self.rd_base.wrapping_add(GICR_IGROUPR0);
        // SAFETY: this CPU's redistributor (`find`'s contract); the
        // engine's own interrupt (this function's contract). Group 1 is
        // what a host's interrupts are in; priority 0 passes any priority
        // mask but 0.
        unsafe {
            mmio_write32(group, mmio_read32(group) | bit);
            core::ptr::with_exposed_provenance_mut::<u8>(
                self.rd_base
                    .wrapping_add(GICR_IPRIORITYR)
                    .wrapping_add(u64::from(intid & 31)) as usize,
            )
            .write_volatile(0);
            self.enable_ppi(intid);
        }
    }

    /// Disables PPI `intid` (< 32) if it is enabled, and says whether it
    /// was (so the caller gives it back with [`Self::enable_ppi`]). Waits
    /// until the redistributor has applied it (`GICR_CTLR.RWP`), so the
    /// interrupt can no longer be signalled once this returns.
    ///
    /// # Safety
    /// The caller restores the enable before the host runs again.
    pub unsafe fn mask_ppi(self, intid: u32) -> bool {
        if !self.ppi_enabled(intid) {
            return false;
        }
        // SAFETY: a write-one-to-clear of this CPU's own enable, given back
        // by the caller (this function's contract); RWP is read-only.
        unsafe {
            mmio_write32(
                self.rd_base.wrapping_add(GICR_ICENABLER0),
                1 << (intid & 31),
            );
            while mmio_read32(self.rd_base.wrapping_add(GICR_CTLR)) & GICR_CTLR_RWP != 0 {
                isola_sync::spin_hint();
            }
        }
        true
    }
}

/// A 32-bit Device read.
///
/// # Safety
/// `addr` is a mapped, 4-byte aligned register without read side effects.
unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::with_exposed_provenance::<u32>(addr as usize).read_volatile() }
}

/// A 64-bit Device read.
///
/// # Safety
/// As for [`mmio_read32`], 8-byte aligned.
unsafe fn mmio_read64(addr: u64) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::with_exposed_provenance::<u64>(addr as usize).read_volatile() }
}

/// A 32-bit Device write.
///
/// # Safety
/// `addr` is a mapped, 4-byte aligned register the caller may write.
unsafe fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::with_exposed_provenance_mut::<u32>(addr as usize).write_volatile(v) }
}
