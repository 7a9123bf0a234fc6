//! The generic timer as EL2 controls it: the host owns the physical timer
//! and counter; a guest gets the virtual timer and may only read the
//! physical counter; the engine has the EL2 physical timer (`CNTHP_*`),
//! which bounds a guest's run by the host's own virtual-timer deadline.
//!
//! Invariant: the EL2 physical timer is armed only while a guest runs
//! (between the world switch's entry and exit); while the host runs it is
//! disabled, so its PPI never reaches the host.

use crate::sysreg::{CNTHCTL_EL2, CNTHP_CTL_EL2, Value};

/// The EL2 physical timer's PPI (the Arm Base System Architecture's
/// assignment, which QEMU virt follows).
pub const HYP_TIMER_PPI: u32 = 26;

/// `CNTHP_CTL_EL2` while a guest runs and the host's timer is armed:
/// enabled, not masked.
pub const CNTHP_ARMED: Value<CNTHP_CTL_EL2::Register> = Value::new(&[CNTHP_CTL_EL2::ENABLE::SET]);

/// `CNTHP_CTL_EL2` otherwise.
pub const CNTHP_OFF: Value<CNTHP_CTL_EL2::Register> = Value::raw(0);

/// The host's next virtual-timer interrupt as a physical count, if its
/// timer is armed (`CNTV_CTL_EL0` `ENABLE` set, `IMASK` clear): its
/// `CNTV_CVAL_EL0` plus its `CNTVOFF_EL2` (the virtual count is the
/// physical count minus the offset).
pub const fn host_deadline(cntv_ctl: u64, cntv_cval: u64, cntvoff: u64) -> Option<u64> {
    if cntv_ctl & 0b11 == 0b01 {
        Some(cntv_cval.wrapping_add(cntvoff))
    } else {
        None
    }
}

/// `CNTHCTL_EL2` for the host: `EL1PCTEN` and `EL1PCEN`, the physical
/// counter and timer are the host's.
pub const CNTHCTL_HOST: Value<CNTHCTL_EL2::Register> =
    Value::new(&[CNTHCTL_EL2::EL1PCTEN::SET, CNTHCTL_EL2::EL1PCEN::SET]);

/// `CNTHCTL_EL2` while a guest runs: `EL1PCTEN` only, so the guest may
/// read the physical counter (time is not a secret here) but any access to
/// the physical timer (`EL1PCEN` clear) traps: that timer is the host's.
/// The guest uses the virtual timer, offset by its `CNTVOFF_EL2`.
pub const CNTHCTL_GUEST: Value<CNTHCTL_EL2::Register> = Value::new(&[CNTHCTL_EL2::EL1PCTEN::SET]);

/// `CNTVOFF_EL2` (a register without fields) for the host: its virtual counter is the physical one.
pub const CNTVOFF_HOST: Value<()> = Value::raw(0);

/// `CNTVOFF_EL2` while a guest runs. The core's context has no per-vCPU
/// offset yet, so a guest's virtual counter reads the physical count; what
/// matters for isolation is that the host's own offset is never shown.
pub const CNTVOFF_GUEST: Value<()> = Value::raw(0);
