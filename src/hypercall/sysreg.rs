//! Guest system-register traps (ESR_EL2 EC 0x18): which accesses the engine
//! answers itself and how, as pure functions of the syndrome.
//!
//! The guest configuration traps whole groups of registers the engine does
//! not switch between worlds (debug, PMU, activity monitors, LORegions, RAS
//! records, `ACTLR_EL1`): a guest must never reach the host's values. Linux
//! touches several of them at boot (it clears the OS lock, resets
//! `PMUSERENR_EL0`, writes `MDSCR_EL1`), so instead of stopping the vCPU the
//! engine makes them read as zero and ignores writes: the guest sees a CPU
//! without those features, which the ID registers it reads say too
//! ([`guest_id_value`]). `ICC_SGI1R_EL1` writes become `Exit::Sgi`: the
//! host, which emulates the distributor, delivers the SGI.
//!
//! Everything else is UNDEFINED to the guest: the engine injects the
//! Undefined Instruction exception the architecture gives for a register
//! that does not exist ([`Regs::inject_undefined`]), so a register this
//! module does not name is never silently emulated wrong, and a guest that
//! probes for one (as the register census does, docs/guests.md) carries on
//! the way it would on a CPU without it.

use isola_abi::Exit;

use crate::abort::Esr;
use crate::arch::Arch;
use crate::engine::Engine;
use crate::hypercall::{GuestExitAction, LoadedVcpu};
use crate::vcpu::Regs;

/// A trapped `MRS`/`MSR`, decoded from the ISS: Op0 21:20, Op2 19:17,
/// Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Direction 0 (1 = read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Op0.
    pub op0: u8,
    /// Op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// Op2.
    pub op2: u8,
    /// The transfer register (31 = XZR).
    pub rt: u8,
    /// `MRS` rather than `MSR`.
    pub read: bool,
}

impl Access {
    /// Decodes ESR_EL2's ISS for EC 0x18.
    pub const fn from_esr(esr: u64) -> Self {
        Self {
            op0: ((esr >> 20) & 3) as u8,
            op2: ((esr >> 17) & 7) as u8,
            op1: ((esr >> 14) & 7) as u8,
            crn: ((esr >> 10) & 0xf) as u8,
            rt: ((esr >> 5) & 0x1f) as u8,
            crm: ((esr >> 1) & 0xf) as u8,
            read: esr & 1 != 0,
        }
    }

    /// The ESR_EL2 a trap of this access carries (EC 0x18, IL).
    pub const fn esr(self) -> u64 {
        0x18 << 26
            | 1 << 25
            | (self.op0 as u64 & 3) << 20
            | (self.op2 as u64 & 7) << 17
            | (self.op1 as u64 & 7) << 14
            | (self.crn as u64 & 0xf) << 10
            | (self.rt as u64 & 0x1f) << 5
            | (self.crm as u64 & 0xf) << 1
            | self.read as u64
    }

    const fn is(self, op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> bool {
        self.op0 == op0 && self.op1 == op1 && self.crn == crn && self.crm == crm && self.op2 == op2
    }
}

/// What the engine does with a trapped guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// `ICC_SGI1R_EL1` write: `Exit::Sgi` from the register's value.
    Sgi1r,
    /// Read as zero, write ignored; the guest continues after it.
    RazWi,
    /// A read of the ID register space (Op0 3, Op1 0, CRn 0, CRm 1..=7):
    /// [`guest_id_value`].
    IdRead {
        /// CRm.
        crm: u8,
        /// Op2.
        op2: u8,
    },
    /// Nothing the engine emulates: an Undefined Instruction exception for
    /// the guest.
    Refuse,
}

/// The engine's policy for a trapped guest access.
pub const fn classify(a: Access) -> Handling {
    // ICC_SGI1R_EL1 (S3_0_C12_C11_5): a write sends an SGI. ICC_ASGI1R_EL1
    // and ICC_SGI0R_EL1 (op2 6, 7: the other security state's group, and
    // group 0, which a non-secure guest never uses) are ignored.
    if a.is(3, 0, 12, 11, 5) && !a.read {
        return Handling::Sgi1r;
    }
    if a.op0 == 3 && a.op1 == 0 && a.crn == 12 && a.crm == 11 && (a.op2 == 6 || a.op2 == 7) {
        return if a.read {
            Handling::Refuse
        } else {
            Handling::RazWi
        };
    }
    if a.op0 == 3 && a.op1 == 0 && a.crn == 0 && a.crm >= 1 && a.crm <= 7 {
        return if a.read {
            Handling::IdRead {
                crm: a.crm,
                op2: a.op2,
            }
        } else {
            Handling::Refuse
        };
    }
    let raz_wi =
        // Debug and trace (all of Op0 2: OS lock, breakpoints, watchpoints,
        // MDSCR_EL1, DCC, claim tags, trace unit): MDCR_EL2.TDA/TDOSA/TDRA
        // and CPTR_EL2.TTA trap them.
        a.op0 == 2
        // PMU: PMCR_EL0..PMOVSSET_EL0, PMUSERENR_EL0 (Op1 3, CRn 9, CRm
        // 12..=14), PMINTEN*_EL1, PMMIR_EL1 (Op1 0, CRn 9, CRm 14), event
        // counters and types (Op1 3, CRn 14, CRm 8..=15): MDCR_EL2.TPM/TPMCR.
        || (a.op0 == 3 && a.crn == 9 && ((a.op1 == 3 && a.crm >= 12 && a.crm <= 14)
            || (a.op1 == 0 && a.crm == 14)))
        || (a.op0 == 3 && a.op1 == 3 && a.crn == 14 && a.crm >= 8)
        // Activity monitors (Op1 3, CRn 13, CRm 2..=7 and the
        // auxiliaries 10..=15): CPTR_EL2.TAM.
        || (a.op0 == 3 && a.op1 == 3 && a.crn == 13 && a.crm >= 2)
        // LORegions (CRn 10, CRm 4): HCR_EL2.TLOR.
        || (a.op0 == 3 && a.op1 == 0 && a.crn == 10 && a.crm == 4)
        // RAS error records (CRn 5, CRm 3..=5): HCR_EL2.TERR.
        || (a.op0 == 3 && a.op1 == 0 && a.crn == 5 && a.crm >= 3 && a.crm <= 5)
        // ACTLR_EL1: HCR_EL2.TACR.
        || a.is(3, 0, 1, 0, 1);
    if raz_wi {
        Handling::RazWi
    } else {
        Handling::Refuse
    }
}

/// Decodes an `ICC_SGI1R_EL1` value written by vCPU `me` of a VM with
/// `vcpus` vCPUs: the bitmap of target vCPU indices and the INTID.
///
/// The guest's vCPU `n` has affinity `0.0.0.n` (see `isola_abi::psci`):
/// with `IRM` (bit 40) every vCPU but the writer is a target; otherwise
/// the target list (bits 15:0) names Aff0 values within the cluster named
/// by Aff3.Aff2.Aff1 (bits 55:48, 39:32, 23:16) and the range selector `RS`
/// (bits 47:44), which must all be 0 to name any vCPU.
pub const fn sgi1r_targets(value: u64, me: u16, vcpus: u16) -> (u16, u8) {
    let intid = ((value >> 24) & 0xf) as u8;
    let all: u16 = if vcpus >= 16 {
        u16::MAX
    } else {
        (1u16 << vcpus).wrapping_sub(1)
    };
    let targets = if value & (1 << 40) != 0 {
        all & !(1u16.wrapping_shl(me as u32))
    } else if value & (0xff << 48 | 0xf << 44 | 0xff << 32 | 0xff << 16) != 0 {
        0
    } else {
        (value & 0xffff) as u16 & all
    };
    (targets, intid)
}

/// `(CRm, Op2)` of an ID register.
type Id = (u8, u8);

/// Fields a guest sees of each AArch64 ID register, as `(id, mask of kept
/// fields, fields forced to a value)`. Every field not named here, and
/// every other register of the ID space (the AArch32 ones: a guest's EL0
/// runs AArch64 only), reads as zero: a guest is told of nothing the
/// engine does not switch.
const POLICY: &[(Id, u64, u64)] = &[
    // ID_AA64PFR0_EL1: FP 19:16, AdvSIMD 23:20, DIT 51:48, CSV2 59:56,
    // CSV3 63:60 kept; EL0, EL1 = 1 (AArch64 only); GIC = 1 (system
    // registers, virtual CPU interface). Gone: EL2, EL3, RAS, SVE, SEL2,
    // MPAM, AMU, RME.
    (
        (4, 0),
        0xf << 16 | 0xf << 20 | 0xf << 48 | 0xf << 56 | 0xf << 60,
        1 | 1 << 4 | 1 << 24,
    ),
    // ID_AA64PFR1_EL1: BT 3:0, SSBS 7:4, CSV2_frac 35:32. Gone: MTE, SME,
    // NMI, GCS and the rest.
    ((4, 1), 0xf | 0xf << 4 | 0xf << 32, 0),
    // ID_AA64DFR0_EL1: Debug v8.0 only, no PMU, SPE, trace, BRBE; the
    // debug registers read as zero anyway. DoubleLock = 0xF (none).
    ((5, 0), 0, 6 | 0xf << 36),
    // ID_AA64ISAR0_EL1: instructions only (AES, SHA, CRC32, atomics, ...):
    // nothing to switch.
    ((6, 0), u64::MAX, 0),
    // ID_AA64ISAR1_EL1: all but pointer authentication (APA 7:4, API 11:8,
    // GPA 27:24, GPI 31:28: its keys are not switched and its instructions
    // trap) and LS64 63:60 (ACCDATA_EL1 is not switched).
    (
        (6, 1),
        !(0xf << 4 | 0xf << 8 | 0xf << 24 | 0xf << 28 | 0xf << 60),
        0,
    ),
    // ID_AA64ISAR2_EL1: RPRES 7:4, BC 23:20, CLRBHB 31:28, CSSC 55:52.
    ((6, 2), 0xf << 4 | 0xf << 20 | 0xf << 28 | 0xf << 52, 0),
    // ID_AA64MMFR0_EL1: everything but FGT 59:56 and ECV 63:60 (EL2
    // features); PARange 3:0 capped at the IPA size by `guest_id_value`.
    ((7, 0), !(0xf << 56 | 0xf << 60), 0),
    // ID_AA64MMFR1_EL1: HAFDBS 3:0, HPDS 15:12, PAN 23:20, XNX 31:28, ETS
    // 39:36, AFP 47:44, ECBHB 63:60. Gone: VMIDBits, VH, LO, SpecSEI, TWED,
    // HCX, nTLBPA, TIDCP1, CMOW.
    (
        (7, 1),
        0xf | 0xf << 12 | 0xf << 20 | 0xf << 28 | 0xf << 36 | 0xf << 44 | 0xf << 60,
        0,
    ),
    // ID_AA64MMFR2_EL1: all but NV 27:24, FWB 43:40, EVT 59:56 (EL2's).
    ((7, 2), !(0xf << 24 | 0xf << 40 | 0xf << 56), 0),
    // ID_AA64MMFR3_EL1 and later: TCR2, SCTLR2, permission indirection and
    // overlays have registers the switch does not exchange: all zero.
];

/// The value a guest reads from ID register `(crm, op2)` when the CPU's
/// (sanitised) value is `raw` and the VM's IPA space is `ipa_bits` wide
/// (40 to 48, as [`crate::stage2::S2Config`] allows).
pub fn guest_id_value(crm: u8, op2: u8, raw: u64, ipa_bits: u32) -> u64 {
    let Some(&(_, keep, force)) = POLICY.iter().find(|(id, _, _)| *id == (crm, op2)) else {
        return 0;
    };
    let mut v = (raw & keep) | force;
    if (crm, op2) == (7, 0) {
        // PARange: the guest's "physical" addresses are IPAs. The largest
        // size the encoding has that does not exceed the VM's IPA space: a
        // 41-bit space is told 40 bits, never 42 (a guest sizing its own
        // tables by PARange would otherwise place addresses no Stage-2
        // entry can map).
        // (`S2Config` allows 40 to 48 bits, so nothing below 40 bits
        // needs an encoding of its own.)
        let cap = match ipa_bits {
            ..=41 => 2,
            42..=43 => 3,
            44..=47 => 4,
            _ => 5,
        };
        v = (v & !0xf) | (v & 0xf).min(cap);
    }
    v
}

impl<A: Arch> Engine<A> {
    /// A guest's trapped system-register access (EC 0x18): answered per
    /// [`classify`]; the guest continues after the instruction, or at its
    /// own Undefined Instruction vector if it is refused, or after the host
    /// ran if it sends an SGI to someone (`Exit::Sgi`).
    pub(crate) fn guest_sysreg(
        &self,
        vcpu: &LoadedVcpu,
        ctx: Regs<'_>,
        esr: Esr,
    ) -> GuestExitAction {
        let a = Access::from_esr(esr.0);
        let step = || ctx.set_pc(ctx.pc().wrapping_add(4));
        let emulated = || self.count(vcpu.cpu(), isola_abi::counter::GUEST_SYSREGS);
        match classify(a) {
            Handling::Refuse => {
                ctx.inject_undefined();
                self.count(vcpu.cpu(), isola_abi::counter::GUEST_UNDEFINED);
                GuestExitAction::Resume
            }
            Handling::RazWi => {
                if a.read {
                    ctx.set_x(a.rt, 0);
                }
                step();
                emulated();
                GuestExitAction::Resume
            }
            Handling::IdRead { crm, op2 } => {
                let raw = self.guest_id_raw(crm, op2);
                ctx.set_x(
                    a.rt,
                    guest_id_value(crm, op2, raw, u32::from(self.vm_s2.ipa_bits())),
                );
                step();
                emulated();
                GuestExitAction::Resume
            }
            Handling::Sgi1r => {
                step();
                let (targets, intid) = sgi1r_targets(ctx.x(a.rt), vcpu.index(), vcpu.vcpus());
                if targets == 0 {
                    emulated();
                    GuestExitAction::Resume
                } else {
                    GuestExitAction::ExitToHost(Exit::Sgi { targets, intid })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8, read: bool) -> Access {
        Access {
            op0,
            op1,
            crn,
            crm,
            op2,
            rt: 3,
            read,
        }
    }

    #[test]
    fn syndromes_round_trip() {
        let a = acc(3, 0, 12, 11, 5, false);
        assert_eq!(Access::from_esr(a.esr()), a);
        let b = Access {
            rt: 31,
            ..acc(2, 0, 1, 0, 4, true)
        };
        assert_eq!(Access::from_esr(b.esr()), b);
        assert_eq!(a.esr() >> 26, 0x18);
    }

    #[test]
    fn what_linux_touches_at_boot_is_raz_wi() {
        // OSLAR_EL1, OSDLR_EL1, MDSCR_EL1, DBGBVR0_EL1, PMUSERENR_EL0,
        // PMCR_EL0, PMCCFILTR_EL0, PMINTENCLR_EL1, AMUSERENR_EL0, LORID_EL1,
        // ERRIDR_EL1, ACTLR_EL1.
        for a in [
            acc(2, 0, 1, 0, 4, false),
            acc(2, 0, 1, 3, 4, false),
            acc(2, 0, 0, 2, 2, true),
            acc(2, 0, 0, 0, 4, false),
            acc(3, 3, 9, 14, 0, false),
            acc(3, 3, 9, 12, 0, true),
            acc(3, 3, 14, 15, 7, false),
            acc(3, 0, 9, 14, 2, false),
            acc(3, 3, 13, 2, 3, false),
            acc(3, 0, 10, 4, 7, true),
            acc(3, 0, 5, 3, 0, true),
            acc(3, 0, 1, 0, 1, true),
        ] {
            assert_eq!(classify(a), Handling::RazWi, "{a:?}");
        }
    }

    #[test]
    fn sgis_ids_and_the_rest() {
        assert_eq!(classify(acc(3, 0, 12, 11, 5, false)), Handling::Sgi1r);
        assert_eq!(classify(acc(3, 0, 12, 11, 5, true)), Handling::Refuse);
        assert_eq!(classify(acc(3, 0, 12, 11, 7, false)), Handling::RazWi);
        assert_eq!(
            classify(acc(3, 0, 0, 4, 1, true)),
            Handling::IdRead { crm: 4, op2: 1 }
        );
        assert_eq!(classify(acc(3, 0, 0, 4, 1, false)), Handling::Refuse);
        // Implementation defined (TIDCP), the physical timer, SCTLR_EL1
        // (never trapped; refusing is the safe answer if it were).
        for a in [
            acc(3, 0, 15, 0, 0, true),
            acc(3, 3, 14, 2, 1, false),
            acc(3, 0, 1, 0, 0, false),
            acc(3, 0, 0, 0, 5, true),
            // Op1 3, CRn 9 outside the PMU's CRm 12..=14.
            acc(3, 3, 9, 11, 0, true),
            acc(3, 3, 9, 15, 0, true),
            // Op1 0, CRn 9 outside PMINTEN*/PMMIR's CRm 14: the SPE
            // registers (PMSCR_EL1, PMBLIMITR_EL1), not emulated.
            acc(3, 0, 9, 9, 0, true),
            acc(3, 0, 9, 10, 0, false),
            // CRm 14 of another Op1 is not the PMU's either.
            acc(3, 1, 9, 14, 1, true),
            // CRn 10 outside LORegions' CRm 4 (MAIR_EL1), and CRm 3..=5
            // outside RAS's CRn 5.
            acc(3, 0, 10, 2, 0, true),
            acc(3, 0, 1, 3, 0, true),
            acc(3, 0, 2, 5, 0, false),
        ] {
            assert_eq!(classify(a), Handling::Refuse, "{a:?}");
        }
    }

    #[test]
    fn only_the_other_sgi_registers_are_write_ignored() {
        // ICC_ASGI1R_EL1 and ICC_SGI0R_EL1 (CRm 11, Op2 6 and 7): writes
        // ignored. Their neighbours in CRn 12 are not.
        for op2 in [6, 7] {
            assert_eq!(classify(acc(3, 0, 12, 11, op2, false)), Handling::RazWi);
        }
        for a in [acc(3, 0, 12, 12, 1, false), acc(3, 0, 12, 12, 6, false)] {
            assert_ne!(classify(a), Handling::RazWi, "{a:?}");
        }
    }

    #[test]
    fn a_trap_syndrome_round_trips_every_field() {
        for a in [
            acc(3, 3, 14, 3, 1, true),
            acc(3, 7, 15, 15, 7, false),
            acc(2, 0, 0, 2, 2, true),
            acc(3, 4, 12, 11, 5, false),
        ] {
            let e = a.esr();
            assert_eq!(e >> 26, 0x18, "EC");
            assert_ne!(e & 1 << 25, 0, "IL");
            assert_eq!(Access::from_esr(e), a);
        }
    }

    #[test]
    fn sgi1r_names_vcpus_by_aff0() {
        let intid = |i: u64| i << 24;
        assert_eq!(sgi1r_targets(intid(3) | 0b0110, 0, 4), (0b0110, 3));
        // Targets beyond the VM's vCPUs are dropped.
        assert_eq!(sgi1r_targets(intid(1) | 0xffff, 0, 4), (0b1111, 1));
        // IRM: everyone but the writer.
        assert_eq!(sgi1r_targets(intid(15) | 1 << 40, 2, 4), (0b1011, 15));
        assert_eq!(sgi1r_targets(1 << 40, 0, 8), (0xfe, 0));
        assert_eq!(sgi1r_targets(1 << 40, 0, 16), (0xfffe, 0));
        // Another cluster or range names nobody.
        for other in [1 << 16, 1 << 32, 1 << 44, 1 << 48] {
            assert_eq!(sgi1r_targets(other | 1, 0, 4), (0, 0));
        }
    }

    #[test]
    fn id_registers_advertise_only_what_is_switched() {
        // PFR0 with SVE, AMU, RAS, EL2/EL3 and AArch32 EL0 all present.
        let pfr0 = 0x1111_1111_1111_2222u64;
        let v = guest_id_value(4, 0, pfr0, 40);
        assert_eq!(v & 0xffff, 0x0011, "EL0/EL1 AArch64 only, no EL2/EL3");
        assert_eq!((v >> 24) & 0xf, 1, "GIC system registers");
        assert_eq!((v >> 28) & 0xf, 0, "RAS");
        assert_eq!((v >> 32) & 0xf, 0, "SVE");
        assert_eq!((v >> 44) & 0xf, 0, "AMU");
        assert_eq!((v >> 16) & 0xff, 0x11, "FP, AdvSIMD kept");
        // Pointer authentication and LS64 hidden, the rest of ISAR1 kept.
        let isar1 = u64::MAX;
        let v = guest_id_value(6, 1, isar1, 40);
        for shift in [4, 8, 24, 28, 60] {
            assert_eq!((v >> shift) & 0xf, 0, "field at {shift}");
        }
        assert_eq!(v & 0xf, 0xf, "DPB kept");
        // No PMU, no SPE, debug v8.0.
        assert_eq!(guest_id_value(5, 0, u64::MAX, 40), 6 | 0xf << 36);
        // MTE, SME, GCS hidden.
        assert_eq!(
            guest_id_value(4, 1, u64::MAX, 40),
            0xf | 0xf << 4 | 0xf << 32
        );
        // PARange capped at the IPA size (40 bits: 2); lower values kept.
        assert_eq!(guest_id_value(7, 0, 0x6, 40) & 0xf, 2);
        assert_eq!(guest_id_value(7, 0, 0x1, 40) & 0xf, 1);
        // Every IPA size S2Config allows (40..=48 bits), at each PARange
        // step: the largest PARange that does not exceed it.
        for (bits, cap) in [
            (40, 2),
            (41, 2),
            (42, 3),
            (43, 3),
            (44, 4),
            (47, 4),
            (48, 5),
            (52, 5),
        ] {
            assert_eq!(guest_id_value(7, 0, 0x6, bits) & 0xf, cap, "{bits} bits");
        }
        // Every field kept, forced or capped, from an all-ones CPU, written
        // out field by field (each field 4 bits at the given shift).
        let fields = |shifts: &[u32]| shifts.iter().fold(0u64, |a, s| a | 0xf << s);
        assert_eq!(
            guest_id_value(4, 0, u64::MAX, 40),
            fields(&[16, 20, 48, 56, 60]) | 1 | 1 << 4 | 1 << 24
        );
        assert_eq!(guest_id_value(6, 0, u64::MAX, 40), u64::MAX);
        assert_eq!(
            guest_id_value(6, 1, u64::MAX, 40),
            !fields(&[4, 8, 24, 28, 60])
        );
        assert_eq!(guest_id_value(6, 2, u64::MAX, 40), fields(&[4, 20, 28, 52]));
        assert_eq!(
            guest_id_value(7, 0, u64::MAX, 40),
            !fields(&[0, 56, 60]) | 2
        );
        assert_eq!(
            guest_id_value(7, 1, u64::MAX, 40),
            fields(&[0, 12, 20, 28, 36, 44, 60])
        );
        assert_eq!(guest_id_value(7, 2, u64::MAX, 40), !fields(&[24, 40, 56]));
        // Unknown, AArch32 and newer registers: zero.
        for (crm, op2) in [(1, 0), (2, 0), (3, 0), (4, 4), (4, 5), (7, 3), (7, 7)] {
            assert_eq!(guest_id_value(crm, op2, u64::MAX, 40), 0, "{crm},{op2}");
        }
    }
}
