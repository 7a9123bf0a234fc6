//! The probes: every access the host makes to a page it may not own goes
//! through one, with this module's vectors installed, so an injected
//! synchronous external abort is caught and reported instead of ending the
//! run; and every `VcpuRun` goes through the register probe, so every guest
//! exit checks that the host's registers came back untouched by the world
//! switch and carry nothing of the guest's (the engine does not save the
//! host's FP/SIMD state on every trap, only the world switch does).

use core::arch::{asm, global_asm};

use isola_abi::{HostCall, PAGE_SIZE};
use isola_guest_payload::regs;

use crate::console::emergency_line;

isola_guest_payload::register_probe!("vms_run_probe", isola_guest_payload::regs::HOST);

unsafe extern "C" {
    fn vms_run_probe(id: u64, a1: u64, a2: u64, a3: u64, record: *mut [u64; regs::WORDS]);
}

/// `VcpuRun` through the register probe: `x0..x3`, and how many of the
/// host's `x4..x30`, `v0..v31` halves and FPCR/FPSR (one, together) did not
/// come back as the host left them.
pub(super) fn vcpu_run_checked(handle: u64, index: u64, value: u64) -> ([u64; 4], u64) {
    let mut record = [0u64; regs::WORDS];
    // SAFETY: the routine writes exactly the words of `record`, restores
    // every callee-saved register, SP, FPCR and FPSR, and its `hvc` touches
    // no memory Rust owns (as for `hvc6`); every caller-saved register is
    // clobbered, which the `extern "C"` call already assumes.
    unsafe {
        vms_run_probe(
            HostCall::VcpuRun as u64,
            handle,
            index,
            value,
            &raw mut record,
        )
    };
    let [r0, r1, r2, r3, ..] = record;
    ([r0, r1, r2, r3], regs::HOST.lost(&record))
}

// The probe vectors, installed on every CPU for the whole test. A probe arms
// them by putting 1 (skip the faulting instruction) or 2 (return to x30) in
// x16 around one access; the handler replaces x16 with ESR_EL1 | 1 << 63.
// An IRQ (from EL1h, offset 0x280) is the host's tick (`irq.rs`). Any other
// exception is unexpected: reported, then the CPU stops.
global_asm!(
    r#"
    .section .text.vms_vectors, "ax"
    .balign 2048
vms_vectors:
    .set vms_vector, 0
    .rept 16
    .balign 0x80
    .if vms_vector == 5
    b host_irq_entry
    .else
    b vms_exception
    .endif
    .set vms_vector, vms_vector + 1
    .endr
vms_exception:
    cmp x16, #1
    b.eq 1f
    cmp x16, #2
    b.eq 2f
    mrs x0, esr_el1
    mrs x1, elr_el1
    bl vms_unexpected_exception
3:  wfe
    b 3b
1:  mrs x17, elr_el1
    add x17, x17, #4
    b 4f
2:  mov x17, x30
4:  msr elr_el1, x17
    mrs x16, esr_el1
    orr x16, x16, #(1 << 63)
    eret
"#
);

unsafe extern "C" {
    static vms_vectors: u8;
}

#[unsafe(no_mangle)]
extern "C" fn vms_unexpected_exception(esr: u64, elr: u64) {
    // Not simply under the console lock: this CPU may hold it already.
    emergency_line(format_args!(
        "vms: FAIL unexpected exception at EL1 (ESR {esr:#x}, ELR {elr:#x}); CPU stops"
    ));
}

/// Loads `pa` with the probe armed: `Err(ESR_EL1)` if it faulted.
pub(super) fn probe_read(pa: u64) -> Result<u64, u64> {
    let mut v = 0u64;
    let mut armed = 1u64;
    // SAFETY: one load from an address the host may not own; a fault is
    // caught by `vms_vectors` (installed by `run` on this CPU), which skips
    // the load. No Rust-visible memory is written.
    unsafe {
        asm!("ldr {v}, [{a}]", a = in(reg) pa, v = inout(reg) v, inout("x16") armed, out("x17") _,
             options(nostack, readonly));
    }
    if armed == 1 {
        Ok(v)
    } else {
        Err(armed & !(1 << 63))
    }
}

/// Stores to `pa` with the probe armed.
pub(super) fn probe_write(pa: u64, v: u64) -> Result<(), u64> {
    let mut armed = 1u64;
    // SAFETY: one store to a page outside this payload's image (a page of
    // the test pool); a fault is caught and the store skipped.
    unsafe {
        asm!("str {v}, [{a}]", a = in(reg) pa, v = in(reg) v, inout("x16") armed, out("x17") _,
             options(nostack));
    }
    if armed == 1 {
        Ok(())
    } else {
        Err(armed & !(1 << 63))
    }
}

/// Branches to `pa` with the probe armed to return: `Err(ESR_EL1)` if the
/// fetch (or the instruction found there) faulted. A guest page holds no
/// `ret`, so "no fault" cannot happen quietly: even readable zeroes are an
/// undefined instruction.
pub(super) fn probe_exec(pa: u64) -> Result<(), u64> {
    let mut armed = 2u64;
    // SAFETY: the branch target faults (Stage-2 or undefined instruction)
    // and the handler returns to the link register; x30 is declared
    // clobbered, as is everything a called function may clobber.
    unsafe {
        asm!("blr {a}", a = in(reg) pa, inout("x16") armed, out("x17") _, clobber_abi("C"));
    }
    if armed == 2 {
        Ok(())
    } else {
        Err(armed & !(1 << 63))
    }
}

/// Cleans `[pa, pa + PAGE_SIZE)` to the point of coherency: the guest runs
/// with its MMU off (non-cacheable), so what the host wrote through its
/// cacheable map must reach memory before the guest reads it.
pub(super) fn clean_page(pa: u64) {
    let mut va = pa;
    while va < pa.saturating_add(PAGE_SIZE) {
        // SAFETY: `dc cvac` writes a dirty line back; no contents change.
        unsafe { asm!("dc cvac, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(64);
    }
    // SAFETY: a barrier only orders.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates the page's lines before the host reads what a guest wrote.
pub(super) fn invalidate_page(pa: u64) {
    let mut va = pa;
    while va < pa.saturating_add(PAGE_SIZE) {
        // SAFETY: `dc civac` writes back and drops a line; the page is shared
        // with the host, so dropping a clean line loses nothing.
        unsafe { asm!("dc civac, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.saturating_add(64);
    }
    // SAFETY: a barrier only orders.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Installs this module's probe vectors on this CPU; returns the host's.
pub(super) fn install_vectors() -> u64 {
    let saved: u64;
    // SAFETY: reading VBAR_EL1 has no side effect.
    unsafe { asm!("mrs {}, vbar_el1", out(reg) saved, options(nomem, nostack, preserves_flags)) };
    // SAFETY: this payload's own vectors (2 KiB aligned by the assembly)
    // replace the host's for the duration of the test; they handle the
    // synchronous exceptions of the probes and send IRQs to the tick.
    unsafe {
        asm!("msr vbar_el1, {}", "isb", in(reg) &raw const vms_vectors as u64, options(nostack, preserves_flags));
    }
    saved
}

/// Puts the host's vectors back.
pub(super) fn restore_vectors(saved: u64) {
    // SAFETY: the host's own vectors, read by `install_vectors`.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) saved, options(nostack, preserves_flags)) };
}
