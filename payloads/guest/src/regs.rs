//! The register probe: one routine, in both payloads, that fills every
//! register it can with a known pattern, makes one `hvc` and records what
//! came back, so a test sees whether the engine (and the world switch) kept
//! the caller's registers and leaked none of anybody else's. The patterns
//! and the judging are plain Rust (tested here); the routine is assembly
//! each payload expands with [`register_probe!`](crate::register_probe).

/// Words of a probe's record: `x0..=x30` (words 0..=30), `FPSR << 32 |
/// FPCR` (word 31), `v0..=v31` as two halves each (words 32..=95).
pub const WORDS: usize = 96;

/// One side's pattern: what its probe puts in the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The tag in bits 63:48 of `x4..=x30` ([`crate::reg_pattern`]).
    pub owner: u64,
    /// `v<n>` holds the byte `vbase + n` in every lane ([`crate::vreg_byte`]).
    pub vbase: u8,
    /// The FPCR held across the call.
    pub fpcr: u64,
    /// The FPSR held across the call.
    pub fpsr: u64,
}

/// The guest's pattern (its register test, `Behaviour::Registers`): FPCR =
/// FZ | DN, FPSR = QC | IDC | IOC.
pub const GUEST: Pattern = Pattern {
    owner: 0x5ee0,
    vbase: 0x40,
    fpcr: crate::REGS_FPCR,
    fpsr: 1 << 27 | 1 << 7 | 1,
};

/// The host's pattern around every `VcpuRun`: FPCR = AHP | RMode towards
/// zero, FPSR = QC | IXC | OFC | IOC; both differ from the guest's and
/// from the reset values.
pub const HOST: Pattern = Pattern {
    owner: 0x4057,
    vbase: 0x80,
    fpcr: 1 << 26 | 3 << 22,
    fpsr: 1 << 27 | 1 << 4 | 1 << 2 | 1,
};

impl Pattern {
    /// How many of `x4..=x30`, the halves of `v0..=v31` and FPCR/FPSR (one,
    /// together) in a probe's `record` did not keep this pattern.
    pub fn lost(&self, record: &[u64; WORDS]) -> u64 {
        let x_lost = (4..=30u64)
            .filter(|&n| record.get(n as usize).copied() != Some(crate::reg_pattern(self.owner, n)))
            .count();
        let v_lost = (0..32u8)
            .filter(|&n| {
                let want = u64::from_ne_bytes([crate::vreg_byte(self.vbase, n); 8]);
                let at = 32usize.wrapping_add(usize::from(n).wrapping_mul(2));
                record.get(at) != Some(&want) || record.get(at.wrapping_add(1)) != Some(&want)
            })
            .count();
        let fp_lost = record.get(31) != Some(&(self.fpsr << 32 | self.fpcr));
        (x_lost as u64)
            .wrapping_add(v_lost as u64)
            .wrapping_add(u64::from(fp_lost))
    }
}

/// Defines the probe routine `$name(x0 = function id, x1..x3 = arguments,
/// x4 = a record of [`WORDS`] words)` for `$pattern` (a [`Pattern`]
/// constant): it saves the callee-saved registers, FPCR and FPSR; fills
/// `x4..=x30` with the pattern (`x4` after saving the record's address),
/// `v0..=v31`, FPCR and FPSR; makes the `hvc`; stores the registers into the
/// record; and restores what it saved. Its Rust declaration:
/// `fn $name(id: u64, a1: u64, a2: u64, a3: u64, record: *mut [u64; WORDS])`.
#[macro_export]
macro_rules! register_probe {
    ($name:literal, $pattern:path) => {
        core::arch::global_asm!(
            concat!(".section .text.", $name, ", \"ax\""),
            concat!(".global ", $name),
            concat!($name, ":"),
            "    sub sp, sp, #208",
            "    stp x19, x20, [sp, #0]",
            "    stp x21, x22, [sp, #16]",
            "    stp x23, x24, [sp, #32]",
            "    stp x25, x26, [sp, #48]",
            "    stp x27, x28, [sp, #64]",
            "    stp x29, x30, [sp, #80]",
            "    stp d8, d9, [sp, #96]",
            "    stp d10, d11, [sp, #112]",
            "    stp d12, d13, [sp, #128]",
            "    stp d14, d15, [sp, #144]",
            "    str x4, [sp, #160]",
            "    mrs x5, fpcr",
            "    mrs x6, fpsr",
            "    stp x5, x6, [sp, #192]",
            "    ldr x5, ={fpcr}",
            "    msr fpcr, x5",
            "    ldr x6, ={fpsr}",
            "    msr fpsr, x6",
            "    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
            "    movi v\\n\\().16b, #({vbase} + \\n)",
            "    .endr",
            "    .irp n, 4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30",
            "    movz x\\n, #(0x100 + \\n)",
            "    movk x\\n, #{owner}, lsl #48",
            "    .endr",
            "    hvc #0",
            "    stp x0, x1, [sp, #176]",
            "    ldr x0, [sp, #160]",
            "    stp x2, x3, [x0, #16]",
            "    stp x4, x5, [x0, #32]",
            "    stp x6, x7, [x0, #48]",
            "    stp x8, x9, [x0, #64]",
            "    stp x10, x11, [x0, #80]",
            "    stp x12, x13, [x0, #96]",
            "    stp x14, x15, [x0, #112]",
            "    stp x16, x17, [x0, #128]",
            "    stp x18, x19, [x0, #144]",
            "    stp x20, x21, [x0, #160]",
            "    stp x22, x23, [x0, #176]",
            "    stp x24, x25, [x0, #192]",
            "    stp x26, x27, [x0, #208]",
            "    stp x28, x29, [x0, #224]",
            "    str x30, [x0, #240]",
            "    ldp x2, x3, [sp, #176]",
            "    stp x2, x3, [x0, #0]",
            "    add x1, x0, #256",
            "    stp q0, q1, [x1, #0]",
            "    stp q2, q3, [x1, #32]",
            "    stp q4, q5, [x1, #64]",
            "    stp q6, q7, [x1, #96]",
            "    stp q8, q9, [x1, #128]",
            "    stp q10, q11, [x1, #160]",
            "    stp q12, q13, [x1, #192]",
            "    stp q14, q15, [x1, #224]",
            "    stp q16, q17, [x1, #256]",
            "    stp q18, q19, [x1, #288]",
            "    stp q20, q21, [x1, #320]",
            "    stp q22, q23, [x1, #352]",
            "    stp q24, q25, [x1, #384]",
            "    stp q26, q27, [x1, #416]",
            "    stp q28, q29, [x1, #448]",
            "    stp q30, q31, [x1, #480]",
            "    mrs x2, fpcr",
            "    mrs x3, fpsr",
            "    orr x2, x2, x3, lsl #32",
            "    str x2, [x0, #248]",
            "    ldp x5, x6, [sp, #192]",
            "    msr fpcr, x5",
            "    msr fpsr, x6",
            "    ldp x19, x20, [sp, #0]",
            "    ldp x21, x22, [sp, #16]",
            "    ldp x23, x24, [sp, #32]",
            "    ldp x25, x26, [sp, #48]",
            "    ldp x27, x28, [sp, #64]",
            "    ldp x29, x30, [sp, #80]",
            "    ldp d8, d9, [sp, #96]",
            "    ldp d10, d11, [sp, #112]",
            "    ldp d12, d13, [sp, #128]",
            "    ldp d14, d15, [sp, #144]",
            "    add sp, sp, #208",
            "    ret",
            "    .ltorg",
            fpcr = const $pattern.fpcr,
            fpsr = const $pattern.fpsr,
            vbase = const $pattern.vbase,
            owner = const $pattern.owner,
        );
    };
}
