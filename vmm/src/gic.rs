//! A GICv3 distributor and one redistributor per vCPU (Arm IHI 0069),
//! emulated from `Mmio` exits, and the choice of what goes into each vCPU's
//! list registers — the host half of isola's virtual interrupts.
//!
//! No LPIs, no ITS, no extended ranges, one security state (`GICD_CTLR.DS`
//! and affinity routing always on): what Linux's `irq-gic-v3` needs for
//! SGIs, PPIs (the timer) and SPIs (the UART). Registers are emulated
//! byte by byte, so every access size works the same way; unknown offsets
//! read as zero and ignore writes.
//!
//! Delivery: before each run [`Gic::flush`] gives the engine the vCPU's list
//! registers — the ones the guest is still handling (active) kept, the free
//! ones filled with the highest-priority deliverable interrupts; level
//! interrupts, and every interrupt when more are waiting than fit, ask for
//! `EOI` maintenance so an `Exit::Eoi` says when to look again. After each
//! exit [`Gic::sync`] folds the reported states back: acknowledged
//! interrupts stop being pending, completed ones stop being active.

// Indexing still goes through `get`.
#![allow(
    clippy::arithmetic_side_effects,
    reason = "register decoding does arithmetic only on bounded values: offsets inside one 64 KiB frame, byte indices below 8, INTIDs below 1024, list-register slots below 4; none can overflow, so checked forms would only add noise"
)]

use alloc::vec;
use alloc::vec::Vec;
use isola_abi::{ExitStatus, LrState, lr};

use crate::layout::{GICD, GICR_STRIDE, Layout};

/// INTIDs the model has: SGIs and PPIs, then `spis` SPIs.
const PRIVATE: usize = 32;
/// `GICD_CTLR`: group enables, plus `ARE_NS` and `DS` always set.
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;
/// Arm's JEP106 code, for the IIDRs.
const IIDR: u32 = 0x43b;
/// `PIDR2`: architecture revision 3.
const PIDR2: u32 = 0x3b;

/// One interrupt's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Irq {
    enabled: bool,
    /// Latched pending (an edge, an SGI, a write to `ISPENDR`).
    pending: bool,
    /// The input line, for level-sensitive interrupts.
    line: bool,
    active: bool,
    edge: bool,
    group1: bool,
    priority: u8,
    /// `GICD_IROUTER` (SPIs).
    route: u64,
}

impl Irq {
    fn is_pending(&self) -> bool {
        self.pending || (!self.edge && self.line)
    }
}

/// Which frame an access hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Dist,
    Rd(usize),
    Sgi(usize),
}

/// The distributor, the redistributors and each vCPU's list-register shadow.
#[derive(Clone, Debug)]
pub struct Gic {
    gicd: u64,
    gicr: u64,
    vcpus: usize,
    list_regs: usize,
    ctlr: u32,
    spis: Vec<Irq>,
    private: Vec<[Irq; PRIVATE]>,
    asleep: Vec<bool>,
    shadow: Vec<[u64; lr::SLOTS]>,
}

impl Gic {
    /// A GIC for `layout`'s vCPUs and frames with `spis` SPIs (a multiple
    /// of 32), whose engine takes `list_regs` list registers
    /// (`features::list_registers`).
    pub fn new(layout: &Layout, spis: usize, list_regs: usize) -> Self {
        let vcpus = layout.vcpus;
        let mut private = [Irq::default(); PRIVATE];
        for sgi in private.iter_mut().take(16) {
            sgi.edge = true;
            sgi.enabled = true;
        }
        Self {
            gicd: layout.gicd().0,
            gicr: layout.gicr().0,
            vcpus,
            list_regs: list_regs.min(lr::SLOTS),
            ctlr: 0,
            spis: vec![Irq::default(); spis],
            private: vec![private; vcpus],
            asleep: vec![true; vcpus],
            shadow: vec![[0; lr::SLOTS]; vcpus],
        }
    }

    fn irq(&mut self, vcpu: usize, intid: usize) -> Option<&mut Irq> {
        if intid < PRIVATE {
            self.private.get_mut(vcpu)?.get_mut(intid)
        } else {
            self.spis.get_mut(intid.wrapping_sub(PRIVATE))
        }
    }

    fn irq_ref(&self, vcpu: usize, intid: usize) -> Option<&Irq> {
        if intid < PRIVATE {
            self.private.get(vcpu)?.get(intid)
        } else {
            self.spis.get(intid.wrapping_sub(PRIVATE))
        }
    }

    /// Sets the line of a level interrupt: a PPI of `vcpu`, or an SPI.
    pub fn set_level(&mut self, vcpu: usize, intid: u32, level: bool) {
        if let Some(i) = self.irq(vcpu, intid as usize) {
            i.line = level;
        }
    }

    /// An SGI `intid` for every vCPU whose bit is set in `targets`.
    pub fn send_sgi(&mut self, targets: u16, intid: u8) {
        for v in 0..self.vcpus.min(16) {
            if targets & (1 << v) != 0
                && let Some(i) = self.irq(v, usize::from(intid & 0xf))
            {
                i.pending = true;
            }
        }
    }

    /// The vCPU an SPI is routed to (`IRM`: vCPU 0).
    fn target(&self, i: &Irq) -> usize {
        if i.route & (1 << 31) != 0 {
            0
        } else {
            (i.route & 0xff) as usize
        }
    }

    /// Interrupts `vcpu` could take now, `(priority, intid)`, best first.
    fn deliverable(&self, vcpu: usize) -> Vec<(u8, usize)> {
        let group_on = |i: &Irq| self.ctlr & if i.group1 { 2 } else { 1 } != 0;
        let ok = |i: &Irq| i.enabled && i.is_pending() && !i.active && group_on(i);
        let mut v: Vec<(u8, usize)> = Vec::new();
        if let Some(p) = self.private.get(vcpu) {
            v.extend(
                p.iter()
                    .enumerate()
                    .filter(|(_, i)| ok(i))
                    .map(|(n, i)| (i.priority, n)),
            );
        }
        v.extend(
            self.spis
                .iter()
                .enumerate()
                .filter(|(_, i)| ok(i) && self.target(i) == vcpu)
                .map(|(n, i)| (i.priority, n.wrapping_add(PRIVATE))),
        );
        v.sort_unstable();
        v
    }

    /// Whether `vcpu` has an interrupt to take (to wake it from `WFI`).
    pub fn has_pending(&self, vcpu: usize) -> bool {
        !self.deliverable(vcpu).is_empty()
            || self
                .shadow
                .get(vcpu)
                .is_some_and(|s| s.iter().any(|&w| w & lr::PENDING != 0))
    }

    /// Whether `vcpu` has an interrupt to take that its list registers do
    /// not hold: a host running that vCPU elsewhere should make it exit
    /// (a "kick") so the next [`Gic::flush`] presents it.
    pub fn undelivered(&self, vcpu: usize) -> bool {
        let held = self.shadow.get(vcpu).copied().unwrap_or_default();
        self.deliverable(vcpu)
            .iter()
            .any(|&(_, n)| !held.iter().any(|&w| w != 0 && lr::intid(w) == n as u64))
    }

    /// The list registers to hand the engine before `vcpu` runs.
    pub fn flush(&mut self, vcpu: usize) -> [u64; lr::SLOTS] {
        let Some(mut lrs) = self.shadow.get(vcpu).copied() else {
            return [0; lr::SLOTS];
        };
        // Keep what the guest is handling; pending ones are chosen afresh.
        for w in lrs.iter_mut() {
            if *w & lr::ACTIVE == 0 {
                *w = 0;
            }
        }
        for w in lrs.iter_mut().filter(|w| **w != 0) {
            let again = self
                .irq_ref(vcpu, lr::intid(*w) as usize)
                .is_some_and(|i| i.edge && i.pending);
            if again {
                *w |= lr::PENDING;
            }
        }
        let held: Vec<u64> = lrs
            .iter()
            .filter(|&&w| w != 0)
            .map(|&w| lr::intid(w))
            .collect();
        let want: Vec<(u8, usize)> = self
            .deliverable(vcpu)
            .into_iter()
            .filter(|(_, n)| !held.contains(&(*n as u64)))
            .collect();
        let free = lrs.iter().take(self.list_regs).filter(|&&w| w == 0).count();
        let overflow = want.len() > free;
        let mut next = want.into_iter();
        for w in lrs.iter_mut().take(self.list_regs) {
            if *w != 0 {
                continue;
            }
            let Some((prio, n)) = next.next() else { break };
            let Some(i) = self.irq_ref(vcpu, n) else {
                continue;
            };
            let mut word = lr::pending(n as u32, prio, !i.edge || overflow);
            if !i.group1 {
                word &= !lr::GROUP1;
            }
            *w = word;
        }
        if let Some(s) = self.shadow.get_mut(vcpu) {
            *s = lrs;
        }
        lrs
    }

    /// Folds an exit's list-register states back into the interrupts.
    pub fn sync(&mut self, vcpu: usize, status: &ExitStatus) {
        let Some(lrs) = self.shadow.get(vcpu).copied() else {
            return;
        };
        let mut out = lrs;
        for ((w, state), o) in lrs.iter().zip(status.lrs).zip(out.iter_mut()) {
            if *w == 0 {
                continue;
            }
            let Some(i) = self.irq(vcpu, lr::intid(*w) as usize) else {
                continue;
            };
            let bits = match state {
                LrState::Invalid => {
                    // Taken and completed.
                    i.pending = false;
                    i.active = false;
                    *o = 0;
                    continue;
                }
                LrState::Pending => lr::PENDING,
                LrState::Active => {
                    i.pending = false;
                    i.active = true;
                    lr::ACTIVE
                }
                LrState::PendingActive => {
                    i.active = true;
                    lr::PENDING | lr::ACTIVE
                }
            };
            *o = (*w & !(lr::PENDING | lr::ACTIVE)) | bits;
        }
        if let Some(s) = self.shadow.get_mut(vcpu) {
            *s = out;
        }
    }

    fn frame(&self, addr: u64) -> Option<(Frame, u64)> {
        if (self.gicd..self.gicd.wrapping_add(GICD.1)).contains(&addr) {
            return Some((Frame::Dist, addr.wrapping_sub(self.gicd)));
        }
        let off = addr.checked_sub(self.gicr)?;
        let v = usize::try_from(off / GICR_STRIDE).ok()?;
        if v >= self.vcpus {
            return None;
        }
        let inner = off % GICR_STRIDE;
        Some(if inner < 0x1_0000 {
            (Frame::Rd(v), inner)
        } else {
            (Frame::Sgi(v), inner.wrapping_sub(0x1_0000))
        })
    }

    /// Whether `addr` is one of the GIC's frames.
    pub fn claims(&self, addr: u64) -> bool {
        self.frame(addr).is_some()
    }

    /// A guest load of `size` bytes at `addr` (a GIC frame).
    pub fn read(&mut self, addr: u64, size: u8) -> u64 {
        let Some((f, off)) = self.frame(addr) else {
            return 0;
        };
        (0..u64::from(size.min(8))).fold(0, |v, k| {
            v | u64::from(self.read_byte(f, off.wrapping_add(k))) << (8 * k)
        })
    }

    /// A guest store of the low `size` bytes of `value` at `addr`.
    pub fn write(&mut self, addr: u64, size: u8, value: u64) {
        let Some((f, off)) = self.frame(addr) else {
            return;
        };
        for k in 0..u64::from(size.min(8)) {
            self.write_byte(f, off.wrapping_add(k), (value >> (8 * k)) as u8);
        }
    }

    /// Byte `off` of a fixed 32- or 64-bit value at `base`.
    fn byte_of(off: u64, base: u64, value: u64) -> u8 {
        (value >> (8 * (off.wrapping_sub(base) & 7))) as u8
    }

    fn read_byte(&self, f: Frame, off: u64) -> u8 {
        let (vcpu, banked) = match f {
            Frame::Dist => (0, false),
            Frame::Sgi(v) => (v, true),
            Frame::Rd(v) => {
                let last = v.wrapping_add(1) == self.vcpus;
                let typer = (v as u64) << 32 | (v as u64) << 8 | u64::from(last) << 4;
                let sleep = self.asleep.get(v).copied().unwrap_or(true);
                return match off {
                    0x4..=0x7 => Self::byte_of(off, 4, u64::from(IIDR)),
                    0x8..=0xf => Self::byte_of(off, 8, typer),
                    0x14 => u8::from(sleep) << 1 | u8::from(sleep) << 2,
                    0xffe8 => PIDR2 as u8,
                    _ => 0,
                };
            }
        };
        if f == Frame::Dist {
            let itlines = (self.spis.len() as u64 + 32) / 32 - 1;
            match off {
                0x0..=0x3 => {
                    return Self::byte_of(off, 0, u64::from(self.ctlr | CTLR_ARE | CTLR_DS));
                }
                0x4..=0x7 => return Self::byte_of(off, 4, itlines | 9 << 19),
                0x8..=0xb => return Self::byte_of(off, 8, u64::from(IIDR)),
                0xffe8 => return PIDR2 as u8,
                0x6000..=0x7fff => {
                    let n = ((off - 0x6000) / 8) as usize;
                    return self
                        .irq_ref(0, n)
                        .filter(|_| n >= PRIVATE)
                        .map_or(0, |i| Self::byte_of(off, 0, i.route));
                }
                _ => {}
            }
        }
        let usable = |n: usize| if banked { n < PRIVATE } else { n >= PRIVATE };
        match off {
            0x80..=0x3ff => {
                let reg = (off - 0x80) / 0x80;
                let first = ((off % 0x80) * 8) as usize;
                (0..8).fold(0u8, |b, k| {
                    let n = first + k;
                    let bit = usable(n)
                        && self.irq_ref(vcpu, n).is_some_and(|i| match reg {
                            0 => i.group1,
                            1 | 2 => i.enabled,
                            3 | 4 => i.is_pending(),
                            _ => i.active,
                        });
                    b | u8::from(bit) << k
                })
            }
            0x400..=0x7ff => {
                let n = (off - 0x400) as usize;
                self.irq_ref(vcpu, n)
                    .filter(|_| usable(n))
                    .map_or(0, |i| i.priority)
            }
            0xc00..=0xcff => {
                let first = ((off - 0xc00) * 4) as usize;
                (0..4).fold(0u8, |b, k| {
                    let n = first + k;
                    let edge = usable(n) && self.irq_ref(vcpu, n).is_some_and(|i| i.edge);
                    b | u8::from(edge) << (2 * k + 1)
                })
            }
            _ => 0,
        }
    }

    fn write_byte(&mut self, f: Frame, off: u64, b: u8) {
        let (vcpu, banked) = match f {
            Frame::Dist => (0, false),
            Frame::Sgi(v) => (v, true),
            Frame::Rd(v) => {
                if off == 0x14
                    && let Some(s) = self.asleep.get_mut(v)
                {
                    *s = b & 2 != 0;
                }
                return;
            }
        };
        if f == Frame::Dist {
            match off {
                0x0 => {
                    self.ctlr = u32::from(b & 3);
                    return;
                }
                0x6000..=0x7fff => {
                    let n = ((off - 0x6000) / 8) as usize;
                    let shift = 8 * (off & 7);
                    if n >= PRIVATE
                        && let Some(i) = self.irq(0, n)
                    {
                        i.route = (i.route & !(0xff << shift)) | u64::from(b) << shift;
                    }
                    return;
                }
                _ => {}
            }
        }
        let usable = |n: usize| if banked { n < PRIVATE } else { n >= PRIVATE };
        match off {
            0x80..=0x3ff => {
                let reg = (off - 0x80) / 0x80;
                let first = ((off % 0x80) * 8) as usize;
                for k in 0..8 {
                    let n = first + k;
                    let set = b & (1 << k) != 0;
                    if !usable(n) {
                        continue;
                    }
                    let Some(i) = self.irq(vcpu, n) else { continue };
                    match reg {
                        0 => i.group1 = set,
                        1 if set => i.enabled = true,
                        2 if set && n >= 16 => i.enabled = false,
                        3 if set => i.pending = true,
                        4 if set => i.pending = false,
                        5 if set => i.active = true,
                        6 if set => i.active = false,
                        _ => {}
                    }
                }
            }
            0x400..=0x7ff => {
                let n = (off - 0x400) as usize;
                if usable(n)
                    && let Some(i) = self.irq(vcpu, n)
                {
                    i.priority = b;
                }
            }
            0xc00..=0xcff => {
                let first = ((off - 0xc00) * 4) as usize;
                for k in 0..4 {
                    let n = first + k;
                    // SGIs are always edge; the rest as the guest says.
                    if n >= 16
                        && usable(n)
                        && let Some(i) = self.irq(vcpu, n)
                    {
                        i.edge = b & (2 << (2 * k)) != 0;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GICD_BASE: u64 = 0xC000_0000;
    const GICR_BASE: u64 = 0xC010_0000;
    const SGI_FRAME: u64 = GICR_BASE + 0x1_0000;

    fn gic(vcpus: usize, list_regs: usize) -> Gic {
        Gic::new(&Layout::new(64 << 20, vcpus).unwrap(), 32, list_regs)
    }

    /// A GIC as Linux leaves it: group 1 enabled, the timer PPI and SPI 1
    /// enabled and in group 1, vCPUs awake.
    fn linux_like() -> Gic {
        let mut g = gic(2, 4);
        g.write(GICD_BASE, 4, 0x12);
        for v in 0..2u64 {
            let sgi = SGI_FRAME + v * GICR_STRIDE;
            g.write(GICR_BASE + v * GICR_STRIDE + 0x14, 4, 0);
            g.write(sgi + 0x80, 4, u64::MAX);
            g.write(sgi + 0x100, 4, 1 << 27 | 0xffff);
            g.write(sgi + 0x400 + 27, 1, 0xa0);
        }
        g.write(GICD_BASE + 0x84, 4, u64::MAX); // SPIs 32..63 group 1
        g.write(GICD_BASE + 0x104, 4, 1 << 1); // enable INTID 33
        g.write(GICD_BASE + 0x6000 + 8 * 33, 8, 1); // route it to vCPU 1
        g
    }

    #[test]
    fn linux_probes_see_a_gicv3() {
        let mut g = gic(2, 4);
        assert_eq!(g.read(GICD_BASE + 0xffe8, 4) >> 4 & 0xf, 3);
        assert_eq!(g.read(GICR_BASE + 0xffe8, 4) >> 4 & 0xf, 3);
        assert_eq!(g.read(GICD_BASE + 4, 4) & 0x1f, 1, "64 INTIDs");
        let t0 = g.read(GICR_BASE + 8, 8);
        let t1 = g.read(GICR_BASE + GICR_STRIDE + 8, 8);
        assert_eq!((t0 >> 32, t0 & 1 << 4), (0, 0));
        assert_eq!((t1 >> 32, t1 & 1 << 4), (1, 1 << 4), "the last one says so");
        assert_eq!(g.read(GICR_BASE + 0x14, 4), 6, "asleep until woken");
        g.write(GICR_BASE + 0x14, 4, 0);
        assert_eq!(g.read(GICR_BASE + 0x14, 4), 0);
        assert_eq!(g.read(GICD_BASE, 4) & (CTLR_ARE | CTLR_DS) as u64, 0x50);
        assert!(!g.claims(GICR_BASE + 2 * GICR_STRIDE));
        assert_eq!(
            g.read(GICD_BASE + 0x100, 4),
            0,
            "banked INTIDs are RAZ in the distributor"
        );
    }

    #[test]
    fn the_timer_goes_into_a_list_register_with_eoi_and_comes_back() {
        let mut g = linux_like();
        assert_eq!(g.flush(0), [0; 4]);
        g.set_level(0, 27, true);
        let lrs = g.flush(0);
        assert_eq!(lrs[0], lr::pending(27, 0xa0, true), "level: EOI asked");
        assert!(lrs.iter().all(|&w| lr::acceptable(w)));
        // The guest acknowledged it: still active at the next run.
        let mut st = ExitStatus::default();
        st.lrs[0] = LrState::Active;
        g.sync(0, &st);
        assert_eq!(
            g.flush(0)[0],
            lr::ACTIVE | lr::GROUP1 | lr::EOI | 0xa0 << 48 | 27
        );
        // Done, line low: nothing more to present.
        st.lrs[0] = LrState::Invalid;
        g.sync(0, &st);
        g.set_level(0, 27, false);
        assert_eq!(g.flush(0), [0; 4]);
    }

    #[test]
    fn sgis_and_spis_reach_their_vcpus_best_priority_first() {
        let mut g = linux_like();
        g.send_sgi(0b10, 3);
        g.set_level(0, 33, true);
        assert_eq!(g.flush(0), [0; 4]);
        assert!(g.has_pending(1));
        let lrs = g.flush(1);
        // Both priority 0: lower INTID first; SGIs are edge (no EOI).
        assert_eq!(lrs[0], lr::pending(3, 0, false));
        assert_eq!(lrs[1], lr::pending(33, 0, true));
        // The SGI taken and done; the SPI not yet taken.
        let mut st = ExitStatus::default();
        st.lrs[1] = LrState::Pending;
        g.sync(1, &st);
        assert_eq!(g.flush(1), [lr::pending(33, 0, true), 0, 0, 0]);
    }

    #[test]
    fn a_running_vcpu_needs_a_kick_only_for_what_it_does_not_hold() {
        let mut g = linux_like();
        assert!(!g.undelivered(1));
        g.send_sgi(0b10, 3);
        assert!(g.undelivered(1), "a new SGI for vCPU 1");
        assert!(!g.undelivered(0));
        g.flush(1);
        assert!(!g.undelivered(1), "now in its list registers");
        g.set_level(1, 27, true);
        assert!(g.undelivered(1), "the timer is not");
    }

    #[test]
    fn overflow_asks_for_eoi_on_everything() {
        let mut g = gic(1, 2);
        g.write(GICD_BASE, 4, 2);
        g.write(SGI_FRAME + 0x80, 4, u64::MAX);
        g.send_sgi(1, 1);
        g.send_sgi(1, 2);
        g.send_sgi(1, 5);
        let lrs = g.flush(0);
        assert_eq!(
            lrs,
            [lr::pending(1, 0, true), lr::pending(2, 0, true), 0, 0]
        );
    }
}
