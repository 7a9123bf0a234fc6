//! Stage-2 translation tables: VMSAv8-64, 4 KiB granule, configurable IPA
//! size and start level, with break-before-make on every edit.
//!
//! Invariants:
//! - Every table page of a [`Stage2`] comes from the [`TableAlloc`] its owner
//!   passes in (a VM's donated pool, or the engine's host Stage-2 reserve),
//!   and [`Stage2::free_tables`] gives every one of them back.
//! - A valid entry is never overwritten by a different valid entry. It is
//!   first invalidated, the invalidation made visible (`dsb ish`), the TLBs
//!   cleaned of it (by IPA for a page, by VMID for a block or table, since a
//!   TLB may hold a block's translation fractured into smaller entries), and
//!   only then, after another `dsb ish`, is the new entry written. Every
//!   descriptor write to a reachable table is reported through
//!   [`Arch::pte_written`], so host tests check this order.
//! - A newly built table (a split block's replacement) is filled before it
//!   becomes reachable; those writes are not reported, since no walker can
//!   see them.
//! - The caller serialises edits of the entries it touches: a VM's whole
//!   Stage-2 under the VM's lock; the host's per part (a RAM page's entries
//!   under its shard lock, device pages' under the device-map lock, table
//!   pages from a [`shared::SharedPool`]; the argument that no two parts
//!   share an entry is in `docs/ownership.md`). Hardware walkers may read
//!   concurrently, which is why every descriptor access is a single-copy
//!   atomic 64-bit access (see `mem`).

pub mod desc;
pub mod shared;

use crate::addr::{Ipa, PAGE_SIZE, PhysAddr};
use crate::arch::{Arch, Vmid};
use crate::mem::PhysMem;
use crate::pool::PagePool;
pub use desc::{Desc, MemType, Perms};

/// Entries per table.
const ENTRIES: u64 = 512;

/// The longest run [`Stage2::check_run_unmapped`] checks: one level-3
/// table's worth (2 MiB), which bounds the time a caller spends holding
/// locks and means the run touches at most two level-3 tables.
pub const MAX_RUN_PAGES: u64 = ENTRIES;

/// Address bits resolved below `level` (the size of what one entry maps).
pub const fn level_shift(level: u8) -> u32 {
    // `level <= 3` for every caller; wrapping keeps an invalid level harmless.
    12u32.wrapping_add(9u32.wrapping_mul(3u32.wrapping_sub(level as u32)))
}

/// Bytes mapped by one entry at `level` (1 GiB at 1, 2 MiB at 2, 4 KiB at 3).
pub const fn block_size(level: u8) -> u64 {
    1 << level_shift(level)
}

/// Where [`Stage2::prepare_page`] last found a level-3 table: the 2 MiB
/// window, the Stage-2's root and the level-2 entry that holds the
/// window's table. Kept by the owner of a Stage-2 beside it (a VM's, under
/// the VM's lock) and reset whenever that Stage-2 is built. Sound because a
/// VM's tables above level 3 are only ever added while it lives (freed only
/// with the whole Stage-2), so the entry found stays the window's level-2
/// entry; it is read on every use, and anything but a table there means a
/// full walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageHint {
    /// `ipa >> 21` of the window, plus one (0: no hint).
    window: u64,
    /// The root of the Stage-2 the hint was taken from.
    root: PhysAddr,
    l2_entry: PhysAddr,
}

impl PageHint {
    /// No hint: the next [`Stage2::prepare_page`] walks from the root.
    pub const NONE: PageHint = PageHint {
        window: 0,
        root: PhysAddr::new(0),
        l2_entry: PhysAddr::new(0),
    };
}

/// Shape of a Stage-2 address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Config {
    ipa_bits: u8,
    start_level: u8,
}

impl S2Config {
    /// `ipa_bits` of IPA space (40..=48) walked from `start_level` (0..=2),
    /// or `None` if the combination needs more than the 16 concatenated root
    /// tables the architecture allows, or resolves less than one root entry.
    pub const fn new(ipa_bits: u8, start_level: u8) -> Option<Self> {
        if ipa_bits < 40 || ipa_bits > 48 || start_level > 2 {
            return None;
        }
        let shift = level_shift(start_level);
        if ipa_bits as u32 <= shift || ipa_bits as u32 > shift.wrapping_add(9 + 4) {
            return None;
        }
        Some(Self {
            ipa_bits,
            start_level,
        })
    }

    /// The default: 40-bit IPA from level 1 (two concatenated root tables),
    /// as KVM uses on Armv8.0 machines.
    pub const DEFAULT: S2Config = S2Config {
        ipa_bits: 40,
        start_level: 1,
    };

    /// IPA size in bits.
    pub const fn ipa_bits(self) -> u8 {
        self.ipa_bits
    }

    /// The level the walk starts at.
    pub const fn start_level(self) -> u8 {
        self.start_level
    }

    /// One past the highest IPA.
    pub const fn ipa_limit(self) -> u64 {
        1 << self.ipa_bits
    }

    /// Entries in the (concatenated) root table.
    pub const fn root_entries(self) -> u64 {
        1 << (self.ipa_bits as u32).wrapping_sub(level_shift(self.start_level))
    }

    /// Pages of the concatenated root table (1..=16); the root must be
    /// aligned to this many pages.
    pub const fn root_pages(self) -> u64 {
        let e = self.root_entries();
        if e <= ENTRIES { 1 } else { e / ENTRIES }
    }

    /// `VTCR_EL2.T0SZ` for this shape.
    pub const fn vtcr_t0sz(self) -> u64 {
        64u64.wrapping_sub(self.ipa_bits as u64)
    }

    /// `VTCR_EL2.SL0` for this shape (4 KiB granule encoding).
    pub const fn vtcr_sl0(self) -> u64 {
        2u64.wrapping_sub(self.start_level as u64)
    }
}

/// Why a Stage-2 edit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2Error {
    /// A table page was needed and the pool is empty.
    NoMemory,
    /// Something is already mapped where the new mapping would go.
    AlreadyMapped,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The IPA is beyond the address space, or misaligned for the level.
    OutOfRange,
}

/// Where table pages come from and go back to.
pub trait TableAlloc {
    /// A zeroed page for a table to be installed into an entry at `level`
    /// (its children are at `level + 1`), or `None` if exhausted or if this
    /// allocator's user may not install a table at that level (see
    /// [`shared::SharedAlloc`]).
    fn alloc_table(&mut self, mem: &PhysMem, level: u8) -> Option<PhysAddr>;
    /// Returns a page that no walker can reach any more.
    fn free_table(&mut self, mem: &PhysMem, pa: PhysAddr);
    /// Pages `alloc_table` can still hand out.
    fn available(&self) -> u64;
}

impl TableAlloc for PagePool {
    fn alloc_table(&mut self, mem: &PhysMem, _level: u8) -> Option<PhysAddr> {
        self.alloc(mem)
    }
    fn available(&self) -> u64 {
        self.free()
    }
    fn free_table(&mut self, mem: &PhysMem, pa: PhysAddr) {
        // A page that was allocated from this pool is in the window, so the
        // push cannot fail; there is nothing better to do if it did.
        let _ = self.release(mem, pa);
    }
}

/// What a walk found for one IPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the IPA maps to (block offset included).
    pub pa: PhysAddr,
    /// The leaf descriptor.
    pub desc: Desc,
    /// The level of the leaf (1, 2 or 3).
    pub level: u8,
}

/// One Stage-2 address space: its root, shape and VMID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2 {
    root: PhysAddr,
    cfg: S2Config,
    vmid: Vmid,
}

/// How a TLB invalidation for an edit is scoped.
#[derive(Clone, Copy)]
enum Tlbi {
    Ipa(Ipa),
    Vmid,
}

impl Stage2 {
    /// A Stage-2 whose root (already zeroed, `cfg.root_pages()` contiguous
    /// pages aligned to their size) is at `root`.
    pub const fn new(root: PhysAddr, cfg: S2Config, vmid: Vmid) -> Self {
        Self { root, cfg, vmid }
    }

    /// The root table (the value for `VTTBR_EL2.BADDR`).
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    /// The VMID.
    pub const fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// The shape.
    pub const fn config(&self) -> S2Config {
        self.cfg
    }

    /// `VTTBR_EL2`: VMID in bits 55:48, root in 47:1.
    pub const fn vttbr(&self) -> u64 {
        ((self.vmid.0 as u64 & 0xff) << 48) | (self.root.raw() & desc::OA_MASK)
    }

    fn entry(&self, table: PhysAddr, ipa: Ipa, level: u8) -> Option<PhysAddr> {
        let mask = if level == self.cfg.start_level {
            self.cfg.root_entries()
        } else {
            ENTRIES
        };
        let idx = (ipa.raw() >> level_shift(level)) & mask.wrapping_sub(1);
        table.checked_add(idx.checked_mul(8)?)
    }

    fn read(mem: &PhysMem, entry: PhysAddr) -> Desc {
        Desc(mem.read_u64(entry).unwrap_or(0))
    }

    fn write<A: Arch>(mem: &PhysMem, arch: &A, entry: PhysAddr, old: Desc, new: Desc) {
        if mem.write_u64(entry, new.0) {
            arch.pte_written(entry, old.0, new.0);
        }
    }

    /// Invalidates a valid entry and cleans the TLBs of it.
    fn invalidate<A: Arch>(
        &self,
        mem: &PhysMem,
        arch: &A,
        entry: PhysAddr,
        old: Desc,
        scope: Tlbi,
    ) {
        Self::write(mem, arch, entry, old, Desc::INVALID);
        arch.dsb_ish();
        match scope {
            Tlbi::Ipa(ipa) => arch.tlbi_ipa(self.vmid, ipa),
            Tlbi::Vmid => arch.tlbi_vmid(self.vmid),
        }
        arch.dsb_ish();
    }

    /// Writes an entry that is currently invalid and publishes it.
    fn install<A: Arch>(mem: &PhysMem, arch: &A, entry: PhysAddr, new: Desc) {
        Self::write(mem, arch, entry, Desc::INVALID, new);
        arch.dsb_ish();
    }

    fn in_range(&self, ipa: Ipa) -> bool {
        ipa.raw() < self.cfg.ipa_limit()
    }

    /// The leaf mapping `ipa`, if any.
    pub fn translate(&self, mem: &PhysMem, ipa: Ipa) -> Option<Translation> {
        if !self.in_range(ipa) {
            return None;
        }
        let mut table = self.root;
        let mut level = self.cfg.start_level;
        loop {
            let d = Self::read(mem, self.entry(table, ipa, level)?);
            if !d.is_valid() {
                return None;
            }
            if d.is_leaf(level) {
                let off = ipa.raw() & block_size(level).wrapping_sub(1);
                return Some(Translation {
                    pa: d.addr().checked_add(off)?,
                    desc: d,
                    level,
                });
            }
            table = d.addr();
            level = level.checked_add(1)?;
            if level > 3 {
                return None;
            }
        }
    }

    /// Maps `[ipa, ipa + block_size(level))` to `pa` with one leaf at
    /// `level`, allocating intermediate tables as needed.
    ///
    /// With `shrink` set (the host's lazy identity map), an existing table at
    /// `level` is not an error: the walk descends through tables and maps just
    /// the page of `fault` (which must lie in the block) at level 3. An
    /// existing leaf covering the address gives `AlreadyMapped`; tables built
    /// before a `NoMemory` failure stay (empty) and are used by later maps.
    #[allow(
        clippy::too_many_arguments,
        reason = "independent inputs (backend, allocator, addresses, level, perms, type); a struct would only rename them"
    )]
    pub fn map<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        pa: PhysAddr,
        level: u8,
        perms: Perms,
        mem_type: MemType,
        sw: u64,
    ) -> Result<(), S2Error> {
        if level > 3 || !pa.is_aligned(block_size(level)) {
            return Err(S2Error::OutOfRange);
        }
        let entry = self.prepare_leaf(mem, arch, alloc, ipa, level)?;
        Self::install(mem, arch, entry, Desc::leaf(pa, level, perms, mem_type, sw));
        Ok(())
    }

    /// Builds the tables down to `level` for `ipa` and returns the (invalid)
    /// entry a leaf for `ipa` would occupy there, without writing it: callers
    /// that must change ownership state between "can this be mapped?" and
    /// "map it" use this and then [`Stage2::install_leaf`].
    ///
    /// `AlreadyMapped` if a leaf at or above `level` covers `ipa` (or, at
    /// `level < 3`, a table is in the way); `NoMemory` if the pool holds
    /// fewer pages than the missing tables, in which case nothing is
    /// allocated or written (a failed call leaves the pool as it was).
    pub fn prepare_leaf<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        level: u8,
    ) -> Result<PhysAddr, S2Error> {
        self.prepare(mem, arch, alloc, ipa, level)
            .map(|(entry, _)| entry)
    }

    /// [`Stage2::prepare_leaf`] of a level-3 leaf for the page `ipa`, with
    /// `hint` (see [`PageHint`]): when the page lies in the hint's window of
    /// this Stage-2 and the hint's level-2 entry is a table, the page's
    /// entry is found in that table without a walk from the root
    /// (consecutive one-page donations fill a window's 512 entries this
    /// way). Otherwise the full walk, after which `hint` names the page's
    /// window. Same results and errors as `prepare_leaf(.., ipa, 3)`.
    pub fn prepare_page<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        hint: &mut PageHint,
    ) -> Result<PhysAddr, S2Error> {
        let window = (ipa.raw() >> level_shift(2)).wrapping_add(1);
        if hint.window == window
            && hint.root == self.root
            && ipa.is_page_aligned()
            && self.in_range(ipa)
        {
            let d = Self::read(mem, hint.l2_entry);
            if d.is_table(2) {
                let idx = (ipa.raw() >> level_shift(3)) & ENTRIES.wrapping_sub(1);
                let entry = d.addr().wrapping_add_bytes(idx.wrapping_mul(8));
                if Self::read(mem, entry).is_valid() {
                    return Err(S2Error::AlreadyMapped);
                }
                return Ok(entry);
            }
        }
        let (entry, parent) = self.prepare(mem, arch, alloc, ipa, 3)?;
        *hint = match parent {
            Some(l2_entry) => PageHint {
                window,
                root: self.root,
                l2_entry,
            },
            None => PageHint::NONE,
        };
        Ok(entry)
    }

    /// [`Stage2::prepare_leaf`], also returning the entry that points at
    /// the table holding the leaf's entry (`None` when that table is the
    /// root).
    fn prepare<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        level: u8,
    ) -> Result<(PhysAddr, Option<PhysAddr>), S2Error> {
        if !(1..=3).contains(&level) || level < self.cfg.start_level {
            return Err(S2Error::OutOfRange);
        }
        if !ipa.is_aligned(block_size(level)) || !self.in_range(ipa) {
            return Err(S2Error::OutOfRange);
        }
        // First pass: how many tables are missing (and is anything in the way)?
        let mut table = self.root;
        let mut parent = None;
        let mut cur = self.cfg.start_level;
        let mut missing = 0u64;
        while cur < level {
            let at = self.entry(table, ipa, cur).ok_or(S2Error::OutOfRange)?;
            let d = Self::read(mem, at);
            if !d.is_valid() {
                missing = u64::from(level.wrapping_sub(cur));
                break;
            }
            if !d.is_table(cur) {
                return Err(S2Error::AlreadyMapped);
            }
            table = d.addr();
            parent = Some(at);
            cur = cur.wrapping_add(1);
        }
        if missing == 0 {
            // Every table exists (the common case): the first pass already
            // reached the entry, so there is nothing to build or re-walk.
            let entry = self.entry(table, ipa, level).ok_or(S2Error::OutOfRange)?;
            if Self::read(mem, entry).is_valid() {
                return Err(S2Error::AlreadyMapped);
            }
            return Ok((entry, parent));
        }
        if missing > alloc.available() {
            return Err(S2Error::NoMemory);
        }
        // Second pass: build them.
        let mut table = self.root;
        let mut parent = None;
        let mut cur = self.cfg.start_level;
        while cur < level {
            let entry = self.entry(table, ipa, cur).ok_or(S2Error::OutOfRange)?;
            let d = Self::read(mem, entry);
            if !d.is_valid() {
                let t = alloc.alloc_table(mem, cur).ok_or(S2Error::NoMemory)?;
                Self::install(mem, arch, entry, Desc::table(t));
                table = t;
            } else if d.is_table(cur) {
                table = d.addr();
            } else {
                return Err(S2Error::AlreadyMapped);
            }
            parent = Some(entry);
            cur = cur.wrapping_add(1);
        }
        let entry = self.entry(table, ipa, level).ok_or(S2Error::OutOfRange)?;
        if Self::read(mem, entry).is_valid() {
            return Err(S2Error::AlreadyMapped);
        }
        Ok((entry, parent))
    }

    /// Makes sure the table holding `ipa`'s entry at `level` exists: every
    /// entry above `level` on `ipa`'s path becomes a table (missing ones
    /// built, each installed empty). Used at boot to build, once, the
    /// tables that edits made later without a common lock must never
    /// install themselves (see `docs/ownership.md`, the host Stage-2).
    ///
    /// `AlreadyMapped` if a leaf above `level` covers `ipa`; `NoMemory` if
    /// `alloc` cannot give a table (those built before stay).
    pub fn build_tables<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        level: u8,
    ) -> Result<(), S2Error> {
        if level > 3 || !self.in_range(ipa) {
            return Err(S2Error::OutOfRange);
        }
        let mut table = self.root;
        let mut cur = self.cfg.start_level;
        while cur < level {
            let entry = self.entry(table, ipa, cur).ok_or(S2Error::OutOfRange)?;
            let d = Self::read(mem, entry);
            if d.is_table(cur) {
                table = d.addr();
            } else if d.is_valid() {
                return Err(S2Error::AlreadyMapped);
            } else {
                let t = alloc.alloc_table(mem, cur).ok_or(S2Error::NoMemory)?;
                Self::install(mem, arch, entry, Desc::table(t));
                table = t;
            }
            cur = cur.wrapping_add(1);
        }
        Ok(())
    }

    /// Whether every entry above `level` on `ipa`'s path is a table (what
    /// [`Stage2::build_tables`] makes sure of). Reads only.
    pub fn has_tables(&self, mem: &PhysMem, ipa: Ipa, level: u8) -> bool {
        let mut table = self.root;
        let mut cur = self.cfg.start_level;
        while cur < level {
            let Some(entry) = self.entry(table, ipa, cur) else {
                return false;
            };
            let d = Self::read(mem, entry);
            if !d.is_table(cur) {
                return false;
            }
            table = d.addr();
            cur = cur.wrapping_add(1);
        }
        self.in_range(ipa)
    }

    /// The table holding `ipa`'s entry at `level`, if every table above it
    /// exists (a walk that reads only).
    pub fn table_at(&self, mem: &PhysMem, ipa: Ipa, level: u8) -> Option<PhysAddr> {
        // No level below 3: a level-3 entry is never a table, so the walk
        // ends there for any larger `level`.
        if !self.in_range(ipa) {
            return None;
        }
        let mut table = self.root;
        let mut cur = self.cfg.start_level;
        while cur < level {
            let d = Self::read(mem, self.entry(table, ipa, cur)?);
            if !d.is_table(cur) {
                return None;
            }
            table = d.addr();
            cur = cur.wrapping_add(1);
        }
        Some(table)
    }

    /// Removes the 4 KiB page at `ipa` (page aligned) starting the walk at
    /// `l2`, the level-2 table that holds `ipa`'s level-2 entry (the caller
    /// knows it, and that it cannot change under the lock it holds; never
    /// the root, which no [`S2Config`] puts at level 2): if that
    /// entry is a table, the page's entry is invalidated if valid (TLBI by
    /// IPA, completed) and `Some(whether it was mapped)` returned. `None`,
    /// with nothing changed, if the level-2 entry is not a table (a block to
    /// split, or nothing), for the caller to walk from the root.
    pub fn unmap_page_below<A: Arch>(
        &self,
        mem: &PhysMem,
        arch: &A,
        l2: PhysAddr,
        ipa: Ipa,
    ) -> Option<bool> {
        if !ipa.is_page_aligned() || !self.in_range(ipa) {
            return None;
        }
        let l2e = l2.checked_add(
            ((ipa.raw() >> level_shift(2)) & ENTRIES.wrapping_sub(1)).wrapping_mul(8),
        )?;
        let d = Self::read(mem, l2e);
        if !d.is_table(2) {
            return None;
        }
        let entry = d.addr().checked_add(
            ((ipa.raw() >> level_shift(3)) & ENTRIES.wrapping_sub(1)).wrapping_mul(8),
        )?;
        let leaf = Self::read(mem, entry);
        if !leaf.is_valid() {
            return Some(false);
        }
        self.invalidate(mem, arch, entry, leaf, Tlbi::Ipa(ipa));
        Some(true)
    }

    /// Writes `desc` into an entry [`Stage2::prepare_leaf`] returned (under
    /// the same lock, so it is still invalid) and publishes it.
    pub fn install_leaf<A: Arch>(&self, mem: &PhysMem, arch: &A, entry: PhysAddr, desc: Desc) {
        Self::install(mem, arch, entry, desc);
    }

    /// Checks that none of the `pages` level-3 pages from `ipa` (page
    /// aligned) is mapped, and counts the tables a [`Stage2::map_run`] of
    /// them would build. Reads only.
    ///
    /// `AlreadyMapped` if a leaf covers any of them (a block on the path
    /// counts, as in [`Stage2::prepare_leaf`]); `OutOfRange` if the run is
    /// empty, longer than [`MAX_RUN_PAGES`] or leaves the address space.
    pub fn check_run_unmapped(&self, mem: &PhysMem, ipa: Ipa, pages: u64) -> Result<u64, S2Error> {
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| ipa.raw().checked_add(len))
            .ok_or(S2Error::OutOfRange)?;
        if !ipa.is_page_aligned()
            || pages == 0
            || pages > MAX_RUN_PAGES
            || end > self.cfg.ipa_limit()
        {
            return Err(S2Error::OutOfRange);
        }
        // Tables above level 3 this run would build, as (level, ipa >>
        // level_shift(level - 1)): a table the first chunk builds is not
        // counted again by the next. A run of at most 512 pages spans at
        // most two chunks, so at most two paths of three such tables.
        let mut counted = [(0u8, 0u64); 6];
        let mut ncounted = 0usize;
        let mut missing = 0u64;
        let mut cur = ipa.raw();
        while cur < end {
            let chunk_end = cur
                .checked_add(block_size(2))
                .map_or(end, |c| (c & !block_size(2).wrapping_sub(1)).min(end));
            let at = Ipa::new(cur);
            let mut table = Some(self.root);
            let mut level = self.cfg.start_level;
            while level < 3 {
                let Some(t) = table else {
                    // The table at `level` does not exist yet: it is built.
                    let id = (level, cur >> level_shift(level.wrapping_sub(1)));
                    let seen = counted.iter().take(ncounted).any(|&c| c == id);
                    if !seen {
                        *counted.get_mut(ncounted).ok_or(S2Error::OutOfRange)? = id;
                        ncounted = ncounted.wrapping_add(1);
                        missing = missing.wrapping_add(1);
                    }
                    level = level.wrapping_add(1);
                    continue;
                };
                let d = Self::read(mem, self.entry(t, at, level).ok_or(S2Error::OutOfRange)?);
                if d.is_valid() && !d.is_table(level) {
                    return Err(S2Error::AlreadyMapped);
                }
                table = d.is_valid().then(|| d.addr());
                level = level.wrapping_add(1);
            }
            match table {
                Some(t) => {
                    let mut e = self.entry(t, at, 3).ok_or(S2Error::OutOfRange)?;
                    let mut p = cur;
                    while p < chunk_end {
                        if Self::read(mem, e).is_valid() {
                            return Err(S2Error::AlreadyMapped);
                        }
                        e = e.wrapping_add_bytes(8);
                        p = p.wrapping_add(PAGE_SIZE);
                    }
                }
                None => {
                    // Each chunk lies in a level-3 table of its own: never
                    // counted before.
                    missing = missing.wrapping_add(1);
                }
            }
            cur = chunk_end;
        }
        Ok(missing)
    }

    /// Maps the `pages` level-3 pages from `ipa` with `leaf(i)` for the
    /// `i`-th, building missing tables. Each level-3 table is found once and
    /// its entries written in a row; one `dsb ish` publishes them all (an
    /// invalid entry is never held in a TLB, so making it valid needs no
    /// invalidation).
    ///
    /// The caller holds the lock of this Stage-2 and has checked the run with
    /// [`Stage2::check_run_unmapped`] under it, and `alloc` holds at least the
    /// tables that returned: then this cannot fail. If it does anyway
    /// (`AlreadyMapped`, `NoMemory`), the pages before the failing one stay
    /// mapped.
    pub fn map_run<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        pages: u64,
        leaf: &mut dyn FnMut(u64) -> Desc,
    ) -> Result<(), S2Error> {
        let mut i = 0u64;
        let mut result = Ok(());
        'chunks: while i < pages {
            let at = Ipa::new(ipa.raw().wrapping_add(i.wrapping_mul(PAGE_SIZE)));
            let mut e = match self.prepare_leaf(mem, arch, alloc, at, 3) {
                Ok(e) => e,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            };
            // Entries left in this level-3 table from `at` on.
            let idx = (at.raw() >> level_shift(3)) & ENTRIES.wrapping_sub(1);
            let n = ENTRIES.wrapping_sub(idx).min(pages.wrapping_sub(i));
            for _ in 0..n {
                let old = Self::read(mem, e);
                if old.is_valid() {
                    result = Err(S2Error::AlreadyMapped);
                    break 'chunks;
                }
                Self::write(mem, arch, e, old, leaf(i));
                e = e.wrapping_add_bytes(8);
                i = i.wrapping_add(1);
            }
        }
        arch.dsb_ish();
        result
    }

    /// The largest-block identity map of the host: maps the block of `level`
    /// containing `fault`, or, where a table already exists at that level
    /// (the block was split before), just the page of `fault`.
    #[allow(
        clippy::too_many_arguments,
        reason = "independent inputs (backend, allocator, addresses, level, perms, type); a struct would only rename them"
    )]
    pub fn map_identity_shrinking<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        fault: Ipa,
        level: u8,
        perms: Perms,
        mem_type: MemType,
    ) -> Result<(), S2Error> {
        let mut table = self.root;
        let mut cur = self.cfg.start_level;
        // Find the deepest existing table on the way to `level`.
        while cur < level {
            let entry = self.entry(table, fault, cur).ok_or(S2Error::OutOfRange)?;
            let d = Self::read(mem, entry);
            if !d.is_table(cur) {
                break;
            }
            table = d.addr();
            cur = cur.wrapping_add(1);
        }
        let target = if cur == level {
            let entry = self.entry(table, fault, cur).ok_or(S2Error::OutOfRange)?;
            if Self::read(mem, entry).is_table(cur) {
                3
            } else {
                level
            }
        } else {
            level
        };
        let base = fault.align_down(block_size(target));
        self.map(
            mem,
            arch,
            alloc,
            base,
            PhysAddr::new(base.raw()),
            target,
            perms,
            mem_type,
            0,
        )
    }

    /// Removes the 4 KiB page at `ipa` (page aligned), splitting any block
    /// that covers it (break-before-make, TLBI by VMID) so the rest of the
    /// block stays mapped. Returns the removed page's descriptor.
    pub fn unmap_page<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
    ) -> Result<Desc, S2Error> {
        if !ipa.is_page_aligned() || !self.in_range(ipa) {
            return Err(S2Error::OutOfRange);
        }
        let mut table = self.root;
        let mut level = self.cfg.start_level;
        loop {
            let entry = self.entry(table, ipa, level).ok_or(S2Error::OutOfRange)?;
            let d = Self::read(mem, entry);
            if !d.is_valid() {
                return Err(S2Error::NotMapped);
            }
            if level == 3 {
                self.invalidate(mem, arch, entry, d, Tlbi::Ipa(ipa));
                return Ok(d);
            }
            if d.is_table(level) {
                table = d.addr();
            } else {
                table = self.split(mem, arch, alloc, entry, d, level)?;
            }
            level = level.wrapping_add(1);
        }
    }

    /// Removes every mapping of the `pages` 4 KiB pages from `ipa` (page
    /// aligned) as one batch, and returns how many of them were mapped.
    ///
    /// A leaf wholly inside the run is invalidated as one entry (a 2 MiB
    /// block goes with one write); a block only partly inside it is split
    /// first (its own break-before-make) and the covered pages invalidated.
    /// Then one `dsb ish`, one TLBI (by IPA when the batch was a single
    /// page, else by VMID: a TLB may hold a block fractured, and one
    /// VMID-wide invalidation is cheaper than hundreds by IPA), one `dsb ish`:
    /// when this returns no CPU can use a translation of the run. Pages not
    /// mapped are skipped. On `NoMemory` (a split with an empty pool) the
    /// invalidations made so far are still completed before returning.
    pub fn unmap_run<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        ipa: Ipa,
        pages: u64,
    ) -> Result<u64, S2Error> {
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| ipa.raw().checked_add(len))
            .ok_or(S2Error::OutOfRange)?;
        if !ipa.is_page_aligned() || end > self.cfg.ipa_limit() {
            return Err(S2Error::OutOfRange);
        }
        let mut unmapped = 0u64;
        let mut entries = 0u64;
        let mut last_page = None;
        let mut result = Ok(());
        let mut cur = ipa.raw();
        'run: while cur < end {
            let at = Ipa::new(cur);
            let mut table = self.root;
            let mut level = self.cfg.start_level;
            loop {
                let Some(entry) = self.entry(table, at, level) else {
                    result = Err(S2Error::OutOfRange);
                    break 'run;
                };
                if level == 3 {
                    // The rest of this level-3 table in one pass: no
                    // re-walk from the root per page.
                    let idx = (cur >> level_shift(3)) & ENTRIES.wrapping_sub(1);
                    let n = ENTRIES
                        .wrapping_sub(idx)
                        .min(end.wrapping_sub(cur) / PAGE_SIZE);
                    // The table page is checked once; its entries are then
                    // read and written by offset (`Page` keeps every offset
                    // inside it).
                    let table_pa = PhysAddr::new(entry.raw() & !PAGE_SIZE.wrapping_sub(1));
                    let Some(t) = mem.page(table_pa) else {
                        result = Err(S2Error::OutOfRange);
                        break 'run;
                    };
                    let mut off = idx.wrapping_mul(8);
                    for k in 0..n {
                        let d = Desc(t.read_u64(off));
                        if d.is_valid() {
                            t.write_u64(off, Desc::INVALID.0);
                            arch.pte_written(
                                table_pa.wrapping_add_bytes(off),
                                d.0,
                                Desc::INVALID.0,
                            );
                            unmapped = unmapped.wrapping_add(1);
                            entries = entries.wrapping_add(1);
                            last_page = Some(Ipa::new(cur.wrapping_add(k.wrapping_mul(PAGE_SIZE))));
                        }
                        off = off.wrapping_add(8);
                    }
                    cur = cur.wrapping_add(n.wrapping_mul(PAGE_SIZE));
                    break;
                }
                let d = Self::read(mem, entry);
                let bs = block_size(level);
                let base = cur & !bs.wrapping_sub(1);
                let next = base.saturating_add(bs);
                if !d.is_valid() {
                    cur = next;
                    break;
                }
                if d.is_leaf(level) {
                    if base >= ipa.raw() && next <= end {
                        Self::write(mem, arch, entry, d, Desc::INVALID);
                        unmapped = unmapped.wrapping_add(bs / PAGE_SIZE);
                        entries = entries.wrapping_add(1);
                        last_page = None;
                        cur = next;
                        break;
                    }
                    match self.split(mem, arch, alloc, entry, d, level) {
                        Ok(t) => table = t,
                        Err(e) => {
                            result = Err(e);
                            break 'run;
                        }
                    }
                } else {
                    table = d.addr();
                }
                level = level.wrapping_add(1);
                if level > 3 {
                    result = Err(S2Error::OutOfRange);
                    break 'run;
                }
            }
        }
        if entries > 0 {
            arch.dsb_ish();
            match (entries, last_page) {
                (1, Some(page)) => arch.tlbi_ipa(self.vmid, page),
                _ => arch.tlbi_vmid(self.vmid),
            }
            arch.dsb_ish();
        }
        result.map(|()| unmapped)
    }

    /// Replaces the block `d` at `entry` (level `level`) by a table of the
    /// next level that maps the same memory the same way.
    fn split<A: Arch, T: TableAlloc>(
        &self,
        mem: &PhysMem,
        arch: &A,
        alloc: &mut T,
        entry: PhysAddr,
        d: Desc,
        level: u8,
    ) -> Result<PhysAddr, S2Error> {
        let child = level.wrapping_add(1);
        // The block lies in the address space (it is mapped), so none of its
        // children's addresses below can wrap.
        d.addr()
            .checked_add(block_size(level))
            .ok_or(S2Error::OutOfRange)?;
        let t = alloc.alloc_table(mem, level).ok_or(S2Error::NoMemory)?;
        // The new table is checked once and filled by offset (no window
        // check per entry: 512 of them on every split).
        let page = mem.page(t).ok_or(S2Error::OutOfRange)?;
        let step = block_size(child);
        let mut pa = d.addr();
        let mut off = 0u64;
        for _ in 0..ENTRIES {
            // The table is not reachable yet: no walker can observe these.
            page.write_u64(off, d.with_level_and_addr(child, pa).0);
            pa = pa.wrapping_add_bytes(step);
            off = off.wrapping_add(8);
        }
        self.invalidate(mem, arch, entry, d, Tlbi::Vmid);
        Self::install(mem, arch, entry, Desc::table(t));
        Ok(t)
    }

    /// Removes the leaf (page or block) covering `ipa`, without splitting.
    /// Returns it and its level.
    pub fn unmap_leaf<A: Arch>(
        &self,
        mem: &PhysMem,
        arch: &A,
        ipa: Ipa,
    ) -> Result<(Desc, u8), S2Error> {
        if !self.in_range(ipa) {
            return Err(S2Error::OutOfRange);
        }
        let mut table = self.root;
        let mut level = self.cfg.start_level;
        loop {
            let entry = self.entry(table, ipa, level).ok_or(S2Error::OutOfRange)?;
            let d = Self::read(mem, entry);
            if !d.is_valid() {
                return Err(S2Error::NotMapped);
            }
            if d.is_leaf(level) {
                let scope = if level == 3 {
                    Tlbi::Ipa(ipa.page_floor())
                } else {
                    Tlbi::Vmid
                };
                self.invalidate(mem, arch, entry, d, scope);
                return Ok((d, level));
            }
            table = d.addr();
            level = level.wrapping_add(1);
        }
    }

    /// Calls `f(ipa, desc, level)` for every leaf, in ascending IPA order.
    pub fn for_each_leaf(&self, mem: &PhysMem, f: &mut dyn FnMut(Ipa, Desc, u8)) {
        let mut ipa = 0u64;
        for _ in 0..self.cfg.root_entries() {
            if let Some(entry) = self.entry(self.root, Ipa::new(ipa), self.cfg.start_level) {
                Self::visit(mem, Self::read(mem, entry), ipa, self.cfg.start_level, f);
            }
            ipa = ipa.wrapping_add(block_size(self.cfg.start_level));
        }
    }

    fn visit(mem: &PhysMem, d: Desc, ipa: u64, level: u8, f: &mut dyn FnMut(Ipa, Desc, u8)) {
        if !d.is_valid() {
            return;
        }
        if d.is_leaf(level) {
            f(Ipa::new(ipa), d, level);
            return;
        }
        let child = level.wrapping_add(1);
        let mut slot = d.addr();
        let mut sub = ipa;
        for _ in 0..ENTRIES {
            Self::visit(mem, Self::read(mem, slot), sub, child, f);
            slot = slot.wrapping_add_bytes(8);
            sub = sub.wrapping_add(block_size(child));
        }
    }

    /// Counts table pages below the root (the root itself excluded).
    pub fn table_pages(&self, mem: &PhysMem) -> u64 {
        let mut n = 0u64;
        self.for_each_table(mem, &mut |_| n = n.wrapping_add(1));
        n
    }

    fn for_each_table(&self, mem: &PhysMem, f: &mut dyn FnMut(PhysAddr)) {
        let mut slot = self.root;
        for _ in 0..self.cfg.root_entries() {
            Self::visit_tables(mem, Self::read(mem, slot), self.cfg.start_level, f);
            slot = slot.wrapping_add_bytes(8);
        }
    }

    fn visit_tables(mem: &PhysMem, d: Desc, level: u8, f: &mut dyn FnMut(PhysAddr)) {
        if !d.is_table(level) {
            return;
        }
        let mut slot = d.addr();
        for _ in 0..ENTRIES {
            Self::visit_tables(mem, Self::read(mem, slot), level.wrapping_add(1), f);
            slot = slot.wrapping_add_bytes(8);
        }
        f(d.addr());
    }

    /// Teardown: gives every table page, root included, back to `alloc`.
    ///
    /// The caller must already have made the address space unreachable (no
    /// CPU has this VMID loaded) and invalidated its TLB entries
    /// ([`Arch::tlbi_vmid`]); the tables are not edited entry by entry.
    pub fn free_tables<T: TableAlloc>(&self, mem: &PhysMem, alloc: &mut T) {
        self.for_each_table(mem, &mut |t| alloc.free_table(mem, t));
        let mut root = self.root;
        for _ in 0..self.cfg.root_pages() {
            let _ = mem.zero_page(root);
            alloc.free_table(mem, root);
            root = root.wrapping_add_bytes(PAGE_SIZE);
        }
    }
}

impl PhysAddr {
    /// `self + bytes`, wrapping: for walking inside a table already known to
    /// lie in the window (a wrapped address would fail the window check).
    pub const fn wrapping_add_bytes(self, bytes: u64) -> PhysAddr {
        PhysAddr::new(self.raw().wrapping_add(bytes))
    }
}

#[cfg(test)]
mod tests;
