//! loom models of the host Stage-2 edited by several CPUs at once, with no
//! lock for the whole Stage-2: each RAM edit under its page's shard lock,
//! each device mapping under the device-map lock, table pages from one
//! pool behind its own lock (`docs/ownership.md`, "The host Stage-2 without
//! a global lock").
//!
//! Every descriptor write the engine reports (`Arch::pte_written`) after
//! the machine is set up touches a loom `UnsafeCell` standing for that
//! descriptor word. loom tracks which writes happen before which (through
//! every lock the engine takes), so two CPUs writing one descriptor word
//! without a lock ordering them is a "Causality violation" in the
//! interleaving where it happens — the claim that distinct CPUs only write
//! distinct words, checked rather than argued. After the threads join, each
//! model checks the tables are exact: the host maps every page it may
//! access and no other, and no table page was lost or handed out twice.
//!
//! What loom cannot see: the walks' reads of descriptors (plain memory, not
//! loom objects; an interleaving point is a lock or atomic operation), and
//! the MMU's view (see `ownership.rs`). A read racing a write shows up here
//! only when the reader then writes (a lost update) or its result is wrong
//! in the final tables.
#![cfg(loom)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used,
    reason = "a loom model, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola::abi::{Exit, HostCall, Status, perms};
use isola::addr::{Ipa, PAGE_SIZE, PhysAddr};
use isola::arch::{Arch, Vmid};
use isola::engine::{Engine, EngineStorage, HostAbortAction};
use isola::hypercall::HostCallOutcome;
use isola::mem::PhysMem;
use isola::ownership::{PageDb, PageRecord, Shard};
use isola::stats::CpuStats;
use isola::testing::{HOST_GICR_RD, HOST_UART, MachineSpec};
use isola::vm::VmSlot;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Three 2 MiB shards in one 1 GiB window, so all three hang from one
/// level-2 table: shard 0 holds the host Stage-2 pool (16 pages: the
/// 2-page root and 14 tables) and the VMs' pools, so it is mapped page by
/// page; shards 1 and 2 are the host's alone, one 2 MiB block each.
const SPEC: MachineSpec = MachineSpec {
    ram_base: 0x4000_0000,
    ram_pages: 1536,
    engine_pages: 16,
    vm_slots: 2,
    shard_shift: 21,
    cpus: 4,
    caches: isola::handover::CachePolicy::MAINTAIN_ALL,
};
const IPA: u64 = 0x8000_0000;
const SHARD_PAGES: u64 = 512;

/// A descriptor word as loom sees it: only its writes matter, so the cell
/// holds nothing and its pointer is never dereferenced.
struct Word(loom::cell::UnsafeCell<()>);

// SAFETY: the cell's pointer is never dereferenced (`with_mut(|_| ())`
// only records the access with loom, which panics on two writes no lock
// orders); loom runs every model thread on one OS thread, so sharing the
// handle shares no data.
unsafe impl Sync for Word {}
// SAFETY: as for `Sync`: no data is reached through the cell.
unsafe impl Send for Word {}

/// The machine backend of these models: no maintenance, but every
/// descriptor write made once `armed` is set is a write to that word's
/// loom cell.
#[derive(Default)]
struct Shadow {
    armed: AtomicBool,
    words: std::sync::Mutex<HashMap<u64, Arc<Word>>>,
}

impl Shadow {
    fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }
}

impl Arch for Shadow {
    fn tlbi_ipa(&self, _: Vmid, _: Ipa) {}
    fn tlbi_vmid(&self, _: Vmid) {}
    fn tlbi_all(&self) {}
    fn dsb_ish(&self) {}
    fn isb(&self) {}
    fn clean_dcache_page(&self, _: PhysAddr) {}
    fn clean_dcache_page_pou(&self, _: PhysAddr) {}
    fn invalidate_icache_page(&self, _: PhysAddr) {}
    fn invalidate_icache_all(&self) {}
    fn dma_invalidate_host(&self, _: PhysAddr, _: u64) {}
    fn pte_written(&self, entry: PhysAddr, _old: u64, _new: u64) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        // The map is bookkeeping outside the model (a std lock, never
        // contended: loom runs one thread at a time); the cell in it is
        // the loom object.
        let word = Arc::clone(
            self.words
                .lock()
                .unwrap()
                .entry(entry.raw())
                .or_insert_with(|| Arc::new(Word(loom::cell::UnsafeCell::new(())))),
        );
        word.0.with_mut(|_| ());
    }
}

type E = &'static Engine<Shadow>;

/// A machine on `mem` (one window per model, reused by its executions, which
/// loom runs one after another: boot re-zeroes every table page it uses).
fn machine(mem: &'static OnceLock<PhysMem>) -> E {
    let mem = *mem.get_or_init(|| PhysMem::leak_host(SPEC.page(0), SPEC.ram_pages));
    let ram = [(SPEC.page(0), SPEC.ram_pages)];
    let (ns, nr) = PageDb::requirements(&ram, SPEC.shard_shift).unwrap();
    let storage = EngineStorage {
        shards: Vec::leak((0..ns).map(|_| Shard::new()).collect()),
        records: Vec::leak(vec![PageRecord::HOST; nr]),
        vms: Vec::leak((0..SPEC.vm_slots).map(|_| VmSlot::new()).collect()),
        stats: Vec::leak((0..SPEC.cpus as u32).map(CpuStats::new).collect()),
    };
    Box::leak(Box::new(SPEC.build_on(Shadow::default(), mem, storage)))
}

fn page(i: u64) -> u64 {
    SPEC.page(i).raw()
}

/// A host call (never a vCPU run); returns the status and `x1`.
fn call(e: E, cpu: u32, c: HostCall, a: [u64; 5]) -> (Status, u64) {
    let mut regs = [c as u64, a[0], a[1], a[2], a[3], a[4], 0];
    if let HostCallOutcome::Run(l) = e.host_call(cpu, &mut regs) {
        e.finish_run(l, Exit::WFI, &mut regs);
    }
    (Status::from_raw(regs[0] as i64).unwrap(), regs[1])
}

fn ok(e: E, cpu: u32, c: HostCall, a: [u64; 5]) -> u64 {
    let (s, r) = call(e, cpu, c, a);
    assert_eq!(s, Status::Success, "{c:?} on CPU {cpu}");
    r
}

/// A host Stage-2 fault on `pa` (a read, or a write), as the vector hands
/// it over.
fn fault(e: E, cpu: u32, pa: u64, write: bool) -> HostAbortAction {
    let esr = isola::abort::data_abort_esr(4, write, 0, false, false, 0b000111);
    e.host_abort(cpu, esr, pa, (pa >> 12) << 4)
}

/// The host Stage-2 is exact: every RAM page it maps is one the host may
/// access, mapped to itself, and every such page is mapped; no table page
/// was lost or handed out twice (the tables reachable from the root and
/// the pool's free pages add up to the pool).
fn host_tables_exact(e: E) {
    let mut mapped = HashMap::new();
    e.host_mappings(|ipa, d, level| {
        let size = isola::stage2::block_size(level);
        let mut off = 0;
        while off < size {
            let prev = mapped.insert(ipa.raw() + off, d.addr().raw() + off);
            assert_eq!(prev, None, "{:#x} mapped twice", ipa.raw() + off);
            off += PAGE_SIZE;
        }
    });
    e.for_each_page(|pa, rec| {
        let m = mapped.remove(&pa.raw());
        if rec.host_accessible() {
            assert_eq!(
                m,
                Some(pa.raw()),
                "host page {:#x} not mapped to itself",
                pa.raw()
            );
        } else {
            assert_eq!(
                m,
                None,
                "page {:#x} ({rec:?}) mapped for the host",
                pa.raw()
            );
        }
    });
    // What is left is device pages, each mapped to itself.
    for (ipa, pa) in mapped {
        assert!(!e.db().is_ram(PhysAddr::new(ipa)));
        assert_eq!(ipa, pa, "device page {ipa:#x}");
    }
    let (tables, free) = e.host_table_usage();
    let root = isola::stage2::S2Config::DEFAULT.root_pages();
    assert_eq!(
        tables + free + root,
        SPEC.engine_pages,
        "a host Stage-2 table page lost or used twice"
    );
}

fn model(f: impl Fn() + Sync + Send + 'static) -> usize {
    isola_loom_tests::model::exhaustive(f)
}

/// Loom's branch limit for the model that moves a whole shard before its
/// race: 512 record changes, each a store of the shard's published counts.
const LONG: usize = 4_000;

/// Two CPUs, each in its own shard, the two shards sharing one level-2
/// table (the shape of the scaling benchmark's rounds), both needing a
/// table from the shared pool: CPU 1 donates one page out of shard 1's
/// 2 MiB block (a split: the level-2 entry rewritten, break-before-make,
/// around a new level-3 table); CPU 2 reclaims a page of shard 2, whose
/// block went whole to a VM destroyed beforehand (a new level-3 table
/// installed into the empty level-2 entry). (A longer race, each CPU also
/// destroying a VM and reclaiming, ran past 20 minutes: every VM pool page
/// going back is a contended shard-0 lock.)
#[test]
fn two_shards_sharing_a_level2_table_edit_the_host_stage2_at_once() {
    static MEM: OnceLock<PhysMem> = OnceLock::new();
    let n = isola_loom_tests::model::exhaustive_long(LONG, || {
        let e = machine(&MEM);
        let a = ok(e, 0, HostCall::VmCreate, [page(16), 5, 1, 0, 0]);
        let b = ok(e, 0, HostCall::VmCreate, [page(21), 5, 1, 0, 0]);
        let p1 = page(SHARD_PAGES + 7);
        let p2 = page(2 * SHARD_PAGES);
        // Shard 2's block goes whole before the race (512 record changes
        // are 512 scheduling points, too many to interleave exhaustively).
        ok(
            e,
            0,
            HostCall::Donate,
            [b, p2, IPA, perms::R | perms::W, SHARD_PAGES],
        );
        ok(e, 0, HostCall::VmDestroy, [b, 0, 0, 0, 0]);
        assert_eq!(e.host_translate(PhysAddr::new(p2)), None);
        e.arch().arm();
        let t = loom::thread::spawn(move || {
            ok(e, 1, HostCall::Donate, [a, p1, IPA, perms::R | perms::W, 1]);
        });
        ok(e, 2, HostCall::Reclaim, [p2 + 5 * PAGE_SIZE, 0, 0, 0, 0]);
        t.join().unwrap();
        assert_eq!(
            e.host_translate(PhysAddr::new(p1 + PAGE_SIZE))
                .map(|t| t.level),
            Some(3),
            "shard 1's block split"
        );
        assert_eq!(e.host_translate(PhysAddr::new(p1)), None);
        assert_eq!(
            e.host_translate(PhysAddr::new(p2 + 5 * PAGE_SIZE))
                .map(|t| t.level),
            Some(3)
        );
        assert_eq!(e.host_translate(PhysAddr::new(p2)), None);
        host_tables_exact(e);
    });
    assert!(n > 1, "the two CPUs' calls interleave");
}

/// The one-page unmap that starts at the shard's level-2 table, racing
/// another edit of the same level-3 table: shard 1's block is split before
/// the race (a page donated to VM A), and a page of it went to VM B, since
/// destroyed. CPU 1 donates another page of shard 1 to A (its host unmap
/// reads the level-2 entry and writes only its own level-3 entry); CPU 2
/// reclaims B's page (its host map writes its own entry of the same
/// table). Both hold shard 1's lock for their edit, in either order.
#[test]
fn a_one_page_unmap_below_the_level2_table_races_a_map_in_its_table() {
    static MEM: OnceLock<PhysMem> = OnceLock::new();
    let n = isola_loom_tests::model::exhaustive_long(LONG, || {
        let e = machine(&MEM);
        let a = ok(e, 0, HostCall::VmCreate, [page(16), 5, 1, 0, 0]);
        let b = ok(e, 0, HostCall::VmCreate, [page(21), 5, 1, 0, 0]);
        let split = page(SHARD_PAGES + 8);
        let p1 = page(SHARD_PAGES + 7);
        let lent = page(SHARD_PAGES + 20);
        ok(
            e,
            0,
            HostCall::Donate,
            [a, split, IPA, perms::R | perms::W, 1],
        );
        ok(
            e,
            0,
            HostCall::Donate,
            [b, lent, IPA, perms::R | perms::W, 1],
        );
        ok(e, 0, HostCall::VmDestroy, [b, 0, 0, 0, 0]);
        assert_eq!(
            e.host_translate(PhysAddr::new(p1)).map(|t| t.level),
            Some(3)
        );
        e.arch().arm();
        let t = loom::thread::spawn(move || {
            ok(
                e,
                1,
                HostCall::Donate,
                [a, p1, IPA + PAGE_SIZE, perms::R | perms::W, 1],
            );
        });
        ok(e, 2, HostCall::Reclaim, [lent, 0, 0, 0, 0]);
        t.join().unwrap();
        assert_eq!(e.host_translate(PhysAddr::new(p1)), None);
        assert_eq!(e.host_translate(PhysAddr::new(split)), None);
        assert_eq!(
            e.host_translate(PhysAddr::new(lent)).map(|t| t.level),
            Some(3)
        );
        assert_eq!(
            e.host_translate(PhysAddr::new(p1 - PAGE_SIZE))
                .map(|t| t.level),
            Some(3)
        );
        host_tables_exact(e);
    });
    assert!(n > 1, "the two CPUs' calls interleave");
}

/// A device fault and RAM edits at once: CPU 1 faults on the UART (its
/// 1 GiB window holds no RAM, so its tables are built on that first fault,
/// under the device-map lock) while CPU 2 donates a page of shard 1 and
/// takes it back (the split's table from the same pool).
#[test]
fn a_device_fault_and_a_ram_edit_at_once() {
    static MEM: OnceLock<PhysMem> = OnceLock::new();
    model(|| {
        let e = machine(&MEM);
        let a = ok(e, 0, HostCall::VmCreate, [page(16), 5, 1, 0, 0]);
        e.arch().arm();
        let p = page(SHARD_PAGES + 9);
        let t = loom::thread::spawn(move || fault(e, 1, HOST_UART, true));
        ok(e, 2, HostCall::Donate, [a, p, IPA, perms::R, 1]);
        ok(e, 2, HostCall::VmDestroy, [a, 0, 0, 0, 0]);
        ok(e, 2, HostCall::Reclaim, [p, 0, 0, 0, 0]);
        assert_eq!(t.join().unwrap(), HostAbortAction::Retry);
        assert!(e.host_translate(PhysAddr::new(HOST_UART)).is_some());
        host_tables_exact(e);
    });
}

/// Two CPUs' first faults on two device pages whose 1 GiB window holds no
/// RAM and nothing yet: both need its level-2 table (and each its own
/// level-3 table). Under the device-map lock one builds it and the other
/// uses it. With the core's `planted-bug-host-device-unlocked` feature (the
/// path without that lock) this model fails: both CPUs write the window's
/// level-1 entry ("Causality violation"), and in some orders one fault's
/// table, with its mapping, is lost and a table page leaks.
#[test]
fn two_device_faults_build_their_shared_tables_once() {
    static MEM: OnceLock<PhysMem> = OnceLock::new();
    model(|| {
        let e = machine(&MEM);
        e.arch().arm();
        let t = loom::thread::spawn(move || fault(e, 1, HOST_UART, true));
        let gicr = fault(e, 2, HOST_GICR_RD, false);
        assert_eq!(t.join().unwrap(), HostAbortAction::Retry);
        assert_eq!(gicr, HostAbortAction::Retry);
        assert!(e.host_translate(PhysAddr::new(HOST_UART)).is_some());
        assert!(e.host_translate(PhysAddr::new(HOST_GICR_RD)).is_some());
        host_tables_exact(e);
    });
}
