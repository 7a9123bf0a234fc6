//! The portable core (`isola::Engine`) in the EL2 image: building it from
//! the device tree at boot, and the host's Stage-2 on each CPU. The traps
//! that enter it are `dispatch.rs`'s. Every decision is the core's; this
//! module only carves the memory and sets the registers the core needs.
//!
//! Invariants:
//! - The engine is built once, by the boot CPU, before any other CPU starts,
//!   and is shared read-only (`&Engine`, which is `Sync`) afterwards.
//! - Its storage (page records, shards) is carved from the engine's own RAM
//!   (`[image end, CARVEOUT_END)`) by a bump allocator that runs only then;
//!   the whole carve-out except the host Stage-2 pool is declared reserved
//!   (engine-owned), and the pool is handed to the core, which takes it.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;

use isola::addr::PhysAddr;
use isola::engine::{DeviceRange, Engine, EngineConfig, EngineStorage};
use isola::mem::PhysMem;
use isola::ownership::{PageDb, PageRecord, Shard};
use isola::stage2::S2Config;
use isola::stats::CpuStats;
use isola::vm::VmSlot;
use isola_fdt::Platform;
use isola_sync::atomic::{AtomicBool, Ordering};

use crate::arch::El2Arch;
use crate::console::say;
use crate::layout::{CARVEOUT_BASE, CARVEOUT_END, Sections};
use crate::sysreg::{ID_AA64MMFR0_EL1, Readable, VTCR_EL2, VTTBR_EL2, Value, write_isb};
use crate::{caches, cpu_state, dma, gic, idregs};

/// Page size.
const PAGE: u64 = 4096;
/// Ownership shards of 2 MiB: fine-grained locks for many CPUs.
const SHARD_SHIFT: u32 = 21;
/// Most VMs (live or awaiting reclaim): the core's limit (`vm::MAX_SLOTS`,
/// one 8-bit VMID per slot), so the VM test can run 64 VMs on 32 CPUs and
/// over 1000 vCPUs on 512.
const VM_SLOTS: usize = isola::vm::MAX_SLOTS;
/// Guest IPAs at and above 3 GiB up to 4 GiB are the guests' MMIO window.
const GUEST_MMIO: (u64, u64) = (0xC000_0000, 0x1_0000_0000);
/// Shape of the host's and every VM's Stage-2 (one VTCR_EL2 for all).
const S2: S2Config = S2Config::DEFAULT;

struct EngineCell(UnsafeCell<MaybeUninit<Engine<El2Arch>>>);
// SAFETY: written once by the boot CPU in `init` before `READY` is set and
// before any other CPU starts; only shared references exist afterwards.
unsafe impl Sync for EngineCell {}
static ENGINE: EngineCell = EngineCell(UnsafeCell::new(MaybeUninit::uninit()));
static READY: AtomicBool = AtomicBool::new(false);

/// The engine, once [`init`] has built it.
pub fn engine() -> Option<&'static Engine<El2Arch>> {
    // Acquire: pairs with the Release in `init`.
    if !READY.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: `READY` is set only after the cell was initialised, and it is
    // never written again.
    Some(unsafe { (*ENGINE.0.get()).assume_init_ref() })
}

/// The engine, from a trap taken from the host: [`engine`] without the
/// check, for the hypercall's hot path.
///
/// Sound because a trap from a lower EL can reach the host vector only on a
/// CPU that entered the host, and every CPU enters the host through
/// `bringup::enter_host`, which calls [`install_host_stage2`] first: that
/// read `READY` with Acquire on this CPU and found it set (or the CPU
/// stopped), so the cell is initialised and its contents are visible here
/// (program order after that Acquire). Guests trap to the world switch's
/// own vectors, never here.
#[inline(always)]
pub fn engine_of_trap() -> &'static Engine<El2Arch> {
    // SAFETY: see above: this CPU observed `READY` (Acquire) before it
    // first left EL2, and the cell is never written again.
    unsafe { (*ENGINE.0.get()).assume_init_ref() }
}

/// A bump allocator over the engine's free RAM, used only by `init`.
struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    fn take(&mut self, bytes: u64, align: u64) -> Result<u64, &'static str> {
        let start = self
            .next
            .checked_add(align.wrapping_sub(1))
            .ok_or("carve-out overflow")?
            & !align.wrapping_sub(1);
        let end = start.checked_add(bytes).ok_or("carve-out overflow")?;
        if end > self.end {
            return Err("the engine carve-out is too small for the core's storage");
        }
        self.next = end;
        Ok(start)
    }
}

/// Builds the core from the platform: RAM, the carve-out, the host's devices.
pub fn init(p: &Platform, s: &Sections) -> Result<(), &'static str> {
    let mut ram = [(PhysAddr::new(0), 0_u64); isola_fdt::MAX_RAM];
    for (slot, r) in ram.iter_mut().zip(p.ram()) {
        *slot = (PhysAddr::new(r.base), r.size / PAGE);
    }
    let ram = ram.get(..p.ram_count).ok_or("RAM ranges")?;
    // The host's devices: what the device policy gives it (`dma.rs`,
    // `isola_fdt::devices`), decided from the tree before this call.
    let mut devices = [DeviceRange::rw(PhysAddr::new(0), 0); isola::engine::MAX_DEVICE_RANGES];
    let ndev = dma::host_ranges(&mut devices);
    let devices = devices.get(..ndev).ok_or("device ranges")?;
    let mut spans = [(PhysAddr::new(0), 0_u64); isola::engine::MAX_DEVICE_RANGES];
    for (slot, d) in spans.iter_mut().zip(devices) {
        *slot = (d.base, d.pages);
    }
    let spans = spans.get(..ndev).ok_or("device ranges")?;

    let (nshards, nrecords) = PageDb::requirements(ram, SHARD_SHIFT)
        .ok_or("RAM layout too large for the page database")?;
    let mut bump = Bump {
        next: s.image_end,
        end: CARVEOUT_END,
    };
    let shard_bytes = (core::mem::size_of::<Shard>() as u64)
        .checked_mul(nshards as u64)
        .ok_or("shards")?;
    let shards_at = bump.take(shard_bytes, core::mem::align_of::<Shard>() as u64)?;
    let record_bytes = (core::mem::size_of::<PageRecord>() as u64)
        .checked_mul(nrecords as u64)
        .ok_or("records")?;
    let records_at = bump.take(record_bytes, PAGE)?;
    let pool_pages = Engine::<El2Arch>::host_s2_pages_needed(S2, ram, spans);
    let pool_at = bump.take(
        pool_pages.checked_mul(PAGE).ok_or("pool")?,
        S2.root_pages().saturating_mul(PAGE),
    )?;
    let pool_end = pool_at.wrapping_add(pool_pages.wrapping_mul(PAGE));

    let vms_at = bump.take(
        (core::mem::size_of::<VmSlot>() as u64).saturating_mul(VM_SLOTS as u64),
        core::mem::align_of::<VmSlot>() as u64,
    )?;
    let vms_ptr = vms_at as *mut VmSlot;
    for i in 0..VM_SLOTS {
        // SAFETY: engine RAM just taken from the bump allocator, aligned for
        // `VmSlot`, referenced by nothing else.
        unsafe { vms_ptr.add(i).write(VmSlot::new()) };
    }
    // SAFETY: every element was initialised above; never freed.
    let vms: &'static [VmSlot] = unsafe { core::slice::from_raw_parts(vms_ptr, VM_SLOTS) };
    // The records `TPIDR_EL2` points to (`cpu_state`), one per CPU the
    // machine has: the dispatcher counts into its CPU's, `Accounting` reads
    // them here.
    let stats: &'static [CpuStats] = cpu_state::records()
        .get(..p.cpu_count.max(1))
        .ok_or("more CPUs than the image has records for")?;
    // The SMMU's stream table (bus 0: 256 StreamIDs), command queue (256
    // entries) and event queue (2048 entries: one failed DMA of a page can
    // fault once per access, 1024 times): engine memory, each aligned to
    // its size.
    let smmu_layout = isola_smmu::Layout {
        strtab: bump.take(64 << 8, 64 << 8)?,
        strtab_log2: 8,
        cmdq: bump.take(16 << 8, 16 << 8)?,
        cmdq_log2: 8,
        eventq: bump.take(32 << 11, 32 << 11)?,
        eventq_log2: 11,
    };
    let shards_ptr = shards_at as *mut Shard;
    for i in 0..nshards {
        // SAFETY: `[shards_at, shards_at + shard_bytes)` is engine RAM just
        // taken from the bump allocator (mapped read-write, aligned for
        // `Shard`, referenced by nothing else).
        unsafe { shards_ptr.add(i).write(Shard::new()) };
    }
    // SAFETY: every element was initialised above; the memory is never freed
    // or otherwise accessed.
    let shards: &'static [Shard] = unsafe { core::slice::from_raw_parts(shards_ptr, nshards) };
    // SAFETY: as above: engine RAM, aligned (page), zeroed here before the
    // reference is made (a zero record is a valid `u32` newtype), unique.
    let records: &'static mut [PageRecord] = unsafe {
        core::ptr::write_bytes(records_at as *mut u8, 0, record_bytes as usize);
        core::slice::from_raw_parts_mut(records_at as *mut PageRecord, nrecords)
    };

    let reserved = [
        (
            PhysAddr::new(CARVEOUT_BASE),
            pool_at.saturating_sub(CARVEOUT_BASE) / PAGE,
        ),
        (
            PhysAddr::new(pool_end),
            (CARVEOUT_END.saturating_sub(pool_end)) / PAGE,
        ),
    ];
    let cfg = EngineConfig {
        ram,
        reserved: &reserved,
        host_s2_pool: (PhysAddr::new(pool_at), pool_pages),
        host_devices: devices,
        shard_shift: SHARD_SHIFT,
        vm_s2: S2,
        host_s2: S2,
        guest_mmio: GUEST_MMIO,
        caches: caches::policy(dma::decision().fwb),
    };
    let limit = p.ram().iter().filter_map(|r| r.end()).max().unwrap_or(0);
    // SAFETY: the EL2 map (installed before this call) maps all RAM below
    // `limit` identically and read-write, for the rest of the run; the
    // engine's image, stacks and statics are in the carve-out, which is
    // declared reserved above and so never handed out.
    let mem = unsafe { PhysMem::identity(limit) };
    let storage = EngineStorage {
        shards,
        records,
        vms,
        stats,
    };
    let mut engine = Engine::new(cfg, El2Arch, mem, storage).map_err(|e| match e {
        isola::engine::InitError::Db(_) => "page database rejected the RAM layout",
        isola::engine::InitError::BadReserved => "bad reserved range",
        isola::engine::InitError::BadHostPool => "bad host Stage-2 pool",
        isola::engine::InitError::BadDevices => "bad host device ranges",
        isola::engine::InitError::BadVmTable => "bad VM table",
        isola::engine::InitError::BadCpuTable => "CPU records out of place",
        isola::engine::InitError::BadGuestMmio => "bad guest MMIO window",
        isola::engine::InitError::BadWindow => "memory window does not cover RAM",
    })?;
    // The world switch carries the virtual CPU interface (`world.rs`): the
    // host may fill as many list registers as the CPU has (up to the core's
    // slots). Guests see the ID registers the core derives from the CPU's.
    // Every CPU of the machine is the same model, so the boot CPU's values
    // are everyone's (a heterogeneous machine would pass the lowest common
    // value of each field here).
    engine.set_list_registers(gic::read_shape().map_or(0, |s| usize::from(s.lrs)));
    engine.set_guest_id_registers(idregs::raw_id_registers());
    let policy = engine.cache_policy();
    // The SMMU walks the host's Stage-2 from its root (the pool's first
    // pages), with the CPU's shape, capped at the SMMU's output size.
    let parange = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b101) as u8;
    let oas = dma::decision().smmu.map_or(parange, |(_, f)| f.oas);
    let shape = isola_smmu::S2Shape {
        t0sz: S2.vtcr_t0sz() as u8,
        sl0: S2.vtcr_sl0() as u8,
        ps: parange.min(oas),
    };
    dma::bring_up_smmu(smmu_layout, pool_at, shape)?;
    caches::enable_fwb(policy);
    // SAFETY: only the boot CPU runs, and `READY` is clear, so no reference
    // to the cell exists.
    unsafe { (*ENGINE.0.get()).write(engine) };
    // Release: publishes the engine to every CPU that later reads `READY`.
    READY.store(true, Ordering::Release);
    say!(
        "core ready: {nrecords} pages of RAM in {nshards} shards, host Stage-2 pool of {pool_pages} pages"
    );
    say!(
        "caches: HCR_EL2.FWB {} for guests, {} for the host, CTR_EL0.DIC {} IDC {}: {}",
        if policy.fwb_guest { "on" } else { "off" },
        if policy.fwb_host { "on" } else { "off" },
        u8::from(policy.dic),
        u8::from(policy.idc),
        match (policy.fwb_guest, policy.fwb_host) {
            (true, true) => "no page is cleaned when it changes hands",
            (true, false) => "a page is cleaned to PoC only when the host gains it",
            _ => "every page that changes hands is cleaned to PoC",
        }
    );
    Ok(())
}

/// VTCR_EL2 for the (shared) Stage-2 shape: its size and starting level, 4
/// KiB granule, write-back inner-shareable walks, PS = the implemented PA
/// size (capped at 48 bits), 8-bit VMIDs, RES1 bit 31.
fn vtcr() -> Value<VTCR_EL2::Register> {
    let parange = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b101);
    Value::new(&[
        VTCR_EL2::T0SZ.val(S2.vtcr_t0sz()),
        VTCR_EL2::SL0.val(S2.vtcr_sl0()),
        VTCR_EL2::IRGN0::NormalWBRAWA,
        VTCR_EL2::ORGN0::NormalWBRAWA,
        VTCR_EL2::SH0::Inner,
        VTCR_EL2::TG0::Granule4KB,
        VTCR_EL2::PS.val(parange),
        VTCR_EL2::RES1::SET,
    ])
}

/// Installs the host's Stage-2 on this CPU (`HCR_EL2.VM` turns it on when
/// the host is entered). Called whenever a CPU comes up: at boot, when the
/// host starts it, and when it resumes from a power-down suspend. Its TLB
/// may then hold anything (an entry of any VMID from before the power-down,
/// or reset-UNKNOWN contents), so every EL1&0 entry of every VMID is
/// invalidated on this CPU (`tlbi alle1`; EL2's own are invalidated by the
/// first instructions, `entry.rs`).
pub fn install_host_stage2() -> Result<(), &'static str> {
    let e = engine().ok_or("the core is not initialised")?;
    // SAFETY: the host's Stage-2 root is owned by the engine and valid for
    // the rest of the run; no lower EL runs on this CPU while it changes,
    // and the TLB is cleaned of stale entries of every VMID below.
    unsafe {
        write_isb!(VTCR_EL2, vtcr());
        write_isb!(VTTBR_EL2, Value::raw(e.host_vttbr()));
        core::arch::asm!(
            "tlbi alle1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        );
    }
    Ok(())
}
