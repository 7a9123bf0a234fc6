//! The host's trapped system-register accesses (EC 0x18): a read of the ID
//! group-3 space (`HCR_EL2.TID3`) is emulated with what the engine does not
//! give the host hidden; anything else (TIDCP's implementation-defined
//! registers, ...) is UNDEFINED to the host.
//!
//! A result for `x19..=x29`, which the trap frame does not hold, is written
//! by a small EL2h stub that the trap's `eret` enters after the frame is
//! restored; the request waits in this CPU's record (`cpu_state.rs`).
//!
//! Invariant: SVE and SME trap at EL2 (`CPTR_EL2.TZ`/`TSM`) and the engine
//! does not switch their state, so the host reads `ID_AA64PFR0_EL1.SVE` and
//! `ID_AA64PFR1_EL1.SME` as 0 and `ID_AA64ZFR0_EL1`/`ID_AA64SMFR0_EL1` as
//! all-zero; every other ID register reads as the CPU's own.

use core::arch::global_asm;

use isola::abort::{Esr, SysRegAccess};
use isola_percpu::PerCpu;

use crate::cpu_state::{self, CalleeSavedWrite, CpuState};
use crate::frame::TrapFrame;
use crate::inject;
use crate::sysreg::{
    ELR_EL2, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1, Readable, SPSR_EL2, SPSR_EL2H_MASKED, Value,
    read_encoded, write_batched,
};

/// Handles a trapped `msr`/`mrs`/`sys` of the host (syndrome `esr`).
#[cold]
#[inline(never)]
pub fn trapped(frame: &mut TrapFrame, esr: Esr) {
    let Some(SysRegAccess {
        op0,
        op1,
        crn,
        crm,
        op2,
        rt,
        read,
    }) = esr.sysreg()
    else {
        inject::undefined();
        return;
    };
    if !(read && op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm)) {
        inject::undefined();
        return;
    }
    let value = id_reg(crm, op2);
    match rt {
        0..=18 => {
            frame.set_reg(usize::from(rt), value);
            inject::skip_instruction();
        }
        30 => {
            frame.lr = value;
            inject::skip_instruction();
        }
        // XZR: the read is discarded.
        31 => inject::skip_instruction(),
        _ => write_callee_saved(rt, value),
    }
}

/// The CPU's own value of the ID register `(crm, op2)` (op0=3, op1=0,
/// CRn=0). Each allocated encoding is read by one `mrs` (by encoding, so
/// the assembler needs no feature flag); the encodings never allocated
/// read as zero without touching the hardware, as the architecture defines
/// that space (RAZ).
#[expect(
    clippy::let_and_return,
    reason = "a macro call in tail position would be parsed as a statement"
)]
pub fn raw_id_reg(crm: u8, op2: u8) -> u64 {
    macro_rules! by_encoding {
        ($(($c:literal, $o:literal, $name:literal)),* $(,)?) => {
            match (crm, op2) {
                $(($c, $o) => read_encoded!($name),)*
                _ => 0,
            }
        };
    }
    let value = by_encoding!(
        (1, 0, "s3_0_c0_c1_0"),
        (1, 1, "s3_0_c0_c1_1"),
        (1, 2, "s3_0_c0_c1_2"),
        (1, 3, "s3_0_c0_c1_3"),
        (1, 4, "s3_0_c0_c1_4"),
        (1, 5, "s3_0_c0_c1_5"),
        (1, 6, "s3_0_c0_c1_6"),
        (1, 7, "s3_0_c0_c1_7"),
        (2, 0, "s3_0_c0_c2_0"),
        (2, 1, "s3_0_c0_c2_1"),
        (2, 2, "s3_0_c0_c2_2"),
        (2, 3, "s3_0_c0_c2_3"),
        (2, 4, "s3_0_c0_c2_4"),
        (2, 5, "s3_0_c0_c2_5"),
        (2, 6, "s3_0_c0_c2_6"),
        (2, 7, "s3_0_c0_c2_7"),
        (3, 0, "s3_0_c0_c3_0"),
        (3, 1, "s3_0_c0_c3_1"),
        (3, 2, "s3_0_c0_c3_2"),
        (3, 4, "s3_0_c0_c3_4"),
        (3, 5, "s3_0_c0_c3_5"),
        (3, 6, "s3_0_c0_c3_6"),
        (4, 0, "s3_0_c0_c4_0"),
        (4, 1, "s3_0_c0_c4_1"),
        (4, 2, "s3_0_c0_c4_2"),
        (4, 7, "s3_0_c0_c4_7"),
        (5, 0, "s3_0_c0_c5_0"),
        (5, 1, "s3_0_c0_c5_1"),
        (5, 2, "s3_0_c0_c5_2"),
        (5, 4, "s3_0_c0_c5_4"),
        (5, 5, "s3_0_c0_c5_5"),
        (6, 0, "s3_0_c0_c6_0"),
        (6, 1, "s3_0_c0_c6_1"),
        (6, 2, "s3_0_c0_c6_2"),
        (6, 3, "s3_0_c0_c6_3"),
        (7, 0, "s3_0_c0_c7_0"),
        (7, 1, "s3_0_c0_c7_1"),
        (7, 2, "s3_0_c0_c7_2"),
        (7, 3, "s3_0_c0_c7_3"),
        (7, 4, "s3_0_c0_c7_4"),
    );
    value
}

/// Every ID register of the space `HCR_EL2.TID3` traps, `[CRm - 1][Op2]`:
/// what the core derives a guest's view from
/// (`Engine::set_guest_id_registers`).
pub fn raw_id_registers() -> [[u64; 8]; 7] {
    core::array::from_fn(|c| {
        core::array::from_fn(|o| raw_id_reg((c as u8).wrapping_add(1), o as u8))
    })
}

/// The value the host reads from the ID register `(crm, op2)`: the CPU's
/// own, with what the engine does not give the host hidden (see the module
/// invariant).
fn id_reg(crm: u8, op2: u8) -> u64 {
    let raw = raw_id_reg(crm, op2);
    match (crm, op2) {
        // ID_AA64PFR0_EL1: SVE hidden.
        (4, 0) => Value::<ID_AA64PFR0_EL1::Register>::raw(raw)
            .with(&[ID_AA64PFR0_EL1::SVE::CLEAR])
            .bits(),
        // ID_AA64PFR1_EL1: SME hidden.
        (4, 1) => Value::<ID_AA64PFR1_EL1::Register>::raw(raw)
            .with(&[ID_AA64PFR1_EL1::SME::CLEAR])
            .bits(),
        // ID_AA64ZFR0_EL1, ID_AA64SMFR0_EL1.
        (4, 4 | 5) => 0,
        _ => raw,
    }
}

/// Writes `value` to the host's `x<rt>` for `rt` in `19..=29`, which the
/// trap frame does not hold (the Rust handler preserves them, so a write
/// from here would be undone on return). The host's ELR (past the trapped
/// instruction), SPSR and the request go to this CPU's record, and the
/// trap's `eret` is pointed at `isola_write_callee_saved` at EL2h with every
/// interrupt masked: it runs after the frame is restored, when every
/// general-purpose register holds the host's value again, writes the one
/// register and `eret`s to the host.
fn write_callee_saved(rt: u8, value: u64) {
    let request = CalleeSavedWrite {
        elr: ELR_EL2.get().wrapping_add(4),
        spsr: SPSR_EL2.get(),
        value,
        reg: u64::from(rt.wrapping_sub(19)),
    };
    if cpu_state::with_this(|s| s.callee_saved_write = request).is_err() {
        // This CPU's record is not reachable (cannot happen at EL2 with
        // the bring-up contract): refuse the access rather than lose it.
        inject::undefined();
        return;
    }
    let stub = isola_write_callee_saved as *const () as u64;
    // SAFETY: the trap's `eret` (which synchronises these) now enters the
    // stub at EL2h (SP_EL2, the top of this CPU's stack, where the popped
    // frame was) with D, A, I, F masked; the stub restores the host's
    // ELR/SPSR saved just above, so the host resumes past the trapped
    // instruction exactly as it would have, with only x<rt> changed.
    unsafe {
        write_batched!(ELR_EL2, Value::raw(stub));
        write_batched!(SPSR_EL2, SPSR_EL2H_MASKED);
    }
}

unsafe extern "C" {
    /// Assembly below; entered only by `eret` (see [`write_callee_saved`]).
    fn isola_write_callee_saved();
}

// Runs on the CPU whose record `write_callee_saved` filled, after that Rust
// code returned: no reference to the record exists while the stub reads it.
global_asm!(
    ".section .text.isola_write_callee_saved, \"ax\"",
    ".global isola_write_callee_saved",
    ".balign 8",
    "isola_write_callee_saved:",
    // Every GPR is the host's: borrow x0..x2 below SP (the dead frame).
    "    stp x0, x1, [sp, #-32]!",
    "    str x2, [sp, #16]",
    // x1 = this CPU's `CalleeSavedWrite` in the per-CPU table (x0 = its
    // index, the first field of the record TPIDR_EL2 points to).
    "    mrs x0, tpidr_el2",
    "    ldr x0, [x0]",
    "    adrp x1, {table}",
    "    add x1, x1, :lo12:{table}",
    "    mov x2, #{stride}",
    "    madd x1, x0, x2, x1",
    "    add x1, x1, #{value}",
    "    ldp x0, x2, [x1]",
    "    msr elr_el2, x0",
    "    msr spsr_el2, x2",
    "    ldp x0, x2, [x1, #16]",
    "    adr x1, 1f",
    "    add x1, x1, x2, lsl #3",
    "    br x1",
    "1:  mov x19, x0",
    "    b 2f",
    "    mov x20, x0",
    "    b 2f",
    "    mov x21, x0",
    "    b 2f",
    "    mov x22, x0",
    "    b 2f",
    "    mov x23, x0",
    "    b 2f",
    "    mov x24, x0",
    "    b 2f",
    "    mov x25, x0",
    "    b 2f",
    "    mov x26, x0",
    "    b 2f",
    "    mov x27, x0",
    "    b 2f",
    "    mov x28, x0",
    "    b 2f",
    "    mov x29, x0",
    "    b 2f",
    "2:  ldr x2, [sp, #16]",
    "    ldp x0, x1, [sp], #32",
    "    eret",
    table = sym cpu_state::TABLE,
    stride = const PerCpu::<CpuState>::SLOT_STRIDE,
    value = const PerCpu::<CpuState>::VALUE_OFFSET,
);

// The stub's `ldp`s read `elr, spsr` then `value, reg` from the record.
const _: () = assert!(core::mem::offset_of!(CalleeSavedWrite, elr) == 0);
const _: () = assert!(core::mem::offset_of!(CalleeSavedWrite, spsr) == 8);
const _: () = assert!(core::mem::offset_of!(CalleeSavedWrite, value) == 16);
const _: () = assert!(core::mem::offset_of!(CalleeSavedWrite, reg) == 24);
// `mov` and `add` immediates.
const _: () = assert!(PerCpu::<CpuState>::SLOT_STRIDE < 1 << 16);
const _: () = assert!(PerCpu::<CpuState>::VALUE_OFFSET < 1 << 12);
