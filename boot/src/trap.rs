//! Synchronous traps from the host at EL1 (and its EL0): decode the
//! syndrome, hand every decision to the core (hypercalls, Stage-2 aborts) or
//! to the PSCI relay, and carry the result out: result registers, a retried
//! access, or an exception injected into EL1.
//!
//! Invariant: every trap from the host is handled to completion on this CPU
//! and returns to the host (or powers this CPU/the machine off through PSCI);
//! nothing the host does can make the engine stop.

use crate::cpu::{read_sysreg, write_sysreg_isb};
use crate::exception::TrapFrame;

/// ESR_ELx.EC values.
mod ec {
    /// Unknown reason (used for an injected UNDEFINED).
    pub const UNKNOWN: u64 = 0x00;
    /// `hvc` from AArch64.
    pub const HVC64: u64 = 0x16;
    /// `smc` from AArch64 (trapped by HCR_EL2.TSC).
    pub const SMC64: u64 = 0x17;
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
        class @ (ec::DABT_LOWER | ec::IABT_LOWER) => abort(class, esr),
        // Everything else the host can make trap (implementation-defined,
        // RAS or LOR registers, SVE/SME, anything unknown) is UNDEFINED to it.
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
    let fid = frame.reg(0);
    let result = match u32::try_from(fid) {
        Ok(f) if is_psci(f) => crate::psci::relay(f, [frame.reg(1), frame.reg(2), frame.reg(3)]),
        _ => crate::psci::status::NOT_SUPPORTED,
    };
    frame.set_reg(0, result as u64);
}

/// A host Stage-2 abort of kind `class`: the core maps the page, or the
/// host gets a synchronous external abort.
#[cold]
#[inline(never)]
fn abort(class: u64, esr: u64) {
    let far = read_sysreg!("far_el2");
    let hpfar = read_sysreg!("hpfar_el2");
    match crate::engine::host_abort(esr, far, hpfar) {
        AbortAction::Retry => {}
        AbortAction::InjectSea => inject_sea(class, esr, far),
    }
}

/// What the core decided about a host Stage-2 abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortAction {
    /// The mapping now exists: run the instruction again.
    Retry,
    /// The host may not touch this address: synchronous external abort.
    InjectSea,
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
