//! A small SMMUv3 driver for isola: the engine owns the SMMU and uses it for
//! one thing, making every DMA of the host's devices go through the host's
//! own Stage-2 tables (stage 2 only, VMID 0), so a device of the host reaches
//! exactly what the host's CPUs reach.
//!
//! What it does: probe and check the SMMU's features; reset it with global
//! bypass set to abort; build a linear stream table in which the StreamIDs
//! the engine names translate through the given stage-2 root and every other
//! entry is invalid (abort); run a command queue (stream-table and TLB
//! invalidation, `CMD_SYNC` whose completion is seen in `CMDQ_CONS`); and
//! drain the event queue (faults), counting what it finds.
//!
//! Where the hardware is: two traits. [`Regs`] is the register page (MMIO)
//! and the barriers around doorbells; [`Memory`] is the engine memory that
//! holds the stream table and the queues. The EL2 image implements them with
//! volatile accesses and `dsb`; the tests implement them with a fake SMMU
//! (`fake.rs`) that consumes commands, keeps a TLB keyed by VMID and IPA,
//! reports errors and produces events. Everything else (encodings, queue
//! indices with their wrap bits, the completion rule, the reset order) is
//! plain Rust, tested on the host.
//!
//! Invariants:
//! - The driver is the only writer of the command queue (its caller holds
//!   one lock around every method that takes `&mut self`), so its shadow of
//!   `CMDQ_PROD` is exact; it never overwrites an entry the SMMU has not
//!   consumed (it waits on `CMDQ_CONS` while the queue is full).
//! - Every invalidation is followed by a `CMD_SYNC`, and a call that issues
//!   commands returns only once `CMDQ_CONS` has passed that `CMD_SYNC`
//!   (all commands before it complete), or with an error: it never reports
//!   success for an invalidation the SMMU has not completed.
//! - Commands and stream table entries are written to memory, then
//!   [`Regs::publish`] orders them before the register write that tells the
//!   SMMU about them.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod encoding;
#[cfg(test)]
mod fake;

pub use encoding::{Cmd, Event, QueueIndex, S2Shape};
use encoding::{reg, *};

/// The SMMU's register page.
pub trait Regs {
    /// 32-bit register read.
    fn read32(&self, off: usize) -> u32;
    /// 32-bit register write.
    fn write32(&self, off: usize, value: u32);
    /// 64-bit register write.
    fn write64(&self, off: usize, value: u64);
    /// Makes every earlier write of the driver to [`Memory`] (commands,
    /// stream table entries, a consumed event slot) visible to the SMMU
    /// before any later register write (on Arm: `dsb st`).
    fn publish(&self);
    /// Orders every later read of [`Memory`] after every earlier register
    /// read (on Arm: `dsb ld`), so an event the producer index announces is
    /// read whole.
    fn acquire(&self);
}

/// The engine memory holding the stream table and the queues (physically
/// addressed, 8-byte aligned accesses).
pub trait Memory {
    /// Reads the doubleword at `pa`.
    fn read_u64(&self, pa: u64) -> u64;
    /// Writes the doubleword at `pa`.
    fn write_u64(&self, pa: u64, value: u64);
}

/// Where the driver's structures live and how big they are. Each base is
/// aligned to its structure's size (and at least to 4 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The linear stream table: `64 << strtab_log2` bytes.
    pub strtab: u64,
    /// log2 of the StreamIDs the table covers; larger StreamIDs abort
    /// (`C_BAD_STREAMID`).
    pub strtab_log2: u8,
    /// The command queue: `16 << cmdq_log2` bytes.
    pub cmdq: u64,
    /// log2 of its entries.
    pub cmdq_log2: u8,
    /// The event queue: `32 << eventq_log2` bytes.
    pub eventq: u64,
    /// log2 of its entries.
    pub eventq_log2: u8,
}

impl Layout {
    /// Bytes of the stream table.
    pub const fn strtab_bytes(&self) -> u64 {
        64 << (self.strtab_log2 & 0x1f)
    }
    /// Bytes of the command queue.
    pub const fn cmdq_bytes(&self) -> u64 {
        16 << (self.cmdq_log2 & 0x1f)
    }
    /// Bytes of the event queue.
    pub const fn eventq_bytes(&self) -> u64 {
        32 << (self.eventq_log2 & 0x1f)
    }
}

/// What the driver sets up.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// Structure placement.
    pub layout: Layout,
    /// The stage-2 tables' shape (from `VTCR_EL2`).
    pub shape: S2Shape,
    /// The stage-2 root (the host's `VTTBR_EL2.BADDR`).
    pub root: u64,
    /// The VMID its TLB entries are tagged with (the host's: 0).
    pub vmid: u16,
    /// StreamIDs that translate through the root; every other one aborts.
    pub streams: &'a [u32],
    /// Set `S2FWB` in the STEs (only if [`Features::fwb`]).
    pub fwb: bool,
}

/// What the SMMU offers, from its ID registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `SMMU_IDR3.FWB`: `S2FWB` is honoured.
    pub fwb: bool,
    /// `SMMU_IDR1.SIDSIZE`: StreamID bits.
    pub sid_bits: u8,
    /// `SMMU_IDR1.CMDQS`: log2 of the largest command queue.
    pub cmdq_log2: u8,
    /// `SMMU_IDR1.EVENTQS`: log2 of the largest event queue.
    pub eventq_log2: u8,
    /// `SMMU_IDR5.OAS`: output address size (the `PS` encoding).
    pub oas: u8,
}

/// Why the driver refuses an SMMU, or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No stage-2 translation (`IDR0.S2P`).
    NoStage2,
    /// No AArch64 table format (`IDR0.TTF`).
    NotAarch64,
    /// Table, queue or DMA accesses are not coherent (`IDR0.COHACC`): the
    /// engine would have to clean every table edit to the PoC.
    NotCoherent,
    /// No 4 KiB granule (`IDR5.GRAN4K`).
    NoGranule4k,
    /// Hardware-fixed table or queue bases (`IDR1.*_PRESET`).
    Preset,
    /// A structure is larger than the SMMU supports, or a StreamID to
    /// translate lies beyond the table.
    Size,
    /// `S2FWB` asked for but not supported.
    NoFwb,
    /// The SMMU did not acknowledge or complete in time (what it was doing).
    Timeout(&'static str),
    /// The command queue stopped on an error (`CMDQ_CONS.ERR`).
    Command(u32),
}

impl core::fmt::Display for Error {
    /// Plain words (no `Debug` formatting of strings, whose escaping code
    /// has panic paths the EL2 image must not contain).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoStage2 => f.write_str("no stage-2 translation (IDR0.S2P)"),
            Self::NotAarch64 => f.write_str("no AArch64 table format (IDR0.TTF)"),
            Self::NotCoherent => f.write_str("not coherent (IDR0.COHACC)"),
            Self::NoGranule4k => f.write_str("no 4 KiB granule (IDR5.GRAN4K)"),
            Self::Preset => f.write_str("hardware-fixed table or queue bases (IDR1)"),
            Self::Size => f.write_str("a structure or StreamID beyond what it supports"),
            Self::NoFwb => f.write_str("S2FWB not supported (IDR3.FWB)"),
            Self::Timeout(what) => {
                f.write_str("timed out: ")?;
                f.write_str(what)
            }
            Self::Command(cons) => write!(f, "command queue error (CMDQ_CONS {cons:#x})"),
        }
    }
}

/// How long the driver polls a register before it gives up.
pub const POLL_LIMIT: u32 = 1 << 24;

/// At most this many pages are invalidated by IPA, one command each;
/// larger runs use one `CMD_TLBI_S12_VMALL` of the VMID.
pub const IPA_INVALIDATIONS: u64 = 4;

/// Fault counts, as the engine reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCount {
    /// Events drained so far.
    pub events: u64,
    /// Times the event queue overflowed (events were lost: `events` is then
    /// a lower bound).
    pub overflows: u64,
    /// The last event drained.
    pub last: Option<Event>,
}

/// The driver.
pub struct Smmu<R: Regs, M: Memory> {
    regs: R,
    mem: M,
    layout: Layout,
    vmid: u16,
    features: Features,
    /// Shadow of `CMDQ_PROD`.
    cmd_prod: QueueIndex,
    /// `CMDQ_CONS` as last read: the SMMU has consumed at least this far,
    /// so while it shows room there is no need to read the register.
    cmd_cons: QueueIndex,
    /// Shadow of `EVENTQ_CONS` (index and wrap).
    event_cons: QueueIndex,
    /// The overflow flag last acknowledged.
    event_ovf: bool,
    count: FaultCount,
}

impl<R: Regs, M: Memory> Smmu<R, M> {
    /// Reads and checks the SMMU's features.
    pub fn probe(regs: &R) -> Result<Features, Error> {
        let idr0 = regs.read32(reg::IDR0);
        let idr1 = regs.read32(reg::IDR1);
        let idr3 = regs.read32(reg::IDR3);
        let idr5 = regs.read32(reg::IDR5);
        if idr0 & IDR0_S2P == 0 {
            return Err(Error::NoStage2);
        }
        if (idr0 >> 2) & IDR0_TTF_AARCH64 == 0 {
            return Err(Error::NotAarch64);
        }
        if idr0 & IDR0_COHACC == 0 {
            return Err(Error::NotCoherent);
        }
        if idr5 & IDR5_GRAN4K == 0 {
            return Err(Error::NoGranule4k);
        }
        if idr1 & IDR1_PRESET != 0 {
            return Err(Error::Preset);
        }
        Ok(Features {
            fwb: idr3 & IDR3_FWB != 0,
            sid_bits: (idr1 & 0x3f) as u8,
            cmdq_log2: ((idr1 >> 21) & 0x1f) as u8,
            eventq_log2: ((idr1 >> 16) & 0x1f) as u8,
            oas: (idr5 & 0b111) as u8,
        })
    }

    /// Takes the SMMU over and turns translation on: disabled first (with
    /// global bypass set to abort, so nothing passes while it is off), the
    /// stream table written (the configured StreamIDs translate through the
    /// stage-2 root, every other entry invalid), the queues set up, every
    /// cached configuration and TLB entry invalidated (synced), then
    /// enabled. On any error the SMMU is left disabled with bypass aborting.
    pub fn init(regs: R, mem: M, cfg: &Config<'_>) -> Result<Self, Error> {
        let features = Self::probe(&regs)?;
        let l = cfg.layout;
        if l.strtab_log2 > features.sid_bits
            || l.cmdq_log2 > features.cmdq_log2
            || l.eventq_log2 > features.eventq_log2
            || l.strtab_log2 > 16
            || cfg
                .streams
                .iter()
                .any(|&s| u64::from(s) >= 1u64 << l.strtab_log2)
        {
            return Err(Error::Size);
        }
        if cfg.fwb && !features.fwb {
            return Err(Error::NoFwb);
        }
        let mut s = Smmu {
            regs,
            mem,
            layout: l,
            vmid: cfg.vmid,
            features,
            cmd_prod: QueueIndex::new(0, l.cmdq_log2),
            cmd_cons: QueueIndex::new(0, l.cmdq_log2),
            event_cons: QueueIndex::new(0, l.eventq_log2),
            event_ovf: false,
            count: FaultCount::default(),
        };
        // Off, and aborting while off.
        s.set_cr0(0)?;
        s.regs.write32(reg::GBPA, GBPA_ABORT | GBPA_UPDATE);
        s.poll("GBPA update", |r| r.read32(reg::GBPA) & GBPA_UPDATE == 0)?;
        s.regs.write32(reg::IRQ_CTRL, 0);
        s.regs.write32(reg::CR1, CR1_WB_ISH);
        s.regs.write32(reg::CR2, CR2_RECINVSID | CR2_PTM);
        // The stream table: translate what is named, abort the rest.
        let ste = ste_stage2(cfg.vmid, cfg.shape, cfg.root, cfg.fwb);
        for sid in 0..1u32 << l.strtab_log2 {
            let entry = if cfg.streams.contains(&sid) {
                ste
            } else {
                STE_INVALID
            };
            let at = l.strtab.wrapping_add(u64::from(sid).wrapping_mul(64));
            for (i, w) in entry.iter().enumerate() {
                s.mem
                    .write_u64(at.wrapping_add((i as u64).wrapping_mul(8)), *w);
            }
        }
        for i in 0..(1u64 << l.cmdq_log2).wrapping_mul(2) {
            s.mem.write_u64(l.cmdq.wrapping_add(i.wrapping_mul(8)), 0);
        }
        for i in 0..(1u64 << l.eventq_log2).wrapping_mul(4) {
            s.mem.write_u64(l.eventq.wrapping_add(i.wrapping_mul(8)), 0);
        }
        s.regs.publish();
        s.regs
            .write64(reg::STRTAB_BASE, (l.strtab & BASE_ADDR_MASK) | BASE_RA);
        // FMT = linear (0), LOG2SIZE.
        s.regs
            .write32(reg::STRTAB_BASE_CFG, u32::from(l.strtab_log2));
        s.regs.write64(
            reg::CMDQ_BASE,
            (l.cmdq & BASE_ADDR_MASK) | BASE_RA | u64::from(l.cmdq_log2),
        );
        s.regs.write32(reg::CMDQ_PROD, 0);
        s.regs.write32(reg::CMDQ_CONS, 0);
        s.regs.write64(
            reg::EVENTQ_BASE,
            (l.eventq & BASE_ADDR_MASK) | BASE_RA | u64::from(l.eventq_log2),
        );
        s.regs.write32(reg::EVENTQ_PROD, 0);
        s.regs.write32(reg::EVENTQ_CONS, 0);
        s.set_cr0(CR0_CMDQEN | CR0_EVENTQEN)?;
        s.submit(&[Cmd::CfgiAll, Cmd::TlbiNsnhAll])?;
        s.set_cr0(CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)?;
        Ok(s)
    }

    /// The features found by [`Smmu::probe`].
    pub fn features(&self) -> Features {
        self.features
    }

    fn poll(&self, what: &'static str, done: impl Fn(&R) -> bool) -> Result<(), Error> {
        for _ in 0..POLL_LIMIT {
            if done(&self.regs) {
                return Ok(());
            }
        }
        Err(Error::Timeout(what))
    }

    fn set_cr0(&mut self, v: u32) -> Result<(), Error> {
        self.regs.write32(reg::CR0, v);
        self.poll("CR0ACK", |r| r.read32(reg::CR0ACK) == v)
    }

    /// Reads `CMDQ_CONS` (into the shadow).
    fn read_cons(&mut self) -> QueueIndex {
        let c = QueueIndex::new(self.regs.read32(reg::CMDQ_CONS), self.layout.cmdq_log2);
        self.cmd_cons = c;
        c
    }

    /// `Err` if the command queue stopped on an error (the SMMU then
    /// consumes nothing more, so a caller still waiting must stop).
    fn check_error(&self) -> Result<(), Error> {
        let gerror = self.regs.read32(reg::GERROR) ^ self.regs.read32(reg::GERRORN);
        if gerror & GERROR_CMDQ_ERR != 0 {
            let raw = self.regs.read32(reg::CMDQ_CONS);
            return Err(Error::Command((raw >> 24) & 0x7f));
        }
        Ok(())
    }

    /// Issues `cmds` followed by a `CMD_SYNC`, and returns once the SMMU
    /// has consumed the `CMD_SYNC` (every command before it is complete).
    ///
    /// `CMDQ_CONS` is read only when the shadow says the queue is full and
    /// while waiting for the `CMD_SYNC`; `GERROR` only when a wait does not
    /// end at once (an error stops consumption, so it cannot hide).
    pub fn submit(&mut self, cmds: &[Cmd]) -> Result<(), Error> {
        for cmd in cmds {
            self.push(*cmd)?;
        }
        self.sync()
    }

    /// Writes `cmd` at the producer index, waiting for room only when the
    /// shadow of the consumer index says the queue is full. Not yet
    /// visible to the SMMU: [`Smmu::sync`] publishes it.
    #[inline(always)]
    fn push(&mut self, cmd: Cmd) -> Result<QueueIndex, Error> {
        if QueueIndex::full(self.cmd_prod, self.cmd_cons) {
            self.wait_for_room()?;
        }
        let at = self
            .layout
            .cmdq
            .wrapping_add(u64::from(self.cmd_prod.index()).wrapping_mul(16));
        let w = cmd.encode();
        self.mem.write_u64(at, w[0]);
        self.mem.write_u64(at.wrapping_add(8), w[1]);
        let mark = self.cmd_prod;
        self.cmd_prod = self.cmd_prod.next();
        Ok(mark)
    }

    /// Publishes what is written so far and waits until the SMMU has
    /// consumed an entry: the queue has room for one more command.
    #[cold]
    #[inline(never)]
    fn wait_for_room(&mut self) -> Result<(), Error> {
        let mut tries = 0u32;
        loop {
            self.regs.publish();
            self.regs.write32(reg::CMDQ_PROD, self.cmd_prod.raw);
            if !QueueIndex::full(self.cmd_prod, self.read_cons()) {
                return Ok(());
            }
            self.check_error()?;
            tries = tries.saturating_add(1);
            if tries >= POLL_LIMIT {
                return Err(Error::Timeout("command queue space"));
            }
        }
    }

    /// Adds a `CMD_SYNC` after the commands pushed, publishes them all and
    /// returns once the SMMU has consumed the `CMD_SYNC`.
    fn sync(&mut self) -> Result<(), Error> {
        let mark = self.push(Cmd::Sync)?;
        self.regs.publish();
        self.regs.write32(reg::CMDQ_PROD, self.cmd_prod.raw);
        for _ in 0..POLL_LIMIT {
            let cons = self.read_cons();
            if QueueIndex::consumed(mark, cons, self.cmd_prod) {
                return Ok(());
            }
            self.check_error()?;
        }
        Err(Error::Timeout("CMD_SYNC"))
    }

    /// Removes the `pages` pages from `ipa` from the SMMU's TLBs for the
    /// driver's VMID, completed: by IPA for a few pages, else the whole VMID.
    /// The commands go straight into the queue (no list built first: this
    /// is on every one-page `Donate`).
    pub fn invalidate(&mut self, ipa: u64, pages: u64) -> Result<(), Error> {
        let vmid = self.vmid;
        if pages == 0 {
            return Ok(());
        }
        if pages > IPA_INVALIDATIONS {
            self.push(Cmd::TlbiS12Vmall { vmid })?;
        } else {
            let mut at = ipa;
            for _ in 0..pages {
                self.push(Cmd::TlbiS2Ipa { vmid, ipa: at })?;
                at = at.wrapping_add(4096);
            }
        }
        self.sync()
    }

    /// Drains the event queue, calling `f` with each event, and returns the
    /// counts so far.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> FaultCount {
        let prod_raw = self.regs.read32(reg::EVENTQ_PROD);
        self.regs.acquire();
        let prod = QueueIndex::new(prod_raw, self.layout.eventq_log2);
        let ovf = prod_raw & (1 << 31) != 0;
        if ovf != self.event_ovf {
            self.count.overflows = self.count.overflows.saturating_add(1);
        }
        let mut drained = 0u32;
        while !QueueIndex::empty(prod, self.event_cons) && drained < 1u32 << self.layout.eventq_log2
        {
            let at = self
                .layout
                .eventq
                .wrapping_add(u64::from(self.event_cons.index()).wrapping_mul(32));
            let mut w = [0u64; 4];
            for (i, x) in w.iter_mut().enumerate() {
                *x = self
                    .mem
                    .read_u64(at.wrapping_add((i as u64).wrapping_mul(8)));
            }
            let e = Event::decode(w);
            self.count.events = self.count.events.saturating_add(1);
            self.count.last = Some(e);
            f(e);
            self.event_cons = self.event_cons.next();
            drained = drained.saturating_add(1);
        }
        self.event_ovf = ovf;
        self.regs.publish();
        self.regs
            .write32(reg::EVENTQ_CONS, self.event_cons.raw | u32::from(ovf) << 31);
        self.count
    }

    /// The counts so far, without draining.
    pub fn count(&self) -> FaultCount {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::encoding::*;
    use super::fake::Fake;
    use super::*;

    const SHAPE: S2Shape = S2Shape {
        t0sz: 24,
        sl0: 1,
        ps: 0b100,
    };
    const LAYOUT: Layout = Layout {
        strtab: 0x4100_0000,
        strtab_log2: 8,
        cmdq: 0x4100_4000,
        cmdq_log2: 8,
        eventq: 0x4100_5000,
        eventq_log2: 7,
    };
    const ROOT: u64 = 0x4200_0000;

    fn config(streams: &[u32], layout: Layout, fwb: bool) -> Config<'_> {
        Config {
            layout,
            shape: SHAPE,
            root: ROOT,
            vmid: 0,
            streams,
            fwb,
        }
    }

    fn up(fake: &Fake, streams: &[u32], layout: Layout) -> Smmu<Fake, Fake> {
        Smmu::init(fake.clone(), fake.clone(), &config(streams, layout, false)).unwrap()
    }

    #[test]
    fn init_translates_named_streams_and_aborts_the_rest() {
        let fake = Fake::new(false);
        let _smmu = up(&fake, &[0x08, 0x10], LAYOUT);
        let s = fake.0.borrow();
        assert_eq!(s.cr0, CR0_SMMUEN | CR0_CMDQEN | CR0_EVENTQEN);
        assert_ne!(s.gbpa & GBPA_ABORT, 0, "bypass aborts while disabled");
        assert_eq!(s.cr2, CR2_RECINVSID | CR2_PTM);
        assert_eq!(s.strtab_cfg, 8, "linear, 256 StreamIDs");
        assert_eq!(s.consumed, [Cmd::CfgiAll, Cmd::TlbiNsnhAll, Cmd::Sync]);
        assert!(!s.unpublished_doorbell);
        drop(s);
        let ste = |sid: u64| -> Ste {
            std::array::from_fn(|i| fake.read_u64(LAYOUT.strtab + sid * 64 + 8 * i as u64))
        };
        let f = ste_fields(&ste(0x10));
        assert_eq!(
            (
                f.valid, f.config, f.vmid, f.shape, f.root, f.record, f.aarch64
            ),
            (true, 0b110, 0, SHAPE, ROOT, true, true)
        );
        assert!(!ste_fields(&ste(0x09)).valid, "an unnamed StreamID aborts");
        assert!(!ste_fields(&ste(0)).valid);
        // Through the fake: a named stream translates, others abort with
        // an event; beyond the table, C_BAD_STREAMID.
        fake.0.borrow_mut().mapped.insert(0x4400_0000);
        assert_eq!(fake.dma(0x10, 0x4400_0000, false), Ok(()));
        assert_eq!(fake.dma(0x09, 0x4400_0000, false), Err(()));
        assert_eq!(fake.dma(0x100, 0x4400_0000, false), Err(()));
    }

    #[test]
    fn probe_refuses_what_the_engine_cannot_use() {
        type Breaker = fn(&mut fake::State);
        let cases: [(Breaker, Error); 5] = [
            (|s| s.idr[0] &= !IDR0_S2P, Error::NoStage2),
            (|s| s.idr[0] &= !(0b11 << 2), Error::NotAarch64),
            (|s| s.idr[0] &= !IDR0_COHACC, Error::NotCoherent),
            (|s| s.idr[5] &= !IDR5_GRAN4K, Error::NoGranule4k),
            (|s| s.idr[1] |= 1 << 30, Error::Preset),
        ];
        for (break_it, want) in cases {
            let fake = Fake::new(false);
            break_it(&mut fake.0.borrow_mut());
            let r = Smmu::init(fake.clone(), fake.clone(), &config(&[], LAYOUT, false));
            assert_eq!(r.err(), Some(want));
        }
        let fake = Fake::new(false);
        let r = Smmu::init(fake.clone(), fake.clone(), &config(&[], LAYOUT, true));
        assert_eq!(r.err(), Some(Error::NoFwb), "S2FWB without IDR3.FWB");
        let r = Smmu::init(fake.clone(), fake.clone(), &config(&[256], LAYOUT, false));
        assert_eq!(r.err(), Some(Error::Size), "a StreamID beyond the table");
        let fake = Fake::new(true);
        let smmu = Smmu::init(fake.clone(), fake.clone(), &config(&[1], LAYOUT, true)).unwrap();
        assert!(smmu.features().fwb);
        let f = ste_fields(&std::array::from_fn(|i| {
            fake.read_u64(LAYOUT.strtab + 64 + 8 * i as u64)
        }));
        assert!(f.fwb);
    }

    #[test]
    fn an_invalidation_is_complete_when_it_returns() {
        let fake = Fake::new(false);
        let mut smmu = up(&fake, &[0x10], LAYOUT);
        // A slow SMMU: one command per CONS read. A caller that returned
        // right after ringing the doorbell would leave the entry cached.
        fake.0.borrow_mut().slow = Some(1);
        for p in 0..8u64 {
            fake.0.borrow_mut().mapped.insert(0x4400_0000 + p * 4096);
            assert_eq!(fake.dma(0x10, 0x4400_0000 + p * 4096, true), Ok(()));
        }
        fake.0.borrow_mut().mapped.clear();
        // The TLB still holds them: that is what the invalidation is for.
        assert_eq!(fake.dma(0x10, 0x4400_0000, true), Ok(()), "stale entry");
        smmu.invalidate(0x4400_0000, 1).unwrap();
        assert_eq!(fake.dma(0x10, 0x4400_0000, true), Err(()));
        assert_eq!(fake.dma(0x10, 0x4400_1000, true), Ok(()), "one page only");
        smmu.invalidate(0x4400_1000, 512).unwrap();
        for p in 0..8u64 {
            assert_eq!(fake.dma(0x10, 0x4400_0000 + p * 4096, true), Err(()));
        }
        let s = fake.0.borrow();
        let tail = &s.consumed[s.consumed.len() - 4..];
        assert_eq!(
            tail,
            [
                Cmd::TlbiS2Ipa {
                    vmid: 0,
                    ipa: 0x4400_0000
                },
                Cmd::Sync,
                Cmd::TlbiS12Vmall { vmid: 0 },
                Cmd::Sync
            ]
        );
        assert!(!s.unpublished_doorbell);
    }

    #[test]
    fn the_slow_fake_really_defers_work() {
        // The check above has teeth: ringing the doorbell alone (no wait for
        // the CMD_SYNC) leaves the TLB entry in a slow SMMU.
        let fake = Fake::new(false);
        let _smmu = up(&fake, &[0x10], LAYOUT);
        fake.0.borrow_mut().slow = Some(1);
        fake.0.borrow_mut().mapped.insert(0x4400_0000);
        assert_eq!(fake.dma(0x10, 0x4400_0000, false), Ok(()));
        let w = Cmd::TlbiS2Ipa {
            vmid: 0,
            ipa: 0x4400_0000,
        }
        .encode();
        let prod = fake.read32(reg::CMDQ_PROD);
        let at = LAYOUT.cmdq + u64::from(prod & 0xff) * 16;
        fake.write_u64(at, w[0]);
        fake.write_u64(at + 8, w[1]);
        fake.publish();
        fake.write32(reg::CMDQ_PROD, prod + 1);
        assert_eq!(
            fake.dma(0x10, 0x4400_0000, false),
            Ok(()),
            "not yet consumed"
        );
    }

    #[test]
    fn the_command_queue_wraps_and_waits_for_room() {
        let fake = Fake::new(false);
        let small = Layout {
            cmdq_log2: 2,
            ..LAYOUT
        };
        let mut smmu = up(&fake, &[0x10], small);
        fake.0.borrow_mut().slow = Some(1);
        for i in 0..40u64 {
            smmu.invalidate(0x4400_0000 + (i % 3) * 4096, 1 + i % 5)
                .unwrap();
        }
        let s = fake.0.borrow();
        // Every batch ends with its sync; the prod index wrapped many times.
        assert!(s.consumed.len() > 4 * 8);
        let syncs = s.consumed.iter().filter(|c| **c == Cmd::Sync).count();
        assert_eq!(syncs, 41, "one per call, plus init's");
        assert_eq!(
            QueueIndex::new(s.cmdq_prod, 2),
            QueueIndex::new(s.cmdq_cons, 2)
        );
    }

    #[test]
    fn a_command_error_is_reported_not_hidden() {
        let fake = Fake::new(false);
        let mut smmu = up(&fake, &[0x10], LAYOUT);
        fake.0.borrow_mut().reject = Some(op::TLBI_S2_IPA);
        assert_eq!(smmu.invalidate(0x4400_0000, 1), Err(Error::Command(1)));
        assert_eq!(smmu.invalidate(0x4400_0000, 1), Err(Error::Command(1)));
    }

    #[test]
    fn faults_are_drained_counted_and_survive_a_wrap_and_an_overflow() {
        let fake = Fake::new(false);
        let small = Layout {
            eventq_log2: 2,
            ..LAYOUT
        };
        let mut smmu = up(&fake, &[0x10], small);
        for i in 0..3u64 {
            assert_eq!(fake.dma(0x10, 0x4020_0000 + i * 8, i == 0), Err(()));
        }
        let mut seen = Vec::new();
        let c = smmu.drain(|e| seen.push(e));
        assert_eq!(c.events, 3);
        assert_eq!(
            seen[0],
            Event {
                kind: event::F_TRANSLATION,
                sid: 0x10,
                addr: 0x4020_0000,
                read: true
            }
        );
        assert!(!seen[1].read);
        // Six more into a queue of four: two are lost, the overflow counted.
        for i in 0..6u64 {
            let _ = fake.dma(0x10, 0x5000_0000 + i * 8, false);
        }
        let c = smmu.drain(|_| {});
        assert_eq!((c.events, c.overflows), (7, 1));
        assert_eq!(c.last.map(|e| e.addr), Some(0x5000_0018));
        // The overflow was acknowledged: the next ones arrive again.
        let _ = fake.dma(0x11, 0, false);
        let c = smmu.drain(|_| {});
        assert_eq!((c.events, c.overflows), (8, 1));
        assert_eq!(c.last.map(|e| e.kind), Some(event::C_BAD_STE));
    }
}
