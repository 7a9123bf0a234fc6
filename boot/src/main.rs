//! isola's EL2 image for QEMU virt: bring-up of every CPU at EL2, the EL2
//! stage-1 map, the console, PSCI, and the host deprivileged to EL1.
//!
//! Boot sequence (docs/boot.md has the whole story and the memory map):
//! 1. `_start` (`entry.rs`; boot CPU, EL2, MMU off): stack of CPU 0,
//!    `TPIDR_EL2` = CPU 0's record, vectors, bss zeroed, every CPU's record
//!    built (`cpu_state.rs`), a bootstrap map (1 GiB blocks) so Rust runs
//!    with caches on, then `isola_boot_main` (`bringup.rs`).
//! 2. `isola_boot_main`: read QEMU's device tree, build and install the
//!    real map, initialise the core, start every other CPU with PSCI
//!    `CPU_ON` at `isola_secondary_entry`, meet them at the bring-up
//!    barrier, wait until they are off again, hand the host a device tree
//!    without the engine's memory, and enter the host at EL1.
//! 3. `isola_secondary_entry` (any other CPU, `x0` = its index): stack,
//!    `TPIDR_EL2` (its record), vectors, the real map, then
//!    `isola_secondary_main`:
//!    during bring-up it reports in, waits at the barrier and turns itself
//!    off; afterwards (a host `CPU_ON` or a resume) it enters the host at
//!    EL1.
//!
//! Invariants:
//! - Nothing but the boot CPU runs until the map, the platform description and
//!   the core are set up; those are read-only afterwards.
//! - Every CPU's `TPIDR_EL2` holds the address of its record before any
//!   Rust code runs on it, and nothing writes it afterwards: the core's
//!   `CpuStats` in `link.ld`'s `.cpus` area, whose first field is the CPU's
//!   dense index as a `u64` (the boot CPU is 0), set by `_start` for every
//!   CPU before any Rust runs anywhere (the `isola-percpu` contract). The
//!   `hvc` path counts into it without a lookup (`cpu::this_record`).
//!
//! # Layers
//!
//! A module imports only modules on a lower row of this table (and the
//! crates below the image), never its own row or a higher one, so boot/ has
//! no import circle. Assembly names a symbol above it only by its linker
//! name (the vector's `bl isola_handle_lower_sync`, the entry's
//! `bl isola_boot_main`), never by a Rust import. xtask's tests check every
//! `crate::` path of boot/src against this table (`cargo test -p xtask
//! layers`).
//!
//! | row | modules | what they do |
//! |---|---|---|
//! | 7 | `bringup`, `dispatch` | the boot sequence; the dispatch of every host trap into the core |
//! | 6 | `relay` | the host's PSCI calls |
//! | 5 | `world`, `vectors`, `platform` | the world switch; the trap entry; the machine's description |
//! | 4 | `engine`, `entry`, `stop` | the core built at boot; the first instructions; reporting and powering off |
//! | 3 | `host`, `idregs`, `arch`, `mmu`, `psci`, `dma` | the host's EL2 controls; ID-register emulation; the core's architecture boundary; the EL2 map; firmware calls; the device policy applied and the SMMU brought up |
//! | 2 | `gic`, `pmu`, `timer`, `smmu`, `caches`, `inject`, `cpu` | the hardware blocks; carrying a result to the host; plain instructions |
//! | 1 | `sysreg`, `cpu_state`, `frame`, `layout`, `console` | typed registers; per-CPU records; the trap frame; the memory plan; the UART |
//!
//! A new hardware block (an SMMU) is a file of its own on row 2 (or higher,
//! if it needs `stop` or `psci`); what the host or a guest may do with it is
//! the core's decision, reached through `engine` and `dispatch`.
#![no_std]
// The host `hvc` handler's preserve_most convention (dispatch.rs).
#![feature(rust_cold_cc)]
#![no_main]
#![deny(unsafe_code)]

#[allow(
    unsafe_code,
    reason = "TLB invalidation, barriers and cache maintenance are instructions"
)]
mod arch;
#[allow(
    unsafe_code,
    reason = "reads the device tree and edits the host's copy in memory no Rust value owns; the entry points the assembly calls by name"
)]
mod bringup;
#[allow(
    unsafe_code,
    reason = "data- and instruction-cache maintenance are instructions"
)]
mod caches;
#[allow(unsafe_code, reason = "the UART's registers are memory-mapped I/O")]
mod console;
#[allow(
    unsafe_code,
    reason = "barriers, cache maintenance, `wfe` and `smc` are instructions; this CPU's record is reached through `TPIDR_EL2`"
)]
mod cpu;
#[allow(
    unsafe_code,
    reason = "the CPU records are a linker-script area the entry builds before Rust runs"
)]
mod cpu_state;
#[allow(
    unsafe_code,
    reason = "the entry the vector calls by name; runs a guest through the world switch"
)]
mod dispatch;
#[allow(
    unsafe_code,
    reason = "the device scan is written once at boot, read everywhere after; reads PCI config space and wakes the GIC's redistributors through their registers"
)]
mod dma;
#[allow(
    unsafe_code,
    reason = "carves the core's storage out of the engine's own RAM; writes VTTBR_EL2/VTCR_EL2"
)]
mod engine;
#[allow(
    unsafe_code,
    reason = "the image's first instructions, and the bootstrap table they load"
)]
mod entry;
mod frame;
#[allow(unsafe_code, reason = "writes the GIC's EL2 system registers")]
mod gic;
#[allow(
    unsafe_code,
    reason = "writes the EL2 controls that shape what the host may do"
)]
mod host;
#[allow(
    unsafe_code,
    reason = "emulates the host's ID-register reads and its callee-saved-write stub"
)]
mod idregs;
#[allow(
    unsafe_code,
    reason = "writes the host's exception registers and the trap's return state"
)]
mod inject;
#[allow(unsafe_code, reason = "reads the linker's section symbols")]
mod layout;
#[allow(
    unsafe_code,
    reason = "writes the EL2 stage-1 tables and installs them"
)]
mod mmu;
#[allow(
    unsafe_code,
    reason = "the platform description is written once at boot, read everywhere after"
)]
mod platform;
#[allow(unsafe_code, reason = "writes the PMU's counter enables")]
mod pmu;
#[allow(unsafe_code, reason = "names the warm entry, an assembly symbol")]
mod psci;
mod relay;
#[allow(
    unsafe_code,
    reason = "the SMMU's registers are memory-mapped I/O; its tables and queues are engine memory no Rust value owns"
)]
mod smmu;
mod stop;
#[allow(unsafe_code, reason = "reads and writes system registers")]
mod sysreg;
mod timer;
#[allow(
    unsafe_code,
    reason = "the exception vectors and the probes of the map self-test"
)]
mod vectors;
#[allow(
    unsafe_code,
    reason = "the world switch loads and saves a guest's registers"
)]
mod world;
