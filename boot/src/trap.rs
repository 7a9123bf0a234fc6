//! Synchronous traps from the host at EL1 (and its EL0): decode the
//! syndrome, hand every decision to the core (hypercalls, Stage-2 aborts) or
//! to the PSCI relay, and carry the result out: result registers, a retried
//! access, or an exception injected into EL1.
//!
//! Invariant: every trap from the host is handled to completion on this CPU
//! and returns to the host (or powers this CPU/the machine off through PSCI);
//! nothing the host does can make the engine stop.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{read_sysreg, write_sysreg_isb};
use crate::exception::TrapFrame;
use crate::layout::MAX_CPUS;

/// ESR_ELx.EC values.
mod ec {
    /// Unknown reason (used for an injected UNDEFINED).
    pub const UNKNOWN: u64 = 0x00;
    /// `hvc` from AArch64.
    pub const HVC64: u64 = 0x16;
    /// `smc` from AArch64 (trapped by HCR_EL2.TSC).
    pub const SMC64: u64 = 0x17;
    /// `msr`/`mrs`/`sys` from AArch64 (HCR_EL2.TID3 ID reads, TIDCP, ...).
    pub const SYS64: u64 = 0x18;
    /// Instruction abort from a lower EL.
    pub const IABT_LOWER: u64 = 0x20;
    /// Instruction abort from the same EL.
    pub const IABT_SAME: u64 = 0x21;
    /// Data abort from a lower EL.
    pub const DABT_LOWER: u64 = 0x24;
    /// Data abort from the same EL.
    pub const DABT_SAME: u64 = 0x25;
}

/// ESR.IL: 32-bit instruction.
const ESR_IL: u64 = 1 << 25;
/// Data abort ISS.WnR.
const ISS_WNR: u64 = 1 << 6;
/// Fault status code: synchronous external abort, not on a table walk.
const FSC_SEA: u64 = 0x10;

/// Handles one synchronous trap from a lower EL.
///
/// Only the hypercall is on the hot path; the other kinds are out of line
/// (`#[cold]`, never inlined), so their registers and stack do not weigh on
/// every hypercall's prologue.
pub fn handle(frame: &mut TrapFrame) {
    let esr = read_sysreg!("esr_el2");
    // EC is ESR_EL2[31:26]; bits 63:32 hold ISS2 (FEAT_LS64, FEAT_THE...),
    // which must not leak into the class.
    match (esr >> 26) & 0x3f {
        ec::HVC64 => crate::engine::host_hypercall(frame),
        ec::SMC64 => smc(frame),
        ec::SYS64 => sysreg(frame, esr),
        class @ (ec::DABT_LOWER | ec::IABT_LOWER) => abort(class, esr),
        // Everything else the host can make trap (RAS or LOR registers,
        // SVE/SME, anything unknown) is UNDEFINED to it.
        _ => inject_undef(),
    }
}

/// A trapped host `smc`: PSCI goes to the relay, anything else is
/// `NOT_SUPPORTED`.
#[cold]
#[inline(never)]
fn smc(frame: &mut TrapFrame) {
    // A trapped `smc` returns to the instruction itself: skip it.
    skip_instruction();
    // A cold path the host takes now and then: report any DMA the SMMU
    // refused meanwhile.
    let _ = crate::smmu::faults();
    let fid = frame.reg(0);
    let result = match u32::try_from(fid) {
        Ok(f) if is_psci(f) => crate::psci::relay(f, [frame.reg(1), frame.reg(2), frame.reg(3)]),
        _ => crate::psci::status::NOT_SUPPORTED,
    };
    frame.set_reg(0, result as u64);
}

/// ID_AA64PFR0_EL1.SVE (35:32).
const PFR0_SVE: u64 = 0xf << 32;
/// ID_AA64PFR1_EL1.SME (27:24).
const PFR1_SME: u64 = 0xf << 24;

/// Reads the ID group-3 register `s3_0_c0_c<crm>_<op2>` at EL2, one `mrs`
/// per allocated encoding (by encoding, so the assembler needs no feature
/// flag); the encodings never allocated read as zero without touching the
/// hardware, as the architecture defines that space (RAZ).
macro_rules! id_read {
    ($crm:expr, $op2:expr; $(($c:literal, $o:literal, $name:literal)),* $(,)?) => {
        match ($crm, $op2) {
            $(($c, $o) => read_sysreg!($name),)*
            _ => 0,
        }
    };
}

/// The value the host reads from the ID register `(crm, op2)` (op0=3,
/// op1=0, CRn=0): the CPU's own, with what the engine does not give the
/// host hidden. SVE and SME trap at EL2 (CPTR_EL2.TZ/TSM, the engine does
/// not switch their state), so ID_AA64PFR0_EL1.SVE and ID_AA64PFR1_EL1.SME
/// read 0 and ID_AA64ZFR0_EL1/ID_AA64SMFR0_EL1 read as all-zero.
fn id_reg(crm: u64, op2: u64) -> u64 {
    let raw = id_read!(crm, op2;
        (1, 0, "s3_0_c0_c1_0"), (1, 1, "s3_0_c0_c1_1"), (1, 2, "s3_0_c0_c1_2"),
        (1, 3, "s3_0_c0_c1_3"), (1, 4, "s3_0_c0_c1_4"), (1, 5, "s3_0_c0_c1_5"),
        (1, 6, "s3_0_c0_c1_6"), (1, 7, "s3_0_c0_c1_7"),
        (2, 0, "s3_0_c0_c2_0"), (2, 1, "s3_0_c0_c2_1"), (2, 2, "s3_0_c0_c2_2"),
        (2, 3, "s3_0_c0_c2_3"), (2, 4, "s3_0_c0_c2_4"), (2, 5, "s3_0_c0_c2_5"),
        (2, 6, "s3_0_c0_c2_6"), (2, 7, "s3_0_c0_c2_7"),
        (3, 0, "s3_0_c0_c3_0"), (3, 1, "s3_0_c0_c3_1"), (3, 2, "s3_0_c0_c3_2"),
        (3, 4, "s3_0_c0_c3_4"), (3, 5, "s3_0_c0_c3_5"), (3, 6, "s3_0_c0_c3_6"),
        (4, 0, "s3_0_c0_c4_0"), (4, 1, "s3_0_c0_c4_1"), (4, 2, "s3_0_c0_c4_2"),
        (4, 7, "s3_0_c0_c4_7"),
        (5, 0, "s3_0_c0_c5_0"), (5, 1, "s3_0_c0_c5_1"), (5, 2, "s3_0_c0_c5_2"),
        (5, 4, "s3_0_c0_c5_4"), (5, 5, "s3_0_c0_c5_5"),
        (6, 0, "s3_0_c0_c6_0"), (6, 1, "s3_0_c0_c6_1"), (6, 2, "s3_0_c0_c6_2"),
        (6, 3, "s3_0_c0_c6_3"),
        (7, 0, "s3_0_c0_c7_0"), (7, 1, "s3_0_c0_c7_1"), (7, 2, "s3_0_c0_c7_2"),
        (7, 3, "s3_0_c0_c7_3"), (7, 4, "s3_0_c0_c7_4"),
    );
    match (crm, op2) {
        (4, 0) => raw & !PFR0_SVE,
        (4, 1) => raw & !PFR1_SME,
        // ID_AA64ZFR0_EL1, ID_AA64SMFR0_EL1.
        (4, 4 | 5) => 0,
        _ => raw,
    }
}

/// A trapped `msr`/`mrs`/`sys` (EC 0x18). ISS: Op0 21:20, Op2 19:17,
/// Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Direction 0 (1 = read). A read
/// of the ID group-3 space (HCR_EL2.TID3, from EL1 or EL0) is emulated;
/// anything else (TIDCP's implementation-defined registers, ...) is
/// UNDEFINED to the host.
#[cold]
#[inline(never)]
fn sysreg(frame: &mut TrapFrame, esr: u64) {
    let field = |shift: u32, mask: u64| (esr >> shift) & mask;
    let (op0, op2, op1, crn, rt, crm, read) = (
        field(20, 0x3),
        field(17, 0x7),
        field(14, 0x7),
        field(10, 0xf),
        field(5, 0x1f),
        field(1, 0xf),
        esr & 1 == 1,
    );
    if !(read && op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm)) {
        inject_undef();
        return;
    }
    let value = id_reg(crm, op2);
    match rt {
        0..=18 => {
            frame.set_reg(rt as usize, value);
            skip_instruction();
        }
        30 => {
            frame.lr = value;
            skip_instruction();
        }
        // XZR: the read is discarded.
        31 => skip_instruction(),
        _ => write_callee_saved(rt, value),
    }
}

/// Per CPU, what [`isola_write_callee_saved`] needs: the host's return
/// address and SPSR, the value, and which of `x19..=x29` (0..=10) gets it.
static CALLEE_SAVED_WRITE: [[AtomicU64; 4]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_CPUS];

/// Writes `value` to the host's `x<rt>` for `rt` in `19..=29`, which the
/// trap frame does not hold (the Rust handler preserves them, so a write
/// from here would be undone on return). The host's ELR (past the trapped
/// instruction), SPSR and the request go to this CPU's slot, and the trap's
/// `eret` is pointed at [`isola_write_callee_saved`] at EL2h with every
/// interrupt masked: it runs after the frame is restored, when every
/// general-purpose register holds the host's value again, writes the one
/// register and `eret`s to the host.
fn write_callee_saved(rt: u64, value: u64) {
    let Some(slot) = usize::try_from(crate::cpu::cpu_index())
        .ok()
        .and_then(|i| CALLEE_SAVED_WRITE.get(i))
    else {
        inject_undef();
        return;
    };
    let [elr, spsr, val, reg] = slot;
    elr.store(read_sysreg!("elr_el2").wrapping_add(4), Ordering::Relaxed);
    spsr.store(read_sysreg!("spsr_el2"), Ordering::Relaxed);
    val.store(value, Ordering::Relaxed);
    reg.store(rt.wrapping_sub(19), Ordering::Relaxed);
    let stub = isola_write_callee_saved as *const () as u64;
    // SAFETY: the trap's `eret` now enters the stub at EL2h (SP_EL2, the
    // top of this CPU's stack, where the popped frame was) with D, A, I, F
    // masked; the stub restores the host's ELR/SPSR saved just above, so
    // the host resumes past the trapped instruction exactly as it would
    // have, with only x<rt> changed.
    unsafe {
        write_sysreg_isb!("elr_el2", stub);
        write_sysreg_isb!("spsr_el2", 0x3c9_u64);
    }
}

unsafe extern "C" {
    /// Assembly below; entered only by `eret` (see [`write_callee_saved`]).
    fn isola_write_callee_saved();
}

global_asm!(
    ".section .text.isola_write_callee_saved, \"ax\"",
    ".global isola_write_callee_saved",
    ".balign 8",
    "isola_write_callee_saved:",
    // Every GPR is the host's: borrow x0..x2 below SP (the dead frame).
    "    stp x0, x1, [sp, #-32]!",
    "    str x2, [sp, #16]",
    "    mrs x0, tpidr_el2",
    "    adrp x1, {slots}",
    "    add x1, x1, :lo12:{slots}",
    "    add x1, x1, x0, lsl #5",
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
    slots = sym CALLEE_SAVED_WRITE,
);

/// A host Stage-2 abort of kind `class`: the core maps the page, or the
/// host gets a synchronous external abort.
#[cold]
#[inline(never)]
fn abort(class: u64, esr: u64) {
    let far = read_sysreg!("far_el2");
    let hpfar = read_sysreg!("hpfar_el2");
    match crate::engine::host_abort(esr, far, hpfar) {
        AbortAction::Retry => {}
        AbortAction::Skip => skip_instruction(),
        AbortAction::InjectSea => inject_sea(class, esr, far),
    }
    // A cold path the host takes now and then: report any DMA the SMMU
    // refused meanwhile.
    let _ = crate::smmu::faults();
}

/// What the core decided about a host Stage-2 abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortAction {
    /// The mapping now exists: run the instruction again.
    Retry,
    /// The host may not touch this address: synchronous external abort.
    InjectSea,
    /// A store the engine ignores (a read-only device register): resume
    /// after it.
    Skip,
}

/// PSCI's function-number ranges (SMC32 and SMC64, `0x00..=0x1f`).
fn is_psci(fid: u32) -> bool {
    matches!(fid & !0x1f, 0x8400_0000 | 0xC400_0000)
}

fn skip_instruction() {
    let elr = read_sysreg!("elr_el2");
    // SAFETY: moving the return address past the trapped (32-bit) `smc`
    // only changes where the host resumes, within its own code.
    unsafe { write_sysreg_isb!("elr_el2", elr.wrapping_add(4)) };
}

/// Injects a synchronous external abort for the access that trapped as
/// `class` (data or instruction abort from a lower EL).
fn inject_sea(class: u64, esr: u64, far: u64) {
    let from_el0 = read_sysreg!("spsr_el2") & 0xf == 0;
    let ec = match (class, from_el0) {
        (ec::DABT_LOWER, true) => ec::DABT_LOWER,
        (ec::DABT_LOWER, false) => ec::DABT_SAME,
        (_, true) => ec::IABT_LOWER,
        (_, false) => ec::IABT_SAME,
    };
    let wnr = if class == ec::DABT_LOWER {
        esr & ISS_WNR
    } else {
        0
    };
    inject(ec << 26 | ESR_IL | wnr | FSC_SEA, Some(far));
}

/// Injects an UNDEFINED exception for the trapped instruction.
#[cold]
#[inline(never)]
pub fn inject_undef() {
    inject(ec::UNKNOWN << 26 | ESR_IL, None);
}

/// Makes the host take a synchronous exception to EL1 with syndrome `esr`:
/// what the hardware would do had the exception been routed to EL1.
fn inject(esr: u64, far: Option<u64>) {
    let spsr = read_sysreg!("spsr_el2");
    let elr = read_sysreg!("elr_el2");
    let vbar = read_sysreg!("vbar_el1");
    let offset: u64 = if spsr & 0x10 != 0 {
        0x600 // from AArch32 EL0
    } else {
        match spsr & 0xf {
            0b0000 => 0x400, // EL0t: lower EL, AArch64
            0b0100 => 0x000, // EL1t: current EL, SP_EL0
            _ => 0x200,      // EL1h: current EL, SP_EL1
        }
    };
    // PSTATE on entry to EL1h: D, A, I, F masked; PAN set unless
    // SCTLR_EL1.SPAN says to leave it.
    let span = read_sysreg!("sctlr_el1") & (1 << 23) != 0;
    let pan = if span { spsr & (1 << 22) } else { 1 << 22 };
    let new_spsr = 0x3c5 | pan;
    // SAFETY: these registers are the host's EL1 exception state and the
    // engine's return state for this trap; writing them makes the `eret`
    // deliver the exception into the host's own vectors, which is the
    // architected behaviour the host expects.
    unsafe {
        write_sysreg_isb!("esr_el1", esr);
        if let Some(far) = far {
            write_sysreg_isb!("far_el1", far);
        }
        write_sysreg_isb!("elr_el1", elr);
        write_sysreg_isb!("spsr_el1", spsr);
        write_sysreg_isb!("elr_el2", vbar.wrapping_add(offset));
        write_sysreg_isb!("spsr_el2", new_spsr);
    }
}
