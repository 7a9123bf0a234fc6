//! Building an engine on the host, for tests, loom models and benchmarks
//! (hosted targets only: it leaks heap allocations to stand in for the
//! storage the EL2 image carves out of its own memory).

extern crate std;

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::arch::Arch;
use crate::engine::{DeviceRange, Engine, EngineConfig, EngineStorage, ReadOnly};
use crate::handover::CachePolicy;
use crate::mem::PhysMem;
use crate::ownership::{PageDb, PageRecord, Shard};
use crate::stage2::S2Config;
use crate::stats::CpuStats;
use crate::vm::VmSlot;
use std::vec::Vec;

/// The shape of a test machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineSpec {
    /// First byte of RAM.
    pub ram_base: u64,
    /// Pages of RAM.
    pub ram_pages: u64,
    /// The first `engine_pages` of RAM are the engine's: the host Stage-2
    /// table reserve (its root first).
    pub engine_pages: u64,
    /// Size of the VM table.
    pub vm_slots: usize,
    /// log2 of the shard size.
    pub shard_shift: u32,
    /// Physical CPUs (one record of event counters each).
    pub cpus: usize,
    /// How the machine's caches behave (test machines maintain everything).
    pub caches: CachePolicy,
}

/// Guest MMIO window of test machines (QEMU `virt`-like: below RAM).
pub const GUEST_MMIO: (u64, u64) = (0x0900_0000, 0x0a00_0000);
/// The one device page test hosts may access (a UART).
pub const HOST_UART: u64 = 0x0900_0000;
/// A redistributor test hosts may access as the EL2 image gives it: its
/// `RD_base` frame (16 pages from here) read-only, its `SGI_base` frame (the
/// next 16) read-write.
pub const HOST_GICR_RD: u64 = 0x080a_0000;
/// Stage-2 shape of test VMs: 40-bit IPA from level 0, so the root is one
/// page and the tables below it are at shifts 39, 30 and 21.
pub const VM_S2: S2Config = match S2Config::new(40, 0) {
    Some(c) => c,
    None => S2Config::DEFAULT,
};

impl Default for MachineSpec {
    /// 96 pages at 0x4000_0000, 8 engine pages, 4 VM slots, 2 MiB shards,
    /// 4 CPUs:
    /// small enough that random addresses hit interesting pages.
    fn default() -> Self {
        Self {
            ram_base: 0x4000_0000,
            ram_pages: 96,
            engine_pages: 8,
            vm_slots: 4,
            shard_shift: 21,
            cpus: 4,
            caches: CachePolicy::MAINTAIN_ALL,
        }
    }
}

impl MachineSpec {
    /// Address of RAM page `i`.
    pub fn page(&self, i: u64) -> PhysAddr {
        PhysAddr::new(self.ram_base.wrapping_add(i.wrapping_mul(PAGE_SIZE)))
    }

    /// Builds the engine (leaking its storage and "RAM").
    ///
    /// # Panics
    ///
    /// If the spec is inconsistent (test setup error).
    #[allow(
        clippy::expect_used,
        clippy::panic,
        reason = "builds test machines for tests and benches only: an inconsistent spec is a test bug, and the panic names it"
    )]
    pub fn build<A: Arch>(&self, arch: A) -> Engine<A> {
        let ram = [(PhysAddr::new(self.ram_base), self.ram_pages)];
        let (nshards, nrecords) = PageDb::requirements(&ram, self.shard_shift).expect("RAM layout");
        let shards: &'static [Shard] = Vec::leak((0..nshards).map(|_| Shard::new()).collect());
        let records: &'static mut [PageRecord] = Vec::leak(std::vec![PageRecord::HOST; nrecords]);
        let vms: &'static [VmSlot] = Vec::leak((0..self.vm_slots).map(|_| VmSlot::new()).collect());
        let stats: &'static [CpuStats] = Vec::leak(
            (0..self.cpus)
                .map(|i| CpuStats::new(i.try_into().expect("cpus")))
                .collect(),
        );
        let mem = PhysMem::leak_host(PhysAddr::new(self.ram_base), self.ram_pages);
        self.build_on(
            arch,
            mem,
            EngineStorage {
                shards,
                records,
                vms,
                stats,
            },
        )
    }

    /// Builds the engine on RAM (`mem`, covering this spec's RAM) and tables
    /// (`storage`, sized with [`PageDb::requirements`], `vm_slots` and `cpus`) that
    /// the caller provides: for a caller that boots many engines and frees
    /// their storage itself (the exhaustive exploration), where
    /// [`MachineSpec::build`] would leak it.
    ///
    /// # Panics
    ///
    /// If the spec or the storage is inconsistent (test setup error).
    #[allow(
        clippy::panic,
        reason = "builds test machines for tests only: an inconsistent spec is a test bug, and the panic names it"
    )]
    pub fn build_on<A: Arch>(&self, arch: A, mem: PhysMem, storage: EngineStorage) -> Engine<A> {
        let ram = [(PhysAddr::new(self.ram_base), self.ram_pages)];
        let devices = [
            DeviceRange::rw(PhysAddr::new(HOST_UART), 1),
            DeviceRange {
                base: PhysAddr::new(HOST_GICR_RD),
                pages: 32,
                read_only: ReadOnly::Frames {
                    every: 32,
                    first: 16,
                },
            },
        ];
        let cfg = EngineConfig {
            ram: &ram,
            reserved: &[],
            host_s2_pool: (PhysAddr::new(self.ram_base), self.engine_pages),
            host_devices: &devices,
            shard_shift: self.shard_shift,
            vm_s2: VM_S2,
            host_s2: S2Config::DEFAULT,
            guest_mmio: GUEST_MMIO,
            caches: self.caches,
        };
        match Engine::new(cfg, arch, mem, storage) {
            Ok(e) => e,
            Err(e) => panic!("test machine: {e:?}"),
        }
    }
}

/// The StreamID of the simulated host device ([`SimArch`], [`dma`]).
pub const DMA_STREAM: u64 = 0x8;

/// How many translations [`SimArch`]'s IOMMU caches (oldest replaced first).
pub const SIM_IOTLB_ENTRIES: usize = 64;

struct IoTlb {
    /// Cached page addresses (identity translations of the host's Stage-2).
    pages: [Option<u64>; SIM_IOTLB_ENTRIES],
    next: usize,
    faults: [u64; 3],
}

/// An `Arch` for the spec tests: no instructions (like
/// [`crate::arch::NoopArch`]), but a model of the host's IOMMU. Its TLB
/// caches every translation a DMA of the host's device ([`dma`]) walks from
/// the host's Stage-2 (the tables the real SMMU shares) and keeps it until
/// [`Arch::dma_invalidate_host`] drops it, as QEMU's SMMU does; so an engine
/// that forgets the invalidation leaves the page reachable by DMA, and the
/// spec's DMA properties see it.
pub struct SimArch {
    tlb: isola_sync::Mutex<IoTlb>,
    /// Every request, logged as [`crate::arch::RecordingArch`] does, so a
    /// test can also check break-before-make ([`SimArch::log`]).
    log: crate::arch::RecordingArch,
}

impl Default for SimArch {
    fn default() -> Self {
        Self::new()
    }
}

impl SimArch {
    /// An empty IOMMU.
    pub fn new() -> Self {
        Self {
            tlb: isola_sync::Mutex::new(IoTlb {
                pages: [None; SIM_IOTLB_ENTRIES],
                next: 0,
                faults: [0; 3],
            }),
            log: crate::arch::RecordingArch::new(),
        }
    }

    /// The requests the engine made, in order, since the log was last
    /// cleared (it holds [`crate::arch::RECORD_CAPACITY`], then counts
    /// overflow).
    pub fn log(&self) -> &crate::arch::RecordingArch {
        &self.log
    }

    /// The pages the IOMMU's TLB holds a translation for.
    pub fn cached(&self) -> Vec<u64> {
        self.tlb.lock().pages.iter().flatten().copied().collect()
    }
}

impl Arch for SimArch {
    fn tlbi_ipa(&self, vmid: crate::arch::Vmid, ipa: crate::addr::Ipa) {
        self.log.tlbi_ipa(vmid, ipa);
    }
    fn tlbi_vmid(&self, vmid: crate::arch::Vmid) {
        self.log.tlbi_vmid(vmid);
    }
    fn tlbi_all(&self) {
        self.log.tlbi_all();
    }
    fn dsb_ish(&self) {
        self.log.dsb_ish();
    }
    fn isb(&self) {
        self.log.isb();
    }
    fn clean_dcache_page(&self, pa: PhysAddr) {
        self.log.clean_dcache_page(pa);
    }
    fn clean_dcache_page_pou(&self, pa: PhysAddr) {
        self.log.clean_dcache_page_pou(pa);
    }
    fn invalidate_icache_page(&self, pa: PhysAddr) {
        self.log.invalidate_icache_page(pa);
    }
    fn invalidate_icache_all(&self) {
        self.log.invalidate_icache_all();
    }
    fn pte_written(&self, entry: PhysAddr, old: u64, new: u64) {
        self.log.pte_written(entry, old, new);
    }
    fn dma_invalidate_host(&self, pa: PhysAddr, pages: u64) {
        self.log.dma_invalidate_host(pa, pages);
        let end = pa.raw().saturating_add(pages.saturating_mul(PAGE_SIZE));
        for e in self.tlb.lock().pages.iter_mut() {
            if e.is_some_and(|p| (pa.raw()..end).contains(&p)) {
                *e = None;
            }
        }
    }
    fn dma_faults(&self) -> [u64; 3] {
        self.tlb.lock().faults
    }
}

/// A DMA access of the host's device to the 64-bit word at `pa`, through
/// `e`'s simulated IOMMU: a cached translation if there is one, else a walk
/// of the host's Stage-2 (cached on success). `Ok(value read, or 0 for a
/// write)`, or `Err(())` if the IOMMU refused it (counted, as the engine's
/// `Accounting(Dma)` reports). Only RAM is reachable by this device.
#[allow(
    clippy::result_unit_err,
    reason = "a refused DMA has no more to say than that it was refused"
)]
pub fn dma(e: &Engine<SimArch>, pa: u64, write: Option<u64>) -> Result<u64, ()> {
    let page = pa & !PAGE_SIZE.wrapping_sub(1);
    let cached = e.arch().tlb.lock().pages.contains(&Some(page));
    let reachable = cached
        || e.host_translate(PhysAddr::new(pa)).is_some_and(|t| {
            let p = t.desc.perms();
            if write.is_some() { p.w } else { p.r }
        });
    let ram = e.mem().read_u64(PhysAddr::new(pa)).is_some() && pa.is_multiple_of(8);
    let mut tlb = e.arch().tlb.lock();
    if !reachable || !ram {
        let [n, ..] = tlb.faults;
        tlb.faults = [n.wrapping_add(1), DMA_STREAM, pa];
        return Err(());
    }
    if !cached {
        let at = tlb.next.checked_rem(SIM_IOTLB_ENTRIES).unwrap_or(0);
        if let Some(slot) = tlb.pages.get_mut(at) {
            *slot = Some(page);
        }
        tlb.next = tlb.next.wrapping_add(1);
    }
    drop(tlb);
    match write {
        Some(v) => {
            e.mem().write_u64(PhysAddr::new(pa), v);
            Ok(0)
        }
        None => Ok(e.mem().read_u64(PhysAddr::new(pa)).unwrap_or(0)),
    }
}
