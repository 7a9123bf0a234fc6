//! Typed system registers: the named fields of `aarch64-cpu` (and, where it
//! lacks a register or a field, our own definitions in its style), whole
//! register values built from those fields ([`Value`]), and the one way the
//! engine writes a register ([`write_isb!`], [`write_batched!`]).
//!
//! - **Reading** is harmless: `HCR_EL2.get()`,
//!   `ID_AA64DFR0_EL1.read(ID_AA64DFR0_EL1::PMUVer)` (tock-registers'
//!   [`Readable`], as `aarch64-cpu` implements it), or [`read!`] for a whole
//!   [`Value`] where the `mrs` must not cost a flag recomputation (the world
//!   switch).
//! - **A value** is built from named fields of one register, so a bit of
//!   `MDCR_EL2` cannot end up in `HCR_EL2`:
//!   `Value::new(&[HCR_EL2::VM::SET, HCR_EL2::RW::EL1IsAarch64])`. `const`,
//!   so the values are compile-time constants as before.
//! - **Writing** one that changes what memory means or where exceptions go is
//!   `unsafe` and not `nomem` (`aarch64-cpu`'s own `set` is both safe and
//!   `nomem`, which would let the compiler move memory accesses across a
//!   change of the memory map: STYLE.md §2), and [`write_isb!`] puts the new
//!   value in force before it returns. [`write_batched!`] leaves out the `isb` where
//!   a sequence of writes ends with one (the world switch) or the next `eret`
//!   synchronises them.
//!
//! Registers that hold an address or a data word rather than fields
//! (`ELR_EL2`, `VBAR_EL1`, `CNTVOFF_EL2`, ...) have `R = ()`: their values
//! are [`Value::raw`].
//!
//! Invariant: nothing in the EL2 image writes a system register except
//! through these macros, the bring-up assembly (`entry.rs`, `mmu.rs`'s
//! switch of maps) and the world switch's context save/restore
//! (`world.rs`, and the virtual CPU interface's in `gic.rs`), each of which
//! says why it cannot use them.

use core::marker::PhantomData;

pub use aarch64_cpu::registers::{
    CNTHCTL_EL2, CNTHP_CTL_EL2, CNTVOFF_EL2, ELR_EL1, ELR_EL2, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2,
    HCR_EL2, HDFGRTR_EL2, HDFGWTR_EL2, HFGITR_EL2, HFGRTR_EL2, HFGWTR_EL2, HPFAR_EL2, ICC_SRE_EL2,
    ICH_HCR_EL2, ICH_VTR_EL2, ID_AA64DFR0_EL1, ID_AA64MMFR2_EL1, MAIR_EL2, MDCR_EL2, MIDR_EL1,
    MPIDR_EL1, SCTLR_EL2, SPSR_EL1, SPSR_EL2, TCR_EL2, VBAR_EL1, VMPIDR_EL2, VTCR_EL2, VTTBR_EL2,
};
use tock_registers::RegisterLongName;
pub use tock_registers::fields::FieldValue;
pub use tock_registers::interfaces::Readable;

/// A whole value of register `R` (`R = ()`: a register without fields).
#[derive(Clone, Copy)]
pub struct Value<R: RegisterLongName> {
    bits: u64,
    register: PhantomData<R>,
}

impl<R: RegisterLongName> Value<R> {
    /// Exactly `fields` set, every other bit zero.
    #[must_use]
    pub const fn new(fields: &[FieldValue<u64, R>]) -> Self {
        Self::raw(0).with(fields)
    }

    /// `self` with `fields` set to their values (the rest unchanged).
    #[must_use]
    pub const fn with(self, mut fields: &[FieldValue<u64, R>]) -> Self {
        let mut bits = self.bits;
        while let [field, rest @ ..] = fields {
            bits = (bits & !field.mask()) | field.value;
            fields = rest;
        }
        Self::raw(bits)
    }

    /// `self` with every field `other` sets set too (a bitwise or of two
    /// values of the same register).
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self::raw(self.bits | other.bits)
    }

    /// `self` with the bits of `mask` set: the bits the architecture makes
    /// RES1 in this configuration, which `aarch64-cpu` does not name.
    #[must_use]
    pub const fn with_res1(self, mask: u64) -> Self {
        Self::raw(self.bits | mask)
    }

    /// A value from its bits: read back from the hardware, or an address
    /// or data word for a register without fields.
    #[must_use]
    pub const fn raw(bits: u64) -> Self {
        Self {
            bits,
            register: PhantomData,
        }
    }

    /// The bits to write.
    #[must_use]
    pub const fn bits(self) -> u64 {
        self.bits
    }
}

/// The bits of `value`, after checking (at compile time) that it is a value
/// of `register`'s own fields. Used by [`write_isb!`] and [`write_batched!`].
#[doc(hidden)]
#[inline(always)]
pub fn checked_bits<G: Readable<T = u64>>(_register: &G, value: Value<G::R>) -> u64 {
    value.bits
}

/// Writes `value` to the system register `$reg`, then `isb`: the new value
/// is in force when the macro's statement completes. `$reg` is a register
/// of this module; `value` must be a [`Value`] of its fields. The register is
/// named by its identifier, or (for one the assembler knows only by
/// encoding) `REG as "s3_..."`.
///
/// Expands to an `unsafe` operation: the caller's `unsafe` block and its
/// `// SAFETY:` comment say why this write is sound. Not `nomem`: the
/// compiler keeps memory accesses on their side of the write.
macro_rules! write_isb {
    ($reg:ident, $value:expr) => {
        $crate::sysreg::write_isb!($reg as stringify!($reg), $value)
    };
    ($reg:ident as $asm:expr, $value:expr) => {{
        let bits = $crate::sysreg::checked_bits(&$reg, $value);
        core::arch::asm!(
            concat!("msr ", $asm, ", {}"),
            "isb",
            in(reg) bits,
            options(nostack, preserves_flags)
        )
    }};
}
pub(crate) use write_isb;

/// Like [`write_isb!`] without the `isb`: for a sequence of writes that ends
/// with one `isb` (or an `eret`, which synchronises the context too), which
/// the caller's `// SAFETY:` comment names.
macro_rules! write_batched {
    ($reg:ident, $value:expr) => {
        $crate::sysreg::write_batched!($reg as stringify!($reg), $value)
    };
    ($reg:ident as $asm:expr, $value:expr) => {{
        let bits = $crate::sysreg::checked_bits(&$reg, $value);
        core::arch::asm!(
            concat!("msr ", $asm, ", {}"),
            in(reg) bits,
            options(nostack, preserves_flags)
        )
    }};
}
pub(crate) use write_batched;

/// Reads system register `$reg` as a [`Value`] of its own fields. Like
/// `Readable::get` but declares that the `mrs` leaves the condition flags
/// alone, which `aarch64-cpu`'s reads do not: on the world switch's path
/// that saves a flag recomputation.
macro_rules! read {
    ($reg:ident) => {
        $crate::sysreg::read!($reg as stringify!($reg))
    };
    ($reg:ident as $asm:expr) => {{
        let bits: u64;
        // SAFETY: reading a system register has no side effect and touches
        // no memory.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $asm), out(reg) bits,
                options(nomem, nostack, preserves_flags))
        };
        $crate::sysreg::value_of(&$reg, bits)
    }};
}
pub(crate) use read;

/// `bits` as a value of `register` (for [`read!`]).
#[doc(hidden)]
#[inline(always)]
pub fn value_of<G: Readable<T = u64>>(_register: &G, bits: u64) -> Value<G::R> {
    Value::raw(bits)
}

/// Reads a system register the architecture defines by encoding only, where
/// its value is passed on unchanged rather than decoded (the ID registers a
/// host read of which is emulated: `idregs.rs`).
macro_rules! read_encoded {
    ($encoding:literal) => {{
        let v: u64;
        // SAFETY: reading an ID register has no side effect and touches no
        // memory.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $encoding), out(reg) v,
                options(nomem, nostack, preserves_flags))
        };
        v
    }};
}
pub(crate) use read_encoded;

/// Declares a register `aarch64-cpu` lacks, or whose fields the engine needs
/// and it does not name, in its style: a `register_bitfields!` module of
/// named fields (absent for a register without fields, `R = ()`) and a
/// constant that reads it ([`Readable`]). Writes go through [`write_isb!`].
macro_rules! own_registers {
    ($(
        $(#[$doc:meta])*
        $module:ident :: $name:ident = $asm:literal $([ $($fields:tt)* ])?;
    )*) => {$(
        own_registers!(@fields [$(#[$doc])*] $name $([ $($fields)* ])?);
        #[doc(hidden)]
        pub mod $module {
            /// The register, readable.
            #[derive(Clone, Copy)]
            pub struct Reg;

            impl tock_registers::interfaces::Readable for Reg {
                type T = u64;
                type R = own_registers!(@long $name $([$($fields)*])?);

                #[inline]
                fn get(&self) -> u64 {
                    let v: u64;
                    // SAFETY: reading this system register has no side
                    // effect and touches no memory.
                    unsafe {
                        core::arch::asm!(concat!("mrs {}, ", $asm), out(reg) v,
                            options(nomem, nostack, preserves_flags))
                    };
                    v
                }
            }
        }
        $(#[$doc])*
        pub const $name: $module::Reg = $module::Reg;
    )*};
    (@fields [$($attr:tt)*] $name:ident [$($fields:tt)*]) => {
        tock_registers::register_bitfields! { u64,
            $($attr)*
            pub $name [ $($fields)* ]
        }
    };
    (@fields [$($attr:tt)*] $name:ident) => {};
    (@long $name:ident [$($fields:tt)*]) => { super::$name::Register };
    (@long $name:ident) => { () };
}

own_registers! {
    /// Cache Type Register.
    ctr_el0::CTR_EL0 = "ctr_el0" [
        /// Instruction-cache invalidation to the PoU is not needed for
        /// instruction-to-data coherence.
        DIC OFFSET(29) NUMBITS(1) [],
        /// Data-cache clean to the PoU is not needed for instruction-to-data
        /// coherence.
        IDC OFFSET(28) NUMBITS(1) [],
        /// log2 of the smallest data cache line, in words.
        DminLine OFFSET(16) NUMBITS(4) [],
        /// log2 of the smallest instruction cache line, in words.
        IminLine OFFSET(0) NUMBITS(4) [],
    ];
    /// Architectural Feature Trap Register (EL2), non-VHE layout
    /// (`aarch64-cpu` names only `TAM`).
    cptr_el2::CPTR_EL2 = "cptr_el2" [
        /// Trap `CPACR_EL1` accesses.
        TCPAC OFFSET(31) NUMBITS(1) [],
        /// Trap activity-monitor register accesses.
        TAM OFFSET(30) NUMBITS(1) [],
        /// Trap trace register accesses.
        TTA OFFSET(20) NUMBITS(1) [],
        /// Trap SME (and streaming SVE) instructions and registers.
        TSM OFFSET(12) NUMBITS(1) [],
        /// Trap FP/SIMD instructions and registers.
        TFP OFFSET(10) NUMBITS(1) [],
        /// Trap SVE instructions and registers.
        TZ OFFSET(8) NUMBITS(1) [],
    ];
    /// Counter-timer Hypervisor Physical Timer CompareValue: the EL2
    /// physical timer's deadline, in physical counts.
    cnthp_cval_el2::CNTHP_CVAL_EL2 = "cnthp_cval_el2";
    /// Deferred Interrupt Status Register (FEAT_RAS), by encoding: where an
    /// `ESB` at EL2 records an SError it deferred.
    disr_el1::DISR_EL1 = "s3_0_c12_c1_1" [
        /// An SError was deferred.
        A OFFSET(31) NUMBITS(1) [],
    ];
    /// Virtual Deferred Interrupt Status Register (FEAT_RAS), by encoding:
    /// what a guest reads and writes as `DISR_EL1` under `HCR_EL2.AMO`.
    vdisr_el2::VDISR_EL2 = "s3_4_c12_c1_1";
    /// Hypervisor System Trap Register: AArch32 CP15 traps.
    hstr_el2::HSTR_EL2 = "hstr_el2";
    /// Extended Hypervisor Configuration Register (FEAT_HCX), by encoding.
    hcrx_el2::HCRX_EL2 = "s3_4_c1_c2_2";
    /// Virtualization Processor ID Register: what EL1 reads as `MIDR_EL1`.
    vpidr_el2::VPIDR_EL2 = "vpidr_el2";
    /// Performance Monitors Control Register.
    pmcr_el0::PMCR_EL0 = "pmcr_el0" [
        /// Number of event counters implemented.
        N OFFSET(11) NUMBITS(5) [],
    ];
    /// Performance Monitors Count Enable Set (one bit per counter).
    pmcntenset_el0::PMCNTENSET_EL0 = "pmcntenset_el0";
    /// Performance Monitors Count Enable Clear (one bit per counter).
    pmcntenclr_el0::PMCNTENCLR_EL0 = "pmcntenclr_el0";
    /// EL0 Read/Write Software Thread ID Register 2 (FEAT_SME), by encoding.
    tpidr2_el0::TPIDR2_EL0 = "s3_3_c13_c0_5";
    /// AArch64 Processor Feature Register 0 (`aarch64-cpu` lacks `GIC`).
    id_aa64pfr0_el1::ID_AA64PFR0_EL1 = "id_aa64pfr0_el1" [
        /// SVE implemented.
        SVE OFFSET(32) NUMBITS(4) [],
        /// RAS extension implemented (`ESB`, `DISR_EL1`, `VDISR_EL2`).
        RAS OFFSET(28) NUMBITS(4) [],
        /// GIC system-register interface implemented.
        GIC OFFSET(24) NUMBITS(4) [],
    ];
    /// AArch64 Processor Feature Register 1 (`aarch64-cpu` lacks `SME`).
    id_aa64pfr1_el1::ID_AA64PFR1_EL1 = "id_aa64pfr1_el1" [
        /// SME implemented.
        SME OFFSET(24) NUMBITS(4) [],
    ];
    /// AArch64 Memory Model Feature Register 0 (`aarch64-cpu` lacks `FGT`).
    id_aa64mmfr0_el1::ID_AA64MMFR0_EL1 = "id_aa64mmfr0_el1" [
        /// Fine-grained trap registers implemented.
        FGT OFFSET(56) NUMBITS(4) [],
        /// Physical address range implemented (0b101: 48 bits).
        PARange OFFSET(0) NUMBITS(4) [],
    ];
    /// AArch64 Memory Model Feature Register 1 (`aarch64-cpu` lacks `HCX`).
    id_aa64mmfr1_el1::ID_AA64MMFR1_EL1 = "id_aa64mmfr1_el1" [
        /// `HCRX_EL2` implemented.
        HCX OFFSET(40) NUMBITS(4) [],
    ];
    /// System Control Register (EL1), the bits the engine sets or reads
    /// (`aarch64-cpu` lacks `SPAN` and the Armv8.0 RES1 bits).
    sctlr_el1::SCTLR_EL1 = "sctlr_el1" [
        /// `LSMAOE` (RES1 without FEAT_LSMAOC).
        LSMAOE OFFSET(29) NUMBITS(1) [],
        /// `nTLSMD` (RES1 without FEAT_LSMAOC).
        NTLSMD OFFSET(28) NUMBITS(1) [],
        /// Set Privileged Access Never on exception entry: clear = set PAN.
        SPAN OFFSET(23) NUMBITS(1) [],
        /// Exception entry is context synchronizing (RES1 without FEAT_ExS).
        EIS OFFSET(22) NUMBITS(1) [],
        /// `TSCXT` (RES1 without FEAT_CSV2_2).
        TSCXT OFFSET(20) NUMBITS(1) [],
        /// Exception exit is context synchronizing (RES1 without FEAT_ExS).
        EOS OFFSET(11) NUMBITS(1) [],
    ];
}

/// The `PSTATE.M` value of EL2 using `SP_EL2`, EL1 using `SP_EL1` and EL0, as
/// `SPSR_ELx.M` encodes them (also the low bits of a saved PSTATE).
pub mod mode {
    /// EL0 (`SP_EL0`).
    pub const EL0T: u64 = 0b0000;
    /// EL1 using `SP_EL0`.
    pub const EL1T: u64 = 0b0100;
    /// EL1 using `SP_EL1`.
    pub const EL1H: u64 = 0b0101;
    /// EL2 using `SP_EL2`.
    pub const EL2H: u64 = 0b1001;
}

/// `SPSR_EL2` for an `eret` to EL1h with D, A, I and F masked: how the
/// engine first enters the host (`vectors.rs`).
pub const SPSR_EL1H_MASKED: Value<SPSR_EL2::Register> = Value::new(&[
    SPSR_EL2::D::Masked,
    SPSR_EL2::A::Masked,
    SPSR_EL2::I::Masked,
    SPSR_EL2::F::Masked,
    SPSR_EL2::M::EL1h,
]);

/// `SPSR_EL2` for an `eret` to EL2h with D, A, I and F masked (the
/// callee-saved-write stub of `idregs.rs`).
pub const SPSR_EL2H_MASKED: Value<SPSR_EL2::Register> = Value::new(&[
    SPSR_EL2::D::Masked,
    SPSR_EL2::A::Masked,
    SPSR_EL2::I::Masked,
    SPSR_EL2::F::Masked,
    SPSR_EL2::M::EL2h,
]);

const _: () = assert!(SPSR_EL1H_MASKED.bits() == 0x3c0 | mode::EL1H);
const _: () = assert!(SPSR_EL2H_MASKED.bits() == 0x3c0 | mode::EL2H);
