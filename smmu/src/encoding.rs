//! The SMMUv3 formats the driver writes and reads (Arm IHI 0070, SMMUv3
//! architecture): register offsets and fields, stream table entries,
//! commands, event records, and queue indices with their wrap bit. Pure
//! encoding and decoding, no state.

/// Register offsets (page 0 unless said otherwise).
pub mod reg {
    /// Feature register 0.
    pub const IDR0: usize = 0x00;
    /// Feature register 1.
    pub const IDR1: usize = 0x04;
    /// Feature register 3.
    pub const IDR3: usize = 0x0c;
    /// Feature register 5.
    pub const IDR5: usize = 0x14;
    /// Control register 0.
    pub const CR0: usize = 0x20;
    /// Acknowledge of [`CR0`].
    pub const CR0ACK: usize = 0x24;
    /// Table and queue memory attributes.
    pub const CR1: usize = 0x28;
    /// Control register 2.
    pub const CR2: usize = 0x2c;
    /// Global bypass attributes.
    pub const GBPA: usize = 0x44;
    /// Interrupt enables.
    pub const IRQ_CTRL: usize = 0x50;
    /// Global errors (toggled by the SMMU).
    pub const GERROR: usize = 0x60;
    /// Global error acknowledge (toggled by software).
    pub const GERRORN: usize = 0x64;
    /// Stream table base (64-bit).
    pub const STRTAB_BASE: usize = 0x80;
    /// Stream table format and size.
    pub const STRTAB_BASE_CFG: usize = 0x88;
    /// Command queue base (64-bit).
    pub const CMDQ_BASE: usize = 0x90;
    /// Command queue producer index (software's).
    pub const CMDQ_PROD: usize = 0x98;
    /// Command queue consumer index (the SMMU's).
    pub const CMDQ_CONS: usize = 0x9c;
    /// Event queue base (64-bit).
    pub const EVENTQ_BASE: usize = 0xa0;
    /// Event queue producer index (page 1: the SMMU's).
    pub const EVENTQ_PROD: usize = 0x1_00a8;
    /// Event queue consumer index (page 1: software's).
    pub const EVENTQ_CONS: usize = 0x1_00ac;
}

/// `SMMU_IDR0.S2P`: stage-2 translation.
pub const IDR0_S2P: u32 = 1 << 0;
/// `SMMU_IDR0.TTF` (bits 3:2) value with AArch64 tables (0b10 or 0b11).
pub const IDR0_TTF_AARCH64: u32 = 0b10;
/// `SMMU_IDR0.COHACC`: table, queue and DMA accesses are IO-coherent.
pub const IDR0_COHACC: u32 = 1 << 4;
/// `SMMU_IDR1.TABLES_PRESET` and `QUEUES_PRESET`: bases fixed by hardware.
pub const IDR1_PRESET: u32 = 0b11 << 29;
/// `SMMU_IDR3.FWB`: the STE's `S2FWB` is honoured.
pub const IDR3_FWB: u32 = 1 << 8;
/// `SMMU_IDR5.GRAN4K`: 4 KiB translation granule.
pub const IDR5_GRAN4K: u32 = 1 << 4;

/// `SMMU_CR0.SMMUEN`: translation on.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// `SMMU_CR0.EVENTQEN`.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// `SMMU_CR0.CMDQEN`.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// `SMMU_CR2.RECINVSID`: record an event for an out-of-range StreamID.
pub const CR2_RECINVSID: u32 = 1 << 1;
/// `SMMU_CR2.PTM`: private TLB maintenance (the CPUs' broadcast TLBIs do not
/// reach the SMMU; only its commands do).
pub const CR2_PTM: u32 = 1 << 2;
/// `SMMU_GBPA.ABORT`: with the SMMU disabled, every transaction aborts.
pub const GBPA_ABORT: u32 = 1 << 20;
/// `SMMU_GBPA.UPDATE`: software's write is pending.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// `SMMU_GERROR.CMDQ_ERR`.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// `SMMU_CR1`: queues and tables inner and outer write-back, inner
/// shareable (the fields QUEUE_IC, QUEUE_OC, QUEUE_SH, TABLE_IC, TABLE_OC,
/// TABLE_SH).
pub const CR1_WB_ISH: u32 = 0b01 | 0b01 << 2 | 0b11 << 4 | 0b01 << 6 | 0b01 << 8 | 0b11 << 10;
/// `CMDQ_BASE`/`EVENTQ_BASE`/`STRTAB_BASE`: read-allocate hint.
pub const BASE_RA: u64 = 1 << 62;
/// Physical address bits of a base register (51:5; the low bits hold the
/// size, which callers align away).
pub const BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;

/// The shape of a stage-2 translation, as the CPU's `VTCR_EL2` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Shape {
    /// `T0SZ`: the input (IPA) size is `64 - t0sz` bits.
    pub t0sz: u8,
    /// `SL0`, 4 KiB-granule encoding (1 = walk from level 1).
    pub sl0: u8,
    /// `PS`: output address size.
    pub ps: u8,
}

/// A stream table entry: 8 doublewords.
pub type Ste = [u64; 8];

/// The STE of a StreamID that must not reach memory: `V = 0`. A
/// transaction with it is terminated with an abort and a `C_BAD_STE`
/// event.
pub const STE_INVALID: Ste = [0; 8];

/// An STE that translates the stream through a stage-2 table only (stage 1
/// bypassed): `V`, `Config` = 0b110, `S2VMID`, the shape, write-back
/// inner-shareable walks, AArch64 tables, access-flag faults disabled (the
/// engine's leaves all have `AF` set), faults recorded (`S2R`), `S2FWB` as
/// asked, and `S2TTB` = `root`.
pub const fn ste_stage2(vmid: u16, shape: S2Shape, root: u64, fwb: bool) -> Ste {
    let v = 1u64;
    let config_s2 = 0b110u64 << 1;
    // STRW = NS-EL1 (0), SHCFG = use incoming (0b01).
    let dw1 = 0b01u64 << 44;
    let dw2 = vmid as u64
        | (shape.t0sz as u64 & 0x3f) << 32
        | (shape.sl0 as u64 & 0b11) << 38
        | 0b01 << 40 // S2IR0: write-back, read/write-allocate
        | 0b01 << 42 // S2OR0
        | 0b11 << 44 // S2SH0: inner shareable
        // S2TG = 0 (4 KiB)
        | (shape.ps as u64 & 0b111) << 48
        | 1 << 51 // S2AA64
        | 1 << 53 // S2AFFD
        | 1 << 58 // S2R
        | if fwb { 1 << 25 } else { 0 };
    let dw3 = root & 0x000f_ffff_ffff_fff0;
    [v | config_s2, dw1, dw2, dw3, 0, 0, 0, 0]
}

/// The fields of a stage-2 STE, decoded (for checks and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Fields {
    /// `V`.
    pub valid: bool,
    /// `Config`.
    pub config: u8,
    /// `S2VMID`.
    pub vmid: u16,
    /// The shape.
    pub shape: S2Shape,
    /// `S2TTB`.
    pub root: u64,
    /// `S2FWB`.
    pub fwb: bool,
    /// `S2R`.
    pub record: bool,
    /// `S2AA64`.
    pub aarch64: bool,
}

/// Decodes the fields [`ste_stage2`] writes.
pub const fn ste_fields(s: &Ste) -> Stage2Fields {
    Stage2Fields {
        valid: s[0] & 1 != 0,
        config: ((s[0] >> 1) & 0b111) as u8,
        vmid: (s[2] & 0xffff) as u16,
        shape: S2Shape {
            t0sz: ((s[2] >> 32) & 0x3f) as u8,
            sl0: ((s[2] >> 38) & 0b11) as u8,
            ps: ((s[2] >> 48) & 0b111) as u8,
        },
        root: s[3] & 0x000f_ffff_ffff_fff0,
        fwb: s[2] & (1 << 25) != 0,
        record: s[2] & (1 << 58) != 0,
        aarch64: s[2] & (1 << 51) != 0,
    }
}

/// A command: 2 doublewords.
pub type CmdWords = [u64; 2];

/// The commands the driver issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// `CMD_CFGI_STE_RANGE` with range 31: every cached STE.
    CfgiAll,
    /// `CMD_TLBI_NSNH_ALL`: every non-secure, non-hypervisor TLB entry.
    TlbiNsnhAll,
    /// `CMD_TLBI_S12_VMALL`: every TLB entry of a VMID.
    TlbiS12Vmall {
        /// The VMID.
        vmid: u16,
    },
    /// `CMD_TLBI_S2_IPA`: the entries of one 4 KiB IPA of a VMID (no range:
    /// `TG` = 0), leaf and non-leaf.
    TlbiS2Ipa {
        /// The VMID.
        vmid: u16,
        /// The IPA (page aligned).
        ipa: u64,
    },
    /// `CMD_SYNC` without a signal: completion is seen when `CMDQ_CONS`
    /// moves past it.
    Sync,
}

/// Opcodes.
pub mod op {
    /// `CMD_CFGI_STE_RANGE` (and `CMD_CFGI_ALL`).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// `CMD_TLBI_NSNH_ALL`.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// `CMD_TLBI_S12_VMALL`.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// `CMD_TLBI_S2_IPA`.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// `CMD_SYNC`.
    pub const SYNC: u8 = 0x46;
}

impl Cmd {
    /// The two doublewords of the command.
    pub const fn encode(self) -> CmdWords {
        match self {
            Cmd::CfgiAll => [op::CFGI_STE_RANGE as u64, 31],
            Cmd::TlbiNsnhAll => [op::TLBI_NSNH_ALL as u64, 0],
            Cmd::TlbiS12Vmall { vmid } => [op::TLBI_S12_VMALL as u64 | (vmid as u64) << 32, 0],
            Cmd::TlbiS2Ipa { vmid, ipa } => [
                op::TLBI_S2_IPA as u64 | (vmid as u64) << 32,
                ipa & 0x000f_ffff_ffff_f000,
            ],
            // CS = 0 (SIG_NONE).
            Cmd::Sync => [op::SYNC as u64, 0],
        }
    }

    /// The command two doublewords encode, if it is one the driver issues.
    pub const fn decode(w: CmdWords) -> Option<Cmd> {
        match (w[0] & 0xff) as u8 {
            op::CFGI_STE_RANGE if w[1] & 0x1f == 31 => Some(Cmd::CfgiAll),
            op::TLBI_NSNH_ALL => Some(Cmd::TlbiNsnhAll),
            op::TLBI_S12_VMALL => Some(Cmd::TlbiS12Vmall {
                vmid: ((w[0] >> 32) & 0xffff) as u16,
            }),
            op::TLBI_S2_IPA => Some(Cmd::TlbiS2Ipa {
                vmid: ((w[0] >> 32) & 0xffff) as u16,
                ipa: w[1] & 0x000f_ffff_ffff_f000,
            }),
            op::SYNC => Some(Cmd::Sync),
            _ => None,
        }
    }
}

/// One event record (4 doublewords).
pub type EventWords = [u64; 4];

/// An event, decoded: the fields every fault record shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `EventType`.
    pub kind: u8,
    /// `StreamID`.
    pub sid: u32,
    /// `InputAddr` (for translation-related faults; 0 otherwise).
    pub addr: u64,
    /// `RnW`: the access was a read.
    pub read: bool,
}

/// Event types the driver names.
pub mod event {
    /// `C_BAD_STREAMID`: StreamID beyond the stream table.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// `C_BAD_STE`: invalid STE.
    pub const C_BAD_STE: u8 = 0x04;
    /// `F_TRANSLATION`: no stage-2 mapping.
    pub const F_TRANSLATION: u8 = 0x10;
    /// `F_ADDR_SIZE`: address beyond the translation's range.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// `F_ACCESS`: access flag.
    pub const F_ACCESS: u8 = 0x12;
    /// `F_PERMISSION`: the mapping forbids the access.
    pub const F_PERMISSION: u8 = 0x13;
}

impl Event {
    /// Decodes a record.
    pub const fn decode(w: EventWords) -> Event {
        let kind = (w[0] & 0xff) as u8;
        let addressed = matches!(
            kind,
            event::F_TRANSLATION | event::F_ADDR_SIZE | event::F_ACCESS | event::F_PERMISSION
        ) || kind == 0x01
            || kind == 0x07
            || kind == 0x0b;
        Event {
            kind,
            sid: (w[0] >> 32) as u32,
            addr: if addressed { w[2] } else { 0 },
            read: addressed && w[1] & (1 << 35) != 0,
        }
    }

    /// A short name for the event type.
    pub const fn name(&self) -> &'static str {
        match self.kind {
            0x01 => "F_UUT",
            event::C_BAD_STREAMID => "C_BAD_STREAMID",
            0x03 => "F_STE_FETCH",
            event::C_BAD_STE => "C_BAD_STE",
            0x06 => "F_STREAM_DISABLED",
            0x07 => "F_TRANSL_FORBIDDEN",
            0x0b => "F_WALK_EABT",
            event::F_TRANSLATION => "F_TRANSLATION",
            event::F_ADDR_SIZE => "F_ADDR_SIZE",
            event::F_ACCESS => "F_ACCESS",
            event::F_PERMISSION => "F_PERMISSION",
            _ => "event",
        }
    }
}

/// A queue index as `*_PROD`/`*_CONS` hold it: `log2size` index bits and,
/// above them, the wrap bit that tells a full queue from an empty one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    /// The raw value (index and wrap bits only).
    pub raw: u32,
    /// log2 of the number of entries (at most 19).
    pub log2size: u8,
}

impl QueueIndex {
    /// The index and wrap bits of `raw` for a queue of `2^log2size` entries.
    pub const fn new(raw: u32, log2size: u8) -> Self {
        let mask = (2u32 << (log2size & 0x1f)).wrapping_sub(1);
        Self {
            raw: raw & mask,
            log2size,
        }
    }

    /// The entry the index points at.
    pub const fn index(self) -> u32 {
        self.raw & (1u32 << (self.log2size & 0x1f)).wrapping_sub(1)
    }

    /// The wrap bit.
    pub const fn wrap(self) -> bool {
        self.raw & (1u32 << (self.log2size & 0x1f)) != 0
    }

    /// The next index (the wrap bit flips when the index wraps to 0).
    pub const fn next(self) -> Self {
        Self::new(self.raw.wrapping_add(1), self.log2size)
    }

    /// Whether a queue with these producer and consumer indices is full.
    pub const fn full(prod: Self, cons: Self) -> bool {
        prod.index() == cons.index() && prod.wrap() != cons.wrap()
    }

    /// Whether a queue with these producer and consumer indices is empty.
    pub const fn empty(prod: Self, cons: Self) -> bool {
        prod.raw == cons.raw
    }

    /// Whether the consumer has moved past `mark` (an entry the producer
    /// wrote at or before `prod`): `mark` lies outside `[cons, prod)`.
    pub const fn consumed(mark: Self, cons: Self, prod: Self) -> bool {
        // Distances modulo twice the queue size (a power of two): the mask
        // keeps the index and wrap bits.
        let mask = (2u32 << (mark.log2size & 0x1f)).wrapping_sub(1);
        let pending = prod.raw.wrapping_sub(cons.raw) & mask;
        let ahead = mark.raw.wrapping_sub(cons.raw) & mask;
        ahead >= pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_indices_wrap_and_tell_full_from_empty() {
        let log2 = 2u8;
        let mut p = QueueIndex::new(0, log2);
        let c = QueueIndex::new(0, log2);
        assert!(QueueIndex::empty(p, c));
        for _ in 0..4 {
            assert!(!QueueIndex::full(p, c));
            p = p.next();
        }
        assert!(QueueIndex::full(p, c), "four entries in a queue of four");
        assert_eq!((p.index(), p.wrap()), (0, true));
        let c = QueueIndex::new(4, log2);
        assert!(QueueIndex::empty(p, c));
        // Twice round: the wrap bit flips back.
        let p2 = (0..4).fold(p, |q, _| q.next());
        assert_eq!((p2.index(), p2.wrap()), (0, false));
        assert_eq!(QueueIndex::new(0x8000_0005, log2).raw, 5, "flags dropped");
    }

    #[test]
    fn consumed_follows_the_consumer_across_the_wrap() {
        let q = |r| QueueIndex::new(r, 2);
        // Entries 6 and 7 (indices 2 and 3, wrap 1) are pending.
        let (cons, prod) = (q(6), q(0));
        assert!(!QueueIndex::consumed(q(6), cons, prod));
        assert!(!QueueIndex::consumed(q(7), cons, prod));
        assert!(QueueIndex::consumed(q(5), cons, prod));
        assert!(QueueIndex::consumed(q(7), q(0), q(0)));
    }

    #[test]
    fn commands_round_trip() {
        for c in [
            Cmd::CfgiAll,
            Cmd::TlbiNsnhAll,
            Cmd::TlbiS12Vmall { vmid: 0 },
            Cmd::TlbiS2Ipa {
                vmid: 3,
                ipa: 0x4400_1000,
            },
            Cmd::Sync,
        ] {
            assert_eq!(Cmd::decode(c.encode()), Some(c));
        }
        assert_eq!(Cmd::TlbiS12Vmall { vmid: 7 }.encode()[0], 0x7_0000_0028);
        assert_eq!(Cmd::decode([0xff, 0]), None);
    }

    #[test]
    fn a_stage2_ste_holds_the_cpus_shape() {
        let shape = S2Shape {
            t0sz: 24,
            sl0: 1,
            ps: 0b100,
        };
        let s = ste_stage2(0, shape, 0x43ff_e000, true);
        let f = ste_fields(&s);
        assert_eq!(
            f,
            Stage2Fields {
                valid: true,
                config: 0b110,
                vmid: 0,
                shape,
                root: 0x43ff_e000,
                fwb: true,
                record: true,
                aarch64: true,
            }
        );
        assert!(!ste_fields(&ste_stage2(0, shape, 0, false)).fwb);
        assert!(!ste_fields(&STE_INVALID).valid);
    }

    #[test]
    fn events_decode_their_common_fields() {
        let e = Event::decode([0x10 | 0x10 << 32, 1 << 35, 0x4020_0000, 0]);
        assert_eq!(
            e,
            Event {
                kind: event::F_TRANSLATION,
                sid: 0x10,
                addr: 0x4020_0000,
                read: true
            }
        );
        assert_eq!(e.name(), "F_TRANSLATION");
        let b = Event::decode([0x04 | 0x18 << 32, 1 << 35, 0x1234, 0]);
        assert_eq!(
            (b.kind, b.sid, b.addr, b.read),
            (event::C_BAD_STE, 0x18, 0, false)
        );
    }
}
