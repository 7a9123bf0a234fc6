//! The EL2 exception vectors (the trap entry), the map self-test's probes,
//! the fatal path of an exception taken at EL2, and the way into EL1.
//!
//! A trap from a lower EL saves a [`TrapFrame`](crate::frame::TrapFrame) and calls
//! the dispatch into the core (`dispatch.rs`): `isola_host_hvc` for a host
//! `hvc`, `isola_handle_lower_sync` for anything else; this file names those
//! symbols only in assembly, so the entry depends on nothing above it.
//!
//! Invariants:
//! - `SP_EL2` is at the top of this CPU's stack whenever the CPU runs at EL1:
//!   [`enter_el1`] sets it, and every trap from EL1 pops exactly what it
//!   pushed before `eret`.
//! - A trap from a lower EL saves the registers its Rust handler's calling
//!   convention lets it clobber and restores them, edited only where the
//!   handler means to (results, `x0..=x6`); the handler preserves the rest
//!   itself. For `hvc` (ESR_EL2.EC 0x16, the hot path) the handler has
//!   LLVM's preserve_most convention, so that is `x0..=x8`, `x16..=x18` and
//!   `x30`; for every other trap it has the C convention (AAPCS64), so
//!   `x0..=x18` and `x30`.
//! - The EL2 image is built for `aarch64-unknown-none-softfloat`, so no
//!   engine code touches FP/SIMD registers: the host's `q0..=q31`, FPSR and
//!   FPCR stay in the CPU across every trap. The only engine code that
//!   touches them is assembly that says so with `.arch_extension`: the
//!   world switch (which saves the host's before loading a guest's and
//!   restores them after) and [`enter_el1`] (which zeroes them).
//! - An exception taken *at* EL2 is a bug in the engine: the vector moves to
//!   this CPU's emergency stack (the normal one may be the overflowed one),
//!   reports, and powers the machine off ([`crate::stop::fatal`]).

use core::arch::global_asm;

use crate::frame::FRAME_SIZE;
use crate::layout::{EMERGENCY_SLOT, MAX_CPUS};
use crate::sysreg::SPSR_EL1H_MASKED;

/// What a fatal vector was.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum FatalKind {
    /// Synchronous exception at EL2.
    El2Sync = 0,
    /// IRQ at EL2 (interrupts are masked; should never happen).
    El2Irq = 1,
    /// FIQ at EL2.
    El2Fiq = 2,
    /// SError at EL2.
    El2SError = 3,
    /// IRQ/FIQ/SError routed from a lower EL (the engine routes none).
    LowerAsync = 4,
}

global_asm!(
    r#"
.section .text.vectors, "ax"
.balign 2048
.global isola_vectors
isola_vectors:
    // Current EL with SP_EL0: the engine never runs on SP_EL0.
    .balign 0x80
    mov x0, #{EL2_SYNC}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{EL2_IRQ}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{EL2_FIQ}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{EL2_SERROR}
    b isola_fatal_entry
    // Current EL with SP_EL2: a probe of the map's self-test, or fatal.
    .balign 0x80
    b isola_el2_sync
    .balign 0x80
    mov x0, #{EL2_IRQ}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{EL2_FIQ}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{EL2_SERROR}
    b isola_fatal_entry
    // Lower EL, AArch64.
    .balign 0x80
    b isola_lower_sync
    .balign 0x80
    mov x0, #{LOWER_ASYNC}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{LOWER_ASYNC}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{LOWER_ASYNC}
    b isola_fatal_entry
    // Lower EL, AArch32 (a host EL0 task): same frame, same handler.
    .balign 0x80
    b isola_lower_sync
    .balign 0x80
    mov x0, #{LOWER_ASYNC}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{LOWER_ASYNC}
    b isola_fatal_entry
    .balign 0x80
    mov x0, #{LOWER_ASYNC}
    b isola_fatal_entry
    .balign 0x80

.section .text.isola_lower_sync, "ax"
isola_lower_sync:
    // The host's `hvc` (EC 0x16) is the hot path and gets the short frame:
    // its handler, `isola_host_hvc`, has LLVM's preserve_most convention
    // (Rust's "rust-cold"), so it preserves x9..x15 (and x19..x29) itself
    // and may clobber only x0..x8, x16..x18 and x30: those are saved here.
    // Every other trap saves x0..x18 and x30 (what the AAPCS64 lets its C
    // handler clobber). The engine has no FP/SIMD code at all (the image is
    // built softfloat), so q0..q31, FPSR and FPCR are never touched here.
    stp x0, x1, [sp, #-{FRAME}]!
    mrs x0, esr_el2
    lsr w0, w0, #26
    cmp w0, #{EC_HVC64}
    b.ne 1f
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    str x8, [sp, #64]
    stp x16, x17, [sp, #128]
    stp x18, x30, [sp, #144]
    mov x0, sp
    bl isola_host_hvc
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldr x8, [sp, #64]
    ldp x16, x17, [sp, #128]
    ldp x18, x30, [sp, #144]
    ldp x0, x1, [sp], #{FRAME}
    eret
    // Never reached: stops straight-line speculation past the eret.
    dsb nsh
    isb
1:  stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x30, [sp, #144]
    mov x0, sp
    bl isola_handle_lower_sync
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x30, [sp, #144]
    ldp x0, x1, [sp], #{FRAME}
    eret
    // Never reached: stops straight-line speculation past the eret.
    dsb nsh
    isb

// A synchronous exception at EL2. Only the map self-test's probes (below)
// may fault, and they are recognised without touching memory or the stack
// (the stack may be what faulted): a load or store probe by its address, an
// execute probe by the marker it leaves in x12. Such a fault resumes after
// the probe with x10 = 1; anything else is fatal. Clobbers x9, x10 only on
// the fatal path or for a probe.
.section .text.isola_el2_sync, "ax"
isola_el2_sync:
    mrs x9, elr_el2
    adr x10, isola_probe_load_insn
    cmp x9, x10
    b.eq 1f
    adr x10, isola_probe_store_insn
    cmp x9, x10
    b.eq 1f
    mrs x9, esr_el2
    lsr x9, x9, #26
    cmp x9, #0x21
    b.ne 2f
    movz x10, #{EXEC_MARK_LO}
    movk x10, #{EXEC_MARK_HI}, lsl #16
    cmp x12, x10
    b.ne 2f
    msr elr_el2, x30
    mov x10, #1
    eret
1:  add x9, x9, #4
    msr elr_el2, x9
    mov x10, #1
    eret
2:  mov x0, #{EL2_SYNC}
    b isola_fatal_entry

// The probes: x0 = address; return 1 if the access faulted, 0 if not.
.section .text.isola_probes, "ax"
.global isola_probe_load
isola_probe_load:
    mov x10, #0
isola_probe_load_insn:
    ldr x11, [x0]
    mov x0, x10
    ret
.global isola_probe_store
isola_probe_store:
    mov x10, #0
    ldr x11, [x0]
isola_probe_store_insn:
    str x11, [x0]
    mov x0, x10
    ret
// Branches to x0 (which must hold a `ret` if it is executable at all).
.global isola_probe_exec
isola_probe_exec:
    stp x29, x30, [sp, #-16]!
    mov x10, #0
    movz x12, #{EXEC_MARK_LO}
    movk x12, #{EXEC_MARK_HI}, lsl #16
    blr x0
    mov x12, xzr
    mov x0, x10
    ldp x29, x30, [sp], #16
    ret

// x0 = FatalKind. Switch to this CPU's emergency stack, gather the syndrome
// registers and report; never returns.
.section .text.isola_fatal_entry, "ax"
isola_fatal_entry:
    // x1 = this CPU's index, the first field of the record TPIDR_EL2
    // points to: read only once the address is seen to be in the records'
    // area (cpu_state.rs).
    mrs x1, tpidr_el2
    adrp x2, __cpus_start
    add x2, x2, :lo12:__cpus_start
    cmp x1, x2
    b.lo 2f
    adrp x2, __cpus_end
    add x2, x2, :lo12:__cpus_end
    cmp x1, x2
    b.hs 2f
    ldr x1, [x1]
    cmp x1, #{MAX_CPUS}
    b.hs 2f
    adrp x2, __emergency_start
    add x2, x2, :lo12:__emergency_start
    add x1, x1, #1
    mov x3, #{EMERGENCY_SLOT}
    madd x2, x1, x3, x2
    mov sp, x2
    mrs x1, esr_el2
    mrs x2, elr_el2
    mrs x3, far_el2
    mrs x4, spsr_el2
    bl isola_el2_fatal
2:  wfe
    b 2b

// isola_enter_el1(entry, x0 value, EL2 stack top): drop to EL1h at `entry`
// with interrupts masked, `x0` as given and every other register zero (the
// engine's values must not leak to the host).
.section .text.isola_enter_el1, "ax"
.global isola_enter_el1
isola_enter_el1:
    mov sp, x2
    msr elr_el2, x0
    mov x2, #{SPSR_EL1H}
    msr spsr_el2, x2
    mov x0, x1
    mov x1, xzr
    mov x2, xzr
    mov x3, xzr
    mov x4, xzr
    mov x5, xzr
    mov x6, xzr
    mov x7, xzr
    mov x8, xzr
    mov x9, xzr
    mov x10, xzr
    mov x11, xzr
    mov x12, xzr
    mov x13, xzr
    mov x14, xzr
    mov x15, xzr
    mov x16, xzr
    mov x17, xzr
    mov x18, xzr
    mov x19, xzr
    mov x20, xzr
    mov x21, xzr
    mov x22, xzr
    mov x23, xzr
    mov x24, xzr
    mov x25, xzr
    mov x26, xzr
    mov x27, xzr
    mov x28, xzr
    mov x29, xzr
    mov x30, xzr
    // The image is built without FP/SIMD; these are the only vector
    // instructions of this file.
    .arch_extension fp
    .arch_extension simd
    movi v0.2d, #0
    movi v1.2d, #0
    movi v2.2d, #0
    movi v3.2d, #0
    movi v4.2d, #0
    movi v5.2d, #0
    movi v6.2d, #0
    movi v7.2d, #0
    movi v8.2d, #0
    movi v9.2d, #0
    movi v10.2d, #0
    movi v11.2d, #0
    movi v12.2d, #0
    movi v13.2d, #0
    movi v14.2d, #0
    movi v15.2d, #0
    movi v16.2d, #0
    movi v17.2d, #0
    movi v18.2d, #0
    movi v19.2d, #0
    movi v20.2d, #0
    movi v21.2d, #0
    movi v22.2d, #0
    movi v23.2d, #0
    movi v24.2d, #0
    movi v25.2d, #0
    movi v26.2d, #0
    movi v27.2d, #0
    movi v28.2d, #0
    movi v29.2d, #0
    movi v30.2d, #0
    movi v31.2d, #0
    .arch_extension nosimd
    .arch_extension nofp
    eret
    dsb nsh
    isb
"#,
    FRAME = const FRAME_SIZE,
    EC_HVC64 = const isola::abort::ec::HVC64,
    SPSR_EL1H = const SPSR_EL1H_MASKED.bits(),
    MAX_CPUS = const MAX_CPUS,
    EMERGENCY_SLOT = const EMERGENCY_SLOT,
    EL2_SYNC = const FatalKind::El2Sync as u64,
    EL2_IRQ = const FatalKind::El2Irq as u64,
    EL2_FIQ = const FatalKind::El2Fiq as u64,
    EL2_SERROR = const FatalKind::El2SError as u64,
    LOWER_ASYNC = const FatalKind::LowerAsync as u64,
    EXEC_MARK_LO = const EXEC_MARK & 0xffff,
    EXEC_MARK_HI = const EXEC_MARK >> 16,
);

/// The value an execute probe leaves in x12 while it branches.
const EXEC_MARK: u64 = 0x150_1a7e;

unsafe extern "C" {
    fn isola_probe_load(addr: u64) -> u64;
    fn isola_probe_store(addr: u64) -> u64;
    fn isola_probe_exec(addr: u64) -> u64;
}

/// One access of the map self-test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Load 8 bytes.
    Load,
    /// Load 8 bytes and store them back (the value is unchanged if the
    /// store is allowed).
    Store,
    /// Branch to the address (which must hold a `ret` instruction, or be
    /// expected not to execute).
    Exec,
}

/// Whether `probe` at `addr` faults at EL2.
///
/// # Safety
/// Only on the boot CPU during bring-up (the vector recognises the probe by
/// its address, not by CPU). `addr` must be 8-byte aligned; for `Store` no
/// other agent may write it meanwhile (the probe writes back what it read);
/// for `Exec` the address must either fault or hold a `ret`.
pub unsafe fn probe_faults(probe: Probe, addr: u64) -> bool {
    // SAFETY: forwarded from this function's contract; the probes touch only
    // `addr` (and x9-x12, which they declare as scratch through the C ABI).
    let r = unsafe {
        match probe {
            Probe::Load => isola_probe_load(addr),
            Probe::Store => isola_probe_store(addr),
            Probe::Exec => isola_probe_exec(addr),
        }
    };
    r != 0
}

unsafe extern "C" {
    fn isola_enter_el1(entry: u64, x0: u64, stack_top: u64) -> !;
}

/// Drops this CPU to EL1h at `entry` with `x0 = arg`, resetting the EL2
/// stack to `stack_top`.
///
/// # Safety
/// The EL2 state for running the host (HCR_EL2, Stage-2, traps, vectors)
/// must be configured on this CPU; `stack_top` must be this CPU's stack top;
/// nothing on the current EL2 stack may be needed again.
pub unsafe fn enter_el1(entry: u64, arg: u64, stack_top: u64) -> ! {
    // SAFETY: forwarded from this function's contract.
    unsafe { isola_enter_el1(entry, arg, stack_top) }
}

/// Rust side of the fatal vectors: reports the syndrome and powers off.
#[unsafe(no_mangle)]
extern "C" fn isola_el2_fatal(kind: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    crate::stop::fatal(format_args!(
        "fatal exception at EL2 (kind {kind}, ESR_EL2 {esr:#x}, ELR_EL2 {elr:#x}, FAR_EL2 {far:#x}, SPSR_EL2 {spsr:#x})"
    ))
}
