//! The EL2 stage-1 translation: an identity map built once by the boot CPU.
//!
//! Invariants:
//! - VA == PA for everything mapped. Text is read-only and executable,
//!   rodata read-only and XN, data/bss/stacks/RAM read-write and XN, devices
//!   (UART, GIC) Device-nGnRE and XN. `SCTLR_EL2.WXN` additionally makes every
//!   writable page XN in hardware.
//! - Stack guard pages and anything the tree does not name are unmapped.
//! - The tables are written only by the boot CPU, before any other CPU is
//!   started; afterwards they are read-only (read by every CPU's table
//!   walker), so they need no lock.
//! - 4 KiB granule, 39-bit VA (`T0SZ = 25`): the walk starts at level 1 (1 GiB
//!   entries), which covers QEMU virt's low devices, RAM and the second
//!   redistributor region at 256 GiB.

use core::cell::UnsafeCell;

use crate::cpu;
use crate::sysreg::{ID_AA64MMFR0_EL1, MAIR_EL2, Readable, SCTLR_EL2, TCR_EL2, Value};

/// MAIR_EL2: attribute 0 is Device-nGnRE, attribute 1 Normal write-back
/// non-transient read/write-allocate (inner and outer).
pub const MAIR: Value<MAIR_EL2::Register> = Value::new(&[
    MAIR_EL2::Attr0_Device::nonGathering_nonReordering_EarlyWriteAck,
    MAIR_EL2::Attr1_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc,
    MAIR_EL2::Attr1_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc,
]);
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;

/// TCR_EL2 RES1 bits: 23 and 31.
const TCR_RES1: u64 = 1 << 23 | 1 << 31;

/// TCR_EL2 without PS: T0SZ = 25 (39-bit VA), walks inner/outer write-back
/// cacheable and inner shareable, 4 KiB granule.
pub const TCR_BASE: Value<TCR_EL2::Register> = Value::new(&[
    TCR_EL2::T0SZ.val(25),
    TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable,
    TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable,
    TCR_EL2::SH0::Inner,
    TCR_EL2::TG0::KiB_4,
])
.with_res1(TCR_RES1);

/// TCR_EL2 for this CPU: [`TCR_BASE`] with PS = the implemented PA size
/// (ID_AA64MMFR0_EL1.PARange, capped at 48 bits).
pub fn tcr() -> Value<TCR_EL2::Register> {
    let parange = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b101);
    TCR_BASE.with(&[TCR_EL2::PS.val(parange)])
}

/// SCTLR_EL2 RES1 bits (non-VHE) that `aarch64-cpu` does not name: 4, 5,
/// 16, 18, 23, 28, 29.
const SCTLR_RES1: u64 = 1 << 4 | 1 << 5 | 1 << 16 | 1 << 18 | 1 << 23 | 1 << 28 | 1 << 29;
/// SCTLR_EL2 with the MMU (M), data cache (C), stack alignment check (SA),
/// instruction cache (I) and write-implies-XN (WXN) on; little-endian; EOS
/// and EIS (RES1 without FEAT_ExS).
pub const SCTLR_ON: Value<SCTLR_EL2::Register> = Value::new(&[
    SCTLR_EL2::M::SET,
    SCTLR_EL2::C::SET,
    SCTLR_EL2::SA::SET,
    SCTLR_EL2::I::SET,
    SCTLR_EL2::WXN::SET,
    SCTLR_EL2::EOS::SET,
    SCTLR_EL2::EIS::SET,
])
.with_res1(SCTLR_RES1);

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
/// AP[1]: RES1 in the single-privilege EL2 regime.
const AP1: u64 = 1 << 6;
/// AP[2]: read-only.
const READ_ONLY: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
/// XN in the EL2 regime.
const XN: u64 = 1 << 54;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

/// How a range is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    /// Read-only, executable normal memory.
    Text,
    /// Read-only, non-executable normal memory.
    ReadOnly,
    /// Read-write, non-executable normal memory.
    ReadWrite,
    /// Read-write, non-executable Device-nGnRE memory.
    Device,
}

impl Attr {
    fn bits(self) -> u64 {
        match self {
            Attr::Text => ATTR_NORMAL | SH_INNER | AF | AP1 | READ_ONLY,
            Attr::ReadOnly => ATTR_NORMAL | SH_INNER | AF | AP1 | READ_ONLY | XN,
            Attr::ReadWrite => ATTR_NORMAL | SH_INNER | AF | AP1 | XN,
            Attr::Device => ATTR_DEVICE | AF | AP1 | XN,
        }
    }
}

/// Why a range could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Start or length not page-aligned.
    Unaligned,
    /// Beyond the 39-bit address space.
    OutOfRange,
    /// The table pool is used up.
    NoTables,
    /// Part of the range is already mapped.
    Overlap,
}

/// Number of translation tables in the pool: the level-1 root plus
/// level-2/3 tables (see docs/boot.md for the count at 512 CPUs).
const POOL_TABLES: usize = 48;
const ENTRIES: usize = 512;
const VA_LIMIT: u64 = 1 << 39;

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

/// The tables; all zero at load, so the pool lives in bss, not in the
/// image file.
#[repr(C)]
struct Pool {
    tables: [Table; POOL_TABLES],
}

/// The pool behind an `UnsafeCell`, shared only as described in the module
/// invariants.
#[repr(transparent)]
pub(crate) struct PoolCell(UnsafeCell<Pool>);

// SAFETY: the pool is mutated only by the boot CPU before any other CPU
// runs (see `map`); afterwards it is only read, by table walkers.
unsafe impl Sync for PoolCell {}

pub(crate) static POOL: PoolCell = PoolCell(UnsafeCell::new(Pool {
    tables: [const { Table([0; ENTRIES]) }; POOL_TABLES],
}));

/// Physical address of the root (level-1) table, for TTBR0_EL2.
pub fn root() -> u64 {
    POOL.0.get() as u64
}

/// The boot CPU's exclusive access to the tables during bring-up.
pub struct Builder {
    /// Tables handed out so far; table 0 is the root.
    used: usize,
}

impl Builder {
    /// # Safety
    /// Call once, on the boot CPU, before any other CPU is started and
    /// before the tables are installed (TTBR0_EL2): the builder writes the
    /// tables without synchronisation.
    pub unsafe fn new() -> Self {
        Self { used: 1 }
    }

    fn pool(&mut self) -> &mut Pool {
        // SAFETY: `Builder::new`'s contract makes this the only access to
        // the pool while the builder lives, and `&mut self` makes the
        // returned borrow unique.
        unsafe { &mut *POOL.0.get() }
    }

    /// Maps `[start, start + len)` identically with `attr`, using the largest
    /// blocks the alignment allows.
    pub fn map(&mut self, start: u64, len: u64, attr: Attr) -> Result<(), MapError> {
        const PAGE: u64 = 4096;
        if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(MapError::Unaligned);
        }
        let end = start.checked_add(len).ok_or(MapError::OutOfRange)?;
        if end > VA_LIMIT {
            return Err(MapError::OutOfRange);
        }
        let mut va = start;
        while va < end {
            let step = self.map_one(va, end, attr)?;
            va = va.checked_add(step).ok_or(MapError::OutOfRange)?;
        }
        Ok(())
    }

    /// Maps the biggest aligned block at `va` that fits below `end`; returns
    /// its size.
    fn map_one(&mut self, va: u64, end: u64, attr: Attr) -> Result<u64, MapError> {
        let mut table = 0_usize;
        for level in 1..=3_u32 {
            let shift = 12_u32.saturating_add(9_u32.saturating_mul(3_u32.saturating_sub(level)));
            let size = 1_u64 << shift;
            let index = usize::try_from((va >> shift) & 0x1ff).map_err(|_| MapError::OutOfRange)?;
            let pool = self.pool();
            let entry = *pool
                .tables
                .get(table)
                .and_then(|t| t.0.get(index))
                .ok_or(MapError::OutOfRange)?;
            let fits =
                va.is_multiple_of(size) && end.checked_sub(va).is_some_and(|left| left >= size);
            // Level 1 blocks (1 GiB) are used only for whole device ranges.
            let block_ok = level == 3 || (fits && (level == 2 || attr == Attr::Device));
            if entry & VALID == 0 && fits && block_ok {
                let desc = va | attr.bits() | VALID | if level == 3 { TABLE_OR_PAGE } else { 0 };
                self.set(table, index, desc)?;
                return Ok(size);
            }
            if level == 3 {
                return Err(MapError::Overlap);
            }
            if entry & VALID == 0 {
                let next = self.alloc()?;
                let next_pa = self.table_pa(next);
                self.set(table, index, next_pa | VALID | TABLE_OR_PAGE)?;
                table = next;
            } else if entry & TABLE_OR_PAGE != 0 {
                table = self.index_of(entry & OA_MASK)?;
            } else {
                return Err(MapError::Overlap);
            }
        }
        Err(MapError::Overlap)
    }

    fn set(&mut self, table: usize, index: usize, desc: u64) -> Result<(), MapError> {
        let slot = self
            .pool()
            .tables
            .get_mut(table)
            .and_then(|t| t.0.get_mut(index))
            .ok_or(MapError::OutOfRange)?;
        *slot = desc;
        Ok(())
    }

    fn alloc(&mut self) -> Result<usize, MapError> {
        let next = self.used;
        if next >= POOL_TABLES {
            return Err(MapError::NoTables);
        }
        self.used = next.saturating_add(1);
        Ok(next)
    }

    fn table_pa(&mut self, index: usize) -> u64 {
        let pool = self.pool();
        pool.tables.as_ptr().wrapping_add(index) as u64
    }

    fn index_of(&mut self, pa: u64) -> Result<usize, MapError> {
        let base = self.table_pa(0);
        let off = pa.checked_sub(base).ok_or(MapError::Overlap)?;
        usize::try_from(off / 4096).map_err(|_| MapError::Overlap)
    }

    /// Tables used so far (of the pool's capacity).
    pub fn tables_used(&mut self) -> (usize, usize) {
        (self.used, POOL_TABLES)
    }
}

/// Installs the tables on this CPU and turns the MMU and caches on (the
/// boot CPU switches from its bootstrap map; the MMU is turned off around
/// the switch so no TLB entry of the old map can meet one of the new).
///
/// # Safety
/// The tables must map this CPU's code, stack and everything it touches next
/// with the same addresses as before; no other CPU may be editing them.
pub unsafe fn install() {
    let tcr = tcr();
    let sctlr_off = Value::<SCTLR_EL2::Register>::raw(SCTLR_EL2.get()).with(&[SCTLR_EL2::M::CLEAR]);
    cpu::dsb_ish();
    // SAFETY: the caller guarantees the new map is identical for everything
    // this CPU touches; the sequence below runs without touching memory
    // between turning the MMU off and back on. One `asm!` block rather than
    // `sysreg::write_isb!`s: no compiler-generated access may fall between
    // the writes.
    unsafe {
        core::arch::asm!(
            "msr sctlr_el2, {off}",
            "isb",
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr}",
            "isb",
            "tlbi alle2",
            "dsb nsh",
            "isb",
            "msr sctlr_el2, {on}",
            "isb",
            off = in(reg) sctlr_off.bits(),
            mair = in(reg) MAIR.bits(),
            tcr = in(reg) tcr.bits(),
            ttbr = in(reg) root(),
            on = in(reg) SCTLR_ON.bits(),
            options(nostack),
        );
    }
}
