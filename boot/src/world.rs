//! The world switch: running one vCPU at EL1 as a function call from EL2.
//!
//! [`enter_guest`] is called by the `VcpuRun` handler on the CPU that loaded
//! the vCPU. It saves the host side, installs the guest (its EL1 system
//! registers, virtual timer, FP/SIMD, general registers, Stage-2 and the
//! guest's `HCR_EL2`), `eret`s into it and returns when the guest takes any
//! exception to EL2, with the syndrome. The host side is then exactly as it
//! was, so the host's trap frame and vectors never know a guest ran.
//!
//! Invariants:
//! - While a guest runs, `VBAR_EL2` points at this module's guest-only
//!   vectors and `SP_EL2` at the switch frame (the host-side callee-saved
//!   registers, the host's `q0..q31`/FPSR/FPCR once the guest's are loaded,
//!   whether they are, the host `VBAR_EL2` and the context pointer). The
//!   guest's exception entry finds its context through that frame; no other
//!   register is trusted or needed.
//! - Every guest register the architecture lets EL1/EL0 read is either loaded
//!   from the guest's context before the `eret` or trapped by the guest
//!   `HCR_EL2`/`MDCR_EL2`/`CNTHCTL_EL2`/`CPTR_EL2` (docs/guests.md lists
//!   both, with the reason for each trap): nothing of the host or another guest
//!   is visible to a guest, and every guest register is saved back into its
//!   context before the host's values return.
//! - FP/SIMD is switched lazily, inside the assembly (so no
//!   compiler-generated SIMD code can run between load and `eret` or between
//!   exception and save). The EL2 image is softfloat (no engine code uses
//!   FP/SIMD and the host trap vector does not save them), so the host's
//!   FP/SIMD state is live in the CPU when the switch is called. The guest
//!   runs with `CPTR_EL2.TFP` set until its first FP/SIMD access of the
//!   run, which traps to the switch: only then are the host's `q0..q31`,
//!   FPSR and FPCR saved in the switch frame and the guest's loaded (`TFP`
//!   cleared for the rest of the run). On exit, if and only if that
//!   happened, the guest's are saved into its context and the host's
//!   restored. Either way no guest FP/SIMD value stays in a register and the
//!   host keeps its own; a run that never touches FP/SIMD exchanges none.
//! - The GICv3 virtual CPU interface (list registers, `ICH_VMCR_EL2`,
//!   `ICH_AP<m>R<n>_EL2`), which a guest's `ICC_*_EL1` accesses reach under
//!   `IMO`/`FMO`, holds the running vCPU's own state from its context page
//!   and is enabled (`ICH_HCR_EL2.En`) only while a guest runs
//!   ([`gic::VcpuInterface`]): no guest reads what another left there.
//! - While a guest's virtual timer interrupt is asserted at entry (the host
//!   was told at the last exit, and injects it), the physical PPI 27 is
//!   disabled in this CPU's redistributor for the run and given back after
//!   ([`gic::Redistributor::mask_ppi`]), so the guest's own pending timer
//!   does not end every turn before it can take the virtual one.
//! - Where SME exists, `TPIDR2_EL0` (not trapped by `CPTR_EL2.TSM`) is 0
//!   while a guest runs and the host's value on return; a guest's own value
//!   is not kept across exits (the context has no slot for it).
//! - The engine runs with every interrupt masked; the guest `HCR_EL2` routes
//!   physical IRQ/FIQ/SError to EL2 (`IMO/FMO/AMO`), so an interrupt that
//!   arrives while a guest runs exits to the host, which owns interrupts.

use core::arch::{asm, global_asm};

use isola::vcpu::{
    Context, OFF_FPCR, OFF_FPSR, OFF_PC, OFF_PSTATE, OFF_SYSREGS, OFF_V, OFF_VDISR, OFF_X,
    SYSREG_COUNT, SysReg,
};
use isola_abi::vgic::VTIMER_INTID;

use crate::gic::{self, Redistributor, VcpuInterface};
use crate::pmu::HostCounters;
use crate::sysreg::{
    CNTHCTL_EL2, CNTHP_CTL_EL2, CNTHP_CVAL_EL2, CNTVOFF_EL2, CPTR_EL2, DISR_EL1, ELR_EL2, ESR_EL2,
    FAR_EL2, HCR_EL2, HPFAR_EL2, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1, MDCR_EL2, Readable, SPSR_EL2,
    TPIDR2_EL0, VDISR_EL2, VMPIDR_EL2, VTTBR_EL2, Value, read, write_batched,
};
use crate::{caches, cpu_state, timer};

/// Which vector of the guest-only table the guest's exception came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Vector {
    /// Synchronous exception from the guest (AArch64): hypercalls, traps,
    /// Stage-2 aborts; the syndrome is in [`GuestExit::esr`].
    Sync = 0,
    /// A physical IRQ.
    Irq = 1,
    /// A physical FIQ.
    Fiq = 2,
    /// A physical SError.
    SError = 3,
    /// Any exception from an AArch32 EL0 of the guest: not supported.
    Aarch32 = 4,
}

impl Vector {
    fn from_raw(raw: u64) -> Self {
        match raw {
            0 => Self::Sync,
            1 => Self::Irq,
            2 => Self::Fiq,
            3 => Self::SError,
            _ => Self::Aarch32,
        }
    }
}

/// Why the guest stopped: the vector and the EL2 syndrome registers as they
/// were when the exception was taken. `esr`, `far` and `hpfar` are only
/// meaningful for [`Vector::Sync`] (and `far`/`hpfar` only for aborts); for
/// the asynchronous vectors they are read but stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestExit {
    /// The vector taken.
    pub vector: Vector,
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2`: the faulting virtual address (the guest's VA, or its IPA
    /// when its MMU is off).
    pub far: u64,
    /// `HPFAR_EL2`: the faulting IPA's page number (bits 47:12 in 43:4).
    pub hpfar: u64,
}

/// The Stage-2 and identity a vCPU runs with.
#[derive(Clone, Copy)]
pub struct GuestStage2 {
    /// `VTTBR_EL2`: the VM's Stage-2 root and its VMID.
    pub vttbr: Value<VTTBR_EL2::Register>,
    /// `VMPIDR_EL2`: the MPIDR the guest reads (RES1 bit 31 set; Aff0, Aff1
    /// and Aff2 the vCPU's index, 8 bits each).
    pub vmpidr: Value<VMPIDR_EL2::Register>,
}

impl GuestStage2 {
    /// From the core's `VTTBR_EL2` value for the VM (root and VMID) and the
    /// vCPU's index.
    pub fn new(vttbr: u64, vcpu_index: u64) -> Self {
        Self {
            vttbr: Value::raw(vttbr).with(&[VTTBR_EL2::CnP::CLEAR]),
            vmpidr: Value::new(&[
                VMPIDR_EL2::RES1::SET,
                VMPIDR_EL2::Aff0.val(vcpu_index & 0xff),
                VMPIDR_EL2::Aff1.val((vcpu_index >> 8) & 0xff),
                VMPIDR_EL2::Aff2.val((vcpu_index >> 16) & 0xff),
            ]),
        }
    }
}

/// `HCR_EL2` while a guest runs. Each bit and why:
/// - `VM` (0): Stage-2 translation on: the guest sees only what the engine
///   mapped for it.
/// - `SWIO` (1): set/way invalidate becomes clean+invalidate, so a guest
///   cannot drop dirty lines of memory it does not own.
/// - `FMO`, `IMO`, `AMO` (3, 4, 5): physical FIQ, IRQ and SError go to EL2,
///   where they end the guest's turn; the host owns every interrupt.
/// - `FB` (9), `BSU` = inner shareable (10): the guest's TLB and cache
///   maintenance is broadcast, because its vCPUs move between CPUs.
/// - `TWI`, `TWE` (13, 14): `WFI`/`WFE` exit, so an idle guest gives the CPU
///   back instead of sleeping on it.
/// - `TID3` (18): reads of the ID registers trap, so the guest sees only
///   the features the engine switches (the core's `guest_id_value`).
/// - `TSC` (19): `SMC` traps: the guest never reaches firmware; PSCI calls
///   become exits.
/// - `TIDCP` (20): implementation-defined system registers trap.
/// - `TACR` (21): `ACTLR_EL1` (implementation-defined CPU control) traps.
/// - `TSW` (22): data-cache set/way operations trap (they act on the whole
///   cache, not the guest's memory).
/// - `RW` (31): EL1 is AArch64.
/// - `TLOR` (35): LORegion registers trap.
/// - `TERR` (36): RAS error-record registers trap.
///
/// Left clear on purpose: `API`/`APK` (40, 41), so pointer-authentication
/// instructions and key registers trap and the host's keys stay unseen and
/// need no switching; `TGE`/`E2H` (EL2 host mode, not used); `VI`/`VF`/`VSE`
/// (no virtual interrupts are injected).
pub const HCR_GUEST: Value<HCR_EL2::Register> = Value::new(&[
    HCR_EL2::VM::SET,
    HCR_EL2::SWIO::SET,
    HCR_EL2::FMO::SET,
    HCR_EL2::IMO::SET,
    HCR_EL2::AMO::SET,
    HCR_EL2::FB::SET,
    HCR_EL2::BSU::InnerShareable,
    HCR_EL2::TWI::SET,
    HCR_EL2::TWE::SET,
    HCR_EL2::TID3::SET,
    HCR_EL2::TSC::SET,
    HCR_EL2::TIDCP::SET,
    HCR_EL2::TACR::SET,
    HCR_EL2::TSW::SET,
    HCR_EL2::RW::EL1IsAarch64,
    HCR_EL2::TLOR::SET,
    HCR_EL2::TERR::SET,
]);

/// `MDCR_EL2` trap bits added to the host's `MDCR_EL2` while a guest runs
/// (the host's `HPMN`, `HPMD`, `HCCD`, `TPMS` and `TTRF` are kept, so the
/// engine's exit handling is no more countable than its hypercalls):
/// `TPMCR` (5) and `TPM` (6), PMU access traps, so a guest can neither read
/// the host's counters nor reprogram them; `TDA` (9), `TDOSA` (10), `TDRA`
/// (11), debug register, OS-lock and debug-ROM accesses trap, so a guest
/// cannot set breakpoints or watchpoints that fire in the host.
pub const MDCR_GUEST_TRAPS: Value<MDCR_EL2::Register> = Value::new(&[
    MDCR_EL2::TPMCR::SET,
    MDCR_EL2::TPM::SET,
    MDCR_EL2::TDA::SET,
    MDCR_EL2::TDOSA::SET,
    MDCR_EL2::TDRA::SET,
]);

/// `CPTR_EL2` (non-VHE) trap bits forced on while a guest runs, whatever
/// the host's configuration: `TZ` (8) and `TSM` (12), SVE and SME, because
/// the switch exchanges only the low 128 bits of the vector registers and
/// the upper bits of Z registers, predicates and ZA would carry host state;
/// `TTA` (20), trace registers; `TAM` (30), activity monitors (they count
/// what the host did); `TFP` (10), FP/SIMD, until the guest's first FP/SIMD
/// instruction or `FPCR`/`FPSR` access of the run: the switch then exchanges
/// the host's and the guest's FP/SIMD registers and clears it for the rest
/// of the run (the lazy FP/SIMD switch, in the assembly below).
pub const CPTR_GUEST_TRAPS: Value<CPTR_EL2::Register> = Value::new(&[
    CPTR_EL2::TZ::SET,
    CPTR_EL2::TSM::SET,
    CPTR_EL2::TTA::SET,
    CPTR_EL2::TAM::SET,
    CPTR_EL2::TFP::SET,
]);

/// `CPTR_GUEST_TRAPS` in an image built with the planted bug
/// `planted-bug-lazy-fp-no-trap` (never a real build): `TFP` left clear, so
/// a guest uses whatever FP/SIMD values are in the CPU (the host's) without
/// the switch ever exchanging them. The census must catch it (VM B reads
/// VM A's `FPCR`: the test command's census teeth check builds it), and so
/// must the VM test's register probes (`cargo xtask planted
/// planted-bug-lazy-fp-no-trap vms1`).
const CPTR_GUEST: Value<CPTR_EL2::Register> = if cfg!(feature = "planted-bug-lazy-fp-no-trap") {
    Value::new(&[
        CPTR_EL2::TZ::SET,
        CPTR_EL2::TSM::SET,
        CPTR_EL2::TTA::SET,
        CPTR_EL2::TAM::SET,
    ])
} else {
    CPTR_GUEST_TRAPS
};

/// Declares [`El1State`] over every EL1/EL0 system register a guest owns and
/// the switch exchanges: `asm_name = SysReg variant`, the variant naming the
/// register's slot in the core's context page.
macro_rules! el1_registers {
    ($($r:ident = $slot:ident),* $(,)?) => {
        /// The EL1/EL0 system registers one side (host or guest) owns, in
        /// the core's [`SysReg`] order. The host's copy lives on the EL2
        /// stack while a guest runs.
        #[derive(Clone, Copy)]
        struct El1State([u64; SYSREG_COUNT as usize]);

        impl El1State {
            /// The values in the CPU now.
            fn read() -> Self {
                let mut regs = [0u64; SYSREG_COUNT as usize];
                $(
                    // SAFETY: reading an EL1/EL0 system register at EL2 has
                    // no side effect.
                    let v: u64 = unsafe {
                        let v;
                        asm!(concat!("mrs {}, ", stringify!($r)), out(reg) v,
                             options(nomem, nostack, preserves_flags));
                        v
                    };
                    // In range: the const assertion below counts the slots.
                    if let Some(slot) = regs.get_mut(SysReg::$slot as usize) {
                        *slot = v;
                    }
                )*
                Self(regs)
            }

            /// Puts these values in the CPU.
            ///
            /// # Safety
            /// The EL1&0 regime must not be executing: this CPU is at EL2
            /// between a trap and its `eret`, which synchronises the context.
            unsafe fn write(&self) {
                $(
                    let v = self.0.get(SysReg::$slot as usize).copied().unwrap_or(0);
                    if !dropped(SysReg::$slot) {
                        // SAFETY: per this function's contract these
                        // registers only take effect at the next `eret` to
                        // EL1/EL0.
                        unsafe {
                            asm!(concat!("msr ", stringify!($r), ", {}"), in(reg) v,
                                 options(nomem, nostack, preserves_flags));
                        }
                    }
                )*
            }

            /// Stores the guest's values into its context page straight from
            /// the CPU, except the registers [`trapped_for_guest`] names: the
            /// guest cannot have changed those (every access it makes traps and
            /// the core answers it), so the context holds their value already.
            ///
            /// # Safety
            /// As for [`El1State::load_from`]; right after the guest's exit.
            unsafe fn save_guest(ctx: *mut u8) {
                $(
                    if !trapped_for_guest(SysReg::$slot) {
                        // SAFETY: reading an EL1/EL0 system register at EL2 has
                        // no side effect.
                        let v: u64 = unsafe {
                            let v;
                            asm!(concat!("mrs {}, ", stringify!($r)), out(reg) v,
                                 options(nomem, nostack, preserves_flags));
                            v
                        };
                        let off = (OFF_SYSREGS as usize)
                            .wrapping_add((SysReg::$slot as usize).wrapping_mul(8));
                        // SAFETY: within the context page (the core's layout
                        // test keeps the register block inside it), 8-byte
                        // aligned, this CPU's alone (the caller's contract).
                        unsafe { ctx.wrapping_add(off).cast::<u64>().write_volatile(v) };
                    }
                )*
            }
        }

        /// Every register is named once: the list covers the context.
        const _: () = assert!([$(SysReg::$slot),*].len() as u64 == SYSREG_COUNT);
    };
}

/// Whether every guest access to `r` traps to EL2, so that the guest's
/// value can change only through the core and the exit need not read it
/// back: `MDSCR_EL1`, trapped by `MDCR_EL2.TDA` (the core reads it as 0 and
/// ignores writes, as for every debug register; the census table lists it
/// as emulated). The switch still loads the context's value (0) for the
/// guest, so the host's debug controls never apply to it.
#[inline(always)]
const fn trapped_for_guest(r: SysReg) -> bool {
    r as u8 == SysReg::MdscrEl1 as u8
}

// `trapped_for_guest` holds only while the guest's MDCR_EL2 has `TDA`.
const _: () = assert!(MDCR_GUEST_TRAPS.bits() & (1 << 9) != 0);

/// Whether the switch leaves `r` alone: never, except in an image built
/// with the planted bug `planted-bug-switch-drops-register` (never a real
/// build), which drops `CONTEXTIDR_EL1` from the switch so the register
/// census (`isola.test=census`) must see it leak; `cargo xtask test` runs
/// the census on that image and expects it to fail.
#[inline(always)]
const fn dropped(r: SysReg) -> bool {
    cfg!(feature = "planted-bug-switch-drops-register") && r as u8 == SysReg::ContextidrEl1 as u8
}

el1_registers!(
    sctlr_el1 = SctlrEl1,
    ttbr0_el1 = Ttbr0El1,
    ttbr1_el1 = Ttbr1El1,
    tcr_el1 = TcrEl1,
    mair_el1 = MairEl1,
    amair_el1 = AmairEl1,
    vbar_el1 = VbarEl1,
    contextidr_el1 = ContextidrEl1,
    tpidr_el0 = TpidrEl0,
    tpidrro_el0 = TpidrroEl0,
    tpidr_el1 = TpidrEl1,
    sp_el0 = SpEl0,
    sp_el1 = SpEl1,
    elr_el1 = ElrEl1,
    spsr_el1 = SpsrEl1,
    esr_el1 = EsrEl1,
    far_el1 = FarEl1,
    afsr0_el1 = Afsr0El1,
    afsr1_el1 = Afsr1El1,
    par_el1 = ParEl1,
    cpacr_el1 = CpacrEl1,
    cntkctl_el1 = CntkctlEl1,
    cntv_ctl_el0 = CntvCtlEl0,
    cntv_cval_el0 = CntvCvalEl0,
    csselr_el1 = CsselrEl1,
    mdscr_el1 = MdscrEl1,
);

impl El1State {
    /// The value of register `r`.
    fn get(&self, r: SysReg) -> u64 {
        self.0.get(r as usize).copied().unwrap_or(0)
    }

    /// The guest's values from its context page.
    ///
    /// # Safety
    /// `ctx` points at a context page this CPU has loaded (no other CPU
    /// accesses it).
    unsafe fn load_from(ctx: *const u8) -> Self {
        let mut regs = [0u64; SYSREG_COUNT as usize];
        for (i, r) in regs.iter_mut().enumerate() {
            let off = (OFF_SYSREGS as usize).wrapping_add(i.wrapping_mul(8));
            // SAFETY: within the context page (the core's layout test keeps
            // the register block inside it), 8-byte aligned, this CPU's alone.
            *r = unsafe { ctx.wrapping_add(off).cast::<u64>().read_volatile() };
        }
        Self(regs)
    }
}

/// The EL2 state a guest run changes and the host gets back.
struct HostEl2 {
    elr_el2: Value<()>,
    spsr_el2: Value<SPSR_EL2::Register>,
    hcr_el2: Value<HCR_EL2::Register>,
    vttbr_el2: Value<VTTBR_EL2::Register>,
    cntvoff_el2: Value<()>,
    cnthctl_el2: Value<CNTHCTL_EL2::Register>,
    mdcr_el2: Value<MDCR_EL2::Register>,
    cptr_el2: Value<CPTR_EL2::Register>,
    vmpidr_el2: Value<VMPIDR_EL2::Register>,
    /// The host's enabled PMU counters: every counter the host had enabled
    /// is disabled for the guest's run (so they count neither the guest's
    /// events nor the switch) and re-enabled on the way back (`pmu.rs`).
    counters: HostCounters,
    /// The host's `TPIDR2_EL0` where SME exists (`ID_AA64PFR1_EL1.SME` != 0).
    /// `CPTR_EL2.TSM` does not trap it, so a guest runs with 0 there and the
    /// host's value returns on exit. The core's context has no slot for it:
    /// a guest's own value is not kept across exits (a functional limit,
    /// docs/guests.md), and never shown to the host or another guest.
    tpidr2_el0: Option<Value<()>>,
    /// The host's `DISR_EL1` where FEAT_RAS exists (`ID_AA64PFR0_EL1.RAS`
    /// != 0): the switch clears it for the run, so an SError the exit's
    /// `ESB` defers there is the guest's, and gives the host's back.
    disr_el1: Option<Value<DISR_EL1::Register>>,
}

impl HostEl2 {
    fn save() -> Self {
        Self {
            elr_el2: read!(ELR_EL2),
            spsr_el2: read!(SPSR_EL2),
            hcr_el2: read!(HCR_EL2),
            vttbr_el2: read!(VTTBR_EL2),
            cntvoff_el2: read!(CNTVOFF_EL2),
            cnthctl_el2: read!(CNTHCTL_EL2),
            mdcr_el2: read!(MDCR_EL2),
            cptr_el2: read!(CPTR_EL2),
            vmpidr_el2: read!(VMPIDR_EL2),
            counters: HostCounters::save(),
            tpidr2_el0: (ID_AA64PFR1_EL1.read(ID_AA64PFR1_EL1::SME) != 0)
                .then(|| Value::raw(TPIDR2_EL0.get())),
            disr_el1: (ID_AA64PFR0_EL1.read(ID_AA64PFR0_EL1::RAS) != 0)
                .then(|| read!(DISR_EL1 as "s3_0_c12_c1_1")),
        }
    }

    /// # Safety
    /// Only on the way back to the host, after the guest's state is saved.
    unsafe fn restore(&self) {
        // SAFETY: the host's own values, saved by `save` on this CPU before
        // the guest's were installed; `isb` puts them in force before the
        // engine's code continues (the `eret` to the host would too).
        unsafe {
            write_batched!(HCR_EL2, self.hcr_el2);
            write_batched!(VTTBR_EL2, self.vttbr_el2);
            write_batched!(CNTVOFF_EL2, self.cntvoff_el2);
            write_batched!(CNTHCTL_EL2, self.cnthctl_el2);
            write_batched!(MDCR_EL2, self.mdcr_el2);
            write_batched!(CPTR_EL2, self.cptr_el2);
            write_batched!(VMPIDR_EL2, self.vmpidr_el2);
            self.counters.resume();
            if let Some(tpidr2) = self.tpidr2_el0 {
                write_batched!(TPIDR2_EL0 as "s3_3_c13_c0_5", tpidr2);
            }
            if let Some(disr) = self.disr_el1 {
                write_batched!(DISR_EL1 as "s3_0_c12_c1_1", disr);
            }
            write_batched!(ELR_EL2, self.elr_el2);
            write_batched!(SPSR_EL2, self.spsr_el2);
            asm!("isb", options(nostack, preserves_flags));
        }
    }
}

/// Runs the vCPU whose context page is `ctx` until it takes an exception to
/// EL2.
///
/// On return every register of the host side (EL1 system registers, the
/// EL2 registers `HostEl2` lists, `VBAR_EL2`, the callee-saved
/// registers) has its value from before the call, and the context holds the
/// guest's registers at the exception (PC = `ELR_EL2`, PSTATE = `SPSR_EL2`).
///
/// # Safety
/// - Called at EL2 with every interrupt masked, on the CPU that holds the
///   vCPU loaded (the core's `vcpu_load` succeeded here and `vcpu_put` has not
///   run): no other CPU reads or writes the context page meanwhile, and it is
///   identity-mapped read-write in the EL2 stage-1 map.
/// - `stage2.vttbr` names a complete Stage-2 table of that vCPU's VM and its
///   VMID, which stays valid (not freed, not reused) until this returns.
/// - The context's PSTATE names EL1 or EL0 in AArch64 (the core only ever
///   stores such values).
pub unsafe fn enter_guest(ctx: Context, stage2: GuestStage2) -> GuestExit {
    let page = core::ptr::with_exposed_provenance_mut::<u8>(ctx.page().raw() as usize);
    let host = HostEl2::save();
    // SAFETY: `restore` below re-enables the counters; the `isb` before the
    // guest's `eret` puts it in force.
    unsafe { host.counters.stop() };
    let host_el1 = El1State::read();
    // SAFETY: the caller guarantees the context page is this CPU's.
    let guest_el1 = unsafe { El1State::load_from(page) };
    let vgic = gic::shape();
    let vtimer_asserted = isola::vgic::vtimer_asserted(guest_el1.get(SysReg::CntvCtlEl0))
        && !cfg!(feature = "planted-bug-vtimer-unmasked");
    // The host's tick bounds the run: the EL2 physical timer fires at the
    // host's virtual-timer deadline, which the guest's CNTV_* replace for
    // the run (the IRQ exits with `Trap::Irq`). Disarmed below before the
    // host runs.
    let host_deadline = timer::host_deadline(
        host_el1.get(SysReg::CntvCtlEl0),
        host_el1.get(SysReg::CntvCvalEl0),
        host.cntvoff_el2.bits(),
    )
    .filter(|_| !cfg!(feature = "planted-bug-no-run-bound"));
    // This CPU's redistributor, only when one of the two needs it (a run
    // with neither, the common case, touches neither the GIC nor the
    // per-CPU record).
    let redistributor = (vtimer_asserted || host_deadline.is_some())
        .then(|| cpu_state::with_this(|s| s.redistributor).ok())
        .flatten()
        .and_then(Redistributor::from_raw);
    // The guest's timer interrupt was asserted at its last exit (the host
    // injects it): keep the physical one from ending this run. Given back
    // below, before the host runs.
    let vtimer_masked = match redistributor {
        // SAFETY: restored after the run (`enable_ppi` below).
        Some(rd) if vtimer_asserted => unsafe { rd.mask_ppi(VTIMER_INTID) },
        _ => false,
    };
    if let (Some(deadline), Some(rd)) = (host_deadline, redistributor) {
        // SAFETY: the EL2 timer and its PPI are the engine's; the timer
        // fires only while the guest runs (disarmed before the host runs),
        // and its interrupt then only ends the guest's turn.
        unsafe {
            rd.claim_ppi(timer::HYP_TIMER_PPI);
            write_batched!(CNTHP_CVAL_EL2, Value::raw(deadline));
            write_batched!(CNTHP_CTL_EL2, timer::CNTHP_ARMED);
        }
    }
    let mdcr = host.mdcr_el2.union(MDCR_GUEST_TRAPS);
    // SAFETY: the guest's Stage-2, traps, timer offset and EL1 registers;
    // they affect only the EL1&0 regime (`VM` and the traps), which next runs
    // at the `eret` inside the switch. The offset goes first so the guest's
    // virtual timer is never compared against the host's offset. The caller
    // guarantees the Stage-2 table's validity and that the context page is
    // this CPU's.
    unsafe {
        write_batched!(CNTVOFF_EL2, timer::CNTVOFF_GUEST);
        if let Some(s) = vgic {
            VcpuInterface::load(page, s);
        }
        if host.tpidr2_el0.is_some() {
            write_batched!(TPIDR2_EL0 as "s3_3_c13_c0_5", Value::raw(0));
        }
        if host.disr_el1.is_some() {
            write_batched!(DISR_EL1 as "s3_0_c12_c1_1", Value::raw(0));
            let vdisr = page
                .wrapping_add(OFF_VDISR as usize)
                .cast::<u64>()
                .read_volatile();
            write_batched!(VDISR_EL2 as "s3_4_c12_c1_1", Value::raw(vdisr));
        }
        guest_el1.write();
        write_batched!(VTTBR_EL2, stage2.vttbr);
        write_batched!(VMPIDR_EL2, stage2.vmpidr);
        write_batched!(CNTHCTL_EL2, timer::CNTHCTL_GUEST);
        write_batched!(MDCR_EL2, mdcr);
        write_batched!(CPTR_EL2, host.cptr_el2.union(CPTR_GUEST));
        write_batched!(HCR_EL2, HCR_GUEST.union(caches::hcr_fwb()));
        asm!("isb", options(nostack, preserves_flags));
    }
    let raw: u64;
    // SAFETY: `isola_world_switch` saves the callee-saved registers it uses
    // (x19..x30) and VBAR_EL2 in its frame, and the host's FP/SIMD state
    // (q0..q31, FPSR, FPCR) if the guest's is loaded, and restores them
    // before returning; every other
    // general register is declared clobbered. It reads and
    // writes only the context page, which the caller guarantees is this
    // CPU's alone.
    unsafe {
        asm!(
            "bl isola_world_switch",
            inlateout("x0") page => raw,
            clobber_abi("C"),
        );
    }
    // An SError of the guest's still pending when it left was deferred into
    // DISR_EL1 by the exit's `ESB`: the exit is that SError, whatever else
    // the guest was doing, and it never reaches the host.
    let deferred = host
        .disr_el1
        .map(|_| read!(DISR_EL1 as "s3_0_c12_c1_1"))
        .filter(|d| d.bits() & 1 << 31 != 0);
    let exit = match deferred {
        Some(disr) => GuestExit {
            vector: Vector::SError,
            esr: isola::abort::deferred_serror_esr(disr.bits()),
            far: 0,
            hpfar: 0,
        },
        None => GuestExit {
            vector: Vector::from_raw(raw),
            esr: read!(ESR_EL2).bits(),
            far: read!(FAR_EL2).bits(),
            hpfar: read!(HPFAR_EL2).bits(),
        },
    };
    let vdisr = host
        .disr_el1
        .map(|_| read!(VDISR_EL2 as "s3_4_c12_c1_1").bits());
    // SAFETY: the guest's EL1 registers go back to its (this CPU's) context
    // page; then the host's EL1 registers and EL2 configuration return. The
    // host runs again only after the `eret` of its trap.
    unsafe {
        El1State::save_guest(page);
        if let Some(s) = vgic {
            VcpuInterface::save(page, s);
        }
        if let Some(v) = vdisr {
            page.wrapping_add(OFF_VDISR as usize)
                .cast::<u64>()
                .write_volatile(v);
        }
        host_el1.write();
        if host_deadline.is_some() {
            write_batched!(CNTHP_CTL_EL2, timer::CNTHP_OFF);
        }
        host.restore();
        if let (true, Some(rd)) = (vtimer_masked, redistributor) {
            rd.enable_ppi(VTIMER_INTID);
        }
    }
    exit
}

// The assembly addresses the context page with immediate offsets: x0..x30
// and q0..q31 in pairs. Check the core's layout suits it (8- and 16-byte
// aligned, within `add`'s 12-bit immediate).
const _: () =
    assert!(OFF_X.is_multiple_of(8) && OFF_PC.is_multiple_of(8) && OFF_PSTATE.is_multiple_of(8));
const _: () = assert!(OFF_V.is_multiple_of(16) && OFF_V < 4096 && OFF_X < 4096);
const _: () = assert!(OFF_FPSR.is_multiple_of(8) && OFF_FPCR.is_multiple_of(8));

/// The switch frame on the EL2 stack: x19..x30 (96 bytes), the context
/// pointer and the host's VBAR_EL2 (16), the host's FPSR and FPCR (16),
/// whether the guest's FP/SIMD registers are loaded (8, and 8 of padding),
/// the host's q0..q31 while they are (512, 16-byte aligned).
const FRAME: usize = 656;
const F_CTX: usize = 96;
const F_VBAR: usize = 104;
const F_FPSR: usize = 112;
const F_FP_LOADED: usize = 128;
const F_Q: usize = 144;
const _: () = assert!(F_Q.is_multiple_of(16) && F_Q.wrapping_add(512) == FRAME);
const _: () = assert!(FRAME.is_multiple_of(16) && FRAME.wrapping_add(32) < 4096);

/// `ESR_EL2.EC` of an FP/SIMD access trapped by `CPTR_EL2.TFP`.
const EC_FP: u64 = 0x07;

global_asm!(
    r#"
// isola_world_switch(x0 = context page) -> x0 = vector index.
// Called only from `enter_guest`; returns when the guest takes an exception.
.section .text.isola_world_switch, "ax"
.global isola_world_switch
isola_world_switch:
    sub sp, sp, #{FRAME}
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    str x0, [sp, #{F_CTX}]
    mrs x1, vbar_el2
    str x1, [sp, #{F_VBAR}]

    // FP/SIMD stays the host's: the guest runs with `CPTR_EL2.TFP` set and
    // its first FP/SIMD access comes to `isola_guest_sync` below, which
    // exchanges them. Not loaded yet.
    str xzr, [sp, #{F_FP_LOADED}]

    // Where the guest resumes, and the guest-only vectors.
    ldr x2, [x0, #{C_PC}]
    msr elr_el2, x2
    ldr x2, [x0, #{C_PSTATE}]
    msr spsr_el2, x2
    adrp x2, isola_guest_vectors
    add x2, x2, :lo12:isola_guest_vectors
    msr vbar_el2, x2
    isb

    // Guest general registers, x0/x1 last (x0 is the context pointer).
    add x1, x0, #{C_X}
    ldp x2, x3, [x1, #16]
    ldp x4, x5, [x1, #32]
    ldp x6, x7, [x1, #48]
    ldp x8, x9, [x1, #64]
    ldp x10, x11, [x1, #80]
    ldp x12, x13, [x1, #96]
    ldp x14, x15, [x1, #112]
    ldp x16, x17, [x1, #128]
    ldp x18, x19, [x1, #144]
    ldp x20, x21, [x1, #160]
    ldp x22, x23, [x1, #176]
    ldp x24, x25, [x1, #192]
    ldp x26, x27, [x1, #208]
    ldp x28, x29, [x1, #224]
    ldr x30, [x1, #240]
    ldp x0, x1, [x1, #0]
    eret
    // Never reached: stops straight-line speculation past the eret.
    dsb nsh
    isb

// Guest-only vectors. An exception taken at EL2 while they are installed is
// an engine bug: report it. Exceptions from the guest save x0/x1 on the
// switch frame's doorstep and pass their vector index to the common exit.
.section .text.isola_guest_vectors, "ax"
.balign 2048
.global isola_guest_vectors
isola_guest_vectors:
    .set isola_gv_kind, 0
    .rept 8
    .balign 0x80
    mov x0, #isola_gv_kind
    b isola_guest_vectors_el2
    .set isola_gv_kind, (isola_gv_kind + 1) % 4
    .endr
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    b isola_guest_sync
    .set isola_gv_kind, 1
    .rept 3
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #isola_gv_kind
    b isola_guest_exit
    .set isola_gv_kind, isola_gv_kind + 1
    .endr
    .rept 4
    .balign 0x80
    stp x0, x1, [sp, #-16]!
    mov x1, #{AARCH32}
    b isola_guest_exit
    .endr

// A synchronous exception from the guest (x0/x1 saved below the frame).
// The first FP/SIMD access of the run (ESR_EL2.EC 0x07, trapped by
// `CPTR_EL2.TFP`) is handled here: `TFP` is cleared (it traps EL2's own
// FP/SIMD accesses too), the host's q0..q31, FPSR and FPCR go to the switch
// frame, the guest's come from its context, and the guest retries the
// instruction (the `eret` synchronises the `CPTR_EL2` write for it). Anything else, or a second such trap
// (the flag says the guest's are loaded already: never by the architecture,
// but the host's saved values must never be overwritten), is an exit.
isola_guest_sync:
    mrs x0, esr_el2
    lsr x0, x0, #26
    cmp x0, #{EC_FP}
    b.ne 3f
    ldr x0, [sp, #(16 + {F_FP_LOADED})]
    cbnz x0, 3f
    stp x2, x3, [sp, #-16]!
    // `TFP` traps EL2's own FP/SIMD accesses too: off first.
    mrs x2, cptr_el2
    bic x2, x2, #(1 << 10)
    msr cptr_el2, x2
    isb
    .arch_extension fp
    .arch_extension simd
    add x0, sp, #(32 + {F_Q})
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    mrs x2, fpsr
    mrs x3, fpcr
    stp x2, x3, [sp, #(32 + {F_FPSR})]
    ldr x1, [sp, #(32 + {F_CTX})]
    add x0, x1, #{C_Q}
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q8, q9, [x0, #128]
    ldp q10, q11, [x0, #160]
    ldp q12, q13, [x0, #192]
    ldp q14, q15, [x0, #224]
    ldp q16, q17, [x0, #256]
    ldp q18, q19, [x0, #288]
    ldp q20, q21, [x0, #320]
    ldp q22, q23, [x0, #352]
    ldp q24, q25, [x0, #384]
    ldp q26, q27, [x0, #416]
    ldp q28, q29, [x0, #448]
    ldp q30, q31, [x0, #480]
    ldr x2, [x1, #{C_FPSR}]
    msr fpsr, x2
    ldr x2, [x1, #{C_FPCR}]
    msr fpcr, x2
    .arch_extension nosimd
    .arch_extension nofp
    mov x2, #1
    str x2, [sp, #(32 + {F_FP_LOADED})]
    ldp x2, x3, [sp], #16
    ldp x0, x1, [sp], #16
    eret
    // Never reached: stops straight-line speculation past the eret.
    dsb nsh
    isb
3:  mov x1, #0
    b isola_guest_exit

isola_guest_exit:
    // ESB: an SError the guest caused and that is still pending (PSTATE.A
    // is masked at EL2 since the exception) is deferred into DISR_EL1, for
    // `enter_guest` to find; a NOP without FEAT_RAS.
    hint #16
    ldr x0, [sp, #(16 + {F_CTX})]
    add x0, x0, #{C_X}
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    str x30, [x0, #240]
    ldp x2, x3, [sp], #16
    stp x2, x3, [x0, #0]
    sub x0, x0, #{C_X}
    mrs x2, elr_el2
    str x2, [x0, #{C_PC}]
    mrs x2, spsr_el2
    str x2, [x0, #{C_PSTATE}]

    // FP/SIMD: only if the guest's were loaded this run. Then the guest's
    // go to its context and the host's come back, so nothing of the
    // guest's stays in a register; otherwise the host's never left.
    ldr x3, [sp, #{F_FP_LOADED}]
    cbz x3, 4f
    .arch_extension fp
    .arch_extension simd
    add x2, x0, #{C_Q}
    stp q0, q1, [x2, #0]
    stp q2, q3, [x2, #32]
    stp q4, q5, [x2, #64]
    stp q6, q7, [x2, #96]
    stp q8, q9, [x2, #128]
    stp q10, q11, [x2, #160]
    stp q12, q13, [x2, #192]
    stp q14, q15, [x2, #224]
    stp q16, q17, [x2, #256]
    stp q18, q19, [x2, #288]
    stp q20, q21, [x2, #320]
    stp q22, q23, [x2, #352]
    stp q24, q25, [x2, #384]
    stp q26, q27, [x2, #416]
    stp q28, q29, [x2, #448]
    stp q30, q31, [x2, #480]
    mrs x3, fpsr
    str x3, [x0, #{C_FPSR}]
    mrs x3, fpcr
    str x3, [x0, #{C_FPCR}]
    add x2, sp, #{F_Q}
    ldp q0, q1, [x2, #0]
    ldp q2, q3, [x2, #32]
    ldp q4, q5, [x2, #64]
    ldp q6, q7, [x2, #96]
    ldp q8, q9, [x2, #128]
    ldp q10, q11, [x2, #160]
    ldp q12, q13, [x2, #192]
    ldp q14, q15, [x2, #224]
    ldp q16, q17, [x2, #256]
    ldp q18, q19, [x2, #288]
    ldp q20, q21, [x2, #320]
    ldp q22, q23, [x2, #352]
    ldp q24, q25, [x2, #384]
    ldp q26, q27, [x2, #416]
    ldp q28, q29, [x2, #448]
    ldp q30, q31, [x2, #480]
    ldp x2, x3, [sp, #{F_FPSR}]
    msr fpsr, x2
    msr fpcr, x3
    .arch_extension nosimd
    .arch_extension nofp
4:
    // Host side back: vectors first, so an engine fault from here on is
    // reported by the engine's own vectors.
    ldr x2, [sp, #{F_VBAR}]
    msr vbar_el2, x2
    isb
    mov x0, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    add sp, sp, #{FRAME}
    ret

// x0 = 0..3 (sync, IRQ, FIQ, SError) taken at EL2 while the guest vectors
// were installed.
isola_guest_vectors_el2:
    mrs x1, esr_el2
    mrs x2, elr_el2
    mrs x3, far_el2
    bl isola_world_el2_fault
1:  wfe
    b 1b
"#,
    FRAME = const FRAME,
    F_FPSR = const F_FPSR,
    F_Q = const F_Q,
    F_FP_LOADED = const F_FP_LOADED,
    EC_FP = const EC_FP,
    F_CTX = const F_CTX,
    F_VBAR = const F_VBAR,
    C_X = const OFF_X,
    C_PC = const OFF_PC,
    C_PSTATE = const OFF_PSTATE,
    C_Q = const OFF_V,
    C_FPSR = const OFF_FPSR,
    C_FPCR = const OFF_FPCR,
    AARCH32 = const Vector::Aarch32 as u64,
);

/// An exception at EL2 while the guest-only vectors were installed (in the
/// few instructions around the `eret`): an engine bug. Reports and powers off.
#[unsafe(no_mangle)]
extern "C" fn isola_world_el2_fault(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    crate::stop::fatal(format_args!(
        "fatal exception at EL2 in the world switch (kind {kind}, ESR_EL2 {esr:#x}, ELR_EL2 {elr:#x}, FAR_EL2 {far:#x})"
    ))
}
