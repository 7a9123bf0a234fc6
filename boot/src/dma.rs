//! The EL2 side of the device policy and of DMA isolation: the devices of
//! QEMU's device tree and their verdicts (`devices.rs` decides), the ranges
//! the host gets, the engine's SMMU brought up over the host's Stage-2 with
//! every PCI function of bus 0 behind it, the GIC's redistributors woken and
//! their LPI controls made read-only, and the host's device tree edited.
//!
//! Invariants:
//! - Everything here runs on the boot CPU before any other CPU starts;
//!   [`devices`] and [`decision`] are read-only afterwards.
//! - The host gets a device range only if `devices.rs` says `Host`: PCIe
//!   only when the SMMU passed its checks ([`decide`]) and then holds every
//!   StreamID of bus 0 (a failure after that is fatal, never a silent
//!   fallback to unprotected DMA).

use core::cell::UnsafeCell;

use isola::addr::PhysAddr;
use isola::engine::{DeviceRange, ReadOnly};
use isola_smmu::{Features, Layout, S2Shape};
use isola_sync::atomic::{AtomicBool, Ordering};

use isola_fdt::devices::{self, Devices, GICR_FRAME_PAGES, GICR_RD_PAGES, Kind, Verdict};
use isola_fdt::{Fdt, Range};

use crate::console::say;
use crate::{caches, smmu};

/// What the boot CPU found, written once. All zeros when empty, so it lives
/// in `.bss` (13 KiB); the decision, whose `None` is not zeros, is apart.
struct Found {
    devices: Devices,
    scanned: bool,
}

/// How the engine treats DMA on this machine.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    /// The SMMU's register page, if the tree has one and it passed the
    /// driver's checks.
    pub smmu: Option<(u64, Features)>,
    /// Whether PCIe goes to the host (the SMMU holds its DMA).
    pub smmu_holds: bool,
    /// Whether `HCR_EL2.FWB` is used: the CPU has FEAT_S2FWB and every
    /// walker of the host's tables (the SMMU, if used) honours it.
    pub fwb: bool,
}

struct BootCell<T>(UnsafeCell<T>);
// SAFETY: written only by the boot CPU in `scan` and `decide`, before
// `READY` is set and before any other CPU starts; read-only afterwards.
unsafe impl<T> Sync for BootCell<T> {}
static FOUND: BootCell<Found> = BootCell(UnsafeCell::new(Found {
    devices: Devices::EMPTY,
    scanned: false,
}));
static DECISION: BootCell<Decision> = BootCell(UnsafeCell::new(Decision {
    smmu: None,
    smmu_holds: false,
    fwb: false,
}));
static READY: AtomicBool = AtomicBool::new(false);

fn found() -> &'static Found {
    // Acquire: pairs with `decide`'s Release, for a CPU other than the boot
    // CPU (which reads its own writes anyway).
    let _ = READY.load(Ordering::Acquire);
    // SAFETY: see `BootCell`; after the boot CPU's writes, which happen
    // before any other CPU starts, only shared references are made.
    unsafe { &*FOUND.0.get() }
}

/// Reads the device nodes of QEMU's tree (in place: the record is too big
/// for the stack). Boot CPU, before `decide`.
pub fn scan(tree: &Fdt<'_>) -> Result<(), &'static str> {
    // SAFETY: boot CPU only, before any other CPU starts and before anyone
    // reads the cell (see `BootCell`).
    let f = unsafe { &mut *FOUND.0.get() };
    f.devices.scan(tree).map_err(|e| match e {
        devices::Error::Malformed(_) => "the device tree is malformed (device scan)",
        devices::Error::TooMany => "the device tree has more devices than the engine records",
    })?;
    f.scanned = true;
    Ok(())
}

/// The device nodes, once scanned.
pub fn devices() -> Option<&'static Devices> {
    let f = found();
    f.scanned.then_some(&f.devices)
}

/// The decision, once made.
pub fn decision() -> Decision {
    let _ = READY.load(Ordering::Acquire);
    // SAFETY: as in `found`.
    unsafe { *DECISION.0.get() }
}

/// Calls `f(base, size)` for each register range the engine itself maps at
/// EL2: the SMMU's, and the PCIe ECAM (read once, to find bus 0's
/// functions).
pub fn el2_mmio(mut f: impl FnMut(u64, u64)) {
    let Some(d) = devices() else { return };
    for kind in [Kind::Smmu, Kind::Pcie] {
        if let Some(r) = d.find(kind).and_then(|n| n.ranges().first()) {
            f(r.base, r.size);
        }
    }
}

/// Probes the SMMU (its registers mapped by then) and decides what the
/// host gets and whether FWB is used. Boot CPU, before the core is built.
pub fn decide() -> Decision {
    let smmu = devices()
        .and_then(|d| d.find(Kind::Smmu))
        .and_then(|n| n.ranges().first())
        .map(|r| (r.base, smmu::probe(r.base)));
    let usable = match smmu {
        Some((base, Ok(f))) => Some((base, f)),
        Some((base, Err(e))) => {
            say!("SMMU at {base:#x} refused ({e}): PCIe is withheld from the host");
            None
        }
        None => None,
    };
    let has_pcie = devices().is_some_and(|d| d.find(Kind::Pcie).is_some());
    let smmu_holds = usable.is_some() && has_pcie;
    let cpu_fwb = caches::cpu_has_fwb();
    let fwb = cpu_fwb && (!smmu_holds || usable.is_some_and(|(_, f)| f.fwb));
    let d = Decision {
        smmu: usable,
        smmu_holds,
        fwb,
    };
    // SAFETY: boot CPU only, before any other CPU starts (see `BootCell`).
    unsafe { *DECISION.0.get() = d };
    READY.store(true, Ordering::Release);
    d
}

/// Prints each device (consecutive nodes of one kind on one line) with its
/// verdict and why.
pub fn report() {
    let Some(d) = devices() else { return };
    let holds = decision().smmu_holds;
    let nodes = d.nodes();
    let mut i = 0usize;
    while let Some(first) = nodes.get(i) {
        let same = nodes
            .get(i..)
            .unwrap_or(&[])
            .iter()
            .take_while(|n| n.kind == first.kind)
            .count()
            .max(1);
        let run = nodes.get(i..i.saturating_add(same)).unwrap_or(&[]);
        let v = first.kind.verdict(holds);
        let more = same.saturating_sub(1);
        let mut spans = Spans::default();
        if more > 0 {
            let lo = run.iter().flat_map(|n| n.ranges()).map(|r| r.base).min();
            let hi = run.iter().flat_map(|n| n.ranges()).map(end).max();
            spans.push(lo.unwrap_or(0), hi.unwrap_or(0));
        } else {
            for r in first.ranges() {
                spans.push(r.base, end(r));
            }
        }
        if more > 0 {
            say!(
                "device {} and {more} more at {}: {} ({})",
                first.name(),
                spans,
                v.word(),
                first.kind.reason(holds)
            );
        } else {
            say!(
                "device {} at {}: {} ({})",
                first.name(),
                spans,
                v.word(),
                first.kind.reason(holds)
            );
        }
        i = i.saturating_add(same);
    }
}

/// One past a range's last byte (saturating).
fn end(r: &Range) -> u64 {
    r.base.saturating_add(r.size)
}

/// Address spans for a log line.
#[derive(Default)]
struct Spans {
    s: [(u64, u64); devices::MAX_REGS],
    n: usize,
}

impl Spans {
    fn push(&mut self, lo: u64, hi: u64) {
        if let Some(slot) = self.s.get_mut(self.n) {
            *slot = (lo, hi);
            self.n = self.n.saturating_add(1);
        }
    }
}

impl core::fmt::Display for Spans {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (lo, hi)) in self.s.iter().take(self.n).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{lo:#x}..{hi:#x}")?;
        }
        Ok(())
    }
}

/// The device ranges the host gets, into `out`; returns how many. The
/// GIC's first range is its distributor (read-write); each later one is a
/// redistributor region whose `RD_base` frames are read-only.
pub fn host_ranges(out: &mut [DeviceRange]) -> usize {
    let Some(d) = devices() else { return 0 };
    let holds = decision().smmu_holds;
    let mut n = 0usize;
    for node in d.nodes() {
        if node.kind.verdict(holds) != Verdict::Host {
            continue;
        }
        for (i, r) in node.ranges().iter().enumerate() {
            let base = r.base & !0xfff;
            let pages = end(r).saturating_add(0xfff).saturating_sub(base) / 4096;
            let read_only = if node.kind == Kind::Gic && i > 0 {
                ReadOnly::Frames {
                    every: GICR_FRAME_PAGES,
                    first: GICR_RD_PAGES,
                }
            } else {
                ReadOnly::None
            };
            if let Some(slot) = out.get_mut(n) {
                *slot = DeviceRange {
                    base: PhysAddr::new(base),
                    pages,
                    read_only,
                };
                n = n.saturating_add(1);
            }
        }
    }
    n
}

/// StreamIDs of the functions present on PCI bus 0 (vendor ID not
/// 0xffff in the ECAM), into `out`; returns how many.
fn bus0_functions(ecam: u64, out: &mut [u32]) -> usize {
    let mut n = 0usize;
    for devfn in 0..256u64 {
        let p = ecam.wrapping_add(devfn << 12) as *const u32;
        // SAFETY: the ECAM's first 1 MiB (bus 0) is mapped Device at EL2 by
        // `build_map`; a config read of an absent function returns all
        // ones and has no side effect.
        let id = unsafe { p.read_volatile() };
        if id & 0xffff != 0xffff
            && let Some(slot) = out.get_mut(n)
        {
            *slot = devfn as u32;
            n = n.saturating_add(1);
        }
    }
    n
}

/// Brings the SMMU up over the host's Stage-2 (`root`, `shape`), its
/// structures at `layout` (engine memory). The caller stops the machine on
/// an error: PCIe is already the host's by the decision.
pub fn bring_up_smmu(layout: Layout, root: u64, shape: S2Shape) -> Result<(), &'static str> {
    let dec = decision();
    let (Some((base, _)), true) = (dec.smmu, dec.smmu_holds) else {
        return Ok(());
    };
    let mut streams = [0u32; 256];
    let ecam = devices()
        .and_then(|d| d.find(Kind::Pcie))
        .and_then(|n| n.ranges().first())
        .map_or(0, |r| r.base);
    let n = bus0_functions(ecam, &mut streams);
    let streams = streams.get(..n).unwrap_or(&[]);
    let setup = smmu::Setup {
        base,
        layout,
        shape,
        root,
        streams,
        fwb: dec.fwb,
    };
    if let Err(e) = smmu::init(&setup) {
        say!("SMMU at {base:#x} did not come up: {e}");
        return Err("the SMMU did not come up");
    }
    let mut ids = Ids::default();
    for &s in streams {
        ids.push(s);
    }
    say!(
        "SMMU at {base:#x}: the host's DMA goes through its Stage-2 (VMID 0, S2FWB {}); StreamIDs {ids} translate, every other one aborts",
        if dec.fwb { "on" } else { "off" }
    );
    Ok(())
}

/// StreamIDs for a log line.
#[derive(Default)]
struct Ids {
    s: [u32; 16],
    n: usize,
    more: usize,
}

impl Ids {
    fn push(&mut self, id: u32) {
        match self.s.get_mut(self.n) {
            Some(slot) => {
                *slot = id;
                self.n = self.n.saturating_add(1);
            }
            None => self.more = self.more.saturating_add(1),
        }
    }
}

impl core::fmt::Display for Ids {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, id) in self.s.iter().take(self.n).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{id:#x}")?;
        }
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// GICR_TYPER: `PLPIS` (bit 0), `Last` (bit 4).
const GICR_TYPER: u64 = 0x8;
/// GICR_WAKER: `ProcessorSleep` (bit 1), `ChildrenAsleep` (bit 2).
const GICR_WAKER: u64 = 0x14;

/// Wakes every redistributor (the host cannot write `GICR_WAKER`: the
/// `RD_base` frame is read-only to it) and reports whether they support
/// LPIs. Their registers are mapped at EL2 by `build_map`.
pub fn wake_redistributors(regions: &[Range]) {
    let (mut count, mut plpis) = (0u32, 0u32);
    for r in regions {
        let mut frame = r.base;
        while frame < r.end().unwrap_or(0) {
            let typer = frame.wrapping_add(GICR_TYPER) as *const u64;
            let waker = frame.wrapping_add(GICR_WAKER) as *mut u32;
            // SAFETY: `frame` is a redistributor's RD_base frame inside a
            // region the device tree names, mapped Device at EL2; only the
            // boot CPU runs. Clearing ProcessorSleep wakes the
            // redistributor, as Linux would; it touches no memory.
            let t = unsafe {
                let t = typer.read_volatile();
                waker.write_volatile(waker.read_volatile() & !0b10);
                t
            };
            count = count.saturating_add(1);
            plpis = plpis.saturating_add((t & 1) as u32);
            if t & (1 << 4) != 0 {
                break;
            }
            frame = frame.wrapping_add(GICR_FRAME_PAGES * 4096);
        }
    }
    let its = devices().is_some_and(|d| d.find(Kind::Its).is_some());
    say!(
        "GIC: {count} redistributors woken, {plpis} with LPI support (GICR_TYPER.PLPIS); RD_base frames read-only to the host, so GICR_CTLR.EnableLPIs stays 0 and no LPI table is ever used; ITS {}",
        if its { "withheld" } else { "absent" }
    );
}

/// Removes from the host's copy of the tree every node the host does not
/// get, and the IOMMU and MSI properties of those it does.
pub fn edit_host_dtb(copy: &mut [u8]) -> Result<usize, &'static str> {
    let Some(d) = devices() else { return Ok(0) };
    d.remove_from(copy, decision().smmu_holds)
        .map_err(|_| "the host's device tree could not be edited")
}
