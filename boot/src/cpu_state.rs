//! What the engine keeps per physical CPU: one record per CPU in an
//! `isola-percpu` table, reached without a lock by the CPU it belongs to;
//! and [`records`], the core's record of each CPU (its index and its event
//! counters), which `TPIDR_EL2` points to.
//!
//! Invariants:
//! - The records are `link.ld`'s `.cpus` area (`MAX_CPUS` records of
//!   `isola_layout::ENGINE_CPU_RECORD` bytes, in the data mapping, not
//!   loaded with the image). `_start` (`entry.rs`) builds every one of them
//!   before any Rust runs on any CPU — zero, then record `n`'s index `n` —
//!   so from then on each is a valid `CpuStats::new(n)` with counts; nothing
//!   writes an index again, and a counter only through the core.
//! - CPU `n`'s `TPIDR_EL2` holds the address of record `n` from its first
//!   instruction on (`entry.rs` sets it before any Rust runs; nothing
//!   writes it afterwards). That is the `isola-percpu` contract (the
//!   record's first field is the index as a `u64`), and what lets the
//!   hypercall path count into its record with no lookup
//!   (`cpu::this_record`).
//! - A CPU touches only its own record ([`with_this`], which `isola-percpu`
//!   makes exclusive with the slot's flag), except through [`TABLE`]'s
//!   layout constants in assembly that runs on that same CPU after the Rust
//!   code that wrote the record returned (see `idregs.rs`).
//! - Everything that is this CPU's alone and outlives one exception belongs
//!   here, not in a `[_; MAX_CPUS]` array of its own: the next state to move
//!   in is which EL1 context is loaded on the CPU (the host's, or which
//!   vCPU's) once the world switch stops exchanging it on every exit. (The
//!   per-CPU event counters — exits by kind, calls by status, injected
//!   aborts — are the core's `isola::stats::CpuStats`: [`records`].)

use isola::stats::CpuStats;
use isola_layout::MAX_CPUS;
use isola_percpu::{PerCpu, PerCpuError, Slot};

unsafe extern "C" {
    /// `link.ld`'s `.cpus` area: every CPU's record, built by `_start`.
    #[link_name = "__cpus_start"]
    static RECORDS: [CpuStats; MAX_CPUS];
}

/// Every CPU's record of the core's counters, CPU `n`'s at position `n`
/// (the engine's table: `engine.rs` hands the core the first
/// `cpu_count`). `TPIDR_EL2` of CPU `n` is `&records()[n]` (the module's
/// invariants).
pub fn records() -> &'static [CpuStats; MAX_CPUS] {
    // SAFETY: the module's first invariant: the symbol is the start of
    // `MAX_CPUS` records of exactly `CpuStats`' size (asserted below), 64-byte
    // aligned (`link.ld`), mapped read-write for the whole run, and `_start`
    // built each as a valid `CpuStats` before any Rust code ran; they are
    // only ever shared (their counters are atomics), never freed.
    unsafe { &RECORDS }
}

/// Bytes from one CPU's record to the next: CPU `n`'s is at
/// `__cpus_start + n * RECORD_STRIDE` (the entry's assembly computes it).
pub const RECORD_STRIDE: usize = core::mem::size_of::<CpuStats>();

// The records are an array of `CpuStats` in `link.ld`'s area; `isola-percpu`
// reads the index at offset 0 of a record; the entry's `add` and `mov`
// immediates hold the stride.
const _: () = assert!(RECORD_STRIDE as u64 == isola_layout::ENGINE_CPU_RECORD);
const _: () = assert!(core::mem::align_of::<CpuStats>() <= 64);
const _: () = assert!(CpuStats::INDEX_OFFSET == 0);
const _: () = assert!(RECORD_STRIDE < 1 << 12 && RECORD_STRIDE.is_multiple_of(16));

/// The host's pending write of one of `x19..=x29`: what the EL2h stub
/// `isola_write_callee_saved` needs after the trap frame is restored
/// (`idregs.rs`). `repr(C)`: the stub reads it by offset.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CalleeSavedWrite {
    /// The host's return address (past the trapped instruction).
    pub elr: u64,
    /// The host's `SPSR_EL2`.
    pub spsr: u64,
    /// The value for the register.
    pub value: u64,
    /// Which register: `0..=10` for `x19..=x29`.
    pub reg: u64,
}

/// The aborts injected into the host in a row at one instruction and
/// address (`dispatch.rs` reports a host that loops on them).
#[derive(Clone, Copy, Debug, Default)]
pub struct AbortLoop {
    /// The host's `ELR_EL2` at the last one.
    pub elr: u64,
    /// Its `FAR_EL2`.
    pub far: u64,
    /// How many in a row.
    pub count: u64,
}

/// One CPU's record.
#[derive(Debug, Default)]
#[repr(C)]
pub struct CpuState {
    /// See [`CalleeSavedWrite`]. First, at offset 0 (the stub relies on it).
    pub callee_saved_write: CalleeSavedWrite,
    /// This CPU's GICv3 redistributor (`RD_base`, `gic::Redistributor`),
    /// found when the CPU first enters the host; 0 if none was found.
    pub redistributor: u64,
    /// The host's aborts in a row (see [`AbortLoop`]).
    pub abort_loop: AbortLoop,
}

impl CpuState {
    const fn new() -> Self {
        Self {
            callee_saved_write: CalleeSavedWrite {
                elr: 0,
                spsr: 0,
                value: 0,
                reg: 0,
            },
            redistributor: 0,
            abort_loop: AbortLoop {
                elr: 0,
                far: 0,
                count: 0,
            },
        }
    }
}

const _: () = assert!(core::mem::offset_of!(CpuState, callee_saved_write) == 0);

/// Every CPU's record.
pub static TABLE: PerCpu<CpuState> =
    PerCpu::from_slots([const { Slot::new(CpuState::new()) }; MAX_CPUS]);

/// Runs `f` on this CPU's record.
pub fn with_this<R>(f: impl FnOnce(&mut CpuState) -> R) -> Result<R, PerCpuError> {
    TABLE.with_mut(f)
}
