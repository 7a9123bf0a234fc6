//! The image's first instructions: the boot CPU's cold entry (`_start`),
//! every other CPU's warm entry (`isola_secondary_entry`), the report of a
//! failure before Rust can run, and turning the MMU on. Each hands over to
//! Rust in `bringup.rs` (`isola_boot_main`, `isola_secondary_main`), named here
//! only in assembly.
//!
//! Invariants:
//! - No Rust code runs on a CPU before its stack, `TPIDR_EL2` (the address
//!   of its record in `cpu_state::records()`, which holds its dense index:
//!   the `isola-percpu` contract), `VBAR_EL2` and a map with caches on are
//!   set up here; and none runs on any CPU before `_start` has built every
//!   CPU's record (zeroed, index first), with the bss.
//! - A CPU not at EL2, or with an index beyond the image's stacks, is
//!   reported on QEMU virt's UART with plain stores and parked.

use core::arch::global_asm;

use crate::layout::{MAX_CPUS, STACK_SLOT};
use crate::{console, cpu_state, mmu};

/// The bootstrap map's level-1 table: 0..1 GiB device, 1..2 GiB normal
/// read-write-execute (the image, its stacks and QEMU's device tree). Only
/// the boot CPU uses it, only until [`mmu::install`].
#[repr(C, align(4096))]
struct BootTable([u64; 512]);

/// Block descriptor bits: valid, AttrIndx 0 (device), AF, AP[1], XN.
const BOOT_DEVICE_BLOCK: u64 = 0x1 | 1 << 10 | 1 << 6 | 1 << 54;
/// Block descriptor bits: valid, AttrIndx 1 (normal), inner shareable, AF,
/// AP[1]; writable and executable (WXN is off in the bootstrap SCTLR).
const BOOT_NORMAL_BLOCK: u64 = 0x1 | 1 << 2 | 0b11 << 8 | 1 << 10 | 1 << 6;

// Entry 1 of the level-1 table is the second GiB: RAM.
const _: () = assert!(isola_layout::RAM_BASE == 1 << 30);

static BOOT_TABLE: BootTable = {
    let mut t = [0_u64; 512];
    t[0] = BOOT_DEVICE_BLOCK;
    t[1] = isola_layout::RAM_BASE | BOOT_NORMAL_BLOCK;
    BootTable(t)
};

/// SCTLR_EL2 for the bootstrap map: MMU, caches and SP alignment check on,
/// but not WXN (the bootstrap blocks are writable and executable).
const SCTLR_BOOT: u64 = mmu::SCTLR_ON
    .with(&[crate::sysreg::SCTLR_EL2::WXN::CLEAR])
    .bits();

global_asm!(
    r#"
.section .text.entry, "ax"
.global _start
_start:
    msr daifset, #0xf
    mov x19, x0
    mrs x1, CurrentEL
    cmp x1, #8
    b.ne 8f
    msr spsel, #1
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    mov x2, #{STACK_SLOT}
    add x1, x1, x2
    mov sp, x1
    adrp x1, __cpus_start
    add x1, x1, :lo12:__cpus_start
    msr tpidr_el2, x1
    adrp x1, isola_vectors
    add x1, x1, :lo12:isola_vectors
    msr vbar_el2, x1
    isb
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
1:  cmp x1, x2
    b.hs 2f
    stp xzr, xzr, [x1], #16
    b 1b
    // Every CPU's record (cpu_state.rs), as `CpuStats::new(n)` builds it:
    // its index `n` first, then zero to the next record.
2:  adrp x1, __cpus_start
    add x1, x1, :lo12:__cpus_start
    adrp x2, __cpus_end
    add x2, x2, :lo12:__cpus_end
    mov x3, xzr
3:  cmp x1, x2
    b.hs 10f
    add x4, x1, #{RECORD_STRIDE}
    stp x3, xzr, [x1], #16
4:  cmp x1, x4
    b.hs 5f
    stp xzr, xzr, [x1], #16
    b 4b
5:  add x3, x3, #1
    b 3b
10: adrp x0, {BOOT_TABLE}
    add x0, x0, :lo12:{BOOT_TABLE}
    ldr x1, ={SCTLR_BOOT}
    bl isola_mmu_on
    mov x0, x19
    bl isola_boot_main
9:  wfe
    b 9b
8:  adr x0, 7f
    b isola_early_fail
7:  .asciz "isola: FATAL: not started at EL2 (QEMU needs -machine virt,virtualization=on); stopped\r\n"
    .balign 4

// Warm entry for every other CPU (PSCI CPU_ON / resume): x0 = CPU index.
.global isola_secondary_entry
isola_secondary_entry:
    msr daifset, #0xf
    mov x19, x0
    cmp x0, #{MAX_CPUS}
    b.hs 6f
    msr spsel, #1
    adrp x1, __stacks_start
    add x1, x1, :lo12:__stacks_start
    add x2, x0, #1
    mov x3, #{STACK_SLOT}
    madd x1, x2, x3, x1
    mov sp, x1
    adrp x1, __cpus_start
    add x1, x1, :lo12:__cpus_start
    mov x2, #{RECORD_STRIDE}
    madd x1, x0, x2, x1
    msr tpidr_el2, x1
    adrp x1, isola_vectors
    add x1, x1, :lo12:isola_vectors
    msr vbar_el2, x1
    isb
    adrp x0, {ROOT}
    add x0, x0, :lo12:{ROOT}
    ldr x1, ={SCTLR_ON}
    bl isola_mmu_on
    mov x0, x19
    bl isola_secondary_main
    b 9b
6:  adr x0, 5f
    b isola_early_fail
5:  .asciz "isola: FATAL: warm entry with a CPU index beyond the image's stacks; CPU stopped\r\n"
    .balign 4

// isola_early_fail(x0 = NUL-terminated message): for failures before the
// engine has a stack or a map. Writes the message to QEMU virt's PL011 with
// plain stores (MMU off: Device memory) and stops this CPU.
isola_early_fail:
    mov x1, #{EARLY_UART}
1:  ldrb w2, [x0], #1
    cbz w2, 3f
2:  ldr w3, [x1, #0x18]
    tbnz w3, #5, 2b
    str w2, [x1]
    b 1b
3:  wfe
    b 3b

// isola_mmu_on(x0 = TTBR0_EL2, x1 = SCTLR_EL2): MAIR, TCR (PS from
// ID_AA64MMFR0_EL1.PARange, capped at 48 bits), tables, TLB clean, MMU on.
// Leaf function, uses x0-x3 only.
isola_mmu_on:
    ldr x2, ={MAIR}
    msr mair_el2, x2
    mrs x2, id_aa64mmfr0_el1
    and x2, x2, #0xf
    mov x3, #5
    cmp x2, x3
    csel x2, x2, x3, ls
    lsl x2, x2, #16
    ldr x3, ={TCR_BASE}
    orr x2, x2, x3
    msr tcr_el2, x2
    msr ttbr0_el2, x0
    isb
    tlbi alle2
    dsb nsh
    isb
    msr sctlr_el2, x1
    isb
    ret
.ltorg
"#,
    STACK_SLOT = const STACK_SLOT,
    EARLY_UART = const console::EARLY_UART,
    MAX_CPUS = const MAX_CPUS,
    SCTLR_BOOT = const SCTLR_BOOT,
    SCTLR_ON = const mmu::SCTLR_ON.bits(),
    MAIR = const mmu::MAIR.bits(),
    TCR_BASE = const mmu::TCR_BASE.bits(),
    ROOT = sym mmu::POOL,
    BOOT_TABLE = sym BOOT_TABLE,
    RECORD_STRIDE = const cpu_state::RECORD_STRIDE,
);
