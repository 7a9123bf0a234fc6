//! Carrying a decision out to the host: resuming past the trapped
//! instruction, or making the host take the exception the hardware would
//! have given it (an external abort, an UNDEFINED instruction).
//!
//! Invariant: every function here edits only the host's EL1 exception
//! registers and the trap's own return state (`ELR_EL2`, `SPSR_EL2`); they
//! take effect at the trap's `eret`, which synchronises them, so no `isb`
//! is needed in between.

use isola::abort::{DataAbortIss, FSC_SEA, ec};

use crate::sysreg::{
    ELR_EL1, ELR_EL2, ESR_EL1, FAR_EL1, Readable, SCTLR_EL1, SPSR_EL1, SPSR_EL1H_MASKED, SPSR_EL2,
    VBAR_EL1, Value, mode, write_batched,
};

/// `SPSR_ELx.PAN` (bit 22), which `aarch64-cpu` does not name.
const SPSR_PAN: u64 = 1 << 22;
/// `SPSR_ELx.M[4]`: the exception was taken from AArch32.
const SPSR_AARCH32: u64 = 1 << 4;

/// Resumes the host after the trapped (32-bit) instruction.
pub fn skip_instruction() {
    let elr = ELR_EL2.get();
    // SAFETY: moving the return address past the trapped instruction only
    // changes where the host resumes, within its own code; the trap's `eret`
    // uses it.
    unsafe { write_batched!(ELR_EL2, Value::raw(elr.wrapping_add(4))) };
}

/// Injects a synchronous external abort for the access that trapped with
/// syndrome `esr` (a data or instruction abort from a lower EL) at `far`.
pub fn external_abort(esr: u64, far: u64) {
    let class = ((esr >> 26) & 0x3f) as u8;
    let from_el0 = SPSR_EL2.get() & 0xf == mode::EL0T;
    let data = class == ec::DABT_LOW;
    // Taken to EL1: from EL0 it is a lower-EL abort, from EL1 a same-EL one.
    let ec = match (data, from_el0) {
        (true, true) => ec::DABT_LOW,
        (true, false) => ec::DABT_CUR,
        (false, true) => ec::IABT_LOW,
        (false, false) => ec::IABT_CUR,
    };
    let wnr = if data {
        esr & DataAbortIss::WNR.bits()
    } else {
        0
    };
    inject(ec, wnr | u64::from(FSC_SEA), Some(far));
}

/// Injects an UNDEFINED exception for the trapped instruction.
#[cold]
#[inline(never)]
pub fn undefined() {
    inject(ec::UNKNOWN, 0, None);
}

/// Makes the host take a synchronous exception of class `ec` with syndrome
/// `iss` (a 32-bit instruction) to EL1: what the hardware would do had the
/// exception been routed to EL1.
fn inject(ec: u8, iss: u64, far: Option<u64>) {
    let esr = Value::<ESR_EL1::Register>::new(&[
        ESR_EL1::EC.val(u64::from(ec)),
        ESR_EL1::IL::SET,
        ESR_EL1::ISS.val(iss),
    ]);
    let spsr = SPSR_EL2.get();
    let elr = ELR_EL2.get();
    let vbar = VBAR_EL1.get();
    let offset: u64 = if spsr & SPSR_AARCH32 != 0 {
        0x600 // from AArch32 EL0
    } else {
        match spsr & 0xf {
            mode::EL0T => 0x400, // lower EL, AArch64
            mode::EL1T => 0x000, // current EL, SP_EL0
            _ => 0x200,          // EL1h: current EL, SP_EL1
        }
    };
    // PSTATE on entry to EL1h: D, A, I, F masked; PAN set unless
    // SCTLR_EL1.SPAN says to leave it.
    let span = SCTLR_EL1.is_set(SCTLR_EL1::SPAN);
    let pan = if span { spsr & SPSR_PAN } else { SPSR_PAN };
    let new_spsr = Value::<SPSR_EL2::Register>::raw(SPSR_EL1H_MASKED.bits() | pan);
    // SAFETY: these registers are the host's EL1 exception state and the
    // engine's return state for this trap; writing them makes the `eret`
    // (which synchronises them) deliver the exception into the host's own
    // vectors, which is the architected behaviour the host expects.
    unsafe {
        write_batched!(ESR_EL1, esr);
        if let Some(far) = far {
            write_batched!(FAR_EL1, Value::raw(far));
        }
        write_batched!(ELR_EL1, Value::raw(elr));
        write_batched!(SPSR_EL1, Value::raw(spsr));
        write_batched!(ELR_EL2, Value::raw(vbar.wrapping_add(offset)));
        write_batched!(SPSR_EL2, new_spsr);
    }
}
