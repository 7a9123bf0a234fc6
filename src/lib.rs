//! isola's portable engine core: page ownership, Stage-2 tables, VMs and
//! vCPUs, hypercall dispatch and the abort policy. `no_std`, no allocator,
//! no `unsafe` outside [`mem`]; everything runs under host `cargo test`.
//!
//! # Map
//!
//! | module | owns |
//! |---|---|
//! | [`addr`] | `PhysAddr`, `Ipa`, `Pfn` |
//! | [`arch`] | the [`arch::Arch`] trait (TLBI, barriers, cache maintenance), `RecordingArch`, the BBM checker |
//! | [`mem`] | the physical memory window (the only `unsafe`) |
//! | [`ownership`] | 4-byte page records in locked shards, exact counts |
//! | [`pool`] | free lists of donated pages |
//! | [`stage2`] | VMSAv8-64 Stage-2 tables, break-before-make |
//! | [`vm`], [`vcpu`] | the VM table, handles, vCPU contexts |
//! | [`engine`] | construction, the feature bits, the host's Stage-2 (kept exact: it is also the host's DMA view), host aborts, handing pages over as [`handover`] plans it (`Engine::settle`), observation |
//! | [`handover`] | the one place that decides what each ownership transition needs: the DMA view's invalidation, scrub, data- and instruction-cache maintenance (a pure table, below the engine that carries it out) |
//! | [`hypercall`] | every host and guest call, guest exits, check order (files by concern: dispatch, lifecycle, memory transitions, run and exits, accounting) |
//! | [`psci`] | guest PSCI: the per-vCPU power states, `CPU_ON`, `AFFINITY_INFO` (`src/hypercall/psci.rs`) |
//! | [`vgic`] | list registers the host gives a vCPU, what exits report of them and of the timer |
//! | [`sysreg`] | guest system-register traps: SGIs, read-as-zero groups, ID registers (`src/hypercall/sysreg.rs`) |
//! | [`abort`] | ESR decoding and the abort policy |
//! | [`stats`] | the per-CPU event counters `Accounting::Counter` reads |
//! | [`testing`] | building a test machine on the host |
//!
//! # For the EL2 image (`boot/`)
//!
//! 1. At boot, carve from the engine's own memory: `[Shard; n]`,
//!    `[PageRecord; ram_pages]`, `[VmSlot; vms]`, and have one
//!    [`stats::CpuStats`] per CPU, CPU `n`'s built as `CpuStats::new(n)` at
//!    position `n` (the EL2 image keeps them where `TPIDR_EL2` points and
//!    hands [`engine::Engine::dispatch`] the running CPU's) (`Shard::new`,
//!    `VmSlot::new` and `CpuStats::new` are `const`; size them with
//!    [`ownership::PageDb::requirements`]), a host Stage-2 reserve of
//!    [`engine::Engine::host_s2_pages_needed`] pages, and build an
//!    [`engine::Engine`] with an [`arch::Arch`] that executes instructions and
//!    [`mem::PhysMem::identity`]. Load `VTTBR_EL2` with
//!    [`engine::Engine::host_vttbr`] (VTCR: `T0SZ`/`SL0` from
//!    [`stage2::S2Config`], 4 KiB granule, inner-shareable WB walks).
//! 2. Host `hvc`: [`engine::Engine::host_call`] with `x0..=x6`. `Done`: return
//!    to the host. `Run(loaded)`: world-switch into the guest with
//!    `loaded.vttbr()` and the registers in `loaded.context()` (layout in
//!    [`vcpu`]); on every guest exit save them back and call
//!    [`engine::Engine::guest_exit`]; `Resume` re-enters, `ExitToHost(exit)`
//!    ends with [`engine::Engine::finish_run`], which fills the host's
//!    `x0..=x3`.
//! 3. Host Stage-2 abort: [`engine::Engine::host_abort`] with the CPU and ESR/FAR/HPFAR;
//!    `Retry` returns to the host, `InjectSea` injects an external abort.
//!
//! # Observation (for `src/spec/` and property tests)
//!
//! Read-only, always available: [`engine::Engine::for_each_page`] (owner,
//! state, peer of every page; bytes via [`engine::Engine::mem`]),
//! [`engine::Engine::for_each_vm`], [`engine::Engine::vm_mappings`] (walks the
//! VM's Stage-2: IPA → PA, perms, borrowed), [`engine::Engine::vcpu`] (state
//! and context: registers via [`vcpu::Context`]),
//! [`engine::Engine::host_translate`] / `host_mappings`,
//! [`engine::Engine::vm_usage`] (pool and table pages). Guest activity is
//! simulated with [`engine::Engine::guest_hvc`] and
//! [`engine::Engine::guest_access`] (a mapped access happens in memory, an
//! unmapped one takes the real abort path).
//!
//! Sizing facts the model needs: `VmCreate` uses `root_pages()` of the VM
//! Stage-2 shape from the pool at once (1 for [`testing::VM_S2`]), and the
//! run must start aligned to them; `VcpuCreate` uses 1 page; each Stage-2
//! table below the root costs 1 page the first time an IPA needs it and lives
//! until destroy (test machines: tables at shifts 39, 30, 21). A destroyed
//! VM's slot stays taken until its last page is reclaimed.
//!
//! # Planted bugs (to show tests have teeth)
//!
//! Cargo features, never for real builds:
//! `planted-bug-skip-scrub` (pages change hands without being zeroed),
//! `planted-bug-donate-keeps-host-mapping` (`Donate` leaves the host's
//! Stage-2 mapping), `planted-bug-cpu-on-keeps-registers` (a guest's
//! `CPU_ON` starts the vCPU with the registers it had when it went off),
//! `planted-bug-donate-keeps-dma-view` (`Donate` leaves the host's devices
//! able to reach the page: no SMMU invalidation),
//! `planted-bug-guest-unshare-skips-maintenance` (a guest's `Unshare` skips
//! the maintenance [`handover`] plans for it) and
//! `planted-bug-accounting-takes-shard-locks` (`Accounting` takes every
//! shard's lock, and `Sharing` every VM slot's, which the booted storm
//! catches). Run e.g.
//! `cargo test -p isola --features planted-bug-skip-scrub --test engine scenario`
//! and expect failures.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod abort;
/// The ABI this engine implements, re-exported for users of the core.
pub use isola_abi as abi;

pub mod addr;
pub mod arch;
pub mod engine;
pub mod handover;
pub mod hypercall;
/// Guest PSCI and guest system-register traps are guest calls
/// (`src/hypercall/`), kept at their own paths.
pub use hypercall::{psci, sysreg};
#[allow(
    unsafe_code,
    reason = "the physical memory window: the one place the core turns a physical address into memory it reads and writes (its invariants are in the module)"
)]
pub mod mem;
pub mod ownership;
pub mod pool;
pub mod spec;
pub mod stage2;
pub mod stats;
#[cfg(not(target_os = "none"))]
pub mod testing;
pub mod vcpu;
pub mod vgic;
pub mod vm;
