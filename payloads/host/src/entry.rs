//! The payload's first instructions on every CPU (stack, vectors, FP/SIMD on,
//! the stage-1 map, bss on the boot CPU) and its exception vectors.
//!
//! Invariants:
//! - Every exception the host takes outside the VM test (which installs its
//!   own probe vectors, `vms/probe.rs`) lands in [`host_exception`]: a
//!   synchronous external abort on a data read is the engine-probe's
//!   expected outcome and is noted and skipped; anything else ends the run.
//!   The exception is an IRQ from EL1h (offset 0x280 in both tables), which
//!   goes to the host's tick (`irq.rs`).
//! - `TPIDR_EL1` holds the CPU's index (0 for the boot CPU) from its first
//!   instructions on: the IRQ handler finds its counters with it.

use core::arch::{asm, global_asm};

use isola_layout::{HOST_PAYLOAD_STACK as STACK, MAX_CPUS};

use crate::console::emergency_line;

/// MAIR_EL1: attribute 0 Device-nGnRE, attribute 1 Normal write-back.
const MAIR: u64 = 0x04 | 0xff << 8;
/// TCR_EL1: T0SZ 25 (39-bit VA), write-back walks, inner shareable, 4 KiB
/// granule, no TTBR1 walks (EPD1), 40-bit IPS.
const TCR: u64 = 25 | 0b01 << 8 | 0b01 << 10 | 0b11 << 12 | 1 << 23 | 0b010 << 32;
/// SCTLR_EL1: RES1 bits, MMU, D-cache, SP alignment check, I-cache.
const SCTLR: u64 =
    (1 << 11 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 28 | 1 << 29) | 1 | 1 << 2 | 1 << 3 | 1 << 12;

/// The host's stage-1 map, 1 GiB blocks: devices, then RAM (2 GiB).
#[repr(C, align(4096))]
struct Table([u64; 512]);
static TABLE: Table = {
    let mut t = [0_u64; 512];
    let device = 1 | 1 << 10 | 1 << 53 | 1 << 54;
    let normal = 1 | 1 << 2 | 0b11 << 8 | 1 << 10;
    t[0] = device;
    t[1] = isola_layout::RAM_BASE | normal;
    t[2] = 0x8000_0000 | normal;
    Table(t)
};

global_asm!(
    r#"
.section .text.entry, "ax"
.global _start
_start:
    mov x19, x0
    mov x20, #0
    b 1f
.global host_secondary_entry
host_secondary_entry:
    mov x19, x0
    mov x20, x0
1:  cmp x20, #{MAX_CPUS}
    b.hs 3f
    adrp x1, __host_stacks
    add x1, x1, :lo12:__host_stacks
    add x2, x20, #1
    mov x3, #{STACK}
    madd x1, x2, x3, x1
    mov sp, x1
    adrp x1, host_vectors
    add x1, x1, :lo12:host_vectors
    msr vbar_el1, x1
    msr tpidr_el1, x20
    mov x1, #(3 << 20)
    msr cpacr_el1, x1
    ldr x1, ={MAIR}
    msr mair_el1, x1
    ldr x1, ={TCR}
    msr tcr_el1, x1
    adrp x1, {TABLE}
    add x1, x1, :lo12:{TABLE}
    msr ttbr0_el1, x1
    isb
    tlbi vmalle1
    dsb nsh
    isb
    ldr x1, ={SCTLR}
    msr sctlr_el1, x1
    isb
    cbnz x20, 2f
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
4:  cmp x1, x2
    b.hs 5f
    stp xzr, xzr, [x1], #16
    b 4b
5:  mov x0, x19
    bl host_main
2:  mov x0, x20
    bl host_secondary
3:  wfe
    b 3b
.ltorg

.section .text.vectors, "ax"
.balign 2048
host_vectors:
    .set host_vector, 0
    .rept 16
    .balign 0x80
    .if host_vector == 5
    b host_irq_entry
    .else
    b host_exception_entry
    .endif
    .set host_vector, host_vector + 1
    .endr
    .balign 0x80

host_exception_entry:
    sub sp, sp, #784
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x29, [sp, #144]
    str x30, [sp, #160]
    add x0, sp, #256
"#,
    save_q0_to_q31_at_x0!(),
    r#"
    bl host_exception
    add x0, sp, #256
"#,
    load_q0_to_q31_at_x0!(),
    r#"
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x29, [sp, #144]
    ldr x30, [sp, #160]
    add sp, sp, #784
    eret
"#,
    MAX_CPUS = const MAX_CPUS,
    STACK = const STACK,
    MAIR = const MAIR,
    TCR = const TCR,
    SCTLR = const SCTLR,
    TABLE = sym TABLE,
);

unsafe extern "C" {
    /// The warm entry of every other CPU (`x0` = its index), above.
    fn host_secondary_entry();
}

/// Physical address of the warm entry, for PSCI `CPU_ON`.
pub fn secondary_entry() -> u64 {
    host_secondary_entry as *const () as u64
}

macro_rules! sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading this EL1 system register has no side effect.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

/// FAR of the last SEA the host took, 0 if none.
pub static SEA_FAR: isola_sync::atomic::AtomicU64 = isola_sync::atomic::AtomicU64::new(0);
/// SEAs the host took (outside the VM test's own vectors).
pub static SEA_COUNT: isola_sync::atomic::AtomicU64 = isola_sync::atomic::AtomicU64::new(0);

/// Every exception the host takes lands here. A synchronous external abort
/// on a data read is the probe's expected outcome: note it and skip the
/// instruction. Anything else ends the run.
#[unsafe(no_mangle)]
extern "C" fn host_exception() {
    let esr = sysreg!("esr_el1");
    let far = sysreg!("far_el1");
    let elr = sysreg!("elr_el1");
    if esr >> 26 == 0x25 && esr & 0x3f == 0x10 {
        SEA_FAR.store(far, isola_sync::atomic::Ordering::Relaxed);
        SEA_COUNT.fetch_add(1, isola_sync::atomic::Ordering::Relaxed);
        // SAFETY: resuming after the aborted load (a 32-bit instruction);
        // its destination register just keeps a stale value.
        unsafe { asm!("msr elr_el1, {}", in(reg) elr.wrapping_add(4), options(nomem, nostack)) };
        return;
    }
    emergency_line(format_args!(
        "unexpected exception at EL1: ESR {esr:#x}, ELR {elr:#x}, FAR {far:#x}"
    ));
    emergency_line(format_args!("verdict: FAILED"));
    crate::calls::power_off();
}
