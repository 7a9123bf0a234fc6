//! A fake SMMUv3 for host tests: registers, memory, a command consumer, a
//! TLB keyed by (VMID, page), an event producer. It checks what the real
//! hardware would need (commands published before the doorbell) and can be
//! made slow (a few commands consumed per `CMDQ_CONS` read) or picky (an
//! opcode it rejects), so the driver's waiting and error paths run.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::encoding::{reg, *};
use super::{Memory, Regs};

/// The fake's state, shared by its register and memory handles.
#[derive(Default)]
pub struct State {
    pub idr: [u32; 6],
    pub cr0: u32,
    pub cr0ack: u32,
    pub cr1: u32,
    pub cr2: u32,
    pub gbpa: u32,
    pub gerror: u32,
    pub gerrorn: u32,
    pub strtab_base: u64,
    pub strtab_cfg: u32,
    pub cmdq_base: u64,
    pub cmdq_prod: u32,
    pub cmdq_cons: u32,
    pub eventq_base: u64,
    pub eventq_prod: u32,
    pub eventq_cons: u32,
    pub mem: BTreeMap<u64, u64>,
    /// Pages the stage-2 tables map (what a walk would find).
    pub mapped: BTreeSet<u64>,
    /// Cached translations: (VMID, page).
    pub tlb: BTreeSet<(u16, u64)>,
    /// Every command consumed, in order.
    pub consumed: Vec<Cmd>,
    /// `None`: consume everything when `CMDQ_PROD` is written (QEMU's
    /// model). `Some(n)`: consume at most `n` per `CMDQ_CONS` read.
    pub slow: Option<u32>,
    /// An opcode the fake rejects (`CERROR_ILL`).
    pub reject: Option<u8>,
    /// Memory written since the last `publish`.
    pub dirty: bool,
    /// A doorbell rung over unpublished memory (a driver bug).
    pub unpublished_doorbell: bool,
}

/// A fake SMMU: clone handles for registers and memory.
#[derive(Clone)]
pub struct Fake(pub Rc<RefCell<State>>);

impl Fake {
    /// An SMMU with stage 2, AArch64 tables, coherent, 4 KiB granule,
    /// 16 StreamID bits, queues of up to 2^8 entries, FWB as asked.
    pub fn new(fwb: bool) -> Fake {
        let mut s = State::default();
        s.idr[0] = IDR0_S2P | IDR0_TTF_AARCH64 << 2 | IDR0_COHACC;
        s.idr[1] = 16 | 8 << 16 | 8 << 21;
        s.idr[3] = if fwb { IDR3_FWB } else { 0 };
        s.idr[5] = IDR5_GRAN4K | 0b100;
        s.gbpa = 1 << 12;
        Fake(Rc::new(RefCell::new(s)))
    }

    fn log2(v: u64) -> u8 {
        (v & 0x1f) as u8
    }

    fn consume(&self, limit: u32) {
        let mut s = self.0.borrow_mut();
        if s.cr0 & CR0_CMDQEN == 0 {
            return;
        }
        let log2 = Self::log2(s.cmdq_base);
        let base = s.cmdq_base & BASE_ADDR_MASK;
        let mut n = 0;
        loop {
            let prod = QueueIndex::new(s.cmdq_prod, log2);
            let cons = QueueIndex::new(s.cmdq_cons, log2);
            if n >= limit
                || QueueIndex::empty(prod, cons)
                || (s.gerror ^ s.gerrorn) & GERROR_CMDQ_ERR != 0
            {
                return;
            }
            let at = base.wrapping_add(u64::from(cons.index()).wrapping_mul(16));
            let w = [
                s.mem.get(&at).copied().unwrap_or(0),
                s.mem.get(&at.wrapping_add(8)).copied().unwrap_or(0),
            ];
            let cmd = Cmd::decode(w).filter(|_| s.reject != Some((w[0] & 0xff) as u8));
            let Some(cmd) = cmd else {
                s.gerror ^= GERROR_CMDQ_ERR;
                s.cmdq_cons = (s.cmdq_cons & !(0x7f << 24)) | 1 << 24;
                return;
            };
            match cmd {
                Cmd::TlbiS2Ipa { vmid, ipa } => {
                    s.tlb.remove(&(vmid, ipa));
                }
                Cmd::TlbiS12Vmall { vmid } => s.tlb.retain(|&(v, _)| v != vmid),
                Cmd::TlbiNsnhAll => s.tlb.clear(),
                Cmd::CfgiAll | Cmd::Sync => {}
            }
            s.consumed.push(cmd);
            s.cmdq_cons = (s.cmdq_cons & !0x00ff_ffff) | cons.next().raw;
            n = n.wrapping_add(1);
        }
    }

    /// A DMA by `sid` to `ipa`: through the TLB, else a walk of `mapped`
    /// (cached on success), else an `F_TRANSLATION` event. `Ok` if it
    /// reached memory.
    pub fn dma(&self, sid: u32, ipa: u64, read: bool) -> Result<(), ()> {
        let page = ipa & !0xfff;
        let (ste, vmid) = {
            let s = self.0.borrow();
            if s.cr0 & CR0_SMMUEN == 0 {
                return if s.gbpa & GBPA_ABORT != 0 {
                    Err(())
                } else {
                    Ok(())
                };
            }
            let log2 = s.strtab_cfg & 0x3f;
            if u64::from(sid) >= 1 << log2 {
                drop(s);
                self.event([event::C_BAD_STREAMID as u64 | u64::from(sid) << 32, 0, 0, 0]);
                return Err(());
            }
            let at = (s.strtab_base & BASE_ADDR_MASK).wrapping_add(u64::from(sid).wrapping_mul(64));
            let mut ste = [0u64; 8];
            for (i, w) in ste.iter_mut().enumerate() {
                *w = s
                    .mem
                    .get(&at.wrapping_add(8_u64.wrapping_mul(i as u64)))
                    .copied()
                    .unwrap_or(0);
            }
            (ste, ste_fields(&ste).vmid)
        };
        let f = ste_fields(&ste);
        if !f.valid || f.config != 0b110 {
            self.event([event::C_BAD_STE as u64 | u64::from(sid) << 32, 0, 0, 0]);
            return Err(());
        }
        let mut s = self.0.borrow_mut();
        if s.tlb.contains(&(vmid, page)) {
            return Ok(());
        }
        if s.mapped.contains(&page) {
            s.tlb.insert((vmid, page));
            return Ok(());
        }
        drop(s);
        let rnw = if read { 1u64 << 35 } else { 0 };
        self.event([
            event::F_TRANSLATION as u64 | u64::from(sid) << 32,
            rnw,
            ipa,
            page,
        ]);
        Err(())
    }

    /// Produces an event record (or flags an overflow when full).
    pub fn event(&self, w: EventWords) {
        let mut s = self.0.borrow_mut();
        if s.cr0 & CR0_EVENTQEN == 0 {
            return;
        }
        let log2 = Self::log2(s.eventq_base);
        let prod = QueueIndex::new(s.eventq_prod, log2);
        let cons = QueueIndex::new(s.eventq_cons, log2);
        if QueueIndex::full(prod, cons) {
            // A new overflow is flagged only once the last one was
            // acknowledged (OVFLG == OVACKFLG).
            if (s.eventq_prod ^ s.eventq_cons) & (1 << 31) == 0 {
                s.eventq_prod ^= 1 << 31;
            }
            return;
        }
        let at =
            (s.eventq_base & BASE_ADDR_MASK).wrapping_add(u64::from(prod.index()).wrapping_mul(32));
        for (i, x) in w.iter().enumerate() {
            s.mem
                .insert(at.wrapping_add(8_u64.wrapping_mul(i as u64)), *x);
        }
        s.eventq_prod = (s.eventq_prod & (1 << 31)) | prod.next().raw;
    }
}

impl Regs for Fake {
    fn read32(&self, off: usize) -> u32 {
        let slow = self.0.borrow().slow;
        if off == reg::CMDQ_CONS
            && let Some(n) = slow
        {
            self.consume(n);
        }
        let s = self.0.borrow();
        match off {
            reg::IDR0 => s.idr[0],
            reg::IDR1 => s.idr[1],
            reg::IDR3 => s.idr[3],
            reg::IDR5 => s.idr[5],
            reg::CR0 => s.cr0,
            reg::CR0ACK => s.cr0ack,
            reg::GBPA => s.gbpa,
            reg::GERROR => s.gerror,
            reg::GERRORN => s.gerrorn,
            reg::CMDQ_PROD => s.cmdq_prod,
            reg::CMDQ_CONS => s.cmdq_cons,
            reg::EVENTQ_PROD => s.eventq_prod,
            reg::EVENTQ_CONS => s.eventq_cons,
            _ => 0,
        }
    }

    fn write32(&self, off: usize, v: u32) {
        {
            let mut s = self.0.borrow_mut();
            if matches!(off, reg::CMDQ_PROD | reg::CR0) && s.dirty {
                s.unpublished_doorbell = true;
            }
            match off {
                reg::CR0 => {
                    s.cr0 = v;
                    s.cr0ack = v;
                }
                reg::CR1 => s.cr1 = v,
                reg::CR2 => s.cr2 = v,
                reg::GBPA if v & GBPA_UPDATE != 0 => s.gbpa = v & !GBPA_UPDATE,
                reg::GERRORN => s.gerrorn = v,
                reg::STRTAB_BASE_CFG => s.strtab_cfg = v,
                reg::CMDQ_PROD => s.cmdq_prod = v,
                reg::CMDQ_CONS => s.cmdq_cons = v,
                reg::EVENTQ_PROD => s.eventq_prod = v,
                reg::EVENTQ_CONS => s.eventq_cons = v,
                _ => {}
            }
        }
        if off == reg::CMDQ_PROD && self.0.borrow().slow.is_none() {
            self.consume(u32::MAX);
        }
    }

    fn write64(&self, off: usize, v: u64) {
        let mut s = self.0.borrow_mut();
        match off {
            reg::STRTAB_BASE => s.strtab_base = v,
            reg::CMDQ_BASE => s.cmdq_base = v,
            reg::EVENTQ_BASE => s.eventq_base = v,
            _ => {}
        }
    }

    fn publish(&self) {
        self.0.borrow_mut().dirty = false;
    }

    fn acquire(&self) {}
}

impl Memory for Fake {
    fn read_u64(&self, pa: u64) -> u64 {
        self.0.borrow().mem.get(&pa).copied().unwrap_or(0)
    }
    fn write_u64(&self, pa: u64, v: u64) {
        let mut s = self.0.borrow_mut();
        s.mem.insert(pa, v);
        s.dirty = true;
    }
}
