//! Exception syndromes and the abort policy.
//!
//! Decoding ([`Esr`], [`DataAbortIss`]) follows the Arm ARM's ESR_EL2
//! description; the policy functions are pure functions of the syndrome, the
//! fault address registers and the facts the caller looked up (ownership,
//! the guest MMIO window), so they are tested without a machine:
//!
//! - Host Stage-2 fault ([`classify_host_abort`]): a translation or
//!   access-flag fault on a page the host owns or borrows is mapped (largest
//!   block) and retried; on a device range given to the host at init it is
//!   mapped as Device; anything else injects a synchronous external abort.
//! - Guest Stage-2 fault ([`classify_guest_abort`]): a data abort with a
//!   valid syndrome (ISV) in the guest MMIO window becomes `Exit::Mmio`; a
//!   translation (or access-flag) fault in guest RAM becomes `Exit::MemFault`;
//!   everything else (no ISV for MMIO, instruction fetch from MMIO, a
//!   permission fault on a mapped page, external aborts, address size
//!   faults...) is `Exit::Error` and stops the vCPU.

use crate::addr::Ipa;
use bitflags::bitflags;

/// Exception classes (ESR_ELx.EC) the engine distinguishes or injects: the
/// one list of them (the EL2 image decodes and builds syndromes with these
/// too).
pub mod ec {
    /// Unknown reason: what an UNDEFINED instruction reports.
    pub const UNKNOWN: u8 = 0x00;
    /// Trapped WFI/WFE.
    pub const WFX: u8 = 0x01;
    /// HVC from AArch64.
    pub const HVC64: u8 = 0x16;
    /// SMC from AArch64 (trapped by `HCR_EL2.TSC`).
    pub const SMC64: u8 = 0x17;
    /// Trapped MSR/MRS/system instruction.
    pub const SYSREG: u8 = 0x18;
    /// SVE instruction or register access trapped (`CPTR_EL2.TZ`).
    pub const SVE: u8 = 0x19;
    /// SME instruction or register access trapped (`CPTR_EL2.TSM`).
    pub const SME: u8 = 0x1d;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOW: u8 = 0x20;
    /// Instruction abort taken without a change of exception level.
    pub const IABT_CUR: u8 = 0x21;
    /// Data abort from a lower exception level.
    pub const DABT_LOW: u8 = 0x24;
    /// Data abort taken without a change of exception level.
    pub const DABT_CUR: u8 = 0x25;
    /// SError.
    pub const SERROR: u8 = 0x2f;
}

/// The syndrome of a guest's SError that an `ESB` at its exit deferred into
/// `DISR_EL1` (`disr`, with `A` set): an `ESR_EL2` of class SError with
/// `IL` and `DISR`'s syndrome (`IDS`, `AET`, `EA`, `DFSC`: bits 24:0, laid
/// out as an SError's ISS), so the core judges it as it judges an SError
/// taken while the guest ran.
pub const fn deferred_serror_esr(disr: u64) -> u64 {
    (ec::SERROR as u64) << 26 | 1 << 25 | (disr & 0x1ff_ffff)
}

/// Fault status code (DFSC/IFSC) of a synchronous external abort, not on a
/// translation table walk: what the engine injects when the host touches
/// what it may not.
pub const FSC_SEA: u8 = 0x10;

/// A trapped `MSR`/`MRS`/system instruction (EC [`ec::SYSREG`]), decoded
/// from its ISS: the register's encoding, the general register and the
/// direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// `op0`.
    pub op0: u8,
    /// `op1`.
    pub op1: u8,
    /// `CRn`.
    pub crn: u8,
    /// `CRm`.
    pub crm: u8,
    /// `op2`.
    pub op2: u8,
    /// The general register transferred (`Rt`, 31 = XZR).
    pub rt: u8,
    /// `MRS` (a read) rather than `MSR`.
    pub read: bool,
}

bitflags! {
    /// Single-bit fields of ESR_EL2 for data and instruction aborts.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DataAbortIss: u64 {
        /// Instruction length: 32-bit instruction.
        const IL = 1 << 25;
        /// Instruction syndrome valid (SAS, SSE, SRT, SF, AR are meaningful).
        const ISV = 1 << 24;
        /// Syndrome sign extend: the load sign-extends.
        const SSE = 1 << 21;
        /// Sixty-four: the register is 64-bit (Xt rather than Wt).
        const SF = 1 << 15;
        /// Acquire/release semantics.
        const AR = 1 << 14;
        /// FAR not valid.
        const FNV = 1 << 10;
        /// External abort type.
        const EA = 1 << 9;
        /// Cache maintenance.
        const CM = 1 << 8;
        /// Fault on the Stage-2 walk of a Stage-1 table access.
        const S1PTW = 1 << 7;
        /// Write not read.
        const WNR = 1 << 6;
    }
}

/// A decoded ESR_EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

/// Fault status codes (DFSC/IFSC) grouped by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Address size fault at a level.
    AddressSize(u8),
    /// Translation fault at a level.
    Translation(u8),
    /// Access flag fault at a level.
    AccessFlag(u8),
    /// Permission fault at a level.
    Permission(u8),
    /// Anything else (external abort, alignment, TLB conflict...).
    Other(u8),
}

impl Esr {
    /// Exception class.
    pub const fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// The abort flags.
    pub const fn flags(self) -> DataAbortIss {
        DataAbortIss::from_bits_truncate(self.0)
    }

    /// Syndrome access size in bytes (SAS): 1, 2, 4 or 8.
    pub const fn access_size(self) -> u8 {
        1 << ((self.0 >> 22) & 3)
    }

    /// Syndrome register transfer (SRT): the load/store register, 31 = XZR.
    pub const fn srt(self) -> u8 {
        ((self.0 >> 16) & 0x1f) as u8
    }

    /// Fault status code (DFSC / IFSC).
    pub const fn fsc(self) -> u8 {
        (self.0 & 0x3f) as u8
    }

    /// The fault status code's kind.
    pub const fn fault(self) -> FaultKind {
        let fsc = self.fsc();
        let level = fsc & 3;
        match fsc >> 2 {
            0 => FaultKind::AddressSize(level),
            1 => FaultKind::Translation(level),
            2 => FaultKind::AccessFlag(level),
            3 => FaultKind::Permission(level),
            _ => FaultKind::Other(fsc),
        }
    }

    /// Whether this is a data or instruction abort from a lower EL.
    pub const fn is_abort(self) -> bool {
        matches!(self.ec(), ec::DABT_LOW | ec::IABT_LOW)
    }

    /// The trapped system-register access, if this is one (ISS: Op0 21:20,
    /// Op2 19:17, Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Direction 0).
    pub const fn sysreg(self) -> Option<SysRegAccess> {
        if self.ec() != ec::SYSREG {
            return None;
        }
        let iss = self.0;
        Some(SysRegAccess {
            op0: ((iss >> 20) & 0x3) as u8,
            op2: ((iss >> 17) & 0x7) as u8,
            op1: ((iss >> 14) & 0x7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            rt: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 == 1,
        })
    }
}

/// The faulting IPA: HPFAR_EL2.FIPA (bits 43:4 = IPA bits 51:12) plus the
/// page offset from FAR_EL2.
pub const fn fault_ipa(hpfar: u64, far: u64) -> Ipa {
    Ipa::new(((hpfar & 0x0000_0fff_ffff_fff0) << 8) | (far & 0xfff))
}

/// The ESR_EL2 of a lower-EL data abort with a valid syndrome: a `size`
/// byte access (`write` or not) through register `reg`, fault status `dfsc`.
pub fn data_abort_esr(size: u8, write: bool, reg: u8, sign: bool, sf: bool, dfsc: u8) -> u64 {
    let sas: u64 = match size {
        1 => 0,
        2 => 1,
        4 => 2,
        _ => 3,
    };
    let mut f = DataAbortIss::IL | DataAbortIss::ISV;
    f.set(DataAbortIss::WNR, write);
    f.set(DataAbortIss::SSE, sign);
    f.set(DataAbortIss::SF, sf);
    (u64::from(ec::DABT_LOW) << 26)
        | f.bits()
        | (sas << 22)
        | (u64::from(reg & 0x1f) << 16)
        | u64::from(dfsc & 0x3f)
}

/// What to do with a host Stage-2 fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAbort {
    /// Map the host's page (identity, Normal memory) and retry.
    MapRam,
    /// Map the host's device page (identity, Device memory) and retry.
    MapDevice,
    /// Map the host's read-only device page (identity, Device memory,
    /// read-only) and retry.
    MapDeviceReadOnly,
    /// A store to a read-only device page: skip the instruction (the write
    /// is ignored, as a read-only register ignores it).
    IgnoreWrite,
    /// Inject a synchronous external abort into the host.
    InjectSea,
}

/// Facts about the faulting address a host-abort decision needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPage {
    /// RAM the host owns or borrows.
    Accessible,
    /// RAM the host may not touch (engine's, a VM's).
    Forbidden,
    /// A device range the host was given at init.
    Device,
    /// A device range the host was given read-only at init (registers it
    /// may read but must not write, such as a redistributor's LPI controls).
    DeviceReadOnly,
    /// Nothing the host may map.
    Unknown,
}

/// The host-abort policy.
pub fn classify_host_abort(esr: Esr, page: HostPage) -> HostAbort {
    if !esr.is_abort() {
        return HostAbort::InjectSea;
    }
    match (esr.fault(), page) {
        (FaultKind::Translation(_) | FaultKind::AccessFlag(_), HostPage::Accessible) => {
            HostAbort::MapRam
        }
        (FaultKind::Translation(_) | FaultKind::AccessFlag(_), HostPage::Device) => {
            HostAbort::MapDevice
        }
        (FaultKind::Translation(_) | FaultKind::AccessFlag(_), HostPage::DeviceReadOnly) => {
            HostAbort::MapDeviceReadOnly
        }
        (FaultKind::Permission(_), HostPage::DeviceReadOnly)
            if esr.ec() == ec::DABT_LOW
                && esr.flags().contains(DataAbortIss::WNR)
                && !esr
                    .flags()
                    .intersects(DataAbortIss::S1PTW | DataAbortIss::CM) =>
        {
            HostAbort::IgnoreWrite
        }
        _ => HostAbort::InjectSea,
    }
}

/// What a guest Stage-2 fault becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAbort {
    /// Emulated MMIO: exit to the host with the access.
    Mmio {
        /// The accessed IPA (not page aligned).
        ipa: Ipa,
        /// Bytes: 1, 2, 4 or 8.
        size: u8,
        /// Store rather than load.
        write: bool,
        /// The transfer register (31 = XZR).
        reg: u8,
        /// Sign-extend a load.
        sign: bool,
        /// 64-bit register.
        sf: bool,
    },
    /// Access to guest RAM that is not mapped.
    MemFault {
        /// The faulting page.
        ipa: Ipa,
    },
    /// Nothing the engine will handle: `Exit::Error`, the vCPU stops.
    Error,
}

/// The guest-abort policy. `in_mmio` says whether an IPA lies in the guest
/// MMIO window; `ipa_limit` is one past the VM's highest IPA.
pub fn classify_guest_abort(
    esr: Esr,
    far: u64,
    hpfar: u64,
    in_mmio: impl Fn(Ipa) -> bool,
    ipa_limit: u64,
) -> GuestAbort {
    if !esr.is_abort() {
        return GuestAbort::Error;
    }
    let flags = esr.flags();
    let ipa = fault_ipa(hpfar, far);
    if ipa.raw() >= ipa_limit || flags.contains(DataAbortIss::EA) {
        return GuestAbort::Error;
    }
    let fault = esr.fault();
    if in_mmio(ipa) {
        let is_data = esr.ec() == ec::DABT_LOW;
        let plain = !flags.intersects(DataAbortIss::S1PTW | DataAbortIss::CM);
        return match fault {
            FaultKind::Translation(_) if is_data && plain && flags.contains(DataAbortIss::ISV) => {
                GuestAbort::Mmio {
                    ipa,
                    size: esr.access_size(),
                    write: flags.contains(DataAbortIss::WNR),
                    reg: esr.srt(),
                    sign: flags.contains(DataAbortIss::SSE),
                    sf: flags.contains(DataAbortIss::SF),
                }
            }
            _ => GuestAbort::Error,
        };
    }
    match fault {
        FaultKind::Translation(_) | FaultKind::AccessFlag(_) => GuestAbort::MemFault {
            ipa: ipa.page_floor(),
        },
        _ => GuestAbort::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syndrome_that_is_not_an_abort_is_never_mapped() {
        // EC 0x16: an HVC, not an abort.
        let hvc = Esr(0x16 << 26 | 1 << 25);
        assert!(!hvc.is_abort());
        assert_eq!(
            classify_host_abort(hvc, HostPage::Accessible),
            HostAbort::InjectSea
        );
        let mmio = |_: Ipa| true;
        assert_eq!(
            classify_guest_abort(hvc, 0, 0, mmio, 1 << 40),
            GuestAbort::Error
        );
    }

    #[test]
    fn a_deferred_serror_reads_as_an_serror_syndrome() {
        // A: deferred; IDS clear; AET = UC (0b000); EA; DFSC 0x11.
        let disr = 1 << 31 | 1 << 9 | 0x11;
        let esr = Esr(deferred_serror_esr(disr));
        assert_eq!(esr.ec(), ec::SERROR);
        assert_eq!(esr.0 & 0x1ff_ffff, 1 << 9 | 0x11, "the syndrome, not A");
        assert_ne!(esr.0 & 1 << 25, 0, "IL");
    }

    /// A lower-EL data abort syndrome.
    fn dabt(iss: u64) -> Esr {
        Esr((u64::from(ec::DABT_LOW) << 26) | DataAbortIss::IL.bits() | iss)
    }

    const TRANS_L3: u64 = 0b000111;
    const MMIO: fn(Ipa) -> bool = |ipa| ipa.raw() < 0x4000_0000;
    const LIMIT: u64 = 1 << 40;

    #[test]
    fn decodes_a_trapped_system_register_access() {
        // `mrs x20, id_aa64pfr0_el1`: op0 3, op1 0, CRn 0, CRm 4, op2 0.
        let esr = Esr(u64::from(ec::SYSREG) << 26 | 1 << 25 | 3 << 20 | 4 << 1 | 20 << 5 | 1);
        assert_eq!(
            esr.sysreg(),
            Some(SysRegAccess {
                op0: 3,
                op1: 0,
                crn: 0,
                crm: 4,
                op2: 0,
                rt: 20,
                read: true
            })
        );
        // `msr tpidr_el1, x3`: op0 3, op1 0, CRn 13, CRm 0, op2 4, a write.
        let esr = Esr(u64::from(ec::SYSREG) << 26 | 3 << 20 | 4 << 17 | 13 << 10 | 3 << 5);
        let a = esr.sysreg().unwrap();
        assert_eq!(
            (a.op1, a.crn, a.crm, a.op2, a.rt, a.read),
            (0, 13, 0, 4, 3, false)
        );
        // `mrs x1, ctr_el0`: op0 3, op1 3, CRn 0, CRm 0, op2 1: Op1 is
        // bits 16:14, apart from its neighbours.
        let esr = Esr(u64::from(ec::SYSREG) << 26 | 3 << 20 | 1 << 17 | 3 << 14 | 1 << 5 | 1);
        let a = esr.sysreg().unwrap();
        assert_eq!(
            (a.op0, a.op1, a.crn, a.crm, a.op2, a.rt, a.read),
            (3, 3, 0, 0, 1, 1, true)
        );
        // Another class is none.
        assert_eq!(Esr(u64::from(ec::HVC64) << 26 | 0x1ff_ffff).sysreg(), None);
    }

    #[test]
    fn fault_status_codes_decode_by_kind_and_level() {
        // DFSC 0b0000LL address size, 0b0001LL translation, 0b0010LL access
        // flag, 0b0011LL permission; anything else keeps its code.
        for level in 0..4u8 {
            let l = u64::from(level);
            assert_eq!(dabt(l).fault(), FaultKind::AddressSize(level));
            assert_eq!(dabt(0b0100 | l).fault(), FaultKind::Translation(level));
            assert_eq!(dabt(0b1000 | l).fault(), FaultKind::AccessFlag(level));
            assert_eq!(dabt(0b1100 | l).fault(), FaultKind::Permission(level));
        }
        // Synchronous external abort, alignment fault, TLB conflict.
        for fsc in [0x10u8, 0x21, 0x30] {
            assert_eq!(dabt(u64::from(fsc)).fault(), FaultKind::Other(fsc));
        }
    }

    #[test]
    fn decodes_data_abort_fields() {
        // str w3, [x0] -> 4 bytes, SRT = 3, write, 32-bit register.
        let e = dabt(
            DataAbortIss::ISV.bits() | (2 << 22) | (3 << 16) | DataAbortIss::WNR.bits() | TRANS_L3,
        );
        assert_eq!(e.ec(), ec::DABT_LOW);
        assert_eq!(
            (e.access_size(), e.srt(), e.fault()),
            (4, 3, FaultKind::Translation(3))
        );
        assert!(e.flags().contains(DataAbortIss::WNR) && !e.flags().contains(DataAbortIss::SF));
        assert_eq!(
            fault_ipa(0x0090_0000 >> 8, 0xffff_0000_0000_0123),
            Ipa::new(0x0090_0123)
        );
    }

    #[test]
    fn guest_mmio_with_syndrome_exits_with_the_access() {
        let e = dabt(
            DataAbortIss::ISV.bits()
                | (3 << 22)
                | (7 << 16)
                | DataAbortIss::SSE.bits()
                | DataAbortIss::SF.bits()
                | TRANS_L3,
        );
        let r = classify_guest_abort(e, 0x8, 0x0900_0000 >> 8, MMIO, LIMIT);
        assert_eq!(
            r,
            GuestAbort::Mmio {
                ipa: Ipa::new(0x0900_0008),
                size: 8,
                write: false,
                reg: 7,
                sign: true,
                sf: true
            }
        );
    }

    #[test]
    fn guest_policy_edges() {
        // No syndrome in MMIO: the engine cannot emulate it.
        assert_eq!(
            classify_guest_abort(dabt(TRANS_L3), 0, 0x0900_0000 >> 8, MMIO, LIMIT),
            GuestAbort::Error
        );
        // Stage-1 walk into MMIO.
        let walk = dabt(DataAbortIss::ISV.bits() | DataAbortIss::S1PTW.bits() | TRANS_L3);
        assert_eq!(
            classify_guest_abort(walk, 0, 0x0900_0000 >> 8, MMIO, LIMIT),
            GuestAbort::Error
        );
        // Instruction fetch from MMIO.
        let iabt = Esr((u64::from(ec::IABT_LOW) << 26) | TRANS_L3);
        assert_eq!(
            classify_guest_abort(iabt, 0, 0x0900_0000 >> 8, MMIO, LIMIT),
            GuestAbort::Error
        );
        // Unmapped RAM, page of the fault.
        assert_eq!(
            classify_guest_abort(dabt(TRANS_L3), 0x80, 0x8000_1000 >> 8, MMIO, LIMIT),
            GuestAbort::MemFault {
                ipa: Ipa::new(0x8000_1000)
            }
        );
        assert_eq!(
            classify_guest_abort(iabt, 0x80, 0x8000_1000 >> 8, MMIO, LIMIT),
            GuestAbort::MemFault {
                ipa: Ipa::new(0x8000_1000)
            }
        );
        // Permission fault on mapped RAM (write to a read-only page): the
        // guest broke its own mapping's rules; nothing for the host to fix.
        let perm = dabt(DataAbortIss::WNR.bits() | 0b001111);
        assert_eq!(
            classify_guest_abort(perm, 0, 0x8000_1000 >> 8, MMIO, LIMIT),
            GuestAbort::Error
        );
        // External abort, beyond the IPA space, not an abort at all.
        assert_eq!(
            classify_guest_abort(dabt(0b010000), 0, 0x8000_1000 >> 8, MMIO, LIMIT),
            GuestAbort::Error
        );
        assert_eq!(
            classify_guest_abort(dabt(TRANS_L3), 0, LIMIT >> 8, MMIO, LIMIT),
            GuestAbort::Error
        );
        assert_eq!(
            classify_guest_abort(Esr(0x5800_0000), 0, 0, MMIO, LIMIT),
            GuestAbort::Error
        );
    }

    #[test]
    fn host_policy() {
        let t = dabt(TRANS_L3);
        assert_eq!(
            classify_host_abort(t, HostPage::Accessible),
            HostAbort::MapRam
        );
        assert_eq!(
            classify_host_abort(t, HostPage::Device),
            HostAbort::MapDevice
        );
        assert_eq!(
            classify_host_abort(t, HostPage::DeviceReadOnly),
            HostAbort::MapDeviceReadOnly
        );
        // A store to a read-only device page is ignored; a load never
        // faults on permission there, and a cache maintenance or a
        // stage-1 walk that does is not a store to skip.
        let perm_write = Esr(data_abort_esr(4, true, 3, false, false, 0b001111));
        assert_eq!(
            classify_host_abort(perm_write, HostPage::DeviceReadOnly),
            HostAbort::IgnoreWrite
        );
        assert_eq!(
            classify_host_abort(perm_write, HostPage::Device),
            HostAbort::InjectSea
        );
        let perm_read = Esr(data_abort_esr(4, false, 3, false, false, 0b001111));
        assert_eq!(
            classify_host_abort(perm_read, HostPage::DeviceReadOnly),
            HostAbort::InjectSea
        );
        let cm = Esr(perm_write.0 | DataAbortIss::CM.bits());
        assert_eq!(
            classify_host_abort(cm, HostPage::DeviceReadOnly),
            HostAbort::InjectSea
        );
        assert_eq!(
            classify_host_abort(t, HostPage::Forbidden),
            HostAbort::InjectSea
        );
        assert_eq!(
            classify_host_abort(t, HostPage::Unknown),
            HostAbort::InjectSea
        );
        assert_eq!(
            classify_host_abort(dabt(0b001111), HostPage::Accessible),
            HostAbort::InjectSea
        );
        assert_eq!(
            classify_host_abort(Esr(0x5800_0000), HostPage::Accessible),
            HostAbort::InjectSea
        );
    }
}
