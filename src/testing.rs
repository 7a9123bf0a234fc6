//! Building an engine on the host, for tests, loom models and benchmarks
//! (hosted targets only: it leaks heap allocations to stand in for the
//! storage the EL2 image carves out of its own memory).

extern crate std;

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::arch::Arch;
use crate::engine::{Engine, EngineConfig, EngineStorage};
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
}

/// Guest MMIO window of test machines (QEMU `virt`-like: below RAM).
pub const GUEST_MMIO: (u64, u64) = (0x0900_0000, 0x0a00_0000);
/// The one device page test hosts may access (a UART).
pub const HOST_UART: u64 = 0x0900_0000;
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
        let stats: &'static [CpuStats] =
            Vec::leak((0..self.cpus).map(|_| CpuStats::new()).collect());
        let mem = PhysMem::leak_host(PhysAddr::new(self.ram_base), self.ram_pages);
        let devices = [(PhysAddr::new(HOST_UART), 1)];
        let cfg = EngineConfig {
            ram: &ram,
            reserved: &[],
            host_s2_pool: (PhysAddr::new(self.ram_base), self.engine_pages),
            host_devices: &devices,
            shard_shift: self.shard_shift,
            vm_s2: VM_S2,
            host_s2: S2Config::DEFAULT,
            guest_mmio: GUEST_MMIO,
        };
        match Engine::new(
            cfg,
            arch,
            mem,
            EngineStorage {
                shards,
                records,
                vms,
                stats,
            },
        ) {
            Ok(e) => e,
            Err(e) => panic!("test machine: {e:?}"),
        }
    }
}
