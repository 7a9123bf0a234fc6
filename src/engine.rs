//! The engine: the ownership database, the VM table, the host's Stage-2 and
//! the architecture backend, tied together; construction, the host-abort
//! path and read-only observation.
//!
//! Invariants (see `docs/ownership.md` for the full argument):
//! - The host Stage-2 maps a RAM page exactly when its record says the host
//!   may access it (owns it or borrows it): it is built whole at boot and
//!   every transition that gives the host a page maps it before the call
//!   returns, because the same tables are the host's DMA view (an IOMMU
//!   walks them for the host's devices, which cannot fault and retry). Its
//!   entries for a RAM page are edited only while holding the lock of the
//!   shard the page lives in, with no lock for the whole Stage-2: every
//!   table above level 2 on RAM's paths, and the level-3 table of every
//!   2 MiB window that is not wholly one shard's, is built at boot and never
//!   changes, so CPUs editing different shards write different descriptor
//!   words ([`Engine::map_host_ram`]; the argument in `docs/ownership.md`).
//!   Table pages come from one pool behind its own lock, held for one
//!   allocation at a time ([`SharedPool`]); device pages are mapped under
//!   the device-map lock.
//! - A VM's Stage-2 maps a page only if the VM owns it or borrows it; it is
//!   edited only under the VM's slot lock.
//! - A page that changes hands away from a world is first removed from that
//!   world's Stage-2 (break-before-make, TLBI), then gets the maintenance
//!   [`crate::handover`] decides (the DMA view's invalidation, the scrub,
//!   cache maintenance), and only then is mapped for anyone else; it is
//!   scrubbed before it reaches a world that did not own it, except on
//!   `Share` (whose point is access).

use crate::abort::{self, Esr, HostAbort, HostPage};
use crate::addr::{Ipa, PAGE_SIZE, Pfn, PhysAddr};
use crate::arch::{Arch, Vmid};
use crate::handover::{self, CachePolicy, Transition};
use crate::mem::PhysMem;
use crate::ownership::{DbError, PageDb, PageGuard, PageRecord, Shard, ShardGuard};
use crate::pool::PagePool;
use crate::stage2::shared::{SharedAlloc, SharedPool};
use crate::stage2::{self, MemType, Perms, S2Config, S2Error, Stage2, Translation};
use crate::stats::CpuStats;
use crate::vcpu::{Context, VcpuState};
use crate::vm::{MAX_SLOTS, SlotState, VmHandle, VmInner, VmSlot};
use isola_abi::{Status, features};
use isola_sync::{Mutex, MutexGuard};

/// Feature bits every engine reports by `Version`; an engine with virtual
/// interrupts adds its list-register count ([`Engine::features`]).
pub const FEATURES: u64 = features::GUEST_PSCI | features::ABORT_INJECTION;

/// The feature bits of an engine with `list_regs` list registers the host
/// may fill (0: no virtual interrupts).
pub(crate) const fn features_for(list_regs: usize) -> u64 {
    if list_regs == 0 {
        FEATURES
    } else {
        FEATURES | features::VIRTUAL_INTERRUPTS | ((list_regs as u64) << features::LR_COUNT_SHIFT)
    }
}

/// The most device ranges the host may be given.
pub const MAX_DEVICE_RANGES: usize = 16;

/// Which pages of a [`DeviceRange`] the host may only read (mapped
/// read-only; a store there is skipped and its write ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnly {
    /// None: every page read-write.
    None,
    /// Every page.
    All,
    /// In every `every` pages from the range's base, the first `first`
    /// (e.g. each GICv3 redistributor's `RD_base` frame: 16 of every 32).
    Frames {
        /// The period, in pages (non-zero).
        every: u64,
        /// Read-only pages at the start of each period.
        first: u64,
    },
}

/// A device range given to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRange {
    /// First byte (page aligned).
    pub base: PhysAddr,
    /// Pages.
    pub pages: u64,
    /// Which pages the host may only read.
    pub read_only: ReadOnly,
}

impl DeviceRange {
    /// A range the host may read and write.
    pub const fn rw(base: PhysAddr, pages: u64) -> Self {
        Self {
            base,
            pages,
            read_only: ReadOnly::None,
        }
    }

    /// Whether page `index` of the range is read-only.
    const fn page_read_only(&self, index: u64) -> bool {
        match self.read_only {
            ReadOnly::None => false,
            ReadOnly::All => true,
            ReadOnly::Frames { every, first } => match index.checked_rem(every) {
                Some(i) => i < first,
                None => true,
            },
        }
    }
}

/// How the engine is set up at boot.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig<'a> {
    /// RAM ranges `(base, pages)`, ascending, disjoint.
    pub ram: &'a [(PhysAddr, u64)],
    /// RAM the engine keeps for itself (its image, stacks, this storage):
    /// engine-owned from the start, never given out.
    pub reserved: &'a [(PhysAddr, u64)],
    /// RAM the engine keeps for the host's Stage-2 tables. Its first
    /// `host_s2.root_pages()` pages are the root (the range must start
    /// aligned to them); size it with [`Engine::host_s2_pages_needed`] so a
    /// block split never runs out.
    pub host_s2_pool: (PhysAddr, u64),
    /// Device ranges the host may access (mapped as Device on its first
    /// access), at most [`MAX_DEVICE_RANGES`].
    pub host_devices: &'a [DeviceRange],
    /// log2 of the shard size in bytes (21 = 2 MiB ... 30 = 1 GiB).
    pub shard_shift: u32,
    /// Shape of every VM's Stage-2.
    pub vm_s2: S2Config,
    /// Shape of the host's Stage-2 (must cover all RAM and devices).
    pub host_s2: S2Config,
    /// Guest IPAs in `[start, end)` are MMIO: never mapped, accesses exit
    /// to the host as `Exit::Mmio`.
    pub guest_mmio: (u64, u64),
    /// How the CPU's caches behave (FEAT_S2FWB in use, `CTR_EL0.DIC`,
    /// `CTR_EL0.IDC`): decides the maintenance of every transition
    /// ([`crate::handover`]) and the encoding of RAM's Stage-2 leaves.
    pub caches: CachePolicy,
}

/// Storage the engine needs, provided by the caller (no allocator).
pub struct EngineStorage {
    /// Shards: at least `PageDb::requirements(..).0`.
    pub shards: &'static [Shard],
    /// Records: one per page of RAM.
    pub records: &'static mut [PageRecord],
    /// The VM table: its length is the most VMs (live or awaiting reclaim).
    pub vms: &'static [VmSlot],
    /// One record of event counters per physical CPU: CPU `n`'s at
    /// position `n`, built with `CpuStats::new(n)` (index = the `cpu` the
    /// engine's entry points are given).
    pub stats: &'static [CpuStats],
}

/// Why the engine could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The ownership database rejected the RAM layout or storage.
    Db(DbError),
    /// A reserved or host Stage-2 range is not RAM, overlaps another, or is
    /// not page aligned.
    BadReserved,
    /// The host Stage-2 pool is too small or misaligned for its root, or the
    /// host Stage-2 shape's IPA space does not cover all of RAM.
    BadHostPool,
    /// Too many device ranges, or a device range overlaps RAM.
    BadDevices,
    /// More VM slots than VMIDs, or none.
    BadVmTable,
    /// A CPU's record of counters is not at the position of its index.
    BadCpuTable,
    /// The guest MMIO window is empty, inverted or outside the IPA space.
    BadGuestMmio,
    /// The memory window does not cover all RAM.
    BadWindow,
}

/// A live VM's slot, as [`Engine::vm_summary`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSummary {
    /// Its Stage-2 root (in its pool).
    pub root: Option<PhysAddr>,
    /// Pool pages donated (`VmCreate`, `VmTopup`).
    pub pool_total: u64,
    /// Pool pages not yet used for tables or vCPU contexts.
    pub pool_free: u64,
    /// `max vcpus` given at create.
    pub max_vcpus: u64,
    /// A guest called PSCI `SYSTEM_OFF` or `SYSTEM_RESET`.
    pub off: bool,
}

/// What the exception vector does after a host Stage-2 abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAbortAction {
    /// The page is now mapped: return to the host to retry the access.
    Retry,
    /// Inject a synchronous external abort into the host.
    InjectSea,
    /// A store to a read-only device page: skip the instruction, its write
    /// ignored.
    SkipWrite,
}

/// The engine. One instance serves every CPU (`Sync`); each entry runs to
/// completion on its CPU.
pub struct Engine<A: Arch> {
    pub(crate) arch: A,
    pub(crate) mem: PhysMem,
    pub(crate) db: PageDb,
    pub(crate) vms: &'static [VmSlot],
    /// The host's Stage-2 (its root, shape and VMID never change; its
    /// entries are guarded as the module docs say).
    pub(crate) host_s2: Stage2,
    /// The host Stage-2's table pages (lock order: after a shard or the
    /// device-map lock, and nothing taken inside it).
    pub(crate) host_tables: SharedPool,
    /// Serialises the device-abort path's edits of the host Stage-2: the
    /// entries for device pages, and the tables above them that no RAM
    /// page's path uses.
    host_device_map: Mutex<()>,
    pub(crate) vm_s2: S2Config,
    pub(crate) guest_mmio: (u64, u64),
    pub(crate) caches: CachePolicy,
    /// The memory type of every RAM leaf of the host's Stage-2: forced
    /// write-back where the host runs with FWB ([`CachePolicy::fwb_host`]).
    pub(crate) host_normal: MemType,
    /// The memory type of every RAM leaf of a VM's Stage-2: forced
    /// write-back where guests run with FWB ([`CachePolicy::fwb_guest`]).
    pub(crate) vm_normal: MemType,
    /// Device ranges `(start, end, range)`.
    devices: [(u64, u64, DeviceRange); MAX_DEVICE_RANGES],
    ndevices: usize,
    /// List registers the host may fill (0: no virtual interrupts); see
    /// [`Engine::set_list_registers`].
    list_regs: u8,
    /// What `Version` reports in `x2`: [`FEATURES`] and
    /// the virtual-interrupt bits, computed whenever `list_regs` changes so
    /// the call is one load ([`Engine::features`]).
    pub(crate) features: u64,
    /// The ID registers guests' values are derived from, by `[CRm - 1][Op2]`;
    /// see [`Engine::set_guest_id_registers`].
    guest_ids: [[u64; 8]; 7],
    /// Per-CPU event counters ([`crate::stats`]).
    pub(crate) stats: &'static [CpuStats],
}

fn range_end(base: PhysAddr, pages: u64) -> Option<u64> {
    base.checked_add_pages(pages).map(PhysAddr::raw)
}

impl<A: Arch> Engine<A> {
    /// Host Stage-2 table pages needed to map every page of `ram` and
    /// `devices` at 4 KiB granularity (the worst case after splits), root
    /// included: the size of [`EngineConfig::host_s2_pool`].
    pub fn host_s2_pages_needed(
        cfg: S2Config,
        ram: &[(PhysAddr, u64)],
        devices: &[(PhysAddr, u64)],
    ) -> u64 {
        let mut n = cfg.root_pages();
        for &(base, pages) in ram.iter().chain(devices) {
            let Some(end) = range_end(base, pages) else {
                continue;
            };
            let mut level = cfg.start_level();
            while level < 3 {
                // One next-level table per entry of `level` the range touches.
                let bs = stage2::block_size(level);
                let first = base.raw().checked_div(bs).unwrap_or(0);
                let last = end.saturating_sub(1).checked_div(bs).unwrap_or(0);
                n = n.saturating_add(last.saturating_sub(first).saturating_add(1));
                level = level.wrapping_add(1);
            }
        }
        n
    }

    /// Builds the engine: every RAM page starts host-owned except the
    /// reserved ranges and the host Stage-2 pool, which become the engine's.
    pub fn new(
        cfg: EngineConfig<'_>,
        arch: A,
        mem: PhysMem,
        storage: EngineStorage,
    ) -> Result<Self, InitError> {
        let db = PageDb::new(cfg.ram, cfg.shard_shift, storage.shards, storage.records)
            .map_err(InitError::Db)?;
        for (base, pages) in db.ranges() {
            let pa = base.checked_addr().ok_or(InitError::BadWindow)?;
            let last = pa.checked_add_pages(pages).ok_or(InitError::BadWindow)?;
            let window_end = mem
                .pa_base()
                .raw()
                .checked_add(mem.len())
                .ok_or(InitError::BadWindow)?;
            if pa < mem.pa_base() || last.raw() > window_end {
                return Err(InitError::BadWindow);
            }
            if last.raw() > cfg.host_s2.ipa_limit() {
                return Err(InitError::BadHostPool);
            }
        }
        if storage.vms.is_empty() || storage.vms.len() > MAX_SLOTS {
            return Err(InitError::BadVmTable);
        }
        // The dispatcher counts into the record it is handed and
        // `Accounting` reads CPU `n`'s at position `n`: they must agree.
        if storage
            .stats
            .iter()
            .enumerate()
            .any(|(n, s)| usize::try_from(s.index()).ok() != Some(n))
        {
            return Err(InitError::BadCpuTable);
        }
        let (mmio_start, mmio_end) = cfg.guest_mmio;
        if mmio_start >= mmio_end || mmio_end > cfg.vm_s2.ipa_limit() {
            return Err(InitError::BadGuestMmio);
        }
        let empty = DeviceRange::rw(PhysAddr::new(0), 0);
        let mut devices = [(0u64, 0u64, empty); MAX_DEVICE_RANGES];
        let ndevices = cfg.host_devices.len();
        if ndevices > MAX_DEVICE_RANGES {
            return Err(InitError::BadDevices);
        }
        for (slot, &d) in devices.iter_mut().zip(cfg.host_devices) {
            let (base, pages) = (d.base, d.pages);
            if matches!(d.read_only, ReadOnly::Frames { every: 0, .. }) {
                return Err(InitError::BadDevices);
            }
            let end = range_end(base, pages).ok_or(InitError::BadDevices)?;
            if !base.is_page_aligned() || pages == 0 || end > cfg.host_s2.ipa_limit() {
                return Err(InitError::BadDevices);
            }
            let mut pa = base;
            while pa.raw() < end {
                if db.is_ram(pa) {
                    return Err(InitError::BadDevices);
                }
                pa = pa.wrapping_add_bytes(PAGE_SIZE);
            }
            *slot = (base.raw(), end, d);
        }
        // Engine-owned RAM: reserved ranges, then the host Stage-2 pool.
        let take = |base: PhysAddr, pages: u64| -> Result<(), InitError> {
            if !base.is_page_aligned() {
                return Err(InitError::BadReserved);
            }
            let mut pa = base;
            for _ in 0..pages {
                let mut g = db.lock_page(pa).ok_or(InitError::BadReserved)?;
                if g.get() != PageRecord::HOST {
                    return Err(InitError::BadReserved);
                }
                g.set(PageRecord::ENGINE);
                drop(g);
                pa = pa.checked_add(PAGE_SIZE).ok_or(InitError::BadReserved)?;
            }
            Ok(())
        };
        for &(base, pages) in cfg.reserved {
            take(base, pages)?;
        }
        let (hp_base, hp_pages) = cfg.host_s2_pool;
        let root_pages = cfg.host_s2.root_pages();
        if hp_pages <= root_pages || !hp_base.is_aligned(root_pages.saturating_mul(PAGE_SIZE)) {
            return Err(InitError::BadHostPool);
        }
        take(hp_base, hp_pages)?;
        let mut pool = PagePool::new();
        let mut pa = hp_base;
        for i in 0..hp_pages {
            if i < root_pages {
                if !mem.zero_page(pa) {
                    return Err(InitError::BadWindow);
                }
            } else if !pool.add(&mem, pa) {
                return Err(InitError::BadWindow);
            }
            pa = pa.wrapping_add_bytes(PAGE_SIZE);
        }
        let engine = Self {
            arch,
            mem,
            db,
            vms: storage.vms,
            host_s2: Stage2::new(hp_base, cfg.host_s2, Vmid::HOST),
            host_tables: SharedPool::new(pool),
            host_device_map: Mutex::new(()),
            vm_s2: cfg.vm_s2,
            guest_mmio: cfg.guest_mmio,
            caches: cfg.caches,
            host_normal: if cfg.caches.fwb_host {
                MemType::NormalForcedWb
            } else {
                MemType::Normal
            },
            vm_normal: if cfg.caches.fwb_guest {
                MemType::NormalForcedWb
            } else {
                MemType::Normal
            },
            devices,
            ndevices,
            list_regs: 0,
            features: features_for(0),
            guest_ids: [[0; 8]; 7],
            stats: storage.stats,
        };
        engine.map_host_ram()?;
        if !engine.host_shared_tables_built() {
            return Err(InitError::BadHostPool);
        }
        Ok(engine)
    }

    /// The host Stage-2 allocator of every RAM edit: it gives tables only
    /// for level-2 entries (a 2 MiB window's level-3 table), whose window
    /// lies in the one shard whose lock the editor holds; a table above
    /// level 2 is never installed after boot ([`Engine::map_host_ram`]).
    fn host_ram_tables(&self) -> SharedAlloc<'_> {
        self.host_tables.alloc(2)
    }

    /// Builds the host Stage-2 tables that more than one lock's edits would
    /// otherwise share, once, at boot, so no edit made later installs them:
    /// every table above level 2 on the path of a RAM page (a 1 GiB window's
    /// level-2 table and what leads to it), and the level-3 table of each
    /// 2 MiB window that holds RAM but is not wholly one shard's (an end of a
    /// RAM range: its other pages may be another range's, under another
    /// shard lock, or a device's, under the device-map lock). A 2 MiB window
    /// wholly inside a range lies in one shard, since shards are aligned and
    /// at least 2 MiB (`PageDb::new`), so only a range's first and last
    /// windows can be partial. Every one of these tables is counted by
    /// [`Engine::host_s2_pages_needed`].
    fn build_host_shared_tables(&self) -> Result<(), InitError> {
        let s2 = self.host_s2;
        let mut any = self.host_tables.alloc(0);
        let mut build = |pa: u64, level: u8| {
            s2.build_tables(&self.mem, &self.arch, &mut any, Ipa::new(pa), level)
                .map_err(|_| InitError::BadHostPool)
        };
        let gib = stage2::block_size(1);
        for (base, pages) in self.db.ranges() {
            let start = base.checked_addr().ok_or(InitError::BadWindow)?;
            let end = start.checked_add_pages(pages).ok_or(InitError::BadWindow)?;
            let (start, end) = (start.raw(), end.raw());
            let mut w = start & !gib.wrapping_sub(1);
            while w < end {
                build(w.max(start), 2)?;
                w = w.saturating_add(gib);
            }
            for at in [start, end.wrapping_sub(1)] {
                if !self.window_in_one_shard(at) {
                    build(at, 3)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the host Stage-2 holds every table
    /// [`Engine::build_host_shared_tables`] builds (what lets RAM edits run
    /// under shard locks alone): checked once at the end of boot, and by
    /// tests.
    pub fn host_shared_tables_built(&self) -> bool {
        let gib = stage2::block_size(1);
        self.db.ranges().all(|(base, pages)| {
            let (Some(start), Some(end)) = (
                base.checked_addr(),
                base.checked_addr().and_then(|a| a.checked_add_pages(pages)),
            ) else {
                return false;
            };
            let (start, end) = (start.raw(), end.raw());
            let mut w = start & !gib.wrapping_sub(1);
            let mut ok = true;
            while w < end && ok {
                ok = self
                    .host_s2
                    .has_tables(&self.mem, Ipa::new(w.max(start)), 2);
                w = w.saturating_add(gib);
            }
            ok && [start, end.wrapping_sub(1)].iter().all(|&at| {
                self.window_in_one_shard(at) || self.host_s2.has_tables(&self.mem, Ipa::new(at), 3)
            })
        })
    }

    /// Whether the 2 MiB window holding `pa` is wholly RAM of one shard.
    fn window_in_one_shard(&self, pa: u64) -> bool {
        let mib2 = stage2::block_size(2);
        let window = pa & !mib2.wrapping_sub(1);
        let shard_of = |pa: u64| {
            self.db
                .locate(Pfn::containing(PhysAddr::new(pa)))
                .map(|(s, _)| s)
        };
        match (
            shard_of(window),
            shard_of(window.wrapping_add(mib2).wrapping_sub(PAGE_SIZE)),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    /// Maps every page the host may access into its Stage-2, shard by
    /// shard, with the largest blocks that lie in one shard and hold only
    /// host pages (a shard of only host pages, aligned to its size, is one
    /// block). Done once, at boot: from then on each transition keeps the
    /// map exact. The shared tables are built first, and the map itself
    /// uses the RAM edits' allocator, which refuses any table above level
    /// 2: so a table the build missed stops the boot instead of being
    /// installed later by two CPUs at once.
    fn map_host_ram(&self) -> Result<(), InitError> {
        self.build_host_shared_tables()?;
        for shard in 0..self.db.shard_count() {
            let Some(mut sg) = self.db.lock_shard(shard) else {
                continue;
            };
            let base = sg.base();
            let pages = sg.pages();
            // The shard's level-2 table, now built for good, if the shard
            // lies in one 1 GiB window (one-page edits start there).
            let gib = stage2::block_size(1);
            if let (Some(first), Some(last)) = (
                base.checked_addr(),
                Pfn::new(base.raw().wrapping_add(pages).wrapping_sub(1)).checked_addr(),
            ) && first.raw() & !gib.wrapping_sub(1) == last.raw() & !gib.wrapping_sub(1)
                && let Some(l2) = self.host_s2.table_at(&self.mem, Ipa::new(first.raw()), 2)
            {
                sg.set_host_l2(l2);
            }
            let mut i = 0u64;
            while i < pages {
                let pfn = Pfn::new(base.raw().wrapping_add(i));
                let accessible = sg
                    .records(pfn, 1)
                    .and_then(|r| r.first())
                    .is_some_and(|r| r.host_accessible());
                let Some(pa) = pfn.checked_addr() else {
                    return Err(InitError::BadWindow);
                };
                if !accessible {
                    i = i.wrapping_add(1);
                    continue;
                }
                let level = self.host_block_level(&sg, pa);
                match self.host_s2.map_identity_shrinking(
                    &self.mem,
                    &self.arch,
                    &mut self.host_ram_tables(),
                    Ipa::new(pa.raw()),
                    level,
                    Perms::RWX,
                    self.host_normal,
                ) {
                    Ok(()) | Err(S2Error::AlreadyMapped) => {}
                    Err(_) => return Err(InitError::BadHostPool),
                }
                sg.set_host_mapped();
                // Skip the rest of the block just mapped.
                let bs = stage2::block_size(level) / PAGE_SIZE;
                let in_block = pfn.raw() & bs.wrapping_sub(1);
                i = i.wrapping_add(bs.wrapping_sub(in_block));
            }
        }
        Ok(())
    }

    /// The level of the largest block containing `pa` that lies in `sg`'s
    /// shard and whose pages the host may all access: 2 (a 2 MiB block) or
    /// 3 (just the page). A 1 GiB block never lies in one shard (see the
    /// assertion below), so level 1 is never a candidate, whatever level
    /// the host's Stage-2 starts at.
    fn host_block_level(&self, sg: &ShardGuard<'_>, pa: PhysAddr) -> u8 {
        const {
            assert!(
                stage2::block_size(1) > 1 << crate::ownership::MAX_SHARD_SHIFT,
                "a shard could hold a 1 GiB host block: host_block_level must try level 1"
            );
        }
        let bs = stage2::block_size(2);
        let base = Pfn::containing(pa.align_down(bs));
        let n = bs / PAGE_SIZE;
        // A block that is the whole shard is decided by the shard's counts
        // (kept exact by every record change) in O(1); a block smaller than
        // its shard by its records.
        let all = if sg.base() == base && sg.pages() == n {
            sg.counts().host_accessible == n
        } else {
            sg.records(base, n)
                .is_some_and(|r| r.iter().all(|r| r.host_accessible()))
        };
        if all { 2 } else { 3 }
    }

    /// Turns on virtual interrupts with `count` list registers (the CPU's
    /// `ICH_VTR_EL2.ListRegs + 1`, capped at [`isola_abi::lr::SLOTS`]): the
    /// EL2 image calls this at boot, before any CPU uses the engine, once
    /// its world switch loads and saves the list registers, `ICH_VMCR_EL2`
    /// and the active-priority registers from the context (offsets in
    /// [`crate::vcpu`]). Until then (`count` 0) `VcpuInterrupts` accepts
    /// only empty registers and `Version` does not report the feature.
    pub fn set_list_registers(&mut self, count: usize) {
        self.list_regs = count.min(isola_abi::lr::SLOTS) as u8;
        self.features = features_for(self.list_regs());
    }

    /// List registers the host may fill.
    pub fn list_regs(&self) -> usize {
        usize::from(self.list_regs)
    }

    /// The ID registers guests' views are derived from (see
    /// `hypercall::sysreg::guest_id_value`): `raw[crm - 1][op2]` is the
    /// value of `(Op0 3, Op1 0, CRn 0, CRm, Op2)`, the same on every CPU
    /// (on a system whose CPUs differ, the EL2 image passes the
    /// sanitised lowest common value). Set once at boot; until then every
    /// ID register a guest reads is derived from zero.
    pub fn set_guest_id_registers(&mut self, raw: [[u64; 8]; 7]) {
        self.guest_ids = raw;
    }

    /// The raw value behind ID register `(crm, op2)` (0 outside the table).
    pub(crate) fn guest_id_raw(&self, crm: u8, op2: u8) -> u64 {
        self.guest_ids
            .get(usize::from(crm).wrapping_sub(1))
            .and_then(|r| r.get(usize::from(op2)))
            .copied()
            .unwrap_or(0)
    }

    /// Counts one `counter` event (`isola_abi::counter`) on `cpu`, which
    /// must be the CPU running this code (`stats`' invariant). (The
    /// dispatcher, which is handed the record, counts into it directly.)
    #[inline]
    pub(crate) fn count(&self, cpu: u32, counter: u64) {
        if let Some(s) = usize::try_from(cpu).ok().and_then(|c| self.stats.get(c)) {
            s.add(counter);
        }
    }

    /// `counter` of CPU `cpu` and its sum over every CPU; `None` for an
    /// unknown counter or CPU.
    pub(crate) fn counter(&self, cpu: u64, counter: u64) -> Option<(u64, u64)> {
        if counter >= isola_abi::counter::COUNT {
            return None;
        }
        let mine = usize::try_from(cpu).ok().and_then(|c| self.stats.get(c))?;
        let sum = self
            .stats
            .iter()
            .map(|s| s.get(counter))
            .fold(0, u64::wrapping_add);
        Some((mine.get(counter), sum))
    }

    /// The architecture backend (tests inspect a `RecordingArch` here).
    pub fn arch(&self) -> &A {
        &self.arch
    }

    /// The physical memory window (to read page contents, or, in tests, to
    /// play the host writing its own memory).
    pub fn mem(&self) -> &PhysMem {
        &self.mem
    }

    /// The ownership database (read-only use: records, counts).
    pub fn db(&self) -> &PageDb {
        &self.db
    }

    /// `VTTBR_EL2` for the host (VMID 0, its Stage-2 root).
    pub fn host_vttbr(&self) -> u64 {
        self.host_s2.vttbr()
    }

    /// Locks the live VM a host handle names, or `NotFound`.
    pub(crate) fn lock_vm(&self, handle: u64) -> Result<(usize, MutexGuard<'_, VmInner>), Status> {
        let h = VmHandle(handle);
        let generation = h.generation().ok_or(Status::NotFound)?;
        let slot = h.slot();
        let g = self.vms.get(slot).ok_or(Status::NotFound)?.inner.lock();
        if g.state != SlotState::Live || g.generation != generation {
            return Err(Status::NotFound);
        }
        Ok((slot, g))
    }

    /// Whether `ipa` is in the guest MMIO window.
    pub(crate) fn in_guest_mmio(&self, ipa: Ipa) -> bool {
        (self.guest_mmio.0..self.guest_mmio.1).contains(&ipa.raw())
    }

    /// Removes `pa` from the host Stage-2 (CPU side: entry invalidated, TLBI
    /// complete). The caller holds `page` (the page's shard lock), which is
    /// what keeps a concurrent host abort from mapping it again, and then
    /// settles the transition ([`Engine::settle`]), which takes it out of the
    /// host's DMA view.
    pub(crate) fn host_unmap(&self, page: &PageGuard<'_>, pa: PhysAddr) {
        if !page.host_mapped() {
            return;
        }
        self.host_unmap_page(page.host_l2(), pa);
    }

    /// [`Engine::host_unmap`] of the one page `pa`, the caller holding its
    /// shard's lock, whose level-2 table (`l2`, if the shard knows it) lets
    /// the edit start below the root: a one-page `Donate`'s host unmap
    /// without the walk. A page mapped by a block, or a shard without a
    /// known table, takes the walk from the root (which splits the block).
    #[inline(never)]
    pub(crate) fn host_unmap_page(&self, l2: Option<PhysAddr>, pa: PhysAddr) {
        let s2 = self.host_s2;
        let ipa = Ipa::new(pa.raw());
        if let Some(l2) = l2
            && s2
                .unmap_page_below(&self.mem, &self.arch, l2, ipa)
                .is_some()
        {
            return;
        }
        // A split that finds the reserve empty leaves the block whole, which
        // is then dropped whole: the host refaults its other pages through
        // the abort path.
        if s2.unmap_page(&self.mem, &self.arch, &mut self.host_ram_tables(), ipa)
            == Err(S2Error::NoMemory)
        {
            let _ = s2.unmap_leaf(&self.mem, &self.arch, ipa);
        }
    }

    /// Removes the `pages` pages from `first` from the host Stage-2 as one
    /// batch ([`Stage2::unmap_run`]: one TLBI). The caller holds the lock of
    /// the shard they all live in (see [`Engine::host_unmap`]), which is
    /// all the edit needs: it writes only entries of that shard's pages and
    /// of 2 MiB windows wholly inside it (a block split, or removed whole),
    /// and takes a table page, for a split, under the pool's own lock.
    #[inline(never)]
    pub(crate) fn host_unmap_run(&self, first: Pfn, pages: u64) {
        let Some(pa) = first.checked_addr() else {
            return;
        };
        let s2 = self.host_s2;
        let ipa = Ipa::new(pa.raw());
        let mut tables = self.host_ram_tables();
        if pages == 1 {
            // One page: the page walk, with no run bookkeeping per level.
            self.host_unmap_page(None, pa);
            return;
        }
        if s2.unmap_run(&self.mem, &self.arch, &mut tables, ipa, pages) == Err(S2Error::NoMemory) {
            // The reserve is sized so a split never fails; if it did, drop
            // each remaining leaf whole instead: the host refaults its other
            // pages through the abort path.
            for i in 0..pages {
                let at = Ipa::new(pa.raw().wrapping_add(i.wrapping_mul(PAGE_SIZE)));
                let _ = s2.unmap_leaf(&self.mem, &self.arch, at);
            }
        }
    }

    /// Maps the page `pa`, which the host may now access, into the host
    /// Stage-2 (a page entry; a block if the page's whole block is the
    /// host's and unmapped). The caller holds the page's shard lock (all
    /// the edit needs, as for [`Engine::host_unmap_run`]) and has settled
    /// the transition first, so the host sees the page only after its
    /// maintenance.
    #[inline(never)]
    pub(crate) fn host_map(&self, page: &mut PageGuard<'_>, pa: PhysAddr) {
        let _ = self.host_s2.map_identity_shrinking(
            &self.mem,
            &self.arch,
            &mut self.host_ram_tables(),
            Ipa::new(pa.raw()),
            3,
            Perms::RWX,
            self.host_normal,
        );
        page.set_host_mapped();
    }

    /// [`Engine::host_map`] for the `k` pages from `first`, all in `sg`'s
    /// shard, under that shard's lock.
    pub(crate) fn host_map_run(&self, sg: &mut ShardGuard<'_>, first: Pfn, k: u64) {
        let s2 = self.host_s2;
        let mut tables = self.host_ram_tables();
        for i in 0..k {
            let Some(pa) = Pfn::new(first.raw().wrapping_add(i)).checked_addr() else {
                continue;
            };
            let _ = s2.map_identity_shrinking(
                &self.mem,
                &self.arch,
                &mut tables,
                Ipa::new(pa.raw()),
                3,
                Perms::RWX,
                self.host_normal,
            );
        }
        sg.set_host_mapped();
    }

    /// Whether `pa` is in a device range given to the host: `Some(read_only)`.
    fn host_device(&self, pa: PhysAddr) -> Option<bool> {
        self.devices
            .iter()
            .take(self.ndevices)
            .find(|&&(s, e, _)| (s..e).contains(&pa.raw()))
            .map(|&(s, _, d)| d.page_read_only(pa.raw().wrapping_sub(s) / PAGE_SIZE))
    }

    /// A Stage-2 abort taken from the host (`esr`, `far`, `hpfar` as read
    /// from ESR_EL2, FAR_EL2, HPFAR_EL2). Maps the page with the largest
    /// block whose pages are all the host's (owned or borrowed) and returns
    /// `Retry`, or returns `InjectSea` for anything the host may not touch,
    /// which is counted on `cpu` (the CPU that took the abort).
    pub fn host_abort(&self, cpu: u32, esr: u64, far: u64, hpfar: u64) -> HostAbortAction {
        let action = self.host_abort_action(esr, far, hpfar);
        if action == HostAbortAction::InjectSea {
            self.count(cpu, isola_abi::counter::HOST_ABORTS);
        }
        action
    }

    fn host_abort_action(&self, esr: u64, far: u64, hpfar: u64) -> HostAbortAction {
        let esr = Esr(esr);
        let ipa = abort::fault_ipa(hpfar, far);
        let pa = PhysAddr::new(ipa.raw()).page_floor();
        if self.db.is_ram(pa) {
            self.host_abort_ram(esr, pa)
        } else if let Some(ro) = self.host_device(pa) {
            let page = if ro {
                HostPage::DeviceReadOnly
            } else {
                HostPage::Device
            };
            let perms = match abort::classify_host_abort(esr, page) {
                HostAbort::MapDevice => Perms::RW,
                HostAbort::MapDeviceReadOnly => Perms {
                    r: true,
                    w: false,
                    x: false,
                },
                HostAbort::IgnoreWrite => return HostAbortAction::SkipWrite,
                HostAbort::MapRam | HostAbort::InjectSea => return HostAbortAction::InjectSea,
            };
            // The device-map lock serialises this path with itself, not with
            // RAM edits: it writes the device page's level-3 entry and, the
            // first time, tables into entries whose window holds no RAM (a
            // window that holds any has its table from boot:
            // `build_host_shared_tables`), and no RAM edit writes, or walks
            // through, an entry of a window without RAM.
            #[cfg(not(feature = "planted-bug-host-device-unlocked"))]
            let serialised = self.host_device_map.lock();
            #[cfg(feature = "planted-bug-host-device-unlocked")]
            let _ = &self.host_device_map;
            let r = self.host_s2.map_identity_shrinking(
                &self.mem,
                &self.arch,
                &mut self.host_tables.alloc(0),
                ipa,
                3,
                perms,
                MemType::Device,
            );
            #[cfg(not(feature = "planted-bug-host-device-unlocked"))]
            drop(serialised);
            match r {
                Ok(()) | Err(S2Error::AlreadyMapped) => HostAbortAction::Retry,
                Err(_) => HostAbortAction::InjectSea,
            }
        } else {
            HostAbortAction::InjectSea
        }
    }

    fn host_abort_ram(&self, esr: Esr, pa: PhysAddr) -> HostAbortAction {
        let Some((shard, _)) = self.db.locate(Pfn::containing(pa)) else {
            return HostAbortAction::InjectSea;
        };
        let Some(mut sg) = self.db.lock_shard(shard) else {
            return HostAbortAction::InjectSea;
        };
        let pfn = Pfn::containing(pa);
        let accessible = sg
            .records(pfn, 1)
            .and_then(|r| r.first())
            .is_some_and(|r| r.host_accessible());
        let page = if accessible {
            HostPage::Accessible
        } else {
            HostPage::Forbidden
        };
        if abort::classify_host_abort(esr, page) != HostAbort::MapRam {
            return HostAbortAction::InjectSea;
        }
        // The largest block inside this shard whose pages the host may all
        // access. With the map kept exact this path only serves pages a
        // failed split dropped (see `host_unmap_run`).
        let level = self.host_block_level(&sg, pa);
        let r = self.host_s2.map_identity_shrinking(
            &self.mem,
            &self.arch,
            &mut self.host_ram_tables(),
            Ipa::new(pa.raw()),
            level,
            Perms::RWX,
            self.host_normal,
        );
        sg.set_host_mapped();
        match r {
            Ok(()) | Err(S2Error::AlreadyMapped) => HostAbortAction::Retry,
            Err(_) => HostAbortAction::InjectSea,
        }
    }

    // ---- Observation (read-only; for tests, the spec and diagnostics) ----

    /// Calls `f(pa, record)` for every page of RAM, ascending (one shard
    /// locked at a time).
    pub fn for_each_page(&self, mut f: impl FnMut(PhysAddr, PageRecord)) {
        self.db.for_each_page(&mut f);
    }

    /// The record of one page (`None` if not a RAM page).
    pub fn page(&self, pa: PhysAddr) -> Option<PageRecord> {
        self.db.record(pa)
    }

    /// Calls `f(handle, state)` for every slot that is not free.
    pub fn for_each_vm(&self, mut f: impl FnMut(VmHandle, SlotState)) {
        for (i, s) in self.vms.iter().enumerate() {
            let g = s.inner.lock();
            if g.state != SlotState::Free {
                f(VmHandle::new(i as u16, g.generation), g.state);
            }
        }
    }

    /// Calls `f(ipa, pa, perms, borrowed)` for every page the live VM
    /// `handle` maps, ascending by IPA, by walking its Stage-2.
    pub fn vm_mappings(
        &self,
        handle: u64,
        mut f: impl FnMut(Ipa, PhysAddr, Perms, bool),
    ) -> Result<(), Status> {
        let (_, g) = self.lock_vm(handle)?;
        if let Some(s2) = g.s2 {
            s2.for_each_leaf(&self.mem, &mut |ipa, d, level| {
                let mut off = 0;
                while off < stage2::block_size(level) {
                    f(
                        ipa.checked_add(off).unwrap_or(ipa),
                        d.addr().wrapping_add_bytes(off),
                        d.perms(),
                        d.borrowed(),
                    );
                    off = off.wrapping_add(PAGE_SIZE);
                }
            });
        }
        Ok(())
    }

    /// What the live VM `handle` maps at `ipa`.
    pub fn vm_translate(&self, handle: u64, ipa: Ipa) -> Result<Option<Translation>, Status> {
        let (_, g) = self.lock_vm(handle)?;
        Ok(g.s2.and_then(|s2| s2.translate(&self.mem, ipa)))
    }

    /// What the host Stage-2 maps at `pa` (identity), if anything yet. It
    /// takes no lock (observers call it from inside [`Engine::for_each_page`],
    /// which holds the page's shard): exact between calls; during a call
    /// that edits this page, what the entries held when they were read.
    pub fn host_translate(&self, pa: PhysAddr) -> Option<Translation> {
        self.host_s2.translate(&self.mem, Ipa::new(pa.raw()))
    }

    /// Calls `f(ipa, desc, level)` for every leaf of the host Stage-2. It
    /// takes no lock (no one lock guards the whole Stage-2): exact when no
    /// call runs at the same time, as where tests and the spec look; during
    /// calls each leaf is what its entry held at the moment it was read
    /// (single-copy atomic reads, and the host's table pages are never
    /// freed, so the walk never leaves its tables).
    pub fn host_mappings(&self, mut f: impl FnMut(Ipa, stage2::Desc, u8)) {
        self.host_s2.for_each_leaf(&self.mem, &mut f);
    }

    /// `(tables, free)`: the host Stage-2's table pages reachable from its
    /// root (the root excluded) and the pages left in its pool. Their sum
    /// plus the root is the pool's size unless a table was lost (an entry
    /// overwritten) or handed out twice. Walks without a lock, as
    /// [`Engine::host_mappings`] does.
    pub fn host_table_usage(&self) -> (u64, u64) {
        (self.host_s2.table_pages(&self.mem), self.host_tables.free())
    }

    /// The state and context of vCPU `idx` of the live VM `handle`. Read the
    /// registers through [`Context`] with [`Engine::mem`].
    pub fn vcpu(&self, handle: u64, idx: u64) -> Result<(VcpuState, Context), Status> {
        let (_, g) = self.lock_vm(handle)?;
        let v = usize::try_from(idx)
            .ok()
            .and_then(|i| g.vcpus.get(i))
            .ok_or(Status::NotFound)?;
        if v.state == VcpuState::Absent {
            return Err(Status::NotFound);
        }
        Ok((v.state, Context::new(PhysAddr::new(v.ctx))))
    }

    /// `(owned, borrowed, pool total, pool free, table pages)` of the live VM
    /// `handle`.
    pub fn vm_usage(&self, handle: u64) -> Result<[u64; 5], Status> {
        let (_, g) = self.lock_vm(handle)?;
        let tables = g.s2.map_or(0, |s| {
            s.table_pages(&self.mem)
                .wrapping_add(s.config().root_pages())
        });
        Ok([g.owned, g.borrowed, g.pool.total(), g.pool.free(), tables])
    }

    /// The live VM `handle`'s slot as it stands, read without walking its
    /// Stage-2 (unlike [`Engine::vm_usage`]): for observers that look after
    /// every step, and for what no call reports (`max vcpus`, powered off).
    pub fn vm_summary(&self, handle: u64) -> Result<VmSummary, Status> {
        let (_, g) = self.lock_vm(handle)?;
        Ok(VmSummary {
            root: g.s2.map(|s| s.root()),
            pool_total: g.pool.total(),
            pool_free: g.pool.free(),
            max_vcpus: u64::from(g.max_vcpus),
            off: g.off,
        })
    }

    /// Pages of destroyed VMs awaiting `Reclaim`, without taking any lock:
    /// each slot's part is exact at the moment it is read.
    pub fn awaiting_reclaim(&self) -> u64 {
        self.vms.iter().fold(0u64, |acc, s| {
            // Planted bug (never for real builds): each slot's lock is taken
            // around its read, as before the slots published their counts
            // (with the shard locks of `PageDb::totals`, the `Accounting`
            // of before issue 17): the booted storm must catch it. Since
            // shards no longer nest a host Stage-2 lock, a shard is held too
            // briefly for the shard locks alone to stretch `Accounting`
            // past the storm's bound; a destroy holds its slot throughout.
            #[cfg(feature = "planted-bug-accounting-takes-shard-locks")]
            let _held = s.inner.lock();
            acc.wrapping_add(s.awaiting_reclaim())
        })
    }
}

/// Handing pages over: the plan of `handover.rs` carried out.
impl<A: Arch> Engine<A> {
    /// Carries out the maintenance `t` needs for the `pages` pages from `pa`
    /// (see the module docs for the order and why). The caller has removed
    /// the losing side's Stage-2 entries (their TLBI complete) and writes the
    /// gaining side's only after this returns. Out of line: the dispatcher
    /// inlines every transition, and this path's registers should not weigh
    /// on the prologue every call pays.
    #[inline(never)]
    pub(crate) fn settle(&self, t: Transition, pa: PhysAddr, pages: u64) {
        let plan = handover::plan(t, self.caches);
        if plan.is_empty() || pages == 0 {
            return;
        }
        let page = |i: u64| pa.wrapping_add_bytes(i.wrapping_mul(PAGE_SIZE));
        if plan.dma_invalidate {
            self.arch.dma_invalidate_host(pa, pages);
        }
        for i in 0..pages {
            if plan.zero {
                #[cfg(not(feature = "planted-bug-skip-scrub"))]
                let _ = self.mem.zero_page(page(i));
            }
            if plan.clean_poc {
                self.arch.clean_dcache_page(page(i));
            } else if plan.clean_pou {
                self.arch.clean_dcache_page_pou(page(i));
            }
        }
        if plan.icache {
            if pages > handover::ICACHE_ALL_ABOVE {
                self.arch.invalidate_icache_all();
            } else {
                for i in 0..pages {
                    self.arch.invalidate_icache_page(page(i));
                }
            }
        }
        self.arch.dsb_ish();
    }

    /// The cache policy the engine was built with.
    pub fn cache_policy(&self) -> CachePolicy {
        self.caches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::NoopArch;
    use crate::testing::{GUEST_MMIO, MachineSpec, VM_S2};

    /// Leaked storage for an engine over `ram` (2 MiB shards, 2 VM slots).
    fn leaked_storage(ram: &[(PhysAddr, u64)], stats: &'static [CpuStats]) -> EngineStorage {
        let (ns, nr) = PageDb::requirements(ram, 21).unwrap();
        EngineStorage {
            shards: Vec::leak((0..ns).map(|_| Shard::new()).collect()),
            records: Vec::leak(vec![PageRecord::HOST; nr]),
            vms: Vec::leak((0..2).map(|_| VmSlot::new()).collect()),
            stats,
        }
    }

    #[test]
    fn host_reserve_counts_one_table_per_region_touched() {
        // 4 MiB at 1 GiB: root (2 pages, level 1) + 1 L2 table + 2 L3 tables.
        let ram = [(PhysAddr::new(0x4000_0000), 1024)];
        assert_eq!(
            Engine::<NoopArch>::host_s2_pages_needed(S2Config::DEFAULT, &ram, &[]),
            2 + 1 + 2
        );
        // Straddling a 1 GiB boundary costs an extra L2 table.
        let ram = [(PhysAddr::new(0x7ff0_0000), 512)];
        assert_eq!(
            Engine::<NoopArch>::host_s2_pages_needed(S2Config::DEFAULT, &ram, &[]),
            2 + 2 + 2
        );
    }

    #[test]
    fn the_engine_reports_the_cache_policy_it_was_built_with() {
        // Not the default: a policy the engine could only report by keeping it.
        let caches = CachePolicy {
            fwb_guest: true,
            fwb_host: false,
            dic: true,
            idc: false,
        };
        assert_ne!(caches, CachePolicy::default());
        let e = MachineSpec {
            caches,
            ..MachineSpec::default()
        }
        .build(NoopArch);
        assert_eq!(e.cache_policy(), caches);
    }

    #[test]
    fn above_the_threshold_settle_invalidates_the_whole_icache_once() {
        let spec = crate::testing::MachineSpec::default();
        let e = spec.build(crate::arch::RecordingArch::new());
        let t = Transition::HostDonates { exec: true };
        assert!(handover::plan(t, CachePolicy::MAINTAIN_ALL).icache);
        let count = |e: &Engine<crate::arch::RecordingArch>| {
            let (mut page, mut all) = (0u64, 0u64);
            e.arch.for_each(|x| match x {
                crate::arch::ArchEvent::InvalIcache(_) => page += 1,
                crate::arch::ArchEvent::InvalIcacheAll => all += 1,
                _ => {}
            });
            (page, all)
        };
        let n = handover::ICACHE_ALL_ABOVE;
        e.arch.clear();
        e.settle(t, spec.page(20), n);
        assert_eq!(count(&e), (n, 0), "at the threshold: page by page");
        e.arch.clear();
        e.settle(t, spec.page(20), n + 1);
        assert_eq!(count(&e), (0, 1), "above it: all at once");
    }

    #[test]
    fn a_vm_pool_must_align_a_concatenated_root() {
        // VMs with the default shape: 40-bit IPA from level 1, a root of two
        // concatenated tables that must be 8 KiB aligned.
        let base = PhysAddr::new(0x4000_0000);
        let ram = [(base, 512)];
        let storage = leaked_storage(&ram, &[]);
        let cfg = EngineConfig {
            ram: &ram,
            reserved: &[(base, 8)],
            host_s2_pool: (base.wrapping_add_bytes(8 * PAGE_SIZE), 8),
            host_devices: &[],
            shard_shift: 21,
            vm_s2: S2Config::DEFAULT,
            host_s2: S2Config::DEFAULT,
            guest_mmio: GUEST_MMIO,
            caches: CachePolicy::MAINTAIN_ALL,
        };
        let e = Engine::new(cfg, NoopArch, PhysMem::leak_host(base, 512), storage).unwrap();
        let create = |page: u64| {
            let pa = base.wrapping_add_bytes(page * PAGE_SIZE).raw();
            let mut regs = [isola_abi::HostCall::VmCreate as u64, pa, 16, 1, 0, 0, 0];
            e.host_call(0, &mut regs);
            isola_abi::Status::from_raw(regs[0] as i64)
        };
        // NoMemory: the ABI's answer for a pool that cannot hold the root
        // where it must be.
        assert_eq!(
            create(17),
            Some(isola_abi::Status::NoMemory),
            "4 KiB aligned only"
        );
        assert_eq!(create(18), Some(isola_abi::Status::Success));
    }

    #[test]
    fn the_features_name_guest_psci_abort_injection_and_the_list_registers() {
        let base = features::GUEST_PSCI | features::ABORT_INJECTION;
        assert_eq!(features_for(0), base);
        let f = features_for(4);
        assert_eq!(f & base, base);
        assert_ne!(f & features::VIRTUAL_INTERRUPTS, 0);
        assert_eq!(features::list_registers(f), 4);
    }

    #[test]
    fn the_hosts_vttbr_names_vmid_0_and_a_root_the_engine_owns() {
        let e = MachineSpec::default().build(NoopArch);
        let vttbr = e.host_vttbr();
        assert_eq!(vttbr >> 48, 0, "VMID 0");
        let root = PhysAddr::new(vttbr & stage2::desc::OA_MASK);
        assert_ne!(root.raw(), 0);
        assert_eq!(
            e.page(root).map(|r| r.owner()),
            Some(crate::ownership::Owner::Engine)
        );
        assert_eq!(vttbr & !stage2::desc::OA_MASK, 0, "nothing but the root");
    }

    #[test]
    fn settling_no_pages_asks_the_machine_for_nothing() {
        let e = crate::testing::MachineSpec::default().build(crate::arch::RecordingArch::new());
        let pa = crate::testing::MachineSpec::default().page(20);
        let mut asked = 0usize;
        for t in crate::handover::tests::ALL {
            e.arch.clear();
            e.settle(t, pa, 0);
            assert!(e.arch.is_empty(), "{t:?} on no pages");
            // On one page, every transition whose plan has a step for the
            // machine does ask, so the check above can fail.
            let p = handover::plan(t, CachePolicy::MAINTAIN_ALL);
            e.settle(t, pa, 1);
            assert_eq!(
                e.arch.is_empty(),
                !(p.dma_invalidate || p.clean_poc || p.clean_pou || p.icache),
                "{t:?} on one page"
            );
            asked = asked.wrapping_add(usize::from(!e.arch.is_empty()));
        }
        assert!(asked > 0);
    }

    #[test]
    fn guest_id_registers_are_looked_up_by_crm_and_op2() {
        let mut e = MachineSpec::default().build(NoopArch);
        assert_eq!(
            e.guest_id_raw(4, 0),
            0,
            "zero until the EL2 image sets them"
        );
        let mut raw = [[0u64; 8]; 7];
        for (crm, row) in raw.iter_mut().enumerate() {
            for (op2, v) in row.iter_mut().enumerate() {
                *v = ((crm as u64).wrapping_add(1) << 8) | op2 as u64;
            }
        }
        e.set_guest_id_registers(raw);
        // ID_AA64PFR0_EL1 is (CRm 4, Op2 0); ID_AA64MMFR2_EL1 (7, 2).
        assert_eq!(e.guest_id_raw(4, 0), 0x400);
        assert_eq!(e.guest_id_raw(7, 2), 0x702);
        assert_eq!(e.guest_id_raw(1, 7), 0x107);
        // Outside the table: CRm 0 and 8, Op2 8.
        assert_eq!(e.guest_id_raw(0, 0), 0);
        assert_eq!(e.guest_id_raw(8, 0), 0);
        assert_eq!(e.guest_id_raw(1, 8), 0);
    }

    #[test]
    fn the_host_gets_a_block_only_where_every_page_is_its_own() {
        // One 4 MiB shard holding 520 pages: the engine's first 8, then 512
        // of the host's. The shard counts exactly a 2 MiB block's worth of
        // host pages, yet the 2 MiB block at its base holds the engine's:
        // that block must be mapped page by page, without them.
        let spec = MachineSpec {
            ram_pages: 520,
            shard_shift: 22,
            ..MachineSpec::default()
        };
        let e = spec.build(NoopArch);
        for i in 0..spec.engine_pages {
            assert_eq!(e.host_translate(spec.page(i)), None, "engine page {i}");
        }
        let first = e.host_translate(spec.page(spec.engine_pages)).unwrap();
        assert_eq!(first.level, 3);
        assert!(e.host_translate(spec.page(519)).is_some());
    }

    #[test]
    fn a_host_unmap_that_cannot_split_drops_the_whole_block() {
        // 1536 pages in 2 MiB shards: the second and third shards are all
        // the host's, one level-2 block each. With the host's table reserve
        // emptied, taking one page (the one-page path) or a run of two (the
        // run path) out of a block cannot split it: the block must go whole
        // (the host refaults the rest), never stay mapped.
        let spec = MachineSpec {
            ram_pages: 1536,
            ..MachineSpec::default()
        };
        let e = spec.build(NoopArch);
        let page = spec.page(600);
        let run = spec.page(1100);
        assert_eq!(e.host_translate(page).map(|t| t.level), Some(2));
        assert_eq!(e.host_translate(run).map(|t| t.level), Some(2));
        e.host_tables.exhaust(&e.mem);
        e.host_unmap_run(Pfn::containing(page), 1);
        assert_eq!(e.host_translate(page), None);
        assert_eq!(e.host_translate(spec.page(512)), None, "the whole block");
        assert!(
            e.host_translate(spec.page(511)).is_some(),
            "not the shard before"
        );
        e.host_unmap_run(Pfn::containing(run), 2);
        assert_eq!(e.host_translate(run), None);
        assert_eq!(e.host_translate(spec.page(1024)), None, "the whole block");
    }

    /// An engine over the RAM ranges `ram`, backed by `window` pages from
    /// the first range's base: the first 8 pages the engine's, the next 8
    /// the host Stage-2's pool.
    fn boot_ram(ram: &[(PhysAddr, u64)], window: u64) -> Engine<NoopArch> {
        let base = ram.first().unwrap().0;
        let cfg = EngineConfig {
            ram,
            reserved: &[(base, 8)],
            host_s2_pool: (base.wrapping_add_bytes(8 * PAGE_SIZE), 8),
            host_devices: &[],
            shard_shift: 21,
            vm_s2: VM_S2,
            host_s2: S2Config::DEFAULT,
            guest_mmio: GUEST_MMIO,
            caches: CachePolicy::MAINTAIN_ALL,
        };
        let mem = PhysMem::leak_host(base, window);
        Engine::new(cfg, NoopArch, mem, leaked_storage(ram, &[])).unwrap()
    }

    /// [`boot_ram`] over one range of `pages` pages at `base`.
    fn boot_over(base: u64, pages: u64) -> Engine<NoopArch> {
        boot_ram(&[(PhysAddr::new(base), pages)], pages)
    }

    #[test]
    fn the_tables_ram_edits_would_share_are_built_at_boot() {
        // Range A: the last 16 pages below 1 GiB, all the engine's (the host
        // never maps them, so the boot map alone would build nothing for
        // its 1 GiB window). Ranges B and C share the 2 MiB window at 1 GiB
        // (two shards, two locks, one level-2 entry); D is a whole shard.
        let a = PhysAddr::new(0x3fff_0000);
        let b = PhysAddr::new(0x4000_0000);
        let c = PhysAddr::new(0x4010_0000);
        let d = PhysAddr::new(0x4020_0000);
        let e = boot_ram(&[(a, 16), (b, 256), (c, 256), (d, 512)], 16 + 1024);
        assert!(e.host_shared_tables_built());
        let s2 = e.host_s2;
        let at = |pa: PhysAddr| Ipa::new(pa.raw());
        assert_eq!(e.host_translate(a), None, "A is the engine's");
        assert!(
            s2.has_tables(&e.mem, at(a), 3),
            "A's windows: level-2 and level-3 tables"
        );
        assert_eq!(e.host_translate(b).map(|t| t.level), Some(3));
        assert_eq!(e.host_translate(c).map(|t| t.level), Some(3));
        assert_eq!(
            e.host_translate(d).map(|t| t.level),
            Some(2),
            "D's window is one shard's"
        );
        // Where RAM is not, nothing is built (so the checks above can fail),
        // and a RAM edit's allocator cannot build it either.
        let none = Ipa::new(0x8000_0000);
        assert!(!s2.has_tables(&e.mem, none, 2));
        let free = e.host_tables.free();
        assert_eq!(
            s2.map_identity_shrinking(
                &e.mem,
                &e.arch,
                &mut e.host_ram_tables(),
                none,
                3,
                Perms::RWX,
                MemType::Normal
            ),
            Err(S2Error::NoMemory),
            "a RAM edit never installs a table above level 2"
        );
        assert_eq!(e.host_tables.free(), free);
        assert!(!s2.has_tables(&e.mem, none, 2));
        // The check itself can fail: with the root's entry for the first
        // GiB (A's range) cleared, the tables are not all there.
        cut_host_table(&e, a.raw(), 1);
        assert!(!e.host_shared_tables_built());
    }

    /// Clears the host Stage-2 entry at `level` for `ipa` (a table, so
    /// whatever lay below it is no longer reachable); returns the entry's
    /// address and old value, for a test that puts it back.
    fn cut_host_table(e: &Engine<NoopArch>, ipa: u64, level: u8) -> (PhysAddr, u64) {
        let mut table = PhysAddr::new(e.host_vttbr() & stage2::desc::OA_MASK);
        // The root (level 1, 40 bits) is two concatenated tables.
        let index = |level: u8| {
            let mask = if level == 1 { 0x3ff } else { 0x1ff };
            (ipa >> stage2::level_shift(level)) & mask
        };
        for l in 1..level {
            let d = e
                .mem
                .read_u64(table.wrapping_add_bytes(index(l).wrapping_mul(8)))
                .unwrap();
            table = PhysAddr::new(d & stage2::desc::OA_MASK);
        }
        let entry = table.wrapping_add_bytes(index(level).wrapping_mul(8));
        let old = e.mem.read_u64(entry).unwrap();
        assert!(e.mem.write_u64(entry, 0));
        (entry, old)
    }

    #[test]
    fn each_shard_knows_its_level_2_table_from_boot() {
        // 6 MiB across a GiB boundary: three shards, two level-2 tables.
        let e = boot_over(0x3fc0_0000, 1536);
        let table = |pa: u64| e.host_s2.table_at(&e.mem, Ipa::new(pa), 2);
        let shard_l2 = |pa: u64| {
            let (shard, _) = e.db.locate(Pfn::containing(PhysAddr::new(pa))).unwrap();
            e.db.lock_shard(shard).unwrap().host_l2()
        };
        for pa in [0x3fc0_0000u64, 0x3fe0_0000, 0x4000_0000] {
            assert!(table(pa).is_some());
            assert_eq!(shard_l2(pa), table(pa), "shard at {pa:#x}");
        }
        assert_ne!(table(0x3fe0_0000), table(0x4000_0000));
        // A one-page host unmap from there takes the page out of the map.
        let page = PhysAddr::new(0x4000_5000);
        let pg = e.db.lock_page(page).unwrap();
        assert!(pg.host_mapped() && e.host_translate(page).is_some());
        e.host_unmap(&pg, page);
        assert_eq!(
            e.host_translate(page),
            None,
            "the block split, the page gone"
        );
        // The window has a level-3 table now: the next page goes from the
        // shard's level-2 table, its neighbours stay. With the GiB's root
        // entry cut meanwhile, only that path can find the page.
        let next = PhysAddr::new(0x4000_6000);
        assert_eq!(e.host_translate(next).map(|t| t.level), Some(3));
        let (root, saved) = cut_host_table(&e, 0x4000_0000, 1);
        e.host_unmap(&pg, next);
        assert!(e.mem.write_u64(root, saved));
        assert_eq!(e.host_translate(next), None);
        assert!(e.host_translate(PhysAddr::new(0x4000_7000)).is_some());
    }

    #[test]
    fn the_boot_check_walks_every_gib_a_range_crosses() {
        // 6 MiB from 1 GiB - 4 MiB: its first and last 2 MiB windows are
        // whole shards, so only the walk over the two GiBs can find a
        // table missing.
        let e = boot_over(0x3fc0_0000, 1536);
        assert!(e.host_shared_tables_built());
        // Two level-2 tables; one level-3 table, for the window that holds
        // the engine's pages and the pool.
        assert_eq!(e.host_table_usage(), (3, 3));
        cut_host_table(&e, 0x4000_0000, 1);
        assert!(
            !e.host_shared_tables_built(),
            "the second GiB's table is gone"
        );
    }

    #[test]
    fn the_boot_check_stops_at_a_range_ending_on_a_gib() {
        // RAM up to 1 GiB exactly: nothing above it is built or looked for.
        let e = boot_over(0x3fc0_0000, 1024);
        assert!(e.host_shared_tables_built());
        assert_eq!(
            e.host_table_usage(),
            (2, 4),
            "one level-2, one level-3 table"
        );
        assert!(!e.host_s2.has_tables(&e.mem, Ipa::new(0x4000_0000), 2));
    }

    #[test]
    fn the_boot_check_reads_the_level_3_table_of_a_partial_window() {
        // 1 MiB: the range's only 2 MiB window is partly RAM, so its
        // level-3 table is one the check requires.
        let e = boot_over(0x3fc0_0000, 256);
        assert!(e.host_shared_tables_built());
        cut_host_table(&e, 0x3fc0_0000, 2);
        assert!(e.host_s2.has_tables(&e.mem, Ipa::new(0x3fc0_0000), 2));
        assert!(
            !e.host_shared_tables_built(),
            "the window's level-3 table is gone"
        );
    }

    #[test]
    fn init_rejects_inconsistent_layouts() {
        let spec = MachineSpec::default();
        let build =
            |reserved: &[(PhysAddr, u64)], pool: (PhysAddr, u64), devices: &[DeviceRange], mmio| {
                let ram = [(spec.page(0), spec.ram_pages)];
                let cfg = EngineConfig {
                    ram: &ram,
                    reserved,
                    host_s2_pool: pool,
                    host_devices: devices,
                    shard_shift: 21,
                    vm_s2: VM_S2,
                    host_s2: S2Config::DEFAULT,
                    guest_mmio: mmio,
                    caches: CachePolicy::MAINTAIN_ALL,
                };
                let mem = PhysMem::leak_host(spec.page(0), spec.ram_pages);
                Engine::new(cfg, NoopArch, mem, leaked_storage(&ram, &[])).err()
            };
        let pool = (spec.page(0), 8);
        assert_eq!(build(&[], pool, &[], GUEST_MMIO), None);
        assert_eq!(
            build(&[], (spec.page(1), 8), &[], GUEST_MMIO),
            Some(InitError::BadHostPool),
            "root misaligned"
        );
        assert_eq!(
            build(&[], (spec.page(0), 2), &[], GUEST_MMIO),
            Some(InitError::BadHostPool),
            "root only"
        );
        assert_eq!(
            build(&[(spec.page(4), 1)], pool, &[], GUEST_MMIO),
            Some(InitError::BadReserved),
            "overlap"
        );
        assert_eq!(
            build(&[(spec.page(200), 1)], pool, &[], GUEST_MMIO),
            Some(InitError::BadReserved),
            "not RAM"
        );
        assert_eq!(
            build(&[], pool, &[DeviceRange::rw(spec.page(20), 1)], GUEST_MMIO),
            Some(InitError::BadDevices),
            "device in RAM"
        );
        assert_eq!(build(&[], pool, &[], (5, 5)), Some(InitError::BadGuestMmio));
        assert_eq!(build(&[(spec.page(9), 3)], pool, &[], GUEST_MMIO), None);
    }

    #[test]
    fn init_rejects_a_cpu_record_out_of_place() {
        let spec = MachineSpec {
            cpus: 3,
            ..MachineSpec::default()
        };
        let build = |stats: &'static [CpuStats]| {
            let ram = [(spec.page(0), spec.ram_pages)];
            let storage = leaked_storage(&ram, stats);
            let mem = PhysMem::leak_host(spec.page(0), spec.ram_pages);
            let cfg = EngineConfig {
                ram: &ram,
                reserved: &[],
                host_s2_pool: (spec.page(0), 8),
                host_devices: &[],
                shard_shift: 21,
                vm_s2: VM_S2,
                host_s2: S2Config::DEFAULT,
                guest_mmio: GUEST_MMIO,
                caches: CachePolicy::MAINTAIN_ALL,
            };
            Engine::new(cfg, NoopArch, mem, storage).err()
        };
        let table = |indices: &[u32]| -> &'static [CpuStats] {
            Vec::leak(indices.iter().map(|&i| CpuStats::new(i)).collect())
        };
        assert_eq!(build(table(&[0, 1, 2])), None);
        assert_eq!(build(table(&[])), None);
        assert_eq!(
            build(table(&[0, 2, 1])),
            Some(InitError::BadCpuTable),
            "swapped"
        );
        assert_eq!(build(table(&[1])), Some(InitError::BadCpuTable), "one off");
    }
}
